// Unit tests of the lvm backend: the parsers of LVM's JSON reports, and the backend's decisions
// (group choice, RESOURCE_EXHAUSTED, capacity) against a scripted CommandRunner.
#include "csi/backends/lvm_device_manager.h"

#include <algorithm>
#include <catch2/catch.hpp>
#include <chrono>
#include <future>
#include <map>

#include "csi/backends/block_device.h"
#include "held_eraser.h"

namespace ephemera::csi {
namespace {

constexpr const char* kVgs = R"(  WARNING: something on stderr
  {
      "report": [
          {
              "vg": [
                  {"vg_name":"ephemera-region0", "vg_size":"2134900736", "vg_free":"2101346304", "vg_extent_size":"4194304"},
                  {"vg_name":"ephemera-region1", "vg_size":"1073741824", "vg_free":"1069547520", "vg_extent_size":"4194304"}
              ]
          }
      ]
  }
)";

constexpr const char* kLvs = R"({
      "report": [
          {
              "lv": [
                  {"lv_name":"eph-ab", "vg_name":"ephemera-region0", "lv_size":"33554432", "lv_path":"/dev/ephemera-region0/eph-ab", "lv_attr":"-wi-ao----"}
              ]
          }
      ]
  }
)";

// Answers by the program name (argv[0] and, for ndctl, argv[1]); records every call and its time
// limit. A program in `errors` fails to run with that status (DEADLINE_EXCEEDED: it hung and was
// killed) once, then is answered again.
class ScriptedRunner : public CommandRunner {
 public:
  std::map<std::string, CommandResult> answers;
  std::map<std::string, Status> errors;
  std::vector<std::vector<std::string>> calls;
  std::vector<std::chrono::milliseconds> timeouts;
  StatusOr<CommandResult> Run(const std::vector<std::string>& argv,
                              std::chrono::milliseconds timeout) override {
    timeouts.push_back(timeout);
    calls.push_back(argv);
    std::string key = argv[0] == "ndctl" ? argv[0] + " " + argv[1] + " " + argv[2] : argv[0];
    if (auto error = errors.find(key); error != errors.end()) {
      Status status = error->second;
      errors.erase(error);
      return status;
    }
    auto it = answers.find(key);
    if (it == answers.end()) return CommandResult{0, ""};
    return it->second;
  }
};

TEST_CASE("lvm: vgs and lvs reports are parsed past warnings", "[lvm]") {
  StatusOr<std::vector<LvmVolumeGroup>> vgs = ParseVgsReport(kVgs);
  REQUIRE(vgs.ok());
  REQUIRE(vgs->size() == 2);
  CHECK((*vgs)[0].name == "ephemera-region0");
  CHECK((*vgs)[0].free == 2101346304);
  CHECK((*vgs)[1].extent_size == 4194304);
  StatusOr<std::vector<LvmLogicalVolume>> lvs = ParseLvsReport(kLvs);
  REQUIRE(lvs.ok());
  REQUIRE(lvs->size() == 1);
  CHECK((*lvs)[0].size == 33554432);
  CHECK((*lvs)[0].attr == "-wi-ao----");
  // A warning with brackets before the report (what LVM prints for an inherited descriptor).
  StatusOr<std::vector<LvmLogicalVolume>> warned = ParseLvsReport(
      std::string("  File descriptor 13 (socket:[16599]) leaked on lvs invocation. Parent PID 1: "
                  "/usr/local/bin/ephemera-pmem-cs\n") +
      kLvs + "  WARNING: after [the report]\n");
  REQUIRE(warned.ok());
  CHECK(warned->size() == 1);
  CHECK_FALSE(ParseVgsReport("not json").ok());
  CHECK_FALSE(ParseLvsReport(R"({"report":[{"lv":[{"lv_name":"x"}]}]})").ok());
}

