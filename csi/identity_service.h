// The CSI Identity service: plugin name and version, capabilities, readiness.
//
// Thread safety: immutable; handlers run concurrently.
#pragma once

#include "csi/proto/csi.grpc.pb.h"

namespace ephemera::csi {

class IdentityService final : public ::csi::v1::Identity::Service {
 public:
  // `volume_expansion`: whether the backend can grow volumes (VolumeExpansion ONLINE is offered).
  explicit IdentityService(bool volume_expansion) : volume_expansion_(volume_expansion) {}

  grpc::Status GetPluginInfo(grpc::ServerContext* context,
                             const ::csi::v1::GetPluginInfoRequest* request,
                             ::csi::v1::GetPluginInfoResponse* response) override;
  grpc::Status GetPluginCapabilities(grpc::ServerContext* context,
                                     const ::csi::v1::GetPluginCapabilitiesRequest* request,
                                     ::csi::v1::GetPluginCapabilitiesResponse* response) override;
  grpc::Status Probe(grpc::ServerContext* context, const ::csi::v1::ProbeRequest* request,
                     ::csi::v1::ProbeResponse* response) override;

 private:
  const bool volume_expansion_;
};

}  // namespace ephemera::csi
