// Volume lifecycle and recovery (see volume_manager.h).
#include "csi/volume_manager.h"

#include "common/log.h"
#include "csi/volume_id.h"

namespace ephemera::csi {

StatusOr<VolumeLocks::Guard> VolumeLocks::TryLock(const std::string& id) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!busy_.insert(id).second) {
    return Status::Aborted("an operation on volume " + id + " is already in progress");
  }
  return Guard(this, id);
}

void VolumeLocks::Release(const std::string& id) {
  std::lock_guard<std::mutex> lock(mu_);
  busy_.erase(id);
}

VolumeManager::VolumeManager(DeviceManager& devices, StateStore& store, Options options,
                             StateStore* snapshots)
    : devices_(devices), store_(store), snapshots_(snapshots), options_(options) {}

StatusOr<VolumeManager::RecoveryReport> VolumeManager::Recover() {
  RecoveryReport report;
  StatusOr<std::vector<VolumeRecord>> records = store_.List(&report.corrupt_records);
  if (!records.ok()) return records.status();
  std::set<std::string> known;
  for (VolumeRecord& record : *records) {
    known.insert(record.id);
    Status status = RecoverRecord(record, &report);
    if (!status.ok()) report.errors.push_back(record.id + ": " + status.ToString());
  }
  for (const std::string& corrupt : report.corrupt_records) {
    // A record that cannot be read still claims its device: never treat that device as an orphan.
    known.insert(corrupt.substr(0, corrupt.rfind('.')));
  }
  if (SupportsSnapshots()) EPHEMERA_RETURN_IF_ERROR(RecoverSnapshots(&report));
  StatusOr<std::vector<Device>> devices = devices_.List();
  if (!devices.ok()) return devices.status();
  for (const Device& device : *devices) {
    if (known.count(device.id) != 0) continue;
    report.orphans.push_back(device.id);
    if (options_.remove_orphans) {
      Status status = devices_.Delete(device.id, /*erase=*/true);
      if (status.ok()) {
        report.removed_orphans.push_back(device.id);
      } else {
        report.errors.push_back(device.id + ": " + status.ToString());
      }
    }
  }
  return report;
}

Status VolumeManager::RecoverSnapshots(RecoveryReport* report) {
  StatusOr<std::vector<VolumeRecord>> records = snapshots_->List(&report->corrupt_records);
  if (!records.ok()) return records.status();
  std::set<std::string> known;
  for (const VolumeRecord& record : *records) {
    known.insert(record.id);
    Status status;
    switch (record.phase) {
      case Phase::kCreating:  // the copy never finished: whatever of it exists goes
      case Phase::kDeleting:
        status = devices_.DeleteSnapshot(record.id, record.erase_after);
        if (status.ok()) status = snapshots_->Remove(record.id);
        if (status.ok()) {
          (record.phase == Phase::kCreating ? report->rolled_back_snapshots
                                            : report->finished_snapshot_deletes)
              .push_back(record.id);
        }
        break;
      case Phase::kReady: {
        StatusOr<SnapshotData> data = devices_.GetSnapshot(record.id);
        if (data.status().code() == Code::kNotFound) {
          status = snapshots_->Remove(record.id);
          if (status.ok()) report->dropped_snapshots.push_back(record.id);
        } else {
          status = data.status();
        }
        break;
      }
    }
    if (!status.ok()) report->errors.push_back(record.id + ": " + status.ToString());
  }
  for (const std::string& corrupt : report->corrupt_records) {
    known.insert(corrupt.substr(0, corrupt.rfind('.')));
  }
  StatusOr<std::vector<SnapshotData>> copies = devices_.ListSnapshots();
  if (!copies.ok()) return copies.status();
  for (const SnapshotData& copy : *copies) {
    if (known.count(copy.id) != 0) continue;
    report->orphan_snapshots.push_back(copy.id);
    if (options_.remove_orphans) {
      Status status = devices_.DeleteSnapshot(copy.id, /*erase=*/true);
      if (status.ok()) {
        report->removed_orphans.push_back(copy.id);
      } else {
        report->errors.push_back(copy.id + ": " + status.ToString());
      }
    }
  }
  return Status::Ok();
}

