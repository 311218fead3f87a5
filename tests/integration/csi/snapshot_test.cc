// Snapshots and volumes from a data source with the file backend, against the real driver binary
// on loop devices, mkfs and mounts (root): data taken from a mounted volume comes back equal in a
// restored (larger: the filesystem grows at stage) and a cloned volume, holes stay holes, the pool
// accounts for the snapshot's allocated size, and a SIGKILL in the middle of a copy leaves nothing
// that the restart takes for a finished snapshot.
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <thread>

#include "csi/volume_id.h"
#include "driver_fixture.h"
#include "published_volume.h"

namespace ephemera::csi::testing {
namespace {

using namespace ::csi::v1;  // NOLINT(google-build-using-namespace)

constexpr int64_t kMi = int64_t{1024} * 1024;

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

// Compared in pieces: the files are a GiB.
bool FilesEqual(const std::string& a, const std::string& b) {
  std::ifstream in_a(a, std::ios::binary);
  std::ifstream in_b(b, std::ios::binary);
  std::string buffer_a(kMi, '\0');
  std::string buffer_b(kMi, '\0');
  while (in_a && in_b) {
    in_a.read(buffer_a.data(), kMi);
    in_b.read(buffer_b.data(), kMi);
    if (in_a.gcount() != in_b.gcount() || buffer_a != buffer_b) return false;
  }
  return !in_a && !in_b;
}

std::string RandomBytes(size_t size, unsigned seed) {
  std::mt19937_64 random(seed);
  std::string data(size, '\0');
  for (size_t i = 0; i + 8 <= size; i += 8) {
    uint64_t value = random();
    std::memcpy(data.data() + i, &value, 8);
  }
  return data;
}

int64_t FsTotalBytes(const std::string& path) {
  struct statvfs fs {};
  REQUIRE(statvfs(path.c_str(), &fs) == 0);
  return static_cast<int64_t>(fs.f_blocks) * static_cast<int64_t>(fs.f_frsize);
}

Snapshot TakeSnapshot(DriverFixture& driver, const std::string& name, const std::string& source) {
  CreateSnapshotRequest request;
  request.set_name(name);
  request.set_source_volume_id(source);
  CreateSnapshotResponse response;
  grpc::Status status = CALL(driver.controller(), CreateSnapshot, request, &response);
  REQUIRE(status.error_message() == "");
  return response.snapshot();
}

void DeleteSnapshot(DriverFixture& driver, const std::string& id) {
  DeleteSnapshotRequest request;
  request.set_snapshot_id(id);
  DeleteSnapshotResponse response;
  REQUIRE(CALL(driver.controller(), DeleteSnapshot, request, &response).ok());
}

void SnapshotRestoreClone(const std::string& fs_type, int64_t size, int64_t restored_size) {
  DriverFixture driver("2Gi");
  const int64_t initial = driver.AvailableCapacity();
  Published source(driver, "pvc-src-" + fs_type, fs_type, size);
  const std::string data = RandomBytes(8 * kMi, 14);
  {
    // Written, not synced: the snapshot must see what the filesystem holds in memory.
    std::ofstream out(source.target + "/data.bin", std::ios::binary);
    out << data;
  }
  const int64_t before = driver.AvailableCapacity();

  Snapshot snapshot = TakeSnapshot(driver, "snap-" + fs_type, source.volume.volume_id());
  CHECK(snapshot.ready_to_use());
  CHECK(snapshot.size_bytes() == size);
  CHECK(snapshot.source_volume_id() == source.volume.volume_id());
  CHECK(snapshot.creation_time().seconds() > 1700000000);
  // The copy keeps the holes: it allocates about what the filesystem wrote, not the volume.
  struct stat st {};
  const std::string copy = driver.file_dir() + "/" + snapshot.snapshot_id() + ".snap";
  REQUIRE(stat(copy.c_str(), &st) == 0);
  const int64_t allocated = static_cast<int64_t>(st.st_blocks) * 512;
  INFO("snapshot allocates " << allocated << " bytes of " << st.st_size);
  CHECK(st.st_size == size);
  CHECK(allocated >= 8 * kMi);
  CHECK(allocated < 8 * kMi + size / 2);
  // The pool gives the snapshot what it allocated, rounded up to the 4 MiB unit.
  const int64_t charged = (allocated + 4 * kMi - 1) / (4 * kMi) * (4 * kMi);
  CHECK(driver.AvailableCapacity() == before - charged);

  // Written after the snapshot: in a clone of the volume, not in a restore of the snapshot.
  {
    std::ofstream out(source.target + "/later.txt");
    out << "after the snapshot";
  }

  VolumeContentSource from_snapshot;
  from_snapshot.mutable_snapshot()->set_snapshot_id(snapshot.snapshot_id());
  Published restored(driver, "pvc-restored-" + fs_type, fs_type, restored_size, &from_snapshot);
  CHECK(restored.volume.capacity_bytes() == restored_size);
  CHECK(restored.volume.content_source().snapshot().snapshot_id() == snapshot.snapshot_id());
  CHECK(restored.volume.accessible_topology(0).segments().at("pmem-csi.ephemera.io/node") ==
        "it-node");
  CHECK(ReadFile(restored.target + "/data.bin") == data);
  CHECK_FALSE(std::filesystem::exists(restored.target + "/later.txt"));
  // Larger than the snapshot: the filesystem grew to the device when it was staged.
  INFO(fs_type << " restored filesystem: " << FsTotalBytes(restored.target) << " bytes");
  CHECK(FsTotalBytes(restored.target) > FsTotalBytes(source.target) + (restored_size - size) / 2);

  VolumeContentSource from_volume;
  from_volume.mutable_volume()->set_volume_id(source.volume.volume_id());
  Published clone(driver, "pvc-clone-" + fs_type, fs_type, size, &from_volume);
  CHECK(clone.volume.content_source().volume().volume_id() == source.volume.volume_id());
  CHECK(ReadFile(clone.target + "/data.bin") == data);
  CHECK(ReadFile(clone.target + "/later.txt") == "after the snapshot");

  // Smaller than the source, and sources that are not there.
  CreateVolumeRequest small;
  small.set_name("pvc-small");
  small.mutable_capacity_range()->set_limit_bytes(size - 4 * kMi);
  *small.add_volume_capabilities() = MountCapability(fs_type);
  *small.mutable_volume_content_source() = from_snapshot;
  CreateVolumeResponse response;
  CHECK(CALL(driver.controller(), CreateVolume, small, &response).error_code() ==
        grpc::StatusCode::OUT_OF_RANGE);
  small.clear_capacity_range();
  small.mutable_volume_content_source()->mutable_snapshot()->set_snapshot_id("snap-none");
  CHECK(CALL(driver.controller(), CreateVolume, small, &response).error_code() ==
        grpc::StatusCode::NOT_FOUND);

  // Everything goes; the pool is back where it started.
  DeleteSnapshot(driver, snapshot.snapshot_id());
  clone.Remove();
  restored.Remove();
  source.Remove();
  CHECK(driver.PoolFiles().empty());
  CHECK(driver.Records().empty());
  CHECK(driver.Loops().empty());
  CHECK(driver.AvailableCapacity() == initial);
}

TEST_CASE("ext4: a snapshot of a mounted volume restores (larger) and clones with equal data",
          "[csi][integration][snapshots]") {
  SnapshotRestoreClone("ext4", 64 * kMi, 128 * kMi);
}

TEST_CASE("xfs: a snapshot of a mounted volume restores (larger) and clones with equal data",
          "[csi][integration][snapshots]") {
  SnapshotRestoreClone("xfs", 320 * kMi, 400 * kMi);
}

TEST_CASE("SIGKILL in the middle of a snapshot's copy: the restart leaves no snapshot",
          "[csi][integration][snapshots][crash]") {
  DriverFixture driver("3Gi");
  CreateVolumeRequest create;
  create.set_name("pvc-big");
  create.mutable_capacity_range()->set_required_bytes(1024 * kMi);
  create.add_volume_capabilities()->mutable_block();
  create.mutable_volume_capabilities(0)->mutable_access_mode()->set_mode(
      VolumeCapability::AccessMode::SINGLE_NODE_WRITER);
  CreateVolumeResponse created;
  REQUIRE(CALL(driver.controller(), CreateVolume, create, &created).ok());
  const std::string volume = created.volume().volume_id();
  {
    // 512 MiB of data in the volume's file (what a pod would have written through the device).
    int fd = open((driver.file_dir() + "/" + volume + ".img").c_str(), O_WRONLY | O_CLOEXEC);
    REQUIRE(fd >= 0);
    const std::string chunk = RandomBytes(4 * kMi, 3);
    for (int64_t offset = 0; offset < 512 * kMi; offset += 4 * kMi) {
      REQUIRE(pwrite(fd, chunk.data(), chunk.size(), offset * 2) ==
              static_cast<ssize_t>(chunk.size()));
    }
    REQUIRE(fsync(fd) == 0);
    close(fd);
  }
  const int64_t before = driver.AvailableCapacity();
  const std::string id = DeriveSnapshotId("snap-killed");
  const std::string partial = driver.file_dir() + "/" + id + ".snap.partial";
  std::thread caller([&] {
    CreateSnapshotRequest request;
    request.set_name("snap-killed");
    request.set_source_volume_id(volume);
    CreateSnapshotResponse response;
    grpc::Status status = CALL(driver.controller(), CreateSnapshot, request, &response);
    CHECK_FALSE(status.ok());  // the driver died under it
  });
  // Kill as soon as the copy has begun (the 512 MiB copy takes far longer than this loop's step).
  bool seen = false;
  for (int i = 0; i < 20000 && !seen; ++i) {
    struct stat st {};
    seen = stat(partial.c_str(), &st) == 0 && st.st_blocks > 0;
    if (!seen) std::this_thread::sleep_for(std::chrono::microseconds(500));
  }
  driver.Kill(9);
  caller.join();
  REQUIRE(seen);
  CHECK(std::filesystem::exists(partial));
  CHECK_FALSE(std::filesystem::exists(driver.file_dir() + "/" + id + ".snap"));
  const std::string record = ReadFile(driver.state_dir() + "/snapshots/" + id + ".json");
  CHECK(record.find("\"creating\"") != std::string::npos);

  driver.Start();
  CHECK(ReadFile(driver.log_path()).find("rolled back interrupted snapshot") != std::string::npos);
  CHECK_FALSE(std::filesystem::exists(partial));
  CHECK_FALSE(std::filesystem::exists(driver.state_dir() + "/snapshots/" + id + ".json"));
  ListSnapshotsRequest list;
  ListSnapshotsResponse listed;
  REQUIRE(CALL(driver.controller(), ListSnapshots, list, &listed).ok());
  CHECK(listed.entries().empty());
  CHECK(driver.AvailableCapacity() == before);

  // Taken again, whole this time; then everything goes.
  Snapshot snapshot = TakeSnapshot(driver, "snap-killed", volume);
  CHECK(snapshot.snapshot_id() == id);
  CHECK(FilesEqual(driver.file_dir() + "/" + id + ".snap",
                   driver.file_dir() + "/" + volume + ".img"));
  DeleteSnapshot(driver, id);
  DeleteVolumeRequest del;
  del.set_volume_id(volume);
  DeleteVolumeResponse deleted;
  REQUIRE(CALL(driver.controller(), DeleteVolume, del, &deleted).ok());
  CHECK(driver.PoolFiles().empty());
  CHECK(driver.Records().empty());
}

}  // namespace
}  // namespace ephemera::csi::testing
