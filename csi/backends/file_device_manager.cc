// The file backend (see file_device_manager.h).
#include "csi/backends/file_device_manager.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>

#include "common/log.h"
#include "csi/backends/block_device.h"
#include "csi/backends/loop_device.h"
#include "csi/mount_util.h"
#include "csi/system_error.h"
#include "csi/volume_id.h"

namespace ephemera::csi {

namespace {

constexpr std::string_view kSuffix = ".img";
constexpr std::string_view kSnapshotSuffix = ".snap";
constexpr std::string_view kPartialSuffix = ".partial";  // after kSnapshotSuffix, while copying

int64_t RoundUpToUnit(int64_t bytes) {
  return (bytes + FileDeviceManager::kAlignment - 1) / FileDeviceManager::kAlignment *
         FileDeviceManager::kAlignment;
}

Status SyncDir(const std::string& dir) {
  int fd = open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return Status::Internal(ErrnoMessage("open " + dir));
  int rc = fsync(fd);
  int saved = errno;
  close(fd);
  if (rc != 0) {
    errno = saved;
    return Status::Internal(ErrnoMessage("fsync " + dir));
  }
  return Status::Ok();
}

}  // namespace

Status ZeroAllocatedExtents(int fd) {
  static const std::vector<char> kZeros(size_t{1024} * 1024, 0);
  off_t offset = 0;
  for (;;) {
    off_t data = lseek(fd, offset, SEEK_DATA);
    if (data < 0) {
      if (errno == ENXIO) break;  // no data after offset
      return Status::Internal(ErrnoMessage("SEEK_DATA"));
    }
    off_t hole = lseek(fd, data, SEEK_HOLE);
    if (hole < 0) return Status::Internal(ErrnoMessage("SEEK_HOLE"));
    for (off_t pos = data; pos < hole;) {
      size_t chunk =
          static_cast<size_t>(std::min<off_t>(hole - pos, static_cast<off_t>(kZeros.size())));
      ssize_t n = pwrite(fd, kZeros.data(), chunk, pos);
      if (n < 0) {
        if (errno == EINTR) continue;
        return Status::Internal(ErrnoMessage("pwrite"));
      }
      pos += n;
    }
    offset = hole;
  }
  if (fdatasync(fd) != 0) return Status::Internal(ErrnoMessage("fdatasync"));
  return Status::Ok();
}

FileDeviceManager::FileDeviceManager(std::string dir, int64_t pool_size, Eraser erase)
    : dir_(std::move(dir)),
      pool_size_(pool_size - pool_size % kAlignment),
      erase_(std::move(erase)) {}

Status EraseFile(const std::string& path, int64_t /*size*/) {
  int fd = open(path.c_str(), O_RDWR | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT) return Status::Ok();
    return Status::Internal(ErrnoMessage("open " + path));
  }
  Status status = ZeroAllocatedExtents(fd);
  close(fd);
  return status;
}

std::string FileDeviceManager::FilePath(const std::string& id) const {
  return dir_ + "/" + id + std::string(kSuffix);
}

std::string FileDeviceManager::SnapshotPath(const std::string& id) const {
  return dir_ + "/" + id + std::string(kSnapshotSuffix);
}

