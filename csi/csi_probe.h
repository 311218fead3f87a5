// ProbeCsiSocket: the liveness check of the driver's /healthz, the job the livenessprobe sidecar
// does elsewhere: a new connection through the CSI socket file, as the kubelet and the sidecars
// make them, and Identity.Probe on it.
//
// Thread safety: a function; may be called from any thread.
#pragma once

#include <chrono>
#include <string>

#include "common/status.h"

namespace ephemera::csi {

// OK when Probe over a fresh connection to the Unix socket `socket_path` answers ready within
// `timeout`. UNAVAILABLE (with the gRPC error) when it cannot connect, fails or says not ready.
Status ProbeCsiSocket(const std::string& socket_path, std::chrono::milliseconds timeout);

}  // namespace ephemera::csi
