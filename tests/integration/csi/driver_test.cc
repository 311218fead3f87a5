// ephemera-pmem-csi end to end with the file backend on real loop devices, mkfs and mounts (run as
// root): inline ephemeral volumes, SIGKILL during create/delete cycles, online expansion, the
// metrics and health endpoint and the mTLS capacity listener.
#include <signal.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <random>
#include <set>
#include <system_error>
#include <thread>

#include "csi/backends/loop_device.h"
#include "csi/exec_command_runner.h"
#include "csi/proto/pluginregistration.grpc.pb.h"
#include "csi/volume_id.h"
#include "driver_fixture.h"
#include "tests/integration/http_get.h"

namespace ephemera::csi::testing {
namespace {

using namespace ::csi::v1;  // NOLINT(google-build-using-namespace)

constexpr int64_t kMi = int64_t{1024} * 1024;

grpc::Status Call(auto method, const auto& request, auto* response) {
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
  return method(&context, request, response);
}

#define CALL(stub, Method, request, response)                                                      \
  Call([&](grpc::ClientContext* c, const auto& rq, auto* rs) { return (stub).Method(c, rq, rs); }, \
       request, response)

int64_t FsTotalBytes(const std::string& path) {
  struct statvfs fs {};
  REQUIRE(statvfs(path.c_str(), &fs) == 0);
  return static_cast<int64_t>(fs.f_blocks) * static_cast<int64_t>(fs.f_frsize);
}

// A NodePublishVolume request as the kubelet makes it for a CSI inline volume (ext4); an empty
// `size` or `pod` leaves that attribute out.
NodePublishVolumeRequest InlinePublishRequest(const std::string& id, const std::string& target,
                                              const std::string& size,
                                              const std::string& pod = "") {
  NodePublishVolumeRequest publish;
  publish.set_volume_id(id);
  publish.set_target_path(target);
  *publish.mutable_volume_capability() = MountCapability("ext4");
  auto& context = *publish.mutable_volume_context();
  context["csi.storage.k8s.io/ephemeral"] = "true";
  if (!pod.empty()) context["csi.storage.k8s.io/pod.name"] = pod;
  if (!size.empty()) context["size"] = size;
  return publish;
}

TEST_CASE("inline ephemeral volume: published / written / unpublished / space returned",
          "[csi][integration]") {
  DriverFixture driver;
  const int64_t before = driver.AvailableCapacity();
  std::string target = driver.work() + "/pods/p1/volumes/scratch/mount";

  NodePublishVolumeRequest publish = InlinePublishRequest("csi-4f1c2a9e0b7d", target, "30Mi", "p1");
  NodePublishVolumeResponse published;
  grpc::Status status = CALL(driver.node(), NodePublishVolume, publish, &published);
  REQUIRE(status.error_message() == "");
  REQUIRE(status.ok());
  // Idempotent.
  REQUIRE(CALL(driver.node(), NodePublishVolume, publish, &published).ok());
  CHECK(driver.AvailableCapacity() == before - 32 * kMi);  // 30Mi rounded up to 4 MiB

  {
    std::ofstream out(target + "/data");
    out << std::string(4 * kMi, 'x');
  }
  sync();
  NodeGetVolumeStatsRequest stats_request;
  stats_request.set_volume_id(publish.volume_id());
  stats_request.set_volume_path(target);
  NodeGetVolumeStatsResponse stats;
  REQUIRE(CALL(driver.node(), NodeGetVolumeStats, stats_request, &stats).ok());
  REQUIRE(stats.usage_size() == 2);
  CHECK(stats.usage(0).unit() == VolumeUsage::BYTES);
  CHECK(stats.usage(0).used() >= 4 * kMi);
  CHECK(stats.usage(1).unit() == VolumeUsage::INODES);
  CHECK_FALSE(stats.volume_condition().abnormal());

  NodeUnpublishVolumeRequest unpublish;
  unpublish.set_volume_id(publish.volume_id());
  unpublish.set_target_path(target);
  NodeUnpublishVolumeResponse unpublished;
  REQUIRE(CALL(driver.node(), NodeUnpublishVolume, unpublish, &unpublished).ok());
  CHECK(driver.AvailableCapacity() == before);
  CHECK_FALSE(std::filesystem::exists(target));
  CHECK(driver.PoolFiles().empty());
  CHECK(driver.Records().empty());
  CHECK(driver.Loops().empty());
  CHECK(driver.Mounts().empty());
  // Unpublishing again succeeds and changes nothing: the kubelet repeats an unpublish until it
  // gets OK.
  CHECK(CALL(driver.node(), NodeUnpublishVolume, unpublish, &unpublished).ok());
  CHECK(driver.Records().empty());
}

TEST_CASE("inline ephemeral volume too large for the pool: publish fails, unpublish succeeds",
          "[csi][integration]") {
  // Seen with a real kubelet: the pod of a refused inline volume stayed Terminating while every
  // unpublish answered NOT_FOUND.
  DriverFixture driver;
  const int64_t before = driver.AvailableCapacity();
  std::string target = driver.work() + "/pods/p9/volumes/big/mount";
  std::filesystem::create_directories(target);  // as the kubelet makes it
  NodePublishVolumeRequest publish = InlinePublishRequest("csi-too-big-1", target, "20Gi", "p9");
  NodePublishVolumeResponse published;
  grpc::Status status = CALL(driver.node(), NodePublishVolume, publish, &published);
  CHECK(status.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED);
  CHECK_THAT(status.error_message(), Catch::Matchers::Contains("does not fit"));

  NodeUnpublishVolumeRequest unpublish;
  unpublish.set_volume_id(publish.volume_id());
  unpublish.set_target_path(target);
  NodeUnpublishVolumeResponse unpublished;
  status = CALL(driver.node(), NodeUnpublishVolume, unpublish, &unpublished);
  CHECK(status.error_message() == "");
  CHECK(status.ok());
  CHECK_FALSE(std::filesystem::exists(target));
  CHECK(driver.AvailableCapacity() == before);
  CHECK(driver.PoolFiles().empty());
  CHECK(driver.Records().empty());
  CHECK(driver.Mounts().empty());
}

TEST_CASE("inline ephemeral volume: a restart between create and mount is repaired by the retry",
          "[csi][integration][crash]") {
  DriverFixture driver;
  const int64_t before = driver.AvailableCapacity();
  std::string target = driver.work() + "/pods/p2/volumes/scratch/mount";
  NodePublishVolumeRequest publish = InlinePublishRequest("csi-restart-1", target, "16Mi");
  NodePublishVolumeResponse published;
  REQUIRE(CALL(driver.node(), NodePublishVolume, publish, &published).ok());
  // What a crash after the volume was made and formatted but before the mount leaves: the volume,
  // no mount. The driver is killed and restarted, and kubelet retries the publish.
  REQUIRE(umount2(target.c_str(), 0) == 0);
  driver.Restart();
  REQUIRE(driver.Mounts().empty());
  REQUIRE(CALL(driver.node(), NodePublishVolume, publish, &published).ok());
  CHECK(driver.Mounts() == std::vector<std::string>{target});
  CHECK(driver.PoolFiles().size() == 1);  // the same volume, not a second one
  // A restart while published changes nothing; unpublish then cleans up everything.
  driver.Restart();
  REQUIRE(CALL(driver.node(), NodePublishVolume, publish, &published).ok());
  NodeUnpublishVolumeRequest unpublish;
  unpublish.set_volume_id(publish.volume_id());
  unpublish.set_target_path(target);
  NodeUnpublishVolumeResponse unpublished;
  REQUIRE(CALL(driver.node(), NodeUnpublishVolume, unpublish, &unpublished).ok());
  CHECK(driver.AvailableCapacity() == before);
  CHECK(driver.PoolFiles().empty());
  CHECK(driver.Records().empty());
  CHECK(driver.Loops().empty());
  CHECK(driver.Mounts().empty());
}

TEST_CASE("inline ephemeral volume without size is INVALID_ARGUMENT and leaves nothing",
          "[csi][integration]") {
  DriverFixture driver;
  NodePublishVolumeRequest publish = InlinePublishRequest("csi-nosize", driver.work() + "/t", "");
  NodePublishVolumeResponse response;
  grpc::Status status = CALL(driver.node(), NodePublishVolume, publish, &response);
  CHECK(status.error_code() == grpc::StatusCode::INVALID_ARGUMENT);
  CHECK(status.error_message().find("size") != std::string::npos);
  CHECK(driver.PoolFiles().empty());
}

TEST_CASE("SIGKILL during 100 create/delete cycles leaks nothing", "[csi][integration][crash]") {
  DriverFixture driver("256Mi");
  std::mt19937 random(42);
  int kills = 0;
  std::set<std::string> names_in_flight;
  for (int cycle = 0; cycle < 100; ++cycle) {
    std::string name = "pvc-cycle-" + std::to_string(cycle);
    names_in_flight.insert(name);
    // Every tenth cycle a killer fires after a random delay; the cycle repeats create+delete of
    // its name until a call fails because the driver is gone. The kill may land inside a call or
    // between two calls (the timing is the scheduler's); either way the name is retried below.
    std::thread killer;
    std::atomic<bool> killed{false};
    if (cycle % 10 == 5) {
      int delay_us = std::uniform_int_distribution<int>(0, 20000)(random);
      killer = std::thread([&, delay_us] {
        std::this_thread::sleep_for(std::chrono::microseconds(delay_us));
        driver.Kill(SIGKILL);
        killed = true;
      });
    }
    grpc::Status status;
    do {
      CreateVolumeRequest create;
      create.set_name(name);
      create.mutable_capacity_range()->set_required_bytes(8 * kMi);
      *create.add_volume_capabilities() = MountCapability();
      CreateVolumeResponse created;
      status = CALL(driver.controller(), CreateVolume, create, &created);
      if (status.ok()) {
        DeleteVolumeRequest del;
        del.set_volume_id(created.volume().volume_id());
        DeleteVolumeResponse deleted;
        status = CALL(driver.controller(), DeleteVolume, del, &deleted);
      }
    } while (killer.joinable() && status.ok());
    if (status.ok()) names_in_flight.erase(name);
    if (killer.joinable()) {
      killer.join();
      ++kills;
      driver.Start();
      // After the restart: devices, records and loops agree one to one.
      std::vector<std::string> files = driver.PoolFiles();
      std::vector<std::string> records = driver.Records();
      REQUIRE(files.size() == records.size());
      REQUIRE(driver.Loops().size() == files.size());
    }
    REQUIRE((status.ok() || killed));
  }
  std::ifstream log_in(driver.log_path());
  std::string log_text((std::istreambuf_iterator<char>(log_in)), std::istreambuf_iterator<char>());
  size_t repairs = 0;
  for (size_t at = log_text.find("\"recovery\" action="); at != std::string::npos;
       at = log_text.find("\"recovery\" action=", at + 1)) {
    ++repairs;
  }
  std::cout << "SIGKILL test: " << kills << " kills, " << repairs << " repairs at restart, "
            << names_in_flight.size() << " names retried\n";
  CHECK(kills == 10);
  // The CO retries what failed: create (idempotent) and delete each name once more.
  for (const std::string& name : names_in_flight) {
    CreateVolumeRequest create;
    create.set_name(name);
    create.mutable_capacity_range()->set_required_bytes(8 * kMi);
    *create.add_volume_capabilities() = MountCapability();
    CreateVolumeResponse created;
    REQUIRE(CALL(driver.controller(), CreateVolume, create, &created).ok());
    DeleteVolumeRequest del;
    del.set_volume_id(created.volume().volume_id());
    DeleteVolumeResponse deleted;
    REQUIRE(CALL(driver.controller(), DeleteVolume, del, &deleted).ok());
  }
  CHECK(driver.PoolFiles().empty());
  CHECK(driver.Records().empty());
  CHECK(driver.Loops().empty());
  CHECK(driver.AvailableCapacity() == 256 * kMi);
  CHECK(log_text.find("ORPHANED") == std::string::npos);
}

// Whether this process has CAP_SYS_RESOURCE (bit 24 of CapEff), which the kernel requires for the
// online resize of ext4 (EXT4_IOC_RESIZE_FS). Some container runtimes drop it even for root.
bool HaveSysResource() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.starts_with("CapEff:")) {
      return (std::stoull(line.substr(7), nullptr, 16) >> 24) & 1;
    }
  }
  return false;
}

