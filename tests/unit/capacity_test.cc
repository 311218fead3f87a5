// The storage-capacity controller's pure functions, and its reconciler against an in-memory API
// client and a fake CapacitySource.
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <condition_variable>
#include <functional>
#include <limits>
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
  return Ptr(
      {{"metadata", {{"name", name}, {"uid", "uid-" + name}, {"labels", std::move(labels)}}}});
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
  // A per-node segment's object is its Node's, and only the Node's, whatever options.owner says.
  CapacityOptions with_owner;
  with_owner.owner = {{"apiVersion", "apps/v1"},
                      {"kind", "Deployment"},
                      {"name", "m"},
                      {"uid", "u"},
                      {"controller", true}};
  const Object node_ref = NodeOwnerReference(*Node("n1", Object::object()));
  CHECK(node_ref ==
        Object{{"apiVersion", "v1"}, {"kind", "Node"}, {"name", "n1"}, {"uid", "uid-n1"}});
  const Object owned = DesiredCapacityObject({.segment = {{kKey, "n1"}}, .storage_class = "late"},
                                             {.available = 1}, with_owner, kDriver, &node_ref);
  CHECK(owned["metadata"]["ownerReferences"] == Object::array({node_ref}));
  CHECK(OwnedOnlyBy(owned, node_ref));
  const Object by_deployment = DesiredCapacityObject({.segment = {}, .storage_class = "late"},
                                                     {.available = 1}, with_owner, kDriver);
  CHECK(by_deployment["metadata"]["ownerReferences"] == Object::array({with_owner.owner}));
  CHECK_FALSE(OwnedOnlyBy(by_deployment, node_ref));
  Object other_uid = node_ref;
  other_uid["uid"] = "uid-of-an-older-n1";
  CHECK_FALSE(OwnedOnlyBy(owned, other_uid));
  Object blocking = owned;
  blocking["metadata"]["ownerReferences"][0]["blockOwnerDeletion"] = true;
  CHECK_FALSE(OwnedOnlyBy(blocking, node_ref));
  Object two = owned;
  two["metadata"]["ownerReferences"].push_back(with_owner.owner);
  CHECK_FALSE(OwnedOnlyBy(two, node_ref));
  CHECK_FALSE(OwnedOnlyBy(Object("hostile"), node_ref));
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
                               "--kube-api-capacity-burst=7", "--capacity-ownerref-level=2",
                               "--capacity-reservations=false", "--capacity-node-ownerref=false"},
                              &ok)
              .ok());
  CHECK_FALSE(ok.capacity_reservations);
  CHECK_FALSE(ok.capacity_node_ownerref);
  CHECK(ManagerOptions{}.capacity_reservations);   // on by default
  CHECK(ManagerOptions{}.capacity_node_ownerref);  // on by default
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
  CHECK(ok.capacity_threads == 4);  // the default
  ManagerOptions threads;
  REQUIRE(ParseManagerOptions({"--controllers=storage-capacity", "--csi-address=unix:///x.sock",
                               "--capacity-namespace=ns", "--capacity-threads=16"},
                              &threads)
              .ok());
  CHECK(threads.capacity_threads == 16);
  CHECK_FALSE(ParseManagerOptions({"--controllers=storage-capacity", "--csi-address=unix:///x",
                                   "--capacity-namespace=ns", "--capacity-threads=0"},
                                  &threads)
                  .ok());
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

// Reads another client's store and refuses every write.
class ReadOnlyView final : public apiclient::ApiClient {
 public:
  explicit ReadOnlyView(std::shared_ptr<MemoryClient> store) : store_(std::move(store)) {}

  StatusOr<ObjectPtr> Get(const apiclient::Resource& r, const std::string& ns,
                          const std::string& name) override {
    return store_->Get(r, ns, name);
  }
  StatusOr<apiclient::ListResult> List(const apiclient::Resource& r, const std::string& ns,
                                       const apiclient::ListOptions& options) override {
    return store_->List(r, ns, options);
  }
  StatusOr<ObjectPtr> Create(const apiclient::Resource&, const std::string&,
                             const Object&) override {
    return Refused();
  }
  StatusOr<ObjectPtr> Update(const apiclient::Resource&, const std::string&,
                             const Object&) override {
    return Refused();
  }
  StatusOr<ObjectPtr> UpdateStatus(const apiclient::Resource&, const std::string&,
                                   const Object&) override {
    return Refused();
  }
  StatusOr<ObjectPtr> MergePatch(const apiclient::Resource&, const std::string&, const std::string&,
                                 const Object&) override {
    return Refused();
  }
  StatusOr<ObjectPtr> Apply(const apiclient::Resource&, const std::string&, const Object&,
                            const std::string&, bool) override {
    return Refused();
  }
  Status Delete(const apiclient::Resource&, const std::string&, const std::string&,
                const apiclient::DeleteOptions&) override {
    return Refused();
  }
  StatusOr<apiclient::WatchStreamPtr> Watch(const apiclient::Resource& r, const std::string& ns,
                                            const apiclient::WatchOptions& options) override {
    return store_->Watch(r, ns, options);
  }

