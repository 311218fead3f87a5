// Helpers of the driver's integration tests: a gRPC call with a deadline, and a volume created,
// staged and published as kubelet leaves it for a pod.
//
// Thread safety: as DriverFixture's stubs.
#pragma once

#include <catch2/catch.hpp>
#include <chrono>
#include <string>

#include "driver_fixture.h"

namespace ephemera::csi::testing {

inline grpc::Status Call(auto method, const auto& request, auto* response) {
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(120));
  return method(&context, request, response);
}

#define CALL(stub, Method, request, response)                                                      \
  Call([&](grpc::ClientContext* c, const auto& rq, auto* rs) { return (stub).Method(c, rq, rs); }, \
       request, response)

// A volume staged and published as kubelet leaves it for a pod; Remove() takes it all down.
struct Published {
  // `source`: a volume_content_source for the CreateVolume.
  Published(DriverFixture& driver, const std::string& name, const std::string& fs_type,
            int64_t size, const ::csi::v1::VolumeContentSource* source = nullptr)
      : driver(driver),
        staging(driver.work() + "/staging-" + name),
        target(driver.work() + "/target-" + name) {
    ::csi::v1::CreateVolumeRequest create;
    create.set_name(name);
    create.mutable_capacity_range()->set_required_bytes(size);
    *create.add_volume_capabilities() = MountCapability(fs_type);
    if (source != nullptr) *create.mutable_volume_content_source() = *source;
    ::csi::v1::CreateVolumeResponse created;
    grpc::Status status = CALL(driver.controller(), CreateVolume, create, &created);
    REQUIRE(status.error_message() == "");
    volume = created.volume();
    ::csi::v1::NodeStageVolumeRequest stage;
    stage.set_volume_id(volume.volume_id());
    stage.set_staging_target_path(staging);
    *stage.mutable_volume_capability() = MountCapability(fs_type);
    ::csi::v1::NodeStageVolumeResponse staged;
    status = CALL(driver.node(), NodeStageVolume, stage, &staged);
    REQUIRE(status.error_message() == "");
    ::csi::v1::NodePublishVolumeRequest publish;
    publish.set_volume_id(volume.volume_id());
    publish.set_staging_target_path(staging);
    publish.set_target_path(target);
    *publish.mutable_volume_capability() = MountCapability(fs_type);
    ::csi::v1::NodePublishVolumeResponse published;
    REQUIRE(CALL(driver.node(), NodePublishVolume, publish, &published).ok());
  }

  void Remove() {
    ::csi::v1::NodeUnpublishVolumeRequest unpublish;
    unpublish.set_volume_id(volume.volume_id());
    unpublish.set_target_path(target);
    ::csi::v1::NodeUnpublishVolumeResponse unpublished;
    REQUIRE(CALL(driver.node(), NodeUnpublishVolume, unpublish, &unpublished).ok());
    ::csi::v1::NodeUnstageVolumeRequest unstage;
    unstage.set_volume_id(volume.volume_id());
    unstage.set_staging_target_path(staging);
    ::csi::v1::NodeUnstageVolumeResponse unstaged;
    REQUIRE(CALL(driver.node(), NodeUnstageVolume, unstage, &unstaged).ok());
    ::csi::v1::DeleteVolumeRequest del;
    del.set_volume_id(volume.volume_id());
    ::csi::v1::DeleteVolumeResponse deleted;
    REQUIRE(CALL(driver.controller(), DeleteVolume, del, &deleted).ok());
  }

  DriverFixture& driver;
  ::csi::v1::Volume volume;
  const std::string staging;
  const std::string target;
};

}  // namespace ephemera::csi::testing