Status VolumeManager::RecoverRecord(VolumeRecord& record, RecoveryReport* report) {
  switch (record.phase) {
    case Phase::kCreating:
      EPHEMERA_RETURN_IF_ERROR(devices_.Delete(record.id, record.erase_after));
      EPHEMERA_RETURN_IF_ERROR(store_.Remove(record.id));
      report->rolled_back.push_back(record.id);
      return Status::Ok();
    case Phase::kDeleting: {
      Status status = devices_.Delete(record.id, record.erase_after);
      if (status.code() == Code::kFailedPrecondition) {
        // Still in use: the delete that was interrupted would have been refused. Keep it.
        record.phase = Phase::kReady;
        return store_.Put(record);
      }
      EPHEMERA_RETURN_IF_ERROR(status);
      EPHEMERA_RETURN_IF_ERROR(store_.Remove(record.id));
      report->finished_delete.push_back(record.id);
      return Status::Ok();
    }
    case Phase::kReady: {
      StatusOr<Device> device = devices_.Get(record.id);
      if (device.status().code() == Code::kNotFound) {
        EPHEMERA_RETURN_IF_ERROR(store_.Remove(record.id));
        report->dropped_records.push_back(record.id);
        return Status::Ok();
      }
      return device.status();
    }
  }
  return Status::Ok();
}

StatusOr<VolumeRecord> VolumeManager::CreateVolume(const std::string& name, int64_t required_bytes,
                                                   int64_t limit_bytes,
                                                   const VolumeParameters& params, bool ephemeral) {
  StatusOr<int64_t> size =
      SizeForRange(required_bytes, limit_bytes, options_.default_size, devices_.Alignment());
  if (!size.ok()) return size.status();
  std::string id = ephemeral ? DeriveEphemeralVolumeId(name) : DeriveVolumeId(name);
  StatusOr<VolumeLocks::Guard> guard = locks_.TryLock(id);
  if (!guard.ok()) return guard.status();
  return CreateLocked(id, name, *size, required_bytes, limit_bytes, params, ephemeral);
}

StatusOr<VolumeRecord> VolumeManager::CreateVolumeFrom(const std::string& name,
                                                       int64_t required_bytes, int64_t limit_bytes,
                                                       const VolumeParameters& params,
                                                       const Source& source) {
  if (!SupportsSnapshots()) {
    return Status::Unimplemented("volumes from a data source are not offered by the " +
                                 devices_.Name() + " backend");
  }
  std::string id = DeriveVolumeId(name);
  if (source.kind == SourceKind::kVolume && source.id == id) {
    return Status::InvalidArgument("volume_content_source: volume \"" + name +
                                   "\" cannot be made from itself");
  }
  StatusOr<VolumeLocks::Guard> guard = locks_.TryLock(id);
  if (!guard.ok()) return guard.status();
  // The source stays as it is during the copy: no delete, expansion or stage of it meanwhile.
  StatusOr<VolumeLocks::Guard> source_guard = locks_.TryLock(source.id);
  if (!source_guard.ok()) return source_guard.status();
  return CreateFromLocked(id, name, required_bytes, limit_bytes, params, source);
}

