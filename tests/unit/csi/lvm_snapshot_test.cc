// Snapshots and volumes from a data source in the lvm backend, through the CommandRunner seam: a
// fake LVM that keeps its logical volumes as files (so the copies are real copies of data, made by
// CopyBlockDevice), VolumeManager over it, and a crash (an exception that unwinds without any
// cleanup, as SIGKILL would stop the process) before and after every LVM command, copy and erase of
// a snapshot's create and delete and of a restore and a clone, each followed by a restart and
// recovery: nothing left behind, and the operation succeeds when asked again.
#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "csi/backends/block_device.h"
#include "csi/backends/lvm_device_manager.h"
#include "csi/volume_id.h"
#include "csi/volume_manager.h"
#include "temp_dir.h"

namespace ephemera::csi {
namespace {

using testing::TempDir;

constexpr int64_t kMi = int64_t{1024} * 1024;
constexpr const char* kVg = "ephemera-region0";
constexpr int64_t kVgSize = 128 * kMi;

// Thrown at a crash point: unwinds through the backend and VolumeManager without running any of
// their error paths, which is what a SIGKILL does to the process.
struct Crash {};

// Counts the points where a crash may come and throws at the armed one.
struct CrashPoints {
  int next = 0;
  int armed = -1;  // -1: never
  void Point() {
    if (next++ == armed) throw Crash{};
  }
};

// LVM in miniature: one volume group whose logical volumes are files in `dir` (a new one is full
// of 0xAB bytes: what the extents held before). Answers the commands the backend runs, as LVM
// does, including its refusals.
class FakeLvm : public CommandRunner {
 public:
  FakeLvm(std::string dir, CrashPoints& crash) : dir_(std::move(dir)), crash_(crash) {}

  std::string File(const std::string& name) const { return dir_ + "/" + name; }
  // The file behind a device path the backend names (/dev/<vg>/<lv>).
  std::string FileOf(const std::string& device) const {
    return File(device.substr(device.rfind('/') + 1));
  }
  std::vector<std::string> Names() const {
    std::vector<std::string> names;
    for (const auto& [name, size] : lvs_)
      names.push_back(name);
    return names;
  }
  int64_t Free() const {
    int64_t used = 0;
    for (const auto& [name, size] : lvs_)
      used += size;
    return kVgSize - used;
  }
  std::vector<std::vector<std::string>> calls;

  StatusOr<CommandResult> Run(const std::vector<std::string>& argv,
                              std::chrono::milliseconds /*timeout*/) override {
    crash_.Point();
    calls.push_back(argv);
    CommandResult result = Execute(argv);
    crash_.Point();
    return result;
  }

