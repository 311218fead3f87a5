// Copying a volume's sparse file so that its holes stay holes: a snapshot, a restore or a clone
// takes as many blocks as the source has data, not its full size.
//
// Thread safety: pure functions on the descriptors they are given.
#pragma once

#include <cstdint>
#include <string_view>

#include "common/status.h"

namespace ephemera::csi {

// How a copy was made, for the log and the benchmark.
enum class CopyMethod {
  kReflink,        // FICLONE: the destination shares the source's extents (xfs, btrfs)
  kCopyFileRange,  // the data extents (SEEK_DATA/SEEK_HOLE) copied with copy_file_range
  kReadWrite,      // the same extents with pread/pwrite (copy_file_range refused)
};
std::string_view CopyMethodName(CopyMethod method);

// Makes the open, empty, writable regular file `dst` a copy of the first `size` bytes of `src`
// (open for reading), `dst_size` bytes long (>= size; the rest a hole), and syncs it. Tries a
// reflink of the whole file first (only when size == the source's size), then copies the data
// extents; holes are never written. Errors: INTERNAL carrying errno text; RESOURCE_EXHAUSTED when
// the destination's filesystem is full (ENOSPC, EDQUOT).
StatusOr<CopyMethod> CopySparse(int src, int dst, int64_t size, int64_t dst_size);

}  // namespace ephemera::csi