TEST_CASE("lvm: capacity sums the groups and the largest is the maximum volume", "[lvm]") {
  ScriptedRunner runner;
  runner.answers["ndctl list -R"] = {0, R"([{"dev":"region0","size":4292870144,"align":16777216,
    "max_available_extent":4278190080,"type":"pmem"},{"dev":"region1","size":2147483648,
    "align":16777216,"max_available_extent":2147483648,"type":"pmem"}])"};
  runner.answers["ndctl list -N"] = {
      0, R"({"dev":"namespace0.0","mode":"fsdax","name":"ephemera-lvm","blockdev":"pmem0"})"};
  runner.answers["vgs"] = {0, kVgs};
  runner.answers["lvs"] = {0, R"({"report":[{"lv":[]}]})"};
  LvmDeviceManager lvm(runner, 50, ZeroBlockDevice);
  REQUIRE(lvm.Init().ok());
  CHECK(lvm.Alignment() == 4194304);
  StatusOr<Capacity> capacity = lvm.GetCapacity();
  REQUIRE(capacity.ok());
  CHECK(capacity->available == int64_t{2101346304} + 1069547520);
  CHECK(capacity->max_volume_size == 2101346304);

  // Too large for every group: RESOURCE_EXHAUSTED and no lvcreate.
  StatusOr<Device> big =
      lvm.Create("eph-big", int64_t{2101346304} + 4194304, DeviceUsage::kAppDirect);
  CHECK(big.status().code() == Code::kResourceExhausted);
  for (const auto& call : runner.calls)
    CHECK(call[0] != "lvcreate");

  // Unaligned: INVALID_ARGUMENT.
  CHECK(lvm.Create("eph-odd", 1000, DeviceUsage::kAppDirect).status().code() ==
        Code::kInvalidArgument);

  // Deleting what does not exist is OK (idempotent).
  CHECK(lvm.Delete("eph-none", false).ok());
}

TEST_CASE("lvm: a new volume goes to the group with the most free space", "[lvm]") {
  ScriptedRunner runner;
  runner.answers["ndctl list -R"] = {0, R"([{"dev":"region0","size":4292870144,"align":16777216,
    "max_available_extent":4278190080,"type":"pmem"},{"dev":"region1","size":2147483648,
    "align":16777216,"max_available_extent":2147483648,"type":"pmem"}])"};
  runner.answers["ndctl list -N"] = {
      0, R"([{"dev":"namespace0.0","mode":"fsdax","name":"ephemera-lvm","blockdev":"pmem0"}])"};
  runner.answers["vgs"] = {0, kVgs};
  runner.answers["lvs"] = {0, R"({"report":[{"lv":[]}]})"};
  LvmDeviceManager lvm(runner, 100, ZeroBlockDevice);
  REQUIRE(lvm.Init().ok());
  runner.calls.clear();
  StatusOr<Device> created = lvm.Create("eph-new", 8388608, DeviceUsage::kAppDirect);
  REQUIRE(created.ok());
  CHECK(created->size == 8388608);
  CHECK(created->path == "/dev/ephemera-region0/eph-new");
  // lvs (the name is free), vgs (the choice), lvcreate; no report after a successful lvcreate.
  REQUIRE(runner.calls.size() == 3);
  CHECK(runner.calls[0][0] == "lvs");
  CHECK(runner.calls[1][0] == "vgs");
  const std::vector<std::string>& call = runner.calls[2];
  CHECK(call[0] == "lvcreate");
  CHECK(call.back() == "ephemera-region0");
  CHECK(std::find(call.begin(), call.end(), "8388608B") != call.end());

  // A name listed by lvs: ALREADY_EXISTS before any lvcreate.
  runner.answers["lvs"] = {0, kLvs};
  runner.calls.clear();
  CHECK(lvm.Create("eph-ab", 8388608, DeviceUsage::kAppDirect).status().code() ==
        Code::kAlreadyExists);
  for (const auto& c : runner.calls)
    CHECK(c[0] != "lvcreate");
}

