#include "controllers/capacity/source.h"

#include <grpcpp/grpcpp.h>

#include <fstream>
#include <iterator>

#include "csi/proto/csi.grpc.pb.h"

namespace ephemera::controllers {
namespace {

Status FromGrpc(const grpc::Status& s, const std::string& what) {
  if (s.ok()) return Status::Ok();
  return Status(static_cast<Code>(s.error_code()), what + ": " + s.error_message());
}

class GrpcCapacitySource : public CapacitySource {
 public:
  // `capacity_listener`: the driver's read-only --capacity-listen, which serves GetCapacity but not
  // ControllerGetCapabilities; there UNIMPLEMENTED for the capabilities means "only GetCapacity".
  GrpcCapacitySource(const std::shared_ptr<grpc::Channel>& channel,
                     std::chrono::milliseconds timeout, bool capacity_listener = false)
      : identity_(::csi::v1::Identity::NewStub(channel)),
        controller_(::csi::v1::Controller::NewStub(channel)),
        timeout_(timeout),
        capacity_listener_(capacity_listener) {}

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
    const grpc::Status called = controller_->ControllerGetCapabilities(&ctx, req, &resp);
    if (capacity_listener_ && called.error_code() == grpc::StatusCode::UNIMPLEMENTED) {
      return Status::Ok();
    }
    EPHEMERA_RETURN_IF_ERROR(FromGrpc(called, "ControllerGetCapabilities"));
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
                                       const std::map<std::string, std::string>& params,
                                       const std::vector<std::string>& /*nodes*/) override {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + timeout_);
    ::csi::v1::GetCapacityResponse resp;
    return Answer(controller_->GetCapacity(&ctx, Request(segment, params), &resp), resp);
  }

  Cancel GetCapacityAsync(const Segment& segment, const std::map<std::string, std::string>& params,
                          const std::vector<std::string>& /*nodes*/,
                          CapacityCallback done) override {
    // The call's state lives until gRPC has run (and dropped) the completion callback.
    struct Call {
      grpc::ClientContext ctx;
      ::csi::v1::GetCapacityRequest req;
      ::csi::v1::GetCapacityResponse resp;
      CapacityCallback done;
    };
    auto call = std::make_shared<Call>();
    call->ctx.set_deadline(std::chrono::system_clock::now() + timeout_);
    call->req = Request(segment, params);
    call->done = std::move(done);
    controller_->async()->GetCapacity(&call->ctx, &call->req, &call->resp,
                                      [call](const grpc::Status& status) {
                                        CapacityCallback done = std::move(call->done);
                                        done(Answer(status, call->resp));
                                      });
    std::weak_ptr<Call> weak = call;
    return [weak] {
      if (auto c = weak.lock()) c->ctx.TryCancel();
    };
  }

 private:
  static ::csi::v1::GetCapacityRequest Request(const Segment& segment,
                                               const std::map<std::string, std::string>& params) {
    ::csi::v1::GetCapacityRequest req;
    for (const auto& [k, v] : params)
      (*req.mutable_parameters())[k] = v;
    if (!segment.empty()) {
      for (const auto& [k, v] : segment)
        (*req.mutable_accessible_topology()->mutable_segments())[k] = v;
    }
    return req;
  }

  static StatusOr<CapacityResult> Answer(const grpc::Status& status,
                                         const ::csi::v1::GetCapacityResponse& resp) {
    EPHEMERA_RETURN_IF_ERROR(FromGrpc(status, "GetCapacity"));
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
  const bool capacity_listener_;
};

class PerNodeCapacitySource : public CapacitySource {
 public:
  explicit PerNodeCapacitySource(std::map<std::string, std::shared_ptr<CapacitySource>> by_node)
      : by_node_(std::move(by_node)) {}