// A volume created, staged and published with a filesystem, as kubelet leaves it for a pod.
struct MountedVolume {
  MountedVolume(DriverFixture& driver, const std::string& name, const std::string& fs_type,
                int64_t size)
      : driver(driver),
        staging(driver.work() + "/staging-" + name),
        target(driver.work() + "/target-" + name) {
    CreateVolumeRequest create;
    create.set_name(name);
    create.mutable_capacity_range()->set_required_bytes(size);
    (*create.mutable_parameters())["eraseafter"] = "false";
    *create.add_volume_capabilities() = MountCapability(fs_type);
    CreateVolumeResponse created;
    REQUIRE(CALL(driver.controller(), CreateVolume, create, &created).ok());
    id = created.volume().volume_id();
    NodeStageVolumeRequest stage;
    stage.set_volume_id(id);
    stage.set_staging_target_path(staging);
    *stage.mutable_volume_capability() = MountCapability(fs_type);
    NodeStageVolumeResponse staged;
    grpc::Status status = CALL(driver.node(), NodeStageVolume, stage, &staged);
    REQUIRE(status.error_message() == "");
    NodePublishVolumeRequest publish;
    publish.set_volume_id(id);
    publish.set_staging_target_path(staging);
    publish.set_target_path(target);
    *publish.mutable_volume_capability() = MountCapability(fs_type);
    NodePublishVolumeResponse published;
    REQUIRE(CALL(driver.node(), NodePublishVolume, publish, &published).ok());
  }

