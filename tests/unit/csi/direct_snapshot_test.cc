// Snapshots and volumes from a data source in the direct backend, against the fake PmemApi (which
// renames as the kernel does: disabled, renamed, enabled) and a copier that works on the fake's
// device contents; VolumeManager over it, and a crash (an exception that unwinds without any
// cleanup, as SIGKILL would stop the process) before and after every namespace change, every step
// of a rename, copy and erase of a snapshot's create and delete and of a restore and a clone, each
// followed by a restart and recovery: nothing left behind, and the operation succeeds when asked
// again.
#include <catch2/catch.hpp>
#include <memory>
#include <string>
#include <vector>

#include "csi/backends/direct_device_manager.h"
#include "csi/volume_id.h"
#include "csi/volume_manager.h"
#include "fake_pmem_api.h"
#include "temp_dir.h"

namespace ephemera::csi {
namespace {

using testing::FakePmemApi;
using testing::kMiB;
using testing::TempDir;

// Thrown at a crash point: unwinds through the backend and VolumeManager without running any of
// their error paths, which is what a SIGKILL does to the process.
struct Crash {};

struct Copy {
  std::string source;
  int64_t source_size = 0;
  std::string target;
  int64_t target_size = 0;
};

// A node with the direct backend: the fake region and the records survive Restart(), the rest is
// new.
struct Node {
  TempDir dir;
  FakePmemApi api{int64_t{4278190080}};
  int next = 0;
  int armed = -1;  // the crash point that throws; -1: none
  StateStore store{dir.path() + "/state"};
  StateStore snapshots{dir.path() + "/state/snapshots"};
  std::unique_ptr<DirectDeviceManager> devices;
  std::unique_ptr<VolumeManager> volumes;
  std::vector<std::string> erased;  // device paths, in order
  std::vector<Copy> copies;

  Node() {
    api.crash_point = [this] { Point(); };
    REQUIRE(store.Init().ok());
    REQUIRE(snapshots.Init().ok());
    Restart();
  }

  void Point() {
    if (next++ == armed) throw Crash{};
  }

  void Restart() {
    volumes.reset();
    BlockCopier copy = [this](const std::string& source, int64_t source_size,
                              const std::string& target, int64_t target_size) -> Status {
      Point();
      if (target_size < source_size) return Status::InvalidArgument("target smaller");
      copies.push_back(Copy{source, source_size, target, target_size});
      // Half of the copy written, then (at the armed point) the process dies.
      const std::string& from = api.data[source];
      api.data[target] = from.substr(0, from.size() / 2);
      Point();
      api.data[target] = api.data[source];
      Point();
      return Status::Ok();
    };
    Eraser erase = [this](const std::string& path, int64_t /*size*/) -> Status {
      Point();
      if (api.busy.count(path) != 0) return Status::FailedPrecondition(path + " in use");
      erased.push_back(path);
      api.data[path].clear();
      Point();
      return Status::Ok();
    };
    devices = std::make_unique<DirectDeviceManager>(api, erase, copy);
    REQUIRE(devices->Init().ok());
    volumes = std::make_unique<VolumeManager>(*devices, store,
                                              VolumeManager::Options{32 * kMiB, false}, &snapshots);
  }

  std::string Volume(const std::string& name, int64_t size, const std::string& data) {
    StatusOr<VolumeRecord> record = volumes->CreateVolume(name, size, 0, VolumeParameters{});
    REQUIRE(record.ok());
    api.data[api.DeviceOf(record->id)] = data;
    return record->id;
  }

  PmemNamespace Namespace(const std::string& alt_name) {
    StatusOr<std::vector<PmemNamespace>> all = api.Namespaces();
    REQUIRE(all.ok());
    for (const PmemNamespace& ns : *all) {
      if (ns.alt_name == alt_name) return ns;
    }
    FAIL("no namespace " << alt_name);
    return {};
  }

