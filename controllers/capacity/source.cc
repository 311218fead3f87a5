#include "controllers/capacity/source.h"

#include <grpcpp/grpcpp.h>

#include "csi/proto/csi.grpc.pb.h"

namespace ephemera::controllers {
namespace {

Status FromGrpc(const grpc::Status& s, const std::string& what) {
  if (s.ok()) return Status::Ok();
  return Status(static_cast<Code>(s.error_code()), what + ": " + s.error_message());
}

class GrpcCapacitySource : public CapacitySource {
 public:
  GrpcCapacitySource(std::shared_ptr<grpc::Channel> channel, std::chrono::milliseconds timeout)
      : identity_(::csi::v1::Identity::NewStub(channel)),
        controller_(::csi::v1::Controller::NewStub(channel)),
        timeout_(timeout) {}

  StatusOr<std::string> DriverName() override {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + timeout_);
    ::csi::v1::GetPluginInfoRequest req;
    ::csi::v1::GetPluginInfoResponse resp;
    EPHEMERA_RETURN_IF_ERROR(FromGrpc(identity_->GetPluginInfo(&ctx, req, &resp), "GetPluginInfo"));
    if (resp.name().empty() || resp.name().size() > 63) {
      return Status::InvalidArgument("GetPluginInfo: the driver reports no valid name");
    }
    return resp.name();
  }

  Status CheckGetCapacity() override {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + timeout_);
    ::csi::v1::ControllerGetCapabilitiesRequest req;
    ::csi::v1::ControllerGetCapabilitiesResponse resp;
    EPHEMERA_RETURN_IF_ERROR(FromGrpc(controller_->ControllerGetCapabilities(&ctx, req, &resp),
                                      "ControllerGetCapabilities"));
    for (const auto& cap : resp.capabilities()) {
      if (cap.has_rpc() &&
          cap.rpc().type() == ::csi::v1::ControllerServiceCapability::RPC::GET_CAPACITY) {
        return Status::Ok();
      }
    }
    return Status::FailedPrecondition(
        "the CSI driver does not offer the GET_CAPACITY controller capability: no capacity can be "
        "published");
  }

  StatusOr<CapacityResult> GetCapacity(const Segment& segment,
                                       const std::map<std::string, std::string>& params) override {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + timeout_);
    ::csi::v1::GetCapacityRequest req;
    for (const auto& [k, v] : params)
      (*req.mutable_parameters())[k] = v;
    if (!segment.empty()) {
      for (const auto& [k, v] : segment)
        (*req.mutable_accessible_topology()->mutable_segments())[k] = v;
    }
    ::csi::v1::GetCapacityResponse resp;
    EPHEMERA_RETURN_IF_ERROR(FromGrpc(controller_->GetCapacity(&ctx, req, &resp), "GetCapacity"));
    if (resp.available_capacity() < 0) {
      return Status::InvalidArgument("GetCapacity: negative available_capacity");
    }
    CapacityResult out{.available = resp.available_capacity()};
    if (resp.has_maximum_volume_size() && resp.maximum_volume_size().value() >= 0) {
      out.maximum_volume_size = resp.maximum_volume_size().value();
    }
    return out;
  }

 private:
  std::unique_ptr<::csi::v1::Identity::Stub> identity_;
  std::unique_ptr<::csi::v1::Controller::Stub> controller_;
  const std::chrono::milliseconds timeout_;
};

}  // namespace

StatusOr<std::unique_ptr<CapacitySource>> NewGrpcCapacitySource(const std::string& address,
                                                                std::chrono::milliseconds timeout) {
  std::string target;
  if (address.rfind("unix:///", 0) == 0) {
    target = address;
  } else if (!address.empty() && address[0] == '/') {
    target = "unix://" + address;
  } else {
    return Status::InvalidArgument("--csi-address must be unix:///PATH, not \"" +
                                   address.substr(0, 64) + "\"");
  }
  auto channel = grpc::CreateChannel(target, grpc::InsecureChannelCredentials());
  return std::unique_ptr<CapacitySource>(new GrpcCapacitySource(std::move(channel), timeout));
}

}  // namespace ephemera::controllers
