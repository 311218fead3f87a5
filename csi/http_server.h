// A minimal HTTP/1.0 server on plain sockets for /metrics and /healthz: GET only, one request per
// connection, answered by a handler. Enough for Prometheus scrapes and kubelet probes; not a
// general web server.
//
// Thread safety: Start() and Stop() from one thread; the handler runs on the server's thread.
#pragma once

#include <atomic>
#include <functional>
#include <string>
#include <thread>

#include "common/status.h"

namespace ephemera::csi {

struct HttpResponse {
  int status = 200;
  std::string content_type = "text/plain; charset=utf-8";
  std::string body;
};

class HttpServer {
 public:
  using Handler = std::function<HttpResponse(const std::string& path)>;

  explicit HttpServer(Handler handler) : handler_(std::move(handler)) {}
  ~HttpServer() { Stop(); }
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  // Listens on "HOST:PORT" (IPv4 address or "localhost"; port 0 picks one) and serves in a thread.
  Status Start(const std::string& address);
  void Stop();
  int port() const { return port_; }

 private:
  void Serve();
  void HandleConnection(int fd);

  Handler handler_;
  int listen_fd_ = -1;
  int port_ = 0;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

}  // namespace ephemera::csi
