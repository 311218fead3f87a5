// HttpsTransport: HTTP/1.1 over TLS to one server (the API server), on Boost.Beast.
//
// The calling thread does its own I/O: a request takes an idle keep-alive connection from the
// pool (or opens one), writes, reads the answer and puts the connection back, without handing
// work to another thread. Each connection owns a small io_context that only the thread using it
// runs; Beast's tcp_stream gives every operation a deadline.
//
// - TLS: the server certificate is verified against the CA (or the system's roots) for the host
//   of the server URL, or for `verify_name` when set (tls-server-name); SNI names the same host
//   when it is a DNS name. A client certificate is sent when one is configured; it can be replaced
//   later (SetClientCertificate), and only connections made with the current one are reused.
// - Keep-alive: at most kMaxIdle idle connections are kept; one idle for longer than kIdleTimeout
//   or closed by the server is dropped before it is used. A request that fails on a reused
//   connection before any answer arrived is sent once more on a fresh connection when that is safe
//   (nothing was written, or the method is GET), as Go's net/http does.
// - Streaming: Open() returns once the status line and headers are in; the body is then read as
//   it arrives (watches).
//
// Thread safety: RoundTrip() and Open() may be called concurrently. A StreamingResponse is read
// by one thread; Cancel() may be called from any thread.
#pragma once

#include <atomic>
#include <chrono>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"

namespace ephemera::apiclient {

struct HttpsTarget {
  std::string host;       // "127.0.0.1", "::1", "api.example.com"
  std::string port;       // "6443"
  std::string base_path;  // a path prefix of the server URL without the trailing '/', or ""

  // The Host header: host[:port], IPv6 literals in brackets.
  std::string HostHeader() const;
};

// Parses "https://host[:port][/prefix]". INVALID_ARGUMENT for anything else (other schemes,
// user info, queries, fragments).
StatusOr<HttpsTarget> ParseHttpsUrl(const std::string& url);

struct HttpsOptions {
  std::string ca_pem;           // empty: the system's roots
  std::string client_cert_pem;  // with client_key_pem
  std::string client_key_pem;
  std::string verify_name;  // verify the certificate for this name instead of the URL's host
  size_t max_body_bytes = size_t{1} << 30;
};

struct HttpRequestSpec {
  std::string_view method;  // "GET", "POST", ...
  std::string_view target;  // path and query, starting with '/'
  std::string_view user_agent;
  std::string_view authorization;  // the whole header value, or empty
  std::string_view content_type;   // with a body
  const std::string* body = nullptr;
};

struct HttpResult {
  int code = 0;
  std::string body;
  std::string retry_after;
};

class HttpsConnection;

// The body of a response being read as it arrives.
class StreamingResponse {
 public:
  ~StreamingResponse();
  StreamingResponse(const StreamingResponse&) = delete;
  StreamingResponse& operator=(const StreamingResponse&) = delete;

  int code() const { return code_; }
  // Appends what has arrived (waiting until something has) to *out. Returns false at the end of
  // the body. UNAVAILABLE on transport failures or when the deadline passes, CANCELLED after
  // Cancel().
  StatusOr<bool> ReadSome(std::string* out);
  // Ends a read in progress and every later one. Any thread.
  void Cancel();

 private:
  friend class HttpsTransport;
  StreamingResponse(std::unique_ptr<HttpsConnection> connection, int code,
                    std::chrono::steady_clock::time_point deadline);

  std::unique_ptr<HttpsConnection> connection_;
  const int code_;
  const std::chrono::steady_clock::time_point deadline_;
  std::atomic<bool> cancelled_{false};
  std::atomic<int> fd_{-1};  // our duplicate of the socket's descriptor, for Cancel()
};

class HttpsTransport {
 public:
  static constexpr size_t kMaxIdle = 25;  // client-go's MaxIdleConnsPerHost
  static constexpr std::chrono::seconds kIdleTimeout{90};

  // INVALID_ARGUMENT for a bad URL or PEM data that cannot be loaded.
  static StatusOr<std::unique_ptr<HttpsTransport>> New(const std::string& server_url,
                                                       const HttpsOptions& options);
  ~HttpsTransport();
  HttpsTransport(const HttpsTransport&) = delete;
  HttpsTransport& operator=(const HttpsTransport&) = delete;

  // One request and its whole answer; UNAVAILABLE on transport failures and timeouts.
  StatusOr<HttpResult> RoundTrip(const HttpRequestSpec& request, std::chrono::milliseconds timeout);

  // Sends the request and reads the status and headers (within `header_timeout`); the body is
  // read from the result until `deadline`. The connection is not returned to the pool.
  StatusOr<std::unique_ptr<StreamingResponse>> Open(const HttpRequestSpec& request,
                                                    std::chrono::milliseconds header_timeout,
                                                    std::chrono::steady_clock::time_point deadline);

  // Replaces the client certificate (and key) that new connections present, e.g. one from an exec
  // credential plugin; idle connections made with the old one are not used again. INVALID_ARGUMENT
  // when the PEM data cannot be loaded or the key does not belong to the certificate.
  Status SetClientCertificate(const std::string& cert_pem, const std::string& key_pem);

  const HttpsTarget& target() const { return target_; }
  // Connections opened so far (for tests and benchmarks).
  size_t connections_opened() const { return opened_.load(); }

 private:
  struct Impl;
  HttpsTransport(HttpsTarget target, std::unique_ptr<Impl> impl);

  // An idle connection (checked alive) or a new one; *reused says which. Only a new one when
  // `fresh` (the retry of a request that failed on a reused connection).
  StatusOr<std::unique_ptr<HttpsConnection>> Acquire(std::chrono::steady_clock::time_point deadline,
                                                     bool fresh, bool* reused);
  void Release(std::unique_ptr<HttpsConnection> connection);

  const HttpsTarget target_;
  const std::unique_ptr<Impl> impl_;
  std::mutex mu_;
  std::vector<std::unique_ptr<HttpsConnection>> idle_;  // GUARDED_BY(mu_)
  std::atomic<size_t> opened_{0};
};

}  // namespace ephemera::apiclient
