// The `lvm` backend: a logical volume per volume, in one volume group per PMEM region.
//
// At Init(), for every PMEM region (`ndctl list -R`), the backend finds its fsdax namespace (alt
// name "ephemera-lvm") or creates one covering `pmem_percentage` percent of the region, and a
// volume group "ephemera-<region>" on its block device. Every logical volume in those volume
// groups is a volume of ours, named by its volume ID. Sizes are multiples of the extent size
// (4 MiB by default); the capacity is the sum of the groups' free extents, the largest volume the
// largest free space of one group (linear volumes do not span groups).
//
// All LVM and ndctl commands run through the CommandRunner (argv, no shell); their JSON reports
// (`--reportformat json`, `ndctl list`) are the state: nothing is cached but the group names.
// LVM commands are slow in a small guest (0.3-0.5 s each), so the common paths run as few as
// possible: with one group Create is a lone lvcreate (its refusals map to ALREADY_EXISTS and
// RESOURCE_EXHAUSTED), and Delete of an active volume (its node /dev/<vg>/<id> exists) a lone
// lvremove.
//
// Thread safety: all methods are serialized by one mutex.
#pragma once

#include <mutex>
#include <string>
#include <vector>

#include "csi/backends/device_manager.h"
#include "csi/command_runner.h"

namespace ephemera::csi {

struct LvmVolumeGroup {
  std::string name;
  int64_t size = 0;
  int64_t free = 0;
  int64_t extent_size = 0;
};

struct LvmLogicalVolume {
  std::string name;
  std::string vg;
  int64_t size = 0;
  std::string path;  // /dev/<vg>/<lv>
  std::string attr;  // lv_attr, e.g. "-wi-ao----"
};

// Parsers of the JSON reports, exposed for the unit tests. The text may carry warning lines
// before the JSON (the runner interleaves stderr).
StatusOr<std::vector<LvmVolumeGroup>> ParseVgsReport(const std::string& text);
StatusOr<std::vector<LvmLogicalVolume>> ParseLvsReport(const std::string& text);

class LvmDeviceManager : public DeviceManager {
 public:
  static constexpr const char* kNamespaceName = "ephemera-lvm";
  static constexpr const char* kVgPrefix = "ephemera-";

  // `runner` must outlive the manager. `pmem_percentage` in 1..100. `erase` overwrites a logical
  // volume's device (ZeroBlockDevice in production).
  LvmDeviceManager(CommandRunner& runner, int pmem_percentage, Eraser erase);

  // Sets up namespaces and volume groups (see above); idempotent. Must succeed before any other
  // call. Errors: FAILED_PRECONDITION when there is no PMEM region; INTERNAL.
  Status Init();

  std::string Name() const override { return "lvm"; }
  int64_t Alignment() const override { return alignment_; }
  StatusOr<Device> Create(const std::string& id, int64_t size, DeviceUsage usage) override;
  Status Delete(const std::string& id, bool erase) override;
  StatusOr<Device> Get(const std::string& id) override;
  StatusOr<std::vector<Device>> List() override;
  StatusOr<Capacity> GetCapacity() override;
  StatusOr<Device> Expand(const std::string& id, int64_t new_size) override;

 private:
  StatusOr<std::vector<LvmVolumeGroup>> VolumeGroupsLocked();
  StatusOr<std::vector<LvmLogicalVolume>> LogicalVolumesLocked();
  StatusOr<LvmLogicalVolume> FindLocked(const std::string& id);
  StatusOr<Device> ToDevice(const LvmLogicalVolume& lv);
  Status RemoveLocked(const std::string& vg, const std::string& id);
  Status SetUpRegion(const std::string& region, int64_t region_size, int64_t align,
                     int64_t available);

  CommandRunner& runner_;
  const int pmem_percentage_;
  const Eraser erase_;
  int64_t alignment_ = int64_t{4} * 1024 * 1024;
  std::vector<std::string> vgs_;  // our volume groups, sorted
  std::mutex mu_;
};

}  // namespace ephemera::csi
