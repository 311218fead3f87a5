// A blocking HTTP/1.1 client for tests (Boost.Beast): HttpGet() for one request, HttpConnection
// for several on one kept-alive connection or for raw bytes. Every step has a deadline, so a
// server that does not answer fails the step instead of hanging the test.
//
// Thread safety: an HttpConnection is used by one thread at a time; distinct ones are independent.
#pragma once

#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <chrono>
#include <string>

#include "common/status.h"

namespace ephemera::testing {

struct HttpReply {
  int status = 0;
  std::string content_type;
  std::string allow;           // the Allow header
  std::string content_length;  // the Content-Length header as sent
  bool keep_alive = false;     // the server keeps the connection open after this response
  std::string body;
};

class HttpConnection {
 public:
  explicit HttpConnection(std::chrono::seconds timeout = std::chrono::seconds(30))
      : timeout_(timeout) {}

  // Connects to HOST:PORT (an address or a name).
  Status Connect(const std::string& host, int port) {
    boost::beast::error_code ec;
    boost::asio::ip::tcp::resolver resolver(ioc_);
    const auto endpoints = resolver.resolve(host, std::to_string(port), ec);
    if (ec) return Status::Unavailable("resolving " + host + ": " + ec.message());
    stream_.expires_after(timeout_);
    stream_.async_connect(endpoints, [&ec](boost::beast::error_code e, const auto&) { ec = e; });
    RunIo();
    if (ec) return Status::Unavailable("connecting to " + host + ": " + ec.message());
    return Status::Ok();
  }

  // Sends a request (HTTP/1.1, keep-alive unless `close`) and reads its response.
  StatusOr<HttpReply> Request(boost::beast::http::verb method, const std::string& target,
                              const std::string& body = "", bool close = false) {
    namespace http = boost::beast::http;
    http::request<http::string_body> request(method, target, 11);
    request.set(http::field::host, "test");
    request.keep_alive(!close);
    if (!body.empty() || method == http::verb::post) {
      request.body() = body;
      request.prepare_payload();
    }
    boost::beast::error_code ec;
    stream_.expires_after(timeout_);
    http::async_write(stream_, request, [&ec](boost::beast::error_code e, size_t) { ec = e; });
    RunIo();
    if (ec) return Status::Unavailable("sending the request: " + ec.message());
    return ReadReply(method == http::verb::head);
  }

  // Writes bytes as they are: a partial, oversized or malformed request.
  Status Send(const std::string& bytes) {
    boost::beast::error_code ec;
    stream_.expires_after(timeout_);
    boost::asio::async_write(stream_, boost::asio::buffer(bytes),
                             [&ec](boost::beast::error_code e, size_t) { ec = e; });
    RunIo();
    if (ec) return Status::Unavailable("sending: " + ec.message());
    return Status::Ok();
  }

  // Reads one response (the answer to a HEAD request has no body).
  StatusOr<HttpReply> ReadReply(bool head = false) {
    namespace http = boost::beast::http;
    http::response_parser<http::string_body> parser;
    parser.skip(head);
    parser.body_limit(64 << 20);
    boost::beast::error_code ec;
    stream_.expires_after(timeout_);
    http::async_read(stream_, buffer_, parser,
                     [&ec](boost::beast::error_code e, size_t) { ec = e; });
    RunIo();
    if (ec) return Status::Unavailable("reading the response: " + ec.message());
    const auto& response = parser.get();
    HttpReply reply;
    reply.status = static_cast<int>(response.result_int());
    auto header = [&](http::field field) {
      const auto value = response[field];
      return std::string(value.data(), value.size());
    };
    reply.content_type = header(http::field::content_type);
    reply.allow = header(http::field::allow);
    reply.content_length = header(http::field::content_length);
    reply.keep_alive = response.keep_alive();
    reply.body = response.body();
    return reply;
  }

  // Waits until the server closes the connection (end of stream or reset), reading and dropping
  // whatever it sends first. DEADLINE_EXCEEDED when it is still open after `timeout`.
  Status WaitForClose(std::chrono::seconds timeout) {
    boost::beast::error_code ec;
    stream_.expires_after(timeout);
    char data[4096];
    while (!ec) {
      stream_.async_read_some(boost::asio::buffer(data),
                              [&ec](boost::beast::error_code e, size_t) { ec = e; });
      RunIo();
    }
    if (ec == boost::beast::error::timeout) {
      return Status::DeadlineExceeded("the server kept the connection open");
    }
    return Status::Ok();
  }

 private:
  void RunIo() {
    ioc_.restart();
    ioc_.run();
  }

  const std::chrono::seconds timeout_;
  boost::asio::io_context ioc_;
  boost::beast::tcp_stream stream_{ioc_};
  boost::beast::flat_buffer buffer_;
};

// GET http://HOST:PORT/TARGET on a connection of its own.
inline StatusOr<HttpReply> HttpGet(const std::string& host, int port, const std::string& target) {
  HttpConnection connection;
  EPHEMERA_RETURN_IF_ERROR(connection.Connect(host, port));
  return connection.Request(boost::beast::http::verb::get, target, "", /*close=*/true);
}

}  // namespace ephemera::testing
