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
};

}  // namespace ephemera::csi
