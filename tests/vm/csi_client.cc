// ephemera-csi-client: a minimal CSI client for the guest tests (tests/vm), where no other client
// is at hand. One call per run; prints the result on one line; exit 0 on an OK status, 1 on an
// error status (its gRPC code name is printed), 2 on a bad command line.
//   ephemera-csi-client SOCKET create NAME BYTES [KEY=VALUE...]
//                                                     -> "<volume id> <capacity bytes>"
//   ephemera-csi-client SOCKET delete ID
//   ephemera-csi-client SOCKET capacity               -> "<available> <maximum volume size>"
//   ephemera-csi-client SOCKET stage ID DIR FSTYPE    (mount volume, single node writer)
//   ephemera-csi-client SOCKET unstage ID DIR
//   ephemera-csi-client SOCKET publish ID STAGING_DIR TARGET_DIR FSTYPE
//                                                     (a staged volume, single node writer)
//   ephemera-csi-client SOCKET expand ID DIR BYTES    -> "<capacity bytes>" (NodeExpandVolume of
//                                                     a mounted volume, as the kubelet calls it)
//   ephemera-csi-client SOCKET publish-ephemeral ID DIR SIZE [KEY=VALUE...]
//                                                     (an inline ephemeral volume, ext4)
//   ephemera-csi-client SOCKET unpublish ID DIR
//   ephemera-csi-client SOCKET create-from NAME BYTES snapshot|volume SOURCE_ID [KEY=VALUE...]
//                                                     -> "<volume id> <capacity bytes> <node>"
//                                                     (a volume from a data source; BYTES 0:
//                                                     no capacity range; <node>: its topology)
//   ephemera-csi-client SOCKET snapshot NAME VOLUME_ID -> "<snapshot id> <size bytes> <ready>"
//   ephemera-csi-client SOCKET delete-snapshot ID
//   ephemera-csi-client SOCKET list-snapshots         -> "<snapshot id> <source volume id>" lines
#include <grpcpp/grpcpp.h>

#include <iostream>
#include <string>

#include "csi/proto/csi.grpc.pb.h"

namespace {

using namespace ::csi::v1;  // NOLINT(google-build-using-namespace): the generated messages

const char* CodeName(grpc::StatusCode code) {
  switch (code) {
    case grpc::StatusCode::INVALID_ARGUMENT:
      return "INVALID_ARGUMENT";
    case grpc::StatusCode::NOT_FOUND:
      return "NOT_FOUND";
    case grpc::StatusCode::ALREADY_EXISTS:
      return "ALREADY_EXISTS";
    case grpc::StatusCode::RESOURCE_EXHAUSTED:
      return "RESOURCE_EXHAUSTED";
    case grpc::StatusCode::FAILED_PRECONDITION:
      return "FAILED_PRECONDITION";
    case grpc::StatusCode::OUT_OF_RANGE:
      return "OUT_OF_RANGE";
    case grpc::StatusCode::UNIMPLEMENTED:
      return "UNIMPLEMENTED";
    case grpc::StatusCode::INTERNAL:
      return "INTERNAL";
    case grpc::StatusCode::UNAVAILABLE:
      return "UNAVAILABLE";
    default:
      return "OTHER";
  }
}

int Report(const grpc::Status& status) {
  if (status.ok()) return 0;
  std::cout << CodeName(status.error_code()) << " " << status.error_message() << "\n";
  return 1;
}

void SetMountCapability(VolumeCapability* capability, const std::string& fstype) {
  capability->mutable_mount()->set_fs_type(fstype);
  capability->mutable_access_mode()->set_mode(VolumeCapability::AccessMode::SINGLE_NODE_WRITER);
}

}  // namespace

// KEY=VALUE arguments from argv[first] on into `map`; false on a malformed one.
bool ParseKeyValues(int argc, char** argv, int first,
                    google::protobuf::Map<std::string, std::string>* map) {
  for (int i = first; i < argc; ++i) {
    std::string parameter = argv[i];
    size_t eq = parameter.find('=');
    if (eq == std::string::npos) return false;
    (*map)[parameter.substr(0, eq)] = parameter.substr(eq + 1);
  }
  return true;
}

