// The `file` backend: each volume is a sparse file <dir>/<id>.img attached to a loop device.
//
// The pool is a configured number of bytes; a volume takes its full size from the pool whether or
// not its blocks are allocated yet, so capacity is never overcommitted by the driver (the
// directory's filesystem must still have room for the pool: Init() warns when it has not). Sizes
// are multiples of 4 MiB. Erasing overwrites the allocated extents of the file with zeros (found
// with SEEK_DATA/SEEK_HOLE) and syncs before the file is unlinked: the cost is proportional to what
// the volume wrote, not to its size, and no earlier data stays in the blocks the directory's
// filesystem hands out next.
//
// Snapshots are copies of a volume's file, <dir>/<snapshot id>.snap, made with a reflink where the
// directory's filesystem has one (FICLONE) and otherwise by copying the data extents only (holes
// stay holes). The copy is written under <snapshot id>.snap.partial and renamed when synced, so a
// copy cut short by a crash is never a snapshot (Init() removes such files). A snapshot cannot
// change, so it takes from the pool what it allocated (rounded up to 4 MiB), not its full size.
// A volume from a data source is a copy of the snapshot's or the volume's file, made the same way,
// truncated to the new volume's size.
//
// Thread safety: all methods are serialized by one mutex.
#pragma once

#include <map>
#include <mutex>
#include <string>

#include "csi/backends/device_manager.h"
#include "csi/backends/sparse_copy.h"

namespace ephemera::csi {

class FileDeviceManager : public DeviceManager {
 public:
  static constexpr int64_t kAlignment = int64_t{4} * 1024 * 1024;

  // `dir` is created if missing; `pool_size` is rounded down to 4 MiB. `erase` overwrites a
  // volume's file (EraseFile in production).
  FileDeviceManager(std::string dir, int64_t pool_size, Eraser erase);

  // Creates the directory, canonicalizes its path, detaches loop devices whose file in the
  // directory was deleted, and attaches a loop device to every volume file that has none (after a
  // reboot). Must succeed before any other call.
  Status Init();

  std::string Name() const override { return "file"; }
  int64_t Alignment() const override { return kAlignment; }
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
  std::string FilePath(const std::string& id) const;
  std::string SnapshotPath(const std::string& id) const;
  // Copies the pool's file `source` into the new file `target` of `size` bytes (>= the source's),
  // after checking that the pool holds `charge` more bytes; `reserve` of them are held in
  // copying_ until the copy ends. Called with mu_ held through `lock`; releases it for the copy
  // (the caller keeps the other calls on source and target away) and takes it again. On error the
  // target is removed.
  StatusOr<CopyMethod> CopyFile(std::unique_lock<std::mutex>& lock, const std::string& source,
                                const std::string& target, int64_t size, int64_t charge,
                                int64_t reserve);
  // Bytes new volumes can still get, rounded down to the alignment.
  StatusOr<int64_t> FreeLocked() const;
  StatusOr<Device> GetLocked(const std::string& id, bool attach);
  // The loop devices of the pool file `file`: from loops_ when the devices recorded there still
  // have it as their backing file (one sysfs read each), else from a scan of every loop device.
  StatusOr<std::vector<std::string>> LoopsLocked(const std::string& file);
  // AttachLoop, recorded in loops_.
  StatusOr<std::string> AttachLocked(const std::string& file);
  // Writes what the filesystems on `file`'s loop devices hold in memory down to the file (syncfs
  // of each mount, fsync of the device), so that a copy of it is crash-consistent.
  Status FlushLocked(const std::string& file);

  std::string dir_;
  const int64_t pool_size_;
  const Eraser erase_;
  std::mutex mu_;
  // Bytes that snapshot copies in progress (their .partial files) hold in the pool; guarded by mu_.
  int64_t copying_ = 0;
  // The loop devices of the pool's files, by file: those found at Init and those this process
  // attached since; guarded by mu_. A snapshot or clone flushes its source's devices before the
  // copy, and a scan of every loop device's sysfs entry costs about 1.5 ms per 100 devices (a node
  // with many volumes has many), more than the whole reflink snapshot's other work.
  std::map<std::string, std::vector<std::string>> loops_;
};

// Overwrites every allocated extent of the open file `fd` with zeros and syncs it.
Status ZeroAllocatedExtents(int fd);
// ZeroAllocatedExtents of the file at `path` (an Eraser; `size` is not needed). OK when the file
// does not exist.
Status EraseFile(const std::string& path, int64_t size);

}  // namespace ephemera::csi
