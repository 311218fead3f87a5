// The HTTPS transport against the live API server: tls-server-name from a kubeconfig, and
// keep-alive connections shared by concurrent requests.
#include <atomic>
#include <catch2/catch.hpp>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "apiclient/config.h"
#include "tests/integration/cluster_client.h"

namespace ephemera::testing {
namespace {

using apiclient::resources::kNamespaces;

// The suite's kubeconfig with `tls-server-name: name` added to its cluster.
StatusOr<apiclient::RestConfig> ConfigWithServerName(const TestCluster& cluster,
                                                     const std::string& name) {
  std::ifstream in(cluster.kubeconfig());
  std::stringstream text;
  std::string line;
  while (std::getline(in, line)) {
    text << line << "\n";
    if (line.find("    server: ") == 0) text << "    tls-server-name: " << name << "\n";
  }
  return apiclient::ParseKubeconfig(text.str(), cluster.dir());
}

TEST_CASE(
    "HttpsTransport: tls-server-name from a kubeconfig is what the certificate is checked for",
    "[cluster]") {
  const TestCluster cluster = TestCluster::FromEnvironment();

  // A name among the serving certificate's SANs (scripts/cluster), while the server URL is the
  // loopback address.
  auto config = ConfigWithServerName(cluster, "kubernetes.default.svc");
  INFO(config.status().ToString());
  REQUIRE(config.ok());
  CHECK(config->tls_server_name == "kubernetes.default.svc");
  CHECK(config->server.rfind("https://127.0.0.1:", 0) == 0);
  auto client = apiclient::RestClient::New(*config);
  REQUIRE(client.ok());
  auto got = (*client)->Get(kNamespaces, "", "default");
  INFO(got.status().ToString());
  REQUIRE(got.ok());
  CHECK((**got)["metadata"]["name"] == "default");

  // A name the certificate does not carry.
  auto wrong = ConfigWithServerName(cluster, "not-the-apiserver.example");
  REQUIRE(wrong.ok());
  auto wrong_client = apiclient::RestClient::New(*wrong);
  REQUIRE(wrong_client.ok());
  const Status status = (*wrong_client)->Get(kNamespaces, "", "default").status();
  CHECK(status.code() == Code::kUnavailable);
  CHECK_THAT(status.message(), Catch::Contains("TLS handshake"));
  CHECK((*wrong_client)->connections_opened() == 0);
}

TEST_CASE("HttpsTransport: 200 GETs from 4 threads use at most 4 connections", "[cluster]") {
  const TestCluster cluster = TestCluster::FromEnvironment();
  auto client = cluster.AdminClient(/*qps=*/10000, /*burst=*/10000);
  std::atomic<int> ok{0};
  std::vector<std::thread> threads;
  threads.reserve(4);
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 50; ++i) {
        if (client->Get(kNamespaces, "", "default").ok()) ++ok;
      }
    });
  }
  for (auto& t : threads)
    t.join();
  CHECK(ok.load() == 200);
  CHECK(client->connections_opened() >= 1);
  CHECK(client->connections_opened() <= 4);
}

}  // namespace
}  // namespace ephemera::testing
