// The file backend's erase: allocated extents are overwritten with zeros, holes stay holes.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <future>
#include <string>
#include <vector>

#include "csi/backends/file_device_manager.h"
#include "held_eraser.h"
#include "temp_dir.h"

namespace ephemera::csi {
namespace {

TEST_CASE("ZeroAllocatedExtents zeroes data and keeps the file sparse", "[csi][file]") {
  testing::TempDir dir;
  std::string path = dir.path() + "/vol.img";
  int fd = open(path.c_str(), O_RDWR | O_CREAT, 0600);
  REQUIRE(fd >= 0);
  const off_t size = 64 << 20;
  REQUIRE(ftruncate(fd, size) == 0);
  std::string secret(1 << 20, 's');
  REQUIRE(pwrite(fd, secret.data(), secret.size(), 0) == static_cast<ssize_t>(secret.size()));
  REQUIRE(pwrite(fd, secret.data(), secret.size(), 40 << 20) ==
          static_cast<ssize_t>(secret.size()));
  REQUIRE(fsync(fd) == 0);
  struct stat before {};
  REQUIRE(fstat(fd, &before) == 0);

  REQUIRE(ZeroAllocatedExtents(fd).ok());

  std::vector<char> buffer(size);
  REQUIRE(pread(fd, buffer.data(), buffer.size(), 0) == size);
  CHECK(std::all_of(buffer.begin(), buffer.end(), [](char c) { return c == 0; }));
  struct stat after {};
  REQUIRE(fstat(fd, &after) == 0);
  CHECK(after.st_size == size);
  // Only what was written is allocated, before and after: no full overwrite of 64 MiB.
  CHECK(after.st_blocks * 512 < 16 << 20);
  CHECK(after.st_blocks <= before.st_blocks + 8);
  close(fd);
}

// An erase runs for minutes on a big volume: the other volumes' calls must not wait for it, and the
// file goes after it.
TEST_CASE("file: an erase holds up no other volume's call", "[csi][file]") {
  testing::TempDir dir;
  testing::HeldEraser held;
  FileDeviceManager file(dir.path() + "/pool", int64_t{64} << 20, held.eraser());
  REQUIRE(file.Init().ok());
  // The volume's file as Create leaves it (Create also attaches a loop device: that needs root).
  const std::string path = std::filesystem::canonical(dir.path() + "/pool").string() + "/eph-a.img";
  {
    std::ofstream out(path);
    out << std::string(size_t{4} << 20, 's');
  }
  std::future<Status> deleted =
      std::async(std::launch::async, [&] { return file.Delete("eph-a", true); });
  REQUIRE(held.WaitEntered(std::chrono::seconds(10)));
  std::future<StatusOr<Capacity>> capacity =
      std::async(std::launch::async, [&] { return file.GetCapacity(); });
  const bool answered = capacity.wait_for(std::chrono::seconds(10)) == std::future_status::ready;
  held.Release();
  CHECK(answered);
  CHECK(capacity.get().ok());
  CHECK(deleted.get().ok());
  CHECK(held.paths() == std::vector<std::string>{path});
  CHECK(!std::filesystem::exists(path));
}

}  // namespace
}  // namespace ephemera::csi
