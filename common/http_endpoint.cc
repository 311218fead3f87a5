#include "common/http_endpoint.h"

#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <chrono>
#include <iostream>
#include <map>
#include <optional>
#include <thread>

namespace ephemera {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = boost::beast::http;
using tcp = boost::asio::ip::tcp;

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

// A connection that sends no complete request (or reads no response) for this long is dropped.
constexpr auto kIdleTimeout = std::chrono::seconds(10);
// After refusing a request, how long the connection is drained before it is closed, so that the
// client reads the refusal instead of a reset.
constexpr auto kLingerTime = std::chrono::seconds(2);
// Scrapes and probes send neither large headers nor bodies.
constexpr std::uint32_t kHeaderLimit = 8 * 1024;
constexpr std::uint64_t kBodyLimit = std::uint64_t{4} * 1024;
// At most this many connections: a new one beyond it closes the oldest, so that idle clients can
// neither exhaust the process's files nor lock out the next scrape or probe.
constexpr size_t kMaxConnections = 64;
// Pause before accepting again after accept() failed (e.g. out of file descriptors).
constexpr auto kAcceptRetry = std::chrono::milliseconds(100);

}  // namespace

struct HttpEndpoint::Reply {
  http::status status = http::status::ok;
  std::string content_type = "text/plain";
  std::string body;
};

// The io_context, its thread, the acceptor and the live connections. Everything but the
// constructor, Start() and Shutdown() runs on the server's thread; the connections are touched
// there only.
class HttpEndpoint::Server {
 public:
  using Handler = std::function<Reply(std::string_view path)>;

  Server(Handler handler, EndpointErrorReporter report)
      : handler_(std::move(handler)), report_(std::move(report)) {}

  ~Server() { Shutdown(); }

  Status Listen(const std::string& host_port, const std::string& host, int port, int* bound) {
    beast::error_code ec;
    tcp::endpoint endpoint;
    const auto address = asio::ip::make_address(host, ec);
    if (!ec) {
      endpoint = tcp::endpoint(address, static_cast<unsigned short>(port));
    } else if (host.find_first_of("[]:") != std::string::npos) {
      return Status::InvalidArgument("address \"" + host_port.substr(0, 100) +
                                     "\": the host is not an IP address");
    } else {
      tcp::resolver resolver(ioc_);
      const auto results = resolver.resolve(host, std::to_string(port), ec);
      if (ec || results.empty()) {
        return Status::InvalidArgument("address \"" + host_port.substr(0, 100) +
                                       "\": cannot resolve the host: " + ec.message());
      }
      endpoint = results.begin()->endpoint();
    }
    const auto fail = [&](const char* what) {
      return Status::Unavailable("cannot listen on " + host_port + ": " + what + ": " +
                                 ec.message());
    };
    if (acceptor_.open(endpoint.protocol(), ec)) return fail("socket");
    // Restarting a program binds its port again at once, despite connections in TIME_WAIT. A
    // port another socket listens on still fails.
    if (acceptor_.set_option(tcp::acceptor::reuse_address(true), ec)) return fail("setsockopt");
    if (acceptor_.bind(endpoint, ec)) return fail("bind");
    if (acceptor_.listen(asio::socket_base::max_listen_connections, ec)) return fail("listen");
    *bound = acceptor_.local_endpoint(ec).port();
    if (ec) return fail("getsockname");
    Accept();
    thread_ = std::thread([this] { Run(); });
    return Status::Ok();
  }

  // Closes the acceptor and every connection, then waits for the thread. The pending operations
  // complete with errors and nothing is left for the io_context to run.
  void Shutdown();

 private:
  class Session;

  void Run() {
    for (;;) {
      try {
        ioc_.run();
        return;
      } catch (const std::exception& e) {  // a handler threw: keep serving the others
        report_(Status::Internal(std::string("a handler failed: ") + e.what()));
      }
    }
  }

  void Accept();

  // Declared first, destroyed last: the io_context's destructor may destroy sessions, which then
  // remove themselves from sessions_. Keyed by accept order: the first is the oldest.
  std::map<uint64_t, Session*> sessions_;
  uint64_t accepted_ = 0;
  const Handler handler_;
  const EndpointErrorReporter report_;
  asio::io_context ioc_{1};
  tcp::acceptor acceptor_{ioc_};
  asio::steady_timer retry_{ioc_};
  std::thread thread_;
};

// One connection: reads a request, writes its response, and again while the client keeps the
// connection alive. Owned by its pending operation's handler.
class HttpEndpoint::Server::Session : public std::enable_shared_from_this<Session> {
 public:
  Session(tcp::socket socket, Server& server)
      : stream_(std::move(socket)), server_(server), id_(++server.accepted_) {
    server_.sessions_.emplace(id_, this);
  }
  ~Session() { server_.sessions_.erase(id_); }

  void Begin() { Read(); }

  // Closes the connection; the pending operations complete with errors. It no longer counts.
  void Close() {
    stream_.close();
    server_.sessions_.erase(id_);
  }

 private:
  void Read() {
    parser_.emplace();
    parser_->header_limit(kHeaderLimit);
    parser_->body_limit(kBodyLimit);
    stream_.expires_after(kIdleTimeout);
    http::async_read(
        stream_, buffer_, *parser_,
        [self = shared_from_this()](beast::error_code ec, size_t) { self->OnRead(ec); });
  }