// One region, one group: Create is a lone lvcreate, and its refusals are mapped.
TEST_CASE("lvm: with one group Create runs lvcreate alone and maps its refusals", "[lvm]") {
  ScriptedRunner runner;
  runner.answers["ndctl list -R"] = {0, R"({"dev":"region0","size":4292870144,"align":16777216,
    "max_available_extent":4278190080,"type":"pmem"})"};
  runner.answers["ndctl list -N"] = {
      0, R"([{"dev":"namespace0.0","mode":"fsdax","name":"ephemera-lvm","blockdev":"pmem0"}])"};
  runner.answers["vgs"] = {0, kVgs};
  runner.answers["lvs"] = {0, R"({"report":[{"lv":[]}]})"};
  LvmDeviceManager lvm(runner, 100, ZeroBlockDevice);
  REQUIRE(lvm.Init().ok());

  runner.calls.clear();
  StatusOr<Device> created = lvm.Create("eph-new", 8388608, DeviceUsage::kAppDirect);
  REQUIRE(created.ok());
  CHECK(created->id == "eph-new");
  CHECK(created->size == 8388608);
  CHECK(created->path == "/dev/ephemera-region0/eph-new");
  REQUIRE(runner.calls.size() == 1);
  CHECK(runner.calls[0][0] == "lvcreate");
  CHECK(runner.calls[0].back() == "ephemera-region0");

  // The name exists: ALREADY_EXISTS, and the existing volume is not removed.
  runner.answers["lvcreate"] = {
      5, "  Logical Volume \"eph-ab\" already exists in volume group \"ephemera-region0\"\n"};
  runner.answers["lvs"] = {0, kLvs};
  runner.calls.clear();
  CHECK(lvm.Create("eph-ab", 8388608, DeviceUsage::kAppDirect).status().code() ==
        Code::kAlreadyExists);
  for (const auto& c : runner.calls)
    CHECK(c[0] != "lvremove");

  // Full: RESOURCE_EXHAUSTED.
  runner.answers["lvcreate"] = {5,
                                "  Volume group \"ephemera-region0\" has insufficient free space "
                                "(500 extents): 1000 required.\n"};
  runner.answers["lvs"] = {0, R"({"report":[{"lv":[]}]})"};
  runner.calls.clear();
  CHECK(lvm.Create("eph-big", int64_t{1000} * 4194304, DeviceUsage::kAppDirect).status().code() ==
        Code::kResourceExhausted);
  for (const auto& c : runner.calls)
    CHECK(c[0] != "lvremove");

  // Any other failure: INTERNAL, and a volume left behind is removed.
  runner.answers["lvcreate"] = {5, "  Failed to wipe start of new LV.\n"};
  runner.answers["lvs"] = {0,
                           R"({"report":[{"lv":[{"lv_name":"eph-half", "vg_name":"ephemera-region0",
      "lv_size":"8388608", "lv_attr":"-wi-a-----"}]}]})"};
  runner.calls.clear();
  CHECK(lvm.Create("eph-half", 8388608, DeviceUsage::kAppDirect).status().code() ==
        Code::kInternal);
  bool removed = false;
  for (const auto& c : runner.calls)
    removed = removed || (c[0] == "lvremove" && c.back() == "ephemera-region0/eph-half");
  CHECK(removed);
}

