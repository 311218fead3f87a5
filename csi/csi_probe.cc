// Liveness probe through the CSI socket (see csi_probe.h).
#include "csi/csi_probe.h"

#include <grpcpp/grpcpp.h>

#include "csi/proto/csi.grpc.pb.h"

namespace ephemera::csi {

Status ProbeCsiSocket(const std::string& socket_path, std::chrono::milliseconds timeout) {
  grpc::ChannelArguments args;
  // A connection of its own: a channel shared with earlier probes could still be connected to a
  // socket whose file is gone, and nobody else could reach the driver then.
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  auto channel =
      grpc::CreateCustomChannel("unix:" + socket_path, grpc::InsecureChannelCredentials(), args);
  auto identity = ::csi::v1::Identity::NewStub(channel);
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + timeout);
  ::csi::v1::ProbeRequest request;
  ::csi::v1::ProbeResponse response;
  const grpc::Status status = identity->Probe(&context, request, &response);
  if (!status.ok()) {
    return Status::Unavailable("Probe on the CSI socket " + socket_path + ": " +
                               status.error_message());
  }
  if (response.has_ready() && !response.ready().value()) {
    return Status::Unavailable("Probe on the CSI socket " + socket_path + ": not ready");
  }
  return Status::Ok();
}

}  // namespace ephemera::csi