 private:
  static Status Refused() { return Status::Unavailable("this client does not write"); }
  std::shared_ptr<MemoryClient> store_;
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
    auto it = segment.find(kKey);
    if (it != segment.end()) ++node_calls[it->second];
    if (fail) return Status::Unavailable("driver down");
    if (it != segment.end() && down.count(it->second) > 0) {
      return Status::Unavailable("connection refused");
    }
    return CapacityResult{.available = it == segment.end() ? 0 : capacity[it->second]};
  }
  // Calls for a node in `hang` (or any, with hang_all) are held until Release() or a cancel, like
  // an endpoint that accepts the connection and never answers.
  Cancel GetCapacityAsync(const Segment& segment, const std::map<std::string, std::string>& params,
                          const std::vector<std::string>& nodes, CapacityCallback done) override {
    auto it = segment.find(kKey);
    const std::string node = it == segment.end() ? "" : it->second;
    {
      std::lock_guard<std::mutex> lock(mu);
      if (hang_all || hang.count(node) > 0) {
        ++calls;
        ++node_calls[node];
        auto call = std::make_shared<HeldCall>(HeldCall{node, std::move(done)});
        held.push_back(call);
        return [this, call] { Finish({call}, Status::Cancelled("cancelled")); };
      }
    }
    done(GetCapacity(segment, params, nodes));
    return {};
  }
  // Answers the held calls of `node` ("" = all) with `result`; returns how many there were.
  size_t Release(const std::string& node, const StatusOr<CapacityResult>& result) {
    std::vector<std::shared_ptr<HeldCall>> calls_of;
    {
      std::lock_guard<std::mutex> lock(mu);
      for (const auto& call : held)
        if (node.empty() || call->node == node) calls_of.push_back(call);
    }
    Finish(calls_of, result);
    return calls_of.size();
  }
  size_t Held(const std::string& node = "") {
    std::lock_guard<std::mutex> lock(mu);
    return static_cast<size_t>(std::count_if(held.begin(), held.end(), [&](const auto& call) {
      return node.empty() || call->node == node;
    }));
  }
  int Calls(const std::string& node = "") {
    std::lock_guard<std::mutex> lock(mu);
    return node.empty() ? calls : node_calls[node];
  }

  std::mutex mu;
  std::map<std::string, int64_t> capacity;
  bool has_capability = true;
  bool fail = false;
  int calls = 0;
  std::map<std::string, int> node_calls;
  // As a per-node source: a segment's first node is asked; nodes in `down` do not answer.
  bool per_node = false;
  std::set<std::string> down;
  std::set<std::string> hang;
  bool hang_all = false;
  std::string NodeFor(const std::vector<std::string>& nodes) const override {
    return per_node && !nodes.empty() ? nodes.front() : "";
  }

 private:
  struct HeldCall {
    std::string node;
    CapacityCallback done;
  };
  void Finish(const std::vector<std::shared_ptr<HeldCall>>& calls_to_end,
              const StatusOr<CapacityResult>& result) {
    std::vector<std::shared_ptr<HeldCall>> ended;
    {
      std::lock_guard<std::mutex> lock(mu);
      for (const auto& call : calls_to_end) {
        auto it = std::find(held.begin(), held.end(), call);
        if (it == held.end()) continue;  // already answered
        held.erase(it);
        ended.push_back(call);
      }
    }
    for (const auto& call : ended)
      call->done(result);
  }
  std::vector<std::shared_ptr<HeldCall>> held;
};

// A clock that moves only when told to. SleepFor returns once the clock has moved on far enough,
// or after a moment of real time (callers re-check the time, as the controller does).
class FakeClock final : public apiclient::Clock {
 public:
  TimePoint Now() const override {
    std::lock_guard<std::mutex> lock(mu_);
    return now_;
  }
  std::chrono::system_clock::time_point WallNow() const override {
    return std::chrono::system_clock::time_point(
        std::chrono::duration_cast<std::chrono::system_clock::duration>(Now().time_since_epoch()));
  }
  void SleepFor(Duration d) const override {
    std::unique_lock<std::mutex> lock(mu_);
    const auto until = now_ + d;
    cv_.wait_for(lock, std::chrono::milliseconds(10), [&] { return now_ >= until; });
  }
  void Advance(Duration d) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      now_ += d;
    }
    cv_.notify_all();
  }

 private:
  mutable std::mutex mu_;
  mutable std::condition_variable cv_;
  TimePoint now_{std::chrono::hours(1000)};
};

