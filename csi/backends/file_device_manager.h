// The `file` backend: each volume is a sparse file <dir>/<id>.img attached to a loop device.
//
// The pool is a configured number of bytes; a volume takes its full size from the pool whether or
// not its blocks are allocated yet, so capacity is never overcommitted by the driver (the
// directory's filesystem must still have room for the pool: Init() warns when it has not). Sizes
// are multiples of 4 MiB. Erasing overwrites the allocated extents of the file with zeros (found
// with SEEK_DATA/SEEK_HOLE) and syncs before the file is unlinked: the cost is proportional to what
// the volume wrote, not to its size, and no earlier data stays in the blocks the directory's
// filesystem hands out next.
//
// Thread safety: all methods are serialized by one mutex.
#pragma once

#include <mutex>
#include <string>

#include "csi/backends/device_manager.h"

namespace ephemera::csi {

class FileDeviceManager : public DeviceManager {
 public:
  static constexpr int64_t kAlignment = int64_t{4} * 1024 * 1024;

  // `dir` is created if missing; `pool_size` is rounded down to 4 MiB. `erase` overwrites a
  // volume's file (EraseFile in production).
  FileDeviceManager(std::string dir, int64_t pool_size, Eraser erase);

  // Creates the directory, canonicalizes its path, detaches loop devices whose file in the
  // directory was deleted, and attaches a loop device to every volume file that has none (after a
  // reboot). Must succeed before any other call.
  Status Init();

  std::string Name() const override { return "file"; }
  int64_t Alignment() const override { return kAlignment; }
  StatusOr<Device> Create(const std::string& id, int64_t size, DeviceUsage usage) override;
  Status Delete(const std::string& id, bool erase) override;
  StatusOr<Device> Get(const std::string& id) override;
  StatusOr<std::vector<Device>> List() override;
  StatusOr<Capacity> GetCapacity() override;
  StatusOr<Device> Expand(const std::string& id, int64_t new_size) override;

 private:
  std::string FilePath(const std::string& id) const;
  // Bytes new volumes can still get, rounded down to the alignment.
  StatusOr<int64_t> FreeLocked() const;
  StatusOr<Device> GetLocked(const std::string& id, bool attach);

  std::string dir_;
  const int64_t pool_size_;
  const Eraser erase_;
  std::mutex mu_;
};

// Overwrites every allocated extent of the open file `fd` with zeros and syncs it.
Status ZeroAllocatedExtents(int fd);
// ZeroAllocatedExtents of the file at `path` (an Eraser; `size` is not needed). OK when the file
// does not exist.
Status EraseFile(const std::string& path, int64_t size);

}  // namespace ephemera::csi
