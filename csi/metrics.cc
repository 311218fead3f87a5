// Prometheus text rendering (see metrics.h).
#include "csi/metrics.h"

#include <sstream>

namespace ephemera::csi {

void Metrics::SetCapacity(int64_t total, int64_t available, int64_t max_volume_size) {
  std::lock_guard<std::mutex> lock(mu_);
  total_ = total;
  available_ = available;
  max_volume_size_ = max_volume_size;
}

void Metrics::SetOrphans(int64_t count) {
  std::lock_guard<std::mutex> lock(mu_);
  orphans_ = count;
}

void Metrics::ObserveOperation(const std::string& method, const std::string& code, double seconds) {
  std::lock_guard<std::mutex> lock(mu_);
  Histogram& h = operations_[{method, code}];
  for (size_t i = 0; i < kBuckets.size(); ++i) {
    if (seconds <= kBuckets[i]) ++h.buckets[i];
  }
  ++h.count;
  h.sum += seconds;
}

std::string Metrics::Render() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::ostringstream out;
  out << "# HELP ephemera_pmem_capacity_total_bytes Size of the storage pool.\n"
      << "# TYPE ephemera_pmem_capacity_total_bytes gauge\n"
      << "ephemera_pmem_capacity_total_bytes " << total_ << "\n"
      << "# HELP ephemera_pmem_capacity_available_bytes Space new volumes can still get.\n"
      << "# TYPE ephemera_pmem_capacity_available_bytes gauge\n"
      << "ephemera_pmem_capacity_available_bytes " << available_ << "\n"
      << "# HELP ephemera_pmem_max_volume_size_bytes Largest volume that would fit now.\n"
      << "# TYPE ephemera_pmem_max_volume_size_bytes gauge\n"
      << "ephemera_pmem_max_volume_size_bytes " << max_volume_size_ << "\n"
      << "# HELP ephemera_pmem_orphaned_devices Devices without a record found at start.\n"
      << "# TYPE ephemera_pmem_orphaned_devices gauge\n"
      << "ephemera_pmem_orphaned_devices " << orphans_ << "\n"
      << "# HELP ephemera_pmem_operation_duration_seconds Latency of CSI calls.\n"
      << "# TYPE ephemera_pmem_operation_duration_seconds histogram\n";
  for (const auto& [key, h] : operations_) {
    std::string labels = "method=\"" + key.first + "\",code=\"" + key.second + "\"";
    for (size_t i = 0; i < kBuckets.size(); ++i) {
      out << "ephemera_pmem_operation_duration_seconds_bucket{" << labels << ",le=\"" << kBuckets[i]
          << "\"} " << h.buckets[i] << "\n";
    }
    out << "ephemera_pmem_operation_duration_seconds_bucket{" << labels << ",le=\"+Inf\"} "
        << h.count << "\n"
        << "ephemera_pmem_operation_duration_seconds_sum{" << labels << "} " << h.sum << "\n"
        << "ephemera_pmem_operation_duration_seconds_count{" << labels << "} " << h.count << "\n";
  }
  return out.str();
}

}  // namespace ephemera::csi
