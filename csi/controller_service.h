// The CSI Controller service: create, delete and list volumes and report capacity, for the
// volumes of this node (the driver runs per node, beside an external-provisioner started with
// --node-deployment). Expansion is the Node service's: ControllerExpandVolume is UNIMPLEMENTED.
// Snapshots and volumes from a data source where the backend has them (the file backend); with
// the others their capabilities are not offered and the calls answer UNIMPLEMENTED.
//
// Thread safety: handlers run concurrently; VolumeManager serializes work per volume.
#pragma once

#include <string>

#include "csi/metrics.h"
#include "csi/proto/csi.grpc.pb.h"
#include "csi/volume_manager.h"

namespace ephemera::csi {

class ControllerService final : public ::csi::v1::Controller::Service {
 public:
  ControllerService(VolumeManager& volumes, std::string node_id, Metrics* metrics)
      : volumes_(volumes), node_id_(std::move(node_id)), metrics_(metrics) {}

  grpc::Status CreateVolume(grpc::ServerContext* context,
                            const ::csi::v1::CreateVolumeRequest* request,
                            ::csi::v1::CreateVolumeResponse* response) override;
  grpc::Status DeleteVolume(grpc::ServerContext* context,
                            const ::csi::v1::DeleteVolumeRequest* request,
                            ::csi::v1::DeleteVolumeResponse* response) override;
  grpc::Status ValidateVolumeCapabilities(
      grpc::ServerContext* context, const ::csi::v1::ValidateVolumeCapabilitiesRequest* request,
      ::csi::v1::ValidateVolumeCapabilitiesResponse* response) override;
  grpc::Status ListVolumes(grpc::ServerContext* context,
                           const ::csi::v1::ListVolumesRequest* request,
                           ::csi::v1::ListVolumesResponse* response) override;
  grpc::Status GetCapacity(grpc::ServerContext* context,
                           const ::csi::v1::GetCapacityRequest* request,
                           ::csi::v1::GetCapacityResponse* response) override;
  grpc::Status ControllerGetCapabilities(
      grpc::ServerContext* context, const ::csi::v1::ControllerGetCapabilitiesRequest* request,
      ::csi::v1::ControllerGetCapabilitiesResponse* response) override;
  grpc::Status CreateSnapshot(grpc::ServerContext* context,
                              const ::csi::v1::CreateSnapshotRequest* request,
                              ::csi::v1::CreateSnapshotResponse* response) override;
  grpc::Status DeleteSnapshot(grpc::ServerContext* context,
                              const ::csi::v1::DeleteSnapshotRequest* request,
                              ::csi::v1::DeleteSnapshotResponse* response) override;
  grpc::Status ListSnapshots(grpc::ServerContext* context,
                             const ::csi::v1::ListSnapshotsRequest* request,
                             ::csi::v1::ListSnapshotsResponse* response) override;
  grpc::Status GetSnapshot(grpc::ServerContext* context,
                           const ::csi::v1::GetSnapshotRequest* request,
                           ::csi::v1::GetSnapshotResponse* response) override;
  grpc::Status ControllerExpandVolume(grpc::ServerContext* context,
                                      const ::csi::v1::ControllerExpandVolumeRequest* request,
                                      ::csi::v1::ControllerExpandVolumeResponse* response) override;

  // The handlers' bodies, usable by other services (the capacity listener) and tests.
  Status DoGetCapacity(const ::csi::v1::GetCapacityRequest& request,
                       ::csi::v1::GetCapacityResponse* response);

 private:
  Status DoCreateVolume(const ::csi::v1::CreateVolumeRequest& request,
                        ::csi::v1::CreateVolumeResponse* response);
  Status DoValidateVolumeCapabilities(const ::csi::v1::ValidateVolumeCapabilitiesRequest& request,
                                      ::csi::v1::ValidateVolumeCapabilitiesResponse* response);
  Status DoListVolumes(const ::csi::v1::ListVolumesRequest& request,
                       ::csi::v1::ListVolumesResponse* response);
  Status DoCreateSnapshot(const ::csi::v1::CreateSnapshotRequest& request,
                          ::csi::v1::CreateSnapshotResponse* response);
  Status DoListSnapshots(const ::csi::v1::ListSnapshotsRequest& request,
                         ::csi::v1::ListSnapshotsResponse* response);
  void FillVolume(const VolumeRecord& record, ::csi::v1::Volume* volume) const;
  void FillSnapshot(const VolumeRecord& record, ::csi::v1::Snapshot* snapshot) const;

  VolumeManager& volumes_;
  const std::string node_id_;
  Metrics* metrics_;
};

}  // namespace ephemera::csi
