// Logging: leveled, structured log lines in klog's text format or as JSON (--logging-format).
//
//   log::Info("created PVC", {{"pod", key}, {"pvc", name}});
//   if (log::V(4)) log::Info("watch event", {{"type", type}});
//   log::Error("create failed", status, {{"pod", key}});
//
// Text:  I1122 04:49:30.483389   26460 controller] "created PVC" pod="ns/a" pvc="a-scratch"
// JSON:  {"ts":1763786970.483389,"v":0,"msg":"created PVC","pod":"ns/a","pvc":"a-scratch"}
//
// Values are written as given: callers pass names and reasons, never credentials; the API client
// logs no request headers or bodies.
//
// Thread safety: every function may be called from any thread; a line is written whole.
#pragma once

#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/status.h"

namespace ephemera::log {

enum class Format { kText, kJson };
using Fields = std::vector<std::pair<std::string_view, std::string>>;

// --logging-format=text|json and -v=N. INVALID_ARGUMENT for an unknown format.
Status Configure(std::string_view format, int verbosity);
void SetComponent(std::string component);  // the name after the PID in text lines
// True when messages of verbosity `level` are written.
bool V(int level);

void Info(std::string_view message, const Fields& fields = {});
void Warning(std::string_view message, const Fields& fields = {});
void Error(std::string_view message, const Status& status, const Fields& fields = {});

}  // namespace ephemera::log
