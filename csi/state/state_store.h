// StateStore: the driver's durable record of its volumes, one JSON file per volume. Snapshots have
// the same kind of records in a store of their own (<state-dir>/snapshots).
//
// A record is written before its device is created and removed only after the device is gone, so
// that after a crash at any point every device has a record (or is reported as an orphan) and
// every record tells what the interrupted operation was (its phase). Writes are atomic: a temp
// file is written and fsynced, renamed over the record, and the directory is fsynced.
//
// Thread safety: methods may be called concurrently for different IDs; callers serialize
// operations on the same ID.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/status.h"
#include "csi/backends/device_manager.h"

namespace ephemera::csi {

enum class Phase {
  kCreating,  // the device may or may not exist yet
  kReady,     // the device exists
  kDeleting,  // the device may or may not exist any more
};

std::string_view PhaseName(Phase phase);

struct VolumeRecord {
  std::string id;
  std::string name;  // the CSI name (for ephemeral volumes: kubelet's volume ID)
  int64_t size = 0;  // bytes
  bool erase_after = true;
  bool ephemeral = false;
  DeviceUsage usage = DeviceUsage::kAppDirect;
  Phase phase = Phase::kCreating;
  std::string fs_type;  // set once the volume was formatted, "" before
  // A volume made from a data source: "snapshot:<id>" or "volume:<id>"; a snapshot: the ID of the
  // volume it was taken of. "" otherwise.
  std::string source;
  // A snapshot: when it was taken, nanoseconds since the Unix epoch.
  int64_t created_ns = 0;
  // A volume copied from a smaller source whose filesystem still has the source's size: the node
  // grows the filesystem to the device at its next stage, then clears this.
  bool grow_fs = false;
  friend bool operator==(const VolumeRecord&, const VolumeRecord&) = default;
};

class StateStore {
 public:
  explicit StateStore(std::string dir);

  // Creates the directory and removes temp files of interrupted writes.
  Status Init();

  // Writes the record atomically (see above). Errors: INTERNAL.
  Status Put(const VolumeRecord& record);

  // Errors: NOT_FOUND; DATA_LOSS for a record that cannot be parsed; INTERNAL.
  StatusOr<VolumeRecord> Get(const std::string& id) const;

  // Removes the record; OK when there is none. Errors: INTERNAL.
  Status Remove(const std::string& id);

  // Every readable record, sorted by ID; unreadable ones are skipped and their file names appended
  // to `corrupt` when it is given.
  StatusOr<std::vector<VolumeRecord>> List(std::vector<std::string>* corrupt = nullptr) const;

  const std::string& dir() const { return dir_; }

 private:
  std::string Path(const std::string& id) const;
  std::string dir_;
};

// JSON (de)serialization, exposed for tests.
std::string SerializeRecord(const VolumeRecord& record);
StatusOr<VolumeRecord> ParseRecord(const std::string& text);

}  // namespace ephemera::csi
