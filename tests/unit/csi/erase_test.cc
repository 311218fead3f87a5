// The file backend's erase: allocated extents are overwritten with zeros, holes stay holes.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <string>
#include <vector>

#include "csi/backends/file_device_manager.h"
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

}  // namespace
}  // namespace ephemera::csi
