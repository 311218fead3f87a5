// HttpEndpoint: the /metrics, /healthz, /livez and /readyz endpoint of our programs, the
// controller-manager and the CSI driver (--http-endpoint=HOST:PORT, as the CSI sidecars name it).
// Its own library (ephemera_http), so that the driver does not link the API client.
//
// /metrics is the text of the render function (Prometheus text format); /healthz and /livez are 200
// while every liveness check passes; /readyz is 200 while every liveness and readiness check
// passes. A failing check's name and reason are in the body (never secrets: checks return short
// reasons).
//
// The server is HTTP/1.1 with keep-alive on one background thread. It answers GET and HEAD only,
// reads no request body (a request with a body over 4 KiB or a header over 8 KiB is refused), and
// drops a connection that sends nothing for 10 s, so a slow or hostile client cannot hold it.
//
// Thread safety: checks may be added at any time from any thread; they and the render function
// are called on the server's thread and must be quick. Start() and Stop() are called by the owner,
// one at a time, never from a check.
#pragma once

#include <concepts>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/status.h"

namespace ephemera {

using HealthCheck = std::function<Status()>;
// Returns the body of /metrics. An exception it throws answers that scrape with 500.
using MetricsRenderer = std::function<std::string()>;
// Told about a failure on the server's thread that no request's answer can carry (a handler that
// threw out of the server's loop). The default writes a line to stderr.
using EndpointErrorReporter = std::function<void(const Status&)>;

class HttpEndpoint {
 public:
  explicit HttpEndpoint(MetricsRenderer render_metrics, EndpointErrorReporter report = nullptr);
  // A registry (or anything with a Render() const returning the text): /metrics renders it. The
  // registry must outlive the endpoint.
  template <typename Registry>
  requires requires(const Registry& r) {
    { r.Render() } -> std::convertible_to<std::string>;
  }
  explicit HttpEndpoint(const Registry& registry, EndpointErrorReporter report = nullptr)
      : HttpEndpoint([&registry] { return registry.Render(); }, std::move(report)) {}
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

  const MetricsRenderer render_metrics_;
  const EndpointErrorReporter report_;
  mutable std::mutex mu_;
  std::vector<std::pair<std::string, HealthCheck>> liveness_;   // GUARDED_BY(mu_)
  std::vector<std::pair<std::string, HealthCheck>> readiness_;  // GUARDED_BY(mu_)
  std::unique_ptr<Server> server_;
  int port_ = 0;
};

// Splits "host:port", "[v6]:port" or ":port". INVALID_ARGUMENT names what is wrong.
Status ParseHostPort(const std::string& text, std::string* host, int* port);

}  // namespace ephemera
