#include "plugin/format.h"

#include <algorithm>
#include <array>
#include <cstdio>
#include <ctime>

#include "apiclient/exec_credential.h"
#include "common/quantity.h"

namespace ephemera::plugin {

std::string FormatTable(const std::vector<std::string>& header,
                        const std::vector<std::vector<std::string>>& rows) {
  std::vector<size_t> widths(header.size(), 0);
  for (size_t c = 0; c < header.size(); ++c)
    widths[c] = header[c].size();
  for (const auto& row : rows) {
    for (size_t c = 0; c < row.size() && c < widths.size(); ++c)
      widths[c] = std::max(widths[c], row[c].size());
  }
  std::string out;
  auto emit = [&](const std::vector<std::string>& cells) {
    std::string line;
    for (size_t c = 0; c < header.size(); ++c) {
      const std::string& cell = c < cells.size() ? cells[c] : std::string();
      line += cell;
      if (c + 1 < header.size()) line += std::string(widths[c] - cell.size() + 3, ' ');
    }
    while (!line.empty() && line.back() == ' ')
      line.pop_back();
    out += line + "\n";
  };
  emit(header);
  for (const auto& row : rows)
    emit(row);
  return out;
}

std::string FormatSize(int64_t bytes) {
  if (bytes < 0) return std::to_string(bytes);
  std::string exact = FormatBinaryQuantity(bytes);
  // The digits before the suffix: "1536Mi" has 4. Up to 4 digits reads well in a table.
  const size_t digits = exact.find_first_not_of("0123456789");
  if ((digits == std::string::npos ? exact.size() : digits) <= 4) return exact;
  static constexpr std::array<const char*, 6> kUnits = {"Ki", "Mi", "Gi", "Ti", "Pi", "Ei"};
  int unit = -1;
  int64_t scale = 1;
  while (unit + 1 < static_cast<int>(kUnits.size()) && bytes / scale >= 1024) {
    scale *= 1024;
    ++unit;
  }
  if (unit < 0) return std::to_string(bytes);
  const int64_t whole = bytes / scale;
  // Tenths, rounded down, without floating point: the remainder in tenths of the unit.
  const int64_t rest = bytes % scale;
  const int64_t tenths = static_cast<int64_t>((static_cast<__int128>(rest) * 10) / scale);
  std::string out = std::to_string(whole);
  if (tenths > 0 && whole < 1000) out += "." + std::to_string(tenths);
  return out + kUnits[unit];
}

std::string FormatQuantityCell(const std::optional<std::string>& quantity,
                               const std::string& fallback) {
  if (!quantity) return fallback;
  auto bytes = ParseQuantity(*quantity);
  if (!bytes.ok()) return fallback;
  return FormatSize(*bytes);
}

std::string FormatAge(std::chrono::seconds age) {
  const int64_t s = age.count();
  if (s < -1) return "<invalid>";
  if (s < 0) return "0s";
  auto two = [](int64_t a, const char* ua, int64_t b, const char* ub) {
    std::string out = std::to_string(a) + ua;
    if (b != 0) out += std::to_string(b) + ub;
    return out;
  };
  if (s < 120) return std::to_string(s) + "s";
  const int64_t minutes = s / 60;
  if (minutes < 10) return two(minutes, "m", s % 60, "s");
  if (minutes < 180) return std::to_string(minutes) + "m";
  const int64_t hours = s / 3600;
  if (hours < 8) return two(hours, "h", minutes % 60, "m");
  if (hours < 48) return std::to_string(hours) + "h";
  if (hours < int64_t{24} * 8) return two(hours / 24, "d", hours % 24, "h");
  const int64_t days = hours / 24;
  if (days < int64_t{365} * 2) return std::to_string(days) + "d";
  const int64_t years = days / 365;
  if (years < 8) return two(years, "y", days % 365, "d");
  return std::to_string(years) + "y";
}

std::optional<std::chrono::system_clock::time_point> ParseTimestamp(const std::string& text) {
  return apiclient::ParseRfc3339(text);
}

std::string AgeCell(const std::string& timestamp, std::chrono::system_clock::time_point now) {
  auto created = ParseTimestamp(timestamp);
  if (!created) return "<unknown>";
  return FormatAge(std::chrono::duration_cast<std::chrono::seconds>(now - *created));
}

}  // namespace ephemera::plugin
