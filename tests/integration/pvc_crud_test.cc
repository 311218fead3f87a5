// Creates, reads and deletes a PersistentVolumeClaim through the live kube-apiserver of the test
// cluster, and sees kube-controller-manager's pvc-protection controller let it go.
#include <catch2/catch.hpp>
#include <chrono>
#include <random>
#include <thread>

#include "tests/integration/cluster_client.h"

namespace ephemera::testing {
namespace {

using web::http::methods;

std::string UniqueName(const std::string& prefix) {
  std::random_device rd;
  return prefix + "-" + std::to_string(rd() % 1000000);
}

TEST_CASE("A PVC is created, read and deleted through the live API server", "[cluster]") {
  const TestCluster cluster = TestCluster::FromEnvironment();
  const std::string name = UniqueName("crud");
  const std::string collection = "/api/v1/namespaces/default/persistentvolumeclaims";

  const nlohmann::json pvc = {
      {"apiVersion", "v1"},
      {"kind", "PersistentVolumeClaim"},
      {"metadata", {{"name", name}, {"labels", {{"test", "crud"}}}}},
      {"spec",
       {{"accessModes", {"ReadWriteOnce"}},
        {"storageClassName", "no-such-class"},
        {"resources", {{"requests", {{"storage", "1Gi"}}}}}}},
  };
  const Response created = cluster.Request(methods::POST, collection, &pvc);
  INFO(created.body.dump());
  REQUIRE(created.status == 201);
  CHECK(created.body["metadata"]["name"] == name);
  CHECK_FALSE(created.body["metadata"]["uid"].get<std::string>().empty());

  const Response read = cluster.Request(methods::GET, collection + "/" + name);
  REQUIRE(read.status == 200);
  CHECK(read.body["spec"]["resources"]["requests"]["storage"] == "1Gi");
  CHECK(read.body["metadata"]["labels"]["test"] == "crud");
  CHECK(read.body["metadata"]["uid"] == created.body["metadata"]["uid"]);

  // A second create of the same name is refused by the server.
  CHECK(cluster.Request(methods::POST, collection, &pvc).status == 409);

  const Response deleted = cluster.Request(methods::DEL, collection + "/" + name);
  REQUIRE((deleted.status == 200 || deleted.status == 202));

  // The pvc-protection finalizer is removed by kube-controller-manager since no pod uses the
  // claim; then the object is gone.
  int status = 0;
  for (int i = 0; i < 100; ++i) {
    status = cluster.Request(methods::GET, collection + "/" + name).status;
    if (status == 404) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  CHECK(status == 404);
}

TEST_CASE("The API server refuses a client without a certificate", "[cluster]") {
  const TestCluster cluster = TestCluster::FromEnvironment();
  web::http::client::http_client_config config;
  const std::string ca = cluster.dir() + "/pki/ca.crt";
  config.set_ssl_context_callback(
      [ca](boost::asio::ssl::context& ctx) { ctx.load_verify_file(ca); });
  web::http::client::http_client client(cluster.server(), config);
  const auto response =
      client.request(methods::GET, "/api/v1/namespaces/default/persistentvolumeclaims").get();
  // Anonymous requests are authenticated as system:anonymous, which RBAC does not allow to list.
  CHECK(response.status_code() == 403);
}

}  // namespace
}  // namespace ephemera::testing
