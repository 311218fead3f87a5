// The storage-capacity controller's pure functions, and its reconciler against an in-memory API
// client and a fake CapacitySource.
#include <catch2/catch.hpp>
#include <condition_variable>
#include <functional>
#include <map>
#include <mutex>
#include <thread>

#include "common/quantity.h"
#include "controllers/capacity/controller.h"
#include "controllers/manager/options.h"

namespace ephemera::controllers {
namespace {

using apiclient::Field;
using apiclient::Object;
using apiclient::ObjectPtr;

constexpr char kDriver[] = "pmem-csi.ephemera.io";
constexpr char kKey[] = "pmem-csi.ephemera.io/node";

ObjectPtr Ptr(Object o) {
  return std::make_shared<const Object>(std::move(o));
}

ObjectPtr CSINode(const std::string& name, std::vector<std::string> keys,
                  const std::string& driver = kDriver) {
  return Ptr({{"metadata", {{"name", name}}},
              {"spec", {{"drivers", {{{"name", driver}, {"topologyKeys", keys}}}}}}});
}

ObjectPtr Node(const std::string& name, Object labels) {
  return Ptr({{"metadata", {{"name", name}, {"labels", std::move(labels)}}}});
}

bool Eventually(const std::function<bool()>& condition) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (std::chrono::steady_clock::now() < deadline) {
    if (condition()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return condition();
}

TEST_CASE("Capacity segments come from CSINodes and node labels", "[unit][capacity]") {
  std::map<std::string, ObjectPtr> nodes = {
      {"n1", Node("n1", {{kKey, "n1"}})},
      {"n2", Node("n2", {{kKey, "n2"}})},
      {"n3", Node("n3", Object::object())},  // label missing: skipped
      {"n5", Node("n5", {{kKey, 7}})},       // not a string: skipped
  };
  auto segments = ComputeSegments(
      {CSINode("n1", {kKey}), CSINode("n2", {kKey}), CSINode("n3", {kKey}),
       CSINode("n4", {kKey}) /* no Node */, CSINode("n5", {kKey}),
       CSINode("n1", {kKey}) /* equal segments merge */, CSINode("n2", {kKey}, "other.driver"),
       Ptr({{"metadata", {{"name", "bad"}}}, {"spec", {{"drivers", "not-a-list"}}}})},
      nodes, kDriver);
  REQUIRE(segments.size() == 2);
  CHECK(segments[0] == Segment{{kKey, "n1"}});
  CHECK(segments[1] == Segment{{kKey, "n2"}});
  // No topology keys: one empty segment for all nodes.
  auto all = ComputeSegments({CSINode("n1", {}), CSINode("n2", {})}, nodes, kDriver);
  REQUIRE(all.size() == 1);
  CHECK(all[0].empty());
}

TEST_CASE("Capacity classes are the driver's late-binding ones unless immediate is enabled",
          "[unit][capacity]") {
  const Object late = {{"provisioner", kDriver}, {"volumeBindingMode", "WaitForFirstConsumer"}};
  const Object now = {{"provisioner", kDriver}, {"volumeBindingMode", "Immediate"}};
  const Object unset = {{"provisioner", kDriver}};
  const Object other = {{"provisioner", "x"}, {"volumeBindingMode", "WaitForFirstConsumer"}};
  CHECK(ClassWanted(late, kDriver, false));
  CHECK_FALSE(ClassWanted(now, kDriver, false));
  CHECK_FALSE(ClassWanted(unset, kDriver, false));
  CHECK(ClassWanted(now, kDriver, true));
  CHECK(ClassWanted(unset, kDriver, true));
  CHECK_FALSE(ClassWanted(other, kDriver, true));
}

TEST_CASE("Capacity objects are built and matched on class and topology", "[unit][capacity]") {
  CapacityOptions options{.ns = "ns"};
  const CapacityItem item{.segment = {{kKey, "n1"}}, .storage_class = "late"};
  const Object o = DesiredCapacityObject(
      item, {.available = 1536LL << 20, .maximum_volume_size = 1LL << 30}, options, kDriver);
  CHECK(Field(o, "metadata", "generateName") == "csisc-");
  CHECK(Field(o, "capacity") == "1536Mi");
  CHECK(Field(o, "maximumVolumeSize") == "1Gi");
  CHECK(Field(o, "metadata", "labels", "csi.storage.k8s.io/drivername") == kDriver);
  CHECK(Field(o, "metadata", "labels", "csi.storage.k8s.io/managed-by") ==
        "ephemera-controller-manager");
  CHECK_FALSE(o["metadata"].contains("ownerReferences"));
  REQUIRE(ItemOf(o).has_value());
  CHECK(*ItemOf(o) == item);
  CHECK(CapacityUpToDate(o, {.available = 1536LL << 20, .maximum_volume_size = 1LL << 30}));
  // The API server's other spellings of the same quantity are equal.
  Object other = o;
  other["capacity"] = "1610612736";
  CHECK(CapacityUpToDate(other, {.available = 1536LL << 20, .maximum_volume_size = 1LL << 30}));
  CHECK_FALSE(CapacityUpToDate(o, {.available = 1LL << 30, .maximum_volume_size = 1LL << 30}));
  CHECK_FALSE(CapacityUpToDate(o, {.available = 1536LL << 20}));
  // Hostile or foreign shapes match no item.
  Object exprs = o;
  exprs["nodeTopology"]["matchExpressions"] = {{{"key", "a"}, {"operator", "Exists"}}};
  CHECK_FALSE(ItemOf(exprs).has_value());
  Object number = o;
  number["storageClassName"] = 3;
  CHECK_FALSE(ItemOf(number).has_value());
  Object empty = o;
  empty["nodeTopology"] = Object::object();
  REQUIRE(ItemOf(empty).has_value());
  CHECK(ItemOf(empty)->segment.empty());
}

TEST_CASE("Manager options accept the storage-capacity flags", "[unit][capacity]") {
  ManagerOptions o;
  CHECK(ParseManagerOptions({"--controllers=ephemeral-volume,storage-capacity"}, &o).code() ==
        Code::kInvalidArgument);  // no --csi-address
  ManagerOptions ok;
  REQUIRE(ParseManagerOptions({"--controllers=storage-capacity", "--csi-address=unix:///x.sock",
                               "--capacity-namespace=ns", "--capacity-poll-interval=5m",
                               "--capacity-for-immediate-binding", "--kube-api-capacity-qps=3",
                               "--kube-api-capacity-burst=7", "--capacity-ownerref-level=3"},
                              &ok)
              .ok());
  CHECK(ok.capacity_poll_interval == std::chrono::minutes(5));
  CHECK(ok.capacity_for_immediate_binding);
  CHECK(ok.kube_api_capacity_qps == 3);
  CHECK(ok.kube_api_capacity_burst == 7);
  CHECK(ok.capacity_ownerref_level == 3);
  ManagerOptions bad;
  CHECK_FALSE(ParseManagerOptions({"--controllers=storage-capacity", "--csi-address=unix:///x",
                                   "--capacity-namespace=ns", "--capacity-poll-interval=10ms"},
                                  &bad)
                  .ok());
}

// An API server in memory: lists what it holds; watches deliver nothing (the controller must
// rely on its own writes, as it does when the watch lags).
class MemoryClient final : public apiclient::ApiClient {
 public:
  void Put(const std::string& plural, Object o) {
    const std::string name = Field(o, "metadata", "name");
    std::lock_guard<std::mutex> lock(mu_);
    objects_[plural][name] = Ptr(std::move(o));
  }
  std::vector<ObjectPtr> All(const std::string& plural) {
    std::lock_guard<std::mutex> lock(mu_);
    std::vector<ObjectPtr> out;
    for (const auto& [n, o] : objects_[plural])
      out.push_back(o);
    return out;
  }
  int writes() {
    std::lock_guard<std::mutex> lock(mu_);
    return writes_;
  }

  StatusOr<ObjectPtr> Get(const apiclient::Resource& r, const std::string&,
                          const std::string& name) override {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = objects_[r.plural].find(name);
    if (it == objects_[r.plural].end()) return Status::NotFound(name);
    return it->second;
  }
  StatusOr<apiclient::ListResult> List(const apiclient::Resource& r, const std::string&,
                                       const apiclient::ListOptions&) override {
    std::lock_guard<std::mutex> lock(mu_);
    apiclient::ListResult out;
    for (const auto& [n, o] : objects_[r.plural])
      out.items.push_back(std::make_shared<Object>(*o));
    out.resource_version = std::to_string(version_);
    return out;
  }
  StatusOr<ObjectPtr> Create(const apiclient::Resource& r, const std::string&,
                             const Object& o) override {
    std::lock_guard<std::mutex> lock(mu_);
    Object copy = o;
    const std::string name = Field(o, "metadata", "generateName") + std::to_string(++version_);
    copy["metadata"]["name"] = name;
    copy["metadata"]["uid"] = "uid-" + name;
    copy["metadata"]["resourceVersion"] = std::to_string(version_);
    ++writes_;
    return objects_[r.plural][name] = Ptr(std::move(copy));
  }
  StatusOr<ObjectPtr> Update(const apiclient::Resource& r, const std::string&,
                             const Object& o) override {
    std::lock_guard<std::mutex> lock(mu_);
    const std::string name = Field(o, "metadata", "name");
    auto it = objects_[r.plural].find(name);
    if (it == objects_[r.plural].end()) return Status::NotFound(name);
    if (Field(*it->second, "metadata", "resourceVersion") !=
        Field(o, "metadata", "resourceVersion")) {
      return Status::Aborted("conflict");
    }
    Object copy = o;
    copy["metadata"]["resourceVersion"] = std::to_string(++version_);
    ++writes_;
    return it->second = Ptr(std::move(copy));
  }
  StatusOr<ObjectPtr> UpdateStatus(const apiclient::Resource& r, const std::string& ns,
                                   const Object& o) override {
    return Update(r, ns, o);
  }
  StatusOr<ObjectPtr> MergePatch(const apiclient::Resource&, const std::string&, const std::string&,
                                 const Object&) override {
    return Status::Unimplemented("merge patch");
  }
  StatusOr<ObjectPtr> Apply(const apiclient::Resource&, const std::string&, const Object&,
                            const std::string&, bool) override {
    return Status::Unimplemented("apply");
  }
  Status Delete(const apiclient::Resource& r, const std::string&, const std::string& name,
                const apiclient::DeleteOptions&) override {
    std::lock_guard<std::mutex> lock(mu_);
    ++writes_;
    return objects_[r.plural].erase(name) > 0 ? Status::Ok() : Status::NotFound(name);
  }
  StatusOr<apiclient::WatchStreamPtr> Watch(const apiclient::Resource&, const std::string&,
                                            const apiclient::WatchOptions&) override {
    return apiclient::WatchStreamPtr(new IdleWatch());
  }

 private:
  class IdleWatch final : public apiclient::WatchStream {
   public:
    bool Next(apiclient::WatchEvent*, Status*) override {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [this] { return stopped_; });
      return false;
    }
    void Stop() override {
      std::lock_guard<std::mutex> lock(mu_);
      stopped_ = true;
      cv_.notify_all();
    }

   private:
    std::mutex mu_;
    std::condition_variable cv_;
    bool stopped_ = false;
  };
  std::mutex mu_;
  std::map<std::string, std::map<std::string, ObjectPtr>> objects_;
  int64_t version_ = 100;
  int writes_ = 0;
};

class FakeSource final : public CapacitySource {
 public:
  StatusOr<std::string> DriverName() override { return std::string(kDriver); }
  Status CheckGetCapacity() override {
    return has_capability ? Status::Ok() : Status::FailedPrecondition("no GET_CAPACITY");
  }
  StatusOr<CapacityResult> GetCapacity(const Segment& segment,
                                       const std::map<std::string, std::string>&,
                                       const std::vector<std::string>&) override {
    std::lock_guard<std::mutex> lock(mu);
    ++calls;
    if (fail) return Status::Unavailable("driver down");
    auto it = segment.find(kKey);
    return CapacityResult{.available = it == segment.end() ? 0 : capacity[it->second]};
  }
  std::mutex mu;
  std::map<std::string, int64_t> capacity;
  bool has_capability = true;
  bool fail = false;
  int calls = 0;
};

void Populate(MemoryClient& client) {
  for (const std::string n : {"n1", "n2"}) {
    client.Put("nodes", *Node(n, {{kKey, n}}));
    client.Put("csinodes", *CSINode(n, {kKey}));
  }
  client.Put("storageclasses", {{"metadata", {{"name", "late"}}},
                                {"provisioner", kDriver},
                                {"volumeBindingMode", "WaitForFirstConsumer"}});
}

TEST_CASE("Capacity controller creates updates only on change and keeps the last value on errors",
          "[unit][capacity]") {
  auto client = std::make_shared<MemoryClient>();
  Populate(*client);
  auto source = std::make_shared<FakeSource>();
  source->capacity = {{"n1", 1LL << 30}, {"n2", 2LL << 30}};
  apiclient::MetricsRegistry metrics;
  CapacityController controller(
      client, source, metrics,
      {.ns = "ns", .poll_interval = std::chrono::hours(1), .write_qps = 0});
  REQUIRE(controller.Start(std::chrono::seconds(10)));
  REQUIRE(Eventually([&] { return client->All("csistoragecapacities").size() == 2; }));
  for (const auto& o : client->All("csistoragecapacities")) {
    const std::string node = Field(*o, "nodeTopology", "matchLabels", kKey);
    CHECK(Field(*o, "capacity") == (node == "n1" ? "1Gi" : "2Gi"));
  }
  REQUIRE(controller.Sync().ok());
  const int writes = client->writes();
  CHECK(writes == 2);
  controller.RefreshAll();
  REQUIRE(controller.Sync().ok());
  CHECK(client->writes() == writes);  // nothing changed: nothing written

  {
    std::lock_guard<std::mutex> lock(source->mu);
    source->capacity["n1"] = 512LL << 20;
  }
  controller.RefreshAll();
  REQUIRE(controller.Sync().ok());
  CHECK(client->writes() == writes + 1);
  bool seen = false;
  for (const auto& o : client->All("csistoragecapacities")) {
    if (Field(*o, "nodeTopology", "matchLabels", kKey) == "n1") {
      seen = true;
      CHECK(Field(*o, "capacity") == "512Mi");
    }
  }
  CHECK(seen);

  // The driver fails: the last values stay, nothing is published as zero.
  {
    std::lock_guard<std::mutex> lock(source->mu);
    source->fail = true;
  }
  controller.RefreshAll();
  CHECK_FALSE(controller.Sync().ok());
  CHECK(client->writes() == writes + 1);
  CHECK(client->All("csistoragecapacities").size() == 2);
  CHECK(
      metrics.Render().find("csistoragecapacity_getcapacity_errors_total{code=\"UNAVAILABLE\"}") !=
      std::string::npos);
  CHECK(metrics.Render().find("csistoragecapacities_desired_goal 2") != std::string::npos);
  controller.Stop();
}

TEST_CASE("Capacity controller adopts existing objects and deletes obsolete and duplicate ones",
          "[unit][capacity]") {
  auto client = std::make_shared<MemoryClient>();
  Populate(*client);
  auto source = std::make_shared<FakeSource>();
  source->capacity = {{"n1", 1LL << 30}, {"n2", 2LL << 30}};
  CapacityOptions options{.ns = "ns", .poll_interval = std::chrono::hours(1), .write_qps = 0};
  auto put = [&](const std::string& name, const std::string& cls, const std::string& node,
                 const std::string& capacity) {
    Object o = DesiredCapacityObject({.segment = {{kKey, node}}, .storage_class = cls},
                                     {.available = *ParseQuantity(capacity)}, options, kDriver);
    o["metadata"]["name"] = name;
    o["metadata"]["resourceVersion"] = "1";
    client->Put("csistoragecapacities", o);
  };
  put("csisc-a", "late", "n1", "1Gi");  // adopted as is
  put("csisc-b", "late", "n2", "2Gi");  // adopted as is
  put("csisc-c", "late", "n2", "2Gi");  // duplicate of b: deleted
  put("csisc-d", "gone", "n1", "1Gi");  // class gone: deleted
  put("csisc-e", "late", "n9", "1Gi");  // node gone: deleted
  apiclient::MetricsRegistry metrics;
  CapacityController controller(client, source, metrics, options);
  REQUIRE(controller.Start(std::chrono::seconds(10)));
  REQUIRE(Eventually([&] { return client->All("csistoragecapacities").size() == 2; }));
  CHECK(client->writes() == 3);  // three deletes, no create, no update
  std::set<std::string> names;
  for (const auto& o : client->All("csistoragecapacities"))
    names.insert(Field(*o, "metadata", "name"));
  CHECK(names == std::set<std::string>{"csisc-a", "csisc-b"});
  controller.Stop();
}

TEST_CASE("Capacity controller without GET_CAPACITY publishes nothing and keeps running",
          "[unit][capacity]") {
  auto client = std::make_shared<MemoryClient>();
  Populate(*client);
  auto source = std::make_shared<FakeSource>();
  source->has_capability = false;
  apiclient::MetricsRegistry metrics;
  CapacityController controller(client, source, metrics, {.ns = "ns", .write_qps = 0});
  REQUIRE(controller.Start(std::chrono::seconds(10)));
  CHECK(controller.Disabled());
  CHECK(controller.Sync().ok());
  CHECK(client->All("csistoragecapacities").empty());
  CHECK(source->calls == 0);
  controller.Stop();
}

}  // namespace
}  // namespace ephemera::controllers
