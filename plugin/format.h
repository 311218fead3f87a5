// Text output of kubectl-ephemera: aligned tables as kubectl prints them, sizes and ages.
//
// Thread safety: pure functions.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace ephemera::plugin {

// Columns separated by three spaces, each as wide as its widest cell, headers in capitals as
// given; no trailing spaces. Rows shorter than the header are padded with empty cells.
std::string FormatTable(const std::vector<std::string>& header,
                        const std::vector<std::vector<std::string>>& rows);

// A byte count for a table cell: the exact binary quantity when it is short ("10Gi", "1536Mi",
// "512"), otherwise rounded down to one decimal in the largest binary unit that is at least one
// ("9.9Gi"), so that a capacity is never shown larger than it is. Negative values print as is.
std::string FormatSize(int64_t bytes);

// A byte count from an API quantity string, or `fallback` when it is absent or not a quantity.
std::string FormatQuantityCell(const std::optional<std::string>& quantity,
                               const std::string& fallback = "<unset>");

// The age of an object as kubectl prints it: "45s", "5m30s", "42m", "3h20m", "10h", "2d4h",
// "30d", "2y10d", "9y". Negative ages (clock skew) print as "0s", beyond a second as "<invalid>".
std::string FormatAge(std::chrono::seconds age);

// RFC 3339 "2026-11-22T07:09:09Z" (what the API server writes) to a time point: apiclient's
// parser, shared with the exec credential plugins.
std::optional<std::chrono::system_clock::time_point> ParseTimestamp(const std::string& text);

// The AGE cell of an object created at `timestamp` ("<unknown>" when it does not parse).
std::string AgeCell(const std::string& timestamp, std::chrono::system_clock::time_point now);

}  // namespace ephemera::plugin