  StatusOr<std::string> DriverName() override {
    Status last = Status::NotFound("no --csi-node-endpoint");
    for (const auto& [node, source] : by_node_) {
      auto name = source->DriverName();
      if (name.ok()) return name;
      last = name.status().WithContext("node " + node);
    }
    return last;
  }

  Status CheckGetCapacity() override {
    Status last = Status::NotFound("no --csi-node-endpoint");
    for (const auto& [node, source] : by_node_) {
      last = source->CheckGetCapacity();
      if (last.ok() || last.code() == Code::kFailedPrecondition) return last;
      last = last.WithContext("node " + node);
    }
    return last;
  }

  StatusOr<CapacityResult> GetCapacity(const Segment& segment,
                                       const std::map<std::string, std::string>& params,
                                       const std::vector<std::string>& nodes) override {
    for (const auto& node : nodes) {
      auto it = by_node_.find(node);
      if (it == by_node_.end()) continue;
      auto result = it->second->GetCapacity(segment, params, {node});
      if (!result.ok()) return result.status().WithContext("node " + node);
      return result;
    }
    return Status::NotFound("no --csi-node-endpoint for any node of the segment");
  }

  Cancel GetCapacityAsync(const Segment& segment, const std::map<std::string, std::string>& params,
                          const std::vector<std::string>& nodes, CapacityCallback done) override {
    for (const auto& node : nodes) {
      auto it = by_node_.find(node);
      if (it == by_node_.end()) continue;
      return it->second->GetCapacityAsync(
          segment, params, {node}, [node, done = std::move(done)](StatusOr<CapacityResult> result) {
            if (!result.ok()) result = result.status().WithContext("node " + node);
            done(std::move(result));
          });
    }
    done(Status::NotFound("no --csi-node-endpoint for any node of the segment"));
    return {};
  }

  std::string NodeFor(const std::vector<std::string>& nodes) const override {
    for (const auto& node : nodes)
      if (by_node_.count(node) > 0) return node;
    return "";
  }

 private:
  const std::map<std::string, std::shared_ptr<CapacitySource>> by_node_;
};

std::string ReadPem(const std::string& path, Status* error) {
  std::ifstream in(path);
  if (!in) {
    *error = Status::InvalidArgument("cannot read " + path);
    return {};
  }
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

}  // namespace

StatusOr<std::unique_ptr<CapacitySource>> NewTlsCapacitySource(const std::string& address,
                                                               const TlsFiles& tls,
                                                               std::chrono::milliseconds timeout) {
  if (tls.ca.empty() || tls.cert.empty() || tls.key.empty()) {
    return Status::InvalidArgument(
        "a per-node endpoint needs --capacity-tls-ca, --capacity-tls-cert and --capacity-tls-key");
  }
  if (address.empty() || address.find(':') == std::string::npos ||
      address.find('/') != std::string::npos) {
    return Status::InvalidArgument("endpoint must be HOST:PORT, not \"" + address.substr(0, 64) +
                                   "\"");
  }
  Status error;
  grpc::SslCredentialsOptions options;
  options.pem_root_certs = ReadPem(tls.ca, &error);
  options.pem_cert_chain = ReadPem(tls.cert, &error);
  options.pem_private_key = ReadPem(tls.key, &error);
  if (!error.ok()) return error;
  grpc::ChannelArguments args;
  if (!tls.server_name.empty()) args.SetSslTargetNameOverride(tls.server_name);
  auto channel = grpc::CreateCustomChannel(address, grpc::SslCredentials(options), args);
  return std::unique_ptr<CapacitySource>(
      new GrpcCapacitySource(channel, timeout, /*capacity_listener=*/true));
}

std::unique_ptr<CapacitySource> NewPerNodeCapacitySource(
    std::map<std::string, std::shared_ptr<CapacitySource>> by_node) {
  return std::make_unique<PerNodeCapacitySource>(std::move(by_node));
}

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
  return std::unique_ptr<CapacitySource>(new GrpcCapacitySource(channel, timeout));
}

}  // namespace ephemera::controllers
