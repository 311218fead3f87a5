#include "apiclient/https_transport.h"

#include <fcntl.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <array>
#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/address.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>
#include <cerrno>
#include <limits>
#include <optional>

namespace ephemera::apiclient {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
namespace ssl = asio::ssl;
using Clock = std::chrono::steady_clock;

namespace {

constexpr uint32_t kHeaderLimit = 64 * 1024;

// Beast of Boost 1.74 takes boost::string_view.
beast::string_view Bsv(std::string_view s) {
  return {s.data(), s.size()};
}

bool IsIpLiteral(const std::string& host) {
  boost::system::error_code ec;
  asio::ip::make_address(host, ec);
  return !ec;
}

}  // namespace

std::string HttpsTarget::HostHeader() const {
  const std::string h = host.find(':') != std::string::npos ? "[" + host + "]" : host;
  return port == "443" ? h : h + ":" + port;
}

StatusOr<HttpsTarget> ParseHttpsUrl(const std::string& url) {
  auto bad = [&url](const std::string& why) {
    return Status::InvalidArgument("server URL \"" + url.substr(0, 100) + "\": " + why);
  };
  constexpr std::string_view kScheme = "https://";
  if (url.rfind(kScheme, 0) != 0) return bad("must start with https://");
  // They would go into the request line and the Host header as they are.
  for (const char ch : url) {
    if (static_cast<unsigned char>(ch) <= ' ' || ch == '\x7f') {
      return bad("contains a space or a control character");
    }
  }
  const std::string rest = url.substr(kScheme.size());
  if (rest.find_first_of("?#") != std::string::npos) return bad("has a query or fragment");
  const size_t slash = rest.find('/');
  const std::string authority = rest.substr(0, slash);
  std::string path = slash == std::string::npos ? "" : rest.substr(slash);
  while (!path.empty() && path.back() == '/')
    path.pop_back();
  if (authority.find('@') != std::string::npos) return bad("user info is not supported");
  HttpsTarget target;
  target.base_path = path;
  std::string port;
  if (!authority.empty() && authority.front() == '[') {
    const size_t close = authority.find(']');
    if (close == std::string::npos) return bad("unclosed '[' in the host");
    target.host = authority.substr(1, close - 1);
    const std::string after = authority.substr(close + 1);
    if (!after.empty()) {
      if (after.front() != ':') return bad("junk after the IPv6 address");
      port = after.substr(1);
    }
    if (!IsIpLiteral(target.host)) return bad("not an IPv6 address in brackets");
  } else {
    const size_t colon = authority.rfind(':');
    target.host = authority.substr(0, colon);
    if (colon != std::string::npos) port = authority.substr(colon + 1);
    if (target.host.find(':') != std::string::npos) return bad("IPv6 addresses need brackets");
  }
  if (target.host.empty()) return bad("no host");
  if (target.host.find_first_of(" \t\r\n/\\") != std::string::npos) return bad("invalid host");
  if (port.empty()) port = "443";
  if (port.size() > 5 || port.find_first_not_of("0123456789") != std::string::npos ||
      std::stoi(port) == 0 || std::stoi(port) > 65535) {
    return bad("invalid port");
  }
  target.port = port;
  return target;
}

// One keep-alive connection and the io_context that only its current user runs.
class HttpsConnection {
 public:
  explicit HttpsConnection(ssl::context& ctx) : ioc_(1), stream_(ioc_, ctx) {}

  // Connects, checks the server's certificate and completes the TLS handshake.
  Status Connect(const HttpsTarget& target, const std::string& verify_name,
                 Clock::time_point deadline) {
    const std::string& name = verify_name.empty() ? target.host : verify_name;
    if (!IsIpLiteral(name) &&
        SSL_set_tlsext_host_name(stream_.native_handle(), name.c_str()) != 1) {
      return Status::InvalidArgument("cannot use \"" + name.substr(0, 100) + "\" as TLS SNI");
    }
    stream_.set_verify_mode(ssl::verify_peer);
    stream_.set_verify_callback(ssl::host_name_verification(name));
    asio::ip::tcp::resolver resolver(ioc_);
    boost::system::error_code ec;
    const auto endpoints = resolver.resolve(target.host, target.port, ec);
    const std::string where = target.host + ":" + target.port;
    if (ec) return Status::Unavailable("resolve " + where + ": " + ec.message());
    ec = Run(deadline, [&](auto done) {
      beast::get_lowest_layer(stream_).async_connect(endpoints, std::move(done));
    });
    if (ec) return Status::Unavailable("connect to " + where + ": " + Describe(ec));
    ec = Run(deadline, [&](auto done) {
      stream_.async_handshake(ssl::stream_base::client, std::move(done));
    });
    if (ec) return Status::Unavailable("TLS handshake with " + where + ": " + Describe(ec));
    return Status::Ok();
  }

