// DeviceManager: the seam between the CSI driver and the storage that backs its volumes.
//
// A backend hands out block devices, one per volume ID, carved from a pool of fixed size. The
// `file` backend (sparse files on loop devices) implements it today; `direct` (an ndctl namespace
// per volume on a PMEM region) and `lvm` (a logical volume per volume in a volume group on the
// PMEM namespaces) fit the same contract: they name devices by volume ID (IDs are at most 63
// characters of [A-Za-z0-9._-], which ndctl and LVM both accept), have an allocation unit, and can
// tell what exists after a restart.
//
// Callers (VolumeManager) validate IDs and serialize operations on one ID; backends still keep
// their own accounting consistent under concurrent calls for different IDs.
//
// Thread safety: every method may be called concurrently for different IDs.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "common/status.h"

namespace ephemera::csi {

// What a volume is for (the "usage" parameter). kAppDirect: a filesystem mounted with DAX where
// the backend can offer it. kFileIO: ordinary block I/O; the `direct` backend gives it a sector
// (BTT) namespace, whose writes of a sector are atomic, and no DAX. The `file` and `lvm` backends
// hand out the same kind of device for both.
enum class DeviceUsage { kAppDirect, kFileIO };

struct Device {
  std::string id;             // the volume ID
  int64_t size = 0;           // bytes, a multiple of the backend's alignment
  std::string path;           // the block device node, e.g. /dev/loop3
  bool supports_dax = false;  // whether the filesystem on it may be mounted with -o dax
};

struct Capacity {
  int64_t total = 0;            // size of the pool, rounded down to the alignment
  int64_t available = 0;        // what new volumes can still get, rounded down to the alignment
  int64_t max_volume_size = 0;  // the largest single volume that would fit now
};

// Overwrites the data of a volume so that the next one cannot read it: `path` is the device (or,
// for the file backend, the volume's file), `size` its size in bytes. Backends take one so that a
// test can watch or hold an erase.
using Eraser = std::function<Status(const std::string& path, int64_t size)>;

// A snapshot's copy of a volume's data, held by the backend beside the volumes.
struct SnapshotData {
  std::string id;         // the snapshot ID
  int64_t size = 0;       // bytes: the size of the volume it was taken of
  int64_t allocated = 0;  // bytes of the pool it takes (what the pool accounts for it)
  std::string method;  // how the copy was made ("reflink", "copy_file_range", ...), "" if unknown
};

// Where the data of a new volume comes from.
enum class SourceKind { kSnapshot, kVolume };

class DeviceManager {
 public:
  virtual ~DeviceManager() = default;

  // A short name for logs and metrics: "file", "direct", "lvm".
  virtual std::string Name() const = 0;

  // Allocation unit in bytes; every device size is a multiple of it.
  virtual int64_t Alignment() const = 0;

  // Whether Expand() can ever succeed; the driver offers EXPAND_VOLUME only when it can.
  virtual bool SupportsExpansion() const { return true; }

  // Creates the device `id` of at least `size` bytes (a positive multiple of Alignment()) for
  // `usage`. The `file` and `lvm` backends make it exactly `size`; `direct` may give a little more,
  // as the kernel's metadata forces whole alignment units.
  // Errors: ALREADY_EXISTS if a device `id` exists (whatever its size); RESOURCE_EXHAUSTED if the
  // pool cannot hold it; INVALID_ARGUMENT for a size that is not a positive multiple of the
  // alignment; INTERNAL for a failure of the system. On error nothing is left behind, except after
  // a crash, which the caller repairs through Delete().
  virtual StatusOr<Device> Create(const std::string& id, int64_t size, DeviceUsage usage) = 0;

  // Removes the device `id`; when `erase` is set, the data it held is overwritten first, so that
  // the next volume cannot read it. OK when there is no such device (deletion is idempotent).
  // The erase (minutes for a big volume) runs without the backend's own lock, so the other
  // volumes' calls go on meanwhile; the caller keeps every other call on `id` away until it ends.
  // Errors: FAILED_PRECONDITION when the device is in use (mounted or held open);
  // INTERNAL for a failure of the system.
  virtual Status Delete(const std::string& id, bool erase) = 0;

  // The device `id`. Errors: NOT_FOUND when it does not exist; INTERNAL.
  virtual StatusOr<Device> Get(const std::string& id) = 0;

  // Every device of the pool, sorted by ID. Errors: INTERNAL.
  virtual StatusOr<std::vector<Device>> List() = 0;

  // The state of the pool. Errors: INTERNAL.
  virtual StatusOr<Capacity> GetCapacity() = 0;

  // Grows the device `id` to `new_size` bytes (a multiple of Alignment()) while it may be in use;
  // a device that is already at least that large is returned as it is (a retry after a crash).
  // Errors: UNIMPLEMENTED when the backend cannot grow devices; NOT_FOUND; RESOURCE_EXHAUSTED
  // when the pool cannot hold the growth; INVALID_ARGUMENT for a size that is not aligned;
  // INTERNAL.
  virtual StatusOr<Device> Expand(const std::string& id, int64_t new_size) = 0;

  // Snapshots and volumes from a data source. Backends without them keep these defaults
  // (UNIMPLEMENTED), and the driver advertises neither the snapshot nor the clone capability.
  virtual bool SupportsSnapshots() const { return false; }

  // Copies the data of the device `source_id` into the snapshot `snapshot_id`. The caller keeps
  // every other call on the source and the snapshot away meanwhile. A copy interrupted by a crash
  // is never taken for a finished snapshot (GetSnapshot: NOT_FOUND; DeleteSnapshot removes it).
  // Errors: NOT_FOUND for the source; ALREADY_EXISTS if the snapshot exists; RESOURCE_EXHAUSTED
  // when the pool cannot hold it; INTERNAL.
  virtual StatusOr<SnapshotData> CreateSnapshot(const std::string& /*snapshot_id*/,
                                                const std::string& /*source_id*/) {
    return Status::Unimplemented("snapshots are not offered by the " + Name() + " backend");
  }
  // Removes the snapshot, whole or partial, erasing its data first when `erase`. OK when absent.
  virtual Status DeleteSnapshot(const std::string& /*snapshot_id*/, bool /*erase*/) {
    return Status::Unimplemented("snapshots are not offered by the " + Name() + " backend");
  }
  // The finished snapshot. Errors: NOT_FOUND; INTERNAL.
  virtual StatusOr<SnapshotData> GetSnapshot(const std::string& /*snapshot_id*/) {
    return Status::Unimplemented("snapshots are not offered by the " + Name() + " backend");
  }
  // Every finished snapshot, sorted by ID. Errors: INTERNAL.
  virtual StatusOr<std::vector<SnapshotData>> ListSnapshots() {
    return Status::Unimplemented("snapshots are not offered by the " + Name() + " backend");
  }
  // Like Create, but the device holds a copy of the snapshot or device `source_id` (whose size
  // must not exceed `size`; the rest of the device reads as zeros). The caller keeps every other
  // call on the source away. Errors: those of Create; NOT_FOUND for the source.
  virtual StatusOr<Device> CreateFromSource(const std::string& /*id*/, int64_t /*size*/,
                                            DeviceUsage /*usage*/, SourceKind /*kind*/,
                                            const std::string& /*source_id*/) {
    return Status::Unimplemented("volumes from a data source are not offered by the " + Name() +
                                 " backend");
  }
};

}  // namespace ephemera::csi
