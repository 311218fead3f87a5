// VolumeManager: creation, deletion, expansion and crash recovery of volumes, on a DeviceManager
// and a StateStore. It knows nothing of gRPC; the CSI services translate requests into calls here.
//
// Protocol (the invariant: a device never exists without a record):
//   create: record(phase=creating) -> device -> record(phase=ready)
//   delete: record(phase=deleting) -> device removed -> record removed
// Snapshots (backends that have them) follow the same protocol with records in a store of their
// own: record(creating) -> copy -> record(ready); record(deleting) -> copy removed -> no record.
// A volume from a data source is created like any other volume, its device a copy of the source.
// Recover() (at start) and the next call for the same volume repair whatever a crash interrupted:
// a `creating` record is rolled back, a `deleting` one is finished, a `ready` record whose device
// is gone is dropped, and a device without a record is reported (and removed when configured).
// A create that fails removes its record, except when the backend timed out (DEADLINE_EXCEEDED: a
// command was killed) and the device cannot be shown to be gone: then the `creating` record stays
// for that repair.
//
// Thread safety: all methods may be called concurrently; operations on one volume ID are
// serialized by VolumeLocks (a second concurrent operation on the same ID gets ABORTED, as the CSI
// specification recommends).
#pragma once

#include <functional>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "apiclient/clock.h"
#include "csi/backends/device_manager.h"
#include "csi/parameters.h"
#include "csi/state/state_store.h"

namespace ephemera::csi {

// Per-ID mutual exclusion that fails fast instead of waiting.
class VolumeLocks {
 public:
  class Guard {
   public:
    Guard(VolumeLocks* locks, std::string id) : locks_(locks), id_(std::move(id)) {}
    Guard(Guard&& other) noexcept : locks_(other.locks_), id_(std::move(other.id_)) {
      other.locks_ = nullptr;
    }
    Guard(const Guard&) = delete;
    Guard& operator=(const Guard&) = delete;
    Guard& operator=(Guard&&) = delete;
    ~Guard() {
      if (locks_ != nullptr) locks_->Release(id_);
    }

   private:
    VolumeLocks* locks_;
    std::string id_;
  };

  // ABORTED when an operation on `id` is in progress.
  StatusOr<Guard> TryLock(const std::string& id);

 private:
  void Release(const std::string& id);
  std::mutex mu_;
  std::set<std::string> busy_;
};

class VolumeManager {
 public:
  struct Options {
    int64_t default_size = 1LL << 30;         // size of a volume created without a capacity range
    bool remove_orphans = false;              // Recover() deletes devices that have no record
    const apiclient::Clock* clock = nullptr;  // snapshots' creation times; nullptr: the system's
  };

  // The data source of a new volume.
  struct Source {
    SourceKind kind = SourceKind::kSnapshot;
    std::string id;  // a snapshot ID or a volume ID
    // "snapshot:<id>" / "volume:<id>": how a volume's record names its source.
    std::string Key() const {
      return (kind == SourceKind::kSnapshot ? "snapshot:" : "volume:") + id;
    }
  };

  // Called at the named points of create and delete ("create:record-written",
  // "create:device-created", "create:ready", "delete:marked", "delete:device-deleted",
  // "expand:device-grown", "snapshot:record-written", "snapshot:copied",
  // "snapshot-delete:marked"). A non-OK result stops the operation right there and is returned, as
  // if the process had died: the test seam for crash recovery. Never set in production.
  using FaultHook = std::function<Status(std::string_view point)>;

  struct RecoveryReport {
    std::vector<std::string> rolled_back;      // `creating` records: device and record removed
    std::vector<std::string> finished_delete;  // `deleting` records: device and record removed
    std::vector<std::string> dropped_records;  // `ready` records whose device was gone
    std::vector<std::string> orphans;          // devices without a record
    std::vector<std::string> removed_orphans;  // ... of which removed (Options::remove_orphans)
    std::vector<std::string> corrupt_records;  // record files that could not be parsed
    std::vector<std::string> rolled_back_snapshots;      // `creating` snapshots: copy removed
    std::vector<std::string> finished_snapshot_deletes;  // `deleting` snapshots: copy removed
    std::vector<std::string> dropped_snapshots;          // `ready` snapshots whose copy was gone
    std::vector<std::string> orphan_snapshots;           // snapshot copies without a record
    std::vector<std::string> errors;  // "id: status" of volumes that could not be
                                      // repaired now (left as they are, retried later)
  };

  // `snapshots` holds the snapshots' records; nullptr when the backend has no snapshots.
  VolumeManager(DeviceManager& devices, StateStore& store, Options options,
                StateStore* snapshots = nullptr);

  void SetFaultHook(FaultHook hook) { fault_hook_ = std::move(hook); }

  // Repairs the state after a restart, see above. A volume that cannot be repaired now (e.g. its
  // device is busy) is listed in `errors` and left for the next call or start. Errors: INTERNAL
  // when the records or devices cannot be listed at all.
  StatusOr<RecoveryReport> Recover();

  // Creates the volume `name` (idempotent). Errors: INVALID_ARGUMENT / OUT_OF_RANGE for the
  // capacity range (see SizeForRange); ALREADY_EXISTS when a volume of that name exists with a
  // size outside the range or other parameters; RESOURCE_EXHAUSTED when it does not fit; ABORTED
  // when an operation on it is in progress; INTERNAL.
  StatusOr<VolumeRecord> CreateVolume(const std::string& name, int64_t required_bytes,
                                      int64_t limit_bytes, const VolumeParameters& params,
                                      bool ephemeral = false);

