#include "common/metrics.h"

#include <cmath>
#include <cstdio>

namespace ephemera::metrics {
namespace {

std::string FormatValue(double v) {
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  if (std::isnan(v)) return "NaN";
  if (v == std::floor(v) && std::fabs(v) < 1e15) {
    char buf[32];
    std::snprintf(buf, sizeof(buf), "%.0f", v);
    return buf;
  }
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.9g", v);
  return buf;
}

std::string LabelText(const std::vector<std::string>& names, const std::vector<std::string>& values,
                      const std::string& extra_name = "", const std::string& extra_value = "") {
  std::string out;
  for (size_t i = 0; i < names.size(); ++i) {
    out += out.empty() ? "{" : ",";
    out += names[i] + "=\"" + EscapeLabelValue(values[i]) + "\"";
  }
  if (!extra_name.empty()) {
    out += out.empty() ? "{" : ",";
    out += extra_name + "=\"" + extra_value + "\"";
  }
  if (!out.empty()) out += "}";
  return out;
}

std::string HelpText(const std::string& help) {
  std::string out;
  for (char c : help) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out;
}

const char* TypeName(MetricType type) {
  switch (type) {
    case MetricType::kCounter:
      return "counter";
    case MetricType::kGauge:
      return "gauge";
    case MetricType::kHistogram:
      return "histogram";
  }
  return "untyped";
}

template <typename Cell>
Cell* NewCell(const std::vector<double>& bounds) {
  if constexpr (std::is_same_v<Cell, HistogramCell>) {
    return new HistogramCell(bounds);
  } else {
    (void)bounds;
    return new Cell();
  }
}

}  // namespace

std::vector<double> DefaultLatencyBuckets() {
  return {0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60};
}

std::string EscapeLabelValue(const std::string& value) {
  std::string out;
  out.reserve(value.size());
  for (char c : value) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '"') {
      out += "\\\"";
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out;
}

HistogramCell::HistogramCell(const std::vector<double>& bounds)
    : bounds_(bounds), buckets_(new std::atomic<uint64_t>[bounds.size() + 1]) {
  for (size_t i = 0; i <= bounds_.size(); ++i)
    buckets_[i].store(0);
}

void HistogramCell::Observe(double v) {
  size_t i = 0;
  while (i < bounds_.size() && v > bounds_[i])
    ++i;
  buckets_[i].fetch_add(1, std::memory_order_relaxed);
  sum_.fetch_add(v, std::memory_order_relaxed);
  count_.fetch_add(1, std::memory_order_relaxed);
}

std::vector<uint64_t> HistogramCell::Cumulative() const {
  std::vector<uint64_t> out(bounds_.size() + 1);
  uint64_t total = 0;
  for (size_t i = 0; i <= bounds_.size(); ++i) {
    total += buckets_[i].load(std::memory_order_relaxed);
    out[i] = total;
  }
  return out;
}

double HistogramCell::Quantile(double q) const {
  const auto cumulative = Cumulative();
  const uint64_t total = cumulative.back();
  if (total == 0) return 0;
  for (size_t i = 0; i < bounds_.size(); ++i) {
    if (static_cast<double>(cumulative[i]) >= q * static_cast<double>(total)) return bounds_[i];
  }
  return INFINITY;
}

template <typename Cell>
std::vector<std::string> Family<Cell>::Normalize(const std::vector<std::string>& values) const {
  std::vector<std::string> out = values;
  out.resize(labels_.size());
  return out;
}

template <typename Cell>
Cell& Family<Cell>::With(const std::vector<std::string>& values) {
  auto key = Normalize(values);
  std::lock_guard<std::mutex> lock(mu_);
  auto it = cells_.find(key);
  if (it == cells_.end()) {
    it = cells_.emplace(std::move(key), std::unique_ptr<Cell>(NewCell<Cell>(bounds_))).first;
  }
  return *it->second;
}

template <typename Cell>
void Family<Cell>::Remove(const std::vector<std::string>& values) {
  std::lock_guard<std::mutex> lock(mu_);
  cells_.erase(Normalize(values));
}

template <typename Cell>
void Family<Cell>::Render(std::string* out) const {
  *out += "# HELP " + name_ + " " + HelpText(help_) + "\n";
  *out += "# TYPE " + name_ + " " + TypeName(type_) + "\n";
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& [values, cell] : cells_) {
    if constexpr (std::is_same_v<Cell, HistogramCell>) {
      const auto cumulative = cell->Cumulative();
      for (size_t i = 0; i < bounds_.size(); ++i) {
        *out += name_ + "_bucket" + LabelText(labels_, values, "le", FormatValue(bounds_[i])) +
                " " + std::to_string(cumulative[i]) + "\n";
      }
      *out += name_ + "_bucket" + LabelText(labels_, values, "le", "+Inf") + " " +
              std::to_string(cumulative.back()) + "\n";
      *out += name_ + "_sum" + LabelText(labels_, values) + " " + FormatValue(cell->Sum()) + "\n";
      *out += name_ + "_count" + LabelText(labels_, values) + " " + std::to_string(cell->Count()) +
              "\n";
    } else {
      *out += name_ + LabelText(labels_, values) + " " + FormatValue(cell->Value()) + "\n";
    }
  }
}

template class Family<CounterCell>;
template class Family<GaugeCell>;
template class Family<HistogramCell>;

CounterFamily& MetricsRegistry::Counter(const std::string& name, const std::string& help,
                                        std::vector<std::string> labels) {
  std::lock_guard<std::mutex> lock(mu_);
  auto& slot = counters_[name];
  if (!slot) {
    slot = std::make_unique<CounterFamily>(name, help, std::move(labels), MetricType::kCounter);
  }
  return *slot;
}

GaugeFamily& MetricsRegistry::Gauge(const std::string& name, const std::string& help,
                                    std::vector<std::string> labels) {
  std::lock_guard<std::mutex> lock(mu_);
  auto& slot = gauges_[name];
  if (!slot)
    slot = std::make_unique<GaugeFamily>(name, help, std::move(labels), MetricType::kGauge);
  return *slot;
}

HistogramFamily& MetricsRegistry::Histogram(const std::string& name, const std::string& help,
                                            std::vector<std::string> labels,
                                            std::vector<double> bounds) {
  std::lock_guard<std::mutex> lock(mu_);
  auto& slot = histograms_[name];
  if (!slot) {
    slot = std::make_unique<HistogramFamily>(name, help, std::move(labels), MetricType::kHistogram,
                                             std::move(bounds));
  }
  return *slot;
}

std::string MetricsRegistry::Render() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::map<std::string, std::string> rendered;
  for (const auto& [name, f] : counters_)
    f->Render(&rendered[name]);
  for (const auto& [name, f] : gauges_)
    f->Render(&rendered[name]);
  for (const auto& [name, f] : histograms_)
    f->Render(&rendered[name]);
  std::string out;
  for (const auto& [name, text] : rendered)
    out += text;
  return out;
}

}  // namespace ephemera::metrics
