// The informer against the live API server: sync and events, continuity across a restart of
// kube-apiserver, and a relist after 410 Gone forced by etcd compaction, in which objects deleted
// while the informer was not watching are reported as deletes.
#include "apiclient/informer.h"

#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <map>
#include <mutex>
#include <set>
#include <thread>

#include "apiclient/errors.h"
#include "tests/integration/cluster_client.h"
#include "tests/test_paths.h"

namespace ephemera::testing {
namespace {

using apiclient::Field;
using apiclient::Object;
using apiclient::ObjectPtr;
using apiclient::resources::kConfigMaps;
using std::chrono::milliseconds;
using std::chrono::seconds;

Object ConfigMap(const std::string& ns, const std::string& name, const std::string& value) {
  return {{"apiVersion", "v1"},
          {"kind", "ConfigMap"},
          {"metadata", {{"name", name}, {"namespace", ns}}},
          {"data", {{"value", value}}}};
}

// Records what the handlers saw, and lets a test wait for a condition on it.
class Recorder {
 public:
  apiclient::EventHandlers Handlers() {
    return {.on_add = [this](const ObjectPtr& o) { Record("add", o); },
            .on_update = [this](const ObjectPtr&, const ObjectPtr& o) { Record("update", o); },
            .on_delete = [this](const ObjectPtr& o) { Record("delete", o); }};
  }
  int Count(const std::string& what, const std::string& name) {
    std::lock_guard<std::mutex> lock(mu_);
    return counts_[what + " " + name];
  }
  bool WaitFor(const std::string& what, const std::string& name, int count = 1,
               seconds timeout = seconds(10)) {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, timeout, [&] { return counts_[what + " " + name] >= count; });
  }

