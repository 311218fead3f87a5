// The direct backend (see direct_device_manager.h).
#include "csi/backends/direct_device_manager.h"

#include <algorithm>
#include <limits>
#include <numeric>

#include "common/log.h"
#include "csi/parameters.h"
#include "csi/volume_id.h"

namespace ephemera::csi {

namespace {

constexpr int64_t kPage = 4096;
constexpr int64_t kInfoBlock = 8192;  // the pfn info block the kernel keeps before the page map
constexpr int64_t kStructPage = 64;   // bytes of page map per page (the kernel's upper bound)
constexpr int64_t kMiB = int64_t{1} << 20;
constexpr int64_t kArena = int64_t{512} << 30;  // the largest BTT arena

bool Ours(const PmemNamespace& ns) {
  return ns.alt_name.starts_with(DirectDeviceManager::kIdPrefix) &&
         ValidateVolumeId("alt_name", ns.alt_name).ok();
}

Device ToDevice(const PmemNamespace& ns) {
  return Device{ns.alt_name, ns.usable_size, ns.blockdev.empty() ? "" : "/dev/" + ns.blockdev,
                ns.mode == PmemMode::kFsdax && !ns.blockdev.empty()};
}

PmemMode ModeFor(DeviceUsage usage) {
  return usage == DeviceUsage::kFileIO ? PmemMode::kSector : PmemMode::kFsdax;
}

}  // namespace

int64_t NamespaceAlignment(const PmemRegion& region) {
  int64_t unit = std::max<int64_t>(region.align, 1) * std::max(region.interleave_ways, 1);
  return std::lcm(unit, kFsdaxAlign);
}

int64_t UsableSize(int64_t raw, PmemMode mode) {
  if (raw <= 0) return 0;
  int64_t overhead = 0;
  if (mode == PmemMode::kFsdax) {
    // The kernel's layout: info block, then the page map for the pages that follow, the data
    // starting at the next fsdax alignment boundary.
    int64_t pages = (raw - kInfoBlock) / kPage;
    overhead = kInfoBlock + kStructPage * pages;
    overhead += (kFsdaxAlign - overhead % kFsdaxAlign) % kFsdaxAlign;
  } else {
    // BTT: a 4-byte map entry per 4 KiB sector, 256 spare sectors, info blocks and the log; a
    // generous bound per arena.
    overhead = raw / 1024 + 2 * kMiB * (1 + raw / kArena);
  }
  int64_t usable = raw - overhead;
  return usable <= 0 ? 0 : usable - usable % kPage;
}

StatusOr<int64_t> RawSizeFor(int64_t usable, PmemMode mode, int64_t alignment) {
  const auto too_large = [usable] {
    return Status::OutOfRange(std::to_string(usable) + " bytes: too large a namespace");
  };
  usable = std::max<int64_t>(usable, 1);
  // Either mode's metadata takes less than 1/32 of the namespace plus 64 MiB: the answer lies
  // between `usable` and that much more. Found by bisection, never by stepping: a pod may ask for
  // exabytes, and the backend's lock is held meanwhile.
  const int64_t slack = usable / 32 + (int64_t{64} << 20);
  if (usable > std::numeric_limits<int64_t>::max() - slack) return too_large();
  StatusOr<int64_t> low = RoundUp(usable, alignment);
  StatusOr<int64_t> high = RoundUp(usable + slack, alignment);
  if (!low.ok() || !high.ok() || UsableSize(*high, mode) < usable) return too_large();
  // The smallest multiple whose usable size suffices. UsableSize grows with the size except by a
  // few KiB where a BTT gets another arena; `hi` always suffices, so the answer does too.
  int64_t lo = *low / alignment;
  int64_t hi = *high / alignment;
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (UsableSize(mid * alignment, mode) >= usable) {
      hi = mid;
    } else {
      lo = mid + 1;
    }
  }
  return hi * alignment;
}

