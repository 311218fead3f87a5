// ephemera-pmem-csi: fills a Config from the command line and runs the Driver until SIGTERM or
// SIGINT.
#include <pthread.h>
#include <signal.h>

#include <iostream>
#include <thread>

#include "common/log.h"
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
  --remove-orphans[=true|false]  delete devices without a record at start
  --command-timeout=DURATION     limit of every external command, e.g. 5m (default: 2m for
                                 LVM and ndctl, 10m for mkfs and filesystem growth)
  --http-endpoint=HOST:PORT      /metrics, /healthz, /livez, /readyz (port 0: any free one)
  --capacity-listen=HOST:PORT    mTLS listener for Identity, GetCapacity, NodeGetInfo
  --tls-ca=FILE --tls-cert=FILE --tls-key=FILE   certificates of that listener
  --kubelet-registration-path=PATH  register with the kubelet: the CSI socket's path on the
                                 host, as the kubelet dials it (off when not given)
  --plugin-registration-path=DIR the kubelet's plugins_registry as mounted here; the
                                 registration socket is DIR/pmem-csi.ephemera.io-reg.sock
                                 (default /registration)
  --logging-format=text|json     klog-style text lines (default) or JSON
  -v=N                           log verbosity (default 0)
Values may also follow as the next word (--endpoint unix:///PATH).
)";

}  // namespace

int main(int argc, char** argv) {
  ephemera::csi::Config config;
  bool help = false;
  const ephemera::Status parsed = ephemera::flags::Parse(
      std::vector<std::string>(argv + 1, argv + argc), ephemera::csi::DriverFlags(config),
      ephemera::csi::kDriverSyntax, &help);
  if (help) {
    std::cout << kUsage;
    return 0;
  }
  if (!parsed.ok()) {
    std::cerr << "ephemera-pmem-csi: " << parsed.message() << " (see --help)\n";
    return 2;
  }
  namespace log = ephemera::log;
  log::SetComponent("ephemera-pmem-csi");
  if (ephemera::Status s = log::Configure(config.logging_format, config.verbosity); !s.ok()) {
    log::Error("bad logging flags", s);
    return 2;
  }

  // Block the stop signals in every thread; one thread waits for them.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  ephemera::csi::Driver driver(config);
  ephemera::Status status = driver.Start();
  if (!status.ok()) {
    log::Error("cannot start", status);
    return 1;
  }
  std::thread waiter([&] {
    int signal = 0;
    sigwait(&signals, &signal);
    log::Info("shutting down", {{"signal", std::to_string(signal)}});
    driver.Shutdown();
  });
  driver.Wait();
  waiter.join();
  return 0;
}
