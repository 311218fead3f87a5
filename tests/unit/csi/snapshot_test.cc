// Snapshots and volumes from a data source, through the Controller service over VolumeManager and
// a fake backend: hostile names, IDs, tokens and sources, the idempotency the CSI specification
// asks for, pagination, the capabilities per backend, and crash recovery with a crash injected at
// every step of a snapshot's create and delete.
#include <catch2/catch.hpp>
#include <string>
#include <vector>

#include "csi/controller_service.h"
#include "csi/volume_id.h"
#include "csi/volume_manager.h"
#include "fake_device_manager.h"
#include "temp_dir.h"

namespace ephemera::csi {
namespace {

using namespace ::csi::v1;  // NOLINT(google-build-using-namespace)
using testing::FakeDeviceManager;
using testing::TempDir;

constexpr int64_t kMi = int64_t{1024} * 1024;

struct Fixture {
  TempDir dir;
  FakeDeviceManager devices{1024 * kMi};
  StateStore store{dir.path()};
  StateStore snapshots{dir.path() + "/snapshots"};
  VolumeManager::Options options{16 * kMi, false};
  std::unique_ptr<VolumeManager> volumes;
  std::unique_ptr<ControllerService> controller;

  Fixture() {
    REQUIRE(store.Init().ok());
    REQUIRE(snapshots.Init().ok());
    Restart();
  }

  // A fresh manager and service over the same records and devices: a restarted process.
  void Restart() {
    controller.reset();
    volumes = std::make_unique<VolumeManager>(devices, store, options, &snapshots);
    controller = std::make_unique<ControllerService>(*volumes, "node-1", nullptr);
  }

  std::string Volume(const std::string& name, int64_t size = 16 * kMi) {
    CreateVolumeRequest request;
    request.set_name(name);
    request.mutable_capacity_range()->set_required_bytes(size);
    request.add_volume_capabilities()->mutable_block();
    request.mutable_volume_capabilities(0)->mutable_access_mode()->set_mode(
        VolumeCapability::AccessMode::SINGLE_NODE_WRITER);
    CreateVolumeResponse response;
    grpc::Status status = controller->CreateVolume(nullptr, &request, &response);
    REQUIRE(status.error_message() == "");
    return response.volume().volume_id();
  }

  grpc::Status Snapshot(const std::string& name, const std::string& source,
                        CreateSnapshotResponse* response = nullptr) {
    CreateSnapshotRequest request;
    request.set_name(name);
    request.set_source_volume_id(source);
    CreateSnapshotResponse ignored;
    return controller->CreateSnapshot(nullptr, &request, response ? response : &ignored);
  }

  grpc::Status List(const ListSnapshotsRequest& request, ListSnapshotsResponse* response) {
    return controller->ListSnapshots(nullptr, &request, response);
  }

