// The metrics registry of common/metrics.h under the names the API client and the controllers use
// (apiclient::MetricsRegistry, apiclient::CounterCell, ...).
#pragma once

#include "common/metrics.h"

namespace ephemera::apiclient {

using metrics::CounterCell;
using metrics::CounterFamily;
using metrics::DefaultLatencyBuckets;
using metrics::GaugeCell;
using metrics::GaugeFamily;
using metrics::HistogramCell;
using metrics::HistogramFamily;
using metrics::MetricsRegistry;

}  // namespace ephemera::apiclient
