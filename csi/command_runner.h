// CommandRunner: the seam through which the driver runs external programs (mkfs, resize2fs,
// xfs_growfs). Arguments are an argv vector handed to the kernel as is; there is no shell, so no
// request string can be interpreted as shell syntax.
//
// Thread safety: implementations must allow concurrent Run() calls.
#pragma once

#include <string>
#include <vector>

#include "common/status.h"

namespace ephemera::csi {

struct CommandResult {
  int exit_code = 0;   // the exit status; 128+N when killed by signal N
  std::string output;  // stdout and stderr, interleaved, truncated to 64 KiB
};

class CommandRunner {
 public:
  virtual ~CommandRunner() = default;

  // Runs argv[0] (looked up in PATH when it has no '/') with argv. Returns the result whatever the
  // exit code is; errors: INVALID_ARGUMENT for an empty argv or an argument with a NUL byte,
  // INTERNAL when the program cannot be started.
  virtual StatusOr<CommandResult> Run(const std::vector<std::string>& argv) = 0;
};

// Runs argv; a non-zero exit becomes INTERNAL naming the program and carrying its output.
Status RunChecked(CommandRunner& runner, const std::vector<std::string>& argv);

}  // namespace ephemera::csi
