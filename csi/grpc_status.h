// The one place where ephemera::Status becomes grpc::Status, and the exception barrier of the gRPC
// handlers.
//
// Thread safety: pure functions.
#pragma once

#include <grpcpp/grpcpp.h>

#include <exception>
#include <string>

#include "common/status.h"

namespace ephemera::csi {

// Same code (Status uses gRPC's numbering), same message.
grpc::Status ToGrpcStatus(const Status& status);

// Runs a handler body that returns a Status and turns any exception escaping it into INTERNAL, so
// that no exception reaches gRPC's threads.
template <typename Body>
grpc::Status Handle(Body&& body) {
  try {
    return ToGrpcStatus(body());
  } catch (const std::exception& e) {
    return ToGrpcStatus(Status::Internal(std::string("unexpected exception: ") + e.what()));
  } catch (...) {
    return ToGrpcStatus(Status::Internal("unexpected exception"));
  }
}

}  // namespace ephemera::csi
