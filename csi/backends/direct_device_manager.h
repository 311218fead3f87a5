// The `direct` backend: one PMEM namespace per volume, made through libndctl (PmemApi).
//
// A volume is an fsdax namespace (DAX, pages aligned to 2 MiB, the page map on the PMEM itself)
// or, with usage=FileIO, a sector namespace (BTT, 4 KiB sectors, no DAX). The namespace's label
// name (alt name) is the volume ID; only namespaces whose name starts with "eph-" (the prefix of
// every ID the driver derives) are ours, so that other namespaces on the node, such as the `lvm`
// backend's, are never listed or touched.
//
// Sizes. Namespaces come in multiples of the region's alignment (its `align` times its interleave
// ways, and at least the 2 MiB fsdax alignment); Alignment() is that unit, over all regions. The
// kernel keeps the fsdax metadata inside the namespace (an 8 KiB info block and 64 bytes of page
// map per 4 KiB page, rounded up to 2 MiB; BTT keeps a map and 256 spare sectors), so the
// namespace asked for is larger than the volume: the smallest whole number of alignment units
// whose usable size covers the request. After creation the block device's real size is checked;
// when the kernel gave less than asked (a kernel whose metadata is larger than computed here), the
// namespace is made again one unit larger. Capacity and maximum volume size are rounded down: the
// largest volume that fits in the largest free contiguous range of a region (so fragmentation
// shows), and the sum of that over the regions' free space.
//
// State is the kernel's: the namespaces and their labels, read anew on every call; after a
// restart the VolumeManager matches them with its records as for the other backends.
//
// Snapshots are copies, as in the `lvm` backend: a snapshot is a namespace of its volume's mode and
// size named by the snapshot ID ("snap-...", which no volume ID starts with, so the volume calls
// and the listing never see it), filled from the volume's block device (flushed first) with an
// O_DIRECT copy. The copy is made under the name "<snapshot ID>.partial"; once it is synced the
// namespace is renamed (disabled, its label renamed, enabled again: the commit point), so a copy
// cut short by a crash is never a snapshot. A volume from a snapshot or a volume is a new namespace
// (its final name: the caller's `creating` record covers a crash) holding a copy of the source,
// the rest zeroed. Snapshots take their namespaces from the regions like volumes, so the capacity
// shows them. Copies and erases run without the backend's lock.
//
// Thread safety: every method holds one mutex, so that no two libndctl calls ever overlap.
#pragma once

#include <functional>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "csi/backends/block_device.h"
#include "csi/backends/device_manager.h"
#include "csi/backends/pmem_api.h"

namespace ephemera::csi {

inline constexpr int64_t kFsdaxAlign = int64_t{2} << 20;

// The unit of namespace sizes in `region`: align x interleave ways, and a multiple of kFsdaxAlign.
int64_t NamespaceAlignment(const PmemRegion& region);

// What the block device of a namespace of `raw` bytes will hold, as the kernel computes it: fsdax
// exactly (for a namespace starting at a 2 MiB boundary), sector a lower bound.
int64_t UsableSize(int64_t raw, PmemMode mode);

// The smallest multiple of `alignment` whose UsableSize() is at least `usable` (for sector mode,
// at a BTT arena boundary, possibly one multiple more), computed in O(log size) steps.
// OUT_OF_RANGE when no int64 size would do.
StatusOr<int64_t> RawSizeFor(int64_t usable, PmemMode mode, int64_t alignment);

// The largest multiple of `alignment` that RawSizeFor() fits into `extent` bytes (0 if none).
int64_t LargestVolumeIn(int64_t extent, int64_t alignment);

class DirectDeviceManager : public DeviceManager {
 public:
  static constexpr const char* kIdPrefix = "eph-";

  // Snapshot IDs start with it (DeriveSnapshotId), volume IDs never do.
  static constexpr std::string_view kSnapshotPrefix = "snap-";
  // The name of a snapshot's namespace while its copy is made.
  static constexpr std::string_view kPartialSuffix = ".partial";

  // `api` must outlive the manager. `erase` overwrites a block device (ZeroBlockDevice in
  // production); `copy` copies one block device onto another (CopyBlockDevice in production).
  DirectDeviceManager(PmemApi& api, Eraser erase, BlockCopier copy = CopyBlockDevice);

  // Whether the namespace name `name` is (a copy in progress of) a snapshot, not a volume.
  static bool IsSnapshotName(const std::string& name);

  // Reads the regions and fixes Alignment(). Errors: FAILED_PRECONDITION when there is no PMEM
  // region; INTERNAL.
  Status Init();

  std::string Name() const override { return "direct"; }
  int64_t Alignment() const override { return alignment_; }
  bool SupportsExpansion() const override { return false; }
  StatusOr<Device> Create(const std::string& id, int64_t size, DeviceUsage usage) override;
  Status Delete(const std::string& id, bool erase) override;
  StatusOr<Device> Get(const std::string& id) override;
  StatusOr<std::vector<Device>> List() override;
  StatusOr<Capacity> GetCapacity() override;
  // UNIMPLEMENTED: an fsdax namespace cannot grow while it is in use.
  StatusOr<Device> Expand(const std::string& id, int64_t new_size) override;

  bool SupportsSnapshots() const override { return true; }
  StatusOr<SnapshotData> CreateSnapshot(const std::string& snapshot_id,
                                        const std::string& source_id) override;
  Status DeleteSnapshot(const std::string& snapshot_id, bool erase) override;
  StatusOr<SnapshotData> GetSnapshot(const std::string& snapshot_id) override;
  StatusOr<std::vector<SnapshotData>> ListSnapshots() override;
  // The new namespace holds at least `size` bytes and at least the source's (the caller checks
  // that the source's volume size is not above `size`; a namespace's usable size may exceed it).
  StatusOr<Device> CreateFromSource(const std::string& id, int64_t size, DeviceUsage usage,
                                    SourceKind kind, const std::string& source_id) override;

 private:
  // The volume namespaces named `id` ("eph-..." only).
  StatusOr<std::vector<PmemNamespace>> FindLocked(const std::string& id);
  // The namespaces whose label name is `name`, whatever it is.
  StatusOr<std::vector<PmemNamespace>> NamedLocked(const std::string& name);
  // Makes a namespace `alt_name` of `mode` with at least `usable` bytes, starting from `raw` bytes
  // (see Create()), in the region that fits it best.
  StatusOr<PmemNamespace> MakeLocked(const std::string& alt_name, int64_t usable, int64_t raw,
                                     PmemMode mode);
  // `ns` with its block device: a namespace left disabled by a rename cut short is enabled.
  StatusOr<PmemNamespace> EnabledLocked(const PmemNamespace& ns);

  PmemApi& api_;
  Eraser erase_;
  BlockCopier copy_;
  int64_t alignment_ = kFsdaxAlign;
  std::mutex mu_;
};

}  // namespace ephemera::csi