 private:
  void Record(const std::string& what, const ObjectPtr& o) {
    std::lock_guard<std::mutex> lock(mu_);
    ++counts_[what + " " + Field(*o, "metadata", "name")];
    cv_.notify_all();
  }
  std::mutex mu_;
  std::condition_variable cv_;
  std::map<std::string, int> counts_;
};

std::set<std::string> StoreNames(const apiclient::Informer& informer) {
  std::set<std::string> names;
  for (const auto& o : informer.store().List())
    names.insert(Field(*o, "metadata", "name"));
  return names;
}

std::set<std::string> ServerNames(apiclient::ApiClient& client, const std::string& ns) {
  std::set<std::string> names;
  auto list = client.List(kConfigMaps, ns, {});
  REQUIRE(list.ok());
  for (const auto& o : list->items)
    names.insert(Field(*o, "metadata", "name"));
  return names;
}

// Name -> resourceVersion and data: what a fresh list says, against what the informer holds.
std::map<std::string, std::string> StoreState(const apiclient::Informer& informer) {
  std::map<std::string, std::string> state;
  for (const auto& o : informer.store().List()) {
    state[Field(*o, "metadata", "name")] =
        Field(*o, "metadata", "resourceVersion") + " " + (*o)["data"].dump();
  }
  return state;
}

std::map<std::string, std::string> ServerState(apiclient::ApiClient& client,
                                               const std::string& ns) {
  std::map<std::string, std::string> state;
  auto list = client.List(kConfigMaps, ns, {});
  REQUIRE(list.ok());
  for (const auto& o : list->items) {
    state[Field(*o, "metadata", "name")] =
        Field(*o, "metadata", "resourceVersion") + " " + (*o)["data"].dump();
  }
  return state;
}

TEST_CASE("Informer: syncs / then delivers adds / updates and deletes / indexes and trims",
          "[cluster][informer]") {
  const TestCluster cluster = TestCluster::FromEnvironment();
  auto client = cluster.AdminClient();
  const std::string ns = cluster.CreateNamespace("inf");
  for (int i = 0; i < 3; ++i) {
    REQUIRE(client->Create(kConfigMaps, ns, ConfigMap(ns, "pre-" + std::to_string(i), "v")).ok());
  }
  apiclient::Informer informer(
      client, {.resource = kConfigMaps,
               .ns = ns,
               .page_size = 2,  // several pages even for a handful of objects
               .indexers = {{"value",
                             [](const Object& o) {
                               return std::vector<std::string>{Field(o, "data", "value")};
                             }}},
               .transform = apiclient::DropManagedFields});
  Recorder recorder;
  informer.AddHandlers(recorder.Handlers());
  informer.Start();
  REQUIRE(informer.WaitForSync(milliseconds(10000)));
  CHECK(StoreNames(informer) == ServerNames(*client, ns));
  CHECK(recorder.Count("add", "pre-0") == 1);

  REQUIRE(client->Create(kConfigMaps, ns, ConfigMap(ns, "live", "x")).ok());
  REQUIRE(recorder.WaitFor("add", "live"));
  REQUIRE(client->MergePatch(kConfigMaps, ns, "live", {{"data", {{"value", "y"}}}}).ok());
  REQUIRE(recorder.WaitFor("update", "live"));
  CHECK(informer.store().ByIndex("value", "y").size() == 1);
  CHECK(informer.store().ByIndex("value", "x").empty());
  auto cached = informer.store().Get(ns + "/live");
  REQUIRE(cached != nullptr);
  CHECK_FALSE((*cached)["metadata"].contains("managedFields"));
  REQUIRE(client->Delete(kConfigMaps, ns, "live", {}).ok());
  REQUIRE(recorder.WaitFor("delete", "live"));
  CHECK(informer.store().Get(ns + "/live") == nullptr);
  informer.Stop();
}

TEST_CASE("Informer: no event lost across a restart of kube-apiserver",
          "[.][restart][cluster][informer]") {
  const TestCluster cluster = TestCluster::FromEnvironment();
  auto client = cluster.AdminClient();
  const std::string ns = cluster.CreateNamespace("restart");
  apiclient::Informer informer(client, {.resource = kConfigMaps, .ns = ns});
  Recorder recorder;
  informer.AddHandlers(recorder.Handlers());
  informer.Start();
  REQUIRE(informer.WaitForSync(milliseconds(10000)));
  REQUIRE(client->Create(kConfigMaps, ns, ConfigMap(ns, "before", "1")).ok());
  REQUIRE(recorder.WaitFor("add", "before"));

  const std::string restart = std::string(kSourceDir) + "/scripts/cluster restart --dir '" +
                              cluster.dir() + "' --component kube-apiserver 2>/dev/null";
  REQUIRE(std::system(restart.c_str()) == 0);  // NOLINT(concurrency-mt-unsafe,cert-env33-c)

  // Right after the restart, while the informer is still reconnecting.
  Status created;
  for (int i = 0; i < 50; ++i) {
    created = client->Create(kConfigMaps, ns, ConfigMap(ns, "after", "2")).status();
    if (created.ok() || apiclient::IsAlreadyExists(created)) break;
    std::this_thread::sleep_for(milliseconds(200));
  }
  REQUIRE(created.ok());
  REQUIRE(client->MergePatch(kConfigMaps, ns, "before", {{"data", {{"value", "changed"}}}}).ok());
  REQUIRE(client->Delete(kConfigMaps, ns, "before", {}).ok());
  REQUIRE(recorder.WaitFor("add", "after", 1, seconds(40)));
  REQUIRE(recorder.WaitFor("delete", "before", 1, seconds(40)));
  CHECK(recorder.Count("update", "before") == 1);
  CHECK(recorder.Count("add", "after") == 1);
  CHECK(recorder.Count("add", "before") == 1);
  CHECK(StoreNames(informer) == ServerNames(*client, ns));
  // Reconnected by watching from its last version, not by listing again.
  CHECK(informer.ListCount() == 1);
  informer.Stop();
}

// An ApiClient that forwards to the real one, but whose watches the test can cut and hold back:
// the informer then misses events, as it would during a long network partition.
class PartitionableClient final : public apiclient::ApiClient {
 public:
  explicit PartitionableClient(apiclient::ApiClientPtr inner) : inner_(std::move(inner)) {}

  void Partition() {
    std::lock_guard<std::mutex> lock(mu_);
    partitioned_ = true;
    for (auto* s : streams_)
      s->Stop();
  }
  void Heal() {
    std::lock_guard<std::mutex> lock(mu_);
    partitioned_ = false;
  }

