// The storage-capacity controller's pure functions, and its reconciler against an in-memory API
// client and a fake CapacitySource.
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <condition_variable>
#include <functional>
#include <map>
#include <mutex>
#include <set>
#include <thread>

#include "common/quantity.h"
#include "controllers/capacity/bootstrap_tls.h"
#include "controllers/capacity/controller.h"
#include "controllers/capacity/discovery.h"
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

TEST_CASE("Capacity PV updates matter only for size affinity or driver", "[unit][capacity]") {
  Object pv = {{"spec",
                {{"capacity", {{"storage", "64Mi"}}},
                 {"csi", {{"driver", kDriver}, {"volumeHandle", "v"}}}}},
               {"status", {{"phase", "Available"}}}};
  pv["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"] =
      Object::array({{{"matchExpressions",
                       Object::array({{{"key", kKey}, {"operator", "In"}, {"values", {"n1"}}}})}}});
  Object bound = pv;
  bound["status"]["phase"] = "Bound";
  bound["spec"]["claimRef"] = {{"name", "c"}, {"namespace", "ns"}};
  bound["metadata"]["annotations"] = {{"pv.kubernetes.io/bound-by-controller", "yes"}};
  CHECK_FALSE(VolumeUpdateMatters(pv, bound));
  Object expanded = bound;
  expanded["spec"]["capacity"]["storage"] = "128Mi";
  CHECK(VolumeUpdateMatters(bound, expanded));
  Object moved = pv;
  moved["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"][0]["matchExpressions"][0]
       ["values"] = Object::array({"n2"});
  CHECK(VolumeUpdateMatters(pv, moved));
  Object other = pv;
  other["spec"]["csi"]["driver"] = "other.example.com";
  CHECK(VolumeUpdateMatters(pv, other));
  // Hostile shapes do not crash.
  CHECK(VolumeUpdateMatters(pv, Object("not an object")));
  CHECK_FALSE(VolumeUpdateMatters(Object::array(), Object(42)));
}

