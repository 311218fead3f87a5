// The CSI Node service: stage (format and mount), publish (bind mount, or the device itself for
// raw block), unpublish, unstage, volume stats and condition, filesystem expansion, node info; and
// inline ephemeral volumes, created in NodePublishVolume and deleted in NodeUnpublishVolume.
//
// Thread safety: handlers run concurrently; work on one volume is serialized through
// VolumeManager's locks (a concurrent second call on the same volume gets ABORTED).
#pragma once

#include <string>

#include "csi/command_runner.h"
#include "csi/proto/csi.grpc.pb.h"
#include "csi/volume_manager.h"

namespace ephemera::csi {

class NodeService final : public ::csi::v1::Node::Service {
 public:
  NodeService(VolumeManager& volumes, CommandRunner& runner, std::string node_id)
      : volumes_(volumes), runner_(runner), node_id_(std::move(node_id)) {}

  grpc::Status NodeStageVolume(grpc::ServerContext* context,
                               const ::csi::v1::NodeStageVolumeRequest* request,
                               ::csi::v1::NodeStageVolumeResponse* response) override;
  grpc::Status NodeUnstageVolume(grpc::ServerContext* context,
                                 const ::csi::v1::NodeUnstageVolumeRequest* request,
                                 ::csi::v1::NodeUnstageVolumeResponse* response) override;
  grpc::Status NodePublishVolume(grpc::ServerContext* context,
                                 const ::csi::v1::NodePublishVolumeRequest* request,
                                 ::csi::v1::NodePublishVolumeResponse* response) override;
  grpc::Status NodeUnpublishVolume(grpc::ServerContext* context,
                                   const ::csi::v1::NodeUnpublishVolumeRequest* request,
                                   ::csi::v1::NodeUnpublishVolumeResponse* response) override;
  grpc::Status NodeGetVolumeStats(grpc::ServerContext* context,
                                  const ::csi::v1::NodeGetVolumeStatsRequest* request,
                                  ::csi::v1::NodeGetVolumeStatsResponse* response) override;
  grpc::Status NodeExpandVolume(grpc::ServerContext* context,
                                const ::csi::v1::NodeExpandVolumeRequest* request,
                                ::csi::v1::NodeExpandVolumeResponse* response) override;
  grpc::Status NodeGetCapabilities(grpc::ServerContext* context,
                                   const ::csi::v1::NodeGetCapabilitiesRequest* request,
                                   ::csi::v1::NodeGetCapabilitiesResponse* response) override;
  grpc::Status NodeGetInfo(grpc::ServerContext* context,
                           const ::csi::v1::NodeGetInfoRequest* request,
                           ::csi::v1::NodeGetInfoResponse* response) override;

  void FillNodeInfo(::csi::v1::NodeGetInfoResponse* response) const;

 private:
  Status DoStage(const ::csi::v1::NodeStageVolumeRequest& request);
  Status DoUnstage(const ::csi::v1::NodeUnstageVolumeRequest& request);
  Status DoPublish(const ::csi::v1::NodePublishVolumeRequest& request);
  Status DoPublishEphemeral(const ::csi::v1::NodePublishVolumeRequest& request);
  Status DoUnpublish(const ::csi::v1::NodeUnpublishVolumeRequest& request);
  Status DoStats(const ::csi::v1::NodeGetVolumeStatsRequest& request,
                 ::csi::v1::NodeGetVolumeStatsResponse* response);
  Status DoExpand(const ::csi::v1::NodeExpandVolumeRequest& request,
                  ::csi::v1::NodeExpandVolumeResponse* response);
  // Formats the device with `fs_type` unless the record says it already was; records the type.
  // e2fsck and resize2fs of an unmounted ext4 to its device's size.
  Status GrowExt4Offline(const std::string& device);
  Status EnsureFormatted(const VolumeRecord& record, const Device& device,
                         const std::string& fs_type);
  // The ready record for a request's volume ID: a volume of the controller, or an inline ephemeral
  // volume that kubelet calls by that ID.
  StatusOr<VolumeRecord> FindVolume(const std::string& request_id);

  VolumeManager& volumes_;
  CommandRunner& runner_;
  const std::string node_id_;
};

}  // namespace ephemera::csi
