// Checks and erasure of block devices shared by the backends that hand out kernel block devices
// (`lvm`, `direct`).
//
// Thread safety: the functions are safe to call concurrently; callers serialize work on one device.
#pragma once

#include <cstdint>
#include <functional>
#include <string>

#include "common/status.h"

namespace ephemera::csi {

// Whether the block device is mounted or held open: an exclusive open is refused (EBUSY) then.
// false when the node does not exist. Errors: INTERNAL.
StatusOr<bool> BlockDeviceBusy(const std::string& path);

// Writes down what the filesystems mounted from the block device at `path` hold in memory (syncfs
// of every mount of it) and the device's own page cache (fsync), so that a copy of the device read
// afterwards has what was written before the call: a crash-consistent image, as after a power cut.
// A path that is not a block device (a regular file in the unit tests) is only fsynced.
// Errors: INTERNAL.
Status FlushBlockDevice(const std::string& path);

// Copies a volume's data between block devices (a snapshot, a restore, a clone): flushes `source`
// (FlushBlockDevice), copies its first `source_size` bytes onto `target`, writes zeros over the
// rest of the target up to `target_size` (a block device has no holes: a new logical volume holds
// whatever its extents held before), and syncs the target. Reads and writes bypass the page cache
// (O_DIRECT) where the files allow it, so that the copy neither reads stale cached blocks nor
// evicts the page cache of the node's other volumes; the target is opened exclusively. Both may be
// regular files (the unit tests). Errors: INVALID_ARGUMENT for sizes out of order;
// FAILED_PRECONDITION when the target is in use; INTERNAL.
using BlockCopier = std::function<Status(const std::string& source, int64_t source_size,
                                         const std::string& target, int64_t target_size)>;
Status CopyBlockDevice(const std::string& source, int64_t source_size, const std::string& target,
                       int64_t target_size);

// Overwrites the first `size` bytes of the block device with zeros through an exclusive open and
// syncs them. Errors: FAILED_PRECONDITION when the device is in use; INTERNAL.
Status ZeroBlockDevice(const std::string& path, int64_t size);

}  // namespace ephemera::csi
