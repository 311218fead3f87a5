// Metrics: counters, gauges and histograms with labels, rendered in the Prometheus text format
// (version 0.0.4) for /metrics. One registry and one renderer for both programs: the
// controller-manager (its runtime, controllers and API client) and the CSI driver (csi/metrics.h).
// Label values and help texts are escaped as the format wants (EscapeLabelValue).
//
// Usage: keep a reference to a family from the registry, and a cell per label combination:
//   auto& creates = registry.Counter("ephemeral_volume_controller_create_total", "PVCs created");
//   creates.With({}).Inc();
//   auto& latency = registry.Histogram("rest_client_request_duration_seconds", "...",
//                                      {"verb", "code"}, DefaultLatencyBuckets());
//   latency.With({"GET", "200"}).Observe(0.004);
//
// Thread safety: everything is safe for concurrent use; Inc/Set/Observe are lock-free once a cell
// exists.
#pragma once

#include <atomic>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace ephemera::metrics {

std::vector<double> DefaultLatencyBuckets();  // 1 ms .. 60 s

class CounterCell {
 public:
  void Inc(double v = 1) { value_.fetch_add(v, std::memory_order_relaxed); }
  double Value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<double> value_{0};
};

class GaugeCell {
 public:
  void Set(double v) { value_.store(v, std::memory_order_relaxed); }
  void Inc(double v = 1) { value_.fetch_add(v, std::memory_order_relaxed); }
  void Dec(double v = 1) { value_.fetch_sub(v, std::memory_order_relaxed); }
  double Value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<double> value_{0};
};

class HistogramCell {
 public:
  explicit HistogramCell(const std::vector<double>& bounds);
  void Observe(double v);
  // Cumulative counts per bound, then +Inf.
  std::vector<uint64_t> Cumulative() const;
  double Sum() const { return sum_.load(std::memory_order_relaxed); }
  uint64_t Count() const { return count_.load(std::memory_order_relaxed); }
  // The smallest bucket bound below which a fraction q of the observations fall (for reports).
  double Quantile(double q) const;

 private:
  const std::vector<double>& bounds_;
  std::unique_ptr<std::atomic<uint64_t>[]> buckets_;  // one per bound, plus +Inf
  std::atomic<double> sum_{0};
  std::atomic<uint64_t> count_{0};
};

enum class MetricType { kCounter, kGauge, kHistogram };

// A metric name with its cells, one per combination of label values.
template <typename Cell>
class Family {
 public:
  Family(std::string name, std::string help, std::vector<std::string> labels, MetricType type,
         std::vector<double> bounds = {})
      : name_(std::move(name)),
        help_(std::move(help)),
        labels_(std::move(labels)),
        type_(type),
        bounds_(std::move(bounds)) {}

  // The cell for these label values (as many as the family has labels). Missing values are "".
  Cell& With(const std::vector<std::string>& values);
  // Removes a cell, e.g. a segment that no longer exists.
  void Remove(const std::vector<std::string>& values);
  void Render(std::string* out) const;
  const std::string& name() const { return name_; }

 private:
  std::vector<std::string> Normalize(const std::vector<std::string>& values) const;

  const std::string name_;
  const std::string help_;
  const std::vector<std::string> labels_;
  const MetricType type_;
  const std::vector<double> bounds_;
  mutable std::mutex mu_;
  std::map<std::vector<std::string>, std::unique_ptr<Cell>> cells_;  // GUARDED_BY(mu_)
};

using CounterFamily = Family<CounterCell>;
using GaugeFamily = Family<GaugeCell>;
using HistogramFamily = Family<HistogramCell>;

class MetricsRegistry {
 public:
  // Registering a name twice returns the first family (its help and labels win).
  CounterFamily& Counter(const std::string& name, const std::string& help,
                         std::vector<std::string> labels = {});
  GaugeFamily& Gauge(const std::string& name, const std::string& help,
                     std::vector<std::string> labels = {});
  HistogramFamily& Histogram(const std::string& name, const std::string& help,
                             std::vector<std::string> labels = {},
                             std::vector<double> bounds = DefaultLatencyBuckets());
  // The whole registry in the Prometheus text format, families sorted by name.
  std::string Render() const;

 private:
  mutable std::mutex mu_;
  std::map<std::string, std::unique_ptr<CounterFamily>> counters_;      // GUARDED_BY(mu_)
  std::map<std::string, std::unique_ptr<GaugeFamily>> gauges_;          // GUARDED_BY(mu_)
  std::map<std::string, std::unique_ptr<HistogramFamily>> histograms_;  // GUARDED_BY(mu_)
};

// Escapes a label value for the text format: backslash, double quote and newline.
std::string EscapeLabelValue(const std::string& value);

}  // namespace ephemera::metrics