// True when `condition` holds for the whole of a short real-time wait: for what must NOT happen
// before the fake clock reaches a time. (On a slow machine this may miss a wrong early action,
// never report a false one.)
bool Stays(const std::function<bool()>& condition) {
  for (int i = 0; i < 30; ++i) {
    if (!condition()) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return condition();
}

void Populate(MemoryClient& client, int nodes = 2,
              const std::vector<std::string>& classes = {"late"}) {
  for (int i = 1; i <= nodes; ++i) {
    const std::string n = "n" + std::to_string(i);
    client.Put("nodes", *Node(n, {{kKey, n}}));
    client.Put("csinodes", *CSINode(n, {kKey}));
  }
  for (const auto& name : classes) {
    client.Put("storageclasses", {{"metadata", {{"name", name}}},
                                  {"provisioner", kDriver},
                                  {"volumeBindingMode", "WaitForFirstConsumer"}});
  }
}

// node -> capacity of the published objects of `storage_class`.
std::map<std::string, std::string> Published(MemoryClient& client,
                                             const std::string& storage_class = "late") {
  std::map<std::string, std::string> out;
  for (const auto& o : client.All("csistoragecapacities")) {
    if (Field(*o, "storageClassName") != storage_class) continue;
    out[Field(*o, "nodeTopology", "matchLabels", kKey)] = Field(*o, "capacity");
  }
  return out;
}

// A PV of the driver whose node affinity names `node`.
Object VolumeOn(const std::string& node) {
  Object pv = {{"metadata", {{"name", "pv-" + node}}}, {"spec", {{"csi", {{"driver", kDriver}}}}}};
  pv["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"] =
      Object::array({{{"matchExpressions",
                       Object::array({{{"key", kKey}, {"operator", "In"}, {"values", {node}}}})}}});
  return pv;
}

TEST_CASE("Capacity controller creates updates only on change and keeps the last value on errors",
          "[unit][capacity]") {
  auto client = std::make_shared<MemoryClient>();
  Populate(*client);
  auto source = std::make_shared<FakeSource>();
  source->capacity = {{"n1", 1LL << 30}, {"n2", 2LL << 30}};
  apiclient::MetricsRegistry metrics;
  FakeClock clock;
  CapacityController controller(
      client, source, metrics,
      {.ns = "ns", .poll_interval = std::chrono::hours(1), .write_qps = 0, .clock = &clock});
  REQUIRE(controller.Start(std::stop_token{}).ok());
  // An item's sync is counted after its write returns: wait for both counts, or the first
  // refresh below could take the second item's late count for one of its own.
  REQUIRE(
      Eventually([&] { return Published(*client).size() == 2 && controller.ItemSyncs() == 2; }));
  CHECK(Published(*client) == std::map<std::string, std::string>{{"n1", "1Gi"}, {"n2", "2Gi"}});
  const int writes = client->writes();
  CHECK(writes == 2);
  auto refresh = [&] {
    const uint64_t before = controller.ItemSyncs();
    controller.RefreshAll();
    return Eventually([&] { return controller.ItemSyncs() >= before + 2; });
  };
  // Freshness: the time of the driver's answer (the fake clock's wall time: 3,600,000 s), per
  // item; a later answer with the same value moves it without a write.
  const std::string confirmed_n1 =
      "csistoragecapacity_confirmed_timestamp_seconds{segment=\"pmem-csi.ephemera.io/node=n1\","
      "storage_class=\"late\"} ";
  CHECK(metrics.Render().find(confirmed_n1 + "3600000\n") != std::string::npos);
  clock.Advance(std::chrono::seconds(5));
  REQUIRE(refresh());
  CHECK(source->Calls() == 4);
  CHECK(client->writes() == writes);  // nothing changed: nothing written
  CHECK(metrics.Render().find(confirmed_n1 + "3600005\n") != std::string::npos);

  {
    std::lock_guard<std::mutex> lock(source->mu);
    source->capacity["n1"] = 512LL << 20;
  }
  REQUIRE(refresh());
  CHECK(client->writes() == writes + 1);
  CHECK(Published(*client) == std::map<std::string, std::string>{{"n1", "512Mi"}, {"n2", "2Gi"}});

  // The driver fails: the last values stay, nothing is published as zero.
  {
    std::lock_guard<std::mutex> lock(source->mu);
    source->fail = true;
  }
  REQUIRE(refresh());
  CHECK(client->writes() == writes + 1);
  CHECK(Published(*client) == std::map<std::string, std::string>{{"n1", "512Mi"}, {"n2", "2Gi"}});
  CHECK(
      metrics.Render().find("csistoragecapacity_getcapacity_errors_total{code=\"UNAVAILABLE\"}") !=
      std::string::npos);
  CHECK(metrics.Render().find("csistoragecapacities_desired_goal 2") != std::string::npos);
  controller.Stop();
}

TEST_CASE("Capacity controller writes through its own client when it has one", "[unit][capacity]") {
  // The controller-manager's capacity client: its own rate limit (--kube-api-capacity-qps), as
  // external-provisioner's. Here the controller's client refuses every write, so an object
  // written, updated or deleted can only have gone through the write client.
  auto client = std::make_shared<MemoryClient>();
  Populate(*client);
  auto reader = std::make_shared<ReadOnlyView>(client);
  auto source = std::make_shared<FakeSource>();
  source->capacity = {{"n1", 1LL << 30}, {"n2", 2LL << 30}};
  apiclient::MetricsRegistry metrics;
  FakeClock clock;
  CapacityController controller(reader, source, metrics,
                                {.ns = "ns",
                                 .poll_interval = std::chrono::hours(1),
                                 .write_qps = 0,
                                 .write_client = client,
                                 .clock = &clock});
  REQUIRE(controller.Start(std::stop_token{}).ok());
  REQUIRE(
      Eventually([&] { return Published(*client).size() == 2 && controller.ItemSyncs() == 2; }));
  CHECK(client->writes() == 2);
  {
    std::lock_guard<std::mutex> lock(source->mu);
    source->capacity["n1"] = 512LL << 20;
  }
  const uint64_t before = controller.ItemSyncs();
  controller.RefreshAll();
  REQUIRE(Eventually([&] { return controller.ItemSyncs() >= before + 2; }));
  CHECK(client->writes() == 3);
  CHECK(Published(*client) == std::map<std::string, std::string>{{"n1", "512Mi"}, {"n2", "2Gi"}});
  controller.Stop();
}

TEST_CASE("Capacity controller retries a failed item with its own doubling backoff on the clock",
          "[unit][capacity]") {
  auto client = std::make_shared<MemoryClient>();
  Populate(*client);
  auto source = std::make_shared<FakeSource>();
  source->capacity = {{"n1", 1LL << 30}, {"n2", 2LL << 30}};
  source->per_node = true;
  source->down = {"n2"};  // never answered yet: no object for n2
  apiclient::MetricsRegistry metrics;
  FakeClock clock;
  CapacityController controller(
      client, source, metrics,
      {.ns = "ns", .poll_interval = std::chrono::hours(1), .write_qps = 0, .clock = &clock});
  REQUIRE(controller.Start(std::stop_token{}).ok());
  // n1 published, n2's failure handled (its retry scheduled: the backoff counts from then).
  REQUIRE(
      Eventually([&] { return Published(*client).size() == 1 && controller.ItemSyncs() == 2; }));
  REQUIRE(source->Calls("n2") == 1);
  // 0.5 s, then 1 s, then 2 s; n1 is not asked again meanwhile.
  int expected = 1;
  uint64_t syncs = controller.ItemSyncs();
  for (auto delay : {std::chrono::milliseconds(500), std::chrono::milliseconds(1000),
                     std::chrono::milliseconds(2000)}) {
    clock.Advance(delay - std::chrono::milliseconds(1));
    CHECK(Stays([&] { return source->Calls("n2") == expected; }));
    clock.Advance(std::chrono::milliseconds(1));
    ++expected;
    CHECK(Eventually(
        [&] { return source->Calls("n2") == expected && controller.ItemSyncs() == syncs + 1; }));
    syncs = controller.ItemSyncs();
  }
  CHECK(source->Calls("n1") == 1);
  CHECK(Published(*client) == std::map<std::string, std::string>{{"n1", "1Gi"}});
  // It answers at the next retry (4 s) and is published; success resets the backoff.
  {
    std::lock_guard<std::mutex> lock(source->mu);
    source->down.clear();
  }
  clock.Advance(std::chrono::seconds(4));
  REQUIRE(Eventually([&] { return Published(*client).size() == 2; }));
  {
    std::lock_guard<std::mutex> lock(source->mu);
    source->down = {"n2"};
  }
  const uint64_t before = controller.ItemSyncs();
  controller.RefreshAll();
  REQUIRE(Eventually([&] { return controller.ItemSyncs() >= before + 2; }));
  const int calls = source->Calls("n2");
  clock.Advance(std::chrono::milliseconds(500));
  CHECK(Eventually([&] { return source->Calls("n2") == calls + 1; }));
  CHECK(Published(*client)["n2"] == "2Gi");  // the last value stays
  controller.Stop();
}

TEST_CASE("Capacity controller asks every item again each poll interval of the clock",
          "[unit][capacity]") {
  auto client = std::make_shared<MemoryClient>();
  Populate(*client);
  auto source = std::make_shared<FakeSource>();
  source->capacity = {{"n1", 1LL << 30}, {"n2", 2LL << 30}};
  apiclient::MetricsRegistry metrics;
  FakeClock clock;
  CapacityController controller(
      client, source, metrics,
      {.ns = "ns", .poll_interval = std::chrono::seconds(60), .write_qps = 0, .clock = &clock});
  REQUIRE(controller.Start(std::stop_token{}).ok());
  REQUIRE(Eventually([&] { return Published(*client).size() == 2; }));
  CHECK(source->Calls() == 2);
  for (int poll = 1; poll <= 2; ++poll) {
    clock.Advance(std::chrono::seconds(59));
    CHECK(Stays([&] { return source->Calls() == 2 * poll; }));
    clock.Advance(std::chrono::seconds(1));
    CHECK(Eventually([&] { return source->Calls() == 2 * (poll + 1); }));
  }
  {
    std::lock_guard<std::mutex> lock(source->mu);
    source->capacity["n2"] = 3LL << 30;
  }
  clock.Advance(std::chrono::seconds(60));
  CHECK(Eventually([&] { return Published(*client)["n2"] == "3Gi"; }));
  CHECK(client->writes() == 3);
  controller.Stop();
}

TEST_CASE("Capacity change pacer: at once when quiet, one call per interval in a burst",
          "[unit][capacity]") {
  using std::chrono::milliseconds;
  ChangePacer pacer(milliseconds(200));
  const apiclient::Clock::TimePoint t0{std::chrono::hours(1)};
  auto changed = [&](const std::string& key, int at_ms) {
    return std::chrono::duration_cast<milliseconds>(pacer.Changed(key, t0 + milliseconds(at_ms)))
        .count();
  };
  CHECK(changed("a", 0) == 0);   // never asked: at once
  CHECK(changed("a", 10) == 0);  // its call has not started: rides along
  pacer.Started("a", t0 + milliseconds(20));
  CHECK(changed("a", 50) == 170);   // 200 ms after the call
  CHECK(changed("a", 100) == 120);  // rides along with that one
  CHECK(changed("a", 219) == 1);
  CHECK(changed("b", 100) == 0);               // other items are on their own
  pacer.Started("a", t0 + milliseconds(221));  // late: a busy worker
  CHECK(changed("a", 300) == 121);
  pacer.Started("a", t0 + milliseconds(421));
  CHECK(changed("a", 621) == 0);  // quiet again: at once
  // A call for any reason (a poll) counts.
  pacer.Started("c", t0);
  CHECK(changed("c", 50) == 150);
  CHECK(pacer.size() == 3);
  pacer.Retain([](const std::string& key) { return key != "a"; });
  CHECK(pacer.size() == 2);
  CHECK(changed("a", 630) == 0);  // forgotten: quiet
}

TEST_CASE("Capacity controller asks a quiet segment at once and paces a burst of changes",
          "[unit][capacity]") {
  auto client = std::make_shared<MemoryClient>();
  Populate(*client, 2, {"late", "late2"});
  auto source = std::make_shared<FakeSource>();
  source->capacity = {{"n1", 1LL << 30}, {"n2", 2LL << 30}};
  apiclient::MetricsRegistry metrics;
  FakeClock clock;
  CapacityController controller(client, source, metrics,
                                {.ns = "ns",
                                 .poll_interval = std::chrono::hours(1),
                                 .debounce = std::chrono::milliseconds(200),
                                 .write_qps = 0,
                                 .clock = &clock});
  REQUIRE(controller.Start(std::stop_token{}).ok());
  REQUIRE(Eventually([&] { return client->All("csistoragecapacities").size() == 4; }));
  REQUIRE(source->Calls("n1") == 2);
  auto set_n1 = [&](int64_t bytes) {
    std::lock_guard<std::mutex> lock(source->mu);
    source->capacity["n1"] = bytes;
  };
  auto n1_published = [&](const std::string& value) {
    return Published(*client, "late")["n1"] == value && Published(*client, "late2")["n1"] == value;
  };
  clock.Advance(std::chrono::seconds(1));  // quiet: the first calls were a second ago
  // One change of a quiet segment: both of n1's items asked and published with no clock time
  // passing (the trailing debounce waited 200 ms here).
  set_n1(768LL << 20);
  controller.VolumeChanged(VolumeOn("n1"));
  REQUIRE(Eventually([&] { return n1_published("768Mi") && source->Calls("n1") == 4; }));
  // A burst right after those calls: five changes within 150 ms ride along with one call per
  // item, 200 ms after the last ones.
  set_n1(512LL << 20);
  for (int i = 0; i < 5; ++i) {
    controller.VolumeChanged(VolumeOn("n1"));
    clock.Advance(std::chrono::milliseconds(30));
  }
  clock.Advance(std::chrono::milliseconds(49));  // 199 ms after the calls
  CHECK(Stays([&] { return source->Calls("n1") == 4; }));
  clock.Advance(std::chrono::milliseconds(1));
  CHECK(Eventually([&] { return n1_published("512Mi"); }));
  CHECK(Stays([&] { return source->Calls("n1") == 6; }));
  // A change 100 ms after those calls waits for the rest of the 200 ms.
  clock.Advance(std::chrono::milliseconds(100));
  set_n1(256LL << 20);
  controller.VolumeChanged(VolumeOn("n1"));
  clock.Advance(std::chrono::milliseconds(99));
  CHECK(Stays([&] { return source->Calls("n1") == 6; }));
  clock.Advance(std::chrono::milliseconds(1));
  CHECK(Eventually([&] { return n1_published("256Mi") && source->Calls("n1") == 8; }));
  // Quiet again: the next change goes at once.
  clock.Advance(std::chrono::seconds(1));
  set_n1(128LL << 20);
  controller.VolumeChanged(VolumeOn("n1"));
  CHECK(Eventually([&] { return n1_published("128Mi") && source->Calls("n1") == 10; }));
  CHECK(Stays([&] { return source->Calls("n1") == 10; }));
  CHECK(source->Calls("n2") == 2);
  // An expansion's update (old and new PV on n1) is one change: one call per item.
  clock.Advance(std::chrono::seconds(1));
  controller.VolumeChanged(VolumeOn("n1"), VolumeOn("n1"));
  CHECK(Eventually([&] { return source->Calls("n1") == 12; }));
  clock.Advance(std::chrono::seconds(1));
  CHECK(Stays([&] { return source->Calls("n1") == 12; }));
  // A PV of another driver changes nothing.
  Object other = VolumeOn("n2");
  other["spec"]["csi"]["driver"] = "other.driver";
  controller.VolumeChanged(other);
  clock.Advance(std::chrono::seconds(1));
  CHECK(Stays([&] { return source->Calls("n2") == 2; }));
  controller.Stop();
}

TEST_CASE("Capacity controller asks a changed item before the items of a poll",
          "[unit][capacity]") {
  auto client = std::make_shared<MemoryClient>();
  Populate(*client, 4);
  auto source = std::make_shared<FakeSource>();
  source->capacity = {{"n1", 1LL << 30}, {"n2", 2LL << 30}, {"n3", 3LL << 30}, {"n4", 4LL << 30}};
  apiclient::MetricsRegistry metrics;
  FakeClock clock;
  // One call at a time to the central driver.
  CapacityController controller(client, source, metrics,
                                {.ns = "ns",
                                 .poll_interval = std::chrono::hours(1),
                                 .write_qps = 0,
                                 .threads = 1,
                                 .clock = &clock});
  REQUIRE(controller.Start(std::stop_token{}).ok());
  REQUIRE(
      Eventually([&] { return Published(*client).size() == 4 && controller.ItemSyncs() == 4; }));
  auto key = [](const std::string& node) {
    return CapacityController::KeyOf({.segment = {{kKey, node}}, .storage_class = "late"});
  };
  clock.Advance(std::chrono::seconds(1));
  {
    std::lock_guard<std::mutex> lock(source->mu);
    source->hang_all = true;
  }
  // A poll: n1 asked (held), the others wait in order.
  controller.RefreshAll();
  REQUIRE(Eventually([&] {
    return source->Held("n1") == 1 &&
           controller.WaitingKeys() == std::vector<std::string>{key("n2"), key("n3"), key("n4")};
  }));
  // A change on n4, then one on n3: they go first, in the order of their changes.
  controller.VolumeChanged(VolumeOn("n4"));
  CHECK(Eventually([&] {
    return controller.WaitingKeys() == std::vector<std::string>{key("n4"), key("n2"), key("n3")};
  }));
  controller.VolumeChanged(VolumeOn("n3"));
  CHECK(Eventually([&] {
    return controller.WaitingKeys() == std::vector<std::string>{key("n4"), key("n3"), key("n2")};
  }));
  // Another change on n4 while it waits: it keeps its place.
  controller.VolumeChanged(VolumeOn("n4"));
  CHECK(Stays([&] {
    return controller.WaitingKeys() == std::vector<std::string>{key("n4"), key("n3"), key("n2")};
  }));
  // The answer for n1 frees the slot for n4.
  REQUIRE(source->Release("n1", CapacityResult{.available = 1LL << 30}) == 1);
  CHECK(Eventually([&] { return source->Held("n4") == 1; }));
  CHECK(source->Calls("n2") == 1);
  {
    std::lock_guard<std::mutex> lock(source->mu);
    source->hang_all = false;
  }
  source->Release("", CapacityResult{.available = 4LL << 30});
  CHECK(Eventually([&] { return source->Calls("n2") == 2 && controller.WaitingKeys().empty(); }));
  controller.Stop();
}

TEST_CASE("Capacity controller writes at the capacity QPS of the clock", "[unit][capacity]") {
  auto client = std::make_shared<MemoryClient>();
  Populate(*client, 3);
  auto source = std::make_shared<FakeSource>();
  source->capacity = {{"n1", 1LL << 30}, {"n2", 2LL << 30}, {"n3", 3LL << 30}};
  apiclient::MetricsRegistry metrics;
  FakeClock clock;
  CapacityController controller(client, source, metrics,
                                {.ns = "ns",
                                 .poll_interval = std::chrono::hours(1),
                                 .write_qps = 1,
                                 .write_burst = 1,
                                 .clock = &clock});
  REQUIRE(controller.Start(std::stop_token{}).ok());
  REQUIRE(Eventually([&] { return client->writes() == 1; }));
  for (int second = 1; second <= 2; ++second) {
    CHECK(Stays([&] { return client->writes() == second; }));
    clock.Advance(std::chrono::seconds(1));
    CHECK(Eventually([&] { return client->writes() == second + 1; }));
  }
  CHECK(Published(*client).size() == 3);
  controller.Stop();
}

TEST_CASE("Capacity controller: a node that does not answer delays only its own items",
          "[unit][capacity]") {
  auto client = std::make_shared<MemoryClient>();
  Populate(*client, 3, {"late", "late2"});
  auto source = std::make_shared<FakeSource>();
  source->capacity = {{"n1", 1LL << 30}, {"n2", 2LL << 30}, {"n3", 3LL << 30}};
  source->per_node = true;
  source->hang = {"n2"};
  apiclient::MetricsRegistry metrics;
  FakeClock clock;
  // One worker: a call that held it would stop everything.
  CapacityController controller(client, source, metrics,
                                {.ns = "ns",
                                 .poll_interval = std::chrono::hours(1),
                                 .write_qps = 0,
                                 .threads = 1,
                                 .clock = &clock});
  REQUIRE(controller.Start(std::stop_token{}).ok());
  const std::map<std::string, std::string> others = {{"n1", "1Gi"}, {"n3", "3Gi"}};
  REQUIRE(Eventually([&] {
    return Published(*client, "late") == others && Published(*client, "late2") == others;
  }));
  // One call at a time per node: n2's second item waits for the first.
  CHECK(source->Held("n2") == 1);
  CHECK(source->Calls("n2") == 1);
  // The call times out: both of n2's items fail (the waiting one without a call of its own), n2
  // is reported, and nothing is published for it.
  REQUIRE(source->Release("n2", Status::DeadlineExceeded("deadline exceeded")) == 1);
  CHECK(Eventually([&] { return controller.UnreachableNodes() == std::set<std::string>{"n2"}; }));
  CHECK(Stays([&] { return source->Calls("n2") == 1; }));
  CHECK(client->All("csistoragecapacities").size() == 4);
  // The retries after the backoff: the endpoint answers now.
  {
    std::lock_guard<std::mutex> lock(source->mu);
    source->hang.clear();
  }
  clock.Advance(std::chrono::milliseconds(500));
  CHECK(Eventually([&] { return client->All("csistoragecapacities").size() == 6; }));
  CHECK(Published(*client, "late")["n2"] == "2Gi");
  CHECK(controller.UnreachableNodes().empty());
  controller.Stop();
}

TEST_CASE("Capacity controller asks a central driver at most --capacity-threads at once",
          "[unit][capacity]") {
  auto client = std::make_shared<MemoryClient>();
  Populate(*client, 3);
  auto source = std::make_shared<FakeSource>();
  source->capacity = {{"n1", 1LL << 30}, {"n2", 2LL << 30}, {"n3", 3LL << 30}};
  source->hang_all = true;
  apiclient::MetricsRegistry metrics;
  FakeClock clock;
  CapacityController controller(client, source, metrics,
                                {.ns = "ns",
                                 .poll_interval = std::chrono::hours(1),
                                 .write_qps = 0,
                                 .threads = 2,
                                 .clock = &clock});
  REQUIRE(controller.Start(std::stop_token{}).ok());
  REQUIRE(Eventually([&] { return source->Held() == 2; }));
  CHECK(Stays([&] { return source->Held() == 2 && source->Calls() == 2; }));
  {
    std::lock_guard<std::mutex> lock(source->mu);
    source->hang_all = false;
  }
  // An answer frees a slot for the waiting item.
  source->Release("", CapacityResult{.available = 5LL << 30});
  CHECK(Eventually([&] { return Published(*client).size() == 3; }));
  CHECK(source->Calls() == 3);
  controller.Stop();
}

TEST_CASE("Capacity controller stops with a call in flight", "[unit][capacity]") {
  auto client = std::make_shared<MemoryClient>();
  Populate(*client);
  auto source = std::make_shared<FakeSource>();
  source->per_node = true;
  source->hang = {"n1", "n2"};
  apiclient::MetricsRegistry metrics;
  FakeClock clock;
  CapacityController controller(client, source, metrics,
                                {.ns = "ns", .write_qps = 0, .clock = &clock});
  REQUIRE(controller.Start(std::stop_token{}).ok());
  REQUIRE(Eventually([&] { return source->Held() == 2; }));
  controller.Stop();  // cancels both and waits for their answers
  CHECK(source->Held() == 0);
  CHECK(controller.UnreachableNodes().empty());  // a cancel is no unreachable node
}

TEST_CASE("Capacity controller reports an unreachable node endpoint by Event and metric",
          "[unit][capacity]") {
  auto client = std::make_shared<MemoryClient>();
  Populate(*client);
  auto source = std::make_shared<FakeSource>();
  source->capacity = {{"n1", 1LL << 30}, {"n2", 2LL << 30}};
  source->per_node = true;
  apiclient::MetricsRegistry metrics;
  FakeClock clock;
  auto events = std::make_shared<apiclient::EventRecorder>(
      client, apiclient::EventSource{"ephemera.io/storage-capacity", "test"});
  CapacityController controller(client, source, metrics,
                                {.ns = "ns",
                                 .poll_interval = std::chrono::hours(1),
                                 .write_qps = 0,
                                 .events = events,
                                 .clock = &clock});
  REQUIRE(controller.Start(std::stop_token{}).ok());
  REQUIRE(Eventually([&] { return client->All("csistoragecapacities").size() == 2; }));
  const uint64_t writes = controller.Writes();
  auto refresh = [&] {
    const uint64_t before = controller.ItemSyncs();
    controller.RefreshAll();
    return Eventually([&] { return controller.ItemSyncs() >= before + 2; });
  };

  {
    std::lock_guard<std::mutex> lock(source->mu);
    source->down = {"n2"};
    source->capacity["n1"] = 512LL << 20;
  }
  REQUIRE(refresh());
  CHECK(controller.UnreachableNodes() == std::set<std::string>{"n2"});
  const std::string rendered = metrics.Render();
  CHECK(rendered.find("csistoragecapacity_unreachable_nodes 1") != std::string::npos);
  CHECK(rendered.find("csistoragecapacity_node_getcapacity_errors_total{node=\"n2\"} 1") !=
        std::string::npos);
  // n1 was updated, n2 kept its 2Gi: one write only.
  CHECK(controller.Writes() == writes + 1);
  CHECK(Published(*client) == std::map<std::string, std::string>{{"n1", "512Mi"}, {"n2", "2Gi"}});
  // A second failure is no new Event.
  REQUIRE(refresh());
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
  REQUIRE(refresh());
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
  FakeClock clock;
  CapacityOptions options{
      .ns = "ns", .poll_interval = std::chrono::hours(1), .write_qps = 0, .clock = &clock};
  auto put = [&](const std::string& name, const std::string& cls, const std::string& node,
                 const std::string& capacity, bool node_owned = true) {
    const Object owner = NodeOwnerReference(*Node(node, Object::object()));
    Object o = DesiredCapacityObject({.segment = {{kKey, node}}, .storage_class = cls},
                                     {.available = *ParseQuantity(capacity)}, options, kDriver,
                                     node_owned ? &owner : nullptr);
    o["metadata"]["name"] = name;
    o["metadata"]["resourceVersion"] = "1";
    client->Put("csistoragecapacities", o);
  };
  put("csisc-a", "late", "n1", "1Gi");         // adopted as is
  put("csisc-b", "late", "n2", "2Gi", false);  // of an older version: its Node added as owner
  put("csisc-c", "late", "n2", "2Gi");         // duplicate of b: deleted
  put("csisc-d", "gone", "n1", "1Gi");         // class gone: deleted
  put("csisc-e", "late", "n9", "1Gi");         // node gone: deleted
  apiclient::MetricsRegistry metrics;
  CapacityController controller(client, source, metrics, options);
  REQUIRE(controller.Start(std::stop_token{}).ok());
  REQUIRE(Eventually([&] {
    return client->All("csistoragecapacities").size() == 2 && controller.ItemSyncs() >= 2;
  }));
  CHECK(client->writes() == 4);  // three deletes, one update (the owner), no create
  std::set<std::string> names;
  for (const auto& o : client->All("csistoragecapacities")) {
    names.insert(Field(*o, "metadata", "name"));
    const std::string node = Field(*o, "nodeTopology", "matchLabels", kKey);
    CHECK(OwnedOnlyBy(*o, NodeOwnerReference(*Node(node, Object::object()))));
  }
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
  controller.RefreshAll();
  CHECK(Stays([&] { return client->All("csistoragecapacities").empty(); }));
  CHECK(source->calls == 0);
  controller.Stop();
}

Object Claim(const std::string& name, const Object& node, const Object& request,
             const std::string& storage_class = "late") {
  Object pvc = {{"metadata", {{"name", name}, {"namespace", "app"}}},
                {"spec", {{"storageClassName", storage_class}}}};
  if (!node.is_null()) pvc["metadata"]["annotations"]["volume.kubernetes.io/selected-node"] = node;
  if (!request.is_null()) pvc["spec"]["resources"]["requests"]["storage"] = request;
  return pvc;
}

TEST_CASE("Capacity reservations: placed claims are read and subtracted, odd ones never below 0",
          "[unit][capacity]") {
  auto placed = ReadPlacedClaim(Claim("a", "n1", "1Gi"));
  REQUIRE(placed.ok());
  REQUIRE(placed->has_value());
  CHECK((*placed)->node == "n1");
  CHECK((*placed)->bytes == (1LL << 30));
  CHECK((*placed)->storage_class == "late");
  CHECK((*placed)->volume_name.empty());
  CHECK(ReadPlacedClaim(Claim("frac", "n1", "1.5Ki")).value()->bytes == 1536);
  // Not placed: nothing to reserve, no error.
  CHECK_FALSE(ReadPlacedClaim(Claim("b", nullptr, "1Gi")).value().has_value());
  CHECK_FALSE(ReadPlacedClaim(Claim("c", "", "1Gi")).value().has_value());
  CHECK_FALSE(ReadPlacedClaim(Object::array()).value().has_value());
  CHECK_FALSE(ReadPlacedClaim(Object("text")).value().has_value());
  // Placed but odd: an error, so the claim is reported and reserves nothing.
  for (const Object& request : {Object("12XB"), Object("-1Gi"), Object(1024), Object("9999Ei"),
                                Object(nullptr), Object::array({"1Gi"}), Object("")}) {
    INFO(request.dump());
    CHECK_FALSE(ReadPlacedClaim(Claim("odd", "n1", request)).ok());
  }
  CHECK_FALSE(ReadPlacedClaim(Claim("odd", 7, "1Gi")).ok());
  Object requests_not_object = Claim("odd", "n1", nullptr);
  requests_not_object["spec"]["resources"]["requests"] = "1Gi";
  CHECK_FALSE(ReadPlacedClaim(requests_not_object).ok());

  // Saturating sums: thousands of the largest requests never wrap.
  constexpr int64_t kMax = std::numeric_limits<int64_t>::max();
  int64_t sum = 0;
  for (int i = 0; i < 5000; ++i)
    sum = AddReserved(sum, kMax / 3);
  CHECK(sum == kMax);
  CHECK(AddReserved(5, -3) == 5);

  const CapacityResult driver{.available = 10LL << 30, .maximum_volume_size = 4LL << 30};
  auto applied = ApplyReservations(driver, 0);  // nothing reserved: the driver's figure as is
  CHECK(applied.available == driver.available);
  CHECK(applied.maximum_volume_size == driver.maximum_volume_size);
  applied = ApplyReservations(driver, 7LL << 30);
  CHECK(applied.available == (3LL << 30));
  CHECK(applied.maximum_volume_size == (3LL << 30));  // lowered to what is left
  applied = ApplyReservations(driver, 1LL << 30);
  CHECK(applied.available == (9LL << 30));
  CHECK(applied.maximum_volume_size == (4LL << 30));  // still the driver's, smaller
  applied = ApplyReservations(driver, 11LL << 30);    // a request larger than the node
  CHECK(applied.available == 0);
  CHECK(applied.maximum_volume_size == 0);
  applied = ApplyReservations(driver, kMax);
  CHECK(applied.available == 0);
  applied = ApplyReservations(CapacityResult{.available = 1LL << 30}, 1LL << 20);
  CHECK(applied.available == (1LL << 30) - (1LL << 20));
  CHECK_FALSE(applied.maximum_volume_size.has_value());
  applied = ApplyReservations(CapacityResult{.available = -5}, 1);  // a hostile driver
  CHECK(applied.available == 0);
}

TEST_CASE(
    "Capacity reservations: a placed claim lowers its node at once and counts once across its "
    "PV and the driver's next figure",
    "[unit][capacity]") {
  auto client = std::make_shared<MemoryClient>();
  Populate(*client, 2, {"late", "late2"});
  client->Put("storageclasses", {{"metadata", {{"name", "other"}}},
                                 {"provisioner", "other.driver"},
                                 {"volumeBindingMode", "WaitForFirstConsumer"}});
  auto source = std::make_shared<FakeSource>();
  source->capacity = {{"n1", 1LL << 30}, {"n2", 2LL << 30}};
  apiclient::MetricsRegistry metrics;
  FakeClock clock;
  const bool enabled = GENERATE(true, false);
  CapacityController controller(client, source, metrics,
                                {.ns = "ns",
                                 .poll_interval = std::chrono::hours(1),
                                 .write_qps = 0,
                                 .clock = &clock,
                                 .reservations = enabled});
  REQUIRE(controller.Start(std::stop_token{}).ok());
  REQUIRE(Eventually([&] { return Published(*client).size() == 2; }));
  using Values = std::map<std::string, std::string>;
  const Values full = {{"n1", "1Gi"}, {"n2", "2Gi"}};
  REQUIRE(Published(*client) == full);

  // Placed on n1: both classes of n1 go down without any clock time passing (no debounce,
  // no GetCapacity); n2 untouched.
  controller.ClaimChanged(Claim("a", "n1", "256Mi"));
  if (!enabled) {
    CHECK(Stays([&] { return Published(*client) == full; }));
    CHECK(controller.Reservations() == 0);
    controller.Stop();
    return;
  }
  CHECK(Eventually([&] {
    return Published(*client) == Values{{"n1", "768Mi"}, {"n2", "2Gi"}} &&
           Published(*client, "late2")["n1"] == "768Mi";
  }));
  const int calls = source->Calls();
  CHECK(controller.Reservations() == 1);
  // The same claim again (a status update) changes nothing.
  const int writes = client->writes();
  controller.ClaimChanged(Claim("a", "n1", "256Mi"));
  CHECK(Stays([&] { return client->writes() == writes; }));

  // The driver creates the volume (its figure drops) and the PV appears: until a figure asked
  // after the PV arrives, the old figure minus the reservation stays (not 1Gi: counted zero
  // times; not 512Mi: counted twice).
  {
    std::lock_guard<std::mutex> lock(source->mu);
    source->capacity["n1"] = 768LL << 20;
  }
  Object pv = VolumeOn("n1");
  pv["metadata"]["name"] = "pv-a";
  pv["spec"]["claimRef"] = {{"namespace", "app"}, {"name", "a"}};
  controller.PvClaim(pv, false);
  controller.VolumeChanged(pv);
  CHECK(Stays([&] { return Published(*client)["n1"] == "768Mi" && source->Calls() == calls; }));
  CHECK(controller.Reservations() == 1);
  clock.Advance(
      std::chrono::milliseconds(200));  // 200 ms after its calls at start: n1 asked again (paced)
  CHECK(Eventually([&] { return controller.Reservations() == 0; }));
  CHECK(Stays([&] {
    return Published(*client) == Values{{"n1", "768Mi"}, {"n2", "2Gi"}} &&
           Published(*client, "late2")["n1"] == "768Mi";
  }));
  // Its claim, now bound, reserves nothing.
  Object bound = Claim("a", "n1", "256Mi");
  bound["spec"]["volumeName"] = "pv-a";
  controller.ClaimChanged(bound);
  CHECK(controller.Reservations() == 0);

  // The annotation removed (rescheduled), or the claim deleted: back at once.
  controller.ClaimChanged(Claim("b", "n2", "1Gi"));
  CHECK(Eventually([&] { return Published(*client)["n2"] == "1Gi"; }));
  controller.ClaimChanged(Claim("b", nullptr, "1Gi"));
  CHECK(Eventually([&] { return Published(*client)["n2"] == "2Gi"; }));
  controller.ClaimChanged(Claim("c", "n2", "512Mi"));
  CHECK(Eventually([&] { return Published(*client)["n2"] == "1536Mi"; }));
  controller.ClaimGone(Claim("c", "n2", "512Mi"));
  CHECK(Eventually([&] { return Published(*client)["n2"] == "2Gi"; }));

  // Odd claims: an unknown node, a malformed request, another driver's class reserve nothing and
  // are reported (the first two); a claim larger than the node and thousands of claims at once
  // publish 0, never less, and the other node goes on.
  controller.ClaimChanged(Claim("ghost", "no-such-node", "1Gi"));
  controller.ClaimChanged(Claim("bad", "n2", "12XB"));
  controller.ClaimChanged(Claim("theirs", "n2", "1Gi", "other"));
  CHECK(Stays([&] { return Published(*client)["n2"] == "2Gi"; }));
  const std::string text = metrics.Render();
  CHECK(text.find("csistoragecapacity_claims_skipped_total{reason=\"unknown_node\"} 1") !=
        std::string::npos);
  CHECK(text.find("csistoragecapacity_claims_skipped_total{reason=\"malformed_claim\"} 1") !=
        std::string::npos);
  controller.ClaimChanged(Claim("huge", "n1", "1Ti"));
  for (int i = 0; i < 3000; ++i)
    controller.ClaimChanged(Claim("many-" + std::to_string(i), "n1", "7Ei"));
  CHECK(Eventually([&] { return Published(*client)["n1"] == "0"; }));
  for (const auto& o : client->All("csistoragecapacities")) {
    if (Field(*o, "nodeTopology", "matchLabels", kKey) != "n1") continue;
    CHECK(Field(*o, "capacity") == "0");
    CHECK(Field(*o, "maximumVolumeSize") == "");  // the driver gave none
  }
  controller.ClaimChanged(Claim("d", "n2", "1Gi"));
  CHECK(Eventually([&] { return Published(*client)["n2"] == "1Gi"; }));
  CHECK(metrics.Render().find("csistoragecapacity_reservations_clamped_total 2") !=
        std::string::npos);  // one per item of n1, not one per claim
  CHECK(controller.Reservations() == 3002);
  controller.Stop();
}

TEST_CASE(
    "Claim pacing: claims are admitted while they fit on the roomiest published node together "
    "with those not yet counted, and woken when they are",
    "[unit][capacity]") {
  auto client = std::make_shared<MemoryClient>();
  Populate(*client, 2, {"late"});
  auto source = std::make_shared<FakeSource>();
  source->capacity = {{"n1", 1LL << 30}, {"n2", 2LL << 30}};
  apiclient::MetricsRegistry metrics;
  FakeClock clock;
  const bool pacing = GENERATE(true, false);
  CapacityController controller(client, source, metrics,
                                {.ns = "ns",
                                 .poll_interval = std::chrono::hours(1),
                                 .write_qps = 0,
                                 .clock = &clock,
                                 .claim_pacing = pacing,
                                 .claim_pacing_hold = std::chrono::seconds(1)});
  REQUIRE(controller.Start(std::stop_token{}).ok());
  REQUIRE(Eventually([&] { return Published(*client).size() == 2; }));
  std::mutex mu;
  std::multiset<std::string> woken;
  auto wake = [&](const std::string& claim) {
    return [&, claim] {
      std::lock_guard<std::mutex> lock(mu);
      woken.insert(claim);
    };
  };
  auto was_woken = [&](const std::string& claim) {
    std::lock_guard<std::mutex> lock(mu);
    return woken.count(claim);
  };
  constexpr int64_t kGi = 1LL << 30;

  // 2Gi is the largest figure (n2): two claims of 1Gi may go, a third one not yet.
  CHECK(controller.Admit("app/a", "late", kGi, wake("app/a")));
  CHECK(controller.Admit("app/b", "late", kGi, wake("app/b")));
  // Admitted before (a create that is retried): still admitted, counted once.
  CHECK(controller.Admit("app/a", "late", kGi, wake("app/a")));
  // A class that is not published is never paced.
  CHECK(controller.Admit("app/x", "other", 100 * kGi, wake("app/x")));
  if (!pacing) {
    CHECK(controller.Admit("app/c", "late", kGi / 2, wake("app/c")));
    CHECK(controller.ClaimsInFlight() == 0);
    controller.Stop();
    return;
  }
  CHECK(controller.ClaimsInFlight() == 2);
  CHECK_FALSE(controller.Admit("app/c", "late", kGi / 2, wake("app/c")));
  // Asked again before it is woken: it keeps its place, one wake.
  CHECK_FALSE(controller.Admit("app/c", "late", kGi / 2, wake("app/c")));

  // a placed on n2 and its reservation written: a no longer counts, but b (1Gi) and c (512Mi)
  // would not fit on the largest figure now (1Gi on both nodes): c stays parked.
  controller.ClaimChanged(Claim("a", "n2", "1Gi"));
  REQUIRE(Eventually([&] { return Published(*client)["n2"] == "1Gi"; }));
  CHECK(Eventually([&] { return controller.ClaimsInFlight() == 1; }));
  CHECK(Stays([&] { return was_woken("app/c") == 0; }));
  // b placed on n1 (published 0 there): nothing counts any more, c is woken, once, and admitted.
  controller.ClaimChanged(Claim("b", "n1", "1Gi"));
  CHECK(Eventually([&] { return was_woken("app/c") == 1; }));
  CHECK(controller.ClaimsInFlight() == 0);
  CHECK(controller.Admit("app/c", "late", kGi / 2, wake("app/c")));

  // A claim never placed (its pod cannot be scheduled) holds the others up for the hold only.
  CHECK_FALSE(controller.Admit("app/d", "late", kGi, wake("app/d")));
  clock.Advance(std::chrono::milliseconds(999));
  CHECK_FALSE(controller.Admit("app/d", "late", kGi, wake("app/d")));
  clock.Advance(std::chrono::milliseconds(1));
  CHECK(controller.Admit("app/d", "late", kGi, wake("app/d")));

  // An admitted claim that was not created after all (Abandon), or deleted: the next one is woken.
  CHECK_FALSE(controller.Admit("app/e", "late", kGi, wake("app/e")));
  controller.Abandon("app/d");
  CHECK(Eventually([&] { return was_woken("app/e") == 1; }));
  CHECK(controller.Admit("app/e", "late", kGi, wake("app/e")));
  CHECK_FALSE(controller.Admit("app/f", "late", kGi, wake("app/f")));
  controller.ClaimGone(Claim("e", nullptr, "1Gi"));
  CHECK(Eventually([&] { return was_woken("app/f") == 1; }));

  // After CancelWakes (the ephemeral-volume controller stops) no wake is called.
  CHECK(controller.Admit("app/f", "late", kGi, wake("app/f")));
  CHECK_FALSE(controller.Admit("app/g", "late", kGi, wake("app/g")));
  controller.CancelWakes();
  controller.Abandon("app/f");
  CHECK(Stays([&] { return was_woken("app/g") == 0; }));
  controller.Stop();
}

}  // namespace
}  // namespace ephemera::controllers
