// CSI Controller service (see controller_service.h).
#include "csi/controller_service.h"

#include <algorithm>
#include <optional>

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
// ListSnapshots tokens: the same scheme under a prefix of their own, so that a volume token is
// not taken for one.
constexpr std::string_view kSnapshotTokenPrefix = "snapshots-after:";

// The ID after which a listing continues, from a starting_token: "" for none; ABORTED for a token
// that this driver did not hand out (the specification's code for an invalid token). Tokens are
// hostile input: only the prefix followed by a valid ID is accepted.
StatusOr<std::string> ParseToken(const std::string& token, std::string_view prefix) {
  if (token.empty()) return std::string();
  if (!token.starts_with(prefix) ||
      !ValidateVolumeId("starting_token", token.substr(prefix.size())).ok()) {
    return Status::Aborted("starting_token: not a token of this driver");
  }
  return token.substr(prefix.size());
}

// CreateSnapshot parameters: only those external-snapshotter adds (csi.storage.k8s.io/*).
Status ValidateSnapshotParameters(const google::protobuf::Map<std::string, std::string>& params) {
  for (const auto& [key, value] : params) {
    if (!key.starts_with(kKubernetesPrefix)) {
      return Status::InvalidArgument("parameters[\"" + key.substr(0, 128) +
                                     "\"]: unknown parameter");
    }
  }
  return Status::Ok();
}

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
  if (record.source.starts_with("snapshot:")) {
    volume->mutable_content_source()->mutable_snapshot()->set_snapshot_id(
        record.source.substr(std::string_view("snapshot:").size()));
  } else if (record.source.starts_with("volume:")) {
    volume->mutable_content_source()->mutable_volume()->set_volume_id(
        record.source.substr(std::string_view("volume:").size()));
  }
}

