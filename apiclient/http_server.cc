#include "apiclient/http_server.h"

#include <arpa/inet.h>
#include <cpprest/http_listener.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

namespace ephemera::apiclient {

using web::http::http_request;
using web::http::methods;
using web::http::status_codes;
using web::http::experimental::listener::http_listener;

Status ParseHostPort(const std::string& text, std::string* host, int* port) {
  const auto colon = text.rfind(':');
  if (colon == std::string::npos) {
    return Status::InvalidArgument("address \"" + text.substr(0, 100) + "\" is not HOST:PORT");
  }
  std::string h = text.substr(0, colon);
  const std::string p = text.substr(colon + 1);
  if (h.size() >= 2 && h.front() == '[' && h.back() == ']') h = h.substr(1, h.size() - 2);
  if (p.empty() || p.size() > 5 || p.find_first_not_of("0123456789") != std::string::npos ||
      std::stoi(p) > 65535) {
    return Status::InvalidArgument("address \"" + text.substr(0, 100) + "\" has an invalid port");
  }
  *host = h.empty() ? "0.0.0.0" : h;
  *port = std::stoi(p);
  return Status::Ok();
}

namespace {

// Port 0: ask the kernel for a free port first (the listener needs a concrete URI).
int FreePort(const std::string& host) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return 0;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = 0;
  if (inet_pton(AF_INET, host.c_str(), &addr.sin_addr) != 1) addr.sin_addr.s_addr = INADDR_ANY;
  int port = 0;
  socklen_t len = sizeof(addr);
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0 &&
      getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0) {
    port = ntohs(addr.sin_port);
  }
  close(fd);
  return port;
}

}  // namespace

HttpEndpoint::HttpEndpoint(const MetricsRegistry& registry) : registry_(registry) {}

HttpEndpoint::~HttpEndpoint() {
  Stop();
}

void HttpEndpoint::AddLivenessCheck(std::string name, HealthCheck check) {
  std::lock_guard<std::mutex> lock(mu_);
  liveness_.emplace_back(std::move(name), std::move(check));
}

void HttpEndpoint::AddReadinessCheck(std::string name, HealthCheck check) {
  std::lock_guard<std::mutex> lock(mu_);
  readiness_.emplace_back(std::move(name), std::move(check));
}

std::string HttpEndpoint::RunChecks(bool readiness, bool* ok) const {
  std::vector<std::pair<std::string, HealthCheck>> checks;
  {
    std::lock_guard<std::mutex> lock(mu_);
    checks = liveness_;
    if (readiness) checks.insert(checks.end(), readiness_.begin(), readiness_.end());
  }
  std::string body;
  *ok = true;
  for (const auto& [name, check] : checks) {
    const Status s = check();
    if (s.ok()) {
      body += "[+]" + name + " ok\n";
    } else {
      *ok = false;
      body += "[-]" + name + " failed: " + s.message() + "\n";
    }
  }
  body += *ok ? "ok\n" : "failed\n";
  return body;
}

Status HttpEndpoint::Start(const std::string& host_port) {
  std::string host;
  int port = 0;
  EPHEMERA_RETURN_IF_ERROR(ParseHostPort(host_port, &host, &port));
  if (port == 0) port = FreePort(host);
  const std::string host_in_uri = host.find(':') != std::string::npos ? "[" + host + "]" : host;
  try {
    listener_ =
        std::make_unique<http_listener>("http://" + host_in_uri + ":" + std::to_string(port));
    listener_->support(methods::GET, [this](const http_request& request) {
      const std::string path = request.relative_uri().path();
      if (path == "/metrics") {
        request.reply(status_codes::OK, registry_.Render(), "text/plain; version=0.0.4");
      } else if (path == "/healthz" || path == "/livez" || path == "/readyz") {
        bool ok = false;
        const std::string body = RunChecks(path == "/readyz", &ok);
        request.reply(ok ? status_codes::OK : status_codes::ServiceUnavailable, body, "text/plain");
      } else {
        request.reply(status_codes::NotFound, "not found\n", "text/plain");
      }
    });
    listener_->open().wait();
  } catch (const std::exception& e) {
    listener_.reset();
    return Status::Unavailable("cannot listen on " + host_port + ": " + e.what());
  }
  port_ = port;
  return Status::Ok();
}

void HttpEndpoint::Stop() {
  if (!listener_) return;
  try {
    listener_->close().wait();
  } catch (...) {  // NOLINT(bugprone-empty-catch): closing a listener that failed is fine
  }
  listener_.reset();
}

}  // namespace ephemera::apiclient
