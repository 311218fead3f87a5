// An in-memory DeviceManager for unit tests: devices are map entries, "in use" is a flag, and
// Create() can be told to die half-way (the entry exists but Create reports an error), as a
// process killed inside the backend would leave it.
//
// Thread safety: none; tests use it from one thread.
#pragma once

#include <map>
#include <set>
#include <string>
#include <vector>

#include "csi/backends/device_manager.h"

namespace ephemera::csi::testing {

class FakeDeviceManager : public DeviceManager {
 public:
  static constexpr int64_t kAlign = int64_t{4} * 1024 * 1024;

  explicit FakeDeviceManager(int64_t pool) : pool_(pool) {}

  std::string Name() const override { return "fake"; }
  int64_t Alignment() const override { return kAlign; }

  StatusOr<Device> Create(const std::string& id, int64_t size, DeviceUsage usage) override {
    last_usage = usage;
    if (size <= 0 || size % kAlign != 0) return Status::InvalidArgument("bad size");
    if (devices_.count(id) != 0) return Status::AlreadyExists(id);
    if (Used() + size > pool_) return Status::ResourceExhausted("full");
    devices_[id] = Device{id, size, "/dev/fake-" + id, false};
    if (die_in_create) {
      die_in_create = false;
      if (!keep_on_failure) devices_.erase(id);
      return die_status;
    }
    return devices_[id];
  }

  Status Delete(const std::string& id, bool erase) override {
    auto it = devices_.find(id);
    if (it == devices_.end()) return Status::Ok();
    if (in_use.count(id) != 0) return Status::FailedPrecondition(id + " in use");
    devices_.erase(it);
    deletes.push_back({id, erase});
    return Status::Ok();
  }

  StatusOr<Device> Get(const std::string& id) override {
    auto it = devices_.find(id);
    if (it == devices_.end()) return Status::NotFound(id);
    return it->second;
  }

  StatusOr<std::vector<Device>> List() override {
    std::vector<Device> out;
    for (const auto& [id, device] : devices_)
      out.push_back(device);
    return out;
  }

  StatusOr<Capacity> GetCapacity() override {
    int64_t free = pool_ - Used();
    return Capacity{pool_, free, free};
  }

  StatusOr<Device> Expand(const std::string& id, int64_t new_size) override {
    auto it = devices_.find(id);
    if (it == devices_.end()) return Status::NotFound(id);
    if (new_size <= it->second.size) return it->second;  // never shrinks; already grown
    if (new_size - it->second.size > pool_ - Used()) return Status::ResourceExhausted("full");
    it->second.size = new_size;
    return it->second;
  }

  bool SupportsSnapshots() const override { return supports_snapshots; }

  // A snapshot takes one unit of the pool (an "allocated" copy); a dying copy leaves a partial
  // one that GetSnapshot does not see and DeleteSnapshot removes.
  StatusOr<SnapshotData> CreateSnapshot(const std::string& snapshot_id,
                                        const std::string& source_id) override {
    auto source = devices_.find(source_id);
    if (source == devices_.end()) return Status::NotFound(source_id);
    if (snapshots_.count(snapshot_id) != 0) return Status::AlreadyExists(snapshot_id);
    if (Used() + kAlign > pool_) return Status::ResourceExhausted("full");
    if (die_in_snapshot) {
      die_in_snapshot = false;
      partial_.insert(snapshot_id);
      return Status::Internal("killed inside the copy");
    }
    partial_.erase(snapshot_id);
    snapshots_[snapshot_id] = SnapshotData{snapshot_id, source->second.size, kAlign, "fake"};
    return snapshots_[snapshot_id];
  }
  Status DeleteSnapshot(const std::string& snapshot_id, bool /*erase*/) override {
    snapshots_.erase(snapshot_id);
    partial_.erase(snapshot_id);
    return Status::Ok();
  }
  StatusOr<SnapshotData> GetSnapshot(const std::string& snapshot_id) override {
    auto it = snapshots_.find(snapshot_id);
    if (it == snapshots_.end()) return Status::NotFound(snapshot_id);
    return it->second;
  }
  StatusOr<std::vector<SnapshotData>> ListSnapshots() override {
    std::vector<SnapshotData> out;
    for (const auto& [id, snapshot] : snapshots_)
      out.push_back(snapshot);
    return out;
  }
  StatusOr<Device> CreateFromSource(const std::string& id, int64_t size, DeviceUsage usage,
                                    SourceKind kind, const std::string& source_id) override {
    bool found = kind == SourceKind::kSnapshot ? snapshots_.count(source_id) != 0
                                               : devices_.count(source_id) != 0;
    if (!found) return Status::NotFound(source_id);
    copies.push_back({id, source_id});
    return Create(id, size, usage);
  }

  // Test controls and observations.
  void AddDevice(const std::string& id, int64_t size) {
    devices_[id] = Device{id, size, "/dev/fake-" + id, false};
  }
  void RemoveDevice(const std::string& id) { devices_.erase(id); }
  size_t size() const { return devices_.size(); }
  bool Has(const std::string& id) const { return devices_.count(id) != 0; }

  bool die_in_create = false;
  // What the dying Create returns, and whether it leaves the device behind.
  Status die_status = Status::Internal("killed inside Create");
  bool keep_on_failure = true;
  DeviceUsage last_usage = DeviceUsage::kAppDirect;
  std::map<std::string, bool> in_use;
  struct DeleteCall {
    std::string id;
    bool erase;
  };
  std::vector<DeleteCall> deletes;
  bool supports_snapshots = true;
  bool die_in_snapshot = false;
  std::vector<std::pair<std::string, std::string>> copies;  // (volume, source) of CreateFromSource
  size_t snapshot_count() const { return snapshots_.size() + partial_.size(); }

 private:
  int64_t Used() const {
    int64_t used = 0;
    for (const auto& [id, device] : devices_)
      used += device.size;
    return used + static_cast<int64_t>(snapshots_.size() + partial_.size()) * kAlign;
  }
  const int64_t pool_;
  std::map<std::string, Device> devices_;
  std::map<std::string, SnapshotData> snapshots_;
  std::set<std::string> partial_;
};

}  // namespace ephemera::csi::testing