 private:
  CommandResult Execute(const std::vector<std::string>& argv) {
    const std::string& program = argv[0];
    if (program == "ndctl" && argv[2] == "-R") {
      return {0, R"({"dev":"region0","size":4292870144,"align":16777216,
                  "max_available_extent":4278190080,"type":"pmem"})"};
    }
    if (program == "ndctl") {
      return {0, R"([{"dev":"namespace0.0","mode":"fsdax","name":"ephemera-lvm",
                  "blockdev":"pmem0"}])"};
    }
    if (program == "vgs") {
      return {0, std::string(R"({"report":[{"vg":[{"vg_name":")") + kVg + R"(", "vg_size":")" +
                     std::to_string(kVgSize) + R"(", "vg_free":")" + std::to_string(Free()) +
                     R"(", "vg_extent_size":"4194304"}]}]})"};
    }
    if (program == "vgchange" || program == "lvchange") return {0, ""};
    if (program == "lvs") {
      std::string rows;
      for (const auto& [name, size] : lvs_) {
        if (!rows.empty()) rows += ",";
        rows.append(R"({"lv_name":")").append(name).append(R"(", "vg_name":")").append(kVg);
        rows.append(R"(", "lv_size":")").append(std::to_string(size));
        rows.append(R"(", "lv_path":"/dev/)").append(kVg).append("/").append(name);
        rows.append(R"(", "lv_attr":"-wi-a-----"})");
      }
      return {0, R"({"report":[{"lv":[)" + rows + "]}]}"};
    }
    if (program == "lvcreate") {
      const std::string& name = argv[5];
      const int64_t size = std::stoll(argv[7]);
      if (lvs_.count(name) != 0) {
        return {5, "  Logical Volume \"" + name + "\" already exists in volume group\n"};
      }
      if (size > Free()) return {5, "  Volume group has insufficient free space\n"};
      std::ofstream(File(name)) << std::string(static_cast<size_t>(size), '\xAB');
      lvs_[name] = size;
      return {0, "  Logical volume \"" + name + "\" created.\n"};
    }
    if (program == "lvremove") {
      const std::string name = argv[2].substr(argv[2].find('/') + 1);
      if (lvs_.erase(name) == 0) return {5, "  Failed to find logical volume\n"};
      std::filesystem::remove(File(name));
      return {0, ""};
    }
    if (program == "lvrename") {
      const std::string& from = argv[2];
      const std::string& to = argv[3];
      if (lvs_.count(from) == 0 || lvs_.count(to) != 0) return {5, "  cannot rename\n"};
      lvs_[to] = lvs_[from];
      lvs_.erase(from);
      std::filesystem::rename(File(from), File(to));
      return {0, ""};
    }
    return {127, program + ": not in the fake"};
  }

  std::string dir_;
  CrashPoints& crash_;
  std::map<std::string, int64_t> lvs_;
};

