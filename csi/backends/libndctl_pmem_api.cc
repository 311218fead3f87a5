// PmemApi on libndctl (see libndctl_pmem_api.h). The steps of namespace creation follow the
// kernel's sysfs protocol: the region's namespace seed gets a UUID, a name, a size and the mode
// it is meant for; then the region's pfn (fsdax) or btt (sector) seed is configured, pointed at
// the namespace and enabled, which makes the block device.
//
// Each step is one sysfs write, so a process killed during a create leaves the seed part-way
// configured. Once it has a size the namespace is listed (with our name) and recovery deletes it;
// before that, a seed holding only a UUID (and a name) is invisible to Namespaces(), and the
// kernel refuses to give it another UUID (EBUSY, "renaming" a namespace whose labels do not exist)
// while the region holds no other labelled namespace. So CreateNamespace() first clears such a
// leftover: writing size 0, which is what ndctl_namespace_delete() does, drops the seed's UUID.
// The pfn and btt seeds need no such care: their UUID and settings may be written again, and they
// can only point at a namespace that has a size.
#include "csi/backends/libndctl_pmem_api.h"

#include <linux/ndctl.h>
#include <ndctl/libndctl.h>
#include <uuid/uuid.h>

#include <cerrno>
#include <fstream>

#include "common/log.h"
#include "csi/system_error.h"