StatusOr<VolumeRecord> VolumeManager::CreateFromLocked(const std::string& id,
                                                       const std::string& name,
                                                       int64_t required_bytes, int64_t limit_bytes,
                                                       const VolumeParameters& params,
                                                       const Source& source) {
  StatusOr<VolumeRecord> origin = Status::NotFound("");
  if (source.kind == SourceKind::kSnapshot) {
    origin = GetSnapshot(source.id);
  } else {
    origin = GetVolume(source.id);
    if (origin.ok() && origin->ephemeral) origin = Status::NotFound("");
  }
  if (origin.status().code() == Code::kNotFound) {
    return Status::NotFound(std::string("volume_content_source: ") +
                            (source.kind == SourceKind::kSnapshot ? "snapshot " : "volume ") +
                            source.id + " not found on this node");
  }
  if (!origin.ok()) return origin.status();
  StatusOr<int64_t> size =
      SizeForRange(required_bytes, limit_bytes, origin->size, devices_.Alignment());
  if (!size.ok()) return size.status();
  if (*size < origin->size) {
    return Status::OutOfRange("capacity_range: the volume must hold its source's " +
                              std::to_string(origin->size) + " bytes, at most " +
                              std::to_string(*size) + " were allowed");
  }
  return CreateLocked(id, name, *size, required_bytes, limit_bytes, params, /*ephemeral=*/false,
                      &source, &*origin);
}

StatusOr<VolumeRecord> VolumeManager::CreateLocked(const std::string& id, const std::string& name,
                                                   int64_t size, int64_t required_bytes,
                                                   int64_t limit_bytes,
                                                   const VolumeParameters& params, bool ephemeral,
                                                   const Source* source,
                                                   const VolumeRecord* origin) {
  std::string source_key = source != nullptr ? source->Key() : "";
  StatusOr<VolumeRecord> existing = store_.Get(id);
  if (existing.ok()) {
    if (existing->phase == Phase::kReady) {
      StatusOr<Device> device = devices_.Get(id);
      if (device.ok()) {
        bool size_ok =
            existing->size >= required_bytes && (limit_bytes == 0 || existing->size <= limit_bytes);
        if (!size_ok || existing->erase_after != params.erase_after ||
            existing->usage != params.usage || existing->ephemeral != ephemeral ||
            existing->name != name || existing->source != source_key) {
          return Status::AlreadyExists("volume \"" + name + "\" exists with size " +
                                       std::to_string(existing->size) +
                                       " and different parameters");
        }
        return *existing;
      }
      if (device.status().code() != Code::kNotFound) return device.status();
      log::Warning("record without device; creating it again", {{"volume", id}});
    }
    // An interrupted create or delete: remove whatever of the device exists, then start over.
    EPHEMERA_RETURN_IF_ERROR(devices_.Delete(id, existing->erase_after));
  } else if (existing.status().code() != Code::kNotFound) {
    return existing.status();
  }

  VolumeRecord record;
  record.id = id;
  record.name = name;
  record.size = size;
  record.erase_after = params.erase_after;
  record.usage = params.usage;
  record.ephemeral = ephemeral;
  record.phase = Phase::kCreating;
  if (origin != nullptr) {
    // The copy holds the source's filesystem (if it had one): never format it again. A filesystem
    // smaller than the device is grown by the node at the next stage.
    record.source = source_key;
    record.fs_type = origin->fs_type;
    record.grow_fs = !origin->fs_type.empty() && size > origin->size;
  }
  auto create = [&]() {
    return source != nullptr
               ? devices_.CreateFromSource(id, size, params.usage, source->kind, source->id)
               : devices_.Create(id, size, params.usage);
  };
  EPHEMERA_RETURN_IF_ERROR(store_.Put(record));
  EPHEMERA_RETURN_IF_ERROR(Fault("create:record-written"));
  StatusOr<Device> device = create();
  if (device.status().code() == Code::kAlreadyExists) {
    // A device of this ID without a ready record is a leftover of ours: replace it.
    EPHEMERA_RETURN_IF_ERROR(devices_.Delete(id, /*erase=*/true));
    device = create();
  }
  if (!device.ok()) {
    // The backend failed (a command hung and was killed, its own cleanup failed, ...): the device
    // may exist, whole or in part. The record goes only when the backend says there is no device;
    // otherwise it stays `creating`, and the next call for this volume or Recover() removes it, so
    // a device never lives without a record and its space is never lost.
    StatusOr<Device> left = devices_.Get(id);
    if (left.status().code() != Code::kNotFound) {
      log::Warning("create failed; the record stays for the removal of the device",
                   {{"volume", id},
                    {"device", left.ok() ? "exists" : "in doubt: " + left.status().ToString()}});
      return device.status();
    }
  }
  if (!device.ok()) {
    Status removed = store_.Remove(id);
    if (!removed.ok())
      log::Error("cannot remove the record of a failed create", removed, {{"volume", id}});
    return device.status();
  }
  EPHEMERA_RETURN_IF_ERROR(Fault("create:device-created"));
  record.phase = Phase::kReady;
  EPHEMERA_RETURN_IF_ERROR(store_.Put(record));
  EPHEMERA_RETURN_IF_ERROR(Fault("create:ready"));
  return record;
}

