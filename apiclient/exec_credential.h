// Exec credential plugins: a kubeconfig user whose credentials come from a command, as kubectl and
// client-go run them (client.authentication.k8s.io/v1 and v1beta1; EKS, GKE and AKS use them).
//
// The command runs without a shell (posix_spawn), its arguments and extra environment from the
// kubeconfig, KUBERNETES_EXEC_INFO holding the ExecCredential request, stdin from /dev/null (we are
// never interactive), stdout and stderr captured, bounded in size and time, and is always reaped.
// Its stdout must be an ExecCredential whose status has a token or a client certificate and key,
// and may have an expirationTimestamp. The credential is cached until it expires (or forever when
// it has no expiry) and the plugin runs again after that, or when the API server answered 401 to
// the credential (ExecCredentialProvider::Invalidate).
//
// The plugin's output is not trusted: size limits, type checks, a clear error naming the command
// (and the kubeconfig's installHint) when it is missing, fails, times out or prints something
// else. Tokens are never logged or put into error messages.
//
// Thread safety: ExecCredentialProvider may be used from any thread; concurrent Get() calls wait
// for one run of the plugin.
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "apiclient/clock.h"
#include "common/status.h"

namespace ephemera::apiclient {

inline constexpr std::string_view kExecApiV1 = "client.authentication.k8s.io/v1";
inline constexpr std::string_view kExecApiV1beta1 = "client.authentication.k8s.io/v1beta1";

// A kubeconfig user's `exec` section.
struct ExecConfig {
  std::string command;  // a path (relative ones resolved against the kubeconfig's folder) or a
                        // name looked up in $PATH
  std::vector<std::string> args;
  std::vector<std::pair<std::string, std::string>> env;  // added to the process's environment
  std::string api_version;                               // kExecApiV1 or kExecApiV1beta1
  std::string install_hint;                              // shown when the command cannot be run
  std::string interactive_mode;  // "Never", "IfAvailable" ("" = IfAvailable); "Always" is refused
  bool provide_cluster_info = false;
  std::chrono::milliseconds timeout{60000};  // the longest one run of the plugin may take
};

// What spec.cluster carries when provideClusterInfo is set.
struct ExecClusterInfo {
  std::string server;
  std::string tls_server_name;
  std::string ca_pem;
};

// A credential from the plugin. Never log it.
struct ExecCredential {
  std::string token;
  std::string client_cert_pem;  // with client_key_pem
  std::string client_key_pem;
  std::optional<std::chrono::system_clock::time_point> expiry;  // none: until the server refuses it
};

// One finished run of a command.
struct CommandResult {
  int exit_code = 0;  // the exit status, or 128 + the signal that ended it
  std::string out;
  std::string err;
};

// How a plugin is run: the real one spawns a process (RunCommand); unit tests may pass another.
struct CommandSpec {
  std::string path;
  std::vector<std::string> args;
  std::vector<std::pair<std::string, std::string>> env;  // added to (or replacing in) the
                                                         // process's environment
  std::chrono::milliseconds timeout{60000};
  size_t max_out = 1 << 20;  // more on stdout is an error; stderr keeps its last max_err bytes
  size_t max_err = 8 << 10;
};
using CommandRunner = std::function<StatusOr<CommandResult>(const CommandSpec&)>;

// Runs `spec.path` (looked up in $PATH when it has no '/') with posix_spawn: no shell, stdin from
// /dev/null, its own process group (killed whole on timeout), always reaped. NOT_FOUND when the
// command cannot be executed, DEADLINE_EXCEEDED on timeout, RESOURCE_EXHAUSTED when stdout is
// larger than max_out. A non-zero exit is a result, not an error.
StatusOr<CommandResult> RunCommand(const CommandSpec& spec);

// The KUBERNETES_EXEC_INFO value: an ExecCredential request (apiVersion, kind,
// spec.interactive=false, spec.cluster when provide_cluster_info).
std::string ExecInfoJson(const ExecConfig& config, const ExecClusterInfo& cluster);

// Parses the plugin's stdout: an ExecCredential of `api_version` with a usable status.
StatusOr<ExecCredential> ParseExecCredential(std::string_view out, std::string_view api_version);

// RFC 3339 ("2026-11-27T15:04:05Z", fractions and offsets allowed) to a time point.
std::optional<std::chrono::system_clock::time_point> ParseRfc3339(std::string_view text);

class ExecCredentialProvider {
 public:
  // `clock` (its WallNow) decides expiry; it must outlive the provider.
  ExecCredentialProvider(ExecConfig config, ExecClusterInfo cluster,
                         const Clock* clock = &SystemClock(), CommandRunner runner = RunCommand);

  // The cached credential, or a fresh one from a run of the plugin when there is none or it has
  // expired. UNAUTHENTICATED (with the command, its stderr and the install hint) when the plugin
  // fails.
  StatusOr<std::shared_ptr<const ExecCredential>> Get();
  // The server refused `used` (401): the next Get() runs the plugin again, unless another caller
  // already replaced `used`.
  void Invalidate(const std::shared_ptr<const ExecCredential>& used);

  const ExecConfig& config() const { return config_; }
  // How often the plugin ran (for tests and logs).
  int runs() const;

 private:
  StatusOr<std::shared_ptr<const ExecCredential>> Run();

  const ExecConfig config_;
  const ExecClusterInfo cluster_;
  const Clock* const clock_;
  const CommandRunner runner_;
  mutable std::mutex mu_;
  std::shared_ptr<const ExecCredential> cached_;  // GUARDED_BY(mu_)
  int runs_ = 0;                                  // GUARDED_BY(mu_)
};

}  // namespace ephemera::apiclient
