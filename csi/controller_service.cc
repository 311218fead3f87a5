// CSI Controller service (see controller_service.h).
#include "csi/controller_service.h"

#include <algorithm>

#include "csi/grpc_status.h"
#include "csi/parameters.h"
#include "csi/request_validation.h"
#include "csi/volume_id.h"

namespace ephemera::csi {

using namespace ::csi::v1;  // NOLINT(google-build-using-namespace): the generated messages

namespace {

// ListVolumes tokens are "after:<volume ID>": the listing continues with the first ID greater
// than that, which stays correct when volumes are added or deleted between pages.
constexpr std::string_view kTokenPrefix = "after:";

std::map<std::string, std::string> ToMap(const google::protobuf::Map<std::string, std::string>& m) {
  return {m.begin(), m.end()};
}

Status ValidateCapabilities(const google::protobuf::RepeatedPtrField<VolumeCapability>& caps) {
  if (caps.empty()) return Status::InvalidArgument("volume_capabilities: required");
  for (int i = 0; i < caps.size(); ++i) {
    EPHEMERA_RETURN_IF_ERROR(
        ValidateCapability("volume_capabilities[" + std::to_string(i) + "]", caps[i]));
  }
  return Status::Ok();
}

}  // namespace

void ControllerService::FillVolume(const VolumeRecord& record, Volume* volume) const {
  volume->set_volume_id(record.id);
  volume->set_capacity_bytes(record.size);
  (*volume->add_accessible_topology()->mutable_segments())[std::string(kTopologyKey)] = node_id_;
}

grpc::Status ControllerService::CreateVolume(grpc::ServerContext*,
                                             const CreateVolumeRequest* request,
                                             CreateVolumeResponse* response) {
  return Handle([&] { return DoCreateVolume(*request, response); });
}

Status ControllerService::DoCreateVolume(const CreateVolumeRequest& request,
                                         CreateVolumeResponse* response) {
  EPHEMERA_RETURN_IF_ERROR(ValidateVolumeName("name", request.name()));
  EPHEMERA_RETURN_IF_ERROR(ValidateCapabilities(request.volume_capabilities()));
  StatusOr<VolumeParameters> params =
      ParseVolumeParameters("parameters", ToMap(request.parameters()));
  if (!params.ok()) return params.status();
  if (request.has_volume_content_source()) {
    return Status::InvalidArgument(
        "volume_content_source: not supported (no snapshots, no clones)");
  }
  if (request.has_accessibility_requirements()) {
    const TopologyRequirement& req = request.accessibility_requirements();
    bool reachable = req.requisite().empty();
    for (const Topology& topology : req.requisite()) {
      if (TopologyMatchesNode(topology, node_id_)) reachable = true;
    }
    if (!reachable) {
      return Status::ResourceExhausted(
          "accessibility_requirements.requisite: this driver can only create volumes on node " +
          node_id_);
    }
  }
  int64_t required = request.capacity_range().required_bytes();
  int64_t limit = request.capacity_range().limit_bytes();
  for (const VolumeCapability& capability : request.volume_capabilities()) {
    if (!capability.has_mount() || required == 0) continue;
    StatusOr<std::string> fs_type =
        ParseFsType("volume_capabilities.mount.fs_type", capability.mount().fs_type());
    if (!fs_type.ok()) return fs_type.status();
    // A PVC of 256Mi on an xfs class would be created and then never formatted.
    StatusOr<int64_t> floor = RequiredBytesFor(*fs_type, required, limit, "capacity_range");
    if (!floor.ok()) return floor.status();
    required = *floor;
  }
  StatusOr<VolumeRecord> record = volumes_.CreateVolume(request.name(), required, limit, *params);
  if (!record.ok()) return record.status();
  FillVolume(*record, response->mutable_volume());
  return Status::Ok();
}

grpc::Status ControllerService::DeleteVolume(grpc::ServerContext*,
                                             const DeleteVolumeRequest* request,
                                             DeleteVolumeResponse*) {
  return Handle([&] {
    EPHEMERA_RETURN_IF_ERROR(ValidateVolumeId("volume_id", request->volume_id()));
    return volumes_.DeleteVolume(request->volume_id());
  });
}

grpc::Status ControllerService::ValidateVolumeCapabilities(
    grpc::ServerContext*, const ValidateVolumeCapabilitiesRequest* request,
    ValidateVolumeCapabilitiesResponse* response) {
  return Handle([&] { return DoValidateVolumeCapabilities(*request, response); });
}

Status ControllerService::DoValidateVolumeCapabilities(
    const ValidateVolumeCapabilitiesRequest& request,
    ValidateVolumeCapabilitiesResponse* response) {
  EPHEMERA_RETURN_IF_ERROR(ValidateVolumeId("volume_id", request.volume_id()));
  if (request.volume_capabilities().empty()) {
    return Status::InvalidArgument("volume_capabilities: required");
  }
  StatusOr<VolumeRecord> record = volumes_.GetVolume(request.volume_id());
  if (!record.ok()) return record.status();
  for (int i = 0; i < request.volume_capabilities().size(); ++i) {
    Status status = ValidateCapability("volume_capabilities[" + std::to_string(i) + "]",
                                       request.volume_capabilities(i));
    if (!status.ok()) {
      response->set_message(status.message());
      return Status::Ok();
    }
  }
  StatusOr<VolumeParameters> params =
      ParseVolumeParameters("parameters", ToMap(request.parameters()));
  if (!params.ok()) {
    response->set_message(params.status().message());
    return Status::Ok();
  }
  auto* confirmed = response->mutable_confirmed();
  *confirmed->mutable_volume_context() = request.volume_context();
  *confirmed->mutable_volume_capabilities() = request.volume_capabilities();
  *confirmed->mutable_parameters() = request.parameters();
  return Status::Ok();
}

grpc::Status ControllerService::ListVolumes(grpc::ServerContext*, const ListVolumesRequest* request,
                                            ListVolumesResponse* response) {
  return Handle([&] { return DoListVolumes(*request, response); });
}

Status ControllerService::DoListVolumes(const ListVolumesRequest& request,
                                        ListVolumesResponse* response) {
  if (request.max_entries() < 0) {
    return Status::InvalidArgument("max_entries: must not be negative");
  }
  std::string after;
  if (!request.starting_token().empty()) {
    const std::string& token = request.starting_token();
    if (!token.starts_with(kTokenPrefix) ||
        !ValidateVolumeId("starting_token", token.substr(kTokenPrefix.size())).ok()) {
      return Status::Aborted("starting_token: not a token of this driver");
    }
    after = token.substr(kTokenPrefix.size());
  }
  StatusOr<std::vector<VolumeRecord>> records = volumes_.ListVolumes(/*include_ephemeral=*/false);
  if (!records.ok()) return records.status();
  auto it =
      std::upper_bound(records->begin(), records->end(), after,
                       [](const std::string& id, const VolumeRecord& r) { return id < r.id; });
  int count = 0;
  for (; it != records->end(); ++it) {
    if (request.max_entries() > 0 && count == request.max_entries()) {
      response->set_next_token(std::string(kTokenPrefix) + (it - 1)->id);
      break;
    }
    FillVolume(*it, response->add_entries()->mutable_volume());
    ++count;
  }
  return Status::Ok();
}

grpc::Status ControllerService::GetCapacity(grpc::ServerContext*, const GetCapacityRequest* request,
                                            GetCapacityResponse* response) {
  return Handle([&] { return DoGetCapacity(*request, response); });
}

Status ControllerService::DoGetCapacity(const GetCapacityRequest& request,
                                        GetCapacityResponse* response) {
  StatusOr<VolumeParameters> params =
      ParseVolumeParameters("parameters", ToMap(request.parameters()));
  if (!params.ok()) return params.status();
  bool usable = true;
  for (int i = 0; i < request.volume_capabilities().size(); ++i) {
    if (!ValidateCapability("volume_capabilities", request.volume_capabilities(i)).ok()) {
      usable = false;  // the spec asks for 0 when the capabilities cannot be provided
    }
  }
  if (request.has_accessible_topology() &&
      !TopologyMatchesNode(request.accessible_topology(), node_id_)) {
    usable = false;
  }
  StatusOr<Capacity> capacity = volumes_.GetCapacity();
  if (!capacity.ok()) return capacity.status();
  if (metrics_ != nullptr) {
    metrics_->SetCapacity(capacity->total, capacity->available, capacity->max_volume_size);
  }
  response->set_available_capacity(usable ? capacity->available : 0);
  response->mutable_maximum_volume_size()->set_value(usable ? capacity->max_volume_size : 0);
  // A limit_bytes below one allocation unit cannot be met (OUT_OF_RANGE).
  response->mutable_minimum_volume_size()->set_value(volumes_.devices().Alignment());
  return Status::Ok();
}

grpc::Status ControllerService::ControllerGetCapabilities(
    grpc::ServerContext*, const ControllerGetCapabilitiesRequest*,
    ControllerGetCapabilitiesResponse* response) {
  // No EXPAND_VOLUME: a volume grows on its node, in NodeExpandVolume (docs/csi-driver.md, "Volume
  // expansion"). csi-resizer then marks the PV as grown and leaves the work to kubelet.
  for (auto type : {ControllerServiceCapability::RPC::CREATE_DELETE_VOLUME,
                    ControllerServiceCapability::RPC::GET_CAPACITY,
                    ControllerServiceCapability::RPC::LIST_VOLUMES}) {
    response->add_capabilities()->mutable_rpc()->set_type(type);
  }
  return grpc::Status::OK;
}

grpc::Status ControllerService::ControllerExpandVolume(grpc::ServerContext*,
                                                       const ControllerExpandVolumeRequest*,
                                                       ControllerExpandVolumeResponse*) {
  return ToGrpcStatus(Status::Unimplemented(
      "ControllerExpandVolume: volumes grow on their node, through NodeExpandVolume"));
}

}  // namespace ephemera::csi