// lvcreate hung and was killed at its time limit: the create fails with DEADLINE_EXCEEDED and a
// volume it left is removed, as after lvcreate's other failures. Every LVM command has a limit.
TEST_CASE("lvm: a timed-out lvcreate fails and its volume is removed", "[lvm]") {
  ScriptedRunner runner;
  runner.answers["ndctl list -R"] = {0, R"({"dev":"region0","size":4292870144,"align":16777216,
    "max_available_extent":4278190080,"type":"pmem"})"};
  runner.answers["ndctl list -N"] = {
      0, R"([{"dev":"namespace0.0","mode":"fsdax","name":"ephemera-lvm","blockdev":"pmem0"}])"};
  runner.answers["vgs"] = {0, kVgs};
  LvmDeviceManager lvm(runner, 100, ZeroBlockDevice);
  REQUIRE(lvm.Init().ok());
  const Status killed = Status::DeadlineExceeded("lvcreate did not finish within 2m0s");

  SECTION("the volume was made before the kill: lvremove") {
    runner.answers["lvs"] = {
        0, R"({"report":[{"lv":[{"lv_name":"eph-hung", "vg_name":"ephemera-region0",
        "lv_size":"8388608", "lv_attr":"-wi-a-----"}]}]})"};
    runner.errors["lvcreate"] = killed;
    runner.calls.clear();
    StatusOr<Device> created = lvm.Create("eph-hung", 8388608, DeviceUsage::kAppDirect);
    CHECK(created.status().code() == Code::kDeadlineExceeded);
    CHECK(created.status().message().find("lvcreate did not finish") != std::string::npos);
    REQUIRE(runner.calls.size() == 3);
    CHECK(runner.calls[0][0] == "lvcreate");
    CHECK(runner.calls[1][0] == "lvs");
    CHECK(runner.calls[2] ==
          std::vector<std::string>{"lvremove", "-y", "ephemera-region0/eph-hung"});
  }
  SECTION("no volume was made: nothing is removed") {
    runner.answers["lvs"] = {0, R"({"report":[{"lv":[]}]})"};
    runner.errors["lvcreate"] = killed;
    runner.calls.clear();
    CHECK(lvm.Create("eph-hung", 8388608, DeviceUsage::kAppDirect).status().code() ==
          Code::kDeadlineExceeded);
    for (const auto& c : runner.calls)
      CHECK(c[0] != "lvremove");
  }
  SECTION("lvs hangs too: DEADLINE_EXCEEDED, nothing removed blindly") {
    runner.errors["lvcreate"] = killed;
    runner.errors["lvs"] = Status::DeadlineExceeded("lvs did not finish within 2m0s");
    runner.calls.clear();
    CHECK(lvm.Create("eph-hung", 8388608, DeviceUsage::kAppDirect).status().code() ==
          Code::kDeadlineExceeded);
    for (const auto& c : runner.calls)
      CHECK(c[0] != "lvremove");
  }
  SECTION("a timed-out lvs fails a delete: the volume is not taken for gone") {
    runner.errors["lvs"] = Status::DeadlineExceeded("lvs did not finish within 2m0s");
    CHECK(lvm.Delete("eph-gone", false).code() == Code::kDeadlineExceeded);
  }
  REQUIRE_FALSE(runner.timeouts.empty());
  for (const std::chrono::milliseconds t : runner.timeouts)
    CHECK(t == kDeviceCommandTimeout);
}

// An erase runs for minutes on a big volume: the other volumes' calls must not wait for it, and the
// volume is removed after it.
TEST_CASE("lvm: an erase holds up no other volume's call", "[lvm]") {
  ScriptedRunner runner;
  runner.answers["ndctl list -R"] = {0, R"({"dev":"region0","size":4292870144,"align":16777216,
    "max_available_extent":4278190080,"type":"pmem"})"};
  runner.answers["ndctl list -N"] = {
      0, R"([{"dev":"namespace0.0","mode":"fsdax","name":"ephemera-lvm","blockdev":"pmem0"}])"};
  runner.answers["vgs"] = {0, kVgs};
  // Inactive: the erase activates it first.
  runner.answers["lvs"] = {0,
                           R"({"report":[{"lv":[{"lv_name":"eph-ab", "vg_name":"ephemera-region0",
      "lv_size":"33554432", "lv_path":"/dev/ephemera-region0/eph-ab", "lv_attr":"-wi-------"}]}]})"};
  testing::HeldEraser held;
  LvmDeviceManager lvm(runner, 100, held.eraser());
  REQUIRE(lvm.Init().ok());
  runner.calls.clear();
  std::future<Status> deleted =
      std::async(std::launch::async, [&] { return lvm.Delete("eph-ab", true); });
  REQUIRE(held.WaitEntered(std::chrono::seconds(10)));
  std::future<StatusOr<Capacity>> capacity =
      std::async(std::launch::async, [&] { return lvm.GetCapacity(); });
  const bool answered = capacity.wait_for(std::chrono::seconds(10)) == std::future_status::ready;
  held.Release();
  CHECK(answered);
  CHECK(capacity.get().ok());
  CHECK(deleted.get().ok());
  CHECK(held.paths() == std::vector<std::string>{"/dev/ephemera-region0/eph-ab"});
  REQUIRE(!runner.calls.empty());
  CHECK(std::find(runner.calls.begin(), runner.calls.end(),
                  std::vector<std::string>{"lvchange", "-ay", "ephemera-region0/eph-ab"}) !=
        runner.calls.end());
  CHECK(runner.calls.back() ==
        std::vector<std::string>{"lvremove", "-y", "ephemera-region0/eph-ab"});
}

}  // namespace
}  // namespace ephemera::csi
