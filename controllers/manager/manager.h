// Runs the controller-manager: API client, metrics and health endpoint, leader election, and the
// controllers while this process leads. Returns the process exit code.
//
// SIGTERM / SIGINT stop it cleanly: workers finish, the lease is released, exit code 0. Losing the
// lease while leading exits with 1, as kube-controller-manager does, so the Deployment restarts a
// clean candidate.
#pragma once

#include "controllers/manager/options.h"

namespace ephemera::controllers {

int RunManager(const ManagerOptions& options);

}  // namespace ephemera::controllers
