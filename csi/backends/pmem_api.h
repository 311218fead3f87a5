// PmemApi: the few libnvdimm operations the `direct` backend needs, behind an interface so that
// its size and placement logic can be tested with a fake. LibndctlPmemApi (libndctl_pmem_api.h)
// is the real one.
//
// Thread safety: none; the caller serializes every call (libndctl's context is not thread-safe).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/status.h"

namespace ephemera::csi {

struct PmemRegion {
  std::string name;                  // "region0"
  int64_t size = 0;                  // bytes
  int64_t available = 0;             // bytes not yet given to namespaces
  int64_t max_available_extent = 0;  // the largest contiguous free range
  int64_t align = 0;                 // the region's namespace size alignment, per mapping
  int interleave_ways = 1;           // number of DIMMs the region stripes across
};

enum class PmemMode { kFsdax, kSector, kOther };

struct PmemNamespace {
  std::string name;      // "namespace0.1"
  std::string region;    // "region0"
  std::string alt_name;  // the label's name: the volume ID for ours
  PmemMode mode = PmemMode::kOther;
  int64_t raw_size = 0;     // the namespace's size in the region
  int64_t usable_size = 0;  // the block device's size after fsdax / BTT metadata
  std::string blockdev;     // "pmem0.1", "pmem0.2s"; empty when not enabled
};

class PmemApi {
 public:
  virtual ~PmemApi() = default;

  // PMEM regions that are enabled. Errors: INTERNAL.
  virtual StatusOr<std::vector<PmemRegion>> Regions() = 0;

  // Namespaces of those regions that have a size (the seeds, of size 0, are left out).
  // Errors: INTERNAL.
  virtual StatusOr<std::vector<PmemNamespace>> Namespaces() = 0;

  // Creates and enables a namespace of `raw_size` bytes (a multiple of the region's alignment) in
  // `region` named `alt_name`: fsdax with `fsdax_align` page alignment and its page map on the
  // PMEM, or sector with 4 KiB sectors. On error nothing of it is left enabled; a half-configured
  // namespace is destroyed. Errors: RESOURCE_EXHAUSTED when the kernel refuses the size; INTERNAL.
  virtual StatusOr<PmemNamespace> CreateNamespace(const std::string& region,
                                                  const std::string& alt_name, int64_t raw_size,
                                                  PmemMode mode, int64_t fsdax_align) = 0;

  // Disables and deletes the namespace `name` (e.g. "namespace0.1"). OK when it does not exist.
  // Errors: FAILED_PRECONDITION when its block device is mounted or held open; INTERNAL.
  virtual Status DestroyNamespace(const std::string& name) = 0;

  // Gives the namespace `name` the label name `alt_name`, keeping its data: the namespace is
  // disabled (its fsdax or sector personality released), renamed in its label, and enabled
  // again, the kernel finding its personality from the info block on the media. A process killed
  // part-way leaves it disabled (no block device) under the old or the new name; renaming it again
  // enables it. Errors: NOT_FOUND; FAILED_PRECONDITION when it is in use; INTERNAL.
  virtual Status RenameNamespace(const std::string& name, const std::string& alt_name) = 0;
};

}  // namespace ephemera::csi