  // NodeExpandVolume as kubelet sends it for a filesystem volume (pkg/volume/csi/expander.go):
  // the publish path, the staging path, required_bytes only, the mount capability.
  grpc::Status Expand(int64_t required, const std::string& fs_type,
                      NodeExpandVolumeResponse* response) {
    NodeExpandVolumeRequest expand;
    expand.set_volume_id(id);
    expand.set_volume_path(target);
    expand.set_staging_target_path(staging);
    expand.mutable_capacity_range()->set_required_bytes(required);
    *expand.mutable_volume_capability() = MountCapability(fs_type);
    return CALL(driver.node(), NodeExpandVolume, expand, response);
  }

  // Unpublish, unstage, delete: nothing may be left.
  void Remove() {
    NodeUnpublishVolumeRequest unpublish;
    unpublish.set_volume_id(id);
    unpublish.set_target_path(target);
    NodeUnpublishVolumeResponse unpublished;
    REQUIRE(CALL(driver.node(), NodeUnpublishVolume, unpublish, &unpublished).ok());
    NodeUnstageVolumeRequest unstage;
    unstage.set_volume_id(id);
    unstage.set_staging_target_path(staging);
    NodeUnstageVolumeResponse unstaged;
    REQUIRE(CALL(driver.node(), NodeUnstageVolume, unstage, &unstaged).ok());
    DeleteVolumeRequest del;
    del.set_volume_id(id);
    DeleteVolumeResponse deleted;
    REQUIRE(CALL(driver.controller(), DeleteVolume, del, &deleted).ok());
  }

  int64_t RecordedSize() const {
    std::ifstream in(driver.state_dir() + "/" + id + ".json");
    std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    const std::string key = "\"size\":";
    size_t at = text.find(key);
    REQUIRE(at != std::string::npos);
    return std::stoll(text.substr(at + key.size()));
  }

  DriverFixture& driver;
  std::string id;
  const std::string staging;
  const std::string target;
};

void ExpandMounted(const std::string& fs_type, int64_t initial, int64_t grown) {
  DriverFixture driver("2Gi");
  MountedVolume volume(driver, "pvc-grow-" + fs_type, fs_type, initial);
  const int64_t before = FsTotalBytes(volume.target);
  const int64_t available = driver.AvailableCapacity();

  // In use: DeleteVolume must refuse.
  DeleteVolumeRequest del;
  del.set_volume_id(volume.id);
  DeleteVolumeResponse deleted;
  CHECK(CALL(driver.controller(), DeleteVolume, del, &deleted).error_code() ==
        grpc::StatusCode::FAILED_PRECONDITION);

  // The controller side does not grow volumes (csi-resizer runs somewhere in the cluster, the
  // volume lives on one node): the node does, device and filesystem in one call.
  ControllerExpandVolumeRequest controller_expand;
  controller_expand.set_volume_id(volume.id);
  controller_expand.mutable_capacity_range()->set_required_bytes(grown);
  ControllerExpandVolumeResponse controller_expanded;
  CHECK(CALL(driver.controller(), ControllerExpandVolume, controller_expand, &controller_expanded)
            .error_code() == grpc::StatusCode::UNIMPLEMENTED);

  NodeExpandVolumeResponse expanded;
  grpc::Status status = volume.Expand(grown, fs_type, &expanded);
  REQUIRE(status.error_message() == "");
  CHECK(expanded.capacity_bytes() == grown);
  CHECK(volume.RecordedSize() == grown);
  CHECK(driver.AvailableCapacity() == available - (grown - initial));
  const int64_t after = FsTotalBytes(volume.target);
  INFO(fs_type << ": " << before << " -> " << after);
  CHECK(after > before + (grown - initial) * 8 / 10);
  // kubelet retries a call whose answer it did not get: the same call again changes nothing.
  status = volume.Expand(grown, fs_type, &expanded);
  REQUIRE(status.error_message() == "");
  CHECK(expanded.capacity_bytes() == grown);
  CHECK(FsTotalBytes(volume.target) == after);
  CHECK(driver.AvailableCapacity() == available - (grown - initial));

  volume.Remove();
  CHECK(driver.PoolFiles().empty());
  CHECK(driver.Loops().empty());
}

TEST_CASE("expansion of a mounted ext4 volume grows device and filesystem", "[csi][integration]") {
  // ctest reports this text as a skip (SKIP_REGULAR_EXPRESSION): the kernel refuses the online
  // resize of ext4 (EXT4_IOC_RESIZE_FS) without CAP_SYS_RESOURCE, so the growth is not measured.
  if (!HaveSysResource()) FAIL("SKIP: no CAP_SYS_RESOURCE, ext4 cannot grow online here");
  ExpandMounted("ext4", 32 * kMi, 96 * kMi);
}

TEST_CASE("expansion of a mounted xfs volume grows device and filesystem", "[csi][integration]") {
  // mkfs.xfs of xfsprogs 6 refuses filesystems below 300 MB.
  ExpandMounted("xfs", 320 * kMi, 512 * kMi);
}

TEST_CASE("an xfs volume asked smaller than mkfs.xfs accepts is made at its floor and mounts",
          "[csi][integration]") {
  // Seen with a real kubelet: a 256Mi PVC of the xfs class was created, then every NodeStage
  // failed ("Filesystem must be larger than 300MB").
  DriverFixture driver("2Gi");
  MountedVolume volume(driver, "pvc-small-xfs", "xfs", 64 * kMi);
  CHECK(volume.RecordedSize() == 300 * kMi);
  CHECK(FsTotalBytes(volume.target) > 200 * kMi);  // xfs keeps about 60 MiB of 300 for its log
  volume.Remove();
  CHECK(driver.PoolFiles().empty());
}

