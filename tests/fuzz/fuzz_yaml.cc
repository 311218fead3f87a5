// Fuzz target for the YAML an administrator writes: kubeconfig files (first byte even) and the
// controller-manager's config file (odd), the latter through the same path as --config=FILE,
// validation included. Both must answer with a value or an error naming what is wrong, never
// crash, hang or throw.
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <fstream>
#include <string>

#include "apiclient/config.h"
#include "controllers/manager/options.h"

namespace {

// The config file needs a path: one per process, in /dev/shm (tmpfs) where there is one, since a
// truncate and write on a disk filesystem cost a tenth of each run; removed after each input, as
// a run stopped by SIGINT ends without static destructors.
const std::string& ConfigPath() {
  static const std::string path = (access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp") +
                                  std::string("/ephemera-fuzz-config-") + std::to_string(getpid()) +
                                  ".yaml";
  return path;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace ephemera;  // NOLINT(google-build-using-namespace)
  if (size == 0) return 0;
  const std::string text(reinterpret_cast<const char*>(data) + 1, size - 1);
  if (data[0] % 2 == 0) {
    // File references resolve below a directory that does not exist: nothing is read.
    (void)apiclient::ParseKubeconfig(text, "/nonexistent/ephemera-fuzz", "");
    return 0;
  }
  {
    std::ofstream out(ConfigPath(), std::ios::trunc | std::ios::binary);
    out << text;
  }
  controllers::ManagerOptions options;
  (void)controllers::ParseManagerOptions({"--config=" + ConfigPath()}, &options);
  unlink(ConfigPath().c_str());
  return 0;
}
