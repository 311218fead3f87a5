// Metrics of the driver in the Prometheus text format: pool capacity and per-RPC latency.
//
// Thread safety: all methods may be called concurrently.
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <utility>

namespace ephemera::csi {

class Metrics {
 public:
  // Histogram bucket upper bounds in seconds.
  static constexpr std::array<double, 12> kBuckets = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                                      0.1,   0.25,   0.5,   1,    2.5,   10};

  void SetCapacity(int64_t total, int64_t available, int64_t max_volume_size);
  // One finished RPC: full method name ("/csi.v1.Node/NodeStageVolume"), code name ("OK").
  void ObserveOperation(const std::string& method, const std::string& code, double seconds);
  // Orphaned devices found at start (reported, not silently leaked).
  void SetOrphans(int64_t count);

  std::string Render() const;

 private:
  struct Histogram {
    std::array<uint64_t, kBuckets.size()> buckets{};
    uint64_t count = 0;
    double sum = 0;
  };
  mutable std::mutex mu_;
  int64_t total_ = 0, available_ = 0, max_volume_size_ = 0, orphans_ = 0;
  std::map<std::pair<std::string, std::string>, Histogram> operations_;
};

}  // namespace ephemera::csi