TEST_CASE("without CAP_SYS_RESOURCE ext4 growth fails with resize2fs's reason, device grown",
          "[csi][integration]") {
  if (HaveSysResource()) return;  // the growth itself is tested above
  DriverFixture driver("1Gi");
  MountedVolume volume(driver, "pvc-grow-nocap", "ext4", 32 * kMi);
  const int64_t before = FsTotalBytes(volume.target);
  NodeExpandVolumeResponse expanded;
  grpc::Status status = volume.Expand(64 * kMi, "ext4", &expanded);
  CHECK(status.error_code() == grpc::StatusCode::INTERNAL);
  CHECK(status.error_message().find("resize2fs") != std::string::npos);
  CHECK(status.error_message().find("CAP_SYS_RESOURCE") != std::string::npos);
  CHECK(FsTotalBytes(volume.target) == before);
  CHECK(volume.RecordedSize() == 64 * kMi);  // the device grew; a retry with the capability ends it
  volume.Remove();
  CHECK(driver.PoolFiles().empty());
}

TEST_CASE("expansion beyond the node's pool is OUT_OF_RANGE, changes nothing, a smaller one works",
          "[csi][integration]") {
  DriverFixture driver("1Gi");
  MountedVolume volume(driver, "pvc-grow-big", "xfs", 320 * kMi);
  const int64_t before = FsTotalBytes(volume.target);
  const int64_t available = driver.AvailableCapacity();
  NodeExpandVolumeResponse expanded;
  grpc::Status status = volume.Expand(2048 * kMi, "xfs", &expanded);
  // OUT_OF_RANGE: kubelet takes it as final and infeasible, puts the message into the PVC's
  // NodeResizeError condition, and lets a smaller request recover.
  CHECK(status.error_code() == grpc::StatusCode::OUT_OF_RANGE);
  INFO(status.error_message());
  CHECK(status.error_message().find("cannot grow to 2147483648 bytes on node it-node") !=
        std::string::npos);
  CHECK(status.error_message().find("bytes free") != std::string::npos);
  CHECK(FsTotalBytes(volume.target) == before);
  CHECK(volume.RecordedSize() == 320 * kMi);
  CHECK(driver.AvailableCapacity() == available);

  status = volume.Expand(400 * kMi, "xfs", &expanded);
  REQUIRE(status.error_message() == "");
  CHECK(expanded.capacity_bytes() == 400 * kMi);
  CHECK(FsTotalBytes(volume.target) > before);
  volume.Remove();
  CHECK(driver.PoolFiles().empty());
}

TEST_CASE("a crash between device and filesystem growth is completed by kubelet's retry",
          "[csi][integration][crash]") {
  DriverFixture driver("1Gi");
  MountedVolume volume(driver, "pvc-grow-crash", "xfs", 320 * kMi);
  const int64_t before = FsTotalBytes(volume.target);
  // The state a crash leaves right after the file backend's truncate: the file is larger, the loop
  // device, the record and the filesystem are not.
  driver.Kill(SIGKILL);
  const std::string file = driver.file_dir() + "/" + volume.id + ".img";
  REQUIRE(truncate(file.c_str(), 480 * kMi) == 0);
  driver.Start();
  CHECK(volume.RecordedSize() == 320 * kMi);

  NodeExpandVolumeResponse expanded;
  grpc::Status status = volume.Expand(480 * kMi, "xfs", &expanded);
  REQUIRE(status.error_message() == "");
  CHECK(expanded.capacity_bytes() == 480 * kMi);
  CHECK(volume.RecordedSize() == 480 * kMi);
  CHECK(FsTotalBytes(volume.target) > before + 120 * kMi);
  volume.Remove();
  CHECK(driver.PoolFiles().empty());
  CHECK(driver.Loops().empty());
}

TEST_CASE("expansion of a published raw block volume grows the device", "[csi][integration]") {
  DriverFixture driver("1Gi");
  CreateVolumeRequest create;
  create.set_name("pvc-grow-block");
  create.mutable_capacity_range()->set_required_bytes(16 * kMi);
  VolumeCapability block;
  block.mutable_block();
  block.mutable_access_mode()->set_mode(VolumeCapability::AccessMode::SINGLE_NODE_WRITER);
  *create.add_volume_capabilities() = block;
  CreateVolumeResponse created;
  REQUIRE(CALL(driver.controller(), CreateVolume, create, &created).ok());
  const std::string id = created.volume().volume_id();
  // kubelet publishes a block volume onto a file and calls NodeExpandVolume with that path.
  const std::string target = driver.work() + "/pods/p/volumeDevices/dev";
  NodePublishVolumeRequest publish;
  publish.set_volume_id(id);
  publish.set_target_path(target);
  *publish.mutable_volume_capability() = block;
  NodePublishVolumeResponse published;
  REQUIRE(CALL(driver.node(), NodePublishVolume, publish, &published).ok());
  REQUIRE(*BlockDeviceSize(target) == 16 * kMi);

  NodeExpandVolumeRequest expand;
  expand.set_volume_id(id);
  expand.set_volume_path(target);
  expand.mutable_capacity_range()->set_required_bytes(40 * kMi);
  *expand.mutable_volume_capability() = block;
  NodeExpandVolumeResponse expanded;
  grpc::Status status = CALL(driver.node(), NodeExpandVolume, expand, &expanded);
  REQUIRE(status.error_message() == "");
  CHECK(expanded.capacity_bytes() == 40 * kMi);
  CHECK(*BlockDeviceSize(target) == 40 * kMi);

  // A path that is not this volume's device grows nothing.
  expand.set_volume_path(driver.work());
  expand.mutable_capacity_range()->set_required_bytes(60 * kMi);
  CHECK(CALL(driver.node(), NodeExpandVolume, expand, &expanded).error_code() ==
        grpc::StatusCode::FAILED_PRECONDITION);
  CHECK(*BlockDeviceSize(target) == 40 * kMi);

  NodeUnpublishVolumeRequest unpublish;
  unpublish.set_volume_id(id);
  unpublish.set_target_path(target);
  NodeUnpublishVolumeResponse unpublished;
  REQUIRE(CALL(driver.node(), NodeUnpublishVolume, unpublish, &unpublished).ok());
  DeleteVolumeRequest del;
  del.set_volume_id(id);
  DeleteVolumeResponse deleted;
  REQUIRE(CALL(driver.controller(), DeleteVolume, del, &deleted).ok());
  CHECK(driver.PoolFiles().empty());
  CHECK(driver.Loops().empty());
}

