// CSI Identity service (see identity_service.h).
#include "csi/identity_service.h"

#include "csi/request_validation.h"

namespace ephemera::csi {

using namespace ::csi::v1;  // NOLINT(google-build-using-namespace): the generated messages

grpc::Status IdentityService::GetPluginInfo(grpc::ServerContext*, const GetPluginInfoRequest*,
                                            GetPluginInfoResponse* response) {
  response->set_name(std::string(kDriverName));
  response->set_vendor_version(EPHEMERA_VERSION);
  return grpc::Status::OK;
}

grpc::Status IdentityService::GetPluginCapabilities(grpc::ServerContext*,
                                                    const GetPluginCapabilitiesRequest*,
                                                    GetPluginCapabilitiesResponse* response) {
  response->add_capabilities()->mutable_service()->set_type(
      PluginCapability::Service::CONTROLLER_SERVICE);
  response->add_capabilities()->mutable_service()->set_type(
      PluginCapability::Service::VOLUME_ACCESSIBILITY_CONSTRAINTS);
  // Online: NodeExpandVolume grows the device and the filesystem while the volume is mounted.
  if (volume_expansion_) {
    response->add_capabilities()->mutable_volume_expansion()->set_type(
        PluginCapability::VolumeExpansion::ONLINE);
  }
  return grpc::Status::OK;
}

grpc::Status IdentityService::Probe(grpc::ServerContext*, const ProbeRequest*,
                                    ProbeResponse* response) {
  // The driver serves only after recovery finished, so it is ready whenever it answers.
  response->mutable_ready()->set_value(true);
  return grpc::Status::OK;
}

}  // namespace ephemera::csi