  // Runs the operation that `start` begins on this thread until it completes or the deadline
  // passes (Beast's tcp_stream then ends it with error::timeout).
  template <class Start>
  beast::error_code Run(Clock::time_point deadline, Start&& start) {
    beast::get_lowest_layer(stream_).expires_at(deadline);
    beast::error_code result;
    bool done = false;
    start([&result, &done](beast::error_code ec, auto&&...) {
      result = ec;
      done = true;
    });
    ioc_.restart();
    while (!done && ioc_.run_one() > 0) {
    }
    if (!done) return asio::error::operation_aborted;
    return result;
  }

  static std::string Describe(const beast::error_code& ec) {
    if (ec == beast::error::timeout) return "timed out";
    return ec.message();
  }

  // True when an idle connection can still carry a request: nothing buffered and the server has
  // neither closed it nor sent anything unasked (such as a TLS alert before closing).
  bool StillUsable() {
    if (buffer_.size() != 0) return false;
    char c = 0;
    const ssize_t n = ::recv(fd(), &c, 1, MSG_PEEK | MSG_DONTWAIT);
    return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
  }

  int fd() { return beast::get_lowest_layer(stream_).socket().native_handle(); }

  asio::io_context ioc_;
  ssl::stream<beast::tcp_stream> stream_;
  beast::flat_buffer buffer_;
  Clock::time_point idle_since_;
  uint64_t cert_generation_ = 0;  // the client certificate it presented (see SetClientCertificate)
  std::optional<http::response_parser<http::buffer_body>> streaming_;  // Open()'s response
};

// A client certificate chain and key loaded from PEM.
struct ClientCertificate {
  ClientCertificate() = default;
  ClientCertificate(const ClientCertificate&) = delete;
  ClientCertificate& operator=(const ClientCertificate&) = delete;
  ~ClientCertificate() {
    X509_free(leaf);
    EVP_PKEY_free(key);
    if (chain != nullptr) sk_X509_pop_free(chain, X509_free);
  }
  X509* leaf = nullptr;
  STACK_OF(X509) * chain = nullptr;
  EVP_PKEY* key = nullptr;
};

struct HttpsTransport::Impl {
  Impl() : ctx(ssl::context::tls_client) {}
  ssl::context ctx;
  std::string verify_name;
  size_t max_body_bytes = 0;
  std::mutex cert_mu;
  std::shared_ptr<const ClientCertificate> cert;  // GUARDED_BY(cert_mu); null: the context's
  std::atomic<uint64_t> cert_generation{0};
};

namespace {

StatusOr<std::shared_ptr<const ClientCertificate>> LoadClientCertificate(
    const std::string& cert_pem, const std::string& key_pem) {
  auto cert = std::make_shared<ClientCertificate>();
  {
    BIO* bio = BIO_new_mem_buf(cert_pem.data(), static_cast<int>(cert_pem.size()));
    if (bio == nullptr) return Status::Internal("BIO_new_mem_buf failed");
    cert->leaf = PEM_read_bio_X509(bio, nullptr, nullptr, nullptr);
    cert->chain = sk_X509_new_null();
    while (cert->leaf != nullptr && cert->chain != nullptr) {
      X509* more = PEM_read_bio_X509(bio, nullptr, nullptr, nullptr);
      if (more == nullptr) break;
      sk_X509_push(cert->chain, more);
    }
    BIO_free(bio);
  }
  {
    BIO* bio = BIO_new_mem_buf(key_pem.data(), static_cast<int>(key_pem.size()));
    if (bio == nullptr) return Status::Internal("BIO_new_mem_buf failed");
    cert->key = PEM_read_bio_PrivateKey(bio, nullptr, nullptr, nullptr);
    BIO_free(bio);
  }
  ERR_clear_error();
  if (cert->leaf == nullptr) return Status::InvalidArgument("the client certificate is not PEM");
  if (cert->key == nullptr) return Status::InvalidArgument("the client key is not a PEM key");
  if (X509_check_private_key(cert->leaf, cert->key) != 1) {
    ERR_clear_error();
    return Status::InvalidArgument("the client key does not belong to the client certificate");
  }
  return std::shared_ptr<const ClientCertificate>(std::move(cert));
}

}  // namespace

Status HttpsTransport::SetClientCertificate(const std::string& cert_pem,
                                            const std::string& key_pem) {
  auto cert = LoadClientCertificate(cert_pem, key_pem);
  if (!cert.ok()) return cert.status();
  {
    std::lock_guard<std::mutex> lock(impl_->cert_mu);
    impl_->cert = std::move(*cert);
    ++impl_->cert_generation;
  }
  std::vector<std::unique_ptr<HttpsConnection>> old;
  {
    std::lock_guard<std::mutex> lock(mu_);
    old.swap(idle_);
  }
  return Status::Ok();
}

HttpsTransport::HttpsTransport(HttpsTarget target, std::unique_ptr<Impl> impl)
    : target_(std::move(target)), impl_(std::move(impl)) {}

HttpsTransport::~HttpsTransport() = default;

StatusOr<std::unique_ptr<HttpsTransport>> HttpsTransport::New(const std::string& server_url,
                                                              const HttpsOptions& options) {
  auto target = ParseHttpsUrl(server_url);
  if (!target.ok()) return target.status();
  auto impl = std::make_unique<Impl>();
  impl->verify_name = options.verify_name;
  impl->max_body_bytes = options.max_body_bytes;
  try {
    SSL_CTX_set_min_proto_version(impl->ctx.native_handle(), TLS1_2_VERSION);
    impl->ctx.set_verify_mode(ssl::verify_peer);
    if (options.ca_pem.empty()) {
      impl->ctx.set_default_verify_paths();
    } else {
      impl->ctx.add_certificate_authority(asio::buffer(options.ca_pem));
    }
    if (!options.client_cert_pem.empty()) {
      impl->ctx.use_certificate_chain(asio::buffer(options.client_cert_pem));
      impl->ctx.use_private_key(asio::buffer(options.client_key_pem), ssl::context::pem);
    }
  } catch (const std::exception& e) {
    return Status::InvalidArgument(
        std::string("cannot load the TLS CA, client certificate or key: ") + e.what());
  }
  return std::unique_ptr<HttpsTransport>(new HttpsTransport(std::move(*target), std::move(impl)));
}

StatusOr<std::unique_ptr<HttpsConnection>> HttpsTransport::Acquire(Clock::time_point deadline,
                                                                   bool fresh, bool* reused) {
  if (!fresh) {
    std::lock_guard<std::mutex> lock(mu_);
    const auto now = Clock::now();
    while (!idle_.empty()) {
      std::unique_ptr<HttpsConnection> connection = std::move(idle_.back());
      idle_.pop_back();
      if (now - connection->idle_since_ < kIdleTimeout &&
          connection->cert_generation_ == impl_->cert_generation.load() &&
          connection->StillUsable()) {
        *reused = true;
        return connection;
      }
    }
  }
  *reused = false;
  auto connection = std::make_unique<HttpsConnection>(impl_->ctx);
  std::shared_ptr<const ClientCertificate> cert;
  {
    std::lock_guard<std::mutex> lock(impl_->cert_mu);
    cert = impl_->cert;
    connection->cert_generation_ = impl_->cert_generation.load();
  }
  if (cert != nullptr && SSL_use_cert_and_key(connection->stream_.native_handle(), cert->leaf,
                                              cert->key, cert->chain, /*override=*/1) != 1) {
    ERR_clear_error();
    return Status::InvalidArgument("cannot use the client certificate");
  }
  EPHEMERA_RETURN_IF_ERROR(connection->Connect(target_, impl_->verify_name, deadline));
  ++opened_;
  return connection;
}

void HttpsTransport::Release(std::unique_ptr<HttpsConnection> connection) {
  connection->idle_since_ = Clock::now();
  if (connection->cert_generation_ != impl_->cert_generation.load()) return;  // an old identity
  std::lock_guard<std::mutex> lock(mu_);
  if (idle_.size() < kMaxIdle) idle_.push_back(std::move(connection));
}

namespace {

http::request<http::string_body> BuildRequest(const HttpsTarget& target,
                                              const HttpRequestSpec& spec) {
  http::request<http::string_body> req;
  const http::verb verb = http::string_to_verb(Bsv(spec.method));
  if (verb == http::verb::unknown) {
    req.method_string(Bsv(spec.method));
  } else {
    req.method(verb);
  }
  req.version(11);
  req.target(target.base_path + std::string(spec.target));
  req.set(http::field::host, target.HostHeader());
  req.set(http::field::user_agent, Bsv(spec.user_agent));
  req.set(http::field::accept, "application/json");
  if (!spec.authorization.empty()) req.set(http::field::authorization, Bsv(spec.authorization));
  if (spec.body != nullptr) {
    req.set(http::field::content_type, Bsv(spec.content_type));
    req.body() = *spec.body;
  }
  req.prepare_payload();
  return req;
}

}  // namespace

namespace {

Status ReceiveError(const beast::error_code& ec, uint64_t max_body_bytes) {
  if (ec == http::error::body_limit) {
    return Status::ResourceExhausted("the answer is larger than " + std::to_string(max_body_bytes) +
                                     " bytes");
  }
  return Status::Unavailable("receive: " + HttpsConnection::Describe(ec));
}

// Writes `req` and reads the answer's status line and headers into the parser that
// `parser_for(connection)` makes, on a kept-alive connection or a new one (`acquire(fresh,
// &reused)`). A failure on a reused connection before any answer arrived is tried once more on a
// fresh connection when that is safe: the write failed (the server cannot have acted on a request
// it did not get whole), or the method is GET.
template <class Acquire, class ParserFor>
StatusOr<std::unique_ptr<HttpsConnection>> SendAndReadHeader(
    const http::request<http::string_body>& req, Clock::time_point deadline, Acquire&& acquire,
    ParserFor&& parser_for, uint64_t max_body_bytes) {
  const bool idempotent = req.method() == http::verb::get;
  for (int attempt = 0;; ++attempt) {
    bool reused = false;
    auto connection = acquire(/*fresh=*/attempt > 0, &reused);
    if (!connection.ok()) return connection.status();
    HttpsConnection& c = **connection;
    const bool may_retry = reused && attempt == 0;
    beast::error_code ec =
        c.Run(deadline, [&](auto done) { http::async_write(c.stream_, req, std::move(done)); });
    if (ec) {
      if (may_retry && ec != beast::error::timeout) continue;
      return Status::Unavailable("send: " + HttpsConnection::Describe(ec));
    }
    auto& parser = parser_for(c);
    ec = c.Run(deadline, [&](auto done) {
      http::async_read_header(c.stream_, c.buffer_, parser, std::move(done));
    });
    if (ec) {
      if (may_retry && idempotent && !parser.got_some() && ec != beast::error::timeout) continue;
      return ReceiveError(ec, max_body_bytes);
    }
    return connection;
  }
}

}  // namespace

StatusOr<HttpResult> HttpsTransport::RoundTrip(const HttpRequestSpec& spec,
                                               std::chrono::milliseconds timeout) {
  const auto deadline = Clock::now() + timeout;
  const auto req = BuildRequest(target_, spec);
  // The header first, then the body: Beast 1.74 loses the body_limit error of a Content-Length
  // over the limit when it parses the header and the first body bytes in one go (as async_read
  // does), and would then reserve the whole announced length. Parsing the header alone reports
  // the error at once.
  std::optional<http::response_parser<http::string_body>> parser;
  auto connection = SendAndReadHeader(
      req, deadline, [&](bool fresh, bool* reused) { return Acquire(deadline, fresh, reused); },
      [&](HttpsConnection&) -> http::response_parser<http::string_body>& {
        parser.emplace();
        parser->header_limit(kHeaderLimit);
        parser->body_limit(impl_->max_body_bytes);
        return *parser;
      },
      impl_->max_body_bytes);
  if (!connection.ok()) return connection.status();
  HttpsConnection& c = **connection;
  if (!parser->is_done()) {
    const beast::error_code ec = c.Run(deadline, [&](auto done) {
      http::async_read(c.stream_, c.buffer_, *parser, std::move(done));
    });
    if (ec) return ReceiveError(ec, impl_->max_body_bytes);
  }
  auto& res = parser->get();
  HttpResult result;
  result.code = static_cast<int>(res.result_int());
  if (auto it = res.find(http::field::retry_after); it != res.end()) {
    const auto value = it->value();
    result.retry_after.assign(value.data(), value.size());
  }
  // The parser's view, not only the header's: a body that ends with the connection ends it too.
  const bool keep = parser->keep_alive();
  result.body = std::move(res.body());
  if (keep) Release(std::move(*connection));
  return result;
}

StatusOr<std::unique_ptr<StreamingResponse>> HttpsTransport::Open(
    const HttpRequestSpec& spec, std::chrono::milliseconds header_timeout,
    Clock::time_point deadline) {
  const auto header_deadline = std::min(deadline, Clock::now() + header_timeout);
  const auto req = BuildRequest(target_, spec);
  auto connection = SendAndReadHeader(
      req, header_deadline,
      [&](bool fresh, bool* reused) { return Acquire(header_deadline, fresh, reused); },
      [](HttpsConnection& c) -> http::response_parser<http::buffer_body>& {
        auto& parser = c.streaming_.emplace();
        parser.header_limit(kHeaderLimit);
        parser.body_limit(std::numeric_limits<std::uint64_t>::max());  // a watch has no end size
        return parser;
      },
      impl_->max_body_bytes);
  if (!connection.ok()) return connection.status();
  const int code = static_cast<int>((*connection)->streaming_->get().result_int());
  return std::unique_ptr<StreamingResponse>(
      new StreamingResponse(std::move(*connection), code, deadline));
}

StreamingResponse::StreamingResponse(std::unique_ptr<HttpsConnection> connection, int code,
                                     Clock::time_point deadline)
    : connection_(std::move(connection)), code_(code), deadline_(deadline) {
  // Cancel() works on a descriptor of our own for the socket: the connection's descriptor is
  // closed when a read times out (Beast does) and its number may then name another socket.
  fd_.store(::fcntl(connection_->fd(), F_DUPFD_CLOEXEC, 0));
}

StreamingResponse::~StreamingResponse() {
  const int fd = fd_.exchange(-1);
  if (fd >= 0) ::close(fd);
}

StatusOr<bool> StreamingResponse::ReadSome(std::string* out) {
  auto& parser = *connection_->streaming_;
  std::array<char, std::size_t{64} * 1024> chunk{};
  while (true) {
    if (cancelled_.load()) return Status::Cancelled("stopped");
    if (parser.is_done()) return false;
    parser.get().body().data = chunk.data();
    parser.get().body().size = chunk.size();
    beast::error_code ec = connection_->Run(deadline_, [&](auto done) {
      http::async_read_some(connection_->stream_, connection_->buffer_, parser, std::move(done));
    });
    if (ec == http::error::need_buffer) ec = {};
    if (cancelled_.load()) return Status::Cancelled("stopped");
    if (ec) return Status::Unavailable("receive: " + HttpsConnection::Describe(ec));
    const size_t got = chunk.size() - parser.get().body().size;
    out->append(chunk.data(), got);
    if (got > 0) return true;
  }
}

void StreamingResponse::Cancel() {
  if (cancelled_.exchange(true)) return;
  // Shutting the socket down wakes a read in progress on the reading thread; our duplicate of
  // the descriptor stays open until the response is destroyed.
  const int fd = fd_.load();
  if (fd >= 0) ::shutdown(fd, SHUT_RDWR);
}

}  // namespace ephemera::apiclient