  void OnRead(beast::error_code ec) {
    if (ec == http::error::header_limit)
      return Refuse(http::status::request_header_fields_too_large);
    if (ec == http::error::body_limit) return Refuse(http::status::payload_too_large);
    if (ec && ec.category() == http::make_error_code(http::error::end_of_stream).category() &&
        ec != http::error::end_of_stream && ec != http::error::partial_message) {
      return Refuse(http::status::bad_request);  // the request does not parse
    }
    if (ec) return Linger();  // the client closed, went quiet, or the server stops
    const auto& request = parser_->get();
    const bool head = request.method() == http::verb::head;
    response_ = {};
    response_.version(request.version());
    response_.keep_alive(request.keep_alive());
    Reply reply;
    if (request.method() != http::verb::get && !head) {
      reply = {http::status::method_not_allowed, "text/plain", "only GET and HEAD\n"};
      response_.set(http::field::allow, "GET, HEAD");
    } else {
      const std::string_view target(request.target().data(), request.target().size());
      reply = server_.handler_(target.substr(0, target.find('?')));
    }
    response_.result(reply.status);
    response_.set(http::field::content_type, reply.content_type);
    if (head) {
      response_.content_length(reply.body.size());
    } else {
      response_.body() = std::move(reply.body);
      response_.prepare_payload();
    }
    Write();
  }

  // Answers a request that is not read to its end; the connection cannot be used again.
  void Refuse(http::status status) {
    response_ = http::response<http::string_body>(status, 11);
    response_.keep_alive(false);
    response_.set(http::field::content_type, "text/plain");
    const auto reason = http::obsolete_reason(status);
    response_.body().assign(reason.data(), reason.size());
    response_.body() += '\n';
    response_.prepare_payload();
    Write();
  }

  void Write() {
    stream_.expires_after(kIdleTimeout);
    http::async_write(stream_, response_,
                      [self = shared_from_this()](beast::error_code ec, size_t) {
                        if (ec) return;
                        if (self->response_.keep_alive()) return self->Read();
                        self->Linger();
                      });
  }

  // Stops sending and reads until the client closes or kLingerTime passes; the socket closes
  // when the last handler lets go of the session.
  void Linger() {
    beast::error_code ec;
    stream_.socket().shutdown(tcp::socket::shutdown_send, ec);
    if (ec) return;
    stream_.expires_after(kLingerTime);
    Drain();
  }

  void Drain() {
    stream_.async_read_some(asio::buffer(drain_),
                            [self = shared_from_this()](beast::error_code ec, size_t) {
                              if (!ec) self->Drain();
                            });
  }

  beast::tcp_stream stream_;
  Server& server_;
  const uint64_t id_;
  beast::flat_buffer buffer_{std::size_t{2} * kHeaderLimit};
  std::optional<http::request_parser<http::string_body>> parser_;
  http::response<http::string_body> response_;
  char drain_[1024] = {};
};

void HttpEndpoint::Server::Shutdown() {
  if (!thread_.joinable()) return;
  asio::post(ioc_, [this] {
    beast::error_code ec;
    acceptor_.close(ec);
    retry_.cancel();
    while (!sessions_.empty())
      sessions_.begin()->second->Close();
  });
  thread_.join();
}

void HttpEndpoint::Server::Accept() {
  acceptor_.async_accept([this](beast::error_code ec, tcp::socket socket) {
    if (!acceptor_.is_open() || ec == asio::error::operation_aborted) return;
    if (ec) {
      retry_.expires_after(kAcceptRetry);
      retry_.async_wait([this](beast::error_code wait_ec) {
        if (!wait_ec) Accept();
      });
      return;
    }
    if (sessions_.size() >= kMaxConnections) sessions_.begin()->second->Close();
    std::make_shared<Session>(std::move(socket), *this)->Begin();
    Accept();
  });
}

HttpEndpoint::HttpEndpoint(MetricsRenderer render_metrics, EndpointErrorReporter report)
    : render_metrics_(std::move(render_metrics)),
      report_(report ? std::move(report) : [](const Status& status) {
        std::cerr << "HTTP endpoint: " + status.ToString() + "\n" << std::flush;
      }) {}

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
    Status s;
    try {
      s = check();
    } catch (const std::exception& e) {
      s = Status::Internal(std::string("the check threw: ") + e.what());
    }
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

HttpEndpoint::Reply HttpEndpoint::Handle(std::string_view path) const {
  if (path == "/metrics") {
    try {
      return {http::status::ok, "text/plain; version=0.0.4", render_metrics_()};
    } catch (const std::exception& e) {
      return {http::status::internal_server_error, "text/plain",
              std::string("rendering the metrics failed: ") + e.what() + "\n"};
    }
  }
  if (path == "/healthz" || path == "/livez" || path == "/readyz") {
    bool ok = false;
    std::string body = RunChecks(path == "/readyz", &ok);
    return {ok ? http::status::ok : http::status::service_unavailable, "text/plain",
            std::move(body)};
  }
  return {http::status::not_found, "text/plain", "not found\n"};
}

Status HttpEndpoint::Start(const std::string& host_port) {
  if (server_) return Status::FailedPrecondition("the HTTP endpoint is already started");
  std::string host;
  int port = 0;
  EPHEMERA_RETURN_IF_ERROR(ParseHostPort(host_port, &host, &port));
  auto server =
      std::make_unique<Server>([this](std::string_view path) { return Handle(path); }, report_);
  int bound = 0;
  EPHEMERA_RETURN_IF_ERROR(server->Listen(host_port, host, port, &bound));
  server_ = std::move(server);
  port_ = bound;
  return Status::Ok();
}

void HttpEndpoint::Stop() {
  if (!server_) return;
  server_->Shutdown();
  server_.reset();
}

}  // namespace ephemera