int64_t LargestVolumeIn(int64_t extent, int64_t alignment) {
  int64_t size = RoundDown(UsableSize(RoundDown(extent, alignment), PmemMode::kFsdax), alignment);
  while (size > 0) {
    StatusOr<int64_t> raw = RawSizeFor(size, PmemMode::kFsdax, alignment);
    if (raw.ok() && *raw <= extent) return size;
    size -= alignment;
  }
  return 0;
}

DirectDeviceManager::DirectDeviceManager(PmemApi& api, Eraser erase, BlockCopier copy)
    : api_(api), erase_(std::move(erase)), copy_(std::move(copy)) {}

bool DirectDeviceManager::IsSnapshotName(const std::string& name) {
  return name.starts_with(kSnapshotPrefix);
}

Status DirectDeviceManager::Init() {
  std::lock_guard<std::mutex> lock(mu_);
  StatusOr<std::vector<PmemRegion>> regions = api_.Regions();
  if (!regions.ok()) return regions.status();
  if (regions->empty()) return Status::FailedPrecondition("no enabled PMEM region");
  alignment_ = kFsdaxAlign;
  for (const PmemRegion& region : *regions) {
    alignment_ = std::lcm(alignment_, NamespaceAlignment(region));
    log::Info("direct backend: region",
              {{"region", region.name},
               {"size", std::to_string(region.size)},
               {"available", std::to_string(region.available)},
               {"largestExtent", std::to_string(region.max_available_extent)},
               {"align", std::to_string(region.align)},
               {"interleaveWays", std::to_string(region.interleave_ways)}});
  }
  log::Info("direct backend: allocation unit", {{"bytes", std::to_string(alignment_)}});
  return Status::Ok();
}

StatusOr<std::vector<PmemNamespace>> DirectDeviceManager::FindLocked(const std::string& id) {
  StatusOr<std::vector<PmemNamespace>> all = api_.Namespaces();
  if (!all.ok()) return all.status();
  std::vector<PmemNamespace> found;
  for (PmemNamespace& ns : *all) {
    if (ns.alt_name == id && Ours(ns)) found.push_back(std::move(ns));
  }
  return found;
}

StatusOr<std::vector<PmemNamespace>> DirectDeviceManager::NamedLocked(const std::string& name) {
  StatusOr<std::vector<PmemNamespace>> all = api_.Namespaces();
  if (!all.ok()) return all.status();
  std::vector<PmemNamespace> found;
  for (PmemNamespace& ns : *all) {
    if (ns.alt_name == name) found.push_back(std::move(ns));
  }
  return found;
}

StatusOr<PmemNamespace> DirectDeviceManager::MakeLocked(const std::string& alt_name, int64_t usable,
                                                        int64_t raw, PmemMode mode) {
  // A kernel may keep more metadata than UsableSize() computes: then the namespace is made again,
  // larger by what was missing.
  for (int attempt = 0; attempt < 3; ++attempt) {
    StatusOr<std::vector<PmemRegion>> regions = api_.Regions();
    if (!regions.ok()) return regions.status();
    // Best fit: the region whose largest free range is the smallest that holds the namespace.
    const PmemRegion* best = nullptr;
    int64_t largest = 0;
    for (const PmemRegion& region : *regions) {
      largest = std::max(largest, LargestVolumeIn(region.max_available_extent, alignment_));
      if (region.max_available_extent >= raw &&
          (best == nullptr || region.max_available_extent < best->max_available_extent)) {
        best = &region;
      }
    }
    if (best == nullptr) {
      return Status::ResourceExhausted("volume of " + std::to_string(usable) +
                                       " bytes (namespace of " + std::to_string(raw) +
                                       " bytes) does not fit: the largest volume that fits has " +
                                       std::to_string(largest) + " bytes");
    }
    StatusOr<PmemNamespace> ns = api_.CreateNamespace(best->name, alt_name, raw, mode, kFsdaxAlign);
    if (!ns.ok()) return ns.status();
    if (ns->usable_size >= usable && !ns->blockdev.empty()) return ns;
    log::Warning("direct backend: namespace too small; making it again",
                 {{"namespace", ns->name},
                  {"bytes", std::to_string(raw)},
                  {"usable", std::to_string(ns->usable_size)},
                  {"asked", std::to_string(usable)}});
    EPHEMERA_RETURN_IF_ERROR(api_.DestroyNamespace(ns->name));
    StatusOr<int64_t> more = RoundUp(usable - std::min(ns->usable_size, usable), alignment_);
    if (!more.ok()) return more.status();
    raw += std::max(*more, alignment_);
  }
  return Status::Internal("could not make a namespace with " + std::to_string(usable) +
                          " usable bytes");
}