  // Creates the volume `name` holding a copy of `source` (a ready snapshot, or a ready volume that
  // is not an inline ephemeral one). Idempotent like CreateVolume; the same name with another
  // source is ALREADY_EXISTS. Size: SizeForRange with the source's size as the default; smaller
  // than the source is OUT_OF_RANGE. A larger volume gets `grow_fs` set when the source was
  // formatted. The source stays locked during the copy (its other calls get ABORTED).
  // Errors: those of CreateVolume; NOT_FOUND for the source; UNIMPLEMENTED without snapshots in
  // the backend.
  StatusOr<VolumeRecord> CreateVolumeFrom(const std::string& name, int64_t required_bytes,
                                          int64_t limit_bytes, const VolumeParameters& params,
                                          const Source& source);

  bool SupportsSnapshots() const { return snapshots_ != nullptr && devices_.SupportsSnapshots(); }

  // Takes the snapshot `name` of the ready volume `source_volume_id` (idempotent: the same name
  // and source return the existing snapshot; another source is ALREADY_EXISTS). The volume stays
  // locked during the copy. Errors: NOT_FOUND for the volume; RESOURCE_EXHAUSTED; ABORTED;
  // UNIMPLEMENTED; INTERNAL.
  StatusOr<VolumeRecord> CreateSnapshot(const std::string& name,
                                        const std::string& source_volume_id);
  // Deletes the snapshot (idempotent), erasing its data when its volume was `eraseafter`.
  Status DeleteSnapshot(const std::string& id);
  // The ready snapshot `id`. Errors: NOT_FOUND; INTERNAL.
  StatusOr<VolumeRecord> GetSnapshot(const std::string& id);
  // Ready snapshots sorted by ID.
  StatusOr<std::vector<VolumeRecord>> ListSnapshots();

  // Deletes the volume `id` (idempotent: OK when it does not exist). Errors: FAILED_PRECONDITION
  // when it is in use; ABORTED; INTERNAL.
  Status DeleteVolume(const std::string& id);

  // The ready volume `id`. Errors: NOT_FOUND; INTERNAL.
  StatusOr<VolumeRecord> GetVolume(const std::string& id);

  // The device of the ready volume `id`. Errors: NOT_FOUND; INTERNAL.
  StatusOr<Device> GetDevice(const std::string& id);

  // Ready volumes sorted by ID; with `include_ephemeral` also inline ephemeral ones.
  StatusOr<std::vector<VolumeRecord>> ListVolumes(bool include_ephemeral);

  StatusOr<Capacity> GetCapacity() { return devices_.GetCapacity(); }

  // Grows the volume's device to SizeForRange(required, limit) (without a range: to the size the
  // record has); a no-op when the device is already as large. Idempotent after a crash: a device
  // that was grown before its record was written is taken as it is and the record catches up.
  // Errors: NOT_FOUND; INVALID_ARGUMENT / OUT_OF_RANGE for the range; RESOURCE_EXHAUSTED;
  // UNIMPLEMENTED when the backend cannot grow devices; ABORTED; INTERNAL.
  StatusOr<VolumeRecord> ExpandVolume(const std::string& id, int64_t required_bytes,
                                      int64_t limit_bytes);
  // The same for a caller that holds the volume's lock (NodeExpandVolume grows the device and
  // then the filesystem under one lock).
  StatusOr<VolumeRecord> ExpandLocked(const std::string& id, int64_t required_bytes,
                                      int64_t limit_bytes);

  // Whether a record of `id` exists in any phase.
  bool HasRecord(const std::string& id) const { return store_.Get(id).ok(); }

  // Remembers the filesystem the volume was formatted with; the caller holds the volume's lock.
  // Errors: NOT_FOUND; INTERNAL.
  Status SetFsType(const std::string& id, const std::string& fs_type);
  // Clears `grow_fs` once the node grew the filesystem; the caller holds the volume's lock.
  Status ClearGrowFs(const std::string& id);

  VolumeLocks& locks() { return locks_; }
  DeviceManager& devices() { return devices_; }

 private:
  Status Fault(std::string_view point) const {
    return fault_hook_ ? fault_hook_(point) : Status::Ok();
  }
  // `source` and `origin` (its record) are set for a volume from a data source.
  StatusOr<VolumeRecord> CreateLocked(const std::string& id, const std::string& name, int64_t size,
                                      int64_t required_bytes, int64_t limit_bytes,
                                      const VolumeParameters& params, bool ephemeral,
                                      const Source* source = nullptr,
                                      const VolumeRecord* origin = nullptr);
  Status DeleteLocked(const std::string& id);
  Status RecoverRecord(VolumeRecord& record, RecoveryReport* report);
  Status RecoverSnapshots(RecoveryReport* report);
  Status DeleteSnapshotLocked(const std::string& id);
  StatusOr<VolumeRecord> CreateFromLocked(const std::string& id, const std::string& name,
                                          int64_t required_bytes, int64_t limit_bytes,
                                          const VolumeParameters& params, const Source& source);

  DeviceManager& devices_;
  StateStore& store_;
  StateStore* snapshots_;
  const Options options_;
  FaultHook fault_hook_;
  VolumeLocks locks_;
};

}  // namespace ephemera::csi
