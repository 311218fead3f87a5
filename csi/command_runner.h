// CommandRunner: the seam through which the driver runs external programs (LVM and ndctl commands,
// mkfs, resize2fs, xfs_growfs). Arguments are an argv vector handed to the kernel as is; there is
// no shell, so no request string can be interpreted as shell syntax.
//
// Every command has a time limit, given with each call: the callers pass the default of their kind
// of command (below). A runner may replace it with one limit for all commands (ExecCommandRunner
// does when the driver's --command-timeout is set).
//
// Thread safety: implementations must allow concurrent Run() calls.
#pragma once

#include <chrono>
#include <string>
#include <vector>

#include "common/status.h"

namespace ephemera::csi {

// LVM and ndctl commands: each takes well under a second unless something is stuck (a suspended
// device-mapper table, a hung device, a lock held by another process).
inline constexpr std::chrono::milliseconds kDeviceCommandTimeout = std::chrono::minutes(2);
// mkfs.ext4, mkfs.xfs, resize2fs, xfs_growfs: their time grows with the volume (mkfs.ext4 zeroes
// the journal, both mkfs discard the whole device where it supports discard, growing writes the
// new group descriptors), so they get more.
inline constexpr std::chrono::milliseconds kFilesystemCommandTimeout = std::chrono::minutes(10);

struct CommandResult {
  int exit_code = 0;   // the exit status; 128+N when killed by signal N
  std::string output;  // stdout and stderr, interleaved, truncated to 64 KiB
};

class CommandRunner {
 public:
  virtual ~CommandRunner() = default;

  // Runs argv[0] (looked up in PATH when it has no '/') with argv, for at most `timeout` (a runner
  // may override it, see above). Returns the result whatever the exit code is; errors:
  // INVALID_ARGUMENT for an empty argv, an argument with a NUL byte or a timeout that is not
  // positive; INTERNAL when the program cannot be started; DEADLINE_EXCEEDED when it ran out of
  // time and was killed, naming the program and carrying its output so far.
  virtual StatusOr<CommandResult> Run(const std::vector<std::string>& argv,
                                      std::chrono::milliseconds timeout) = 0;
};

// Runs argv; a non-zero exit becomes INTERNAL naming the program and carrying its output.
Status RunChecked(CommandRunner& runner, const std::vector<std::string>& argv,
                  std::chrono::milliseconds timeout);

// "2m", "1h", "30s", "1m30s" as milliseconds: how the driver's --command-timeout is written. Whole
// numbers of hours, minutes, seconds and milliseconds; positive, at most a day.
StatusOr<std::chrono::milliseconds> ParseCommandTimeout(const std::string& text);

// "2m0s", "1.25s", "350ms": a duration for messages.
std::string FormatDuration(std::chrono::milliseconds duration);

}  // namespace ephemera::csi
