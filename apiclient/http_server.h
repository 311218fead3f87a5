// HttpEndpoint: the /metrics, /healthz, /livez and /readyz endpoint of a program
// (--http-endpoint=HOST:PORT, as the CSI sidecars name it).
//
// /metrics renders the registry; /healthz and /livez are 200 while every liveness check passes;
// /readyz is 200 while every liveness and readiness check passes. A failing check's name and
// reason are in the body (never secrets: checks return short reasons).
//
// The server is HTTP/1.1 with keep-alive on one background thread. It answers GET and HEAD only,
// reads no request body (a request with a body over 4 KiB or a header over 8 KiB is refused), and
// drops a connection that sends nothing for 10 s, so a slow or hostile client cannot hold it.
//
// Thread safety: checks may be added at any time from any thread; they are called on the
// server's thread and must be quick. Start() and Stop() are called by the owner, one at a time,
// never from a check.
#pragma once

#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "apiclient/metrics.h"
#include "common/status.h"

namespace ephemera::apiclient {

using HealthCheck = std::function<Status()>;

class HttpEndpoint {
 public:
  explicit HttpEndpoint(const MetricsRegistry& registry);
  ~HttpEndpoint();
  HttpEndpoint(const HttpEndpoint&) = delete;
  HttpEndpoint& operator=(const HttpEndpoint&) = delete;

  void AddLivenessCheck(std::string name, HealthCheck check);
  void AddReadinessCheck(std::string name, HealthCheck check);

  // Listens on "HOST:PORT" (":PORT" means every IPv4 address, "[::1]:PORT" an IPv6 one) and
  // serves in a background thread. Port 0 lets the kernel pick a free port; port() says which.
  // INVALID_ARGUMENT for a malformed address, UNAVAILABLE when it cannot listen (e.g. the port is
  // in use), FAILED_PRECONDITION when already started.
  Status Start(const std::string& host_port);
  // Closes the listening socket and every connection, and joins the thread. Idempotent.
  void Stop();
  int port() const { return port_; }

 private:
  class Server;
  struct Reply;

  Reply Handle(std::string_view path) const;
  std::string RunChecks(bool readiness, bool* ok) const;

  const MetricsRegistry& registry_;
  mutable std::mutex mu_;
  std::vector<std::pair<std::string, HealthCheck>> liveness_;   // GUARDED_BY(mu_)
  std::vector<std::pair<std::string, HealthCheck>> readiness_;  // GUARDED_BY(mu_)
  std::unique_ptr<Server> server_;
  int port_ = 0;
};

// Splits "host:port", "[v6]:port" or ":port". INVALID_ARGUMENT names what is wrong.
Status ParseHostPort(const std::string& text, std::string* host, int* port);

}  // namespace ephemera::apiclient
