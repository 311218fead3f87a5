// RunChecked and the duration helpers (see command_runner.h).
#include "csi/command_runner.h"

#include <cctype>
#include <cstdio>

namespace ephemera::csi {

Status RunChecked(CommandRunner& runner, const std::vector<std::string>& argv,
                  std::chrono::milliseconds timeout) {
  StatusOr<CommandResult> result = runner.Run(argv, timeout);
  if (!result.ok()) return result.status();
  if (result->exit_code != 0) {
    return Status::Internal(argv[0] + " exited with " + std::to_string(result->exit_code) + ": " +
                            result->output);
  }
  return Status::Ok();
}

StatusOr<std::chrono::milliseconds> ParseCommandTimeout(const std::string& text) {
  const Status bad = Status::InvalidArgument("\"" + text.substr(0, 32) +
                                             "\" is not a duration such as 2m, 90s or 1m30s");
  constexpr int64_t kMaxMs = int64_t{24} * 3600 * 1000;
  int64_t total_ms = 0;
  size_t i = 0;
  if (text.empty()) return bad;
  while (i < text.size()) {
    size_t digits = i;
    int64_t value = 0;
    while (digits < text.size() && std::isdigit(static_cast<unsigned char>(text[digits])) != 0) {
      value = value * 10 + (text[digits] - '0');
      if (value > kMaxMs) return bad;
      ++digits;
    }
    if (digits == i) return bad;
    size_t end = digits;
    while (end < text.size() && std::isalpha(static_cast<unsigned char>(text[end])) != 0)
      ++end;
    const std::string unit = text.substr(digits, end - digits);
    int64_t scale = 0;
    if (unit == "ms") {
      scale = 1;
    } else if (unit == "s") {
      scale = 1000;
    } else if (unit == "m") {
      scale = int64_t{60} * 1000;
    } else if (unit == "h") {
      scale = int64_t{3600} * 1000;
    } else {
      return bad;
    }
    total_ms += value * scale;
    if (total_ms > kMaxMs) {
      return Status::InvalidArgument("\"" + text.substr(0, 32) + "\" is longer than a day");
    }
    i = end;
  }
  if (total_ms <= 0) return Status::InvalidArgument("a command timeout must be positive");
  return std::chrono::milliseconds(total_ms);
}

std::string FormatDuration(std::chrono::milliseconds duration) {
  const int64_t ms = duration.count();
  if (ms < 1000) return std::to_string(ms) + "ms";
  const int64_t minutes = ms / 60000;
  const int64_t rest = ms % 60000;
  char seconds[32];
  if (rest % 1000 == 0) {
    std::snprintf(seconds, sizeof(seconds), "%llds", static_cast<long long>(rest / 1000));
  } else {
    std::snprintf(seconds, sizeof(seconds), "%.2fs", static_cast<double>(rest) / 1000);
  }
  return minutes > 0 ? std::to_string(minutes) + "m" + seconds : std::string(seconds);
}

}  // namespace ephemera::csi