TEST_CASE("Capacity endpoints come from the driver's pods with a node and an IP",
          "[unit][capacity]") {
  auto pod = [](const std::string& name, const std::string& node, const std::string& ip,
                const std::string& phase = "Running") {
    Object o = {{"metadata", {{"name", name}}},
                {"spec", {{"nodeName", node}}},
                {"status", {{"podIP", ip}, {"phase", phase}}}};
    return std::make_shared<const Object>(std::move(o));
  };
  auto deleting = [&](const std::string& name, const std::string& node, const std::string& ip) {
    Object o = *pod(name, node, ip);
    o["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z";
    return std::make_shared<const Object>(std::move(o));
  };
  const std::vector<ObjectPtr> pods = {
      pod("a", "n1", "10.0.0.1"),
      pod("b", "n2", "fd00::2"),
      pod("c", "n3", ""),                       // no IP yet
      pod("d", "", "10.0.0.4"),                 // not scheduled
      pod("e", "n5", "10.0.0.5; rm -rf /"),     // hostile
      pod("f", "n6", "10.0.0.6", "Failed"),     // finished
      deleting("g", "n7", "10.0.0.7"),          // going away
      pod("h2", "n8", "10.0.0.82", "Pending"),  // a Running pod on n8 wins
      pod("h1", "n8", "10.0.0.81"),
      pod("i2", "n9", "10.0.0.92"),  // same phase: first by name
      pod("i1", "n9", "10.0.0.91"),
      std::make_shared<const Object>(Object::array()),
  };
  const std::map<std::string, std::string> want = {{"n1", "10.0.0.1:10000"},
                                                   {"n2", "[fd00::2]:10000"},
                                                   {"n8", "10.0.0.81:10000"},
                                                   {"n9", "10.0.0.91:10000"}};
  CHECK(EndpointsFromPods(pods, 10000) == want);

  const std::vector<std::string> flags = {
      "--controllers=storage-capacity",  "--csi-node-endpoints-selector=app=driver",
      "--csi-node-endpoints-port=10001", "--capacity-tls-ca=a",
      "--capacity-tls-cert=b",           "--capacity-tls-key=c",
      "--capacity-namespace=ns"};
  ManagerOptions o;
  CHECK(ParseManagerOptions(flags, &o).code() == Code::kInvalidArgument);  // no --driver-name
  auto with_name = flags;
  with_name.push_back("--driver-name=d");
  ManagerOptions ok;
  REQUIRE(ParseManagerOptions(with_name, &ok).ok());
  CHECK(ok.csi_node_endpoints_selector == "app=driver");
  CHECK(ok.csi_node_endpoints_port == 10001);
}

TEST_CASE("Capacity bootstrap-tls certificates chain to their CA and name the server",
          "[unit][capacity]") {
  auto ca = MakeCa("test-ca", 1);
  REQUIRE(ca.ok());
  auto server = MakeLeaf(*ca, "ephemera-capacity", true, 1);
  auto client = MakeLeaf(*ca, "manager", false, 1);
  auto other_ca = MakeCa("other-ca", 1);
  REQUIRE(server.ok());
  REQUIRE(client.ok());
  REQUIRE(other_ca.ok());
  auto cert = [](const std::string& pem) {
    BIO* bio = BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size()));
    X509* x = PEM_read_bio_X509(bio, nullptr, nullptr, nullptr);
    BIO_free(bio);
    return std::unique_ptr<X509, void (*)(X509*)>(x, X509_free);
  };
  auto ca_cert = cert(ca->cert_pem);
  auto other_cert = cert(other_ca->cert_pem);
  auto server_cert = cert(server->cert_pem);
  auto client_cert = cert(client->cert_pem);
  REQUIRE(ca_cert);
  REQUIRE(server_cert);
  REQUIRE(client_cert);
  EVP_PKEY* ca_key = X509_get0_pubkey(ca_cert.get());
  CHECK(X509_verify(ca_cert.get(), ca_key) == 1);  // self-signed
  CHECK(X509_verify(server_cert.get(), ca_key) == 1);
  CHECK(X509_verify(client_cert.get(), ca_key) == 1);
  CHECK(X509_verify(server_cert.get(), X509_get0_pubkey(other_cert.get())) != 1);
  CHECK(X509_check_ca(ca_cert.get()) == 1);
  CHECK(X509_check_ca(server_cert.get()) == 0);
  CHECK(X509_check_host(server_cert.get(), "ephemera-capacity", 0, 0, nullptr) == 1);
  CHECK(X509_check_host(server_cert.get(), "elsewhere", 0, 0, nullptr) != 1);
  CHECK(X509_check_purpose(server_cert.get(), X509_PURPOSE_SSL_SERVER, 0) == 1);
  CHECK(X509_check_purpose(client_cert.get(), X509_PURPOSE_SSL_CLIENT, 0) == 1);
  CHECK(X509_check_purpose(client_cert.get(), X509_PURPOSE_SSL_SERVER, 0) != 1);
  CHECK(server->key_pem.find("PRIVATE KEY") != std::string::npos);
  CHECK_FALSE(MakeLeaf({"garbage", "garbage"}, "x", true, 1).ok());

  ManagerOptions bad;
  CHECK(ParseManagerOptions({"--controllers=storage-capacity", "--csi-node-endpoint=n=h:1",
                             "--bootstrap-tls", "--capacity-tls-ca=a", "--capacity-namespace=ns"},
                            &bad)
            .code() == Code::kInvalidArgument);
  ManagerOptions ok;
  REQUIRE(ParseManagerOptions({"--controllers=storage-capacity", "--csi-node-endpoint=n=h:1",
                               "--bootstrap-tls", "--capacity-namespace=ns"},
                              &ok)
              .ok());
  CHECK(ok.bootstrap_tls);
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
                               "--kube-api-capacity-burst=7", "--capacity-ownerref-level=2"},
                              &ok)
              .ok());
  CHECK(ok.capacity_poll_interval == std::chrono::minutes(5));
  CHECK(ok.capacity_for_immediate_binding);
  CHECK(ok.kube_api_capacity_qps == 3);
  CHECK(ok.kube_api_capacity_burst == 7);
  CHECK(ok.capacity_ownerref_level == 2);
  // external-provisioner's meaning: -1 none (our default), 0 the pod, 1 its controller, ...
  CHECK(ManagerOptions{}.capacity_ownerref_level == -1);
  for (const char* level : {"-1", "0", "1", "5"}) {
    ManagerOptions o2;
    CHECK(ParseManagerOptions(
              {"--controllers=storage-capacity", "--csi-address=unix:///x.sock",
               "--capacity-namespace=ns", std::string("--capacity-ownerref-level=") + level},
              &o2)
              .ok());
    CHECK(o2.capacity_ownerref_level == std::stoi(level));
  }
  for (const char* level : {"-2", "6", "x", "-", "--1"}) {
    ManagerOptions o2;
    CHECK(ParseManagerOptions(
              {"--controllers=storage-capacity", "--csi-address=unix:///x.sock",
               "--capacity-namespace=ns", std::string("--capacity-ownerref-level=") + level},
              &o2)
              .code() == Code::kInvalidArgument);
  }
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
    if (it != segment.end() && down.count(it->second) > 0) {
      return Status::Unavailable("connection refused");
    }
    return CapacityResult{.available = it == segment.end() ? 0 : capacity[it->second]};
  }
  std::mutex mu;
  std::map<std::string, int64_t> capacity;
  bool has_capability = true;
  bool fail = false;
  int calls = 0;
  // As a per-node source: a segment's first node is asked; nodes in `down` do not answer.
  bool per_node = false;
  std::set<std::string> down;
  std::string NodeFor(const std::vector<std::string>& nodes) const override {
    return per_node && !nodes.empty() ? nodes.front() : "";
  }
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
  REQUIRE(controller.Start(std::stop_token{}).ok());
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