namespace ephemera::csi {

namespace {

constexpr unsigned kSectorSize = 4096;

std::string Str(const char* s) {
  return s == nullptr ? std::string() : std::string(s);
}

Status Failed(const std::string& what, int rc) {
  return Status::Internal("libndctl: " + what + ": " + ErrnoText(rc < 0 ? -rc : rc));
}

// The size of /dev/<blockdev> from sysfs (512-byte units), -1 when it cannot be read.
int64_t BlockDeviceSize(const std::string& blockdev) {
  if (blockdev.empty()) return -1;
  std::ifstream in("/sys/block/" + blockdev + "/size");
  int64_t sectors = -1;
  if (!(in >> sectors)) return -1;
  return sectors * 512;
}

bool IsPmemRegion(ndctl_region* region) {
  return ndctl_region_get_type(region) == ND_DEVICE_REGION_PMEM &&
         ndctl_region_is_enabled(region) != 0;
}

ndctl_region* FindPmemRegion(ndctl_ctx* ctx, const std::string& name) {
  ndctl_bus* bus = nullptr;
  ndctl_bus_foreach(ctx, bus) {
    ndctl_region* region = nullptr;
    ndctl_region_foreach(bus, region) {
      if (IsPmemRegion(region) && Str(ndctl_region_get_devname(region)) == name) return region;
    }
  }
  return nullptr;
}

bool HasUuid(ndctl_namespace* ndns) {
  uuid_t uuid;
  ndctl_namespace_get_uuid(ndns, uuid);
  return uuid_is_null(uuid) == 0;
}

PmemNamespace Describe(ndctl_namespace* ndns) {
  PmemNamespace ns;
  ns.name = Str(ndctl_namespace_get_devname(ndns));
  ns.region = Str(ndctl_region_get_devname(ndctl_namespace_get_region(ndns)));
  ns.alt_name = Str(ndctl_namespace_get_alt_name(ndns));
  ns.raw_size = static_cast<int64_t>(ndctl_namespace_get_size(ndns));
  ndctl_pfn* pfn = ndctl_namespace_get_pfn(ndns);
  ndctl_btt* btt = ndctl_namespace_get_btt(ndns);
  if (pfn != nullptr) {
    ns.mode = PmemMode::kFsdax;
    if (ndctl_pfn_is_enabled(pfn) != 0) ns.blockdev = Str(ndctl_pfn_get_block_device(pfn));
  } else if (btt != nullptr) {
    ns.mode = PmemMode::kSector;
    if (ndctl_btt_is_enabled(btt) != 0) ns.blockdev = Str(ndctl_btt_get_block_device(btt));
  } else {
    enum ndctl_namespace_mode enforced = ndctl_namespace_get_enforce_mode(ndns);
    if (enforced == NDCTL_NS_MODE_FSDAX) ns.mode = PmemMode::kFsdax;
    if (enforced == NDCTL_NS_MODE_SECTOR) ns.mode = PmemMode::kSector;
  }
  ns.usable_size = std::max<int64_t>(BlockDeviceSize(ns.blockdev), 0);
  return ns;
}

// The namespace whose device name is `name` ("namespace0.1"), or nullptr.
ndctl_namespace* FindNamespace(ndctl_ctx* ctx, const std::string& name) {
  ndctl_bus* bus = nullptr;
  ndctl_bus_foreach(ctx, bus) {
    ndctl_region* region = nullptr;
    ndctl_region_foreach(bus, region) {
      ndctl_namespace* ndns = nullptr;
      ndctl_namespace_foreach(region, ndns) {
        if (Str(ndctl_namespace_get_devname(ndns)) == name) return ndns;
      }
    }
  }
  return nullptr;
}

}  // namespace

StatusOr<std::unique_ptr<LibndctlPmemApi>> LibndctlPmemApi::Open() {
  ndctl_ctx* ctx = nullptr;
  int rc = ndctl_new(&ctx);
  if (rc < 0 || ctx == nullptr) return Failed("ndctl_new", rc);
  return std::unique_ptr<LibndctlPmemApi>(new LibndctlPmemApi(ctx));
}

LibndctlPmemApi::~LibndctlPmemApi() {
  ndctl_unref(ctx_);
}

StatusOr<std::vector<PmemRegion>> LibndctlPmemApi::Regions() {
  ndctl_invalidate(ctx_);
  std::vector<PmemRegion> regions;
  ndctl_bus* bus = nullptr;
  ndctl_bus_foreach(ctx_, bus) {
    ndctl_region* region = nullptr;
    ndctl_region_foreach(bus, region) {
      if (!IsPmemRegion(region)) continue;
      PmemRegion r;
      r.name = Str(ndctl_region_get_devname(region));
      r.size = static_cast<int64_t>(ndctl_region_get_size(region));
      r.available = static_cast<int64_t>(ndctl_region_get_available_size(region));
      r.max_available_extent = static_cast<int64_t>(ndctl_region_get_max_available_extent(region));
      r.align = static_cast<int64_t>(ndctl_region_get_align(region));
      r.interleave_ways = static_cast<int>(ndctl_region_get_interleave_ways(region));
      if (r.max_available_extent < 0 || r.max_available_extent > r.available) {
        r.max_available_extent = r.available;  // ULLONG_MAX when the kernel cannot tell
      }
      regions.push_back(r);
    }
  }
  return regions;
}

StatusOr<std::vector<PmemNamespace>> LibndctlPmemApi::Namespaces() {
  ndctl_invalidate(ctx_);
  std::vector<PmemNamespace> namespaces;
  ndctl_bus* bus = nullptr;
  ndctl_bus_foreach(ctx_, bus) {
    ndctl_region* region = nullptr;
    ndctl_region_foreach(bus, region) {
      if (!IsPmemRegion(region)) continue;
      ndctl_namespace* ndns = nullptr;
      ndctl_namespace_foreach(region, ndns) {
        if (ndctl_namespace_get_size(ndns) == 0) continue;  // a seed
        namespaces.push_back(Describe(ndns));
      }
    }
  }
  return namespaces;
}

StatusOr<PmemNamespace> LibndctlPmemApi::CreateNamespace(const std::string& region_name,
                                                         const std::string& alt_name,
                                                         int64_t raw_size, PmemMode mode,
                                                         int64_t fsdax_align) {
  ndctl_region* region = nullptr;
  ndctl_namespace* ndns = nullptr;
  // At most twice: a seed left with a UUID by an interrupted create is cleared, then read again.
  for (int pass = 0; pass < 2; ++pass) {
    ndctl_invalidate(ctx_);
    region = FindPmemRegion(ctx_, region_name);
    if (region == nullptr) return Status::Internal("no enabled PMEM region " + region_name);
    ndns = ndctl_region_get_namespace_seed(region);
    if (ndns == nullptr || ndctl_namespace_get_size(ndns) != 0) {
      return Status::Internal(region_name +
                              " has no namespace seed (is the label area initialized?)");
    }
    if (!HasUuid(ndns)) break;
    std::string seed = Str(ndctl_namespace_get_devname(ndns));
    if (pass == 1) return Status::Internal("namespace seed " + seed + " keeps its UUID");
    log::Warning(
        "direct backend: the namespace seed has a UUID but no size (an interrupted "
        "create); clearing it",
        {{"seed", seed}, {"region", region_name}});
    int rc = ndctl_namespace_delete(ndns);  // frees ndns
    if (rc < 0) return Failed("clear the UUID of the namespace seed " + seed, rc);
  }

  uuid_t uuid;
  uuid_generate(uuid);
  int rc = ndctl_namespace_set_uuid(ndns, uuid);
  if (rc < 0) return Failed("set namespace uuid", rc);
  rc = ndctl_namespace_set_alt_name(ndns, alt_name.c_str());
  if (rc < 0) {
    (void)ndctl_namespace_delete(ndns);  // drops the UUID again
    return Failed("set namespace name", rc);
  }
  rc = ndctl_namespace_set_size(ndns, static_cast<unsigned long long>(raw_size));
  if (rc < 0) {
    (void)ndctl_namespace_delete(ndns);
    if (rc == -ENOSPC) {
      return Status::ResourceExhausted(region_name + " has no free range of " +
                                       std::to_string(raw_size) + " bytes");
    }
    return Failed("set namespace size " + std::to_string(raw_size), rc);
  }
  ndctl_pfn* pfn = nullptr;
  ndctl_btt* btt = nullptr;
  std::string step;
  if (mode == PmemMode::kFsdax) {
    step = "fsdax";
    rc = ndctl_namespace_set_enforce_mode(ndns, NDCTL_NS_MODE_FSDAX);
    pfn = ndctl_region_get_pfn_seed(region);
    if (rc >= 0 && pfn == nullptr) rc = -ENODEV;
    if (rc >= 0) {
      uuid_generate(uuid);
      rc = ndctl_pfn_set_uuid(pfn, uuid);
    }
    if (rc >= 0) rc = ndctl_pfn_set_location(pfn, NDCTL_PFN_LOC_PMEM);
    if (rc >= 0 && ndctl_pfn_has_align(pfn) != 0) {
      rc = ndctl_pfn_set_align(pfn, static_cast<unsigned long>(fsdax_align));
    }
    if (rc >= 0) rc = ndctl_pfn_set_namespace(pfn, ndns);
    if (rc >= 0) rc = ndctl_pfn_enable(pfn);
  } else {
    step = "sector";
    rc = ndctl_namespace_set_enforce_mode(ndns, NDCTL_NS_MODE_SECTOR);
    btt = ndctl_region_get_btt_seed(region);
    if (rc >= 0 && btt == nullptr) rc = -ENODEV;
    if (rc >= 0) {
      uuid_generate(uuid);
      rc = ndctl_btt_set_uuid(btt, uuid);
    }
    if (rc >= 0) rc = ndctl_btt_set_sector_size(btt, kSectorSize);
    if (rc >= 0) rc = ndctl_btt_set_namespace(btt, ndns);
    if (rc >= 0) rc = ndctl_btt_enable(btt);
  }
  if (rc < 0) {
    // Leave nothing behind: detach the personality, then give the range back.
    if (pfn != nullptr) (void)ndctl_pfn_set_namespace(pfn, nullptr);
    if (btt != nullptr) (void)ndctl_btt_set_namespace(btt, nullptr);
    (void)ndctl_namespace_disable_invalidate(ndns);
    (void)ndctl_namespace_delete(ndns);
    return Failed("enable " + step + " namespace on " + region_name, rc);
  }
  return Describe(ndns);
}

Status LibndctlPmemApi::DestroyNamespace(const std::string& name) {
  ndctl_invalidate(ctx_);
  ndctl_namespace* ndns = FindNamespace(ctx_, name);
  if (ndns == nullptr) return Status::Ok();
  // Refuses (EBUSY) while the block device is mounted or held open.
  int rc = ndctl_namespace_disable_safe(ndns);
  if (rc == -EBUSY) return Status::FailedPrecondition("namespace " + name + " is in use");
  if (rc < 0) return Failed("disable " + name, rc);
  rc = ndctl_namespace_delete(ndns);
  if (rc < 0) return Failed("delete " + name, rc);
  return Status::Ok();
}

Status LibndctlPmemApi::RenameNamespace(const std::string& name, const std::string& alt_name) {
  ndctl_invalidate(ctx_);
  ndctl_namespace* ndns = FindNamespace(ctx_, name);
  if (ndns == nullptr) return Status::NotFound("namespace " + name + " not found");
  // The kernel renames only a namespace that no driver holds and no pfn or btt claims:
  // disable_safe unbinds the block device (EBUSY while it is mounted or open) and releases the
  // claim of its personality, whose info block stays on the media.
  int rc = ndctl_namespace_disable_safe(ndns);
  if (rc == -EBUSY) return Status::FailedPrecondition("namespace " + name + " is in use");
  if (rc < 0) return Failed("disable " + name, rc);
  if (Str(ndctl_namespace_get_alt_name(ndns)) != alt_name) {
    rc = ndctl_namespace_set_alt_name(ndns, alt_name.c_str());  // a label update
    if (rc < 0) return Failed("rename " + name + " to " + alt_name, rc);
  }
  // Enabling probes the media: the kernel finds the pfn (or btt) info block and makes the
  // personality and its block device again, over the same data.
  rc = ndctl_namespace_enable(ndns);
  if (rc < 0) return Failed("enable " + name + " after renaming it", rc);
  return Status::Ok();
}

}  // namespace ephemera::csi
