// CSI Node service (see node_service.h).
#include "csi/node_service.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

#include "common/log.h"
#include "csi/backends/loop_device.h"
#include "csi/grpc_status.h"
#include "csi/mount_util.h"
#include "csi/parameters.h"
#include "csi/request_validation.h"
#include "csi/system_error.h"
#include "csi/volume_health.h"
#include "csi/volume_id.h"

namespace ephemera::csi {

using namespace ::csi::v1;  // NOLINT(google-build-using-namespace): the generated messages

namespace {

Status EnsureDirectory(const std::string& path) {
  std::error_code ec;
  std::filesystem::create_directories(path, ec);
  if (ec) return Status::Internal("creating " + path + ": " + ec.message());
  return Status::Ok();
}

// For a raw block volume the target is a file that the device node is bind-mounted on.
Status EnsureFile(const std::string& path) {
  EPHEMERA_RETURN_IF_ERROR(EnsureDirectory(std::filesystem::path(path).parent_path().string()));
  int fd = open(path.c_str(), O_CREAT | O_WRONLY | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (fd < 0) return Status::Internal(ErrnoMessage("create " + path));
  close(fd);
  return Status::Ok();
}

// Removes what was published at `path` (a directory or the file of a raw block volume).
Status RemoveTarget(const std::string& path) {
  if (rmdir(path.c_str()) == 0 || errno == ENOENT) return Status::Ok();
  if (errno == ENOTDIR && (unlink(path.c_str()) == 0 || errno == ENOENT)) return Status::Ok();
  return Status::Internal(ErrnoMessage("remove " + path));
}

std::vector<std::string> MountOptions(const VolumeCapability& capability, const Device& device) {
  std::vector<std::string> options(capability.mount().mount_flags().begin(),
                                   capability.mount().mount_flags().end());
  if (device.supports_dax) options.push_back("dax");
  return options;
}

// Logs what the kernel made of a filesystem mount: whether DAX is in effect according to the
// filesystem options /proc/self/mountinfo reports for it. One line per mount, written while the
// mount surely exists, so that a missing DAX shows (the guest tests check these lines for every
// volume csi-sanity stages).
void LogMount(const std::string& id, const Device& device, const std::string& target) {
  StatusOr<std::optional<MountEntry>> mounted = FindMount(target);
  log::Fields fields = {{"volume", id}, {"target", target}};
  if (!mounted.ok()) {
    log::Error("mounted, but the mount table is unreadable", mounted.status(), fields);
    return;
  }
  if (!mounted->has_value()) {
    log::Warning("mounted, but not in the mount table", fields);
    return;
  }
  const MountEntry& entry = **mounted;
  const char* dax = "not asked";
  if (DaxInEffect(entry)) {
    dax = "on";
  } else if (device.supports_dax) {
    dax = "asked but off";
  }
  // Not the options themselves: they include the request's mount flags, which are not logged.
  fields.emplace_back("fstype", entry.fstype);
  fields.emplace_back("device", device.path);
  if (IsReadOnly(entry)) fields.emplace_back("readOnly", "true");
  fields.emplace_back("dax", dax);  // last: the guest tests match dax="..." at the end of the line
  log::Info("mounted", fields);
}

// The volume_id and volume_path of NodeGetVolumeStats and NodeExpandVolume. A relative path
// cannot be where a volume is published: the volume is NOT_FOUND there (not INVALID_ARGUMENT).
Status ValidateVolumeAndPath(const std::string& volume_id, const std::string& volume_path) {
  EPHEMERA_RETURN_IF_ERROR(ValidateVolumeId("volume_id", volume_id));
  if (!volume_path.empty() && volume_path[0] != '/') {
    return Status::NotFound("volume_path: " + volume_path.substr(0, 256) +
                            " is not an absolute path; no volume is published there");
  }
  return ValidatePath("volume_path", volume_path);
}

}  // namespace

StatusOr<VolumeRecord> NodeService::FindVolume(const std::string& request_id) {
  StatusOr<VolumeRecord> record = volumes_.GetVolume(request_id);
  if (record.status().code() != Code::kNotFound) return record;
  StatusOr<VolumeRecord> ephemeral = volumes_.GetVolume(DeriveEphemeralVolumeId(request_id));
  if (ephemeral.ok() && ephemeral->ephemeral && ephemeral->name == request_id) return ephemeral;
  return Status::NotFound("volume " + request_id + " not found");
}

Status NodeService::EnsureFormatted(const VolumeRecord& record, const Device& device,
                                    const std::string& fs_type) {
  if (!record.fs_type.empty()) {
    if (record.fs_type != fs_type) {
      return Status::AlreadyExists("volume " + record.id + " holds a " + record.fs_type +
                                   " filesystem, not " + fs_type);
    }
    return Status::Ok();
  }
  if (fs_type == "xfs") {
    // reflink=0: DAX and reflink exclude each other on XFS.
    EPHEMERA_RETURN_IF_ERROR(RunChecked(runner_,
                                        {"mkfs.xfs", "-q", "-f", "-m", "reflink=0", device.path},
                                        kFilesystemCommandTimeout));
  } else {
    EPHEMERA_RETURN_IF_ERROR(RunChecked(
        runner_, {"mkfs.ext4", "-q", "-F", "-b", "4096", device.path}, kFilesystemCommandTimeout));
  }
  return volumes_.SetFsType(record.id, fs_type);
}

grpc::Status NodeService::NodeStageVolume(grpc::ServerContext*,
                                          const NodeStageVolumeRequest* request,
                                          NodeStageVolumeResponse*) {
  return Handle([&] { return DoStage(*request); });
}

Status NodeService::DoStage(const NodeStageVolumeRequest& request) {
  EPHEMERA_RETURN_IF_ERROR(ValidateVolumeId("volume_id", request.volume_id()));
  EPHEMERA_RETURN_IF_ERROR(ValidatePath("staging_target_path", request.staging_target_path()));
  if (!request.has_volume_capability()) {
    return Status::InvalidArgument("volume_capability: required");
  }
  EPHEMERA_RETURN_IF_ERROR(ValidateCapability("volume_capability", request.volume_capability()));
  const std::string& id = request.volume_id();
  const std::string& staging = request.staging_target_path();
  StatusOr<VolumeLocks::Guard> guard = volumes_.locks().TryLock(id);
  if (!guard.ok()) return guard.status();
  StatusOr<VolumeRecord> record = volumes_.GetVolume(id);
  if (!record.ok()) return record.status();
  // Raw block volumes are published straight from the device: nothing to stage.
  if (request.volume_capability().has_block()) return Status::Ok();

  StatusOr<std::string> fs_type =
      ParseFsType("volume_capability.mount.fs_type", request.volume_capability().mount().fs_type());
  if (!fs_type.ok()) return fs_type.status();
  StatusOr<Device> device = volumes_.GetDevice(id);
  if (!device.ok()) return device.status();
  StatusOr<std::string> major_minor = DeviceMajorMinor(device->path);
  if (!major_minor.ok()) return major_minor.status();
  StatusOr<std::optional<MountEntry>> mounted = FindMount(staging);
  if (!mounted.ok()) return mounted.status();
  if (mounted->has_value()) {
    if ((*mounted)->major_minor != *major_minor) {
      return Status::AlreadyExists("staging_target_path: " + staging +
                                   " has another filesystem mounted");
    }
    if ((*mounted)->fstype != *fs_type) {
      return Status::AlreadyExists("volume " + id + " is staged with " + (*mounted)->fstype);
    }
    return Status::Ok();  // already staged
  }
  EPHEMERA_RETURN_IF_ERROR(EnsureFormatted(*record, *device, *fs_type));
  // A copy of a smaller source (a restore or clone into a larger volume) holds the source's
  // filesystem: it grows to the device here, once. ext4 before the mount (offline, so that no
  // CAP_SYS_RESOURCE is needed; e2fsck first, as resize2fs demands, which also replays the
  // journal of a copy taken while the source was mounted), xfs after it (xfs grows only mounted).
  const bool grow = record->grow_fs && record->fs_type == *fs_type;
  if (grow && *fs_type == "ext4") EPHEMERA_RETURN_IF_ERROR(GrowExt4Offline(device->path));
  EPHEMERA_RETURN_IF_ERROR(EnsureDirectory(staging));
  std::vector<std::string> options = MountOptions(request.volume_capability(), *device);
  // A copy has its source's filesystem UUID, and XFS refuses to mount a second filesystem with the
  // UUID of a mounted one (EINVAL) while the source is staged on the same node; `xfs_admin -U`
  // cannot give the copy a new one while its log is dirty (a copy of a mounted volume).
  if (*fs_type == "xfs" && !record->source.empty()) options.emplace_back("nouuid");
  EPHEMERA_RETURN_IF_ERROR(MountFilesystem(device->path, staging, *fs_type, options));
  LogMount(id, *device, staging);
  if (grow && *fs_type == "xfs") {
    Status grown = RunChecked(runner_, {"xfs_growfs", staging}, kFilesystemCommandTimeout);
    if (!grown.ok()) {
      Status unmounted = Unmount(staging);  // the retried stage mounts and grows again
      if (!unmounted.ok()) log::Error("cannot unmount after a failed growth", unmounted, {});
      return grown;
    }
  }
  if (grow) {
    log::Info("filesystem grown to its device at stage", {{"volume", id}, {"fstype", *fs_type}});
    EPHEMERA_RETURN_IF_ERROR(volumes_.ClearGrowFs(id));
  }
  return Status::Ok();
}

Status NodeService::GrowExt4Offline(const std::string& device) {
  // -p: repairs what is safe without questions; exit 1 and 2 mean it corrected something.
  StatusOr<CommandResult> checked =
      runner_.Run({"e2fsck", "-f", "-p", device}, kFilesystemCommandTimeout);
  if (!checked.ok()) return checked.status();
  if (checked->exit_code > 2) {
    return Status::Internal("e2fsck -f -p " + device + " exited with " +
                            std::to_string(checked->exit_code) + ": " +
                            checked->output.substr(0, 4096));
  }
  return RunChecked(runner_, {"resize2fs", device}, kFilesystemCommandTimeout);
}

grpc::Status NodeService::NodeUnstageVolume(grpc::ServerContext*,
                                            const NodeUnstageVolumeRequest* request,
                                            NodeUnstageVolumeResponse*) {
  return Handle([&] { return DoUnstage(*request); });
}

Status NodeService::DoUnstage(const NodeUnstageVolumeRequest& request) {
  EPHEMERA_RETURN_IF_ERROR(ValidateVolumeId("volume_id", request.volume_id()));
  EPHEMERA_RETURN_IF_ERROR(ValidatePath("staging_target_path", request.staging_target_path()));
  StatusOr<VolumeLocks::Guard> guard = volumes_.locks().TryLock(request.volume_id());
  if (!guard.ok()) return guard.status();
  StatusOr<VolumeRecord> record = volumes_.GetVolume(request.volume_id());
  StatusOr<std::optional<MountEntry>> mounted = FindMount(request.staging_target_path());
  if (!mounted.ok()) return mounted.status();
  if (!record.ok() && !mounted->has_value()) {
    // Unknown and not staged there: done (the kubelet repeats an unstage until it succeeds).
    return record.status().code() == Code::kNotFound ? Status::Ok() : record.status();
  }
  // Unmount every layer a repeated or interrupted stage may have left.
  while (mounted->has_value()) {
    EPHEMERA_RETURN_IF_ERROR(Unmount(request.staging_target_path()));
    mounted = FindMount(request.staging_target_path());
    if (!mounted.ok()) return mounted.status();
  }
  return Status::Ok();
}

grpc::Status NodeService::NodePublishVolume(grpc::ServerContext*,
                                            const NodePublishVolumeRequest* request,
                                            NodePublishVolumeResponse*) {
  return Handle([&] {
    return IsEphemeral({request->volume_context().begin(), request->volume_context().end()})
               ? DoPublishEphemeral(*request)
               : DoPublish(*request);
  });
}

Status NodeService::DoPublish(const NodePublishVolumeRequest& request) {
  EPHEMERA_RETURN_IF_ERROR(ValidateVolumeId("volume_id", request.volume_id()));
  EPHEMERA_RETURN_IF_ERROR(ValidatePath("target_path", request.target_path()));
  if (!request.has_volume_capability()) {
    return Status::InvalidArgument("volume_capability: required");
  }
  EPHEMERA_RETURN_IF_ERROR(ValidateCapability("volume_capability", request.volume_capability()));
  bool block = request.volume_capability().has_block();
  if (!block) {
    if (request.staging_target_path().empty()) {
      return Status::InvalidArgument("staging_target_path: required (the volume must be staged)");
    }
    EPHEMERA_RETURN_IF_ERROR(ValidatePath("staging_target_path", request.staging_target_path()));
  }
  const std::string& id = request.volume_id();
  const std::string& target = request.target_path();
  bool read_only = request.readonly() || IsReadOnlyMode(request.volume_capability());
  StatusOr<VolumeLocks::Guard> guard = volumes_.locks().TryLock(id);
  if (!guard.ok()) return guard.status();
  StatusOr<Device> device = volumes_.GetDevice(id);
  if (!device.ok()) return device.status();

  StatusOr<std::optional<MountEntry>> existing = FindMount(target);
  if (!existing.ok()) return existing.status();
  if (existing->has_value()) {
    if (IsReadOnly(**existing) != read_only) {
      return Status::AlreadyExists("target_path: " + target +
                                   " is published with a different read-only setting");
    }
    return Status::Ok();
  }
  if (block) {
    EPHEMERA_RETURN_IF_ERROR(EnsureFile(target));
    return BindMount(device->path, target, read_only);
  }
  StatusOr<std::optional<MountEntry>> staged = FindMount(request.staging_target_path());
  if (!staged.ok()) return staged.status();
  StatusOr<std::string> major_minor = DeviceMajorMinor(device->path);
  if (!major_minor.ok()) return major_minor.status();
  if (!staged->has_value() || (*staged)->major_minor != *major_minor) {
    return Status::FailedPrecondition("staging_target_path: volume " + id + " is not staged at " +
                                      request.staging_target_path());
  }
  EPHEMERA_RETURN_IF_ERROR(EnsureDirectory(target));
  return BindMount(request.staging_target_path(), target, read_only);
}

Status NodeService::DoPublishEphemeral(const NodePublishVolumeRequest& request) {
  EPHEMERA_RETURN_IF_ERROR(ValidateVolumeId("volume_id", request.volume_id()));
  EPHEMERA_RETURN_IF_ERROR(ValidatePath("target_path", request.target_path()));
  if (!request.has_volume_capability()) {
    return Status::InvalidArgument("volume_capability: required");
  }
  EPHEMERA_RETURN_IF_ERROR(ValidateCapability("volume_capability", request.volume_capability()));
  if (!request.volume_capability().has_mount()) {
    return Status::InvalidArgument(
        "volume_capability: inline ephemeral volumes must use the mount access type");
  }
  StatusOr<EphemeralParameters> params =
      ParseEphemeralParameters({request.volume_context().begin(), request.volume_context().end()});
  if (!params.ok()) return params.status();
  StatusOr<std::string> fs_type =
      ParseFsType("volume_capability.mount.fs_type", request.volume_capability().mount().fs_type());
  if (!fs_type.ok()) return fs_type.status();
  const std::string& target = request.target_path();
  bool read_only = request.readonly() || IsReadOnlyMode(request.volume_capability());

  // An inline xfs volume asked smaller than mkfs.xfs accepts gets the smallest it accepts.
  StatusOr<int64_t> size = RequiredBytesFor(*fs_type, params->size, 0, "volumeAttributes.size");
  if (!size.ok()) return size.status();
  StatusOr<VolumeRecord> record =
      volumes_.CreateVolume(request.volume_id(), params->size == 0 ? 0 : *size, 0, params->volume,
                            /*ephemeral=*/true);
  if (!record.ok()) return record.status();
  Status status;
  {
    StatusOr<VolumeLocks::Guard> guard = volumes_.locks().TryLock(record->id);
    if (!guard.ok()) return guard.status();
    StatusOr<std::optional<MountEntry>> existing = FindMount(target);
    if (!existing.ok()) return existing.status();
    if (existing->has_value()) return Status::Ok();  // published before
    status = [&]() -> Status {
      StatusOr<Device> device = volumes_.GetDevice(record->id);
      if (!device.ok()) return device.status();
      EPHEMERA_RETURN_IF_ERROR(EnsureFormatted(*record, *device, *fs_type));
      EPHEMERA_RETURN_IF_ERROR(EnsureDirectory(target));
      std::vector<std::string> options = MountOptions(request.volume_capability(), *device);
      if (read_only) options.push_back("ro");
      EPHEMERA_RETURN_IF_ERROR(MountFilesystem(device->path, target, *fs_type, options));
      LogMount(record->id, *device, target);
      return Status::Ok();
    }();
  }
  if (!status.ok()) {
    // Do not keep a volume that no pod can use; kubelet retries the whole publish.
    Status deleted = volumes_.DeleteVolume(record->id);
    if (!deleted.ok()) {
      log::Error("cannot delete the ephemeral volume of a failed publish", deleted,
                 {{"volume", record->id}});
    }
  }
  return status;
}

grpc::Status NodeService::NodeUnpublishVolume(grpc::ServerContext*,
                                              const NodeUnpublishVolumeRequest* request,
                                              NodeUnpublishVolumeResponse*) {
  return Handle([&] { return DoUnpublish(*request); });
}

Status NodeService::DoUnpublish(const NodeUnpublishVolumeRequest& request) {
  EPHEMERA_RETURN_IF_ERROR(ValidateVolumeId("volume_id", request.volume_id()));
  EPHEMERA_RETURN_IF_ERROR(ValidatePath("target_path", request.target_path()));
  const std::string& target = request.target_path();
  std::string ephemeral_id = DeriveEphemeralVolumeId(request.volume_id());
  bool ephemeral = false;
  {
    StatusOr<VolumeRecord> record = FindVolume(request.volume_id());
    if (record.ok()) {
      ephemeral = record->ephemeral;
    } else if (record.status().code() != Code::kNotFound) {
      return record.status();
    } else if (volumes_.HasRecord(ephemeral_id)) {
      // An inline ephemeral volume whose delete was interrupted: finish it.
      ephemeral = true;
    } else {
      StatusOr<std::optional<MountEntry>> mounted = FindMount(target);
      if (!mounted.ok()) return mounted.status();
      if (!mounted->has_value()) {
        // Unknown and not mounted: it is not published there, which is what the caller wants.
        // The kubelet repeats an unpublish until it succeeds, also for an inline volume whose
        // publish failed (e.g. too large for the node): NOT_FOUND here would keep the pod
        // Terminating for ever. The directory the kubelet made for it goes.
        return RemoveTarget(target);
      }
      // Mounted but unknown: unmount what is there so the pod's directory can go away.
    }
  }
  {
    std::string lock_id = ephemeral ? ephemeral_id : request.volume_id();
    StatusOr<VolumeLocks::Guard> guard = volumes_.locks().TryLock(lock_id);
    if (!guard.ok()) return guard.status();
    StatusOr<std::optional<MountEntry>> mounted = FindMount(target);
    if (!mounted.ok()) return mounted.status();
    while (mounted->has_value()) {
      EPHEMERA_RETURN_IF_ERROR(Unmount(target));
      mounted = FindMount(target);
      if (!mounted.ok()) return mounted.status();
    }
    EPHEMERA_RETURN_IF_ERROR(RemoveTarget(target));
  }
  if (ephemeral) return volumes_.DeleteVolume(ephemeral_id);
  return Status::Ok();
}

grpc::Status NodeService::NodeGetVolumeStats(grpc::ServerContext*,
                                             const NodeGetVolumeStatsRequest* request,
                                             NodeGetVolumeStatsResponse* response) {
  return Handle([&] { return DoStats(*request, response); });
}

Status NodeService::DoStats(const NodeGetVolumeStatsRequest& request,
                            NodeGetVolumeStatsResponse* response) {
  EPHEMERA_RETURN_IF_ERROR(ValidateVolumeAndPath(request.volume_id(), request.volume_path()));
  if (!request.staging_target_path().empty()) {
    EPHEMERA_RETURN_IF_ERROR(ValidatePath("staging_target_path", request.staging_target_path()));
  }
  StatusOr<VolumeRecord> record = FindVolume(request.volume_id());
  if (!record.ok()) return record.status();
  const std::string& path = request.volume_path();
  struct stat st {};
  VolumeCondition* condition = response->mutable_volume_condition();
  if (stat(path.c_str(), &st) != 0) {
    if (errno == ENOENT) return Status::NotFound("volume_path: " + path + " does not exist");
    if (errno == EIO) {
      // A shut-down xfs fails even the stat of its root: the volume's condition, not an error of
      // the call (there is no usage to report).
      condition->set_abnormal(true);
      condition->set_message("the filesystem fails I/O (" + ErrnoMessage("stat " + path) +
                             "): it was shut down after an error");
      log::Warning("volume abnormal",
                   {{"volume", record->id}, {"condition", condition->message()}});
      return Status::Ok();
    }
    return Status::Internal(ErrnoMessage("stat " + path));
  }
  std::string problems;
  auto report = [&](const std::string& problem) {
    if (problem.empty()) return;
    if (!problems.empty()) problems += "; ";
    problems += problem;
  };
  StatusOr<std::optional<MountEntry>> mounted = FindMount(path);
  if (!mounted.ok()) return mounted.status();
  // What is at volume_path: the device of the block file, or the device of the mount there.
  std::string here;
  if (S_ISBLK(st.st_mode)) {
    here = std::to_string(major(st.st_rdev)) + ":" + std::to_string(minor(st.st_rdev));
  } else if (mounted->has_value()) {
    here = (*mounted)->major_minor;
  }
  if (!here.empty()) report(LoopBackingProblem(here));
  StatusOr<Device> device = volumes_.GetDevice(record->id);
  StatusOr<std::string> major_minor =
      device.ok() ? DeviceMajorMinor(device->path) : StatusOr<std::string>(device.status());
  if (!device.ok()) {
    // Say it once: a deleted backing file is also a missing device.
    if (problems.empty()) report("the volume's device is missing: " + device.status().message());
  } else if (!here.empty() && (!major_minor.ok() || here != *major_minor)) {
    report(S_ISBLK(st.st_mode) ? "volume_path is another block device than the volume's"
                               : "volume_path holds another filesystem than the volume's device");
  }

  if (S_ISBLK(st.st_mode)) {
    StatusOr<int64_t> size = BlockDeviceSize(path);
    if (!size.ok()) return size.status();
    VolumeUsage* usage = response->add_usage();
    usage->set_unit(VolumeUsage::BYTES);
    usage->set_total(*size);
  } else if (!mounted->has_value()) {
    report("volume_path is not a mount point");
  } else {
    report(FilesystemProblem(path, **mounted, here));
    struct statvfs fs {};
    if (statvfs(path.c_str(), &fs) != 0) {
      // A filesystem that fails even statfs is the volume's problem, not the call's.
      if (errno != EIO) return Status::Internal(ErrnoMessage("statvfs " + path));
      report("the filesystem fails I/O (" + ErrnoMessage("statvfs " + path) + ")");
    } else {
      auto frsize = static_cast<int64_t>(fs.f_frsize);
      VolumeUsage* bytes = response->add_usage();
      bytes->set_unit(VolumeUsage::BYTES);
      bytes->set_total(static_cast<int64_t>(fs.f_blocks) * frsize);
      bytes->set_available(static_cast<int64_t>(fs.f_bavail) * frsize);
      bytes->set_used(static_cast<int64_t>(fs.f_blocks - fs.f_bfree) * frsize);
      VolumeUsage* inodes = response->add_usage();
      inodes->set_unit(VolumeUsage::INODES);
      inodes->set_total(static_cast<int64_t>(fs.f_files));
      inodes->set_available(static_cast<int64_t>(fs.f_favail));
      inodes->set_used(static_cast<int64_t>(fs.f_files - fs.f_ffree));
    }
  }
  condition->set_abnormal(!problems.empty());
  condition->set_message(problems.empty() ? "healthy" : problems);
  if (!problems.empty()) {
    log::Warning("volume abnormal", {{"volume", record->id}, {"condition", problems}});
  }
  return Status::Ok();
}

grpc::Status NodeService::NodeExpandVolume(grpc::ServerContext*,
                                           const NodeExpandVolumeRequest* request,
                                           NodeExpandVolumeResponse* response) {
  return Handle([&] { return DoExpand(*request, response); });
}

Status NodeService::DoExpand(const NodeExpandVolumeRequest& request,
                             NodeExpandVolumeResponse* response) {
  EPHEMERA_RETURN_IF_ERROR(ValidateVolumeAndPath(request.volume_id(), request.volume_path()));
  if (request.has_volume_capability()) {
    EPHEMERA_RETURN_IF_ERROR(ValidateCapability("volume_capability", request.volume_capability()));
  }
  StatusOr<VolumeRecord> record = FindVolume(request.volume_id());
  if (!record.ok()) return record.status();
  // Device and filesystem grow under one lock, so no stage, unstage or delete comes between.
  StatusOr<VolumeLocks::Guard> guard = volumes_.locks().TryLock(record->id);
  if (!guard.ok()) return guard.status();
  const std::string& path = request.volume_path();
  struct stat st {};
  if (stat(path.c_str(), &st) != 0) {
    if (errno == ENOENT) return Status::NotFound("volume_path: " + path + " does not exist");
    return Status::Internal(ErrnoMessage("stat " + path));
  }
  StatusOr<Device> device = volumes_.GetDevice(record->id);
  if (!device.ok()) return device.status();
  StatusOr<std::string> major_minor = DeviceMajorMinor(device->path);
  if (!major_minor.ok()) return major_minor.status();

  // The path must hold this volume before anything grows: a misdirected call changes nothing.
  const bool block = S_ISBLK(st.st_mode) ||
                     (request.has_volume_capability() && request.volume_capability().has_block());
  std::string fstype;
  if (block) {
    if (!S_ISBLK(st.st_mode) ||
        std::to_string(major(st.st_rdev)) + ":" + std::to_string(minor(st.st_rdev)) !=
            *major_minor) {
      return Status::FailedPrecondition("volume_path: " + path + " is not the device of volume " +
                                        record->id);
    }
  } else {
    StatusOr<std::optional<MountEntry>> mounted = FindMount(path);
    if (!mounted.ok()) return mounted.status();
    if (!mounted->has_value()) {
      return Status::FailedPrecondition("volume_path: " + path + " is not mounted");
    }
    if ((*mounted)->major_minor != *major_minor) {
      return Status::FailedPrecondition("volume_path: " + path +
                                        " holds another filesystem than the one of volume " +
                                        record->id);
    }
    fstype = (*mounted)->fstype;
  }

  // The device grows here, on the node that holds it: the cluster-wide csi-resizer cannot reach
  // this node's pool (see docs/csi-driver.md, "Volume expansion"). A pool that cannot hold the
  // growth is OUT_OF_RANGE, which kubelet takes as final and infeasible: it records the message in
  // the PVC's NodeResizeError condition, and a smaller request recovers.
  int64_t required = request.capacity_range().required_bytes();
  StatusOr<VolumeRecord> grown =
      volumes_.ExpandLocked(record->id, required, request.capacity_range().limit_bytes());
  if (grown.status().code() == Code::kResourceExhausted) {
    return Status::OutOfRange("capacity_range.required_bytes: volume " + record->id +
                              " cannot grow to " + std::to_string(required) + " bytes on node " +
                              node_id_ + ": " + std::string(grown.status().message()));
  }
  if (!grown.ok()) return grown.status();
  StatusOr<int64_t> size = BlockDeviceSize(device->path);
  if (!size.ok()) return size.status();
  response->set_capacity_bytes(*size);
  if (block) return Status::Ok();  // raw block: the device has its new size, nothing else grows

  // Both tools grow the filesystem to the device's size, and do nothing when it already has it:
  // a retry after a crash between the device's growth and this step completes it.
  if (fstype == "xfs") {
    return RunChecked(runner_, {"xfs_growfs", path}, kFilesystemCommandTimeout);
  }
  if (fstype == "ext4") {
    Status resized = RunChecked(runner_, {"resize2fs", device->path}, kFilesystemCommandTimeout);
    // resize2fs 1.47 says "Permission denied to resize filesystem" when the kernel refuses.
    if (!resized.ok() && (resized.message().find("Permission denied") != std::string::npos ||
                          resized.message().find("not permitted") != std::string::npos)) {
      return Status(resized.code(), resized.message() +
                                        " (online ext4 growth needs CAP_SYS_RESOURCE in the"
                                        " driver's container; the device has grown, a retry"
                                        " with the capability grows the filesystem)");
    }
    return resized;
  }
  return Status::FailedPrecondition("volume_path: cannot grow a " + fstype + " filesystem");
}

grpc::Status NodeService::NodeGetCapabilities(grpc::ServerContext*,
                                              const NodeGetCapabilitiesRequest*,
                                              NodeGetCapabilitiesResponse* response) {
  for (auto type : {NodeServiceCapability::RPC::STAGE_UNSTAGE_VOLUME,
                    NodeServiceCapability::RPC::GET_VOLUME_STATS,
                    NodeServiceCapability::RPC::VOLUME_CONDITION}) {
    response->add_capabilities()->mutable_rpc()->set_type(type);
  }
  if (volumes_.devices().SupportsExpansion()) {
    response->add_capabilities()->mutable_rpc()->set_type(
        NodeServiceCapability::RPC::EXPAND_VOLUME);
  }
  return grpc::Status::OK;
}

void NodeService::FillNodeInfo(NodeGetInfoResponse* response) const {
  response->set_node_id(node_id_);
  (*response->mutable_accessible_topology()->mutable_segments())[std::string(kTopologyKey)] =
      node_id_;
}

grpc::Status NodeService::NodeGetInfo(grpc::ServerContext*, const NodeGetInfoRequest*,
                                      NodeGetInfoResponse* response) {
  FillNodeInfo(response);
  return grpc::Status::OK;
}

}  // namespace ephemera::csi