std::string Contents(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

// A node with the lvm backend: the fake LVM and the records survive Restart(), the rest is new.
struct Node {
  TempDir dir;
  CrashPoints crash;
  FakeLvm lvm{dir.path(), crash};
  StateStore store{dir.path() + "/state"};
  StateStore snapshots{dir.path() + "/state/snapshots"};
  std::unique_ptr<LvmDeviceManager> devices;
  std::unique_ptr<VolumeManager> volumes;
  std::vector<std::string> erased;  // device paths, in order

  Node() {
    REQUIRE(store.Init().ok());
    REQUIRE(snapshots.Init().ok());
    Restart();
  }

  void Restart() {
    volumes.reset();
    BlockCopier copy = [this](const std::string& source, int64_t source_size,
                              const std::string& target, int64_t target_size) {
      crash.Point();
      // Half of the copy written, then (at the armed point) the process dies.
      const std::string half = Contents(lvm.FileOf(source)).substr(0, source_size / 2);
      std::fstream(lvm.FileOf(target), std::ios::in | std::ios::out | std::ios::binary) << half;
      crash.Point();
      Status status =
          CopyBlockDevice(lvm.FileOf(source), source_size, lvm.FileOf(target), target_size);
      crash.Point();
      return status;
    };
    Eraser erase = [this](const std::string& path, int64_t size) {
      crash.Point();
      erased.push_back(path);
      Status status = ZeroBlockDevice(lvm.FileOf(path), size);
      crash.Point();
      return status;
    };
    devices = std::make_unique<LvmDeviceManager>(lvm, 100, erase, copy);
    REQUIRE(devices->Init().ok());
    volumes = std::make_unique<VolumeManager>(*devices, store,
                                              VolumeManager::Options{16 * kMi, false}, &snapshots);
  }

  std::string Volume(const std::string& name, int64_t size, const std::string& data) {
    StatusOr<VolumeRecord> record = volumes->CreateVolume(name, size, 0, VolumeParameters{});
    REQUIRE(record.ok());
    std::fstream(lvm.File(record->id), std::ios::in | std::ios::out | std::ios::binary) << data;
    return record->id;
  }

  std::vector<std::string> Records(StateStore& records) {
    StatusOr<std::vector<VolumeRecord>> list = records.List();
    REQUIRE(list.ok());
    std::vector<std::string> ids;
    for (const VolumeRecord& r : *list)
      ids.push_back(r.id + (r.phase == Phase::kReady ? "" : " (not ready)"));
    return ids;
  }
};

TEST_CASE("lvm: a snapshot is a copy, restored and cloned into larger volumes",
          "[lvm][snapshots]") {
  Node node;
  REQUIRE(node.devices->SupportsSnapshots());
  const std::string data(static_cast<size_t>(3 * kMi), 'v');
  const std::string volume = node.Volume("pvc", 16 * kMi, data);
  const int64_t free_before = node.lvm.Free();

  node.lvm.calls.clear();
  StatusOr<VolumeRecord> snapshot = node.volumes->CreateSnapshot("snap", volume);
  REQUIRE(snapshot.ok());
  const std::string snap = snapshot->id;
  CHECK(snap == DeriveSnapshotId("snap"));
  CHECK(snapshot->size == 16 * kMi);
  // Made under a temporary name in the volume's group, without zeroing (the copy writes every
  // block), then renamed: the commit point.
  REQUIRE(node.lvm.calls.size() >= 2);
  const std::vector<std::string> expected_create = {
      "lvcreate", "-y", "-Zn", "-Wn", "-n", snap + ".partial", "-L", "16777216B", kVg};
  CHECK(std::find(node.lvm.calls.begin(), node.lvm.calls.end(), expected_create) !=
        node.lvm.calls.end());
  CHECK(node.lvm.calls.back() ==
        std::vector<std::string>{"lvrename", kVg, snap + ".partial", snap});
  // The snapshot takes its full size from the group: the capacity shows it.
  CHECK(node.lvm.Free() == free_before - 16 * kMi);
  StatusOr<Capacity> capacity = node.devices->GetCapacity();
  REQUIRE(capacity.ok());
  CHECK(capacity->available == free_before - 16 * kMi);
  CHECK(Contents(node.lvm.File(snap)) == Contents(node.lvm.File(volume)));

  // Volumes and snapshots are told apart by name.
  StatusOr<std::vector<Device>> devices = node.devices->List();
  REQUIRE(devices.ok());
  REQUIRE(devices->size() == 1);
  CHECK((*devices)[0].id == volume);
  StatusOr<std::vector<SnapshotData>> snapshots = node.devices->ListSnapshots();
  REQUIRE(snapshots.ok());
  REQUIRE(snapshots->size() == 1);
  CHECK((*snapshots)[0].id == snap);
  CHECK((*snapshots)[0].allocated == 16 * kMi);
  // A volume's calls never reach a snapshot's logical volume.
  CHECK(node.devices->Get(snap).status().code() == Code::kNotFound);
  CHECK(node.devices->Delete(snap, true).ok());
  CHECK(node.devices->GetSnapshot(snap).ok());
  // ... nor a snapshot's calls a volume's.
  CHECK(node.devices->DeleteSnapshot(volume, true).ok());
  CHECK(node.devices->GetSnapshot(volume).status().code() == Code::kNotFound);
  CHECK(node.devices->Get(volume).ok());
  CHECK(node.devices->Expand(snap, 32 * kMi).status().code() == Code::kNotFound);

  // The volume changes after the snapshot: the snapshot does not.
  std::fstream(node.lvm.File(volume), std::ios::in | std::ios::out | std::ios::binary)
      << std::string(static_cast<size_t>(kMi), 'w');

  // Restore into a larger volume: the snapshot's bytes, then zeros (not the 0xAB a new logical
  // volume holds here).
  StatusOr<VolumeRecord> restored =
      node.volumes->CreateVolumeFrom("restored", 24 * kMi, 0, VolumeParameters{},
                                     VolumeManager::Source{SourceKind::kSnapshot, snap});
  REQUIRE(restored.ok());
  CHECK(restored->size == 24 * kMi);
  std::string copy = Contents(node.lvm.File(restored->id));
  REQUIRE(copy.size() == static_cast<size_t>(24 * kMi));
  CHECK(copy.substr(0, static_cast<size_t>(16 * kMi)) == Contents(node.lvm.File(snap)));
  CHECK(copy.substr(0, data.size()) == data);
  CHECK(copy.find_first_not_of('\0', static_cast<size_t>(16 * kMi)) == std::string::npos);

  // Clone of the volume: its bytes as they are now.
  StatusOr<VolumeRecord> clone = node.volumes->CreateVolumeFrom(
      "clone", 0, 0, VolumeParameters{}, VolumeManager::Source{SourceKind::kVolume, volume});
  REQUIRE(clone.ok());
  CHECK(clone->size == 16 * kMi);
  CHECK(Contents(node.lvm.File(clone->id)) == Contents(node.lvm.File(volume)));

  // Smaller than the source: OUT_OF_RANGE; unknown, or a snapshot given as a volume: NOT_FOUND.
  CHECK(node.devices
            ->CreateFromSource("eph-small", 8 * kMi, DeviceUsage::kAppDirect, SourceKind::kSnapshot,
                               snap)
            .status()
            .code() == Code::kOutOfRange);
  CHECK(
      node.devices
          ->CreateFromSource("eph-x", 16 * kMi, DeviceUsage::kAppDirect, SourceKind::kVolume, snap)
          .status()
          .code() == Code::kNotFound);
  CHECK(node.devices
            ->CreateFromSource("eph-x", 16 * kMi, DeviceUsage::kAppDirect, SourceKind::kSnapshot,
                               DeriveSnapshotId("none"))
            .status()
            .code() == Code::kNotFound);
  CHECK(node.devices->CreateSnapshot(DeriveSnapshotId("s2"), "eph-none").status().code() ==
        Code::kNotFound);

  // The pool is full: RESOURCE_EXHAUSTED, and nothing is left of the attempt.
  const std::vector<std::string> before_full = node.lvm.Names();
  std::string big = node.Volume("big", node.lvm.Free(), "");
  CHECK(node.volumes->CreateSnapshot("snap-full", volume).status().code() ==
        Code::kResourceExhausted);
  CHECK(node.volumes->DeleteVolume(big).ok());
  CHECK(node.lvm.Names() == before_full);

  // Everything deleted, the snapshot erased (its volume was eraseafter=true): the pool as before.
  node.erased.clear();
  REQUIRE(node.volumes->DeleteSnapshot(snap).ok());
  CHECK(node.erased == std::vector<std::string>{"/dev/" + std::string(kVg) + "/" + snap});
  REQUIRE(node.volumes->DeleteVolume(restored->id).ok());
  REQUIRE(node.volumes->DeleteVolume(clone->id).ok());
  REQUIRE(node.volumes->DeleteVolume(volume).ok());
  CHECK(node.lvm.Names().empty());
  CHECK(node.lvm.Free() == kVgSize);
  CHECK(node.Records(node.store).empty());
  CHECK(node.Records(node.snapshots).empty());
}

// Every point where the process may die during a snapshot's create and delete and a restore and a
// clone: after the restart (Init and Recover) no logical volume and no record is left of the
// operation, and it succeeds when asked again (a delete: is complete).
TEST_CASE("lvm: a crash at any point of a snapshot, restore or clone leaves nothing behind",
          "[lvm][snapshots][crash]") {
  for (const std::string operation : {"snapshot", "delete-snapshot", "restore", "clone"}) {
    DYNAMIC_SECTION(operation) {
      // One extent (4 MiB) a volume: every point of four operations copies and erases for real,
      // which under ThreadSanitizer took over the unit tests' 60 s with 16 MiB volumes.
      int crashes = 0;
      for (int point = 0;; ++point) {
        Node node;
        const std::string volume = node.Volume("pvc", 4 * kMi, std::string(4096, 'v'));
        std::string snap;
        if (operation != "snapshot") {
          StatusOr<VolumeRecord> taken = node.volumes->CreateSnapshot("snap", volume);
          REQUIRE(taken.ok());
          snap = taken->id;
        }
        const std::vector<std::string> lvs_before = node.lvm.Names();
        auto run = [&]() -> Status {
          if (operation == "snapshot") return node.volumes->CreateSnapshot("snap", volume).status();
          if (operation == "delete-snapshot") return node.volumes->DeleteSnapshot(snap);
          VolumeManager::Source source{
              operation == "restore" ? SourceKind::kSnapshot : SourceKind::kVolume,
              operation == "restore" ? snap : volume};
          return node.volumes->CreateVolumeFrom("new", 8 * kMi, 0, VolumeParameters{}, source)
              .status();
        };
        node.crash.next = 0;
        node.crash.armed = point;
        bool crashed = false;
        try {
          Status status = run();
          INFO(status.ToString());
          REQUIRE(status.ok());
        } catch (const Crash&) {
          crashed = true;
        }
        node.crash.armed = -1;
        if (!crashed) break;  // every point was tried
        ++crashes;
        INFO(operation << ": crash at point " << point);
        node.Restart();
        StatusOr<VolumeManager::RecoveryReport> report = node.volumes->Recover();
        REQUIRE(report.ok());
        CHECK(report->errors.empty());
        CHECK(report->orphans.empty());
        CHECK(report->orphan_snapshots.empty());
        // Nothing of the interrupted operation: the logical volumes are those before it, or (a
        // delete, or a create that got to its end) those after it.
        const std::vector<std::string> lvs_after = node.lvm.Names();
        for (const std::string& name : lvs_after)
          CHECK(name.find(".partial") == std::string::npos);
        for (const std::string& record : node.Records(node.store))
          CHECK(record.find("not ready") == std::string::npos);
        for (const std::string& record : node.Records(node.snapshots))
          CHECK(record.find("not ready") == std::string::npos);
        if (lvs_after != lvs_before) {
          // The operation's result is there only when its record is ready.
          CHECK(lvs_after.size() == lvs_before.size() + (operation == "delete-snapshot" ? -1 : 1));
        }
        // Done again (or for the first time): it succeeds, and the state is what it should be.
        REQUIRE(run().ok());
        // The volume; the snapshot (taken first for the others); the new volume.
        const size_t expected_lvs = operation == "delete-snapshot" ? 1
                                    : operation == "snapshot"      ? 2
                                                                   : 3;
        CHECK(node.lvm.Names().size() == expected_lvs);
        CHECK(node.Records(node.store).size() ==
              (operation == "restore" || operation == "clone" ? size_t{2} : size_t{1}));
        CHECK(node.Records(node.snapshots).size() ==
              (operation == "delete-snapshot" ? size_t{0} : size_t{1}));
        if (operation == "restore" || operation == "clone") {
          const std::string copy = Contents(node.lvm.File(DeriveVolumeId("new")));
          CHECK(copy.substr(0, 4096) == std::string(4096, 'v'));
          CHECK(copy.find_first_not_of('\0', static_cast<size_t>(4 * kMi)) == std::string::npos);
        }
      }
      // Crash points: every LVM command (before and after), the copy's three, the erase's two.
      CHECK(crashes >= 6);
    }
  }
}

TEST_CASE("CopyBlockDevice copies, zeroes the rest and refuses a smaller target", "[lvm]") {
  TempDir dir;
  const std::string source = dir.path() + "/source";
  const std::string target = dir.path() + "/target";
  std::string data(static_cast<size_t>(5 * kMi + 123), 'x');
  data[17] = 'y';
  std::ofstream(source) << data;
  std::ofstream(target) << std::string(static_cast<size_t>(9 * kMi), '\xAB');
  REQUIRE(CopyBlockDevice(source, static_cast<int64_t>(data.size()), target, 9 * kMi).ok());
  const std::string copy = Contents(target);
  REQUIRE(copy.size() == static_cast<size_t>(9 * kMi));
  CHECK(copy.substr(0, data.size()) == data);
  CHECK(copy.find_first_not_of('\0', data.size()) == std::string::npos);
  CHECK(CopyBlockDevice(source, 4 * kMi, target, 2 * kMi).code() == Code::kInvalidArgument);
  CHECK(CopyBlockDevice(dir.path() + "/none", 4 * kMi, target, 4 * kMi).code() == Code::kInternal);
}

}  // namespace
}  // namespace ephemera::csi
