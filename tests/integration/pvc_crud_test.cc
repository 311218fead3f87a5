// Creates, reads and deletes a PersistentVolumeClaim through the live kube-apiserver of the test
// cluster, and sees kube-controller-manager's pvc-protection controller let it go.
#include <catch2/catch.hpp>
#include <chrono>
#include <thread>

#include "apiclient/errors.h"
#include "tests/integration/cluster_client.h"

namespace ephemera::testing {
namespace {

using apiclient::resources::kPersistentVolumeClaims;

TEST_CASE("A PVC is created / read and deleted through the live API server", "[cluster]") {
  const TestCluster cluster = TestCluster::FromEnvironment();
  auto client = cluster.AdminClient();
  const std::string name = "crud-" + RandomSuffix();
  const apiclient::Object pvc = {
      {"apiVersion", "v1"},
      {"kind", "PersistentVolumeClaim"},
      {"metadata", {{"name", name}, {"namespace", "default"}, {"labels", {{"test", "crud"}}}}},
      {"spec",
       {{"accessModes", {"ReadWriteOnce"}},
        {"storageClassName", "no-such-class"},
        {"resources", {{"requests", {{"storage", "1Gi"}}}}}}},
  };
  auto created = client->Create(kPersistentVolumeClaims, "default", pvc);
  INFO(created.status().ToString());
  REQUIRE(created.ok());
  const std::string uid = apiclient::Field(**created, "metadata", "uid");
  CHECK_FALSE(uid.empty());

  auto read = client->Get(kPersistentVolumeClaims, "default", name);
  REQUIRE(read.ok());
  CHECK((**read)["spec"]["resources"]["requests"]["storage"] == "1Gi");
  CHECK(apiclient::Field(**read, "metadata", "labels", "test") == "crud");
  CHECK(apiclient::Field(**read, "metadata", "uid") == uid);

  // A second create of the same name is refused by the server.
  CHECK(
      apiclient::IsAlreadyExists(client->Create(kPersistentVolumeClaims, "default", pvc).status()));
  // A delete for another incarnation of the object is refused.
  CHECK(apiclient::IsConflict(
      client->Delete(kPersistentVolumeClaims, "default", name, {.precondition_uid = "other-uid"})));

  REQUIRE(client->Delete(kPersistentVolumeClaims, "default", name, {.precondition_uid = uid}).ok());
  // The pvc-protection finalizer is removed by kube-controller-manager since no pod uses the
  // claim; then the object is gone.
  Status status;
  for (int i = 0; i < 100; ++i) {
    status = client->Get(kPersistentVolumeClaims, "default", name).status();
    if (apiclient::IsNotFound(status)) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  CHECK(apiclient::IsNotFound(status));
}

}  // namespace
}  // namespace ephemera::testing