Status FileDeviceManager::Init() {
  std::lock_guard<std::mutex> lock(mu_);
  std::error_code ec;
  std::filesystem::create_directories(dir_, ec);
  if (ec) return Status::Internal("creating " + dir_ + ": " + ec.message());
  std::filesystem::path canonical = std::filesystem::canonical(dir_, ec);
  if (ec) return Status::Internal("resolving " + dir_ + ": " + ec.message());
  dir_ = canonical.string();

  // Copies that a crash cut short: never snapshots (their records say `creating`, and recovery
  // drops them), so nothing of them is kept.
  for (const auto& entry : std::filesystem::directory_iterator(dir_, ec)) {
    std::string name = entry.path().filename().string();
    if (!name.ends_with(std::string(kSnapshotSuffix) + std::string(kPartialSuffix))) continue;
    log::Info("file backend: removing an unfinished snapshot copy", {{"file", name}});
    if (unlink(entry.path().c_str()) != 0 && errno != ENOENT) {
      return Status::Internal(ErrnoMessage("unlink " + entry.path().string()));
    }
  }
  if (ec) return Status::Internal("listing " + dir_ + ": " + ec.message());

  // Loop devices left on files that were unlinked (a crash between unlink and detach is not
  // possible, as we detach first, but a file removed by hand is): detach them when unused.
  StatusOr<std::vector<LoopInfo>> loops = ListLoopsInDir(dir_);
  if (!loops.ok()) return loops.status();
  for (const LoopInfo& loop : *loops) {
    if (!loop.deleted) {
      loops_[loop.file].push_back(loop.device);
      continue;
    }
    StatusOr<bool> in_use = LoopInUse(loop.device);
    if (in_use.ok() && !*in_use) {
      log::Info("file backend: detaching the loop device of a deleted file",
                {{"device", loop.device}, {"file", loop.file}});
      EPHEMERA_RETURN_IF_ERROR(DetachLoop(loop.device));
    } else {
      log::Warning("file backend: the loop device of a deleted file is in use; left alone",
                   {{"device", loop.device}, {"file", loop.file}});
    }
  }

  struct statvfs fs {};
  if (statvfs(dir_.c_str(), &fs) == 0) {
    auto fs_size = static_cast<int64_t>(fs.f_blocks) * static_cast<int64_t>(fs.f_frsize);
    if (fs_size < pool_size_) {
      log::Warning("file backend: the pool is larger than its filesystem",
                   {{"pool", std::to_string(pool_size_)},
                    {"filesystem", std::to_string(fs_size)},
                    {"dir", dir_}});
    }
  }
  return Status::Ok();
}

StatusOr<int64_t> FileDeviceManager::FreeLocked() const {
  // Snapshot copies in progress: their reservation, both from the pool and from the filesystem.
  int64_t used = copying_;  // full sizes of the volumes: what the pool has promised
  int64_t owed = copying_;  // their blocks not allocated yet: what the filesystem still has to give
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(dir_, ec)) {
    std::string name = entry.path().filename().string();
    if (name.ends_with(kSnapshotSuffix)) {
      // A snapshot never changes: it takes what it allocated, and owes the filesystem nothing.
      struct stat st {};
      if (stat(entry.path().c_str(), &st) != 0) continue;
      used += RoundUpToUnit(static_cast<int64_t>(st.st_blocks) * 512);
      continue;
    }
    if (!name.ends_with(kSuffix)) continue;
    struct stat st {};
    if (stat(entry.path().c_str(), &st) != 0) continue;
    // A partially created file counts with its rounded-up size.
    int64_t size = (st.st_size + kAlignment - 1) / kAlignment * kAlignment;
    used += size;
    owed += std::max<int64_t>(0, size - static_cast<int64_t>(st.st_blocks) * 512);
  }
  if (ec) return Status::Internal("listing " + dir_ + ": " + ec.message());
  struct statvfs fs {};
  if (statvfs(dir_.c_str(), &fs) != 0) return Status::Internal(ErrnoMessage("statvfs " + dir_));
  int64_t fs_free = static_cast<int64_t>(fs.f_bavail) * static_cast<int64_t>(fs.f_frsize) - owed;
  // Honest about both limits: the configured pool, and the directory's filesystem, which must
  // still hold every block the sparse files may write.
  int64_t free = std::max<int64_t>(0, std::min(pool_size_ - used, fs_free));
  return free - free % kAlignment;
}