TEST_CASE("a mkfs past --command-timeout fails the stage and holds nothing", "[csi][integration]") {
  DriverFixture driver("1Gi", {"--command-timeout=1ms"});
  CreateVolumeRequest create;
  create.set_name("pvc-slow-mkfs");
  create.mutable_capacity_range()->set_required_bytes(32 * kMi);
  *create.add_volume_capabilities() = MountCapability();
  CreateVolumeResponse created;
  REQUIRE(CALL(driver.controller(), CreateVolume, create, &created).ok());
  NodeStageVolumeRequest stage;
  stage.set_volume_id(created.volume().volume_id());
  stage.set_staging_target_path(driver.work() + "/staging");
  *stage.mutable_volume_capability() = MountCapability();
  NodeStageVolumeResponse staged;
  for (int attempt = 0; attempt < 2; ++attempt) {
    grpc::Status status = CALL(driver.node(), NodeStageVolume, stage, &staged);
    INFO(status.error_message());
    CHECK(status.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED);
    CHECK(status.error_message().find("mkfs.ext4 did not finish within 1ms") != std::string::npos);
  }
  CHECK(driver.Mounts().empty());
  DeleteVolumeRequest del;
  del.set_volume_id(created.volume().volume_id());
  DeleteVolumeResponse deleted;
  CHECK(CALL(driver.controller(), DeleteVolume, del, &deleted).ok());
  CHECK(driver.Records().empty());
  CHECK(driver.PoolFiles().empty());
}

TEST_CASE("capacity is bounded by the pool directory's filesystem / not just the pool",
          "[csi][integration]") {
  // A 64 MiB tmpfs as the file directory under a 1 GiB pool: the driver must not promise more
  // than the filesystem can hold, counting the blocks its sparse files may still allocate.
  struct Tmpfs {
    std::string dir = "/tmp/ephemera-tmpfs-" + std::to_string(getpid());
    Tmpfs() {
      std::filesystem::create_directories(dir);
      if (mount("tmpfs", dir.c_str(), "tmpfs", 0, "size=64m") != 0) {
        // The destructor of a half-made object does not run: the directory goes here (it was
        // left in /tmp by runs without the right to mount).
        const int error = errno;
        std::filesystem::remove(dir);
        FAIL("mount tmpfs on " << dir << ": " << std::generic_category().message(error));
      }
    }
    ~Tmpfs() {
      StatusOr<std::vector<LoopInfo>> loops = ListLoopsInDir(dir);
      if (loops.ok()) {
        for (const LoopInfo& loop : *loops)
          (void)DetachLoop(loop.device);
      }
      umount2(dir.c_str(), MNT_DETACH);
      std::filesystem::remove_all(dir);
    }
  } tmpfs;
  DriverFixture driver("1Gi", {"--file-dir=" + tmpfs.dir});
  const int64_t start = driver.AvailableCapacity();
  CHECK(start <= 64 * kMi);
  CHECK(start >= 56 * kMi);
  CHECK(start % (4 * kMi) == 0);

  CreateVolumeRequest create;
  create.set_name("pvc-small-fs");
  create.mutable_capacity_range()->set_required_bytes(32 * kMi);
  *create.add_volume_capabilities() = MountCapability();
  CreateVolumeResponse created;
  REQUIRE(CALL(driver.controller(), CreateVolume, create, &created).ok());
  // Sparse, nothing written yet, but its 32 MiB are owed by the filesystem.
  CHECK(driver.AvailableCapacity() <= start - 32 * kMi);
  CreateVolumeRequest too_big = create;
  too_big.set_name("pvc-does-not-fit");
  too_big.mutable_capacity_range()->set_required_bytes(start - 28 * kMi);
  CHECK(CALL(driver.controller(), CreateVolume, too_big, &created).error_code() ==
        grpc::StatusCode::RESOURCE_EXHAUSTED);
  DeleteVolumeRequest del;
  del.set_volume_id(DeriveVolumeId("pvc-small-fs"));
  DeleteVolumeResponse deleted;
  REQUIRE(CALL(driver.controller(), DeleteVolume, del, &deleted).ok());
  CHECK(driver.AvailableCapacity() == start);
}

// The port of the driver's HTTP endpoint, from the last "metrics and health" line of its log
// (klog text: ... "metrics and health" address="127.0.0.1:0" port="40123"); 0 while there is none.
int HttpPort(const DriverFixture& driver) {
  std::ifstream log(driver.log_path());
  int port = 0;
  for (std::string line; std::getline(log, line);) {
    const size_t at = line.find(" port=\"");
    if (line.find("] \"metrics and health\" ") != std::string::npos && at != std::string::npos) {
      port = std::stoi(line.substr(at + 7));
    }
  }
  return port;
}