Status VolumeManager::DeleteVolume(const std::string& id) {
  StatusOr<VolumeLocks::Guard> guard = locks_.TryLock(id);
  if (!guard.ok()) return guard.status();
  return DeleteLocked(id);
}

Status VolumeManager::DeleteLocked(const std::string& id) {
  StatusOr<VolumeRecord> record = store_.Get(id);
  if (record.status().code() == Code::kNotFound) {
    // No record: nothing of ours should exist, but remove a device of that ID if there is one.
    return devices_.Delete(id, /*erase=*/true);
  }
  if (!record.ok()) return record.status();
  Phase previous = record->phase;
  record->phase = Phase::kDeleting;
  bool marked = true;
  if (Status put = store_.Put(*record); !put.ok()) {
    // A full state filesystem must not keep the space of a volume from being freed: delete
    // without the mark. A crash meanwhile leaves the record as it was: recovery keeps a ready
    // volume whose device is still there (the retried delete goes on) and drops one whose device
    // is gone.
    if (put.code() != Code::kResourceExhausted) return put;
    log::Warning("deleting without marking the record: the state directory is full",
                 {{"volume", id}, {"error", put.ToString()}});
    marked = false;
  }
  EPHEMERA_RETURN_IF_ERROR(Fault("delete:marked"));
  Status deleted = devices_.Delete(id, record->erase_after);
  if (deleted.code() == Code::kFailedPrecondition && previous == Phase::kReady && marked) {
    record->phase = Phase::kReady;
    Status restored = store_.Put(*record);
    if (!restored.ok()) return restored;
    return deleted;
  }
  EPHEMERA_RETURN_IF_ERROR(deleted);
  EPHEMERA_RETURN_IF_ERROR(Fault("delete:device-deleted"));
  return store_.Remove(id);
}

StatusOr<VolumeRecord> VolumeManager::GetVolume(const std::string& id) {
  StatusOr<VolumeRecord> record = store_.Get(id);
  if (!record.ok()) return record.status();
  if (record->phase != Phase::kReady) return Status::NotFound("volume " + id + " not found");
  return record;
}

StatusOr<Device> VolumeManager::GetDevice(const std::string& id) {
  StatusOr<VolumeRecord> record = GetVolume(id);
  if (!record.ok()) return record.status();
  return devices_.Get(id);
}

StatusOr<std::vector<VolumeRecord>> VolumeManager::ListVolumes(bool include_ephemeral) {
  StatusOr<std::vector<VolumeRecord>> records = store_.List();
  if (!records.ok()) return records.status();
  std::vector<VolumeRecord> ready;
  for (VolumeRecord& record : *records) {
    if (record.phase != Phase::kReady) continue;
    if (record.ephemeral && !include_ephemeral) continue;
    ready.push_back(std::move(record));
  }
  return ready;
}

StatusOr<VolumeRecord> VolumeManager::ExpandVolume(const std::string& id, int64_t required_bytes,
                                                   int64_t limit_bytes) {
  StatusOr<VolumeLocks::Guard> guard = locks_.TryLock(id);
  if (!guard.ok()) return guard.status();
  return ExpandLocked(id, required_bytes, limit_bytes);
}

