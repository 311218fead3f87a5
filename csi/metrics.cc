#include "csi/metrics.h"

namespace ephemera::csi {

Metrics::Metrics()
    : total_(registry_.Gauge("ephemera_pmem_capacity_total_bytes", "Size of the storage pool.")
                 .With({})),
      available_(
          registry_
              .Gauge("ephemera_pmem_capacity_available_bytes", "Space new volumes can still get.")
              .With({})),
      max_volume_size_(
          registry_
              .Gauge("ephemera_pmem_max_volume_size_bytes", "Largest volume that would fit now.")
              .With({})),
      orphans_(
          registry_
              .Gauge("ephemera_pmem_orphaned_devices", "Devices without a record found at start.")
              .With({})),
      operations_(registry_.Histogram("ephemera_pmem_operation_duration_seconds",
                                      "Latency of CSI calls.", {"method", "code"},
                                      {kBuckets.begin(), kBuckets.end()})),
      kubelet_registered_(registry_.Gauge("ephemera_pmem_kubelet_registered",
                                          "1 while the kubelet has registered the driver.")),
      kubelet_refusals_(registry_.Counter("ephemera_pmem_kubelet_registration_refusals_total",
                                          "Registrations the kubelet refused.")) {}

void Metrics::SetCapacity(int64_t total, int64_t available, int64_t max_volume_size) {
  total_.Set(static_cast<double>(total));
  available_.Set(static_cast<double>(available));
  max_volume_size_.Set(static_cast<double>(max_volume_size));
}

void Metrics::SetOrphans(int64_t count) {
  orphans_.Set(static_cast<double>(count));
}

void Metrics::ObserveOperation(const std::string& method, const std::string& code, double seconds) {
  operations_.With({method, code}).Observe(seconds);
}

void Metrics::SetKubeletRegistered(bool registered) {
  kubelet_registered_.With({}).Set(registered ? 1 : 0);
  kubelet_refusals_.With({});  // the counter's sample exists (at 0) from the start
}

void Metrics::CountKubeletRefusal() {
  kubelet_refusals_.With({}).Inc();
}

std::string Metrics::Render() const {
  return registry_.Render();
}

}  // namespace ephemera::csi
