// VolumeManager: idempotency, capacity errors, and crash recovery with a crash injected between
// every step of create and delete (fault hook + a fake backend that can die inside Create).
#include "csi/volume_manager.h"

#include <catch2/catch.hpp>
#include <string>
#include <vector>

#include "csi/volume_id.h"
#include "fake_device_manager.h"
#include "temp_dir.h"

namespace ephemera::csi {
namespace {

using testing::FakeDeviceManager;
using testing::TempDir;

constexpr int64_t kMi = int64_t{1024} * 1024;
constexpr int64_t kPool = 64 * kMi;

const std::vector<std::string> kCreatePoints = {"create:record-written", "create:device-created",
                                                "create:ready"};
const std::vector<std::string> kDeletePoints = {"delete:marked", "delete:device-deleted"};

struct Fixture {
  TempDir dir;
  FakeDeviceManager devices{kPool};
  StateStore store{dir.path()};
  VolumeManager::Options options{16 * kMi, false};

  Fixture() { REQUIRE(store.Init().ok()); }

  // A fresh manager over the same disk state and devices: what a restarted process sees.
  std::unique_ptr<VolumeManager> Restart() {
    return std::make_unique<VolumeManager>(devices, store, options);
  }

  // The invariant after recovery: devices and ready records match one to one, nothing else.
  void CheckConsistent() {
    StatusOr<std::vector<VolumeRecord>> records = store.List();
    REQUIRE(records.ok());
    StatusOr<std::vector<Device>> all = devices.List();
    REQUIRE(all.ok());
    REQUIRE(records->size() == all->size());
    for (size_t i = 0; i < records->size(); ++i) {
      CHECK((*records)[i].phase == Phase::kReady);
      CHECK((*records)[i].id == (*all)[i].id);
      CHECK((*records)[i].size == (*all)[i].size);
    }
  }
};

Status CrashAt(std::string_view point, std::string_view target) {
  if (point == target) return Status::Unavailable(std::string("crash at ") + std::string(point));
  return Status::Ok();
}

TEST_CASE("create is idempotent by name and rejects incompatible repeats", "[csi][volumes]") {
  Fixture f;
  auto vm = f.Restart();
  StatusOr<VolumeRecord> a = vm->CreateVolume("pvc-a", 5 * kMi, 0, {});
  REQUIRE(a.ok());
  CHECK(a->size == 8 * kMi);
  CHECK(a->id == DeriveVolumeId("pvc-a"));
  StatusOr<VolumeRecord> again = vm->CreateVolume("pvc-a", 5 * kMi, 0, {});
  REQUIRE(again.ok());
  CHECK(*again == *a);
  CHECK(f.devices.size() == 1);
  CHECK(vm->CreateVolume("pvc-a", 20 * kMi, 0, {}).status().code() == Code::kAlreadyExists);
  CHECK(vm->CreateVolume("pvc-a", 5 * kMi, 0, {false}).status().code() == Code::kAlreadyExists);
  CHECK(vm->CreateVolume("pvc-a", 0, 4 * kMi, {}).status().code() == Code::kAlreadyExists);
  f.CheckConsistent();
}

TEST_CASE("the usage parameter reaches the backend and is part of the identity", "[csi][volumes]") {
  Fixture f;
  auto vm = f.Restart();
  VolumeParameters file_io;
  file_io.usage = DeviceUsage::kFileIO;
  StatusOr<VolumeRecord> a = vm->CreateVolume("pvc-f", 4 * kMi, 0, file_io);
  REQUIRE(a.ok());
  CHECK(a->usage == DeviceUsage::kFileIO);
  CHECK(f.devices.last_usage == DeviceUsage::kFileIO);
  CHECK(vm->CreateVolume("pvc-f", 4 * kMi, 0, file_io).ok());
  CHECK(vm->CreateVolume("pvc-f", 4 * kMi, 0, {}).status().code() == Code::kAlreadyExists);
  StatusOr<VolumeRecord> stored = vm->GetVolume(a->id);
  REQUIRE(stored.ok());
  CHECK(stored->usage == DeviceUsage::kFileIO);
  REQUIRE(vm->CreateVolume("pvc-g", 4 * kMi, 0, {}).ok());
  CHECK(f.devices.last_usage == DeviceUsage::kAppDirect);
}

TEST_CASE("a volume that does not fit is RESOURCE_EXHAUSTED and leaves nothing", "[csi][volumes]") {
  Fixture f;
  auto vm = f.Restart();
  REQUIRE(vm->CreateVolume("big", 60 * kMi, 0, {}).ok());
  CHECK(vm->CreateVolume("more", 8 * kMi, 0, {}).status().code() == Code::kResourceExhausted);
  CHECK(f.store.List()->size() == 1);
  CHECK(vm->GetCapacity()->available == 4 * kMi);
  f.CheckConsistent();
}

TEST_CASE("delete: missing is OK / in use is FAILED_PRECONDITION and keeps the volume",
          "[csi][volumes]") {
  Fixture f;
  auto vm = f.Restart();
  CHECK(vm->DeleteVolume("eph-does-not-exist").ok());
  StatusOr<VolumeRecord> a = vm->CreateVolume("pvc-a", 0, 0, {});
  REQUIRE(a.ok());
  f.devices.in_use[a->id] = true;
  CHECK(vm->DeleteVolume(a->id).code() == Code::kFailedPrecondition);
  CHECK(vm->GetVolume(a->id).ok());
  f.CheckConsistent();
  f.devices.in_use.clear();
  REQUIRE(vm->DeleteVolume(a->id).ok());
  CHECK(f.devices.size() == 0);
  CHECK(f.store.List()->empty());
  REQUIRE(f.devices.deletes.size() == 1);
  CHECK(f.devices.deletes[0].erase);
}

TEST_CASE("eraseafter=false is passed to the backend", "[csi][volumes]") {
  Fixture f;
  auto vm = f.Restart();
  StatusOr<VolumeRecord> a = vm->CreateVolume("pvc-a", 0, 0, {false});
  REQUIRE(a.ok());
  REQUIRE(vm->DeleteVolume(a->id).ok());
  REQUIRE(f.devices.deletes.size() == 1);
  CHECK_FALSE(f.devices.deletes[0].erase);
}

TEST_CASE("a crash at any step of create is repaired by recovery", "[csi][volumes][crash]") {
  for (const std::string& point : kCreatePoints) {
    DYNAMIC_SECTION("crash at " << point) {
      Fixture f;
      {
        auto vm = f.Restart();
        vm->SetFaultHook([&](std::string_view p) { return CrashAt(p, point); });
        CHECK(vm->CreateVolume("pvc-a", 0, 0, {}).status().code() == Code::kUnavailable);
      }
      auto vm = f.Restart();
      StatusOr<VolumeManager::RecoveryReport> report = vm->Recover();
      REQUIRE(report.ok());
      CHECK(report->orphans.empty());
      f.CheckConsistent();
      // The CO retries: exactly one volume results.
      REQUIRE(vm->CreateVolume("pvc-a", 0, 0, {}).ok());
      CHECK(f.devices.size() == 1);
      f.CheckConsistent();
    }
  }
}

TEST_CASE("a crash at any step of create is repaired by the next call", "[csi][volumes][crash]") {
  for (const std::string& point : kCreatePoints) {
    DYNAMIC_SECTION("crash at " << point) {
      Fixture f;
      {
        auto vm = f.Restart();
        vm->SetFaultHook([&](std::string_view p) { return CrashAt(p, point); });
        CHECK_FALSE(vm->CreateVolume("pvc-a", 0, 0, {}).ok());
      }
      auto vm = f.Restart();  // no Recover(): the retried call itself repairs
      StatusOr<VolumeRecord> a = vm->CreateVolume("pvc-a", 0, 0, {});
      REQUIRE(a.ok());
      CHECK(f.devices.size() == 1);
      f.CheckConsistent();
      REQUIRE(vm->DeleteVolume(a->id).ok());
      CHECK(f.devices.size() == 0);
      CHECK(f.store.List()->empty());
    }
  }
}

TEST_CASE("a crash inside the backend's create leaves no leak", "[csi][volumes][crash]") {
  Fixture f;
  {
    auto vm = f.Restart();
    f.devices.die_in_create = true;
    // The backend failed and left a half-made device: the `creating` record stays with it.
    CHECK_FALSE(vm->CreateVolume("pvc-a", 0, 0, {}).ok());
  }
  SECTION("recovery rolls the device back, without --remove-orphans (the shipped default)") {
    auto vm = f.Restart();
    StatusOr<VolumeManager::RecoveryReport> report = vm->Recover();
    REQUIRE(report.ok());
    CHECK(report->rolled_back.size() == 1);
    CHECK(report->orphans.empty());
    CHECK(f.devices.size() == 0);
    CHECK(f.store.List()->empty());
  }
  SECTION("the retried create replaces the leftover device") {
    auto vm = f.Restart();
    REQUIRE(vm->CreateVolume("pvc-a", 0, 0, {}).ok());
    CHECK(f.devices.size() == 1);
    f.CheckConsistent();
  }
}

// A backend create that failed and left its device behind (a command hung and was killed, or its
// cleanup failed): the `creating` record stays, so that the device is never without a record, and
// is rolled back.
TEST_CASE("a failed backend create that left its device keeps its record for the rollback",
          "[csi][volumes][crash]") {
  Fixture f;
  f.devices.die_in_create = true;
  const Status failure = GENERATE(Status::DeadlineExceeded("lvcreate did not finish within 2m0s"),
                                  Status::Internal("lvcreate exited with 5; lvremove failed"));
  f.devices.die_status = failure;
  SECTION("the device was left: the record stays creating, recovery removes both") {
    {
      auto vm = f.Restart();
      CHECK(vm->CreateVolume("pvc-a", 0, 0, {}).status().code() == failure.code());
      StatusOr<std::vector<VolumeRecord>> records = f.store.List();
      REQUIRE(records.ok());
      REQUIRE(records->size() == 1);
      CHECK((*records)[0].phase == Phase::kCreating);
      CHECK(f.devices.size() == 1);
      // Not a volume to anyone asking.
      CHECK(vm->GetVolume((*records)[0].id).status().code() == Code::kNotFound);
    }
    auto vm = f.Restart();
    StatusOr<VolumeManager::RecoveryReport> report = vm->Recover();
    REQUIRE(report.ok());
    CHECK(report->rolled_back.size() == 1);
    CHECK(report->orphans.empty());
    CHECK(f.devices.size() == 0);
    f.CheckConsistent();
  }
  SECTION("the device was left: the retried create replaces it") {
    auto vm = f.Restart();
    CHECK(vm->CreateVolume("pvc-a", 0, 0, {}).status().code() == failure.code());
    StatusOr<VolumeRecord> again = vm->CreateVolume("pvc-a", 0, 0, {});
    REQUIRE(again.ok());
    CHECK(f.devices.size() == 1);
    CHECK(f.devices.deletes.size() == 1);
    f.CheckConsistent();
  }
  SECTION("no device was left: no record either, as after other failures") {
    f.devices.keep_on_failure = false;
    auto vm = f.Restart();
    CHECK(vm->CreateVolume("pvc-a", 0, 0, {}).status().code() == failure.code());
    CHECK(f.devices.size() == 0);
    StatusOr<std::vector<VolumeRecord>> records = f.store.List();
    REQUIRE(records.ok());
    CHECK(records->empty());
  }
}

TEST_CASE("a crash at any step of delete is repaired", "[csi][volumes][crash]") {
  for (const std::string& point : kDeletePoints) {
    DYNAMIC_SECTION("crash at " << point) {
      Fixture f;
      std::string id;
      {
        auto vm = f.Restart();
        StatusOr<VolumeRecord> a = vm->CreateVolume("pvc-a", 0, 0, {});
        REQUIRE(a.ok());
        id = a->id;
        REQUIRE(vm->CreateVolume("pvc-keep", 0, 0, {}).ok());
        vm->SetFaultHook([&](std::string_view p) { return CrashAt(p, point); });
        CHECK(vm->DeleteVolume(id).code() == Code::kUnavailable);
        // From the CO's view the volume is gone or going: not listed as ready.
        CHECK(vm->GetVolume(id).status().code() == Code::kNotFound);
      }
      SECTION("by recovery") {
        auto vm = f.Restart();
        StatusOr<VolumeManager::RecoveryReport> report = vm->Recover();
        REQUIRE(report.ok());
        CHECK(report->finished_delete == std::vector<std::string>{id});
      }
      SECTION("by the retried delete") {
        auto vm = f.Restart();
        REQUIRE(vm->DeleteVolume(id).ok());
      }
      CHECK_FALSE(f.devices.Has(id));
      CHECK(f.store.Get(id).status().code() == Code::kNotFound);
      CHECK(f.devices.size() == 1);  // the other volume is untouched
      f.CheckConsistent();
    }
  }
}

TEST_CASE("recovery: records without device are dropped / orphans reported", "[csi][volumes]") {
  Fixture f;
  auto vm = f.Restart();
  StatusOr<VolumeRecord> a = vm->CreateVolume("pvc-a", 0, 0, {});
  REQUIRE(a.ok());
  f.devices.RemoveDevice(a->id);              // the device vanished
  f.devices.AddDevice("eph-stray", 4 * kMi);  // a device nobody recorded
  StatusOr<VolumeManager::RecoveryReport> report = f.Restart()->Recover();
  REQUIRE(report.ok());
  CHECK(report->dropped_records == std::vector<std::string>{a->id});
  CHECK(report->orphans == std::vector<std::string>{"eph-stray"});
  CHECK(report->removed_orphans.empty());
  CHECK(f.devices.Has("eph-stray"));  // reported, not removed without the flag
  CHECK(f.store.List()->empty());
}

TEST_CASE("a deleting record of a volume in use goes back to ready", "[csi][volumes][crash]") {
  Fixture f;
  std::string id;
  {
    auto vm = f.Restart();
    id = vm->CreateVolume("pvc-a", 0, 0, {})->id;
    vm->SetFaultHook([](std::string_view p) { return CrashAt(p, "delete:marked"); });
    CHECK_FALSE(vm->DeleteVolume(id).ok());
  }
  f.devices.in_use[id] = true;
  auto vm = f.Restart();
  REQUIRE(vm->Recover().ok());
  CHECK(vm->GetVolume(id).ok());
  f.CheckConsistent();
}

TEST_CASE("a volume that cannot be repaired does not stop recovery of the others",
          "[csi][volumes][crash]") {
  Fixture f;
  std::string busy;
  {
    auto vm = f.Restart();
    vm->SetFaultHook([](std::string_view p) { return CrashAt(p, "create:device-created"); });
    busy = DeriveVolumeId("pvc-busy");
    CHECK_FALSE(vm->CreateVolume("pvc-busy", 0, 0, {}).ok());
    vm->SetFaultHook(nullptr);
    REQUIRE(vm->CreateVolume("pvc-ok", 0, 0, {}).ok());
  }
  f.devices.in_use[busy] = true;  // e.g. someone mounted the half-created device by hand
  f.devices.AddDevice("eph-orphan", 4 * kMi);
  auto vm = f.Restart();
  StatusOr<VolumeManager::RecoveryReport> report = vm->Recover();
  REQUIRE(report.ok());
  REQUIRE(report->errors.size() == 1);
  CHECK(report->errors[0].starts_with(busy + ": FAILED_PRECONDITION"));
  CHECK(report->orphans == std::vector<std::string>{"eph-orphan"});
  CHECK(f.devices.Has(busy));
  CHECK(f.store.Get(busy)->phase == Phase::kCreating);  // kept for a later repair
  CHECK(vm->GetVolume(DeriveVolumeId("pvc-ok")).ok());
}

TEST_CASE("expansion grows the device and the record / never shrinks", "[csi][volumes]") {
  Fixture f;
  auto vm = f.Restart();
  std::string id = vm->CreateVolume("pvc-a", 8 * kMi, 0, {})->id;
  StatusOr<VolumeRecord> grown = vm->ExpandVolume(id, 13 * kMi, 0);
  REQUIRE(grown.ok());
  CHECK(grown->size == 16 * kMi);
  CHECK(f.devices.Get(id)->size == 16 * kMi);
  CHECK(vm->ExpandVolume(id, 4 * kMi, 0)->size == 16 * kMi);
  CHECK(vm->ExpandVolume(id, 200 * kMi, 0).status().code() == Code::kResourceExhausted);
  CHECK(vm->ExpandVolume("eph-none", 8 * kMi, 0).status().code() == Code::kNotFound);
  f.CheckConsistent();
}

TEST_CASE("a crash between the device's growth and its record is completed by the retry",
          "[csi][volumes][crash]") {
  Fixture f;
  auto vm = f.Restart();
  std::string id = vm->CreateVolume("pvc-a", 8 * kMi, 0, {})->id;
  vm->SetFaultHook([](std::string_view p) { return CrashAt(p, "expand:device-grown"); });
  CHECK(vm->ExpandVolume(id, 24 * kMi, 0).status().code() == Code::kUnavailable);
  CHECK(f.devices.Get(id)->size == 24 * kMi);
  CHECK(f.store.Get(id)->size == 8 * kMi);  // the record lags the device

  vm = f.Restart();
  REQUIRE(vm->Recover().ok());
  // The retry of the same request, and one that asks less than the device already has (the user
  // lowered the request meanwhile): both leave the device as it is and the record catches up.
  SECTION("same request") {
    StatusOr<VolumeRecord> grown = vm->ExpandVolume(id, 24 * kMi, 0);
    REQUIRE(grown.ok());
    CHECK(grown->size == 24 * kMi);
  }
  SECTION("smaller request") {
    StatusOr<VolumeRecord> grown = vm->ExpandVolume(id, 16 * kMi, 0);
    REQUIRE(grown.ok());
    CHECK(grown->size == 24 * kMi);
  }
  CHECK(f.devices.Get(id)->size == 24 * kMi);
  f.CheckConsistent();
}

TEST_CASE("a second operation on a busy volume is ABORTED", "[csi][volumes]") {
  Fixture f;
  auto vm = f.Restart();
  std::string id = DeriveVolumeId("pvc-a");
  StatusOr<VolumeLocks::Guard> held = vm->locks().TryLock(id);
  REQUIRE(held.ok());
  CHECK(vm->CreateVolume("pvc-a", 0, 0, {}).status().code() == Code::kAborted);
  CHECK(vm->DeleteVolume(id).code() == Code::kAborted);
}

}  // namespace
}  // namespace ephemera::csi
