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

VolumeManager::VolumeManager(DeviceManager& devices, StateStore& store, Options options)
    : devices_(devices), store_(store), options_(options) {}

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

StatusOr<VolumeRecord> VolumeManager::CreateLocked(const std::string& id, const std::string& name,
                                                   int64_t size, int64_t required_bytes,
                                                   int64_t limit_bytes,
                                                   const VolumeParameters& params, bool ephemeral) {
  StatusOr<VolumeRecord> existing = store_.Get(id);
  if (existing.ok()) {
    if (existing->phase == Phase::kReady) {
      StatusOr<Device> device = devices_.Get(id);
      if (device.ok()) {
        bool size_ok =
            existing->size >= required_bytes && (limit_bytes == 0 || existing->size <= limit_bytes);
        if (!size_ok || existing->erase_after != params.erase_after ||
            existing->usage != params.usage || existing->ephemeral != ephemeral ||
            existing->name != name) {
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
  EPHEMERA_RETURN_IF_ERROR(store_.Put(record));
  EPHEMERA_RETURN_IF_ERROR(Fault("create:record-written"));
  StatusOr<Device> device = devices_.Create(id, size, params.usage);
  if (device.status().code() == Code::kAlreadyExists) {
    // A device of this ID without a ready record is a leftover of ours: replace it.
    EPHEMERA_RETURN_IF_ERROR(devices_.Delete(id, /*erase=*/true));
    device = devices_.Create(id, size, params.usage);
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

Status VolumeManager::SetFsType(const std::string& id, const std::string& fs_type) {
  StatusOr<VolumeRecord> record = GetVolume(id);
  if (!record.ok()) return record.status();
  if (record->fs_type == fs_type) return Status::Ok();
  record->fs_type = fs_type;
  return store_.Put(*record);
}

}  // namespace ephemera::csi
