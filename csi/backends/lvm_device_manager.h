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
// Snapshots are copies, not LVM snapshots (docs/csi-driver.md says why): a snapshot is a linear
// logical volume named by its snapshot ID ("snap-..."), of its volume's size, in its volume's
// group, holding a copy of the volume's data. The copy is made under the name "<snapshot
// ID>.partial" and renamed when synced (lvrename is atomic in LVM's metadata), so a copy cut short
// by a crash is never a snapshot; DeleteSnapshot removes either name. A volume from a data source
// is a new logical volume (its final name: the caller's `creating` record covers a crash) filled
// with a copy of the snapshot or volume, the rest zeroed. Copies and erases run without the
// backend's lock. Every logical volume whose name is not a snapshot's is a volume.
//
// Thread safety: all methods are serialized by one mutex, except copies and erases.
#pragma once

#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "csi/backends/block_device.h"
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
  // Snapshot IDs start with it (DeriveSnapshotId), volume IDs never do.
  static constexpr std::string_view kSnapshotPrefix = "snap-";
  // The name of a snapshot's logical volume while its copy is made.
  static constexpr std::string_view kPartialSuffix = ".partial";

  // `runner` must outlive the manager. `pmem_percentage` in 1..100. `erase` overwrites a logical
  // volume's device (ZeroBlockDevice in production).
  // `copy` copies one device's data onto another (CopyBlockDevice in production).
  LvmDeviceManager(CommandRunner& runner, int pmem_percentage, Eraser erase,
                   BlockCopier copy = CopyBlockDevice);

  // Whether the logical volume `name` is (a copy in progress of) a snapshot, not a volume.
  static bool IsSnapshotName(const std::string& name);

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

  bool SupportsSnapshots() const override { return true; }
  StatusOr<SnapshotData> CreateSnapshot(const std::string& snapshot_id,
                                        const std::string& source_id) override;
  Status DeleteSnapshot(const std::string& snapshot_id, bool erase) override;
  StatusOr<SnapshotData> GetSnapshot(const std::string& snapshot_id) override;
  StatusOr<std::vector<SnapshotData>> ListSnapshots() override;
  StatusOr<Device> CreateFromSource(const std::string& id, int64_t size, DeviceUsage usage,
                                    SourceKind kind, const std::string& source_id) override;

 private:
  // The group for a new logical volume `name` of `size` bytes: the only one, or the one with the
  // most free space that holds it (then ALREADY_EXISTS when `name` exists in any group).
  StatusOr<std::string> ChooseGroupLocked(const std::string& name, int64_t size);
  // lvcreate of `name` in `vg`, its refusals mapped (ALREADY_EXISTS, RESOURCE_EXHAUSTED); on any
  // other failure what it left is removed. `zero`: -Zy -Wy (a volume that is formatted), else
  // -Zn -Wn (a copy overwrites every block anyway).
  Status LvCreateLocked(const std::string& name, int64_t size, const std::string& vg, bool zero);
  // The logical volume `name`, found by its node /dev/<vg>/<name> (active; no LVM command), else
  // by lvs (activated when inactive). NOT_FOUND when no group has it.
  StatusOr<LvmLogicalVolume> LocateLocked(const std::string& name);
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
  const BlockCopier copy_;
  int64_t alignment_ = int64_t{4} * 1024 * 1024;
  std::vector<std::string> vgs_;  // our volume groups, sorted
  std::mutex mu_;
};

}  // namespace ephemera::csi
