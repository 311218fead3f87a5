// RunChecked (see command_runner.h).
#include "csi/command_runner.h"

namespace ephemera::csi {

Status RunChecked(CommandRunner& runner, const std::vector<std::string>& argv) {
  StatusOr<CommandResult> result = runner.Run(argv);
  if (!result.ok()) return result.status();
  if (result->exit_code != 0) {
    return Status::Internal(argv[0] + " exited with " + std::to_string(result->exit_code) + ": " +
                            result->output);
  }
  return Status::Ok();
}

}  // namespace ephemera::csi
