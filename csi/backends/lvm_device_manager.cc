// The lvm backend (see lvm_device_manager.h).
#include "csi/backends/lvm_device_manager.h"

#include <fcntl.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <nlohmann/json.hpp>

#include "common/log.h"
#include "csi/backends/block_device.h"
#include "csi/mount_util.h"
#include "csi/system_error.h"
#include "csi/volume_id.h"

namespace ephemera::csi {

namespace {

using nlohmann::json;

// The JSON document in `text`: from the first '{' or '[' to the last '}' or ']'.
StatusOr<json> ParseJson(const std::string& what, const std::string& text) {
  size_t begin = text.find_first_of("{[");
  size_t end = text.find_last_of("}]");
  if (begin == std::string::npos || end == std::string::npos || end < begin) {
    return Status::Internal(what + ": no JSON in the output: " + text.substr(0, 500));
  }
  json doc = json::parse(text.substr(begin, end - begin + 1), nullptr, /*allow_exceptions=*/false);
  if (doc.is_discarded()) {
    return Status::Internal(what + ": malformed JSON: " + text.substr(0, 500));
  }
  return doc;
}

// ndctl prints a lone object instead of an array of one.
json AsArray(const json& doc) {
  if (doc.is_array()) return doc;
  return json::array({doc});
}

int64_t ToInt(const json& value) {
  if (value.is_number_integer()) return value.get<int64_t>();
  if (value.is_string()) {
    try {
      return std::stoll(value.get<std::string>());
    } catch (...) {
      return -1;
    }
  }
  return -1;
}

std::string ToString(const json& object, const char* key) {
  auto it = object.find(key);
  if (it == object.end() || !it->is_string()) return "";
  return it->get<std::string>();
}

// The rows of the first report of an LVM JSON report: {"report":[{"vg":[...]}]}. The output has
// stderr in it too: LVM's warnings come as lines before or after the report, and may hold
// brackets ("File descriptor 13 (socket:[16599]) leaked on lvs invocation"), so the report is
// taken from its first "{" to its last "}".
StatusOr<json> ReportRows(const std::string& what, const std::string& text, const char* kind) {
  const size_t open = text.find('{');
  const size_t close = text.rfind('}');
  StatusOr<json> doc = open != std::string::npos && close != std::string::npos && open < close
                           ? ParseJson(what, text.substr(open, close - open + 1))
                           : ParseJson(what, text);
  if (!doc.ok()) return doc.status();
  json rows = json::array();
  if (!doc->is_object() || !doc->contains("report") || !(*doc)["report"].is_array()) {
    return Status::Internal(what + ": no report in the output");
  }
  for (const json& report : (*doc)["report"]) {
    if (report.contains(kind) && report[kind].is_array()) {
      for (const json& row : report[kind])
        rows.push_back(row);
    }
  }
  return rows;
}

StatusOr<CommandResult> RunOk(CommandRunner& runner, const std::vector<std::string>& argv) {
  StatusOr<CommandResult> result = runner.Run(argv, kDeviceCommandTimeout);
  if (!result.ok()) return result.status();
  if (result->exit_code != 0) {
    return Status::Internal(argv[0] + " " + (argv.size() > 1 ? argv[1] : "") + " exited with " +
                            std::to_string(result->exit_code) + ": " + result->output);
  }
  return result;
}

// The size of the block device at `path` in bytes.
StatusOr<int64_t> BlockDeviceSize(const std::string& path) {
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return Status::Internal(ErrnoMessage("open " + path));
  uint64_t size = 0;
  int rc = ioctl(fd, BLKGETSIZE64, &size);
  int saved = errno;
  close(fd);
  if (rc != 0) return Status::Internal(ErrnoMessage("BLKGETSIZE64 " + path, saved));
  return static_cast<int64_t>(size);
}

}  // namespace

StatusOr<std::vector<LvmVolumeGroup>> ParseVgsReport(const std::string& text) {
  StatusOr<json> rows = ReportRows("vgs", text, "vg");
  if (!rows.ok()) return rows.status();
  std::vector<LvmVolumeGroup> vgs;
  for (const json& row : *rows) {
    LvmVolumeGroup vg{ToString(row, "vg_name"), ToInt(row.value("vg_size", json())),
                      ToInt(row.value("vg_free", json())),
                      ToInt(row.value("vg_extent_size", json()))};
    if (vg.name.empty() || vg.size < 0 || vg.free < 0 || vg.extent_size <= 0) {
      return Status::Internal("vgs: unexpected row " + row.dump());
    }
    vgs.push_back(vg);
  }
  return vgs;
}

StatusOr<std::vector<LvmLogicalVolume>> ParseLvsReport(const std::string& text) {
  StatusOr<json> rows = ReportRows("lvs", text, "lv");
  if (!rows.ok()) return rows.status();
  std::vector<LvmLogicalVolume> lvs;
  for (const json& row : *rows) {
    LvmLogicalVolume lv{ToString(row, "lv_name"), ToString(row, "vg_name"),
                        ToInt(row.value("lv_size", json())), ToString(row, "lv_path"),
                        ToString(row, "lv_attr")};
    if (lv.name.empty() || lv.vg.empty() || lv.size < 0) {
      return Status::Internal("lvs: unexpected row " + row.dump());
    }
    if (lv.path.empty()) lv.path = "/dev/" + lv.vg + "/" + lv.name;
    lvs.push_back(lv);
  }
  return lvs;
}

LvmDeviceManager::LvmDeviceManager(CommandRunner& runner, int pmem_percentage, Eraser erase,
                                   BlockCopier copy)
    : runner_(runner),
      pmem_percentage_(pmem_percentage),
      erase_(std::move(erase)),
      copy_(std::move(copy)) {}

bool LvmDeviceManager::IsSnapshotName(const std::string& name) {
  return name.starts_with(kSnapshotPrefix);
}

Status LvmDeviceManager::SetUpRegion(const std::string& region, int64_t region_size, int64_t align,
                                     int64_t available) {
  std::string vg = kVgPrefix + region;
  // The namespace: ours by its alt name.
  StatusOr<CommandResult> list = RunOk(runner_, {"ndctl", "list", "-N", "-r", region});
  if (!list.ok()) return list.status();
  std::string blockdev;
  if (list->output.find_first_of("{[") != std::string::npos) {
    StatusOr<json> namespaces = ParseJson("ndctl list -N", list->output);
    if (!namespaces.ok()) return namespaces.status();
    for (const json& ns : AsArray(*namespaces)) {
      if (ToString(ns, "name") == kNamespaceName && ToString(ns, "mode") == "fsdax") {
        blockdev = ToString(ns, "blockdev");
      }
    }
  }
  if (blockdev.empty()) {
    if (align <= 0) align = 1;
    int64_t size = region_size / 100 * pmem_percentage_;
    size = std::min(size, available);
    size -= size % align;
    if (size <= 0) {
      log::Warning("lvm backend: no room for a namespace; region skipped", {{"region", region}});
      return Status::Ok();
    }
    log::Info("lvm backend: creating an fsdax namespace",
              {{"region", region}, {"bytes", std::to_string(size)}});
    StatusOr<CommandResult> created =
        RunOk(runner_, {"ndctl", "create-namespace", "-r", region, "-m", "fsdax", "-n",
                        kNamespaceName, "-s", std::to_string(size)});
    if (!created.ok()) return created.status();
    StatusOr<json> ns = ParseJson("ndctl create-namespace", created->output);
    if (!ns.ok()) return ns.status();
    blockdev = ToString(*ns, "blockdev");
    if (blockdev.empty()) return Status::Internal("ndctl create-namespace: no blockdev");
  }
  std::string device = "/dev/" + blockdev;
  StatusOr<CommandResult> vgs =
      RunOk(runner_, {"vgs", "--reportformat", "json", "--units", "b", "--nosuffix", "-o",
                      "vg_name,vg_size,vg_free,vg_extent_size"});
  if (!vgs.ok()) return vgs.status();
  StatusOr<std::vector<LvmVolumeGroup>> groups = ParseVgsReport(vgs->output);
  if (!groups.ok()) return groups.status();
  bool exists = std::any_of(groups->begin(), groups->end(),
                            [&](const LvmVolumeGroup& g) { return g.name == vg; });
  if (!exists) {
    log::Info("lvm backend: creating a volume group", {{"vg", vg}, {"device", device}});
    EPHEMERA_RETURN_IF_ERROR(
        RunChecked(runner_, {"pvcreate", "-y", "-ff", device}, kDeviceCommandTimeout));
    EPHEMERA_RETURN_IF_ERROR(
        RunChecked(runner_, {"vgcreate", "-y", vg, device}, kDeviceCommandTimeout));
  }
  vgs_.push_back(vg);
  return Status::Ok();
}

Status LvmDeviceManager::Init() {
  std::lock_guard<std::mutex> lock(mu_);
  if (pmem_percentage_ < 1 || pmem_percentage_ > 100) {
    return Status::InvalidArgument("--pmem-percentage: 1 to 100");
  }
  StatusOr<CommandResult> regions = RunOk(runner_, {"ndctl", "list", "-R"});
  if (!regions.ok()) return regions.status();
  if (regions->output.find_first_of("{[") == std::string::npos) {
    return Status::FailedPrecondition("no PMEM region (ndctl list -R is empty)");
  }
  StatusOr<json> doc = ParseJson("ndctl list -R", regions->output);
  if (!doc.ok()) return doc.status();
  vgs_.clear();
  for (const json& region : AsArray(*doc)) {
    if (ToString(region, "type") != "pmem") continue;
    EPHEMERA_RETURN_IF_ERROR(SetUpRegion(
        ToString(region, "dev"), ToInt(region.value("size", json())),
        ToInt(region.value("align", json())), ToInt(region.value("max_available_extent", json()))));
  }
  if (vgs_.empty()) return Status::FailedPrecondition("no PMEM region with room for LVM");
  std::sort(vgs_.begin(), vgs_.end());
  StatusOr<std::vector<LvmVolumeGroup>> groups = VolumeGroupsLocked();
  if (!groups.ok()) return groups.status();
  for (const LvmVolumeGroup& g : *groups)
    alignment_ = std::max(alignment_, g.extent_size);
  // Volumes left inactive (after a reboot without udev) are activated here.
  for (const std::string& vg : vgs_) {
    EPHEMERA_RETURN_IF_ERROR(RunChecked(runner_, {"vgchange", "-ay", vg}, kDeviceCommandTimeout));
  }
  return Status::Ok();
}

StatusOr<std::vector<LvmVolumeGroup>> LvmDeviceManager::VolumeGroupsLocked() {
  std::vector<std::string> argv = {
      "vgs", "--reportformat", "json", "--units",
      "b",   "--nosuffix",     "-o",   "vg_name,vg_size,vg_free,vg_extent_size"};
  argv.insert(argv.end(), vgs_.begin(), vgs_.end());
  StatusOr<CommandResult> result = RunOk(runner_, argv);
  if (!result.ok()) return result.status();
  return ParseVgsReport(result->output);
}

StatusOr<std::vector<LvmLogicalVolume>> LvmDeviceManager::LogicalVolumesLocked() {
  std::vector<std::string> argv = {
      "lvs", "--reportformat", "json", "--units",
      "b",   "--nosuffix",     "-o",   "lv_name,vg_name,lv_size,lv_path,lv_attr"};
  argv.insert(argv.end(), vgs_.begin(), vgs_.end());
  StatusOr<CommandResult> result = RunOk(runner_, argv);
  if (!result.ok()) return result.status();
  return ParseLvsReport(result->output);
}

StatusOr<LvmLogicalVolume> LvmDeviceManager::FindLocked(const std::string& id) {
  StatusOr<std::vector<LvmLogicalVolume>> lvs = LogicalVolumesLocked();
  if (!lvs.ok()) return lvs.status();
  for (const LvmLogicalVolume& lv : *lvs) {
    if (lv.name == id) return lv;
  }
  return Status::NotFound("device " + id + " not found");
}

StatusOr<Device> LvmDeviceManager::ToDevice(const LvmLogicalVolume& lv) {
  // lv_attr: the fifth character is 'a' when the volume is active.
  if (lv.attr.size() >= 5 && lv.attr[4] != 'a') {
    EPHEMERA_RETURN_IF_ERROR(
        RunChecked(runner_, {"lvchange", "-ay", lv.vg + "/" + lv.name}, kDeviceCommandTimeout));
  }
  return Device{lv.name, lv.size, lv.path, DeviceSupportsDax(lv.path)};
}

StatusOr<std::string> LvmDeviceManager::ChooseGroupLocked(const std::string& name, int64_t size) {
  // With one volume group (the usual case: one PMEM region) lvcreate itself is the check: it
  // refuses a name that exists ("already exists") and a size that does not fit ("insufficient free
  // space"). Each LVM command costs hundreds of milliseconds in a small guest, so the reports
  // before it (lvs, vgs) are skipped there. With several groups, one is chosen by its free space.
  if (vgs_.size() == 1) return vgs_[0];
  StatusOr<LvmLogicalVolume> existing = FindLocked(name);
  if (existing.ok()) return Status::AlreadyExists("device " + name + " exists");
  if (existing.status().code() != Code::kNotFound) return existing.status();
  StatusOr<std::vector<LvmVolumeGroup>> groups = VolumeGroupsLocked();
  if (!groups.ok()) return groups.status();
  // The group with the most free space that holds the volume.
  const LvmVolumeGroup* best = nullptr;
  for (const LvmVolumeGroup& g : *groups) {
    if (g.free >= size && (best == nullptr || g.free > best->free)) best = &g;
  }
  if (best == nullptr) {
    int64_t largest = 0;
    for (const LvmVolumeGroup& g : *groups)
      largest = std::max(largest, g.free);
    return Status::ResourceExhausted("volume of " + std::to_string(size) +
                                     " bytes does not fit: the largest free space is " +
                                     std::to_string(largest) + " bytes");
  }
  return best->name;
}

Status LvmDeviceManager::LvCreateLocked(const std::string& name, int64_t size,
                                        const std::string& vg, bool zero) {
  // -Zy -Wy: the start of the volume is zeroed and old signatures wiped, so that no filesystem of
  // an earlier volume shows through. A copy writes every block, so it skips both.
  const char* flag = zero ? "y" : "n";
  StatusOr<CommandResult> result =
      runner_.Run({"lvcreate", "-y", std::string("-Z") + flag, std::string("-W") + flag, "-n", name,
                   "-L", std::to_string(size) + "B", vg},
                  kDeviceCommandTimeout);
  if (result.status().code() == Code::kDeadlineExceeded) {
    // Killed at its time limit, lvcreate may have left the volume, whole or in part (the metadata
    // is committed before the start is zeroed and wiped): removed as after any other failure. Had
    // the name existed before, lvcreate would have refused it at once, not hung (unless it hung on
    // the group's lock, and then lvs hangs too and removes nothing). Should lvs or lvremove fail
    // here, the caller's `creating` record remains and recovery removes the volume.
    StatusOr<LvmLogicalVolume> partial = FindLocked(name);
    if (partial.ok()) {
      (void)runner_.Run({"lvremove", "-y", partial->vg + "/" + name}, kDeviceCommandTimeout);
    }
    return result.status();
  }
  if (!result.ok()) return result.status();
  if (result->exit_code == 0) return Status::Ok();
  // lvcreate checks the name before anything else: the volume is the existing one, not ours to
  // remove.
  if (result->output.find("already exists") != std::string::npos) {
    return Status::AlreadyExists("device " + name + " exists: " + result->output);
  }
  // Nothing may be left behind.
  StatusOr<LvmLogicalVolume> partial = FindLocked(name);
  if (partial.ok())
    (void)runner_.Run({"lvremove", "-y", partial->vg + "/" + name}, kDeviceCommandTimeout);
  if (result->output.find("insufficient free space") != std::string::npos ||
      result->output.find("Insufficient free space") != std::string::npos) {
    return Status::ResourceExhausted("lvcreate: " + result->output);
  }
  // Other wordings of a size that does not fit (e.g. "Volume too large"): the group decides.
  StatusOr<std::vector<LvmVolumeGroup>> groups = VolumeGroupsLocked();
  if (groups.ok()) {
    for (const LvmVolumeGroup& g : *groups) {
      if (g.name == vg && g.free < size) {
        return Status::ResourceExhausted("lvcreate: " + result->output);
      }
    }
  }
  return Status::Internal("lvcreate exited with " + std::to_string(result->exit_code) + ": " +
                          result->output);
}

StatusOr<Device> LvmDeviceManager::Create(const std::string& id, int64_t size,
                                          DeviceUsage /*usage*/) {
  EPHEMERA_RETURN_IF_ERROR(ValidateVolumeId("id", id));
  if (IsSnapshotName(id)) return Status::InvalidArgument("id " + id + ": a snapshot's ID");
  std::lock_guard<std::mutex> lock(mu_);
  if (size <= 0 || size % alignment_ != 0) {
    return Status::InvalidArgument("size " + std::to_string(size) +
                                   " is not a positive multiple of the extent size " +
                                   std::to_string(alignment_));
  }
  StatusOr<std::string> vg_name = ChooseGroupLocked(id, size);
  if (!vg_name.ok()) return vg_name.status();
  EPHEMERA_RETURN_IF_ERROR(LvCreateLocked(id, size, *vg_name, /*zero=*/true));
  // No report after a successful lvcreate: the volume is active, at the path LVM gives it, and of
  // the requested size (a multiple of every group's extent size, so not rounded).
  std::string path = "/dev/" + *vg_name + "/" + id;
  return Device{id, size, path, DeviceSupportsDax(path)};
}

Status LvmDeviceManager::Delete(const std::string& id, bool erase) {
  EPHEMERA_RETURN_IF_ERROR(ValidateVolumeId("id", id));
  // A snapshot is no volume: a DeleteVolume of its ID must not remove it.
  if (IsSnapshotName(id)) return Status::Ok();
  std::string vg_name;
  std::string path;
  int64_t size = 0;
  {
    std::lock_guard<std::mutex> lock(mu_);
    // An active volume has its node /dev/<vg>/<id>: then no lvs report is needed (it costs
    // hundreds of milliseconds in a small guest). Otherwise (missing or inactive) the report
    // decides.
    for (const std::string& vg : vgs_) {
      std::string node = "/dev/";
      node.append(vg).append("/").append(id);
      struct stat st {};
      if (stat(node.c_str(), &st) != 0 || !S_ISBLK(st.st_mode)) continue;
      StatusOr<bool> busy = BlockDeviceBusy(node);
      if (!busy.ok()) return busy.status();
      if (*busy) {
        std::string message = "device ";
        message.append(id).append(" (").append(node).append(") is in use");
        return Status::FailedPrecondition(message);
      }
      if (erase) {
        StatusOr<int64_t> bytes = BlockDeviceSize(node);
        if (!bytes.ok()) return bytes.status();
        size = *bytes;
      }
      vg_name = vg;
      path = node;
      break;
    }
    if (vg_name.empty()) {
      StatusOr<LvmLogicalVolume> lv = FindLocked(id);
      if (!lv.ok()) return lv.status().code() == Code::kNotFound ? Status::Ok() : lv.status();
      // lv_attr: the sixth character is 'o' when the device is open (mounted or held).
      bool open = lv->attr.size() >= 6 && lv->attr[5] == 'o';
      if (!open && lv->attr.size() >= 5 && lv->attr[4] == 'a') {
        StatusOr<bool> busy = BlockDeviceBusy(lv->path);
        if (!busy.ok()) return busy.status();
        open = *busy;
      }
      if (open) {
        return Status::FailedPrecondition("device " + id + " (" + lv->path + ") is in use");
      }
      if (erase && lv->attr.size() >= 5 && lv->attr[4] != 'a') {
        EPHEMERA_RETURN_IF_ERROR(
            RunChecked(runner_, {"lvchange", "-ay", lv->vg + "/" + id}, kDeviceCommandTimeout));
      }
      vg_name = lv->vg;
      path = lv->path;
      size = lv->size;
    }
  }
  // Without the lock: the caller keeps the other calls on this volume away, and LVM's own locking
  // covers the other volumes' commands meanwhile.
  if (erase) EPHEMERA_RETURN_IF_ERROR(erase_(path, size));
  std::lock_guard<std::mutex> lock(mu_);
  return RemoveLocked(vg_name, id);
}

Status LvmDeviceManager::RemoveLocked(const std::string& vg, const std::string& id) {
  StatusOr<CommandResult> result =
      runner_.Run({"lvremove", "-y", vg + "/" + id}, kDeviceCommandTimeout);
  if (!result.ok()) return result.status();
  if (result->exit_code != 0) {
    if (result->output.find("in use") != std::string::npos) {
      return Status::FailedPrecondition("device " + id + " is in use: " + result->output);
    }
    return Status::Internal("lvremove exited with " + std::to_string(result->exit_code) + ": " +
                            result->output);
  }
  return Status::Ok();
}

StatusOr<Device> LvmDeviceManager::Get(const std::string& id) {
  EPHEMERA_RETURN_IF_ERROR(ValidateVolumeId("id", id));
  if (IsSnapshotName(id)) return Status::NotFound("device " + id + " not found");
  std::lock_guard<std::mutex> lock(mu_);
  StatusOr<LvmLogicalVolume> lv = FindLocked(id);
  if (!lv.ok()) return lv.status();
  return ToDevice(*lv);
}

StatusOr<std::vector<Device>> LvmDeviceManager::List() {
  std::lock_guard<std::mutex> lock(mu_);
  StatusOr<std::vector<LvmLogicalVolume>> lvs = LogicalVolumesLocked();
  if (!lvs.ok()) return lvs.status();
  std::vector<Device> devices;
  for (const LvmLogicalVolume& lv : *lvs) {
    if (!ValidateVolumeId("id", lv.name).ok() || IsSnapshotName(lv.name)) continue;
    devices.push_back(Device{lv.name, lv.size, lv.path, false});
  }
  std::sort(devices.begin(), devices.end(),
            [](const Device& a, const Device& b) { return a.id < b.id; });
  return devices;
}

StatusOr<Capacity> LvmDeviceManager::GetCapacity() {
  std::lock_guard<std::mutex> lock(mu_);
  StatusOr<std::vector<LvmVolumeGroup>> groups = VolumeGroupsLocked();
  if (!groups.ok()) return groups.status();
  Capacity capacity;
  for (const LvmVolumeGroup& g : *groups) {
    capacity.total += g.size - g.size % alignment_;
    int64_t free = g.free - g.free % alignment_;
    capacity.available += free;
    capacity.max_volume_size = std::max(capacity.max_volume_size, free);
  }
  return capacity;
}

StatusOr<Device> LvmDeviceManager::Expand(const std::string& id, int64_t new_size) {
  EPHEMERA_RETURN_IF_ERROR(ValidateVolumeId("id", id));
  if (IsSnapshotName(id)) return Status::NotFound("device " + id + " not found");
  std::lock_guard<std::mutex> lock(mu_);
  if (new_size <= 0 || new_size % alignment_ != 0) {
    return Status::InvalidArgument("size " + std::to_string(new_size) +
                                   " is not a positive multiple of the extent size");
  }
  StatusOr<LvmLogicalVolume> lv = FindLocked(id);
  if (!lv.ok()) return lv.status();
  if (new_size <= lv->size) return ToDevice(*lv);  // never shrinks; already grown
  StatusOr<std::vector<LvmVolumeGroup>> groups = VolumeGroupsLocked();
  if (!groups.ok()) return groups.status();
  for (const LvmVolumeGroup& g : *groups) {
    if (g.name == lv->vg && g.free < new_size - lv->size) {
      return Status::ResourceExhausted(
          "growing " + id + " by " + std::to_string(new_size - lv->size) +
          " bytes does not fit: " + std::to_string(g.free) + " bytes free in " + g.name);
    }
  }
  EPHEMERA_RETURN_IF_ERROR(RunChecked(
      runner_, {"lvextend", "-y", "-L", std::to_string(new_size) + "B", lv->vg + "/" + id},
      kDeviceCommandTimeout));
  StatusOr<LvmLogicalVolume> grown = FindLocked(id);
  if (!grown.ok()) return grown.status();
  return ToDevice(*grown);
}

StatusOr<LvmLogicalVolume> LvmDeviceManager::LocateLocked(const std::string& name) {
  // An active logical volume has its node: then no report is needed (hundreds of milliseconds in a
  // small guest). Init() activates every volume of our groups, so this is the common case.
  for (const std::string& vg : vgs_) {
    std::string node = "/dev/";
    node.append(vg).append("/").append(name);
    struct stat st {};
    if (stat(node.c_str(), &st) != 0 || !S_ISBLK(st.st_mode)) continue;
    StatusOr<int64_t> size = BlockDeviceSize(node);
    if (!size.ok()) return size.status();
    return LvmLogicalVolume{name, vg, *size, node, ""};
  }
  StatusOr<LvmLogicalVolume> lv = FindLocked(name);
  if (!lv.ok()) return lv.status();
  if (lv->attr.size() >= 5 && lv->attr[4] != 'a') {
    EPHEMERA_RETURN_IF_ERROR(
        RunChecked(runner_, {"lvchange", "-ay", lv->vg + "/" + name}, kDeviceCommandTimeout));
  }
  return lv;
}

StatusOr<SnapshotData> LvmDeviceManager::CreateSnapshot(const std::string& snapshot_id,
                                                        const std::string& source_id) {
  EPHEMERA_RETURN_IF_ERROR(ValidateVolumeId("snapshot id", snapshot_id));
  EPHEMERA_RETURN_IF_ERROR(ValidateVolumeId("source id", source_id));
  if (!IsSnapshotName(snapshot_id) || IsSnapshotName(source_id)) {
    return Status::InvalidArgument("snapshot " + snapshot_id + " of " + source_id +
                                   ": not a snapshot ID of a volume ID");
  }
  const std::string partial = snapshot_id + std::string(kPartialSuffix);
  std::unique_lock<std::mutex> lock(mu_);
  StatusOr<LvmLogicalVolume> source = LocateLocked(source_id);
  if (source.status().code() == Code::kNotFound) {
    return Status::NotFound("device " + source_id + " not found");
  }
  if (!source.ok()) return source.status();
  // The copy goes into the source's group (with one group, the only one): its extents are
  // counted there, and a restore finds it beside the volume.
  Status created = LvCreateLocked(partial, source->size, source->vg, /*zero=*/false);
  if (created.code() == Code::kAlreadyExists) {
    // A copy that an earlier attempt left (the caller holds the snapshot's lock: nobody writes
    // it): removed, then made anew.
    EPHEMERA_RETURN_IF_ERROR(RemoveLocked(source->vg, partial));
    created = LvCreateLocked(partial, source->size, source->vg, /*zero=*/false);
  }
  EPHEMERA_RETURN_IF_ERROR(created);
  const std::string partial_path = "/dev/" + source->vg + "/" + partial;
  // Without the lock: the caller keeps the other calls on the volume and the snapshot away, and
  // the other volumes' calls go on meanwhile.
  lock.unlock();
  Status copied = copy_(source->path, source->size, partial_path, source->size);
  lock.lock();
  if (copied.ok()) {
    // The commit point: from here on the copy is a snapshot.
    copied =
        RunChecked(runner_, {"lvrename", source->vg, partial, snapshot_id}, kDeviceCommandTimeout);
  }
  if (!copied.ok()) {
    Status removed = RemoveLocked(source->vg, partial);
    if (!removed.ok()) {
      log::Warning("lvm backend: cannot remove an unfinished snapshot copy",
                   {{"lv", partial}, {"error", removed.ToString()}});
    }
    return copied;
  }
  return SnapshotData{snapshot_id, source->size, source->size, "copy"};
}

Status LvmDeviceManager::DeleteSnapshot(const std::string& snapshot_id, bool erase) {
  EPHEMERA_RETURN_IF_ERROR(ValidateVolumeId("snapshot id", snapshot_id));
  // Not a snapshot's name: no snapshot of ours (and never a volume's logical volume).
  if (!IsSnapshotName(snapshot_id)) return Status::Ok();
  // The finished snapshot, a copy cut short, or (after a crash between the copy's end and the
  // removal of a stale copy) both.
  for (const std::string& name : {snapshot_id + std::string(kPartialSuffix), snapshot_id}) {
    std::string vg;
    std::string path;
    int64_t size = 0;
    {
      std::lock_guard<std::mutex> lock(mu_);
      StatusOr<LvmLogicalVolume> lv = LocateLocked(name);
      if (lv.status().code() == Code::kNotFound) continue;
      if (!lv.ok()) return lv.status();
      vg = lv->vg;
      path = lv->path;
      size = lv->size;
    }
    // Without the lock, as a volume's erase.
    if (erase) EPHEMERA_RETURN_IF_ERROR(erase_(path, size));
    std::lock_guard<std::mutex> lock(mu_);
    EPHEMERA_RETURN_IF_ERROR(RemoveLocked(vg, name));
  }
  return Status::Ok();
}

StatusOr<SnapshotData> LvmDeviceManager::GetSnapshot(const std::string& snapshot_id) {
  EPHEMERA_RETURN_IF_ERROR(ValidateVolumeId("snapshot id", snapshot_id));
  if (!IsSnapshotName(snapshot_id)) {
    return Status::NotFound("snapshot " + snapshot_id + " not found");
  }
  std::lock_guard<std::mutex> lock(mu_);
  StatusOr<LvmLogicalVolume> lv = LocateLocked(snapshot_id);
  if (lv.status().code() == Code::kNotFound) {
    return Status::NotFound("snapshot " + snapshot_id + " not found");
  }
  if (!lv.ok()) return lv.status();
  return SnapshotData{snapshot_id, lv->size, lv->size, ""};
}

StatusOr<std::vector<SnapshotData>> LvmDeviceManager::ListSnapshots() {
  std::lock_guard<std::mutex> lock(mu_);
  StatusOr<std::vector<LvmLogicalVolume>> lvs = LogicalVolumesLocked();
  if (!lvs.ok()) return lvs.status();
  std::vector<SnapshotData> snapshots;
  for (const LvmLogicalVolume& lv : *lvs) {
    // Copies in progress (".partial") are not snapshots.
    if (!IsSnapshotName(lv.name) || !ValidateVolumeId("id", lv.name).ok() ||
        lv.name.ends_with(kPartialSuffix)) {
      continue;
    }
    snapshots.push_back(SnapshotData{lv.name, lv.size, lv.size, ""});
  }
  std::sort(snapshots.begin(), snapshots.end(),
            [](const SnapshotData& a, const SnapshotData& b) { return a.id < b.id; });
  return snapshots;
}

StatusOr<Device> LvmDeviceManager::CreateFromSource(const std::string& id, int64_t size,
                                                    DeviceUsage /*usage*/, SourceKind kind,
                                                    const std::string& source_id) {
  EPHEMERA_RETURN_IF_ERROR(ValidateVolumeId("id", id));
  EPHEMERA_RETURN_IF_ERROR(ValidateVolumeId("source id", source_id));
  if (IsSnapshotName(id)) return Status::InvalidArgument("id " + id + ": a snapshot's ID");
  std::unique_lock<std::mutex> lock(mu_);
  if (size <= 0 || size % alignment_ != 0) {
    return Status::InvalidArgument("size " + std::to_string(size) +
                                   " is not a positive multiple of the extent size " +
                                   std::to_string(alignment_));
  }
  // A snapshot's copy in progress is never a source; nor is a snapshot given as a volume.
  StatusOr<LvmLogicalVolume> source =
      (kind == SourceKind::kSnapshot) == IsSnapshotName(source_id) &&
              !source_id.ends_with(kPartialSuffix)
          ? LocateLocked(source_id)
          : StatusOr<LvmLogicalVolume>(Status::NotFound(""));
  if (source.status().code() == Code::kNotFound) {
    return Status::NotFound(std::string(kind == SourceKind::kSnapshot ? "snapshot " : "device ") +
                            source_id + " not found");
  }
  if (!source.ok()) return source.status();
  if (source->size > size) {
    return Status::OutOfRange("the source holds " + std::to_string(source->size) +
                              " bytes, more than the " + std::to_string(size) + " asked");
  }
  StatusOr<std::string> vg = ChooseGroupLocked(id, size);
  if (!vg.ok()) return vg.status();
  EPHEMERA_RETURN_IF_ERROR(LvCreateLocked(id, size, *vg, /*zero=*/false));
  const std::string path = "/dev/" + *vg + "/" + id;
  lock.unlock();
  Status copied = copy_(source->path, source->size, path, size);
  lock.lock();
  if (!copied.ok()) {
    // Nothing may be left behind (should the removal fail, the caller's `creating` record stays
    // and its recovery removes the volume).
    Status removed = RemoveLocked(*vg, id);
    if (!removed.ok()) {
      log::Warning("lvm backend: cannot remove a volume whose copy failed",
                   {{"lv", id}, {"error", removed.ToString()}});
    }
    return copied;
  }
  log::Info("lvm backend: volume copied from its source",
            {{"volume", id}, {"source", source_id}, {"bytes", std::to_string(source->size)}});
  return Device{id, size, path, DeviceSupportsDax(path)};
}

}  // namespace ephemera::csi