StatusOr<Device> DirectDeviceManager::Create(const std::string& id, int64_t size,
                                             DeviceUsage usage) {
  EPHEMERA_RETURN_IF_ERROR(ValidateVolumeId("id", id));
  if (!id.starts_with(kIdPrefix)) {
    return Status::InvalidArgument("id: the direct backend names namespaces \"" +
                                   std::string(kIdPrefix) + "...\"");
  }
  std::lock_guard<std::mutex> lock(mu_);
  if (size <= 0 || size % alignment_ != 0) {
    return Status::InvalidArgument("size " + std::to_string(size) +
                                   " is not a positive multiple of the allocation unit " +
                                   std::to_string(alignment_));
  }
  StatusOr<std::vector<PmemNamespace>> existing = FindLocked(id);
  if (!existing.ok()) return existing.status();
  if (!existing->empty()) return Status::AlreadyExists("device " + id + " exists");

  PmemMode mode = ModeFor(usage);
  StatusOr<int64_t> raw = RawSizeFor(size, mode, alignment_);
  if (!raw.ok()) return raw.status();
  StatusOr<PmemNamespace> ns = MakeLocked(id, size, *raw, mode);
  if (!ns.ok()) return ns.status();
  return ToDevice(*ns);
}

Status DirectDeviceManager::Delete(const std::string& id, bool erase) {
  EPHEMERA_RETURN_IF_ERROR(ValidateVolumeId("id", id));
  if (erase) {
    std::vector<PmemNamespace> found;
    {
      std::lock_guard<std::mutex> lock(mu_);
      StatusOr<std::vector<PmemNamespace>> namespaces = FindLocked(id);
      if (!namespaces.ok()) return namespaces.status();
      found = std::move(*namespaces);
    }
    // Without the lock: the caller keeps the other calls on this volume away, so its namespaces
    // stay as they are while the other volumes' calls go on. The exclusive open of the eraser fails
    // while the device is mounted: nothing is erased then, and the caller gets
    // FAILED_PRECONDITION.
    for (const PmemNamespace& ns : found) {
      if (!ns.blockdev.empty()) {
        EPHEMERA_RETURN_IF_ERROR(erase_("/dev/" + ns.blockdev, ns.usable_size));
      }
    }
  }
  std::lock_guard<std::mutex> lock(mu_);
  StatusOr<std::vector<PmemNamespace>> found = FindLocked(id);
  if (!found.ok()) return found.status();
  for (const PmemNamespace& ns : *found) {
    EPHEMERA_RETURN_IF_ERROR(api_.DestroyNamespace(ns.name));
  }
  return Status::Ok();
}

StatusOr<Device> DirectDeviceManager::Get(const std::string& id) {
  EPHEMERA_RETURN_IF_ERROR(ValidateVolumeId("id", id));
  std::lock_guard<std::mutex> lock(mu_);
  StatusOr<std::vector<PmemNamespace>> found = FindLocked(id);
  if (!found.ok()) return found.status();
  if (found->empty()) return Status::NotFound("device " + id + " not found");
  const PmemNamespace& ns = found->front();
  if (ns.blockdev.empty()) {
    return Status::Internal("namespace " + ns.name + " of " + id + " has no enabled block device");
  }
  return ToDevice(ns);
}