int main(int argc, char** argv) {
  if (argc < 3) {
    std::cerr << "usage: ephemera-csi-client SOCKET "
                 "create|delete|capacity|stage|unstage|publish|publish-ephemeral|unpublish|expand|"
                 "create-from|snapshot|delete-snapshot|list-snapshots ...\n";
    return 2;
  }
  auto channel =
      grpc::CreateChannel(std::string("unix://") + argv[1], grpc::InsecureChannelCredentials());
  auto controller = Controller::NewStub(channel);
  auto node = Node::NewStub(channel);
  std::string command = argv[2];
  grpc::ClientContext context;
  if (command == "create" && argc >= 5) {
    CreateVolumeRequest request;
    if (!ParseKeyValues(argc, argv, 5, request.mutable_parameters())) return 2;
    request.set_name(argv[3]);
    request.mutable_capacity_range()->set_required_bytes(std::stoll(argv[4]));
    SetMountCapability(request.add_volume_capabilities(), "ext4");
    CreateVolumeResponse response;
    grpc::Status status = controller->CreateVolume(&context, request, &response);
    if (status.ok()) {
      std::cout << response.volume().volume_id() << " " << response.volume().capacity_bytes()
                << "\n";
    }
    return Report(status);
  }
  if (command == "delete" && argc == 4) {
    DeleteVolumeRequest request;
    request.set_volume_id(argv[3]);
    DeleteVolumeResponse response;
    return Report(controller->DeleteVolume(&context, request, &response));
  }
  if (command == "capacity" && argc == 3) {
    GetCapacityRequest request;
    GetCapacityResponse response;
    grpc::Status status = controller->GetCapacity(&context, request, &response);
    if (status.ok()) {
      std::cout << response.available_capacity() << " " << response.maximum_volume_size().value()
                << "\n";
    }
    return Report(status);
  }
  if (command == "stage" && argc == 6) {
    NodeStageVolumeRequest request;
    request.set_volume_id(argv[3]);
    request.set_staging_target_path(argv[4]);
    SetMountCapability(request.mutable_volume_capability(), argv[5]);
    NodeStageVolumeResponse response;
    return Report(node->NodeStageVolume(&context, request, &response));
  }
  if (command == "unstage" && argc == 5) {
    NodeUnstageVolumeRequest request;
    request.set_volume_id(argv[3]);
    request.set_staging_target_path(argv[4]);
    NodeUnstageVolumeResponse response;
    return Report(node->NodeUnstageVolume(&context, request, &response));
  }
  if (command == "publish" && argc == 7) {
    NodePublishVolumeRequest request;
    request.set_volume_id(argv[3]);
    request.set_staging_target_path(argv[4]);
    request.set_target_path(argv[5]);
    SetMountCapability(request.mutable_volume_capability(), argv[6]);
    NodePublishVolumeResponse response;
    return Report(node->NodePublishVolume(&context, request, &response));
  }
  if (command == "expand" && argc == 6) {
    NodeExpandVolumeRequest request;
    request.set_volume_id(argv[3]);
    request.set_volume_path(argv[4]);
    request.mutable_capacity_range()->set_required_bytes(std::stoll(argv[5]));
    NodeExpandVolumeResponse response;
    grpc::Status status = node->NodeExpandVolume(&context, request, &response);
    if (status.ok()) std::cout << response.capacity_bytes() << "\n";
    return Report(status);
  }
  if (command == "publish-ephemeral" && argc >= 6) {
    NodePublishVolumeRequest request;
    request.set_volume_id(argv[3]);
    request.set_target_path(argv[4]);
    SetMountCapability(request.mutable_volume_capability(), "ext4");
    auto* context_map = request.mutable_volume_context();
    (*context_map)["csi.storage.k8s.io/ephemeral"] = "true";
    (*context_map)["size"] = argv[5];
    if (!ParseKeyValues(argc, argv, 6, context_map)) return 2;
    NodePublishVolumeResponse response;
    return Report(node->NodePublishVolume(&context, request, &response));
  }
  if (command == "unpublish" && argc == 5) {
    NodeUnpublishVolumeRequest request;
    request.set_volume_id(argv[3]);
    request.set_target_path(argv[4]);
    NodeUnpublishVolumeResponse response;
    return Report(node->NodeUnpublishVolume(&context, request, &response));
  }
  if (command == "create-from" && argc >= 7) {
    CreateVolumeRequest request;
    if (!ParseKeyValues(argc, argv, 7, request.mutable_parameters())) return 2;
    request.set_name(argv[3]);
    if (std::stoll(argv[4]) > 0) {
      request.mutable_capacity_range()->set_required_bytes(std::stoll(argv[4]));
    }
    SetMountCapability(request.add_volume_capabilities(), "ext4");
    std::string kind = argv[5];
    if (kind == "snapshot") {
      request.mutable_volume_content_source()->mutable_snapshot()->set_snapshot_id(argv[6]);
    } else if (kind == "volume") {
      request.mutable_volume_content_source()->mutable_volume()->set_volume_id(argv[6]);
    } else {
      return 2;
    }
    CreateVolumeResponse response;
    grpc::Status status = controller->CreateVolume(&context, request, &response);
    if (status.ok()) {
      std::string node_id = "-";
      if (response.volume().accessible_topology_size() > 0) {
        for (const auto& [key, value] : response.volume().accessible_topology(0).segments())
          node_id = value;
      }
      std::cout << response.volume().volume_id() << " " << response.volume().capacity_bytes() << " "
                << node_id << "\n";
    }
    return Report(status);
  }
  if (command == "snapshot" && argc == 5) {
    CreateSnapshotRequest request;
    request.set_name(argv[3]);
    request.set_source_volume_id(argv[4]);
    CreateSnapshotResponse response;
    grpc::Status status = controller->CreateSnapshot(&context, request, &response);
    if (status.ok()) {
      std::cout << response.snapshot().snapshot_id() << " " << response.snapshot().size_bytes()
                << " " << (response.snapshot().ready_to_use() ? "ready" : "not-ready") << "\n";
    }
    return Report(status);
  }
  if (command == "delete-snapshot" && argc == 4) {
    DeleteSnapshotRequest request;
    request.set_snapshot_id(argv[3]);
    DeleteSnapshotResponse response;
    return Report(controller->DeleteSnapshot(&context, request, &response));
  }
  if (command == "list-snapshots" && argc == 3) {
    ListSnapshotsRequest request;
    ListSnapshotsResponse response;
    grpc::Status status = controller->ListSnapshots(&context, request, &response);
    if (status.ok()) {
      for (const auto& entry : response.entries()) {
        std::cout << entry.snapshot().snapshot_id() << " " << entry.snapshot().source_volume_id()
                  << "\n";
      }
    }
    return Report(status);
  }
  std::cerr << "bad command line\n";
  return 2;
}
