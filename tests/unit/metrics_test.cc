// The metrics registry and Prometheus text renderer of common/metrics.h, shared by the
// controller-manager and the CSI driver (csi/metrics.h). promtool checks the rendered text in the
// integration tests (integration/runtime_test.cc, integration/csi/driver_test.cc).
#include "common/metrics.h"

#include <catch2/catch.hpp>

#include "csi/metrics.h"

namespace ephemera {
namespace {

using metrics::EscapeLabelValue;
using metrics::MetricsRegistry;

TEST_CASE("metrics: label values are escaped: backslash, double quote, newline",
          "[unit][metrics]") {
  CHECK(EscapeLabelValue("plain") == "plain");
  CHECK(EscapeLabelValue("a\\b") == "a\\\\b");
  CHECK(EscapeLabelValue("say \"hi\"") == "say \\\"hi\\\"");
  CHECK(EscapeLabelValue("two\nlines") == "two\\nlines");
  CHECK(EscapeLabelValue("\\\"\n") == "\\\\\\\"\\n");
  CHECK(EscapeLabelValue("tab\there") == "tab\there");  // the format escapes only those three
  CHECK(EscapeLabelValue("").empty());

  MetricsRegistry registry;
  registry.Counter("x_total", "Help with a \\ and a\nnewline.", {"path"})
      .With({"C:\\dir \"q\"\nnext"})
      .Inc(2);
  const std::string text = registry.Render();
  CHECK(text.find("# HELP x_total Help with a \\\\ and a\\nnewline.\n") != std::string::npos);
  CHECK(text.find("x_total{path=\"C:\\\\dir \\\"q\\\"\\nnext\"} 2\n") != std::string::npos);
  // Every sample is one line: the newline in the value did not break it.
  CHECK(text.find("\nnext") == std::string::npos);
}

TEST_CASE("metrics: the driver's metrics render through the shared registry", "[unit][metrics]") {
  csi::Metrics m;
  m.SetCapacity(1LL << 30, 512LL << 20, 256LL << 20);
  m.SetOrphans(2);
  m.ObserveOperation("/csi.v1.Node/NodeStageVolume", "OK", 0.003);
  m.ObserveOperation("/csi.v1.Node/NodeStageVolume", "OK", 20);
  const std::string text = m.Render();
  CHECK(text.find("# TYPE ephemera_pmem_capacity_total_bytes gauge\n") != std::string::npos);
  CHECK(text.find("ephemera_pmem_capacity_total_bytes 1073741824\n") != std::string::npos);
  CHECK(text.find("ephemera_pmem_capacity_available_bytes 536870912\n") != std::string::npos);
  CHECK(text.find("ephemera_pmem_max_volume_size_bytes 268435456\n") != std::string::npos);
  CHECK(text.find("ephemera_pmem_orphaned_devices 2\n") != std::string::npos);
  const std::string labels = "method=\"/csi.v1.Node/NodeStageVolume\",code=\"OK\"";
  CHECK(text.find("ephemera_pmem_operation_duration_seconds_bucket{" + labels +
                  ",le=\"0.0025\"} 0\n") != std::string::npos);
  CHECK(text.find("ephemera_pmem_operation_duration_seconds_bucket{" + labels +
                  ",le=\"0.005\"} 1\n") != std::string::npos);
  CHECK(text.find("ephemera_pmem_operation_duration_seconds_bucket{" + labels +
                  ",le=\"10\"} 1\n") != std::string::npos);
  CHECK(text.find("ephemera_pmem_operation_duration_seconds_bucket{" + labels +
                  ",le=\"+Inf\"} 2\n") != std::string::npos);
  CHECK(text.find("ephemera_pmem_operation_duration_seconds_count{" + labels + "} 2\n") !=
        std::string::npos);
}

}  // namespace
}  // namespace ephemera