StatusOr<std::vector<Device>> DirectDeviceManager::List() {
  std::lock_guard<std::mutex> lock(mu_);
  StatusOr<std::vector<PmemNamespace>> all = api_.Namespaces();
  if (!all.ok()) return all.status();
  std::vector<Device> devices;
  for (const PmemNamespace& ns : *all) {
    if (!Ours(ns)) continue;
    devices.push_back(ToDevice(ns));
  }
  std::sort(devices.begin(), devices.end(),
            [](const Device& a, const Device& b) { return a.id < b.id; });
  devices.erase(std::unique(devices.begin(), devices.end(),
                            [](const Device& a, const Device& b) { return a.id == b.id; }),
                devices.end());
  return devices;
}

StatusOr<Capacity> DirectDeviceManager::GetCapacity() {
  std::lock_guard<std::mutex> lock(mu_);
  StatusOr<std::vector<PmemRegion>> regions = api_.Regions();
  if (!regions.ok()) return regions.status();
  Capacity capacity;
  for (const PmemRegion& region : *regions) {
    capacity.total += LargestVolumeIn(region.size, alignment_);
    capacity.available += LargestVolumeIn(region.available, alignment_);
    capacity.max_volume_size = std::max(capacity.max_volume_size,
                                        LargestVolumeIn(region.max_available_extent, alignment_));
  }
  return capacity;
}

StatusOr<Device> DirectDeviceManager::Expand(const std::string& /*id*/, int64_t /*new_size*/) {
  return Status::Unimplemented("the direct backend cannot grow a namespace");
}

StatusOr<PmemNamespace> DirectDeviceManager::EnabledLocked(const PmemNamespace& ns) {
  if (!ns.blockdev.empty()) return ns;
  // Renaming it to its own name disables nothing more and enables it.
  EPHEMERA_RETURN_IF_ERROR(api_.RenameNamespace(ns.name, ns.alt_name));
  StatusOr<std::vector<PmemNamespace>> all = api_.Namespaces();
  if (!all.ok()) return all.status();
  for (const PmemNamespace& again : *all) {
    if (again.name == ns.name && !again.blockdev.empty()) return again;
  }
  return Status::Internal("namespace " + ns.name + " of " + ns.alt_name +
                          " has no enabled block device");
}

StatusOr<SnapshotData> DirectDeviceManager::CreateSnapshot(const std::string& snapshot_id,
                                                           const std::string& source_id) {
  EPHEMERA_RETURN_IF_ERROR(ValidateVolumeId("snapshot id", snapshot_id));
  EPHEMERA_RETURN_IF_ERROR(ValidateVolumeId("source id", source_id));
  if (!IsSnapshotName(snapshot_id) || !source_id.starts_with(kIdPrefix)) {
    return Status::InvalidArgument("snapshot " + snapshot_id + " of " + source_id +
                                   ": not a snapshot ID of a volume ID");
  }
  const std::string partial = snapshot_id + std::string(kPartialSuffix);
  std::unique_lock<std::mutex> lock(mu_);
  StatusOr<std::vector<PmemNamespace>> source = FindLocked(source_id);
  if (!source.ok()) return source.status();
  if (source->empty()) return Status::NotFound("device " + source_id + " not found");
  StatusOr<PmemNamespace> origin = EnabledLocked(source->front());
  if (!origin.ok()) return origin.status();
  StatusOr<std::vector<PmemNamespace>> existing = NamedLocked(snapshot_id);
  if (!existing.ok()) return existing.status();
  if (!existing->empty()) return Status::AlreadyExists("snapshot " + snapshot_id + " exists");
  // A copy that an earlier attempt left (the caller holds the snapshot's lock: nobody writes it):
  // removed, then made anew.
  StatusOr<std::vector<PmemNamespace>> left = NamedLocked(partial);
  if (!left.ok()) return left.status();
  for (const PmemNamespace& ns : *left) {
    EPHEMERA_RETURN_IF_ERROR(api_.DestroyNamespace(ns.name));
  }
  // The volume's mode and size: the copy holds what the volume's block device holds.
  StatusOr<PmemNamespace> copy =
      MakeLocked(partial, origin->usable_size, origin->raw_size, origin->mode);
  if (!copy.ok()) return copy.status();
  // Without the lock: the caller keeps the other calls on the volume and the snapshot away, and
  // the other volumes' calls go on meanwhile.
  lock.unlock();
  Status copied = copy_("/dev/" + origin->blockdev, origin->usable_size, "/dev/" + copy->blockdev,
                        copy->usable_size);
  lock.lock();
  // The commit point: from here on the copy is a snapshot.
  if (copied.ok()) copied = api_.RenameNamespace(copy->name, snapshot_id);
  if (!copied.ok()) {
    Status removed = api_.DestroyNamespace(copy->name);
    if (!removed.ok()) {
      log::Warning("direct backend: cannot remove an unfinished snapshot copy",
                   {{"namespace", copy->name}, {"error", removed.ToString()}});
    }
    return copied;
  }
  return SnapshotData{snapshot_id, origin->usable_size, copy->raw_size, "copy"};
}

