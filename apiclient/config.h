// RestConfig: where the API server is and how to authenticate to it, from a kubeconfig file or
// from the in-cluster service account.
//
// Server certificates are always verified: a kubeconfig with insecure-skip-tls-verify is refused,
// and so are authentication methods we do not implement (auth providers, basic auth), each with a
// message that says so. Exec credential plugins are run as kubectl runs them (exec_credential.h).
// Credentials are never logged; DescribeForLog() shows what a config is without them.
//
// Thread safety: RestConfig is a value (copies share one token file and one exec plugin's cached
// credential). CurrentToken() may be called from any thread.
#pragma once

#include <chrono>
#include <memory>
#include <mutex>
#include <string>

#include "apiclient/exec_credential.h"
#include "common/status.h"

namespace ephemera::apiclient {

// A bearer token read from a file and read again when the file changes, as projected
// service-account tokens are rotated by kubelet.
class TokenFile {
 public:
  explicit TokenFile(std::string path) : path_(std::move(path)) {}
  // The current token; re-reads the file when its modification time changed, at most once a
  // second. Returns an error only when the file could never be read.
  StatusOr<std::string> Token();
  const std::string& path() const { return path_; }

 private:
  const std::string path_;
  std::mutex mu_;
  std::string token_;                                // GUARDED_BY(mu_)
  int64_t mtime_ns_ = -1;                            // GUARDED_BY(mu_)
  std::chrono::steady_clock::time_point checked_{};  // GUARDED_BY(mu_)
};

struct RestConfig {
  std::string server;           // "https://127.0.0.1:6443"
  std::string ca_pem;           // PEM of the CA(s) trusted for the server; empty: system roots
  std::string tls_server_name;  // verify the server certificate for this name instead of the host
  std::string client_cert_pem;  // client certificate authentication (with client_key_pem)
  std::string client_key_pem;
  std::string bearer_token;               // static token
  std::shared_ptr<TokenFile> token_file;  // or a token file (in-cluster, tokenFile)
  // or an exec credential plugin (a token, or a client certificate that replaces the static one)
  std::shared_ptr<ExecCredentialProvider> exec;
  // The context's namespace (kubeconfig), or the service account's (in a pod); "" when none is
  // set. What kubectl calls the default namespace.
  std::string default_namespace;
  std::string user_agent = "ephemera/0.1";
  double qps = 20;  // client-side rate limit; <= 0 disables it
  int burst = 30;
  std::chrono::seconds request_timeout{30};

  // The bearer token to send now ("" for none); runs the exec plugin when its credential is due.
  StatusOr<std::string> CurrentToken() const;
  // "server https://..., auth: client certificate" — safe to log.
  std::string DescribeForLog() const;
};

// Reads a kubeconfig file. `context` empty means the file's current-context. Relative file
// references (certificate-authority, client-key, tokenFile, ...) are relative to the file.
StatusOr<RestConfig> LoadKubeconfig(const std::string& path, const std::string& context = "");

// Parses kubeconfig text; `base_dir` resolves relative file references.
StatusOr<RestConfig> ParseKubeconfig(const std::string& text, const std::string& base_dir,
                                     const std::string& context = "");

// The in-cluster config: KUBERNETES_SERVICE_HOST / KUBERNETES_SERVICE_PORT, and the service
// account's token (re-read when rotated) and CA under `sa_dir`.
StatusOr<RestConfig> InClusterConfig(
    const std::string& sa_dir = "/var/run/secrets/kubernetes.io/serviceaccount");

// What a program uses: --kubeconfig if given, else $KUBECONFIG, else in-cluster if running in a
// pod, else ~/.kube/config.
StatusOr<RestConfig> LoadConfig(const std::string& kubeconfig_flag, const std::string& context);

}  // namespace ephemera::apiclient
