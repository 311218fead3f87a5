// Volume records on disk (see state_store.h).
#include "csi/state/state_store.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>

#include "csi/system_error.h"
#include "csi/volume_id.h"

namespace ephemera::csi {

namespace {

constexpr std::string_view kSuffix = ".json";
constexpr std::string_view kTempSuffix = ".tmp";

// RESOURCE_EXHAUSTED when the state directory's filesystem is full (or the quota is spent), so
// that callers can tell that apart; INTERNAL for the rest.
Status StoreError(const std::string& what, int error) {
  if (error == ENOSPC || error == EDQUOT) {
    return Status::ResourceExhausted(ErrnoMessage(what, error) +
                                     " (the state directory's filesystem is full)");
  }
  return Status::Internal(ErrnoMessage(what, error));
}

Status WriteAll(int fd, const std::string& data, const std::string& path) {
  size_t done = 0;
  while (done < data.size()) {
    ssize_t n = write(fd, data.data() + done, data.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      return StoreError("write " + path, errno);
    }
    done += static_cast<size_t>(n);
  }
  return Status::Ok();
}

Status SyncDir(const std::string& dir) {
  int fd = open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return Status::Internal(ErrnoMessage("open " + dir));
  int rc = fsync(fd);
  close(fd);
  if (rc != 0) return Status::Internal(ErrnoMessage("fsync " + dir));
  return Status::Ok();
}

}  // namespace

std::string_view PhaseName(Phase phase) {
  switch (phase) {
    case Phase::kCreating:
      return "creating";
    case Phase::kReady:
      return "ready";
    case Phase::kDeleting:
      return "deleting";
  }
  return "unknown";
}

std::string SerializeRecord(const VolumeRecord& record) {
  nlohmann::json j = {
      {"version", 1},
      {"id", record.id},
      {"name", record.name},
      {"size", record.size},
      {"eraseAfter", record.erase_after},
      {"ephemeral", record.ephemeral},
      {"phase", std::string(PhaseName(record.phase))},
      {"fsType", record.fs_type},
      {"usage", record.usage == DeviceUsage::kFileIO ? "FileIO" : "AppDirect"},
  };
  // Only when set, so that the records of plain volumes stay as they were.
  if (!record.source.empty()) j["source"] = record.source;
  if (record.created_ns != 0) j["createdNs"] = record.created_ns;
  if (record.grow_fs) j["growFs"] = true;
  return j.dump(2) + "\n";
}

namespace {

// An integer member as int64_t: absent -> `fallback` (nullopt: an error). Another JSON type, a
// fraction or a value outside int64_t is an error: get<int64_t>() of a float such as 1e132 would be
// undefined behaviour (found by fuzz_json), and a silently truncated size would be wrong.
StatusOr<int64_t> IntegerMember(const nlohmann::json& j, const char* key,
                                std::optional<int64_t> fallback) {
  auto it = j.find(key);
  if (it == j.end()) {
    if (fallback) return *fallback;
    return Status::DataLoss(std::string("malformed record: no \"") + key + "\"");
  }
  if (!it->is_number_integer() ||
      (it->is_number_unsigned() &&
       it->get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))) {
    return Status::DataLoss(std::string("malformed record: \"") + key +
                            "\" is not an integer of 64 bits");
  }
  return it->get<int64_t>();
}

}  // namespace

StatusOr<VolumeRecord> ParseRecord(const std::string& text) {
  // nlohmann throws on malformed input; the exception stops here.
  try {
    nlohmann::json j = nlohmann::json::parse(text);
    if (!j.is_object()) return Status::DataLoss("malformed record: not a JSON object");
    StatusOr<int64_t> version = IntegerMember(j, "version", 0);
    if (!version.ok()) return version.status();
    if (*version != 1) return Status::DataLoss("unsupported record version");
    VolumeRecord record;
    record.id = j.at("id").get<std::string>();
    record.name = j.at("name").get<std::string>();
    StatusOr<int64_t> size = IntegerMember(j, "size", std::nullopt);
    if (!size.ok()) return size.status();
    record.size = *size;
    if (record.size < 0) return Status::DataLoss("malformed record: negative \"size\"");
    record.erase_after = j.at("eraseAfter").get<bool>();
    record.ephemeral = j.at("ephemeral").get<bool>();
    record.fs_type = j.value("fsType", "");
    record.source = j.value("source", "");
    StatusOr<int64_t> created_ns = IntegerMember(j, "createdNs", 0);
    if (!created_ns.ok()) return created_ns.status();
    record.created_ns = *created_ns;
    record.grow_fs = j.value("growFs", false);
    // Records written before the usage parameter existed are AppDirect.
    std::string usage = j.value("usage", "AppDirect");
    if (usage == "FileIO") {
      record.usage = DeviceUsage::kFileIO;
    } else if (usage != "AppDirect") {
      return Status::DataLoss("unknown usage \"" + usage + "\"");
    }
    std::string phase = j.at("phase").get<std::string>();
    if (phase == "creating") {
      record.phase = Phase::kCreating;
    } else if (phase == "ready") {
      record.phase = Phase::kReady;
    } else if (phase == "deleting") {
      record.phase = Phase::kDeleting;
    } else {
      return Status::DataLoss("unknown phase \"" + phase + "\"");
    }
    EPHEMERA_RETURN_IF_ERROR(ValidateVolumeId("id", record.id));
    return record;
  } catch (const std::exception& e) {
    return Status::DataLoss(std::string("malformed record: ") + e.what());
  }
}

