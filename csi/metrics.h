// Metrics of the driver: pool capacity and per-RPC latency, in the registry and Prometheus text
// renderer of common/metrics.h (the controller-manager's).
//
// Thread safety: all methods may be called concurrently.
#pragma once

#include <array>
#include <cstdint>
#include <string>

#include "common/metrics.h"

namespace ephemera::csi {

class Metrics {
 public:
  // Histogram bucket upper bounds in seconds.
  static constexpr std::array<double, 12> kBuckets = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                                      0.1,   0.25,   0.5,   1,    2.5,   10};

  Metrics();

  void SetCapacity(int64_t total, int64_t available, int64_t max_volume_size);
  // One finished RPC: full method name ("/csi.v1.Node/NodeStageVolume"), code name ("OK").
  void ObserveOperation(const std::string& method, const std::string& code, double seconds);
  // Orphaned devices found at start (reported, not silently leaked).
  void SetOrphans(int64_t count);

  // The kubelet's answer on the registration socket (csi/kubelet_registration.h): 1 while it has
  // registered the driver. No samples while registration is off.
  void SetKubeletRegistered(bool registered);
  void CountKubeletRefusal();

  std::string Render() const;

 private:
  metrics::MetricsRegistry registry_;
  metrics::GaugeCell& total_;
  metrics::GaugeCell& available_;
  metrics::GaugeCell& max_volume_size_;
  metrics::GaugeCell& orphans_;
  metrics::HistogramFamily& operations_;
  metrics::GaugeFamily& kubelet_registered_;
  metrics::CounterFamily& kubelet_refusals_;
};

}  // namespace ephemera::csi
