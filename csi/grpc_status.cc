// Status -> grpc::Status (see grpc_status.h).
#include "csi/grpc_status.h"

namespace ephemera::csi {

grpc::Status ToGrpcStatus(const Status& status) {
  if (status.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(static_cast<int>(status.code())),
                      status.message());
}

}  // namespace ephemera::csi
