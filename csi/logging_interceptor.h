// A gRPC server interceptor that logs every CSI call (method, code, duration, error message; never
// request contents, which may hold secrets) and records its latency in Metrics.
//
// Thread safety: one interceptor object per call, created by the factory from any thread.
#pragma once

#include <grpcpp/support/server_interceptor.h>

#include "csi/metrics.h"

namespace ephemera::csi {

class LoggingInterceptorFactory : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  explicit LoggingInterceptorFactory(Metrics* metrics) : metrics_(metrics) {}
  grpc::experimental::Interceptor* CreateServerInterceptor(
      grpc::experimental::ServerRpcInfo* info) override;

 private:
  Metrics* metrics_;
};

}  // namespace ephemera::csi