StatusOr<Device> FileDeviceManager::Create(const std::string& id, int64_t size,
                                           DeviceUsage /*usage*/) {
  if (size <= 0 || size % kAlignment != 0) {
    return Status::InvalidArgument("size " + std::to_string(size) +
                                   " is not a positive multiple of 4 MiB");
  }
  EPHEMERA_RETURN_IF_ERROR(ValidateVolumeId("id", id));
  std::lock_guard<std::mutex> lock(mu_);
  StatusOr<int64_t> free = FreeLocked();
  if (!free.ok()) return free.status();
  if (size > *free) {
    return Status::ResourceExhausted("volume of " + std::to_string(size) +
                                     " bytes does not fit: " + std::to_string(*free) +
                                     " bytes free (pool " + std::to_string(pool_size_) + ")");
  }
  std::string path = FilePath(id);
  int fd = open(path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) {
    if (errno == EEXIST) return Status::AlreadyExists("device " + id + " exists");
    return Status::Internal(ErrnoMessage("create " + path));
  }
  Status status;
  if (ftruncate(fd, size) != 0) {
    status = Status::Internal(ErrnoMessage("truncate " + path));
  } else if (fsync(fd) != 0) {
    status = Status::Internal(ErrnoMessage("fsync " + path));
  }
  close(fd);
  if (status.ok()) status = SyncDir(dir_);
  StatusOr<std::string> loop = status.ok() ? AttachLocked(path) : StatusOr<std::string>(status);
  if (!loop.ok()) {
    unlink(path.c_str());
    return loop.status();
  }
  return Device{id, size, *loop, DeviceSupportsDax(*loop)};
}

Status FileDeviceManager::Delete(const std::string& id, bool erase) {
  EPHEMERA_RETURN_IF_ERROR(ValidateVolumeId("id", id));
  std::string path = FilePath(id);
  {
    std::lock_guard<std::mutex> lock(mu_);
    // Every loop device of the file, also one that somebody else attached: a scan, not loops_.
    StatusOr<std::vector<std::string>> loops = FindLoopsForFile(path);
    if (!loops.ok()) return loops.status();
    for (const std::string& loop : *loops) {
      StatusOr<bool> in_use = LoopInUse(loop);
      if (!in_use.ok()) return in_use.status();
      if (*in_use) {
        std::string message = "device " + id;
        message.append(" (").append(loop).append(") is in use");
        return Status::FailedPrecondition(message);
      }
    }
    for (const std::string& loop : *loops)
      EPHEMERA_RETURN_IF_ERROR(DetachLoop(loop));
    loops_.erase(path);
  }
  // Without the lock: the file has no loop device now, and the caller keeps the other calls on
  // this volume away, so only the erase touches it.
  if (erase) EPHEMERA_RETURN_IF_ERROR(erase_(path, 0));
  std::lock_guard<std::mutex> lock(mu_);
  if (unlink(path.c_str()) != 0 && errno != ENOENT) {
    return Status::Internal(ErrnoMessage("unlink " + path));
  }
  return SyncDir(dir_);
}

StatusOr<std::vector<std::string>> FileDeviceManager::LoopsLocked(const std::string& file) {
  if (auto known = loops_.find(file); known != loops_.end()) {
    std::vector<std::string> confirmed;
    for (const std::string& device : known->second) {
      std::string backing = LoopBackingFile(device);
      if (backing == file || backing == file + " (deleted)") confirmed.push_back(device);
    }
    if (!confirmed.empty()) {
      known->second = confirmed;
      return confirmed;
    }
    loops_.erase(known);  // detached behind our back: look again
  }
  StatusOr<std::vector<std::string>> found = FindLoopsForFile(file);
  if (found.ok() && !found->empty()) loops_[file] = *found;
  return found;
}

StatusOr<std::string> FileDeviceManager::AttachLocked(const std::string& file) {
  StatusOr<std::string> loop = AttachLoop(file);
  if (loop.ok()) loops_[file].push_back(*loop);
  return loop;
}

Status FileDeviceManager::FlushLocked(const std::string& file) {
  StatusOr<std::vector<std::string>> loops = LoopsLocked(file);
  if (!loops.ok()) return loops.status();
  for (const std::string& loop : *loops)
    EPHEMERA_RETURN_IF_ERROR(FlushBlockDevice(loop));
  return Status::Ok();
}

