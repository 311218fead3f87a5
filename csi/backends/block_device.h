// Checks and erasure of block devices shared by the backends that hand out kernel block devices
// (`lvm`, `direct`).
//
// Thread safety: the functions are safe to call concurrently; callers serialize work on one device.
#pragma once

#include <cstdint>
#include <string>

#include "common/status.h"

namespace ephemera::csi {

// Whether the block device is mounted or held open: an exclusive open is refused (EBUSY) then.
// false when the node does not exist. Errors: INTERNAL.
StatusOr<bool> BlockDeviceBusy(const std::string& path);

// Overwrites the first `size` bytes of the block device with zeros through an exclusive open and
// syncs them. Errors: FAILED_PRECONDITION when the device is in use; INTERNAL.
Status ZeroBlockDevice(const std::string& path, int64_t size);

}  // namespace ephemera::csi