StatusOr<VolumeRecord> VolumeManager::ExpandLocked(const std::string& id, int64_t required_bytes,
                                                   int64_t limit_bytes) {
  StatusOr<VolumeRecord> record = GetVolume(id);
  if (!record.ok()) return record.status();
  StatusOr<int64_t> size =
      SizeForRange(required_bytes, limit_bytes, record->size, devices_.Alignment());
  if (!size.ok()) return size.status();
  if (*size <= record->size) {
    if (limit_bytes > 0 && record->size > limit_bytes) {
      return Status::OutOfRange("capacity_range.limit_bytes: volume is already larger");
    }
    return record;
  }
  // The backend answers with the device as it is when it is already at least this large (a grow
  // whose record was not written before a crash): the record takes the device's size.
  StatusOr<Device> device = devices_.Expand(id, *size);
  if (!device.ok()) return device.status();
  EPHEMERA_RETURN_IF_ERROR(Fault("expand:device-grown"));
  record->size = device->size;
  EPHEMERA_RETURN_IF_ERROR(store_.Put(*record));
  return record;
}

StatusOr<VolumeRecord> VolumeManager::CreateSnapshot(const std::string& name,
                                                     const std::string& source_volume_id) {
  if (!SupportsSnapshots()) {
    return Status::Unimplemented("snapshots are not offered by the " + devices_.Name() +
                                 " backend");
  }
  std::string id = DeriveSnapshotId(name);
  StatusOr<VolumeLocks::Guard> guard = locks_.TryLock(id);
  if (!guard.ok()) return guard.status();
  StatusOr<VolumeRecord> existing = snapshots_->Get(id);
  if (existing.ok()) {
    if (existing->phase == Phase::kReady && existing->name == name) {
      if (existing->source != source_volume_id) {
        return Status::AlreadyExists("snapshot \"" + name + "\" exists, of volume " +
                                     existing->source);
      }
      StatusOr<SnapshotData> data = devices_.GetSnapshot(id);
      if (data.ok()) return *existing;
      if (data.status().code() != Code::kNotFound) return data.status();
      log::Warning("snapshot record without its copy; taking it again", {{"snapshot", id}});
    }
    // An interrupted create or delete: remove whatever of the copy exists, then start over.
    EPHEMERA_RETURN_IF_ERROR(devices_.DeleteSnapshot(id, existing->erase_after));
  } else if (existing.status().code() != Code::kNotFound) {
    return existing.status();
  }
  StatusOr<VolumeLocks::Guard> source_guard = locks_.TryLock(source_volume_id);
  if (!source_guard.ok()) return source_guard.status();
  StatusOr<VolumeRecord> volume = GetVolume(source_volume_id);
  if (volume.ok() && volume->ephemeral) volume = Status::NotFound("");
  if (volume.status().code() == Code::kNotFound) {
    return Status::NotFound("source_volume_id: volume " + source_volume_id +
                            " not found on this node");
  }
  if (!volume.ok()) return volume.status();

  VolumeRecord record;
  record.id = id;
  record.name = name;
  record.size = volume->size;
  record.erase_after = volume->erase_after;  // the snapshot holds the volume's data
  record.usage = volume->usage;
  record.fs_type = volume->fs_type;
  record.source = source_volume_id;
  const apiclient::Clock& clock =
      options_.clock != nullptr ? *options_.clock : apiclient::SystemClock();
  record.created_ns =
      std::chrono::duration_cast<std::chrono::nanoseconds>(clock.WallNow().time_since_epoch())
          .count();
  record.phase = Phase::kCreating;
  EPHEMERA_RETURN_IF_ERROR(snapshots_->Put(record));
  EPHEMERA_RETURN_IF_ERROR(Fault("snapshot:record-written"));
  StatusOr<SnapshotData> data = devices_.CreateSnapshot(id, source_volume_id);
  if (!data.ok()) {
    // The record goes only once no copy is left; otherwise it stays `creating` for the next call
    // or Recover().
    Status cleaned = devices_.DeleteSnapshot(id, record.erase_after);
    if (cleaned.ok()) {
      Status removed = snapshots_->Remove(id);
      if (!removed.ok())
        log::Error("cannot remove the record of a failed snapshot", removed, {{"snapshot", id}});
    }
    return data.status();
  }
  log::Info("snapshot taken", {{"snapshot", id},
                               {"volume", source_volume_id},
                               {"allocated", std::to_string(data->allocated)},
                               {"method", data->method}});
  EPHEMERA_RETURN_IF_ERROR(Fault("snapshot:copied"));
  record.phase = Phase::kReady;
  EPHEMERA_RETURN_IF_ERROR(snapshots_->Put(record));
  return record;
}