TEST_CASE("Capacity controller reports an unreachable node endpoint by Event and metric",
          "[unit][capacity]") {
  auto client = std::make_shared<MemoryClient>();
  Populate(*client);
  auto source = std::make_shared<FakeSource>();
  source->capacity = {{"n1", 1LL << 30}, {"n2", 2LL << 30}};
  source->per_node = true;
  apiclient::MetricsRegistry metrics;
  auto events = std::make_shared<apiclient::EventRecorder>(
      client, apiclient::EventSource{"ephemera.io/storage-capacity", "test"});
  CapacityController controller(
      client, source, metrics,
      {.ns = "ns", .poll_interval = std::chrono::hours(1), .write_qps = 0, .events = events});
  REQUIRE(controller.Start(std::stop_token{}).ok());
  REQUIRE(Eventually([&] { return client->All("csistoragecapacities").size() == 2; }));
  REQUIRE(controller.Sync().ok());
  const uint64_t writes = controller.Writes();

  {
    std::lock_guard<std::mutex> lock(source->mu);
    source->down = {"n2"};
    source->capacity["n1"] = 512LL << 20;
  }
  controller.RefreshAll();
  CHECK_FALSE(controller.Sync().ok());
  CHECK(controller.UnreachableNodes() == std::set<std::string>{"n2"});
  const std::string rendered = metrics.Render();
  CHECK(rendered.find("csistoragecapacity_unreachable_nodes 1") != std::string::npos);
  CHECK(rendered.find("csistoragecapacity_node_getcapacity_errors_total{node=\"n2\"} 1") !=
        std::string::npos);
  // n1 was updated, n2 kept its 2Gi: one write only.
  CHECK(controller.Writes() == writes + 1);
  for (const auto& o : client->All("csistoragecapacities")) {
    const std::string node = Field(*o, "nodeTopology", "matchLabels", kKey);
    CHECK(Field(*o, "capacity") == (node == "n1" ? "512Mi" : "2Gi"));
  }
  // A second failure is no new Event.
  controller.RefreshAll();
  CHECK_FALSE(controller.Sync().ok());
  events->Flush();
  auto reasons = [&] {
    std::vector<std::string> out;
    for (const auto& e : client->All("events")) {
      CHECK(Field(*e, "regarding", "kind") == "Node");
      CHECK(Field(*e, "regarding", "name") == "n2");
      out.push_back(Field(*e, "reason"));
    }
    return out;
  };
  CHECK(reasons() == std::vector<std::string>{"CapacityEndpointUnreachable"});

  {
    std::lock_guard<std::mutex> lock(source->mu);
    source->down.clear();
  }
  controller.RefreshAll();
  REQUIRE(controller.Sync().ok());
  events->Flush();
  CHECK(controller.UnreachableNodes().empty());
  CHECK(metrics.Render().find("csistoragecapacity_unreachable_nodes 0") != std::string::npos);
  auto after = reasons();
  std::sort(after.begin(), after.end());
  CHECK(after ==
        std::vector<std::string>{"CapacityEndpointReachable", "CapacityEndpointUnreachable"});
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
  REQUIRE(controller.Start(std::stop_token{}).ok());
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
  REQUIRE(controller.Start(std::stop_token{}).ok());
  CHECK(controller.Disabled());
  CHECK(controller.Sync().ok());
  CHECK(client->All("csistoragecapacities").empty());
  CHECK(source->calls == 0);
  controller.Stop();
}

}  // namespace
}  // namespace ephemera::controllers
