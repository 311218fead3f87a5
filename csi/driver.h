// Driver: wires the configured backend, the state store, the VolumeManager and the gRPC services
// together, recovers the state, and runs the servers (CSI socket, optional mTLS capacity
// listener, optional HTTP metrics endpoint).
//
// Thread safety: Start(), Wait() and Shutdown() from the owning thread; Shutdown() may also be
// called from another thread while Wait() blocks.
#pragma once

#include <grpcpp/grpcpp.h>

#include <memory>

#include "common/status.h"
#include "csi/config.h"

namespace ephemera::csi {

class Driver {
 public:
  explicit Driver(Config config);
  ~Driver();

  // Validates the config, recovers the state and starts serving. Errors: INVALID_ARGUMENT for a
  // bad configuration; UNIMPLEMENTED for the backends not built yet; INTERNAL.
  Status Start();
  void Wait();
  void Shutdown();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace ephemera::csi
