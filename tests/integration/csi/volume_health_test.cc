// Volume health through NodeGetVolumeStats, against the real driver binary with the file backend
// (root): published volumes broken the ways a node breaks them — the backing file deleted, the
// filesystem remounted read-only, an ext4 error recorded, an xfs shut down — each reported as an
// abnormal volume_condition that says what happened, and healthy again where it can be undone.
#include <sys/mount.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>

#include "csi/exec_command_runner.h"
#include "csi/mount_util.h"
#include "driver_fixture.h"
#include "published_volume.h"

namespace ephemera::csi::testing {
namespace {

using namespace ::csi::v1;  // NOLINT(google-build-using-namespace)

constexpr int64_t kMi = int64_t{1024} * 1024;

VolumeCondition Condition(DriverFixture& driver, const std::string& id, const std::string& path,
                          NodeGetVolumeStatsResponse* out = nullptr) {
  NodeGetVolumeStatsRequest request;
  request.set_volume_id(id);
  request.set_volume_path(path);
  NodeGetVolumeStatsResponse response;
  grpc::Status status = CALL(driver.node(), NodeGetVolumeStats, request, &response);
  REQUIRE(status.error_message() == "");
  if (out != nullptr) *out = response;
  return response.volume_condition();
}

bool NodeOffersVolumeCondition(DriverFixture& driver) {
  NodeGetCapabilitiesRequest request;
  NodeGetCapabilitiesResponse response;
  REQUIRE(CALL(driver.node(), NodeGetCapabilities, request, &response).ok());
  for (const auto& capability : response.capabilities()) {
    if (capability.rpc().type() == NodeServiceCapability::RPC::VOLUME_CONDITION) return true;
  }
  return false;
}

// /sys/fs/ext4/<loopN> of the filesystem mounted at `path`.
std::string Ext4Sysfs(const std::string& path) {
  StatusOr<std::optional<MountEntry>> mounted = FindMount(path);
  REQUIRE(mounted.ok());
  REQUIRE(mounted->has_value());
  std::filesystem::path device =
      std::filesystem::read_symlink("/sys/dev/block/" + (*mounted)->major_minor);
  return "/sys/fs/ext4/" + device.filename().string();
}

TEST_CASE("volume health: ext4 remounted read-only, then an error recorded",
          "[csi][integration][health]") {
  DriverFixture driver("1Gi");
  REQUIRE(NodeOffersVolumeCondition(driver));
  Published volume(driver, "pvc-health-ext4", "ext4", 64 * kMi);
  const std::string& id = volume.volume.volume_id();
  NodeGetVolumeStatsResponse stats;
  VolumeCondition condition = Condition(driver, id, volume.target, &stats);
  CHECK_FALSE(condition.abnormal());
  CHECK(condition.message() == "healthy");
  CHECK(stats.usage_size() == 2);

  // Read-only under the pod's read-write mount (what errors=remount-ro does after an error).
  REQUIRE(mount(nullptr, volume.staging.c_str(), nullptr, MS_REMOUNT | MS_RDONLY, nullptr) == 0);
  {
    std::ofstream out(volume.target + "/file");
    CHECK_FALSE(out.good());  // EROFS: the pod's writes fail
  }
  condition = Condition(driver, id, volume.target, &stats);
  CHECK(condition.abnormal());
  CHECK(condition.message().find("the filesystem is read-only") != std::string::npos);
  CHECK(stats.usage_size() == 2);  // the usage is still there
  // Undone: healthy again.
  REQUIRE(mount(nullptr, volume.staging.c_str(), nullptr, MS_REMOUNT, nullptr) == 0);
  condition = Condition(driver, id, volume.target);
  CHECK_FALSE(condition.abnormal());

  // An error the filesystem found (the kernel's test hook: ext4_error as if a check failed).
  {
    std::ofstream trigger(Ext4Sysfs(volume.target) + "/trigger_fs_error");
    REQUIRE(trigger.good());
    trigger << "test\n";
  }
  // ext4 counts an error of a filesystem that goes on (errors=continue) into the superblock, where
  // sysfs reads it, from a work item a little later: ask as kubelet would, again, for up to 10 s.
  for (int i = 0; i < 100; ++i) {
    condition = Condition(driver, id, volume.target);
    if (condition.abnormal()) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  INFO(condition.message());
  CHECK(condition.abnormal());
  CHECK(condition.message().find("ext4 has recorded 1 error(s)") != std::string::npos);
  {
    std::ifstream log(driver.log_path());
    std::string text((std::istreambuf_iterator<char>(log)), std::istreambuf_iterator<char>());
    CHECK(text.find("\"volume abnormal\" volume=\"" + id + "\"") != std::string::npos);
  }
  volume.Remove();
  CHECK(driver.Loops().empty());
}

TEST_CASE("volume health: an xfs shut down fails I/O and is reported",
          "[csi][integration][health]") {
  DriverFixture driver("1Gi");
  Published volume(driver, "pvc-health-xfs", "xfs", 320 * kMi);
  const std::string& id = volume.volume.volume_id();
  CHECK_FALSE(Condition(driver, id, volume.target).abnormal());
  // What xfs does itself after a metadata or log I/O error.
  ExecCommandRunner runner;
  StatusOr<CommandResult> shutdown =
      runner.Run({"xfs_io", "-x", "-c", "shutdown", volume.staging}, std::chrono::seconds(30));
  REQUIRE(shutdown.ok());
  REQUIRE(shutdown->exit_code == 0);
  VolumeCondition condition = Condition(driver, id, volume.target);
  INFO(condition.message());
  CHECK(condition.abnormal());
  CHECK(condition.message().find("fails I/O") != std::string::npos);
  CHECK(condition.message().find("Input/output error") != std::string::npos);
  volume.Remove();  // a shut-down xfs still unmounts
  CHECK(driver.Loops().empty());
  CHECK(driver.PoolFiles().empty());
}

TEST_CASE("volume health: the backing file deleted under a mounted and a raw block volume",
          "[csi][integration][health]") {
  DriverFixture driver("1Gi");
  Published volume(driver, "pvc-health-gone", "ext4", 64 * kMi);
  const std::string& id = volume.volume.volume_id();
  const std::string file = driver.file_dir() + "/" + id + ".img";
  REQUIRE(unlink(file.c_str()) == 0);
  NodeGetVolumeStatsResponse stats;
  VolumeCondition condition = Condition(driver, id, volume.target, &stats);
  INFO(condition.message());
  CHECK(condition.abnormal());
  CHECK(condition.message().starts_with("the volume's backing file " + file + " was deleted"));
  CHECK(stats.usage_size() == 2);  // the filesystem still answers, until it is unmounted

  // Raw block: the device node published on a file.
  CreateVolumeRequest create;
  create.set_name("pvc-health-block");
  create.mutable_capacity_range()->set_required_bytes(16 * kMi);
  create.add_volume_capabilities()->mutable_block();
  create.mutable_volume_capabilities(0)->mutable_access_mode()->set_mode(
      VolumeCapability::AccessMode::SINGLE_NODE_WRITER);
  CreateVolumeResponse created;
  REQUIRE(CALL(driver.controller(), CreateVolume, create, &created).ok());
  const std::string block_id = created.volume().volume_id();
  NodePublishVolumeRequest publish;
  publish.set_volume_id(block_id);
  publish.set_staging_target_path(driver.work() + "/staging-block");
  publish.set_target_path(driver.work() + "/target-block");
  *publish.mutable_volume_capability() = create.volume_capabilities(0);
  NodePublishVolumeResponse published;
  REQUIRE(CALL(driver.node(), NodePublishVolume, publish, &published).ok());
  CHECK_FALSE(Condition(driver, block_id, publish.target_path()).abnormal());
  REQUIRE(unlink((driver.file_dir() + "/" + block_id + ".img").c_str()) == 0);
  condition = Condition(driver, block_id, publish.target_path());
  CHECK(condition.abnormal());
  CHECK(condition.message().find("was deleted") != std::string::npos);

  // Taken down as kubelet would: the deleted files' loop devices go too.
  NodeUnpublishVolumeRequest unpublish;
  unpublish.set_volume_id(block_id);
  unpublish.set_target_path(publish.target_path());
  NodeUnpublishVolumeResponse unpublished;
  REQUIRE(CALL(driver.node(), NodeUnpublishVolume, unpublish, &unpublished).ok());
  DeleteVolumeRequest del;
  del.set_volume_id(block_id);
  DeleteVolumeResponse deleted;
  REQUIRE(CALL(driver.controller(), DeleteVolume, del, &deleted).ok());
  volume.Remove();
  CHECK(driver.Loops().empty());
  CHECK(driver.Records().empty());
}

}  // namespace
}  // namespace ephemera::csi::testing