StatusOr<Device> FileDeviceManager::GetLocked(const std::string& id, bool attach) {
  std::string path = FilePath(id);
  struct stat st {};
  if (stat(path.c_str(), &st) != 0) {
    if (errno == ENOENT) return Status::NotFound("device " + id + " not found");
    return Status::Internal(ErrnoMessage("stat " + path));
  }
  Device device{id, st.st_size, "", false};
  StatusOr<std::vector<std::string>> loops = LoopsLocked(path);
  if (!loops.ok()) return loops.status();
  if (!loops->empty()) {
    device.path = loops->front();
  } else if (attach) {
    StatusOr<std::string> loop = AttachLocked(path);
    if (!loop.ok()) return loop.status();
    device.path = *loop;
  }
  if (!device.path.empty()) device.supports_dax = DeviceSupportsDax(device.path);
  return device;
}

StatusOr<Device> FileDeviceManager::Get(const std::string& id) {
  EPHEMERA_RETURN_IF_ERROR(ValidateVolumeId("id", id));
  std::lock_guard<std::mutex> lock(mu_);
  // A file without a loop device (after a reboot) gets one here.
  return GetLocked(id, /*attach=*/true);
}

StatusOr<std::vector<Device>> FileDeviceManager::List() {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<Device> devices;
  std::error_code ec;
  std::vector<std::string> ids;
  for (const auto& entry : std::filesystem::directory_iterator(dir_, ec)) {
    std::string name = entry.path().filename().string();
    if (!name.ends_with(kSuffix)) continue;
    std::string id = name.substr(0, name.size() - kSuffix.size());
    if (!ValidateVolumeId("id", id).ok()) continue;
    ids.push_back(id);
  }
  if (ec) return Status::Internal("listing " + dir_ + ": " + ec.message());
  std::sort(ids.begin(), ids.end());
  for (const std::string& id : ids) {
    StatusOr<Device> device = GetLocked(id, /*attach=*/false);
    if (device.ok()) devices.push_back(*device);
  }
  return devices;
}

StatusOr<Capacity> FileDeviceManager::GetCapacity() {
  std::lock_guard<std::mutex> lock(mu_);
  StatusOr<int64_t> free = FreeLocked();
  if (!free.ok()) return free.status();
  Capacity capacity;
  capacity.total = pool_size_;
  capacity.available = *free;
  capacity.max_volume_size = *free;
  return capacity;
}

StatusOr<Device> FileDeviceManager::Expand(const std::string& id, int64_t new_size) {
  EPHEMERA_RETURN_IF_ERROR(ValidateVolumeId("id", id));
  if (new_size <= 0 || new_size % kAlignment != 0) {
    return Status::InvalidArgument("size " + std::to_string(new_size) +
                                   " is not a positive multiple of 4 MiB");
  }
  std::lock_guard<std::mutex> lock(mu_);
  StatusOr<Device> device = GetLocked(id, /*attach=*/true);
  if (!device.ok()) return device.status();
  if (new_size <= device->size) {
    // Never shrinks. Already grown: a crash may have come between the truncate and the loop
    // device's refresh, so the loop device learns the file's size here too.
    StatusOr<int64_t> seen = BlockDeviceSize(device->path);
    if (!seen.ok()) return seen.status();
    if (*seen < device->size) EPHEMERA_RETURN_IF_ERROR(RefreshLoopCapacity(device->path));
    return device;
  }
  StatusOr<int64_t> free = FreeLocked();
  if (!free.ok()) return free.status();
  if (new_size - device->size > *free) {
    return Status::ResourceExhausted(
        "growing " + id + " by " + std::to_string(new_size - device->size) +
        " bytes does not fit: " + std::to_string(*free) + " bytes free");
  }
  std::string path = FilePath(id);
  if (truncate(path.c_str(), new_size) != 0)
    return Status::Internal(ErrnoMessage("truncate " + path));
  EPHEMERA_RETURN_IF_ERROR(RefreshLoopCapacity(device->path));
  device->size = new_size;
  return device;
}