TEST_CASE(
    "HTTP endpoint: port 0 / metrics pass promtool / healthz and readyz follow the CSI socket",
    "[csi][integration]") {
  DriverFixture driver("512Mi", {"--http-endpoint=127.0.0.1:0"});
  // The endpoint starts after the CSI socket appears: wait for its log line.
  int port = 0;
  for (int i = 0; i < 600 && port == 0; ++i) {
    port = HttpPort(driver);
    if (port == 0) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  REQUIRE(port > 0);
  // A client that connects and says nothing does not hold up the others.
  ephemera::testing::HttpConnection silent;
  REQUIRE(silent.Connect("127.0.0.1", port).ok());
  auto get = [&](const std::string& path) {
    StatusOr<ephemera::testing::HttpReply> reply =
        ephemera::testing::HttpGet("127.0.0.1", port, path);
    INFO(path << ": " << reply.status().ToString());
    REQUIRE(reply.ok());
    return *reply;
  };
  // Liveness: Identity.Probe through the socket file, as the livenessprobe sidecar would.
  const auto health = get("/healthz");
  CHECK(health.status == 200);
  CHECK(health.body == "[+]csi-probe ok\nok\n");
  const auto ready = get("/readyz");
  CHECK(ready.status == 200);
  CHECK(ready.body == "[+]csi-probe ok\n[+]csi-socket ok\nok\n");
  CHECK(get("/nothing").status == 404);

  driver.AvailableCapacity();
  const auto scrape = get("/metrics");
  CHECK(scrape.status == 200);
  CHECK(scrape.content_type == "text/plain; version=0.0.4");
  const std::string& metrics = scrape.body;
  CHECK(metrics.find("ephemera_pmem_capacity_total_bytes 536870912\n") != std::string::npos);
  CHECK(metrics.find("ephemera_pmem_capacity_available_bytes 536870912\n") != std::string::npos);
  CHECK(metrics.find("ephemera_pmem_max_volume_size_bytes 536870912\n") != std::string::npos);
  CHECK(metrics.find("ephemera_pmem_operation_duration_seconds_count{method=\"/csi.v1."
                     "Controller/GetCapacity\",code=\"OK\"} 1") != std::string::npos);
  const std::string file = driver.work() + "/metrics.txt";
  std::ofstream(file) << metrics;
  ExecCommandRunner runner;
  StatusOr<CommandResult> promtool = runner.Run(
      {"sh", "-c", "promtool check metrics < " + file + " 2>&1"}, std::chrono::minutes(2));
  REQUIRE(promtool.ok());
  INFO(promtool->output);
  CHECK(promtool->exit_code == 0);

  // Without its socket file nobody can reach the driver: neither ready nor alive (the kubelet
  // restarts the container, which makes a new socket). The listening socket stays bound to the
  // moved file, so moving it back makes the driver alive and ready again.
  const std::string socket = driver.work() + "/csi.sock";
  REQUIRE(std::rename(socket.c_str(), (socket + ".moved").c_str()) == 0);
  const auto unready = get("/readyz");
  CHECK(unready.status == 503);
  CHECK(unready.body.find("[-]csi-socket failed: the CSI socket " + socket + " is missing") !=
        std::string::npos);
  const auto dead = get("/healthz");
  CHECK(dead.status == 503);
  CHECK(dead.body.find("[-]csi-probe failed: Probe on the CSI socket " + socket + ": ") !=
        std::string::npos);
  REQUIRE(std::rename((socket + ".moved").c_str(), socket.c_str()) == 0);
  CHECK(get("/healthz").status == 200);
  CHECK(get("/readyz").status == 200);
}

// The driver recovers its state before it serves; a volume that was being deleted is erased then,
// minutes for a big one. All that time /healthz must say alive (else the kubelet kills the driver
// and the erase starts again from zero, for ever) and /readyz not ready.
TEST_CASE("a long erase at start: alive and not ready while it recovers, then serving",
          "[csi][integration]") {
  DriverFixture driver("2Gi", {"--http-endpoint=127.0.0.1:0"});
  CreateVolumeRequest create;
  create.set_name("pvc-long-erase");
  create.mutable_capacity_range()->set_required_bytes(1024 * kMi);
  *create.add_volume_capabilities() = MountCapability("ext4");
  CreateVolumeResponse created;
  REQUIRE(CALL(driver.controller(), CreateVolume, create, &created).ok());
  const std::string id = created.volume().volume_id();
  // 1 GiB of data for the erase to overwrite, then the driver dies while deleting the volume.
  const std::string file = driver.file_dir() + "/" + id + ".img";
  {
    std::ofstream out(file, std::ios::in | std::ios::out | std::ios::binary);
    REQUIRE(out.good());
    const std::string chunk(size_t{1} << 20, 'd');
    for (int i = 0; i < 1024; ++i)
      out.write(chunk.data(), static_cast<std::streamsize>(chunk.size()));
    REQUIRE(out.good());
  }
  driver.Kill(SIGKILL);
  const std::string record = driver.state_dir() + "/" + id + ".json";
  std::string text;
  {
    std::ifstream in(record);
    text.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  }
  const size_t at = text.find("\"phase\": \"ready\"");
  REQUIRE(at != std::string::npos);
  text.replace(at, std::string("\"phase\": \"ready\"").size(), "\"phase\": \"deleting\"");
  std::ofstream(record, std::ios::trunc) << text;

  // What the kubelet's probes would see while the driver starts.
  struct Sample {
    int healthz;
    int readyz;
    std::string readyz_body;
  };
  std::vector<Sample> samples;
  std::atomic<bool> stop{false};
  std::thread prober([&] {
    while (!stop) {
      const int port = HttpPort(driver);  // the last one logged: the old driver's is dead
      if (port > 0) {
        auto health = ephemera::testing::HttpGet("127.0.0.1", port, "/healthz");
        auto ready = ephemera::testing::HttpGet("127.0.0.1", port, "/readyz");
        if (health.ok() && ready.ok())
          samples.push_back({health->status, ready->status, ready->body});
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
  });
  const auto start = std::chrono::steady_clock::now();
  driver.Start();  // returns when the CSI socket is there
  const auto took = std::chrono::steady_clock::now() - start;
  stop = true;
  prober.join();
  INFO("start with the erase took "
       << std::chrono::duration_cast<std::chrono::milliseconds>(took).count() << " ms; "
       << samples.size() << " samples");
  int recovering = 0;
  for (const Sample& sample : samples) {
    CHECK(sample.healthz == 200);
    if (sample.readyz == 503 &&
        sample.readyz_body.find("[-]csi-socket failed: starting: recovering the volumes' state") !=
            std::string::npos) {
      ++recovering;
    }
  }
  CHECK(recovering > 0);
  // Erased and gone, record too; then serving and ready.
  CHECK(!std::filesystem::exists(file));
  CHECK(!std::filesystem::exists(record));
  const int port = HttpPort(driver);
  bool ready = false;
  for (int i = 0; i < 100 && !ready; ++i) {
    auto reply = ephemera::testing::HttpGet("127.0.0.1", port, "/readyz");
    ready = reply.ok() && reply->status == 200;
    if (!ready) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  CHECK(ready);
}

// The state directory's filesystem full (a 1 MiB tmpfs here; by default the file pool shares it):
// creates fail with a clear RESOURCE_EXHAUSTED and leave nothing, deletes still free their space
// (without the deleting mark, which needs a new file), and once there is room again everything
// works and nothing was lost.
TEST_CASE("a full state filesystem: clear errors, deletes still work, nothing lost",
          "[csi][integration]") {
  DriverFixture driver("512Mi");
  auto create = [&](const std::string& name, CreateVolumeResponse* created) {
    CreateVolumeRequest request;
    request.set_name(name);
    request.mutable_capacity_range()->set_required_bytes(16 * kMi);
    *request.add_volume_capabilities() = MountCapability("ext4");
    return CALL(driver.controller(), CreateVolume, request, created);
  };
  CreateVolumeResponse kept;
  CreateVolumeResponse doomed;
  REQUIRE(create("pvc-kept", &kept).ok());
  REQUIRE(create("pvc-doomed", &doomed).ok());
  // The records move onto a small tmpfs mounted over the state directory.
  driver.Kill(SIGKILL);
  const std::string state = driver.state_dir();
  const std::string saved = driver.work() + "/state-saved";
  std::filesystem::rename(state, saved);
  std::filesystem::create_directory(state);
  REQUIRE(mount("tmpfs", state.c_str(), "tmpfs", 0, "size=1m,mode=0700") == 0);
  for (const auto& entry : std::filesystem::directory_iterator(saved))
    std::filesystem::copy(entry.path(), state + "/" + entry.path().filename().string());
  driver.Start();
  // Fill it.
  const std::string filler = state + "/filler";
  {
    std::ofstream out(filler, std::ios::binary);
    const std::string block(4096, 'f');
    for (int i = 0; i < 1024 && out.good(); ++i) {
      out.write(block.data(), static_cast<std::streamsize>(block.size()));
      out.flush();
    }
  }
  std::vector<std::string> before = driver.Records();

  CreateVolumeResponse refused;
  const grpc::Status full = create("pvc-refused", &refused);
  CHECK(full.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED);
  CHECK(full.error_message().find("the state directory's filesystem is full") != std::string::npos);
  CHECK(driver.Records() == before);
  CHECK(driver.PoolFiles().size() == 2);

  DeleteVolumeRequest remove;
  remove.set_volume_id(doomed.volume().volume_id());
  DeleteVolumeResponse removed;
  const grpc::Status deleted = CALL(driver.controller(), DeleteVolume, remove, &removed);
  CHECK(deleted.error_message() == "");
  CHECK(deleted.ok());
  CHECK(driver.PoolFiles().size() == 1);
  CHECK(driver.Records().size() == before.size() - 1);

  // Room again: the refused volume is made, the kept one is still there, after a restart too.
  std::filesystem::remove(filler);
  CHECK(create("pvc-refused", &refused).ok());
  driver.Restart();
  ListVolumesResponse listed;
  REQUIRE(CALL(driver.controller(), ListVolumes, ListVolumesRequest(), &listed).ok());
  std::set<std::string> ids;
  for (const auto& entry : listed.entries())
    ids.insert(entry.volume().volume_id());
  CHECK(ids == std::set<std::string>{kept.volume().volume_id(), refused.volume().volume_id()});
}

// What the kubelet does on the registration socket, one connection per call.
grpc::Status KubeletCall(const std::string& socket, auto&& call) {
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  auto stub = ::pluginregistration::Registration::NewStub(
      grpc::CreateCustomChannel("unix:" + socket, grpc::InsecureChannelCredentials(), args));
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  return call(*stub, &context);
}

grpc::Status Notify(const std::string& socket, bool registered, const std::string& error) {
  return KubeletCall(socket, [&](auto& stub, grpc::ClientContext* context) {
    ::pluginregistration::RegistrationStatus status;
    status.set_plugin_registered(registered);
    status.set_error(error);
    ::pluginregistration::RegistrationStatusResponse response;
    return stub.NotifyRegistrationStatus(context, status, &response);
  });
}

std::string ReadAll(const std::string& path) {
  std::ifstream in(path);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

TEST_CASE(
    "kubelet registration: the flags of manifests/driver.yaml / refusal shown / socket "
    "re-created / removed at exit",
    "[csi][integration][registration]") {
  // The kubelet's plugins_registry, as the DaemonSet mounts it at /registration.
  std::string pattern = "/tmp/ephemera-registry-XXXXXX";
  REQUIRE(mkdtemp(pattern.data()) != nullptr);
  const std::string registry = pattern;
  struct Cleanup {
    std::string dir;
    ~Cleanup() {
      std::error_code ec;
      std::filesystem::remove_all(dir, ec);
    }
  } cleanup{registry};
  const std::string kubelet_path = "/var/lib/kubelet/plugins/pmem-csi.ephemera.io/csi.sock";
  DriverFixture driver("256Mi",
                       {"--kubelet-registration-path=" + kubelet_path,
                        "--plugin-registration-path=" + registry, "--http-endpoint=127.0.0.1:0"});
  int port = 0;
  for (int i = 0; i < 600 && port == 0; ++i) {
    port = HttpPort(driver);
    if (port == 0) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  REQUIRE(port > 0);
  auto get = [&](const std::string& path) {
    StatusOr<ephemera::testing::HttpReply> reply =
        ephemera::testing::HttpGet("127.0.0.1", port, path);
    INFO(path << ": " << reply.status().ToString());
    REQUIRE(reply.ok());
    return *reply;
  };
  auto metric = [&](const std::string& name) {
    const std::string text = get("/metrics").body;
    const size_t at = text.find("\n" + name + " ");
    return at == std::string::npos
               ? std::string("none")
               : text.substr(at + name.size() + 2, text.find('\n', at + 1) - at - name.size() - 2);
  };
  const std::string socket = registry + "/pmem-csi.ephemera.io-reg.sock";
  struct stat st {};
  REQUIRE(stat(socket.c_str(), &st) == 0);
  CHECK(S_ISSOCK(st.st_mode));
  CHECK((st.st_mode & 0777) == 0600);

  // Started, but the kubelet has not registered it: alive, not ready.
  CHECK(get("/healthz").status == 200);
  auto ready = get("/readyz");
  CHECK(ready.status == 503);
  CHECK(ready.body.find("[-]kubelet-registration failed: the kubelet has not registered the "
                        "driver yet") != std::string::npos);

  // The kubelet's calls: GetInfo here, NodeGetInfo on the endpoint it names, then the verdict.
  ::pluginregistration::PluginInfo info;
  REQUIRE(KubeletCall(socket, [&](auto& stub, grpc::ClientContext* context) {
            return stub.GetInfo(context, ::pluginregistration::InfoRequest(), &info);
          }).ok());
  CHECK(info.type() == "CSIPlugin");
  CHECK(info.name() == "pmem-csi.ephemera.io");
  CHECK(info.endpoint() == kubelet_path);
  CHECK(std::vector<std::string>(info.supported_versions().begin(),
                                 info.supported_versions().end()) ==
        std::vector<std::string>{"1.0.0"});
  NodeGetInfoResponse node_info;
  REQUIRE(CALL(driver.node(), NodeGetInfo, NodeGetInfoRequest(), &node_info).ok());
  CHECK(node_info.node_id() == "it-node");

  REQUIRE(Notify(socket, false, "x").ok());
  ready = get("/readyz");
  CHECK(ready.status == 503);
  CHECK(ready.body.find("[-]kubelet-registration failed: the kubelet refused the registration: "
                        "x\n") != std::string::npos);
  CHECK(get("/healthz").status == 200);  // kept serving for the kubelet's retries
  CHECK(metric("ephemera_pmem_kubelet_registered") == "0");
  CHECK(metric("ephemera_pmem_kubelet_registration_refusals_total") == "1");
  CHECK(ReadAll(driver.log_path())
            .find("] \"the kubelet refused the registration; still serving for its retries\" "
                  "err=\"FAILED_PRECONDITION: x\"") != std::string::npos);

  REQUIRE(Notify(socket, true, "").ok());
  ready = get("/readyz");
  CHECK(ready.status == 200);
  CHECK(ready.body.find("[+]kubelet-registration ok\n") != std::string::npos);
  CHECK(metric("ephemera_pmem_kubelet_registered") == "1");

  // The kubelet wiped its directory: the socket is back within the 10 s check interval.
  REQUIRE(unlink(socket.c_str()) == 0);
  const auto removed = std::chrono::steady_clock::now();
  while (stat(socket.c_str(), &st) != 0 &&
         std::chrono::steady_clock::now() - removed < std::chrono::seconds(40)) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  REQUIRE(stat(socket.c_str(), &st) == 0);
  CHECK(S_ISSOCK(st.st_mode));
  CHECK(ReadAll(driver.log_path()).find("the registration socket is gone; re-creating it") !=
        std::string::npos);
  CHECK(get("/readyz").body.find(
            "[-]kubelet-registration failed: the kubelet has not registered") != std::string::npos);
  REQUIRE(KubeletCall(socket, [&](auto& stub, grpc::ClientContext* context) {
            return stub.GetInfo(context, ::pluginregistration::InfoRequest(), &info);
          }).ok());
  REQUIRE(Notify(socket, true, "").ok());
  CHECK(get("/readyz").status == 200);

  // SIGTERM: the socket goes, so the kubelet unregisters the driver.
  driver.Kill(SIGTERM);
  CHECK(access(socket.c_str(), F_OK) != 0);
  CHECK(access((driver.work() + "/csi.sock").c_str(), F_OK) != 0);
  CHECK(std::filesystem::is_empty(registry));
}

// Makes a CA and a server and a client certificate signed by it, and a stranger's client
// certificate signed by another CA, with the openssl command.
void MakeCertificates(const std::string& dir) {
  ExecCommandRunner runner;
  auto run = [&](const std::vector<std::string>& argv) {
    StatusOr<CommandResult> r = runner.Run(argv, std::chrono::minutes(2));
    REQUIRE(r.ok());
    INFO(r->output);
    REQUIRE(r->exit_code == 0);
  };
  // DIR/NAME.EXT
  auto file = [&](const std::string& name, const char* ext) { return dir + "/" + name + ext; };
  for (const std::string ca : {"ca", "otherca"}) {
    run({"openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
         "/CN=" + ca, "-keyout", file(ca, ".key"), "-out", file(ca, ".crt")});
  }
  std::ofstream(dir + "/san.ext") << "subjectAltName=DNS:localhost,IP:127.0.0.1\n";
  for (const auto& [name, ca] : std::vector<std::pair<std::string, std::string>>{
           {"server", "ca"}, {"client", "ca"}, {"stranger", "otherca"}}) {
    run({"openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=" + name, "-keyout",
         file(name, ".key"), "-out", file(name, ".csr")});
    run({"openssl", "x509", "-req", "-in", file(name, ".csr"), "-CA", file(ca, ".crt"), "-CAkey",
         file(ca, ".key"), "-CAcreateserial", "-days", "1", "-extfile", dir + "/san.ext", "-out",
         file(name, ".crt")});
  }
}

std::string Slurp(const std::string& path) {
  std::ifstream in(path);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

std::shared_ptr<grpc::Channel> TlsChannel(const std::string& dir, int port,
                                          const std::string& client) {
  grpc::SslCredentialsOptions options;
  options.pem_root_certs = Slurp(dir + "/ca.crt");
  if (!client.empty()) {
    options.pem_private_key = Slurp(dir + "/" + client + ".key");
    options.pem_cert_chain = Slurp(dir + "/" + client + ".crt");
  }
  return grpc::CreateChannel("localhost:" + std::to_string(port), grpc::SslCredentials(options));
}

TEST_CASE("capacity listener: mutual TLS / Identity + GetCapacity + NodeGetInfo only",
          "[csi][integration]") {
  std::string certs = "/tmp/ephemera-certs-" + std::to_string(getpid());
  std::filesystem::create_directories(certs);
  struct Cleanup {
    std::string dir;
    ~Cleanup() { std::filesystem::remove_all(dir); }
  } cleanup{certs};
  MakeCertificates(certs);
  const int port = 20000 + static_cast<int>(getpid() % 1000);
  DriverFixture driver(
      "512Mi",
      {"--capacity-listen=127.0.0.1:" + std::to_string(port), "--tls-ca=" + certs + "/ca.crt",
       "--tls-cert=" + certs + "/server.crt", "--tls-key=" + certs + "/server.key"});
  auto deadline = [] { return std::chrono::system_clock::now() + std::chrono::seconds(10); };
  {
    auto channel = TlsChannel(certs, port, "client");
    auto controller = Controller::NewStub(channel);
    grpc::ClientContext c1;
    c1.set_deadline(deadline());
    GetCapacityResponse capacity;
    grpc::Status status = controller->GetCapacity(&c1, GetCapacityRequest(), &capacity);
    REQUIRE(status.error_message() == "");
    CHECK(capacity.available_capacity() == 512 * kMi);
    grpc::ClientContext c2;
    c2.set_deadline(deadline());
    NodeGetInfoResponse info;
    REQUIRE(Node::NewStub(channel)->NodeGetInfo(&c2, NodeGetInfoRequest(), &info).ok());
    CHECK(info.node_id() == "it-node");
    grpc::ClientContext c3;
    c3.set_deadline(deadline());
    GetPluginInfoResponse plugin;
    REQUIRE(Identity::NewStub(channel)->GetPluginInfo(&c3, GetPluginInfoRequest(), &plugin).ok());
    CHECK(plugin.name() == "pmem-csi.ephemera.io");
    // Nothing that changes state is served there.
    grpc::ClientContext c4;
    c4.set_deadline(deadline());
    CreateVolumeRequest create;
    create.set_name("x");
    CreateVolumeResponse created;
    CHECK(controller->CreateVolume(&c4, create, &created).error_code() ==
          grpc::StatusCode::UNIMPLEMENTED);
    CHECK(driver.PoolFiles().empty());
  }
  for (const std::string& client : {std::string(), std::string("stranger")}) {
    INFO("client certificate: " << (client.empty() ? "none" : client));
    auto controller = Controller::NewStub(TlsChannel(certs, port, client));
    grpc::ClientContext context;
    context.set_deadline(deadline());
    GetCapacityResponse capacity;
    CHECK_FALSE(controller->GetCapacity(&context, GetCapacityRequest(), &capacity).ok());
  }
}

}  // namespace
}  // namespace ephemera::csi::testing