Status DirectDeviceManager::DeleteSnapshot(const std::string& snapshot_id, bool erase) {
  EPHEMERA_RETURN_IF_ERROR(ValidateVolumeId("snapshot id", snapshot_id));
  // Not a snapshot's name: no snapshot of ours (and never a volume's namespace).
  if (!IsSnapshotName(snapshot_id)) return Status::Ok();
  // The finished snapshot, a copy cut short, or both.
  for (const std::string& name : {snapshot_id + std::string(kPartialSuffix), snapshot_id}) {
    std::vector<PmemNamespace> found;
    {
      std::lock_guard<std::mutex> lock(mu_);
      StatusOr<std::vector<PmemNamespace>> named = NamedLocked(name);
      if (!named.ok()) return named.status();
      for (const PmemNamespace& ns : *named) {
        if (!erase || !ns.blockdev.empty()) {
          found.push_back(ns);
          continue;
        }
        // Disabled by a rename cut short: enabled for the erase. One that cannot be enabled
        // never got its copy (the copy comes after the namespace is enabled), so it holds no data
        // of the volume.
        StatusOr<PmemNamespace> enabled = EnabledLocked(ns);
        if (!enabled.ok()) {
          log::Warning("direct backend: a snapshot's namespace cannot be enabled for its erase",
                       {{"namespace", ns.name}, {"error", enabled.status().ToString()}});
        }
        found.push_back(enabled.ok() ? *enabled : ns);
      }
    }
    // Without the lock, as a volume's erase.
    if (erase) {
      for (const PmemNamespace& ns : found) {
        if (!ns.blockdev.empty()) {
          EPHEMERA_RETURN_IF_ERROR(erase_("/dev/" + ns.blockdev, ns.usable_size));
        }
      }
    }
    std::lock_guard<std::mutex> lock(mu_);
    for (const PmemNamespace& ns : found) {
      EPHEMERA_RETURN_IF_ERROR(api_.DestroyNamespace(ns.name));
    }
  }
  return Status::Ok();
}

StatusOr<SnapshotData> DirectDeviceManager::GetSnapshot(const std::string& snapshot_id) {
  EPHEMERA_RETURN_IF_ERROR(ValidateVolumeId("snapshot id", snapshot_id));
  if (!IsSnapshotName(snapshot_id)) {
    return Status::NotFound("snapshot " + snapshot_id + " not found");
  }
  std::lock_guard<std::mutex> lock(mu_);
  StatusOr<std::vector<PmemNamespace>> found = NamedLocked(snapshot_id);
  if (!found.ok()) return found.status();
  if (found->empty()) return Status::NotFound("snapshot " + snapshot_id + " not found");
  const PmemNamespace& ns = found->front();
  return SnapshotData{snapshot_id, ns.usable_size, ns.raw_size, ""};
}

