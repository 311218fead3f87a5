// An in-memory DeviceManager for unit tests: devices are map entries, "in use" is a flag, and
// Create() can be told to die half-way (the entry exists but Create reports an error), as a
// process killed inside the backend would leave it.
//
// Thread safety: none; tests use it from one thread.
#pragma once

#include <map>
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

 private:
  int64_t Used() const {
    int64_t used = 0;
    for (const auto& [id, device] : devices_)
      used += device.size;
    return used;
  }
  const int64_t pool_;
  std::map<std::string, Device> devices_;
};

}  // namespace ephemera::csi::testing
