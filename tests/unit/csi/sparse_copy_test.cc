// Sparse copies of volume files: the data comes over equal, holes stay holes, the copy may be
// longer than its source (a restore into a larger volume), and a size larger than the source is
// refused.
#include "csi/backends/sparse_copy.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <string>
#include <vector>

#include "temp_dir.h"

namespace ephemera::csi {
namespace {

constexpr off_t kMi = off_t{1} << 20;

TEST_CASE("CopySparse copies the data extents and keeps the holes", "[csi][file][snapshots]") {
  testing::TempDir dir;
  const std::string source = dir.path() + "/vol.img";
  int src = open(source.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  REQUIRE(src >= 0);
  REQUIRE(ftruncate(src, 64 * kMi) == 0);
  std::string a(kMi, 'a');
  std::string b(3 * kMi + 17, 'b');  // ends in the middle of a block
  REQUIRE(pwrite(src, a.data(), a.size(), 0) == static_cast<ssize_t>(a.size()));
  REQUIRE(pwrite(src, b.data(), b.size(), 40 * kMi) == static_cast<ssize_t>(b.size()));
  REQUIRE(pwrite(src, a.data(), 4096, 64 * kMi - 4096) == 4096);  // the last block
  REQUIRE(fsync(src) == 0);
  struct stat source_stat {};
  REQUIRE(fstat(src, &source_stat) == 0);

  for (off_t dst_size : {64 * kMi, 128 * kMi}) {
    DYNAMIC_SECTION("copy of " << dst_size / kMi << " MiB") {
      const std::string target = dir.path() + "/copy.img";
      int dst = open(target.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
      REQUIRE(dst >= 0);
      StatusOr<CopyMethod> method = CopySparse(src, dst, 64 * kMi, dst_size);
      REQUIRE(method.ok());
      INFO("method " << CopyMethodName(*method));
      struct stat st {};
      REQUIRE(fstat(dst, &st) == 0);
      CHECK(st.st_size == dst_size);
      // About what the source allocated (a reflink may share it, a copy allocates the same),
      // never the full size.
      CHECK(st.st_blocks * 512 <= source_stat.st_blocks * 512 + kMi);
      std::vector<char> want(64 * kMi);
      std::vector<char> got(64 * kMi);
      REQUIRE(pread(src, want.data(), want.size(), 0) == 64 * kMi);
      REQUIRE(pread(dst, got.data(), got.size(), 0) == 64 * kMi);
      CHECK(want == got);
      if (dst_size > 64 * kMi) {
        std::vector<char> tail(dst_size - 64 * kMi, 'x');
        REQUIRE(pread(dst, tail.data(), tail.size(), 64 * kMi) ==
                static_cast<ssize_t>(tail.size()));
        CHECK(std::all_of(tail.begin(), tail.end(), [](char c) { return c == 0; }));
      }
      close(dst);
      unlink(target.c_str());
    }
  }
  int dst = open((dir.path() + "/bad.img").c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  REQUIRE(dst >= 0);
  CHECK(CopySparse(src, dst, 64 * kMi, 32 * kMi).status().code() == Code::kInvalidArgument);
  close(dst);
  close(src);
}

}  // namespace
}  // namespace ephemera::csi