StatusOr<CopyMethod> FileDeviceManager::CopyFile(std::unique_lock<std::mutex>& lock,
                                                 const std::string& source,
                                                 const std::string& target, int64_t size,
                                                 int64_t charge, int64_t reserve) {
  int src = open(source.c_str(), O_RDONLY | O_CLOEXEC);
  if (src < 0) {
    if (errno == ENOENT) return Status::NotFound("source " + source + " not found");
    return Status::Internal(ErrnoMessage("open " + source));
  }
  struct stat st {};
  if (fstat(src, &st) != 0) {
    int saved = errno;
    close(src);
    return Status::Internal(ErrnoMessage("stat " + source, saved));
  }
  if (st.st_size > size) {
    close(src);
    return Status::OutOfRange("the source holds " + std::to_string(st.st_size) +
                              " bytes, more than the " + std::to_string(size) + " asked");
  }
  StatusOr<int64_t> free = FreeLocked();
  if (!free.ok() || charge > *free) {
    close(src);
    if (!free.ok()) return free.status();
    return Status::ResourceExhausted("a copy of " + std::to_string(charge) +
                                     " bytes does not fit: " + std::to_string(*free) +
                                     " bytes free (pool " + std::to_string(pool_size_) + ")");
  }
  int dst = open(target.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (dst < 0) {
    int saved = errno;
    close(src);
    if (saved == EEXIST) return Status::AlreadyExists(target + " exists");
    return Status::Internal(ErrnoMessage("create " + target, saved));
  }
  // The full size at once, under the lock: from here on the pool counts the new file (a volume)
  // or the reservation (a snapshot, whose partial file the pool does not count).
  StatusOr<CopyMethod> method = CopyMethod::kCopyFileRange;
  if (ftruncate(dst, size) != 0) method = Status::Internal(ErrnoMessage("truncate " + target));
  if (method.ok()) {
    copying_ += reserve;
    lock.unlock();
    method = CopySparse(src, dst, st.st_size, size);
    lock.lock();
    copying_ -= reserve;
  }
  close(src);
  close(dst);
  if (!method.ok()) unlink(target.c_str());
  return method;
}

StatusOr<SnapshotData> FileDeviceManager::CreateSnapshot(const std::string& snapshot_id,
                                                         const std::string& source_id) {
  EPHEMERA_RETURN_IF_ERROR(ValidateVolumeId("snapshot id", snapshot_id));
  EPHEMERA_RETURN_IF_ERROR(ValidateVolumeId("source id", source_id));
  std::string source = FilePath(source_id);
  std::string path = SnapshotPath(snapshot_id);
  std::string partial = path + std::string(kPartialSuffix);
  std::unique_lock<std::mutex> lock(mu_);
  struct stat st {};
  if (stat(source.c_str(), &st) != 0) {
    if (errno == ENOENT) return Status::NotFound("device " + source_id + " not found");
    return Status::Internal(ErrnoMessage("stat " + source));
  }
  if (access(path.c_str(), F_OK) == 0) {
    return Status::AlreadyExists("snapshot " + snapshot_id + " exists");
  }
  // A copy that an earlier attempt left (the caller holds the snapshot's lock: nobody writes it).
  if (unlink(partial.c_str()) != 0 && errno != ENOENT) {
    return Status::Internal(ErrnoMessage("unlink " + partial));
  }
  EPHEMERA_RETURN_IF_ERROR(FlushLocked(source));
  // The copy allocates at most what the source has allocated.
  int64_t charge = RoundUpToUnit(static_cast<int64_t>(st.st_blocks) * 512);
  StatusOr<CopyMethod> method = CopyFile(lock, source, partial, st.st_size, charge, charge);
  if (!method.ok()) return method.status();
  if (rename(partial.c_str(), path.c_str()) != 0) {
    int saved = errno;
    unlink(partial.c_str());
    return Status::Internal(ErrnoMessage("rename " + partial, saved));
  }
  EPHEMERA_RETURN_IF_ERROR(SyncDir(dir_));
  if (stat(path.c_str(), &st) != 0) return Status::Internal(ErrnoMessage("stat " + path));
  return SnapshotData{snapshot_id, st.st_size,
                      RoundUpToUnit(static_cast<int64_t>(st.st_blocks) * 512),
                      std::string(CopyMethodName(*method))};
}

Status FileDeviceManager::DeleteSnapshot(const std::string& snapshot_id, bool erase) {
  EPHEMERA_RETURN_IF_ERROR(ValidateVolumeId("snapshot id", snapshot_id));
  std::string path = SnapshotPath(snapshot_id);
  std::string partial = path + std::string(kPartialSuffix);
  // Without the lock, like a volume's erase: the caller keeps the other calls on it away.
  if (erase) {
    EPHEMERA_RETURN_IF_ERROR(erase_(partial, 0));
    EPHEMERA_RETURN_IF_ERROR(erase_(path, 0));
  }
  std::lock_guard<std::mutex> lock(mu_);
  for (const std::string& file : {partial, path}) {
    if (unlink(file.c_str()) != 0 && errno != ENOENT) {
      return Status::Internal(ErrnoMessage("unlink " + file));
    }
  }
  return SyncDir(dir_);
}

StatusOr<SnapshotData> FileDeviceManager::GetSnapshot(const std::string& snapshot_id) {
  EPHEMERA_RETURN_IF_ERROR(ValidateVolumeId("snapshot id", snapshot_id));
  std::string path = SnapshotPath(snapshot_id);
  struct stat st {};
  if (stat(path.c_str(), &st) != 0) {
    if (errno == ENOENT) return Status::NotFound("snapshot " + snapshot_id + " not found");
    return Status::Internal(ErrnoMessage("stat " + path));
  }
  return SnapshotData{snapshot_id, st.st_size,
                      RoundUpToUnit(static_cast<int64_t>(st.st_blocks) * 512), ""};
}

StatusOr<std::vector<SnapshotData>> FileDeviceManager::ListSnapshots() {
  std::vector<std::string> ids;
  std::error_code ec;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& entry : std::filesystem::directory_iterator(dir_, ec)) {
      std::string name = entry.path().filename().string();
      if (!name.ends_with(kSnapshotSuffix)) continue;
      std::string id = name.substr(0, name.size() - kSnapshotSuffix.size());
      if (ValidateVolumeId("id", id).ok()) ids.push_back(id);
    }
  }
  if (ec) return Status::Internal("listing " + dir_ + ": " + ec.message());
  std::sort(ids.begin(), ids.end());
  std::vector<SnapshotData> snapshots;
  for (const std::string& id : ids) {
    StatusOr<SnapshotData> snapshot = GetSnapshot(id);
    if (snapshot.ok()) snapshots.push_back(*snapshot);
  }
  return snapshots;
}

