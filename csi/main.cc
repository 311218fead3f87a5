// ephemera-pmem-csi: fills a Config from the command line and runs the Driver until SIGTERM or
// SIGINT.
#include <pthread.h>
#include <signal.h>

#include <cstdlib>
#include <iostream>
#include <map>
#include <thread>

#include "common/quantity.h"
#include "csi/command_runner.h"
#include "csi/config.h"
#include "csi/driver.h"

namespace {

constexpr const char* kUsage =
    R"(usage: ephemera-pmem-csi --endpoint=unix:///PATH --node-id=ID [flags]
  --mode=node                    Identity, Controller and Node on one socket (the only mode)
  --endpoint=unix:///PATH        CSI socket
  --node-id=ID                   this node's name; also the topology value
  --backend=file|direct|lvm      storage backend (direct: a PMEM namespace per volume)
  --pmem-percentage=N            lvm backend: percent of each PMEM region for LVM (default 100)
  --state-dir=DIR                volume records (default /var/lib/ephemera-pmem-csi/state)
  --file-dir=DIR                 file backend: directory of the volume files
  --file-capacity=QUANTITY       file backend: pool size, e.g. 10Gi
  --default-volume-size=QUANTITY size when CreateVolume gives no range (default 1Gi)
  --remove-orphans               delete devices without a record at start
  --command-timeout=DURATION     limit of every external command, e.g. 5m (default: 2m for
                                 LVM and ndctl, 10m for mkfs and filesystem growth)
  --http-endpoint=HOST:PORT      /metrics, /healthz, /livez, /readyz (port 0: any free one)
  --capacity-listen=HOST:PORT    mTLS listener for Identity, GetCapacity, NodeGetInfo
  --tls-ca=FILE --tls-cert=FILE --tls-key=FILE   certificates of that listener
)";

// Fills `config`; returns false on a bad command line. Sets `*help` for --help.
bool ParseArgs(int argc, char** argv, ephemera::csi::Config* config, bool* help) {
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--help" || arg == "-h") {
      std::cout << kUsage;
      *help = true;
      return true;
    }
    if (arg == "--remove-orphans") {
      config->remove_orphans = true;
      continue;
    }
    if (arg.starts_with("--command-timeout=")) {
      auto timeout = ephemera::csi::ParseCommandTimeout(arg.substr(18));
      if (!timeout.ok()) {
        std::cerr << "--command-timeout: " << timeout.status().ToString() << "\n";
        return false;
      }
      config->command_timeout = *timeout;
      continue;
    }
    if (arg.starts_with("--pmem-percentage=")) {
      std::string value = arg.substr(18);
      char* end = nullptr;
      long percent = std::strtol(value.c_str(), &end, 10);
      if (value.empty() || *end != '\0' || percent < 1 || percent > 100) {
        std::cerr << "--pmem-percentage: an integer from 1 to 100\n";
        return false;
      }
      config->pmem_percentage = static_cast<int>(percent);
      continue;
    }
    size_t eq = arg.find('=');
    if (!arg.starts_with("--") || eq == std::string::npos) {
      std::cerr << "unexpected argument " << arg << "\n" << kUsage;
      return false;
    }
    std::string name = arg.substr(2, eq - 2);
    std::string value = arg.substr(eq + 1);
    std::map<std::string, std::string*> strings = {{"mode", &config->mode},
                                                   {"endpoint", &config->endpoint},
                                                   {"node-id", &config->node_id},
                                                   {"backend", &config->backend},
                                                   {"state-dir", &config->state_dir},
                                                   {"file-dir", &config->file_dir},
                                                   {"http-endpoint", &config->http_endpoint},
                                                   {"capacity-listen", &config->capacity_listen},
                                                   {"tls-ca", &config->tls_ca},
                                                   {"tls-cert", &config->tls_cert},
                                                   {"tls-key", &config->tls_key}};
    std::map<std::string, int64_t*> sizes = {{"file-capacity", &config->file_capacity},
                                             {"default-volume-size", &config->default_volume_size}};
    if (auto it = strings.find(name); it != strings.end()) {
      *it->second = value;
    } else if (auto size = sizes.find(name); size != sizes.end()) {
      ephemera::StatusOr<int64_t> bytes = ephemera::ParseByteQuantity(value);
      if (!bytes.ok()) {
        std::cerr << "--" << name << ": " << bytes.status().ToString() << "\n";
        return false;
      }
      *size->second = *bytes;
    } else {
      std::cerr << "unknown flag --" << name << "\n" << kUsage;
      return false;
    }
  }
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  ephemera::csi::Config config;
  bool help = false;
  if (!ParseArgs(argc, argv, &config, &help)) return 2;
  if (help) return 0;

  // Block the stop signals in every thread; one thread waits for them.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  ephemera::csi::Driver driver(config);
  ephemera::Status status = driver.Start();
  if (!status.ok()) {
    std::cerr << "ephemera-pmem-csi: " << status.ToString() << "\n";
    return 1;
  }
  std::thread waiter([&] {
    int signal = 0;
    sigwait(&signals, &signal);
    std::cerr << "signal " << signal << ": shutting down\n";
    driver.Shutdown();
  });
  driver.Wait();
  waiter.join();
  return 0;
}