Status VolumeManager::DeleteSnapshot(const std::string& id) {
  if (!SupportsSnapshots()) {
    return Status::Unimplemented("snapshots are not offered by the " + devices_.Name() +
                                 " backend");
  }
  StatusOr<VolumeLocks::Guard> guard = locks_.TryLock(id);
  if (!guard.ok()) return guard.status();
  return DeleteSnapshotLocked(id);
}

Status VolumeManager::DeleteSnapshotLocked(const std::string& id) {
  StatusOr<VolumeRecord> record = snapshots_->Get(id);
  if (record.status().code() == Code::kNotFound) {
    return devices_.DeleteSnapshot(id, /*erase=*/true);  // a leftover of ours, if any
  }
  if (!record.ok()) return record.status();
  record->phase = Phase::kDeleting;
  if (Status put = snapshots_->Put(*record); !put.ok()) {
    // As for volumes: a full state filesystem must not keep the space from being freed.
    if (put.code() != Code::kResourceExhausted) return put;
    log::Warning("deleting a snapshot without marking its record: the state directory is full",
                 {{"snapshot", id}, {"error", put.ToString()}});
  }
  EPHEMERA_RETURN_IF_ERROR(Fault("snapshot-delete:marked"));
  EPHEMERA_RETURN_IF_ERROR(devices_.DeleteSnapshot(id, record->erase_after));
  return snapshots_->Remove(id);
}

StatusOr<VolumeRecord> VolumeManager::GetSnapshot(const std::string& id) {
  if (!SupportsSnapshots()) return Status::NotFound("snapshot " + id + " not found");
  StatusOr<VolumeRecord> record = snapshots_->Get(id);
  if (!record.ok()) {
    if (record.status().code() == Code::kNotFound) {
      return Status::NotFound("snapshot " + id + " not found");
    }
    return record.status();
  }
  if (record->phase != Phase::kReady) return Status::NotFound("snapshot " + id + " not found");
  StatusOr<SnapshotData> data = devices_.GetSnapshot(id);
  if (!data.ok()) return data.status();
  return record;
}

StatusOr<std::vector<VolumeRecord>> VolumeManager::ListSnapshots() {
  if (!SupportsSnapshots()) return std::vector<VolumeRecord>{};
  StatusOr<std::vector<VolumeRecord>> records = snapshots_->List();
  if (!records.ok()) return records.status();
  std::vector<VolumeRecord> ready;
  for (VolumeRecord& record : *records) {
    if (record.phase == Phase::kReady) ready.push_back(std::move(record));
  }
  return ready;
}

Status VolumeManager::SetFsType(const std::string& id, const std::string& fs_type) {
  StatusOr<VolumeRecord> record = GetVolume(id);
  if (!record.ok()) return record.status();
  if (record->fs_type == fs_type) return Status::Ok();
  record->fs_type = fs_type;
  return store_.Put(*record);
}

Status VolumeManager::ClearGrowFs(const std::string& id) {
  StatusOr<VolumeRecord> record = GetVolume(id);
  if (!record.ok()) return record.status();
  if (!record->grow_fs) return Status::Ok();
  record->grow_fs = false;
  return store_.Put(*record);
}

}  // namespace ephemera::csi