StatusOr<Device> FileDeviceManager::CreateFromSource(const std::string& id, int64_t size,
                                                     DeviceUsage /*usage*/, SourceKind kind,
                                                     const std::string& source_id) {
  if (size <= 0 || size % kAlignment != 0) {
    return Status::InvalidArgument("size " + std::to_string(size) +
                                   " is not a positive multiple of 4 MiB");
  }
  EPHEMERA_RETURN_IF_ERROR(ValidateVolumeId("id", id));
  EPHEMERA_RETURN_IF_ERROR(ValidateVolumeId("source id", source_id));
  std::string source =
      kind == SourceKind::kSnapshot ? SnapshotPath(source_id) : FilePath(source_id);
  std::string path = FilePath(id);
  std::unique_lock<std::mutex> lock(mu_);
  if (kind == SourceKind::kVolume) EPHEMERA_RETURN_IF_ERROR(FlushLocked(source));
  StatusOr<CopyMethod> method = CopyFile(lock, source, path, size, size, 0);
  if (!method.ok()) return method.status();
  Status synced = SyncDir(dir_);
  StatusOr<std::string> loop = synced.ok() ? AttachLocked(path) : StatusOr<std::string>(synced);
  if (!loop.ok()) {
    unlink(path.c_str());
    return loop.status();
  }
  log::Info(
      "file backend: volume copied from its source",
      {{"volume", id}, {"source", source_id}, {"method", std::string(CopyMethodName(*method))}});
  return Device{id, size, *loop, DeviceSupportsDax(*loop)};
}

}  // namespace ephemera::csi
