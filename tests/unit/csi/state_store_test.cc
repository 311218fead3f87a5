// Volume records: round trip, atomic replacement, corrupt files.
#include "csi/state/state_store.h"

#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "temp_dir.h"

namespace ephemera::csi {
namespace {

using testing::TempDir;

VolumeRecord Sample(const std::string& id) {
  VolumeRecord record;
  record.id = id;
  record.name = "pvc-\"quoted\"/name";
  record.size = 8 << 20;
  record.erase_after = false;
  record.ephemeral = true;
  record.phase = Phase::kDeleting;
  record.fs_type = "xfs";
  return record;
}

TEST_CASE("records round-trip through JSON", "[csi][state]") {
  VolumeRecord record = Sample("eph-1");
  StatusOr<VolumeRecord> parsed = ParseRecord(SerializeRecord(record));
  REQUIRE(parsed.ok());
  CHECK(*parsed == record);
  record.usage = DeviceUsage::kFileIO;
  parsed = ParseRecord(SerializeRecord(record));
  REQUIRE(parsed.ok());
  CHECK(parsed->usage == DeviceUsage::kFileIO);
  CHECK(ParseRecord("{").status().code() == Code::kDataLoss);
  CHECK(ParseRecord("{\"version\": 2}").status().code() == Code::kDataLoss);
  CHECK(ParseRecord(R"({"version":1,"id":"../x","name":"n","size":1,"eraseAfter":true,)"
                    R"("ephemeral":false,"phase":"ready"})")
            .status()
            .code() == Code::kInvalidArgument);
}

TEST_CASE("records with numbers of the wrong kind are refused, not converted", "[csi][state]") {
  const auto with = [](const std::string& field, const std::string& value) {
    nlohmann::json j = nlohmann::json::parse(SerializeRecord(Sample("eph-1")));
    j[field] = nlohmann::json::parse(value);
    return ParseRecord(j.dump());
  };
  // A float out of int64_t's range: get<int64_t>() of it was undefined behaviour (fuzz_json).
  for (const std::string value :
       {"1e132", "-1e300", "8.5", "18446744073709551615", "\"8\"", "null"}) {
    INFO(value);
    CHECK(with("size", value).status().code() == Code::kDataLoss);
    CHECK(with("createdNs", value).status().code() == Code::kDataLoss);
    CHECK(with("version", value).status().code() == Code::kDataLoss);
  }
  CHECK(with("size", "-1").status().code() == Code::kDataLoss);
  CHECK(ParseRecord("[1]").status().code() == Code::kDataLoss);
  CHECK(with("size", "9223372036854775807").ok());
  CHECK(with("createdNs", "1764288000000000000").ok());
}

TEST_CASE("the store puts / gets / lists and removes records", "[csi][state]") {
  TempDir dir;
  StateStore store(dir.path() + "/state");
  REQUIRE(store.Init().ok());
  CHECK(store.Get("eph-1").status().code() == Code::kNotFound);
  REQUIRE(store.Put(Sample("eph-2")).ok());
  REQUIRE(store.Put(Sample("eph-1")).ok());
  VolumeRecord changed = Sample("eph-1");
  changed.phase = Phase::kReady;
  REQUIRE(store.Put(changed).ok());  // replaces atomically
  CHECK(*store.Get("eph-1") == changed);
  StatusOr<std::vector<VolumeRecord>> all = store.List();
  REQUIRE(all.ok());
  REQUIRE(all->size() == 2);
  CHECK((*all)[0].id == "eph-1");
  CHECK((*all)[1].id == "eph-2");
  REQUIRE(store.Remove("eph-1").ok());
  REQUIRE(store.Remove("eph-1").ok());  // idempotent
  CHECK(store.List()->size() == 1);
  // No temp files stay behind.
  for (const auto& entry : std::filesystem::directory_iterator(store.dir())) {
    CHECK(entry.path().extension() == ".json");
  }
  // Hostile IDs never become a path.
  CHECK(store.Get("../etc/passwd").status().code() == Code::kInvalidArgument);
  CHECK(store.Put(Sample("a/b")).code() == Code::kInvalidArgument);
}

TEST_CASE("corrupt records are reported / temp files of interrupted writes removed",
          "[csi][state]") {
  TempDir dir;
  StateStore store(dir.path());
  REQUIRE(store.Init().ok());
  REQUIRE(store.Put(Sample("eph-good")).ok());
  std::ofstream(dir.path() + "/eph-bad.json") << "{ not json";
  std::ofstream(dir.path() + "/eph-new.json.tmp") << "{ half";
  REQUIRE(store.Init().ok());
  CHECK_FALSE(std::filesystem::exists(dir.path() + "/eph-new.json.tmp"));
  std::vector<std::string> corrupt;
  StatusOr<std::vector<VolumeRecord>> all = store.List(&corrupt);
  REQUIRE(all.ok());
  CHECK(all->size() == 1);
  REQUIRE(corrupt.size() == 1);
  CHECK(corrupt[0] == "eph-bad.json");
  CHECK(store.Get("eph-bad").status().code() == Code::kDataLoss);
}

}  // namespace
}  // namespace ephemera::csi