StateStore::StateStore(std::string dir) : dir_(std::move(dir)) {}

std::string StateStore::Path(const std::string& id) const {
  return dir_ + "/" + id + std::string(kSuffix);
}

Status StateStore::Init() {
  std::error_code ec;
  std::filesystem::create_directories(dir_, ec);
  if (ec) return Status::Internal("creating " + dir_ + ": " + ec.message());
  for (const auto& entry : std::filesystem::directory_iterator(dir_, ec)) {
    if (entry.path().filename().string().ends_with(kTempSuffix)) {
      std::filesystem::remove(entry.path(), ec);
    }
  }
  if (ec) return Status::Internal("cleaning " + dir_ + ": " + ec.message());
  return Status::Ok();
}

Status StateStore::Put(const VolumeRecord& record) {
  EPHEMERA_RETURN_IF_ERROR(ValidateVolumeId("id", record.id));
  std::string path = Path(record.id);
  std::string temp = path + std::string(kTempSuffix);
  int fd = open(temp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return StoreError("create " + temp, errno);
  Status status = WriteAll(fd, SerializeRecord(record), temp);
  if (status.ok() && fsync(fd) != 0) status = StoreError("fsync " + temp, errno);
  close(fd);
  if (status.ok() && rename(temp.c_str(), path.c_str()) != 0) {
    status = Status::Internal(ErrnoMessage("rename " + temp));
  }
  if (!status.ok()) {
    unlink(temp.c_str());
    return status;
  }
  return SyncDir(dir_);
}

StatusOr<VolumeRecord> StateStore::Get(const std::string& id) const {
  EPHEMERA_RETURN_IF_ERROR(ValidateVolumeId("id", id));
  std::ifstream in(Path(id));
  if (!in) {
    if (errno == ENOENT) return Status::NotFound("volume " + id + " not found");
    return Status::Internal(ErrnoMessage("open " + Path(id)));
  }
  std::stringstream buffer;
  buffer << in.rdbuf();
  StatusOr<VolumeRecord> record = ParseRecord(buffer.str());
  if (!record.ok()) return record.status().WithContext(Path(id));
  if (record->id != id) return Status::DataLoss(Path(id) + ": holds the record of " + record->id);
  return record;
}

Status StateStore::Remove(const std::string& id) {
  EPHEMERA_RETURN_IF_ERROR(ValidateVolumeId("id", id));
  if (unlink(Path(id).c_str()) != 0) {
    if (errno == ENOENT) return Status::Ok();
    return Status::Internal(ErrnoMessage("unlink " + Path(id)));
  }
  return SyncDir(dir_);
}

StatusOr<std::vector<VolumeRecord>> StateStore::List(std::vector<std::string>* corrupt) const {
  std::vector<std::string> ids;
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(dir_, ec)) {
    std::string name = entry.path().filename().string();
    if (!name.ends_with(kSuffix)) continue;
    ids.push_back(name.substr(0, name.size() - kSuffix.size()));
  }
  if (ec) return Status::Internal("listing " + dir_ + ": " + ec.message());
  std::sort(ids.begin(), ids.end());
  std::vector<VolumeRecord> records;
  for (const std::string& id : ids) {
    StatusOr<VolumeRecord> record =
        ValidateVolumeId("id", id).ok() ? Get(id) : StatusOr<VolumeRecord>(Status::DataLoss(id));
    if (record.ok()) {
      records.push_back(*record);
    } else if (record.status().code() != Code::kNotFound && corrupt != nullptr) {
      corrupt->push_back(id + std::string(kSuffix));
    }
  }
  return records;
}

}  // namespace ephemera::csi
