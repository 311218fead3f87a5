// RestClient against the live API server: every verb, errors, paging, TLS verification and the
// latency of streamed watch events.
#include <algorithm>
#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <fstream>
#include <mutex>
#include <set>
#include <sstream>
#include <thread>

#include "apiclient/errors.h"
#include "tests/integration/cluster_client.h"

namespace ephemera::testing {
namespace {

using apiclient::Field;
using apiclient::Object;
using apiclient::resources::kConfigMaps;
using apiclient::resources::kPersistentVolumeClaims;

Object ConfigMap(const std::string& ns, const std::string& name, const std::string& value) {
  return {{"apiVersion", "v1"},
          {"kind", "ConfigMap"},
          {"metadata", {{"name", name}, {"namespace", ns}}},
          {"data", {{"value", value}}}};
}

TEST_CASE("RestClient: update / conflict / merge patch / apply / status / delete", "[cluster]") {
  const TestCluster cluster = TestCluster::FromEnvironment();
  auto client = cluster.AdminClient();
  const std::string ns = cluster.CreateNamespace("verbs");

  auto created = client->Create(kConfigMaps, ns, ConfigMap(ns, "cm", "1"));
  REQUIRE(created.ok());

  Object copy = **created;  // Never mutate a shared object: change a copy.
  copy["data"]["value"] = "2";
  auto updated = client->Update(kConfigMaps, ns, copy);
  REQUIRE(updated.ok());
  CHECK((**updated)["data"]["value"] == "2");
  CHECK((**created)["data"]["value"] == "1");

  // The same stale copy again: the resourceVersion no longer matches.
  copy["data"]["value"] = "3";
  CHECK(apiclient::IsConflict(client->Update(kConfigMaps, ns, copy).status()));

  auto patched = client->MergePatch(kConfigMaps, ns, "cm", {{"data", {{"extra", "x"}}}});
  REQUIRE(patched.ok());
  CHECK((**patched)["data"]["extra"] == "x");
  CHECK((**patched)["data"]["value"] == "2");

  auto applied = client->Apply(kConfigMaps, ns, ConfigMap(ns, "applied", "a"), "ephemera-test",
                               /*force=*/true);
  REQUIRE(applied.ok());
  auto reapplied = client->Apply(kConfigMaps, ns, ConfigMap(ns, "applied", "b"), "ephemera-test",
                                 /*force=*/true);
  REQUIRE(reapplied.ok());
  CHECK((**reapplied)["data"]["value"] == "b");
  CHECK((**reapplied)["metadata"]["managedFields"][0]["manager"] == "ephemera-test");

  // The status subresource of a PVC: only status changes there.
  Object pvc = {{"apiVersion", "v1"},
                {"kind", "PersistentVolumeClaim"},
                {"metadata", {{"name", "claim"}, {"namespace", ns}}},
                {"spec",
                 {{"accessModes", {"ReadWriteOnce"}},
                  {"storageClassName", "none"},
                  {"resources", {{"requests", {{"storage", "1Gi"}}}}}}}};
  auto claim = client->Create(kPersistentVolumeClaims, ns, pvc);
  REQUIRE(claim.ok());
  Object with_status = **claim;
  with_status["status"]["phase"] = "Lost";
  auto status_updated = client->UpdateStatus(kPersistentVolumeClaims, ns, with_status);
  INFO(status_updated.status().ToString());
  REQUIRE(status_updated.ok());
  CHECK((**status_updated)["status"]["phase"] == "Lost");

  REQUIRE(client->Delete(kConfigMaps, ns, "cm", {.propagation_policy = "Background"}).ok());
  CHECK(apiclient::IsNotFound(client->Get(kConfigMaps, ns, "cm").status()));
  CHECK(apiclient::IsNotFound(client->Delete(kConfigMaps, ns, "cm", {})));
  // Hostile names never reach a URL.
  CHECK(apiclient::IsInvalid(client->Get(kConfigMaps, ns, "../../secrets/x").status()));
  CHECK(apiclient::IsInvalid(client->Get(kConfigMaps, "a/b", "x").status()));
}

TEST_CASE("RestClient: list pagination over 2000 objects", "[cluster]") {
  const TestCluster cluster = TestCluster::FromEnvironment();
  auto client = cluster.AdminClient(/*qps=*/0, /*burst=*/0);  // No client-side limit.
  const std::string ns = cluster.CreateNamespace("paging");
  constexpr int kObjects = 2000;
  std::atomic<int> next{0};
  std::atomic<int> failures{0};
  std::mutex first_error_mu;
  std::string first_error;
  std::vector<std::thread> workers;
  workers.reserve(8);
  for (int w = 0; w < 8; ++w) {
    workers.emplace_back([&] {
      for (int i = next++; i < kObjects; i = next++) {
        Object cm = ConfigMap(ns, "cm-" + std::to_string(i), std::to_string(i));
        cm["metadata"]["labels"]["set"] = i % 2 == 0 ? "even" : "odd";
        const Status s = client->Create(kConfigMaps, ns, cm).status();
        if (!s.ok() && failures++ == 0) {
          std::lock_guard<std::mutex> lock(first_error_mu);
          first_error = s.ToString();
        }
      }
    });
  }
  for (auto& t : workers)
    t.join();
  INFO("first failure: " << first_error);
  REQUIRE(failures == 0);

  std::set<std::string> names;
  int pages = 0;
  std::string resource_version;
  apiclient::ListOptions options{.limit = 500};
  // Another test of this suite may compact etcd meanwhile (ctest runs two at once): a continue
  // token from before a compaction is expired (410), and a client starts the list again, as
  // Kubernetes documents. A CI run saw a page fail once beside the compaction test (its error was
  // not printed then; it is now).
  int restarts = 0;
  for (;;) {
    auto page = client->List(kConfigMaps, ns, options);
    if (!page.ok() && page.status().code() == ephemera::Code::kOutOfRange && restarts < 3) {
      ++restarts;
      WARN("list restarted: " << page.status().ToString());
      names.clear();
      pages = 0;
      resource_version.clear();
      options.continue_token.clear();
      continue;
    }
    INFO(page.status().ToString());
    REQUIRE(page.ok());
    ++pages;
    for (const auto& item : page->items) {
      names.insert(Field(*item, "metadata", "name"));
      CHECK(Field(*item, "kind") == "ConfigMap");
    }
    if (resource_version.empty()) resource_version = page->resource_version;
    // Every page of one paged list is a view of the same snapshot.
    CHECK(page->resource_version == resource_version);
    options.continue_token = page->continue_token;
    if (options.continue_token.empty()) break;
  }
  // 2,000 ours + kube-root-ca.crt, which kube-controller-manager puts in every namespace.
  CHECK(names.size() == kObjects + 1);
  CHECK(pages == 5);

  auto even = client->List(kConfigMaps, ns, {.label_selector = "set=even"});
  REQUIRE(even.ok());
  CHECK(even->items.size() == kObjects / 2);
}

// Events are streamed as they come, not held until a buffer fills or the watch ends (which would
// take seconds to minutes). The bounds leave room for a loaded 2-core machine: the measured
// latency is a benchmark's business (bench/apiclient: p50 4.5 ms on a quiet machine).
TEST_CASE("RestClient: a watch event arrives promptly after the change", "[cluster]") {
  const TestCluster cluster = TestCluster::FromEnvironment();
  auto client = cluster.AdminClient();
  const std::string ns = cluster.CreateNamespace("watch");
  // kube-controller-manager puts kube-root-ca.crt into every new namespace, at a moment of its
  // choosing: only our ConfigMaps are watched.
  const std::string not_root_ca = "metadata.name!=kube-root-ca.crt";
  auto list = client->List(kConfigMaps, ns, {.field_selector = not_root_ca});
  REQUIRE(list.ok());
  auto watch = client->Watch(
      kConfigMaps, ns, {.field_selector = not_root_ca, .resource_version = list->resource_version});
  REQUIRE(watch.ok());

  std::vector<double> latencies_ms;
  for (int i = 0; i < 20; ++i) {
    const auto start = std::chrono::steady_clock::now();
    REQUIRE(client->Create(kConfigMaps, ns, ConfigMap(ns, "w-" + std::to_string(i), "v")).ok());
    apiclient::WatchEvent event;
    Status error;
    do {
      REQUIRE((*watch)->Next(&event, &error));
    } while (event.type == apiclient::WatchEvent::Type::kBookmark);
    latencies_ms.push_back(
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start)
            .count());
    CHECK(event.type == apiclient::WatchEvent::Type::kAdded);
    CHECK(Field(*event.object, "metadata", "name") == "w-" + std::to_string(i));
  }
  std::sort(latencies_ms.begin(), latencies_ms.end());
  WARN("create-to-event latency p50 " << latencies_ms[10] << " ms, max " << latencies_ms.back()
                                      << " ms");
  CHECK(latencies_ms[10] < 1000);
  CHECK(latencies_ms.back() < 5000);

