// HttpEndpoint: the /metrics, /healthz and /readyz endpoint of a program
// (--http-endpoint=HOST:PORT, as the CSI sidecars name it).
//
// /metrics renders the registry; /healthz is 200 while every liveness check passes; /readyz is
// 200 while every liveness and readiness check passes. A failing check's name and reason are in
// the body (never secrets: checks return short reasons).
//
// Thread safety: checks may be added at any time from any thread; they are called from the
// server's threads.
#pragma once

#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "apiclient/metrics.h"
#include "common/status.h"

namespace web::http::experimental::listener {
class http_listener;
}

namespace ephemera::apiclient {

using HealthCheck = std::function<Status()>;

class HttpEndpoint {
 public:
  explicit HttpEndpoint(const MetricsRegistry& registry);
  ~HttpEndpoint();

  void AddLivenessCheck(std::string name, HealthCheck check);
  void AddReadinessCheck(std::string name, HealthCheck check);

  // Listens on "HOST:PORT" (":PORT" means every address). Port 0 picks a free port; port() says
  // which. INVALID_ARGUMENT for a malformed address, UNAVAILABLE when it cannot listen.
  Status Start(const std::string& host_port);
  void Stop();
  int port() const { return port_; }

 private:
  std::string RunChecks(bool readiness, bool* ok) const;

  const MetricsRegistry& registry_;
  mutable std::mutex mu_;
  std::vector<std::pair<std::string, HealthCheck>> liveness_;   // GUARDED_BY(mu_)
  std::vector<std::pair<std::string, HealthCheck>> readiness_;  // GUARDED_BY(mu_)
  std::unique_ptr<web::http::experimental::listener::http_listener> listener_;
  int port_ = 0;
};

// Splits "host:port", "[v6]:port" or ":port". INVALID_ARGUMENT names what is wrong.
Status ParseHostPort(const std::string& text, std::string* host, int* port);

}  // namespace ephemera::apiclient
