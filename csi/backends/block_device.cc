// Block device checks and erasure (see block_device.h).
#include "csi/backends/block_device.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <vector>

#include "csi/mount_util.h"
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

namespace {

// The unit of the copy: large enough that the per-call cost vanishes, small enough to keep in
// memory.
constexpr size_t kCopyChunk = size_t{4} * 1024 * 1024;
// O_DIRECT needs buffers aligned to the logical block size; a page covers every device's.
constexpr size_t kCopyAlign = 4096;

struct FreeDeleter {
  void operator()(void* p) const {
    free(p);
  }  // NOLINT(cppcoreguidelines-no-malloc): posix_memalign
};

// Opens `path` with O_DIRECT, or without it where the file does not support it (tmpfs, or a
// length that is not a multiple of the block size: `direct` is then false).
int OpenMaybeDirect(const std::string& path, int flags, bool& direct) {
  direct = true;
  int fd = open(path.c_str(), flags | O_DIRECT | O_CLOEXEC);
  if (fd < 0 && errno == EINVAL) {
    direct = false;
    fd = open(path.c_str(), flags | O_CLOEXEC);
  }
  return fd;
}

}  // namespace

Status FlushBlockDevice(const std::string& path) {
  struct stat st {};
  if (stat(path.c_str(), &st) != 0) return Status::Internal(ErrnoMessage("stat " + path));
  if (S_ISBLK(st.st_mode)) {
    StatusOr<std::string> major_minor = DeviceMajorMinor(path);
    if (!major_minor.ok()) return major_minor.status();
    StatusOr<std::vector<MountEntry>> mounts = ReadMountInfo();
    if (!mounts.ok()) return mounts.status();
    for (const MountEntry& entry : *mounts) {
      if (entry.major_minor != *major_minor) continue;
      int fd = open(entry.mount_point.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
      if (fd < 0) continue;  // a mount in another namespace's view, or gone meanwhile
      int rc = syncfs(fd);
      int saved = errno;
      close(fd);
      if (rc != 0) return Status::Internal(ErrnoMessage("syncfs " + entry.mount_point, saved));
    }
  }
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return Status::Internal(ErrnoMessage("open " + path));
  int rc = fsync(fd);
  int saved = errno;
  close(fd);
  if (rc != 0) return Status::Internal(ErrnoMessage("fsync " + path, saved));
  return Status::Ok();
}

Status CopyBlockDevice(const std::string& source, int64_t source_size, const std::string& target,
                       int64_t target_size) {
  if (source_size < 0 || target_size < source_size) {
    return Status::InvalidArgument("copy of " + std::to_string(source_size) + " bytes into " +
                                   std::to_string(target_size) + ": sizes out of order");
  }
  EPHEMERA_RETURN_IF_ERROR(FlushBlockDevice(source));
  bool src_direct = false;
  bool dst_direct = false;
  int src = OpenMaybeDirect(source, O_RDONLY, src_direct);
  if (src < 0) return Status::Internal(ErrnoMessage("open " + source));
  int dst = OpenMaybeDirect(target, O_WRONLY | O_EXCL, dst_direct);
  if (dst < 0) {
    int saved = errno;
    close(src);
    if (saved == EBUSY) return Status::FailedPrecondition(target + " is in use");
    return Status::Internal(ErrnoMessage("open " + target, saved));
  }
  void* raw = nullptr;
  if (posix_memalign(&raw, kCopyAlign, kCopyChunk) != 0) {
    close(src);
    close(dst);
    return Status::Internal("no memory for the copy buffer");
  }
  std::unique_ptr<void, FreeDeleter> holder(raw);
  char* buffer = static_cast<char*>(raw);
  Status status;
  bool zeroed = false;  // the buffer holds zeros (for the part after the source)
  for (int64_t pos = 0; pos < target_size && status.ok();) {
    auto want = static_cast<size_t>(std::min<int64_t>(target_size - pos, kCopyChunk));
    size_t have = 0;
    if (pos < source_size) {
      want = static_cast<size_t>(std::min<int64_t>(source_size - pos, kCopyChunk));
      // A tail shorter than the block size cannot be read with O_DIRECT (only in tests: the
      // backends' sizes are multiples of megabytes).
      if (src_direct && want % kCopyAlign != 0) {
        close(src);
        src = open(source.c_str(), O_RDONLY | O_CLOEXEC);
        src_direct = false;
        if (src < 0) {
          status = Status::Internal(ErrnoMessage("open " + source));
          break;
        }
      }
      while (have < want) {
        ssize_t n = pread(src, buffer + have, want - have, pos + static_cast<int64_t>(have));
        if (n < 0) {
          if (errno == EINTR) continue;
          status = Status::Internal(ErrnoMessage("reading " + source));
          break;
        }
        if (n == 0) {
          status = Status::Internal("reading " + source + ": it ended at byte " +
                                    std::to_string(pos + static_cast<int64_t>(have)) + " of " +
                                    std::to_string(source_size));
          break;
        }
        have += static_cast<size_t>(n);
      }
      if (!status.ok()) break;
      zeroed = false;
    } else {
      if (!zeroed) memset(buffer, 0, kCopyChunk);
      zeroed = true;
      have = want;
    }
    if (dst_direct && have % kCopyAlign != 0) {
      close(dst);
      dst = open(target.c_str(), O_WRONLY | O_CLOEXEC);
      dst_direct = false;
      if (dst < 0) {
        status = Status::Internal(ErrnoMessage("open " + target));
        break;
      }
    }
    for (size_t done = 0; done < have;) {
      ssize_t n = pwrite(dst, buffer + done, have - done, pos + static_cast<int64_t>(done));
      if (n < 0) {
        if (errno == EINTR) continue;
        status = Status::Internal(ErrnoMessage("writing " + target));
        break;
      }
      if (n == 0) {
        status = Status::Internal("writing " + target + ": no progress at byte " +
                                  std::to_string(pos + static_cast<int64_t>(done)));
        break;
      }
      done += static_cast<size_t>(n);
    }
    pos += static_cast<int64_t>(have);
  }
  if (status.ok() && fdatasync(dst) != 0) {
    status = Status::Internal(ErrnoMessage("fdatasync " + target));
  }
  if (src >= 0) close(src);
  if (dst >= 0) close(dst);
  return status;
}

}  // namespace ephemera::csi