  // Stop() from another thread ends a blocked Next() at once.
  std::thread stopper([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    (*watch)->Stop();
  });
  const auto before = std::chrono::steady_clock::now();
  apiclient::WatchEvent event;
  Status error;
  CHECK_FALSE((*watch)->Next(&event, &error));
  stopper.join();
  CHECK(error.code() == Code::kCancelled);
  CHECK(std::chrono::steady_clock::now() - before < std::chrono::seconds(2));
}

TEST_CASE("RestClient: a watch from a compacted resourceVersion ends with OUT_OF_RANGE (410)",
          "[cluster]") {
  const TestCluster cluster = TestCluster::FromEnvironment();
  auto client = cluster.AdminClient();
  const std::string ns = cluster.CreateNamespace("gone");
  auto created = client->Create(kConfigMaps, ns, ConfigMap(ns, "old", "1"));
  REQUIRE(created.ok());
  const std::string old_version = Field(**created, "metadata", "resourceVersion");
  for (int i = 0; i < 3; ++i) {
    REQUIRE(client->MergePatch(kConfigMaps, ns, "old", {{"data", {{"value", std::to_string(i)}}}})
                .ok());
  }
  REQUIRE(cluster.CompactEtcd());

  auto watch = client->Watch(kConfigMaps, ns, {.resource_version = old_version});
  if (!watch.ok()) {  // The server may refuse at once or in the first event.
    CHECK(apiclient::IsGone(watch.status()));
    return;
  }
  apiclient::WatchEvent event;
  Status error;
  while ((*watch)->Next(&event, &error)) {
  }
  INFO(error.ToString());
  CHECK(apiclient::IsGone(error));
}

std::string ReadText(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

TEST_CASE("RestClient: TLS is verified / a server the CA did not sign is refused", "[cluster]") {
  const TestCluster cluster = TestCluster::FromEnvironment();
  auto config = cluster.AdminConfig();
  // A real CA, but not the one that signed the server's certificate.
  config.ca_pem = ReadText(cluster.dir() + "/pki/front-proxy-ca.crt");
  auto client = apiclient::RestClient::New(config);
  REQUIRE(client.ok());
  const Status status = (*client)->Get(kConfigMaps, "default", "x").status();
  CHECK(status.code() == Code::kUnavailable);

  auto garbage = cluster.AdminConfig();
  garbage.client_key_pem = "not a key";
  CHECK(apiclient::RestClient::New(garbage).status().code() == Code::kInvalidArgument);
}

TEST_CASE("RestClient: a client without credentials is forbidden by RBAC", "[cluster]") {
  const TestCluster cluster = TestCluster::FromEnvironment();
  auto config = cluster.AdminConfig();
  config.client_cert_pem.clear();
  config.client_key_pem.clear();
  auto client = apiclient::RestClient::New(config);
  REQUIRE(client.ok());
  CHECK(apiclient::IsForbidden((*client)->List(kPersistentVolumeClaims, "default", {}).status()));
}

}  // namespace
}  // namespace ephemera::testing