void ControllerService::FillSnapshot(const VolumeRecord& record, Snapshot* snapshot) const {
  snapshot->set_snapshot_id(record.id);
  snapshot->set_source_volume_id(record.source);
  snapshot->set_size_bytes(record.size);
  snapshot->mutable_creation_time()->set_seconds(record.created_ns / 1000000000);
  snapshot->mutable_creation_time()->set_nanos(
      static_cast<int32_t>(record.created_ns % 1000000000));
  snapshot->set_ready_to_use(true);  // the copy is complete when CreateSnapshot returns
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
  std::optional<VolumeManager::Source> source;
  if (request.has_volume_content_source()) {
    const VolumeContentSource& content = request.volume_content_source();
    if (!volumes_.SupportsSnapshots()) {
      return Status::InvalidArgument("volume_content_source: the " + volumes_.devices().Name() +
                                     " backend cannot create volumes from a data source");
    }
    if (content.has_snapshot()) {
      EPHEMERA_RETURN_IF_ERROR(ValidateVolumeId("volume_content_source.snapshot.snapshot_id",
                                                content.snapshot().snapshot_id()));
      source = VolumeManager::Source{SourceKind::kSnapshot, content.snapshot().snapshot_id()};
    } else if (content.has_volume()) {
      EPHEMERA_RETURN_IF_ERROR(
          ValidateVolumeId("volume_content_source.volume.volume_id", content.volume().volume_id()));
      source = VolumeManager::Source{SourceKind::kVolume, content.volume().volume_id()};
    } else {
      return Status::InvalidArgument("volume_content_source: neither a snapshot nor a volume");
    }
  }
  if (request.has_accessibility_requirements()) {
    const TopologyRequirement& req = request.accessibility_requirements();
    bool reachable = req.requisite().empty();
    for (const Topology& topology : req.requisite()) {
      if (TopologyMatchesNode(topology, node_id_)) reachable = true;
    }
    if (!reachable) {
      // The specification's code for a topology that cannot be served. A volume from a data
      // source can only be where its source is: on this node.
      return Status::ResourceExhausted(
          "accessibility_requirements.requisite: this driver can only create volumes on node " +
          node_id_ + (source ? ", where the volume_content_source is" : ""));
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
  StatusOr<VolumeRecord> record =
      source ? volumes_.CreateVolumeFrom(request.name(), required, limit, *params, *source)
             : volumes_.CreateVolume(request.name(), required, limit, *params);
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
  StatusOr<std::string> after = ParseToken(request.starting_token(), kTokenPrefix);
  if (!after.ok()) return after.status();
  StatusOr<std::vector<VolumeRecord>> records = volumes_.ListVolumes(/*include_ephemeral=*/false);
  if (!records.ok()) return records.status();
  auto it =
      std::upper_bound(records->begin(), records->end(), *after,
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

grpc::Status ControllerService::CreateSnapshot(grpc::ServerContext*,
                                               const CreateSnapshotRequest* request,
                                               CreateSnapshotResponse* response) {
  return Handle([&] { return DoCreateSnapshot(*request, response); });
}

Status ControllerService::DoCreateSnapshot(const CreateSnapshotRequest& request,
                                           CreateSnapshotResponse* response) {
  if (!volumes_.SupportsSnapshots()) {
    return Status::Unimplemented("CreateSnapshot: not offered by the " + volumes_.devices().Name() +
                                 " backend");
  }
  EPHEMERA_RETURN_IF_ERROR(ValidateVolumeName("name", request.name()));
  EPHEMERA_RETURN_IF_ERROR(ValidateVolumeId("source_volume_id", request.source_volume_id()));
  EPHEMERA_RETURN_IF_ERROR(ValidateSnapshotParameters(request.parameters()));
  StatusOr<VolumeRecord> record =
      volumes_.CreateSnapshot(request.name(), request.source_volume_id());
  if (!record.ok()) return record.status();
  FillSnapshot(*record, response->mutable_snapshot());
  return Status::Ok();
}

grpc::Status ControllerService::DeleteSnapshot(grpc::ServerContext*,
                                               const DeleteSnapshotRequest* request,
                                               DeleteSnapshotResponse*) {
  return Handle([&] {
    if (!volumes_.SupportsSnapshots()) {
      return Status::Unimplemented("DeleteSnapshot: not offered by the " +
                                   volumes_.devices().Name() + " backend");
    }
    EPHEMERA_RETURN_IF_ERROR(ValidateVolumeId("snapshot_id", request->snapshot_id()));
    return volumes_.DeleteSnapshot(request->snapshot_id());
  });
}

grpc::Status ControllerService::ListSnapshots(grpc::ServerContext*,
                                              const ListSnapshotsRequest* request,
                                              ListSnapshotsResponse* response) {
  return Handle([&] { return DoListSnapshots(*request, response); });
}

Status ControllerService::DoListSnapshots(const ListSnapshotsRequest& request,
                                          ListSnapshotsResponse* response) {
  if (!volumes_.SupportsSnapshots()) {
    return Status::Unimplemented("ListSnapshots: not offered by the " + volumes_.devices().Name() +
                                 " backend");
  }
  if (request.max_entries() < 0) {
    return Status::InvalidArgument("max_entries: must not be negative");
  }
  StatusOr<std::string> after = ParseToken(request.starting_token(), kSnapshotTokenPrefix);
  if (!after.ok()) return after.status();
  // Filters name what they look for: an ID that cannot be one of ours matches nothing (an empty
  // list, as the specification asks for an unknown ID), and never reaches a file name.
  const std::string& want_id = request.snapshot_id();
  const std::string& want_source = request.source_volume_id();
  if ((!want_id.empty() && !ValidateVolumeId("snapshot_id", want_id).ok()) ||
      (!want_source.empty() && !ValidateVolumeId("source_volume_id", want_source).ok())) {
    return Status::Ok();
  }
  StatusOr<std::vector<VolumeRecord>> records = volumes_.ListSnapshots();
  if (!records.ok()) return records.status();
  auto it =
      std::upper_bound(records->begin(), records->end(), *after,
                       [](const std::string& id, const VolumeRecord& r) { return id < r.id; });
  int count = 0;
  const VolumeRecord* last = nullptr;
  for (; it != records->end(); ++it) {
    if (!want_id.empty() && it->id != want_id) continue;
    if (!want_source.empty() && it->source != want_source) continue;
    if (request.max_entries() > 0 && count == request.max_entries()) {
      response->set_next_token(std::string(kSnapshotTokenPrefix) + last->id);
      break;
    }
    FillSnapshot(*it, response->add_entries()->mutable_snapshot());
    last = &*it;
    ++count;
  }
  return Status::Ok();
}

grpc::Status ControllerService::GetSnapshot(grpc::ServerContext*, const GetSnapshotRequest* request,
                                            GetSnapshotResponse* response) {
  return Handle([&] {
    if (!volumes_.SupportsSnapshots()) {
      return Status::Unimplemented("GetSnapshot: not offered by the " + volumes_.devices().Name() +
                                   " backend");
    }
    EPHEMERA_RETURN_IF_ERROR(ValidateVolumeId("snapshot_id", request->snapshot_id()));
    StatusOr<VolumeRecord> record = volumes_.GetSnapshot(request->snapshot_id());
    if (!record.ok()) return record.status();
    FillSnapshot(*record, response->mutable_snapshot());
    return Status::Ok();
  });
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
  // Only where the backend has them (the file backend): never a capability that then fails.
  if (volumes_.SupportsSnapshots()) {
    for (auto type : {ControllerServiceCapability::RPC::CREATE_DELETE_SNAPSHOT,
                      ControllerServiceCapability::RPC::LIST_SNAPSHOTS,
                      ControllerServiceCapability::RPC::GET_SNAPSHOT,
                      ControllerServiceCapability::RPC::CLONE_VOLUME}) {
      response->add_capabilities()->mutable_rpc()->set_type(type);
    }
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