StatusOr<std::vector<SnapshotData>> DirectDeviceManager::ListSnapshots() {
  std::lock_guard<std::mutex> lock(mu_);
  StatusOr<std::vector<PmemNamespace>> all = api_.Namespaces();
  if (!all.ok()) return all.status();
  std::vector<SnapshotData> snapshots;
  for (const PmemNamespace& ns : *all) {
    // Copies in progress (".partial") are not snapshots.
    if (!IsSnapshotName(ns.alt_name) || !ValidateVolumeId("id", ns.alt_name).ok() ||
        ns.alt_name.ends_with(kPartialSuffix)) {
      continue;
    }
    snapshots.push_back(SnapshotData{ns.alt_name, ns.usable_size, ns.raw_size, ""});
  }
  std::sort(snapshots.begin(), snapshots.end(),
            [](const SnapshotData& a, const SnapshotData& b) { return a.id < b.id; });
  snapshots.erase(
      std::unique(snapshots.begin(), snapshots.end(),
                  [](const SnapshotData& a, const SnapshotData& b) { return a.id == b.id; }),
      snapshots.end());
  return snapshots;
}

StatusOr<Device> DirectDeviceManager::CreateFromSource(const std::string& id, int64_t size,
                                                       DeviceUsage usage, SourceKind kind,
                                                       const std::string& source_id) {
  EPHEMERA_RETURN_IF_ERROR(ValidateVolumeId("id", id));
  EPHEMERA_RETURN_IF_ERROR(ValidateVolumeId("source id", source_id));
  if (!id.starts_with(kIdPrefix)) {
    return Status::InvalidArgument("id: the direct backend names namespaces \"" +
                                   std::string(kIdPrefix) + "...\"");
  }
  std::unique_lock<std::mutex> lock(mu_);
  if (size <= 0 || size % alignment_ != 0) {
    return Status::InvalidArgument("size " + std::to_string(size) +
                                   " is not a positive multiple of the allocation unit " +
                                   std::to_string(alignment_));
  }
  const std::string what = kind == SourceKind::kSnapshot ? "snapshot " : "device ";
  // A snapshot's copy in progress is never a source; nor is a snapshot given as a volume, or the
  // reverse.
  StatusOr<std::vector<PmemNamespace>> source = std::vector<PmemNamespace>{};
  if (kind == SourceKind::kSnapshot && IsSnapshotName(source_id) &&
      !source_id.ends_with(kPartialSuffix)) {
    source = NamedLocked(source_id);
  } else if (kind == SourceKind::kVolume && source_id.starts_with(kIdPrefix)) {
    source = FindLocked(source_id);
  }
  if (!source.ok()) return source.status();
  if (source->empty()) return Status::NotFound(what + source_id + " not found");
  StatusOr<PmemNamespace> origin = EnabledLocked(source->front());
  if (!origin.ok()) return origin.status();
  StatusOr<std::vector<PmemNamespace>> existing = FindLocked(id);
  if (!existing.ok()) return existing.status();
  if (!existing->empty()) return Status::AlreadyExists("device " + id + " exists");

  const PmemMode mode = ModeFor(usage);
  const int64_t usable = std::max(size, origin->usable_size);
  StatusOr<int64_t> raw = RawSizeFor(usable, mode, alignment_);
  if (!raw.ok()) return raw.status();
  StatusOr<PmemNamespace> made = MakeLocked(id, usable, *raw, mode);
  if (!made.ok()) return made.status();
  lock.unlock();
  Status copied = copy_("/dev/" + origin->blockdev, origin->usable_size, "/dev/" + made->blockdev,
                        made->usable_size);
  lock.lock();
  if (!copied.ok()) {
    // Nothing may be left behind (should the removal fail, the caller's `creating` record stays
    // and its recovery removes the namespace).
    Status removed = api_.DestroyNamespace(made->name);
    if (!removed.ok()) {
      log::Warning("direct backend: cannot remove a volume whose copy failed",
                   {{"namespace", made->name}, {"error", removed.ToString()}});
    }
    return copied;
  }
  log::Info(
      "direct backend: volume copied from its source",
      {{"volume", id}, {"source", source_id}, {"bytes", std::to_string(origin->usable_size)}});
  return ToDevice(*made);
}

}  // namespace ephemera::csi
