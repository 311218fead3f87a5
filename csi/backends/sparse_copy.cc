// Sparse copies of volume files (see sparse_copy.h).
#include "csi/backends/sparse_copy.h"

#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <vector>

#include "csi/system_error.h"

namespace ephemera::csi {

namespace {

Status CopyError(const std::string& what, int error) {
  if (error == ENOSPC || error == EDQUOT) {
    return Status::ResourceExhausted(ErrnoMessage(what, error) +
                                     " (the pool directory's filesystem is full)");
  }
  return Status::Internal(ErrnoMessage(what, error));
}

// Copies [offset, end) with pread/pwrite.
Status ReadWrite(int src, int dst, off_t offset, off_t end) {
  std::vector<char> buffer(size_t{1} << 20);
  while (offset < end) {
    size_t want =
        static_cast<size_t>(std::min<off_t>(end - offset, static_cast<off_t>(buffer.size())));
    ssize_t n = pread(src, buffer.data(), want, offset);
    if (n < 0) {
      if (errno == EINTR) continue;
      return CopyError("read", errno);
    }
    if (n == 0) return Status::Internal("the source ended before its size");
    for (ssize_t done = 0; done < n;) {
      ssize_t w = pwrite(dst, buffer.data() + done, static_cast<size_t>(n - done), offset + done);
      if (w < 0) {
        if (errno == EINTR) continue;
        return CopyError("write", errno);
      }
      done += w;
    }
    offset += n;
  }
  return Status::Ok();
}

// Copies [offset, end) with copy_file_range; false in `refused` when the kernel or filesystem
// does not do it for these files (the caller falls back to ReadWrite from where it stopped).
Status CopyRange(int src, int dst, off_t& offset, off_t end, bool& refused) {
  refused = false;
  while (offset < end) {
    loff_t in = offset;
    loff_t out = offset;
    ssize_t n = copy_file_range(src, &in, dst, &out, static_cast<size_t>(end - offset), 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EXDEV || errno == EOPNOTSUPP || errno == ENOSYS || errno == EINVAL) {
        refused = true;
        return Status::Ok();
      }
      return CopyError("copy_file_range", errno);
    }
    if (n == 0) return Status::Internal("the source ended before its size");
    offset += n;
  }
  return Status::Ok();
}

}  // namespace

std::string_view CopyMethodName(CopyMethod method) {
  switch (method) {
    case CopyMethod::kReflink:
      return "reflink";
    case CopyMethod::kCopyFileRange:
      return "copy_file_range";
    case CopyMethod::kReadWrite:
      return "read/write";
  }
  return "unknown";
}

StatusOr<CopyMethod> CopySparse(int src, int dst, int64_t size, int64_t dst_size) {
  if (size < 0 || dst_size < size) return Status::InvalidArgument("bad copy sizes");
  struct stat st {};
  if (fstat(src, &st) != 0) return Status::Internal(ErrnoMessage("fstat source"));
  CopyMethod method = CopyMethod::kCopyFileRange;
  bool cloned = false;
  if (st.st_size == size && ioctl(dst, FICLONE, src) == 0) {
    cloned = true;
    method = CopyMethod::kReflink;
  }
  // Holes at the end (or everywhere, for the extent copy below) come from the size alone.
  if (ftruncate(dst, dst_size) != 0) return CopyError("truncate", errno);
  if (!cloned) {
    bool use_read_write = false;
    off_t offset = 0;
    while (offset < size) {
      off_t data = lseek(src, offset, SEEK_DATA);
      if (data < 0) {
        if (errno == ENXIO) break;  // nothing but a hole after offset
        return Status::Internal(ErrnoMessage("SEEK_DATA"));
      }
      if (data >= size) break;
      off_t hole = lseek(src, data, SEEK_HOLE);
      if (hole < 0) return Status::Internal(ErrnoMessage("SEEK_HOLE"));
      hole = std::min<off_t>(hole, size);
      off_t pos = data;
      if (!use_read_write) {
        bool refused = false;
        EPHEMERA_RETURN_IF_ERROR(CopyRange(src, dst, pos, hole, refused));
        if (refused) {
          use_read_write = true;
          method = CopyMethod::kReadWrite;
        }
      }
      if (use_read_write) EPHEMERA_RETURN_IF_ERROR(ReadWrite(src, dst, pos, hole));
      offset = hole;
    }
  }
  if (fsync(dst) != 0) return CopyError("fsync", errno);
  return method;
}

}  // namespace ephemera::csi
