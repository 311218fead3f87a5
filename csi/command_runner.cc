// RunChecked and the duration helpers (see command_runner.h).
#include "csi/command_runner.h"

#include <cstdio>

#include "common/flags.h"

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
  StatusOr<std::chrono::milliseconds> d = flags::ParseDuration(text);
  if (!d.ok()) return d.status();
  if (*d <= std::chrono::milliseconds(0)) {
    return Status::InvalidArgument("a command timeout must be positive");
  }
  if (*d > std::chrono::hours(24)) {
    return Status::InvalidArgument("\"" + text.substr(0, 32) + "\" is longer than a day");
  }
  return *d;
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
