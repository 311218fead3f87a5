// Block device checks and erasure (see block_device.h).
#include "csi/backends/block_device.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <vector>

#include "csi/system_error.h"

namespace ephemera::csi {

StatusOr<bool> BlockDeviceBusy(const std::string& path) {
  int fd = open(path.c_str(), O_RDONLY | O_EXCL | O_CLOEXEC);
  if (fd < 0) {
    if (errno == EBUSY) return true;
    if (errno == ENOENT) return false;
    return Status::Internal(ErrnoMessage("open " + path));
  }
  close(fd);
  return false;
}

Status ZeroBlockDevice(const std::string& path, int64_t size) {
  int fd = open(path.c_str(), O_WRONLY | O_EXCL | O_CLOEXEC);
  if (fd < 0) {
    if (errno == EBUSY) return Status::FailedPrecondition(path + " is in use");
    return Status::Internal(ErrnoMessage("open " + path));
  }
  static const std::vector<char> kZeros(size_t{1024} * 1024, 0);
  Status status;
  for (int64_t pos = 0; pos < size && status.ok();) {
    auto chunk =
        static_cast<size_t>(std::min<int64_t>(size - pos, static_cast<int64_t>(kZeros.size())));
    ssize_t n = pwrite(fd, kZeros.data(), chunk, pos);
    if (n < 0) {
      if (errno == EINTR) continue;
      status = Status::Internal(ErrnoMessage("zeroing " + path));
      break;
    }
    if (n == 0) {  // the device ended before `size` (it shrank, or the size was wrong)
      status = Status::Internal("zeroing " + path + ": no progress at byte " + std::to_string(pos) +
                                " of " + std::to_string(size));
      break;
    }
    pos += n;
  }
  if (status.ok() && fdatasync(fd) != 0) status = Status::Internal(ErrnoMessage("fdatasync"));
  close(fd);
  return status;
}

}  // namespace ephemera::csi
