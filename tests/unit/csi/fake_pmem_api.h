// A fake PmemApi for the unit tests of the direct backend: it models a region as an address range
// with namespaces at offsets, so that fragmentation and exhaustion behave as in the kernel, and
// renames as the kernel does (disabled, renamed, enabled). A hook called around every change lets
// a test stop the "process" at any step.
//
// Thread safety: none; DirectDeviceManager serializes its calls.
#pragma once

#include <algorithm>
#include <catch2/catch.hpp>
#include <functional>
#include <map>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "csi/backends/direct_device_manager.h"
#include "csi/backends/pmem_api.h"

namespace ephemera::csi::testing {

constexpr int64_t kMiB = int64_t{1} << 20;
constexpr int64_t kGiB = int64_t{1} << 30;

// A region as an address range with namespaces at offsets; new namespaces go into the lowest free
// range that holds them. `extra_metadata` makes the "kernel" keep more than UsableSize() says.
class FakePmemApi : public PmemApi {
 public:
  struct Ns {
    PmemNamespace ns;
    int64_t offset = 0;
    std::string blockdev;  // the block device's name while the namespace is disabled
  };

  explicit FakePmemApi(int64_t region_size, int64_t align = 16 * kMiB, int ways = 1)
      : region_size_(region_size), align_(align), ways_(ways) {}

  StatusOr<std::vector<PmemRegion>> Regions() override {
    ++calls;
    PmemRegion r;
    r.name = "region0";
    r.size = region_size_;
    r.align = align_;
    r.interleave_ways = ways_;
    int64_t used = 0;
    for (const auto& [name, n] : namespaces_)
      used += n.ns.raw_size;
    r.available = region_size_ - used;
    r.max_available_extent = 0;
    for (const auto& [offset, size] : Gaps())
      r.max_available_extent = std::max(r.max_available_extent, size);
    return std::vector<PmemRegion>{r};
  }

  StatusOr<std::vector<PmemNamespace>> Namespaces() override {
    ++calls;
    std::vector<PmemNamespace> out;
    for (const auto& [name, n] : namespaces_)
      out.push_back(n.ns);
    return out;
  }

  StatusOr<PmemNamespace> CreateNamespace(const std::string& region, const std::string& alt_name,
                                          int64_t raw_size, PmemMode mode,
                                          int64_t fsdax_align) override {
    Point();
    ++calls;
    CHECK(region == "region0");
    CHECK(fsdax_align == 2 * kMiB);
    CHECK(raw_size % (align_ * ways_) == 0);
    for (const auto& [offset, size] : Gaps()) {
      if (size < raw_size) continue;
      Ns n;
      n.offset = offset;
      n.ns.name = "namespace0." + std::to_string(next_id_);
      n.ns.region = region;
      n.ns.alt_name = alt_name;
      n.ns.mode = mode;
      n.ns.raw_size = raw_size;
      n.ns.usable_size = std::max<int64_t>(UsableSize(raw_size, mode) - extra_metadata, 0);
      n.ns.blockdev = "pmem0." + std::to_string(next_id_) + (mode == PmemMode::kSector ? "s" : "");
      ++next_id_;
      namespaces_[n.ns.name] = n;
      // A new namespace holds what its range held before.
      data["/dev/" + n.ns.blockdev] = "stale";
      Point();
      return n.ns;
    }
    return Status::ResourceExhausted("no free range");
  }

  Status DestroyNamespace(const std::string& name) override {
    Point();
    ++calls;
    auto it = namespaces_.find(name);
    if (it == namespaces_.end()) return Status::Ok();
    if (busy.count("/dev/" + it->second.ns.blockdev) != 0) {
      return Status::FailedPrecondition(name + " busy");
    }
    namespaces_.erase(it);
    Point();
    return Status::Ok();
  }

  // As the kernel does it: disabled (no block device), renamed, enabled again over the same data.
  Status RenameNamespace(const std::string& name, const std::string& alt_name) override {
    Point();
    ++calls;
    ++renames;
    auto it = namespaces_.find(name);
    if (it == namespaces_.end()) return Status::NotFound(name);
    PmemNamespace& ns = it->second.ns;
    if (!ns.blockdev.empty() && busy.count("/dev/" + ns.blockdev) != 0) {
      return Status::FailedPrecondition(name + " busy");
    }
    if (!ns.blockdev.empty()) it->second.blockdev = ns.blockdev;
    ns.blockdev.clear();
    Point();
    ns.alt_name = alt_name;
    Point();
    ns.blockdev = it->second.blockdev;
    Point();
    return Status::Ok();
  }

  // A namespace that someone else made, e.g. the lvm backend's.
  void AddForeign(const std::string& alt_name, int64_t raw_size) {
    Ns n;
    n.offset = region_size_ - raw_size;
    n.ns = PmemNamespace{"namespace0.99",  "region0", alt_name,
                         PmemMode::kFsdax, raw_size,  UsableSize(raw_size, PmemMode::kFsdax),
                         "pmem0.99"};
    namespaces_[n.ns.name] = n;
  }

  size_t Count() const { return namespaces_.size(); }
  // The label names of the namespaces, sorted, a disabled one marked.
  std::vector<std::string> Names() const {
    std::vector<std::string> names;
    for (const auto& [name, n] : namespaces_)
      names.push_back(n.ns.alt_name + (n.ns.blockdev.empty() ? " (disabled)" : ""));
    std::sort(names.begin(), names.end());
    return names;
  }
  // The block device of the namespace named `alt_name` ("/dev/pmem0.N"), "" if none.
  std::string DeviceOf(const std::string& alt_name) const {
    for (const auto& [name, n] : namespaces_) {
      if (n.ns.alt_name == alt_name && !n.ns.blockdev.empty()) return "/dev/" + n.ns.blockdev;
    }
    return "";
  }

  int64_t extra_metadata = 0;
  std::set<std::string> busy;  // device paths that are mounted
  int calls = 0;
  int renames = 0;
  // What each block device holds (the part the tests look at), by path.
  std::map<std::string, std::string> data;
  // Called before and after every change of the namespaces (and between the steps of a rename):
  // a test throws from it to stop the "process" there.
  std::function<void()> crash_point;

 private:
  void Point() {
    if (crash_point) crash_point();
  }

  std::vector<std::pair<int64_t, int64_t>> Gaps() const {
    std::vector<std::pair<int64_t, int64_t>> used;
    for (const auto& [name, n] : namespaces_)
      used.emplace_back(n.offset, n.ns.raw_size);
    std::sort(used.begin(), used.end());
    std::vector<std::pair<int64_t, int64_t>> gaps;
    int64_t pos = 0;
    for (const auto& [offset, size] : used) {
      if (offset > pos) gaps.emplace_back(pos, offset - pos);
      pos = std::max(pos, offset + size);
    }
    if (region_size_ > pos) gaps.emplace_back(pos, region_size_ - pos);
    return gaps;
  }

  int64_t region_size_;
  int64_t align_;
  int ways_;
  int next_id_ = 1;
  std::map<std::string, Ns> namespaces_;
};

}  // namespace ephemera::csi::testing