  grpc::Status FromSource(const std::string& name, const VolumeContentSource& source,
                          int64_t required, int64_t limit, CreateVolumeResponse* response,
                          const std::string& requisite_node = "") {
    CreateVolumeRequest request;
    request.set_name(name);
    request.mutable_capacity_range()->set_required_bytes(required);
    request.mutable_capacity_range()->set_limit_bytes(limit);
    request.add_volume_capabilities()->mutable_block();
    request.mutable_volume_capabilities(0)->mutable_access_mode()->set_mode(
        VolumeCapability::AccessMode::SINGLE_NODE_WRITER);
    *request.mutable_volume_content_source() = source;
    if (!requisite_node.empty()) {
      (*request.mutable_accessibility_requirements()
            ->add_requisite()
            ->mutable_segments())["pmem-csi.ephemera.io/node"] = requisite_node;
    }
    return controller->CreateVolume(nullptr, &request, response);
  }
};

VolumeContentSource SnapshotSource(const std::string& id) {
  VolumeContentSource source;
  source.mutable_snapshot()->set_snapshot_id(id);
  return source;
}

VolumeContentSource VolumeSource(const std::string& id) {
  VolumeContentSource source;
  source.mutable_volume()->set_volume_id(id);
  return source;
}

bool HasCapability(ControllerService& controller, ControllerServiceCapability::RPC::Type type) {
  ControllerGetCapabilitiesRequest request;
  ControllerGetCapabilitiesResponse response;
  REQUIRE(controller.ControllerGetCapabilities(nullptr, &request, &response).ok());
  for (const auto& capability : response.capabilities()) {
    if (capability.rpc().type() == type) return true;
  }
  return false;
}

TEST_CASE("CreateSnapshot refuses hostile names, source IDs and parameters", "[csi][snapshots]") {
  Fixture f;
  std::string volume = f.Volume("pvc-1");
  struct Case {
    std::string name;
    std::string source;
    std::string field;
  };
  const std::vector<Case> cases = {
      {"", volume, "name:"},
      {std::string(129, 'a'), volume, "name:"},
      {std::string("snap\x01", 5), volume, "name:"},
      {"snap", "", "source_volume_id:"},
      {"snap", "../../etc/passwd", "source_volume_id:"},
      {"snap", "eph-1/../../x", "source_volume_id:"},
      {"snap", std::string("eph\0x", 5), "source_volume_id:"},
      {"snap", std::string(129, 'e'), "source_volume_id:"},
      {"snap", "-rf", "source_volume_id:"},
  };
  for (const Case& c : cases) {
    grpc::Status status = f.Snapshot(c.name, c.source);
    INFO(c.name.substr(0, 20) << " / " << c.source.substr(0, 20) << ": " << status.error_message());
    CHECK(status.error_code() == grpc::StatusCode::INVALID_ARGUMENT);
    CHECK(status.error_message().starts_with(c.field));
  }
  CreateSnapshotRequest request;
  request.set_name("snap");
  request.set_source_volume_id(volume);
  (*request.mutable_parameters())["color"] = "blue";
  CreateSnapshotResponse response;
  grpc::Status status = f.controller->CreateSnapshot(nullptr, &request, &response);
  CHECK(status.error_code() == grpc::StatusCode::INVALID_ARGUMENT);
  CHECK(status.error_message() == "parameters[\"color\"]: unknown parameter");
  // external-snapshotter's own keys are accepted.
  request.mutable_parameters()->clear();
  (*request.mutable_parameters())["csi.storage.k8s.io/volumesnapshot/name"] = "s";
  CHECK(f.controller->CreateSnapshot(nullptr, &request, &response).ok());
  // A well-formed ID of no volume here.
  CHECK(f.Snapshot("snap-2", DeriveVolumeId("nobody")).error_code() == grpc::StatusCode::NOT_FOUND);
  CHECK(f.devices.snapshot_count() == 1);
}

TEST_CASE("CreateSnapshot is idempotent by name and source", "[csi][snapshots]") {
  Fixture f;
  std::string a = f.Volume("pvc-a");
  std::string b = f.Volume("pvc-b");
  CreateSnapshotResponse first;
  REQUIRE(f.Snapshot("daily", a, &first).ok());
  CHECK(first.snapshot().snapshot_id() == DeriveSnapshotId("daily"));
  CHECK(first.snapshot().source_volume_id() == a);
  CHECK(first.snapshot().size_bytes() == 16 * kMi);
  CHECK(first.snapshot().ready_to_use());
  CHECK(first.snapshot().creation_time().seconds() > 0);
  CreateSnapshotResponse again;
  REQUIRE(f.Snapshot("daily", a, &again).ok());
  CHECK(again.SerializeAsString() == first.SerializeAsString());  // same time, same everything
  grpc::Status other = f.Snapshot("daily", b);
  CHECK(other.error_code() == grpc::StatusCode::ALREADY_EXISTS);
  CHECK(f.devices.snapshot_count() == 1);
  // Deleting the source volume leaves the snapshot: it is a copy.
  DeleteVolumeRequest del;
  del.set_volume_id(a);
  DeleteVolumeResponse deleted;
  REQUIRE(f.controller->DeleteVolume(nullptr, &del, &deleted).ok());
  ListSnapshotsRequest list;
  ListSnapshotsResponse listed;
  REQUIRE(f.List(list, &listed).ok());
  CHECK(listed.entries_size() == 1);
}

TEST_CASE("DeleteSnapshot and GetSnapshot validate IDs / unknown IDs", "[csi][snapshots]") {
  Fixture f;
  for (const std::string& id : {std::string(), std::string("../x"), std::string("a/b"),
                                std::string(200, 's'), std::string("snap\n")}) {
    DeleteSnapshotRequest del;
    del.set_snapshot_id(id);
    DeleteSnapshotResponse deleted;
    CHECK(f.controller->DeleteSnapshot(nullptr, &del, &deleted).error_code() ==
          grpc::StatusCode::INVALID_ARGUMENT);
    GetSnapshotRequest get;
    get.set_snapshot_id(id);
    GetSnapshotResponse got;
    CHECK(f.controller->GetSnapshot(nullptr, &get, &got).error_code() ==
          grpc::StatusCode::INVALID_ARGUMENT);
  }
  DeleteSnapshotRequest del;
  del.set_snapshot_id("reallyfakesnapshotid");
  DeleteSnapshotResponse deleted;
  CHECK(f.controller->DeleteSnapshot(nullptr, &del, &deleted).ok());
  GetSnapshotRequest get;
  get.set_snapshot_id("reallyfakesnapshotid");
  GetSnapshotResponse got;
  CHECK(f.controller->GetSnapshot(nullptr, &get, &got).error_code() == grpc::StatusCode::NOT_FOUND);
}

TEST_CASE("ListSnapshots: hostile tokens are ABORTED, filters, pages survive deletions",
          "[csi][snapshots]") {
  Fixture f;
  std::vector<std::string> sources;
  for (int i = 0; i < 5; ++i) {
    sources.push_back(f.Volume("pvc-" + std::to_string(i)));
    REQUIRE(f.Snapshot("snap-" + std::to_string(i), sources.back()).ok());
  }
  ListSnapshotsResponse response;
  for (const std::string& token :
       {std::string("5"), std::string("garbage"), std::string("after:") + sources[0],
        std::string("snapshots-after:"), std::string("snapshots-after:../../etc"),
        std::string("snapshots-after:") + std::string(5000, 'a'),
        std::string("snapshots-after:a\0b", 19), std::string("SNAPSHOTS-AFTER:snap-1")}) {
    ListSnapshotsRequest request;
    request.set_starting_token(token);
    INFO(token.substr(0, 40));
    CHECK(f.List(request, &response).error_code() == grpc::StatusCode::ABORTED);
  }
  ListSnapshotsRequest negative;
  negative.set_max_entries(-1);
  CHECK(f.List(negative, &response).error_code() == grpc::StatusCode::INVALID_ARGUMENT);

  // Filters: a hostile or unknown ID matches nothing, and is no error.
  for (const std::string& id : {std::string("none-exist-id"), std::string("../../x")}) {
    ListSnapshotsRequest by_id;
    by_id.set_snapshot_id(id);
    ListSnapshotsResponse found;
    REQUIRE(f.List(by_id, &found).ok());
    CHECK(found.entries().empty());
    ListSnapshotsRequest by_source;
    by_source.set_source_volume_id(id);
    REQUIRE(f.List(by_source, &found).ok());
    CHECK(found.entries().empty());
  }
  ListSnapshotsRequest by_source;
  by_source.set_source_volume_id(sources[3]);
  ListSnapshotsResponse found;
  REQUIRE(f.List(by_source, &found).ok());
  REQUIRE(found.entries_size() == 1);
  CHECK(found.entries(0).snapshot().snapshot_id() == DeriveSnapshotId("snap-3"));

  // Pages of two; the last snapshot of the first page is deleted before the second is asked for:
  // the rest comes exactly once.
  ListSnapshotsRequest page;
  page.set_max_entries(2);
  ListSnapshotsResponse first;
  REQUIRE(f.List(page, &first).ok());
  REQUIRE(first.entries_size() == 2);
  REQUIRE(!first.next_token().empty());
  DeleteSnapshotRequest del;
  del.set_snapshot_id(first.entries(1).snapshot().snapshot_id());
  DeleteSnapshotResponse deleted;
  REQUIRE(f.controller->DeleteSnapshot(nullptr, &del, &deleted).ok());
  ListSnapshotsRequest rest;
  rest.set_starting_token(first.next_token());
  ListSnapshotsResponse second;
  REQUIRE(f.List(rest, &second).ok());
  CHECK(second.entries_size() == 3);
  CHECK(second.next_token().empty());
  for (const auto& entry : second.entries()) {
    CHECK(entry.snapshot().snapshot_id() > first.entries(1).snapshot().snapshot_id());
  }
}

TEST_CASE("CreateVolume from a data source: hostile and missing sources, sizes, topology",
          "[csi][snapshots]") {
  Fixture f;
  std::string volume = f.Volume("pvc-src", 32 * kMi);
  CreateSnapshotResponse snapshot;
  REQUIRE(f.Snapshot("snap", volume, &snapshot).ok());
  const std::string snapshot_id = snapshot.snapshot().snapshot_id();
  CreateVolumeResponse response;

  // Hostile or empty source IDs: INVALID_ARGUMENT naming the field.
  grpc::Status status = f.FromSource("v", SnapshotSource("../../etc/passwd"), 0, 0, &response);
  CHECK(status.error_code() == grpc::StatusCode::INVALID_ARGUMENT);
  CHECK(status.error_message().starts_with("volume_content_source.snapshot.snapshot_id:"));
  status = f.FromSource("v", VolumeSource(""), 0, 0, &response);
  CHECK(status.error_code() == grpc::StatusCode::INVALID_ARGUMENT);
  CHECK(status.error_message().starts_with("volume_content_source.volume.volume_id:"));
  status = f.FromSource("v", VolumeContentSource(), 0, 0, &response);
  CHECK(status.error_code() == grpc::StatusCode::INVALID_ARGUMENT);
  // Well-formed, but not here: NOT_FOUND. A snapshot ID given as a volume and the reverse too.
  CHECK(
      f.FromSource("v", SnapshotSource("non-existing-snapshot-id"), 0, 0, &response).error_code() ==
      grpc::StatusCode::NOT_FOUND);
  CHECK(f.FromSource("v", VolumeSource(DeriveVolumeId("nobody")), 0, 0, &response).error_code() ==
        grpc::StatusCode::NOT_FOUND);
  CHECK(f.FromSource("v", VolumeSource(snapshot_id), 0, 0, &response).error_code() ==
        grpc::StatusCode::NOT_FOUND);
  CHECK(f.FromSource("v", SnapshotSource(volume), 0, 0, &response).error_code() ==
        grpc::StatusCode::NOT_FOUND);
  // Smaller than the source: OUT_OF_RANGE; another node required: RESOURCE_EXHAUSTED.
  status = f.FromSource("v", SnapshotSource(snapshot_id), 0, 16 * kMi, &response);
  CHECK(status.error_code() == grpc::StatusCode::OUT_OF_RANGE);
  status = f.FromSource("v", SnapshotSource(snapshot_id), 0, 0, &response, "node-2");
  CHECK(status.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED);
  CHECK(status.error_message().find("where the volume_content_source is") != std::string::npos);
  CHECK(f.devices.copies.empty());

  // Without a range: the source's size. Larger: allowed. The answer names source and node.
  REQUIRE(f.FromSource("restored", SnapshotSource(snapshot_id), 0, 0, &response).ok());
  CHECK(response.volume().capacity_bytes() == 32 * kMi);
  CHECK(response.volume().content_source().snapshot().snapshot_id() == snapshot_id);
  CHECK(response.volume().accessible_topology(0).segments().at("pmem-csi.ephemera.io/node") ==
        "node-1");
  REQUIRE(f.FromSource("clone", VolumeSource(volume), 64 * kMi, 0, &response, "node-1").ok());
  CHECK(response.volume().capacity_bytes() == 64 * kMi);
  CHECK(response.volume().content_source().volume().volume_id() == volume);
  // Idempotent with the same source; another source or none is ALREADY_EXISTS.
  REQUIRE(f.FromSource("clone", VolumeSource(volume), 64 * kMi, 0, &response).ok());
  CHECK(f.FromSource("clone", SnapshotSource(snapshot_id), 64 * kMi, 0, &response).error_code() ==
        grpc::StatusCode::ALREADY_EXISTS);
  CreateVolumeRequest plain;
  plain.set_name("clone");
  plain.mutable_capacity_range()->set_required_bytes(64 * kMi);
  plain.add_volume_capabilities()->mutable_block();
  plain.mutable_volume_capabilities(0)->mutable_access_mode()->set_mode(
      VolumeCapability::AccessMode::SINGLE_NODE_WRITER);
  CHECK(f.controller->CreateVolume(nullptr, &plain, &response).error_code() ==
        grpc::StatusCode::ALREADY_EXISTS);
  CHECK(f.devices.copies.size() == 2);
  // A volume cannot be its own source.
  CHECK(f.FromSource("pvc-src", VolumeSource(volume), 0, 0, &response).error_code() ==
        grpc::StatusCode::INVALID_ARGUMENT);
}

TEST_CASE("a backend without snapshots offers no snapshot or clone capability",
          "[csi][snapshots]") {
  Fixture f;
  using Rpc = ControllerServiceCapability::RPC;
  for (auto type : {Rpc::CREATE_DELETE_SNAPSHOT, Rpc::LIST_SNAPSHOTS, Rpc::CLONE_VOLUME}) {
    CHECK(HasCapability(*f.controller, type));
  }
  std::string volume = f.Volume("pvc");
  f.devices.supports_snapshots = false;
  for (auto type :
       {Rpc::CREATE_DELETE_SNAPSHOT, Rpc::LIST_SNAPSHOTS, Rpc::CLONE_VOLUME, Rpc::GET_SNAPSHOT}) {
    CHECK_FALSE(HasCapability(*f.controller, type));
  }
  CHECK(f.Snapshot("s", volume).error_code() == grpc::StatusCode::UNIMPLEMENTED);
  ListSnapshotsRequest list;
  ListSnapshotsResponse listed;
  CHECK(f.List(list, &listed).error_code() == grpc::StatusCode::UNIMPLEMENTED);
  CreateVolumeResponse response;
  grpc::Status status = f.FromSource("v", VolumeSource(volume), 0, 0, &response);
  CHECK(status.error_code() == grpc::StatusCode::INVALID_ARGUMENT);
  CHECK(status.error_message().starts_with("volume_content_source:"));
}

TEST_CASE("a crash at every step of a snapshot's create or delete is repaired",
          "[csi][snapshots][crash]") {
  for (const std::string point :
       {"snapshot:record-written", "snapshot:copied", "snapshot-delete:marked", "inside-copy"}) {
    DYNAMIC_SECTION(point) {
      Fixture f;
      std::string volume = f.Volume("pvc");
      const bool deleting = point.starts_with("snapshot-delete");
      if (deleting) REQUIRE(f.Snapshot("snap", volume).ok());
      if (point == "inside-copy") {
        f.devices.die_in_snapshot = true;
      } else {
        f.volumes->SetFaultHook([&](std::string_view at) {
          return at == point ? Status::Unavailable("crash") : Status::Ok();
        });
      }
      if (deleting) {
        CHECK_FALSE(f.volumes->DeleteSnapshot(DeriveSnapshotId("snap")).ok());
      } else {
        CHECK_FALSE(f.volumes->CreateSnapshot("snap", volume).ok());
      }
      f.Restart();
      StatusOr<VolumeManager::RecoveryReport> report = f.volumes->Recover();
      REQUIRE(report.ok());
      CHECK(report->errors.empty());
      // Nothing is taken for a finished snapshot: no copy, no record, an empty list.
      CHECK(f.devices.snapshot_count() == 0);
      StatusOr<std::vector<VolumeRecord>> records = f.snapshots.List();
      REQUIRE(records.ok());
      CHECK(records->empty());
      ListSnapshotsRequest list;
      ListSnapshotsResponse listed;
      REQUIRE(f.List(list, &listed).ok());
      CHECK(listed.entries().empty());
      // And it can be taken again.
      CHECK(f.Snapshot("snap", volume).ok());
      CHECK(f.devices.snapshot_count() == 1);
    }
  }
}

}  // namespace
}  // namespace ephemera::csi