  StatusOr<ObjectPtr> Get(const apiclient::Resource& r, const std::string& ns,
                          const std::string& name) override {
    return inner_->Get(r, ns, name);
  }
  StatusOr<apiclient::ListResult> List(const apiclient::Resource& r, const std::string& ns,
                                       const apiclient::ListOptions& o) override {
    if (IsPartitioned()) return Status::Unavailable("partitioned by the test");
    return inner_->List(r, ns, o);
  }
  StatusOr<ObjectPtr> Create(const apiclient::Resource& r, const std::string& ns,
                             const Object& o) override {
    return inner_->Create(r, ns, o);
  }
  StatusOr<ObjectPtr> Update(const apiclient::Resource& r, const std::string& ns,
                             const Object& o) override {
    return inner_->Update(r, ns, o);
  }
  StatusOr<ObjectPtr> UpdateStatus(const apiclient::Resource& r, const std::string& ns,
                                   const Object& o) override {
    return inner_->UpdateStatus(r, ns, o);
  }
  StatusOr<ObjectPtr> MergePatch(const apiclient::Resource& r, const std::string& ns,
                                 const std::string& name, const Object& p) override {
    return inner_->MergePatch(r, ns, name, p);
  }
  StatusOr<ObjectPtr> Apply(const apiclient::Resource& r, const std::string& ns, const Object& o,
                            const std::string& m, bool f) override {
    return inner_->Apply(r, ns, o, m, f);
  }
  Status Delete(const apiclient::Resource& r, const std::string& ns, const std::string& name,
                const apiclient::DeleteOptions& o) override {
    return inner_->Delete(r, ns, name, o);
  }
  StatusOr<apiclient::WatchStreamPtr> Watch(const apiclient::Resource& r, const std::string& ns,
                                            const apiclient::WatchOptions& o) override {
    if (IsPartitioned()) return Status::Unavailable("partitioned by the test");
    auto stream = inner_->Watch(r, ns, o);
    if (!stream.ok()) return stream.status();
    std::lock_guard<std::mutex> lock(mu_);
    // Partitioned while the watch was being opened: it never delivers anything.
    if (partitioned_) return Status::Unavailable("partitioned by the test");
    streams_.push_back(stream->get());
    return std::move(*stream);
  }

 private:
  bool IsPartitioned() {
    std::lock_guard<std::mutex> lock(mu_);
    return partitioned_;
  }
  apiclient::ApiClientPtr inner_;
  std::mutex mu_;
  bool partitioned_ = false;
  std::vector<apiclient::WatchStream*> streams_;  // stopped on Partition(); owned by the informer
};

TEST_CASE("Informer: 410 Gone after etcd compaction leads to a relist that reports deletes",
          "[cluster][informer]") {
  const TestCluster cluster = TestCluster::FromEnvironment();
  auto real = cluster.AdminClient();
  const std::string ns = cluster.CreateNamespace("gone");
  for (const char* name : {"stays", "goes"}) {
    REQUIRE(real->Create(kConfigMaps, ns, ConfigMap(ns, name, "1")).ok());
  }
  auto client = std::make_shared<PartitionableClient>(real);
  apiclient::Informer informer(client, {.resource = kConfigMaps, .ns = ns});
  Recorder recorder;
  informer.AddHandlers(recorder.Handlers());
  informer.Start();
  REQUIRE(informer.WaitForSync(milliseconds(10000)));
  REQUIRE(recorder.WaitFor("add", "goes"));
  const std::string version_before = informer.LastResourceVersion();

  client->Partition();
  // While the informer cannot watch: one object goes, one comes, one changes; then etcd forgets
  // every older version.
  REQUIRE(real->Delete(kConfigMaps, ns, "goes", {}).ok());
  REQUIRE(real->Create(kConfigMaps, ns, ConfigMap(ns, "new", "1")).ok());
  REQUIRE(real->MergePatch(kConfigMaps, ns, "stays", {{"data", {{"value", "2"}}}}).ok());
  REQUIRE(cluster.CompactEtcd());
  // The informer's version really is gone now.
  auto probe = real->Watch(kConfigMaps, ns, {.resource_version = version_before});
  if (probe.ok()) {
    apiclient::WatchEvent event;
    Status error;
    while ((*probe)->Next(&event, &error)) {
    }
    REQUIRE(apiclient::IsGone(error));
  } else {
    REQUIRE(apiclient::IsGone(probe.status()));
  }
  client->Heal();

  REQUIRE(recorder.WaitFor("delete", "goes", 1, seconds(40)));
  REQUIRE(recorder.WaitFor("add", "new", 1, seconds(40)));
  REQUIRE(recorder.WaitFor("update", "stays", 1, seconds(40)));
  CHECK(informer.ListCount() == 2);
  CHECK(StoreNames(informer) == ServerNames(*real, ns));
  // The store is what a fresh list says: names, resourceVersions and contents.
  const auto server = ServerState(*real, ns);
  CHECK(server.count("stays") == 1);
  CHECK(server.count("new") == 1);
  CHECK(server.count("goes") == 0);
  CHECK(StoreState(informer) == server);
  informer.Stop();
}

}  // namespace
}  // namespace ephemera::testing
