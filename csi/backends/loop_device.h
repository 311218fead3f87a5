// Loop devices through the kernel's ioctls: attach a file, find the devices backed by a file,
// detach, grow, and tell whether a device is in use.
//
// The ioctls are used directly instead of losetup: LOOP_CONFIGURE attaches and configures in one
// atomic call, there is no output to parse, no process to start per operation, and sysfs
// (/sys/block/loopN/loop/backing_file) answers "which device holds this file" after a restart.
//
// Thread safety: the functions are safe to call concurrently; attaching retries when another
// process takes the free device first.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/status.h"

namespace ephemera::csi {

// Attaches `file` (an absolute, canonical path) to a free loop device; returns "/dev/loopN".
StatusOr<std::string> AttachLoop(const std::string& file);

// The loop devices ("/dev/loopN") whose backing file is `file`, including devices whose file has
// been unlinked since ("file (deleted)" in sysfs).
// Reads every loop device's backing file in sysfs: the cost grows with the machine's loop devices.
StatusOr<std::vector<std::string>> FindLoopsForFile(const std::string& file);

// The backing file of one loop device ("/dev/loopN") as sysfs shows it (with " (deleted)" when it
// was unlinked); "" when the device has none (detached) or is not a loop device. One sysfs read.
std::string LoopBackingFile(const std::string& device);

// Every loop device whose backing file lies directly in `dir` as (device, backing file) pairs; the
// file name has any " (deleted)" suffix removed and `deleted` set.
struct LoopInfo {
  std::string device;
  std::string file;
  bool deleted = false;
};
StatusOr<std::vector<LoopInfo>> ListLoopsInDir(const std::string& dir);

// True when the device is mounted (anywhere, also as a bind mount of the device node) or held
// open exclusively.
StatusOr<bool> LoopInUse(const std::string& device);

// Detaches the loop device. OK when it is already detached.
Status DetachLoop(const std::string& device);

// Makes the loop device pick up the new size of its backing file.
Status RefreshLoopCapacity(const std::string& device);

// Size of a block device in bytes.
StatusOr<int64_t> BlockDeviceSize(const std::string& device);

}  // namespace ephemera::csi
