// ExecCommandRunner: CommandRunner on posix_spawnp, with the child's stdout and stderr captured
// through a pipe. posix_spawn (rather than fork+exec by hand) is safe in the multi-threaded gRPC
// server: the child runs no code of ours between fork and exec.
//
// Thread safety: Run() may be called from any number of threads at once.
#pragma once

#include "csi/command_runner.h"

namespace ephemera::csi {

class ExecCommandRunner : public CommandRunner {
 public:
  StatusOr<CommandResult> Run(const std::vector<std::string>& argv) override;
};

}  // namespace ephemera::csi
