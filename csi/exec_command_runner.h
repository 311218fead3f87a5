// ExecCommandRunner: CommandRunner on posix_spawnp, with the child's stdout and stderr captured
// through a pipe. posix_spawn (rather than fork+exec by hand) is safe in the multi-threaded gRPC
// server: the child runs no code of ours between fork and exec.
//
// Each command inherits only stdin (/dev/null), stdout and stderr (the pipe): no other descriptor
// of the driver, whether or not it was opened with O_CLOEXEC. Each command starts in a process
// group of its own, with no signal blocked or ignored (the driver blocks SIGTERM in its threads;
// that must not reach the commands). When the time limit passes, the whole group gets SIGTERM, and
// SIGKILL once the command has exited or `kill_grace` has passed; a helper that outlives the
// command and holds the output pipe therefore cannot keep Run() waiting. After a further
// `kill_grace` Run() returns even if the command has not died (a process stuck in the kernel, state
// D, ignores SIGKILL until it leaves it): a detached thread reaps it later, so no zombie is left.
//
// A command that exits on its own is done: if something it started in the background still holds
// the pipe, Run() reads for up to `kill_grace` more, then returns the exit status and leaves that
// process alone.
//
// Thread safety: Run() may be called from any number of threads at once.
#pragma once

#include <chrono>
#include <optional>

#include "csi/command_runner.h"

namespace ephemera::csi {

class ExecCommandRunner : public CommandRunner {
 public:
  struct Options {
    // When set, the time limit of every command, whatever Run() is given (--command-timeout).
    std::optional<std::chrono::milliseconds> timeout_override;
    // Between SIGTERM and SIGKILL, and how long to wait for a killed command.
    std::chrono::milliseconds kill_grace = std::chrono::seconds(5);
  };

  ExecCommandRunner() = default;
  explicit ExecCommandRunner(Options options) : options_(options) {}

  StatusOr<CommandResult> Run(const std::vector<std::string>& argv,
                              std::chrono::milliseconds timeout) override;

 private:
  Options options_;
};

}  // namespace ephemera::csi
