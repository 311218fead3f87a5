// HttpEndpoint over real loopback connections (no cluster): addresses and ports, paths and
// methods, the metrics render function, the health checks, keep-alive, and clients that connect
// and say nothing.
#include "common/http_endpoint.h"

#include <atomic>
#include <boost/beast/http/verb.hpp>
#include <catch2/catch.hpp>
#include <chrono>
#include <memory>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "apiclient/metrics.h"
#include "tests/integration/http_get.h"

namespace ephemera {
namespace {

using apiclient::MetricsRegistry;
using std::chrono::seconds;
using std::chrono::steady_clock;
using testing::HttpConnection;
using testing::HttpGet;
using verb = boost::beast::http::verb;

constexpr const char* kLoopback = "127.0.0.1";

TEST_CASE("HTTP endpoint: port 0 binds a kernel-chosen port that serves /metrics and HEAD",
          "[http]") {
  MetricsRegistry registry;
  registry.Counter("test_scrapes_total", "Scrapes.").With({}).Inc();
  HttpEndpoint endpoint(registry);
  REQUIRE(endpoint.Start("127.0.0.1:0").ok());
  REQUIRE(endpoint.port() > 0);
  const auto metrics = HttpGet(kLoopback, endpoint.port(), "/metrics");
  REQUIRE(metrics.ok());
  CHECK(metrics->status == 200);
  CHECK(metrics->content_type == "text/plain; version=0.0.4");
  CHECK(metrics->body.find("test_scrapes_total 1\n") != std::string::npos);

  // HEAD: the same headers and no body; the connection goes on serving.
  HttpConnection connection;
  REQUIRE(connection.Connect(kLoopback, endpoint.port()).ok());
  const auto head = connection.Request(verb::head, "/metrics");
  REQUIRE(head.ok());
  CHECK(head->status == 200);
  CHECK(head->content_type == "text/plain; version=0.0.4");
  CHECK(head->content_length == std::to_string(metrics->body.size()));
  CHECK(head->body.empty());
  const auto again = connection.Request(verb::get, "/metrics");
  REQUIRE(again.ok());
  CHECK(again->body == metrics->body);
}

TEST_CASE("HTTP endpoint: /metrics renders afresh for each scrape / 500 when rendering throws",
          "[http]") {
  std::atomic<int> scrapes{0};
  std::atomic<bool> broken{false};
  HttpEndpoint endpoint([&] {
    if (broken) throw std::runtime_error("the registry is gone");
    return "test_scrapes_total " + std::to_string(++scrapes) + "\n";
  });
  REQUIRE(endpoint.Start("127.0.0.1:0").ok());
  for (int i = 1; i <= 2; ++i) {
    const auto reply = HttpGet(kLoopback, endpoint.port(), "/metrics");
    REQUIRE(reply.ok());
    CHECK(reply->status == 200);
    CHECK(reply->body == "test_scrapes_total " + std::to_string(i) + "\n");
  }
  broken = true;
  const auto failed = HttpGet(kLoopback, endpoint.port(), "/metrics");
  REQUIRE(failed.ok());
  CHECK(failed->status == 500);
  CHECK(failed->body.find("the registry is gone") != std::string::npos);
  // The endpoint goes on serving.
  const auto health = HttpGet(kLoopback, endpoint.port(), "/healthz");
  REQUIRE(health.ok());
  CHECK(health->status == 200);
  CHECK(health->body == "ok\n");
}

TEST_CASE("HTTP endpoint: IPv6 loopback / localhost / every address", "[http]") {
  MetricsRegistry registry;
  for (const auto& [address, connect_to] : std::vector<std::pair<std::string, std::string>>{
           {"[::1]:0", "::1"}, {"localhost:0", "127.0.0.1"}, {":0", "127.0.0.1"}}) {
    INFO(address);
    HttpEndpoint endpoint(registry);
    REQUIRE(endpoint.Start(address).ok());
    REQUIRE(endpoint.port() > 0);
    const auto reply = HttpGet(connect_to, endpoint.port(), "/healthz");
    REQUIRE(reply.ok());
    CHECK(reply->status == 200);
  }
}

TEST_CASE("HTTP endpoint: a port in use is UNAVAILABLE / a malformed address INVALID_ARGUMENT",
          "[http]") {
  MetricsRegistry registry;
  HttpEndpoint first(registry);
  REQUIRE(first.Start("127.0.0.1:0").ok());
  const std::string taken = "127.0.0.1:" + std::to_string(first.port());
  HttpEndpoint second(registry);
  const Status in_use = second.Start(taken);
  CHECK(in_use.code() == Code::kUnavailable);
  CHECK(in_use.message().find(taken) != std::string::npos);
  second.Stop();  // nothing started: harmless

  for (const std::string bad :
       {"nothing", "127.0.0.1:http", "127.0.0.1:70000", "127.0.0.1:", "[::1:0", "1:2:0"}) {
    INFO(bad);
    HttpEndpoint endpoint(registry);
    CHECK(endpoint.Start(bad).code() == Code::kInvalidArgument);
  }
  // The first endpoint still serves, and refuses a second Start().
  CHECK(first.Start("127.0.0.1:0").code() == Code::kFailedPrecondition);
  const auto reply = HttpGet(kLoopback, first.port(), "/healthz");
  REQUIRE(reply.ok());
  CHECK(reply->status == 200);
}

TEST_CASE("HTTP endpoint: 404 for an unknown path / 405 with Allow for POST / query ignored",
          "[http]") {
  MetricsRegistry registry;
  HttpEndpoint endpoint(registry);
  REQUIRE(endpoint.Start("127.0.0.1:0").ok());
  HttpConnection connection;
  REQUIRE(connection.Connect(kLoopback, endpoint.port()).ok());
  const auto missing = connection.Request(verb::get, "/nothing");
  REQUIRE(missing.ok());
  CHECK(missing->status == 404);
  const auto post = connection.Request(verb::post, "/metrics", "x=1");
  REQUIRE(post.ok());
  CHECK(post->status == 405);
  CHECK(post->allow == "GET, HEAD");
  const auto del = connection.Request(verb::delete_, "/healthz");
  REQUIRE(del.ok());
  CHECK(del->status == 405);
  const auto query = connection.Request(verb::get, "/healthz?verbose");
  REQUIRE(query.ok());
  CHECK(query->status == 200);
}

TEST_CASE("HTTP endpoint: /readyz is 503 naming the failing check / 200 once it passes", "[http]") {
  MetricsRegistry registry;
  HttpEndpoint endpoint(registry);
  std::atomic<bool> synced{false};
  std::atomic<bool> alive{true};
  endpoint.AddLivenessCheck("ping",
                            [&] { return alive ? Status::Ok() : Status::Unavailable("stuck"); });
  endpoint.AddReadinessCheck("informers-synced", [&] {
    return synced ? Status::Ok() : Status::Unavailable("informers not synced");
  });
  REQUIRE(endpoint.Start("127.0.0.1:0").ok());
  const auto get = [&](const std::string& path) {
    auto reply = HttpGet(kLoopback, endpoint.port(), path);
    REQUIRE(reply.ok());
    CHECK(reply->content_type == "text/plain");
    return *reply;
  };
  const auto not_ready = get("/readyz");
  CHECK(not_ready.status == 503);
  CHECK(not_ready.body.find("[-]informers-synced failed: informers not synced") !=
        std::string::npos);
  CHECK(not_ready.body.find("[+]ping ok") != std::string::npos);
  CHECK(get("/healthz").status == 200);  // readiness checks do not make it unhealthy
  CHECK(get("/livez").status == 200);

  synced = true;
  const auto ready = get("/readyz");
  CHECK(ready.status == 200);
  CHECK(ready.body.find("[+]informers-synced ok") != std::string::npos);

  alive = false;
  const auto unhealthy = get("/healthz");
  CHECK(unhealthy.status == 503);
  CHECK(unhealthy.body.find("[-]ping failed: stuck") != std::string::npos);
  CHECK(get("/readyz").status == 503);
}

TEST_CASE("HTTP endpoint: keep-alive answers two requests on one connection", "[http]") {
  MetricsRegistry registry;
  HttpEndpoint endpoint(registry);
  REQUIRE(endpoint.Start("127.0.0.1:0").ok());
  HttpConnection connection;
  REQUIRE(connection.Connect(kLoopback, endpoint.port()).ok());
  const auto first = connection.Request(verb::get, "/healthz");
  REQUIRE(first.ok());
  CHECK(first->status == 200);
  CHECK(first->keep_alive);
  // The client does not reconnect: the second answer comes on the same connection.
  const auto second = connection.Request(verb::get, "/readyz");
  REQUIRE(second.ok());
  CHECK(second->status == 200);
  // Connection: close is honoured.
  const auto last = connection.Request(verb::get, "/livez", "", /*close=*/true);
  REQUIRE(last.ok());
  CHECK_FALSE(last->keep_alive);
  CHECK(connection.WaitForClose(seconds(20)).ok());
}

TEST_CASE("HTTP endpoint: silent and slow clients do not block others and are dropped", "[http]") {
  MetricsRegistry registry;
  HttpEndpoint endpoint(registry);
  REQUIRE(endpoint.Start("127.0.0.1:0").ok());
  const auto connected = steady_clock::now();
  HttpConnection silent;
  REQUIRE(silent.Connect(kLoopback, endpoint.port()).ok());
  HttpConnection slow;  // half a request header
  REQUIRE(slow.Connect(kLoopback, endpoint.port()).ok());
  REQUIRE(slow.Send("GET /metrics HTTP/1.1\r\nHost: x\r\n").ok());

  for (int i = 0; i < 3; ++i) {
    const auto reply = HttpGet(kLoopback, endpoint.port(), "/healthz");
    REQUIRE(reply.ok());
    CHECK(reply->status == 200);
  }
  // The server drops both after its idle timeout (10 s).
  CHECK(silent.WaitForClose(seconds(40)).ok());
  CHECK(slow.WaitForClose(seconds(10)).ok());
  CHECK(steady_clock::now() - connected >= seconds(5));
}

TEST_CASE("HTTP endpoint: beyond 64 connections a new one closes the oldest", "[http]") {
  MetricsRegistry registry;
  HttpEndpoint endpoint(registry);
  REQUIRE(endpoint.Start("127.0.0.1:0").ok());
  const auto start = steady_clock::now();
  std::vector<std::unique_ptr<HttpConnection>> silent;
  for (int i = 0; i < 70; ++i) {
    silent.push_back(std::make_unique<HttpConnection>());
    REQUIRE(silent.back()->Connect(kLoopback, endpoint.port()).ok());
  }
  // A scrape still gets through, and the first connections made room long before their idle
  // timeout (10 s).
  const auto reply = HttpGet(kLoopback, endpoint.port(), "/metrics");
  REQUIRE(reply.ok());
  CHECK(reply->status == 200);
  CHECK(silent.front()->WaitForClose(seconds(20)).ok());
  const auto took = steady_clock::now() - start;
  INFO("the oldest connection closed after "
       << std::chrono::duration_cast<std::chrono::milliseconds>(took).count() << " ms");
  CHECK(took < seconds(8));
}

TEST_CASE("HTTP endpoint: an oversized header or body or a malformed request is refused",
          "[http]") {
  MetricsRegistry registry;
  HttpEndpoint endpoint(registry);
  REQUIRE(endpoint.Start("127.0.0.1:0").ok());
  const auto refused = [&](const std::string& request) {
    HttpConnection connection;
    REQUIRE(connection.Connect(kLoopback, endpoint.port()).ok());
    REQUIRE(connection.Send(request).ok());
    const auto reply = connection.ReadReply();
    REQUIRE(reply.ok());
    CHECK_FALSE(reply->keep_alive);
    CHECK(connection.WaitForClose(seconds(20)).ok());
    return reply->status;
  };
  CHECK(refused("GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: " + std::string(10000, 'a') +
                "\r\n\r\n") == 431);
  CHECK(refused("POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n" +
                std::string(5000, 'b')) == 413);
  CHECK(refused("NOT HTTP AT ALL\r\n\r\n") == 400);
}

TEST_CASE("HTTP endpoint: Stop() with clients connected returns promptly / is idempotent",
          "[http]") {
  MetricsRegistry registry;
  HttpEndpoint endpoint(registry);
  REQUIRE(endpoint.Start("127.0.0.1:0").ok());
  const int port = endpoint.port();
  HttpConnection silent;
  REQUIRE(silent.Connect(kLoopback, port).ok());
  HttpConnection idle;  // kept alive after a request
  REQUIRE(idle.Connect(kLoopback, port).ok());
  REQUIRE(idle.Request(verb::get, "/healthz").ok());

  const auto start = steady_clock::now();
  endpoint.Stop();
  const auto took = steady_clock::now() - start;
  INFO("Stop() took " << std::chrono::duration_cast<std::chrono::milliseconds>(took).count()
                      << " ms");
  CHECK(took < seconds(5));  // well below the 10 s idle timeout it must not wait for
  CHECK(silent.WaitForClose(seconds(5)).ok());
  CHECK(idle.WaitForClose(seconds(5)).ok());
  HttpConnection late;
  CHECK_FALSE(late.Connect(kLoopback, port).ok());
  endpoint.Stop();
}

}  // namespace
}  // namespace ephemera
