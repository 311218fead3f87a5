// A temporary directory for a test, removed with everything in it when the object goes away.
//
// Thread safety: none needed; one per test.
#pragma once

#include <stdlib.h>

#include <filesystem>
#include <string>

namespace ephemera::csi::testing {

class TempDir {
 public:
  TempDir() {
    std::string pattern =
        (std::filesystem::temp_directory_path() / "ephemera-test-XXXXXX").string();
    path_ = mkdtemp(pattern.data());
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

}  // namespace ephemera::csi::testing
