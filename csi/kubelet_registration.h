// KubeletRegistration: the driver registers itself with the kubelet through the kubelet's plugin
// registration API (v1, csi/proto/pluginregistration.proto), the job node-driver-registrar does as
// a sidecar elsewhere.
//
// The kubelet watches its plugins_registry directory. When a socket appears there it calls
// GetInfo on it (we answer: type "CSIPlugin", the driver's name, the path of the CSI socket as the
// kubelet dials it, the CSI versions), validates the answer, calls NodeGetInfo on the CSI socket,
// and tells the plugin the outcome with NotifyRegistrationStatus. When the socket goes away it
// unregisters the driver.
//
// This class owns the registration socket DIR/<driver-name>-reg.sock: Start() removes a stale file
// of that name and serves; Stop() stops serving and removes the socket, so the kubelet unregisters
// the driver. A refusal (plugin_registered=false) is logged at error level, counted in the metrics
// and reported by ReadinessCheck(); unlike node-driver-registrar, which exits then, we keep
// serving: the kubelet retries a refused socket with backoff, and a restart would not change the
// answer. The socket file is checked every `check_interval` and re-created when it is gone (the
// kubelet removes the directory's contents on some restarts); the kubelet sees the new socket and
// registers the driver again.
//
// The kubelet is trusted no more than any local client: messages are limited to 64 KiB, the
// socket is made 0600 (the kubelet runs as root, as the driver), and the refusal text is
// shortened and stripped of control characters before it is logged or shown.
//
// Thread safety: Start() and Stop() from the owning thread; the rest from any thread.
#pragma once

#include <grpcpp/server.h>
#include <sys/types.h>

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "common/status.h"
#include "csi/metrics.h"

namespace ephemera::csi {

class KubeletRegistration {
 public:
  struct Options {
    std::string socket_dir;        // --plugin-registration-path
    std::string driver_name;       // PluginInfo.name
    std::string kubelet_endpoint;  // --kubelet-registration-path: PluginInfo.endpoint
    std::vector<std::string> supported_versions = {"1.0.0"};
    std::chrono::milliseconds check_interval = std::chrono::seconds(10);
  };

  enum class Phase {
    kWaiting,     // serving; the kubelet has not told us anything since the socket was created
    kRegistered,  // the kubelet registered the driver
    kRefused,     // the kubelet refused it; error() says why
  };
  struct State {
    Phase phase = Phase::kWaiting;
    std::string error;      // the kubelet's reason of the last refusal, cleaned (see above)
    int64_t refusals = 0;   // since start
    int64_t recreated = 0;  // times the socket was found missing and re-created
  };

  // The longest refusal text kept; the rest is cut off.
  static constexpr size_t kMaxErrorLength = 512;

  // `metrics` (may be null) must outlive this object.
  KubeletRegistration(Options options, Metrics* metrics);
  ~KubeletRegistration();
  KubeletRegistration(const KubeletRegistration&) = delete;
  KubeletRegistration& operator=(const KubeletRegistration&) = delete;

  // INVALID_ARGUMENT for a relative or too long path (a Unix socket path has at most 107 bytes);
  // the flag names are in the message.
  static Status Validate(const Options& options);

  // Validates, removes a stale file at socket_path(), serves, and starts the periodic check.
  // INVALID_ARGUMENT (see Validate), INTERNAL when the socket cannot be created.
  Status Start();
  // Stops the check and the server and removes the socket if it is still ours. Idempotent.
  void Stop();

  // The periodic check, callable directly: re-creates the socket when no file is at its path.
  // OK also when nothing had to be done; INTERNAL when re-creating failed (retried at the next
  // check).
  Status EnsureSocket();

  std::string socket_path() const;
  State state() const;
  // OK once the kubelet registered the driver; UNAVAILABLE while waiting or after a refusal (the
  // message carries the kubelet's reason).
  Status ReadinessCheck() const;

 private:
  class Service;

  Status Listen();  // REQUIRES(server_mu_)
  void CheckLoop();
  void OnStatus(bool registered, const std::string& error);

  const Options options_;
  Metrics* const metrics_;
  const std::string socket_path_;

  std::mutex server_mu_;                  // Start, Stop, EnsureSocket: one at a time
  bool started_ = false;                  // GUARDED_BY(server_mu_)
  std::unique_ptr<Service> service_;      // GUARDED_BY(server_mu_)
  std::unique_ptr<grpc::Server> server_;  // GUARDED_BY(server_mu_)
  dev_t socket_dev_ = 0;                  // GUARDED_BY(server_mu_): the file we created
  ino_t socket_ino_ = 0;                  // GUARDED_BY(server_mu_)
  uint64_t listen_count_ = 0;             // GUARDED_BY(server_mu_): for unique bind names

  mutable std::mutex state_mu_;
  State state_;  // GUARDED_BY(state_mu_)

  std::mutex stop_mu_;
  std::condition_variable stop_cv_;
  bool stopping_ = false;  // GUARDED_BY(stop_mu_)
  std::thread checker_;
};

// Text from a peer made fit for a log line or a /readyz body: at most `max` bytes, control
// characters and bytes outside printable ASCII replaced by '?', "..." appended when cut.
std::string CleanPeerText(const std::string& text, size_t max);

}  // namespace ephemera::csi