  int64_t Available() {
    StatusOr<Capacity> capacity = devices->GetCapacity();
    REQUIRE(capacity.ok());
    return capacity->available;
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

TEST_CASE("direct: a snapshot is a copy in a namespace of its own, restored and cloned",
          "[csi][direct][snapshots]") {
  Node node;
  REQUIRE(node.devices->SupportsSnapshots());
  const std::string data(4096, 'v');
  const int64_t available0 = node.Available();
  const std::string volume = node.Volume("pvc", 32 * kMiB, data);
  const PmemNamespace origin = node.Namespace(volume);
  const int64_t available1 = node.Available();

  StatusOr<VolumeRecord> snapshot = node.volumes->CreateSnapshot("snap", volume);
  REQUIRE(snapshot.ok());
  const std::string snap = snapshot->id;
  CHECK(snap == DeriveSnapshotId("snap"));
  CHECK(snapshot->size == 32 * kMiB);
  // A namespace of the volume's mode and size, made as "<id>.partial", filled from the volume's
  // block device, then renamed (one rename: the commit point).
  const PmemNamespace copy = node.Namespace(snap);
  CHECK(copy.mode == origin.mode);
  CHECK(copy.raw_size == origin.raw_size);
  CHECK(node.api.renames == 1);
  REQUIRE(node.copies.size() == 1);
  CHECK(node.copies[0].source == "/dev/" + origin.blockdev);
  CHECK(node.copies[0].source_size == origin.usable_size);
  CHECK(node.copies[0].target == "/dev/" + copy.blockdev);
  CHECK(node.api.data["/dev/" + copy.blockdev] == data);
  CHECK(node.api.Names() == std::vector<std::string>{volume, snap});
  // The snapshot takes its namespace from the region: the capacity shows it.
  CHECK(available1 - node.Available() >= 32 * kMiB);

  // Volumes and snapshots are told apart by name.
  StatusOr<std::vector<Device>> devices = node.devices->List();
  REQUIRE(devices.ok());
  REQUIRE(devices->size() == 1);
  CHECK((*devices)[0].id == volume);
  StatusOr<std::vector<SnapshotData>> listed = node.devices->ListSnapshots();
  REQUIRE(listed.ok());
  REQUIRE(listed->size() == 1);
  CHECK((*listed)[0].id == snap);
  CHECK((*listed)[0].allocated == origin.raw_size);
  // A volume's calls never reach a snapshot's namespace ...
  CHECK(node.devices->Get(snap).status().code() == Code::kNotFound);
  CHECK(node.devices->Delete(snap, true).ok());
  CHECK(node.devices->GetSnapshot(snap).ok());
  // ... nor a snapshot's calls a volume's.
  CHECK(node.devices->DeleteSnapshot(volume, true).ok());
  CHECK(node.devices->GetSnapshot(volume).status().code() == Code::kNotFound);
  CHECK(node.devices->Get(volume).ok());
  CHECK(node.erased.empty());

  // The volume changes after the snapshot: the snapshot does not.
  node.api.data["/dev/" + origin.blockdev] = std::string(4096, 'w');

  // Restore into a larger volume: a new namespace, the snapshot's data.
  StatusOr<VolumeRecord> restored =
      node.volumes->CreateVolumeFrom("restored", 64 * kMiB, 0, VolumeParameters{},
                                     VolumeManager::Source{SourceKind::kSnapshot, snap});
  REQUIRE(restored.ok());
  CHECK(restored->size == 64 * kMiB);
  CHECK(node.api.data[node.api.DeviceOf(restored->id)] == data);
  CHECK(node.copies.back().source == "/dev/" + copy.blockdev);
  CHECK(node.copies.back().target_size >= 64 * kMiB);  // the rest zeroed by the copier

  // Clone of the volume: its data as it is now.
  StatusOr<VolumeRecord> clone = node.volumes->CreateVolumeFrom(
      "clone", 0, 0, VolumeParameters{}, VolumeManager::Source{SourceKind::kVolume, volume});
  REQUIRE(clone.ok());
  CHECK(clone->size == 32 * kMiB);
  CHECK(node.api.data[node.api.DeviceOf(clone->id)] == std::string(4096, 'w'));

  // A restore with usage=FileIO: a sector namespace holding the same data.
  VolumeParameters fileio;
  fileio.usage = DeviceUsage::kFileIO;
  StatusOr<VolumeRecord> sector = node.volumes->CreateVolumeFrom(
      "sector", 0, 0, fileio, VolumeManager::Source{SourceKind::kSnapshot, snap});
  REQUIRE(sector.ok());
  CHECK(node.Namespace(sector->id).mode == PmemMode::kSector);
  CHECK(node.api.data[node.api.DeviceOf(sector->id)] == data);

  // Smaller than the source: OUT_OF_RANGE; unknown, a snapshot given as a volume or the reverse,
  // a copy in progress: NOT_FOUND.
  CHECK(node.volumes
            ->CreateVolumeFrom("small", 16 * kMiB, 16 * kMiB, VolumeParameters{},
                               VolumeManager::Source{SourceKind::kSnapshot, snap})
            .status()
            .code() == Code::kOutOfRange);
  for (const auto& [kind, source] : std::vector<std::pair<SourceKind, std::string>>{
           {SourceKind::kVolume, snap},
           {SourceKind::kSnapshot, volume},
           {SourceKind::kSnapshot, snap + ".partial"},
           {SourceKind::kSnapshot, DeriveSnapshotId("none")}}) {
    INFO(source);
    CHECK(node.devices->CreateFromSource("eph-x", 32 * kMiB, DeviceUsage::kAppDirect, kind, source)
              .status()
              .code() == Code::kNotFound);
  }
  CHECK(node.devices->CreateSnapshot(DeriveSnapshotId("s2"), "eph-none").status().code() ==
        Code::kNotFound);
  CHECK(node.devices->CreateSnapshot(snap, volume).status().code() == Code::kAlreadyExists);

  // The region is full: RESOURCE_EXHAUSTED, and nothing is left of the attempt.
  const std::vector<std::string> before_full = node.api.Names();
  StatusOr<Capacity> capacity = node.devices->GetCapacity();
  REQUIRE(capacity.ok());
  const std::string big = node.Volume("big", capacity->max_volume_size, "");
  CHECK(node.volumes->CreateSnapshot("snap-full", volume).status().code() ==
        Code::kResourceExhausted);
  CHECK(node.volumes->DeleteVolume(big).ok());
  CHECK(node.api.Names() == before_full);

  // Everything deleted, the snapshot erased (its volume was eraseafter=true): the region as before.
  node.erased.clear();
  const std::string snap_device = "/dev/" + copy.blockdev;
  REQUIRE(node.volumes->DeleteSnapshot(snap).ok());
  CHECK(node.erased == std::vector<std::string>{snap_device});
  for (const std::string& id : {restored->id, clone->id, sector->id, volume}) {
    REQUIRE(node.volumes->DeleteVolume(id).ok());
  }
  CHECK(node.api.Count() == 0);
  CHECK(node.Available() == available0);
  CHECK(node.Records(node.store).empty());
  CHECK(node.Records(node.snapshots).empty());
}

TEST_CASE("direct: a snapshot left disabled by a rename cut short is enabled for its erase",
          "[csi][direct][snapshots]") {
  Node node;
  const std::string volume = node.Volume("pvc", 32 * kMiB, std::string(4096, 'v'));
  const std::string snap = DeriveSnapshotId("snap");
  // The rename's steps are four crash points after the copy's three: stop between "disabled" and
  // "renamed".
  const int renames = node.api.renames;
  int point = 0;
  for (;; ++point) {
    node.next = 0;
    node.armed = point;
    bool crashed = false;
    try {
      // Outside Catch's macros, which would take the Crash for a failure.
      const Status status = node.devices->CreateSnapshot(snap, volume).status();
      INFO(status.ToString());
    } catch (const Crash&) {
      crashed = true;
    }
    REQUIRE(crashed);
    node.armed = -1;
    if (node.api.renames > renames) break;
    REQUIRE(node.devices->DeleteSnapshot(snap, false).ok());
  }
  // Either name, disabled: no block device to copy from or erase.
  const std::vector<std::string> names = node.api.Names();
  REQUIRE(names.size() == 2);
  CHECK(names[1].ends_with(" (disabled)"));
  CHECK(node.devices->ListSnapshots()->empty());
  REQUIRE(node.devices->DeleteSnapshot(snap, true).ok());
  REQUIRE(node.erased.size() == 1);
  CHECK(node.api.Names() == std::vector<std::string>{volume});
}

// Every point where the process may die during a snapshot's create and delete and a restore and a
// clone: after the restart (Init and Recover) no namespace and no record is left of the
// operation, and it succeeds when asked again (a delete: is complete).
TEST_CASE("direct: a crash at any point of a snapshot, restore or clone leaves nothing behind",
          "[csi][direct][snapshots][crash]") {
  for (const std::string operation : {"snapshot", "delete-snapshot", "restore", "clone"}) {
    DYNAMIC_SECTION(operation) {
      int crashes = 0;
      for (int point = 0;; ++point) {
        Node node;
        const std::string volume = node.Volume("pvc", 32 * kMiB, std::string(4096, 'v'));
        std::string snap;
        if (operation != "snapshot") {
          StatusOr<VolumeRecord> taken = node.volumes->CreateSnapshot("snap", volume);
          REQUIRE(taken.ok());
          snap = taken->id;
        }
        const std::vector<std::string> before = node.api.Names();
        const int64_t available_before = node.Available();
        auto run = [&]() -> Status {
          if (operation == "snapshot") return node.volumes->CreateSnapshot("snap", volume).status();
          if (operation == "delete-snapshot") return node.volumes->DeleteSnapshot(snap);
          VolumeManager::Source source{
              operation == "restore" ? SourceKind::kSnapshot : SourceKind::kVolume,
              operation == "restore" ? snap : volume};
          return node.volumes->CreateVolumeFrom("new", 64 * kMiB, 0, VolumeParameters{}, source)
              .status();
        };
        node.next = 0;
        node.armed = point;
        bool crashed = false;
        try {
          Status status = run();
          INFO(status.ToString());
          REQUIRE(status.ok());
        } catch (const Crash&) {
          crashed = true;
        }
        node.armed = -1;
        if (!crashed) break;  // every point was tried
        ++crashes;
        INFO(operation << ": crash at point " << point);
        node.Restart();
        StatusOr<VolumeManager::RecoveryReport> report = node.volumes->Recover();
        REQUIRE(report.ok());
        CHECK(report->errors.empty());
        CHECK(report->orphans.empty());
        CHECK(report->orphan_snapshots.empty());
        // Nothing of the interrupted operation: the namespaces are those before it, or (a delete,
        // or a create that got to its end) those after it; none half-made or disabled.
        const std::vector<std::string> after = node.api.Names();
        for (const std::string& name : after) {
          CHECK(name.find(".partial") == std::string::npos);
          CHECK(name.find("(disabled)") == std::string::npos);
        }
        for (const std::string& record : node.Records(node.store))
          CHECK(record.find("not ready") == std::string::npos);
        for (const std::string& record : node.Records(node.snapshots))
          CHECK(record.find("not ready") == std::string::npos);
        if (after == before) {
          CHECK(node.Available() == available_before);
        } else {
          CHECK(after.size() == before.size() + (operation == "delete-snapshot" ? -1 : 1));
        }
        // Done again (or for the first time): it succeeds, and the state is what it should be.
        REQUIRE(run().ok());
        const size_t expected = operation == "delete-snapshot" ? 1
                                : operation == "snapshot"      ? 2
                                                               : 3;
        CHECK(node.api.Names().size() == expected);
        CHECK(node.Records(node.store).size() ==
              (operation == "restore" || operation == "clone" ? size_t{2} : size_t{1}));
        CHECK(node.Records(node.snapshots).size() ==
              (operation == "delete-snapshot" ? size_t{0} : size_t{1}));
        if (operation == "snapshot") {
          CHECK(node.api.data[node.api.DeviceOf(DeriveSnapshotId("snap"))] ==
                std::string(4096, 'v'));
        }
        if (operation == "restore" || operation == "clone") {
          CHECK(node.api.data[node.api.DeviceOf(DeriveVolumeId("new"))] == std::string(4096, 'v'));
        }
      }
      // Crash points: before and after each namespace made or destroyed, the copy's three, the
      // rename's four, the erase's two.
      const int expected = operation == "snapshot"          ? 2 + 3 + 4
                           : operation == "delete-snapshot" ? 2 + 2
                                                            : 2 + 3;
      CHECK(crashes == expected);
    }
  }
}

}  // namespace
}  // namespace ephemera::csi
