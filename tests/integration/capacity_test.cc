// The storage-capacity controller (the real ephemera-controller-manager binary) against the live
// cluster, with the real ephemera-pmem-csi (file backend) as the capacity source. The driver runs
// as node-1: it reports its pool for node-1's segment and 0 for the other nodes' segments, which
// is exactly what one central instance of a node-local driver answers.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <sstream>
#include <thread>

#include "apiclient/config.h"
#include "apiclient/errors.h"
#include "common/base64.h"
#include "common/quantity.h"
#include "controllers/capacity/source.h"
#include "csi/exec_command_runner.h"
#include "tests/integration/cluster_client.h"
#include "tests/integration/csi/driver_fixture.h"
#include "tests/integration/process.h"
#include "tests/test_paths.h"

namespace ephemera::testing {
namespace {

using apiclient::Field;
using apiclient::Object;
using apiclient::ObjectPtr;
using apiclient::resources::kCSINodes;
using apiclient::resources::kCSIStorageCapacities;
using apiclient::resources::kNodes;
using apiclient::resources::kPersistentVolumes;
using apiclient::resources::kStorageClasses;
using controllers::Segment;
using std::chrono::milliseconds;
using std::chrono::seconds;

constexpr char kDriver[] = "pmem-csi.ephemera.io";
constexpr char kTopologyKey[] = "pmem-csi.ephemera.io/node";
// The scripted test driver of the scheduler test (registered on the nodes beside the real one).
constexpr char kScripted[] = "scripted.test.ephemera.io";

// ephemera-controller-manager running only the storage-capacity controller, with `extra` flags.
class ControllerProcess : public TestProcess {
 public:
  ControllerProcess(const TestCluster& cluster, const std::vector<std::string>& extra)
      : TestProcess(cluster, ManagerBinary(),
                    ManagerFlags(cluster, Prepend("--controllers=storage-capacity", extra)),
                    "ephemera-capacity") {}

 private:
  static std::vector<std::string> Prepend(const std::string& first,
                                          const std::vector<std::string>& rest) {
    std::vector<std::string> out = {first};
    out.insert(out.end(), rest.begin(), rest.end());
    return out;
  }
};

// node-1..3: a CSINode listing the driver with its topology key, and the node label kubelet's
// plugin registration would add.
void RegisterDriverOnNodes(apiclient::ApiClient& client) {
  for (int i = 1; i <= 3; ++i) {
    const std::string node = "node-" + std::to_string(i);
    auto patched =
        client.MergePatch(kNodes, "", node, {{"metadata", {{"labels", {{kTopologyKey, node}}}}}});
    REQUIRE(patched.ok());
    Object drivers = Object::array();
    for (const char* driver : {kDriver, kScripted}) {
      drivers.push_back({{"name", driver}, {"nodeID", node}, {"topologyKeys", {kTopologyKey}}});
    }
    Object csinode = {{"apiVersion", "storage.k8s.io/v1"}, {"kind", "CSINode"}};
    csinode["metadata"]["name"] = node;
    csinode["spec"]["drivers"] = std::move(drivers);
    auto created = client.Create(kCSINodes, "", csinode);
    REQUIRE((created.ok() || apiclient::IsAlreadyExists(created.status())));
  }
}

void CreateClass(apiclient::ApiClient& client, const std::string& name, const std::string& mode) {
  const Object sc = {{"apiVersion", "storage.k8s.io/v1"},
                     {"kind", "StorageClass"},
                     {"metadata", {{"name", name}}},
                     {"provisioner", kDriver},
                     {"parameters", {{"eraseafter", "false"}}},
                     {"volumeBindingMode", mode}};
  REQUIRE(client.Create(kStorageClasses, "", sc).ok());
}

// Deletes the classes when the test ends, passed or failed.
struct ClassCleanup {
  apiclient::ApiClient& client;
  std::vector<std::string> names;
  ~ClassCleanup() {
    for (const auto& n : names)
      (void)client.Delete(kStorageClasses, "", n, {});
  }
};

// Our objects in `ns` for the given classes, keyed "class/node".
std::map<std::string, ObjectPtr> Capacities(apiclient::ApiClient& client, const std::string& ns,
                                            const std::set<std::string>& classes) {
  std::map<std::string, ObjectPtr> out;
  auto list = client.List(kCSIStorageCapacities, ns, {});
  if (!list.ok()) return out;
  for (const auto& o : list->items) {
    const std::string sc = Field(*o, "storageClassName");
    if (classes.count(sc) == 0) continue;
    const std::string key = sc + "/" + Field(*o, "nodeTopology", "matchLabels", kTopologyKey);
    if (out.count(key) > 0) {
      out[key + "#dup"] = o;  // a duplicate makes the count wrong on purpose
    } else {
      out[key] = o;
    }
  }
  return out;
}

// stdout of a shell command (curl for the manager's /metrics).
std::string Shell(const std::string& command) {
  std::string out;
  FILE* pipe = popen(command.c_str(), "r");
  if (pipe == nullptr) return out;
  char buffer[4096];
  size_t n = 0;
  while ((n = fread(buffer, 1, sizeof(buffer), pipe)) > 0)
    out.append(buffer, n);
  pclose(pipe);
  return out;
}

// How often `needle` occurs in `text`.
size_t Count(const std::string& text, const std::string& needle) {
  size_t n = 0;
  for (size_t at = text.find(needle); at != std::string::npos; at = text.find(needle, at + 1))
    ++n;
  return n;
}

std::vector<std::string> ControllerFlags(const csi::testing::DriverFixture& driver,
                                         const std::string& ns) {
  return {"--csi-address=unix://" + driver.work() + "/csi.sock", "--capacity-namespace=" + ns,
          "--capacity-poll-interval=1h", "--kube-api-capacity-qps=20",
          "--kube-api-capacity-burst=20"};
}

TEST_CASE(
    "Storage capacity: one object per segment and late-binding class follows nodes and "
    "classes and is adopted after a restart",
    "[cluster][capacity]") {
  const TestCluster cluster = TestCluster::FromEnvironment();
  auto client = cluster.AdminClient();
  csi::testing::DriverFixture driver("1Gi", {"--node-id=node-1"});
  const int64_t pool = driver.AvailableCapacity();
  REQUIRE(pool > 0);
  RegisterDriverOnNodes(*client);
  const std::string suffix = RandomSuffix();
  const std::string late_a = "cap-a-" + suffix, late_b = "cap-b-" + suffix,
                    now = "cap-now-" + suffix;
  ClassCleanup cleanup{*client, {late_a, late_b, now}};
  CreateClass(*client, late_a, "WaitForFirstConsumer");
  CreateClass(*client, late_b, "WaitForFirstConsumer");
  CreateClass(*client, now, "Immediate");
  const std::string ns = cluster.CreateNamespace("cap");
  const std::set<std::string> classes = {late_a, late_b, now};

  auto controller = std::make_unique<ControllerProcess>(cluster, ControllerFlags(driver, ns));
  std::map<std::string, ObjectPtr> objects;
  REQUIRE(Eventually([&] {
    objects = Capacities(*client, ns, classes);
    return objects.size() == 6;
  }));
  for (const auto& sc : {late_a, late_b}) {
    for (int i = 1; i <= 3; ++i) {
      const std::string node = "node-" + std::to_string(i);
      INFO(sc << " " << node);
      std::string key = sc + "/";
      key += node;
      REQUIRE(objects.count(key) == 1);
      const Object& o = *objects[key];
      CHECK(Field(o, "metadata", "name").rfind("csisc-", 0) == 0);
      CHECK(Field(o, "metadata", "labels", "csi.storage.k8s.io/drivername") == kDriver);
      CHECK(Field(o, "metadata", "labels", "csi.storage.k8s.io/managed-by") ==
            "ephemera-controller-manager");
      CHECK(o["nodeTopology"]["matchLabels"] == Object{{kTopologyKey, node}});
      const int64_t want = i == 1 ? pool : 0;
      CHECK(*ParseQuantity(Field(o, "capacity")) == want);
      CHECK(*ParseQuantity(Field(o, "maximumVolumeSize")) == want);
    }
  }
  CHECK(Capacities(*client, ns, {now}).empty());  // Immediate: not without the flag

  // Deleted by hand: recreated.
  const std::string victim = Field(*objects[late_a + "/node-2"], "metadata", "name");
  REQUIRE(client->Delete(kCSIStorageCapacities, ns, victim, {}).ok());
  REQUIRE(Eventually([&] {
    objects = Capacities(*client, ns, classes);
    return objects.size() == 6 && Field(*objects[late_a + "/node-2"], "metadata", "name") != victim;
  }));

  // Restart: the same objects are adopted, none written. Proof that the new process has synced:
  // node-3 loses its topology label, and only its objects go.
  std::map<std::string, std::string> versions;
  for (const auto& [key, o] : objects)
    versions[Field(*o, "metadata", "name")] = Field(*o, "metadata", "resourceVersion");
  controller->Stop();
  controller = std::make_unique<ControllerProcess>(cluster, ControllerFlags(driver, ns));
  REQUIRE(client
              ->MergePatch(kNodes, "", "node-3",
                           {{"metadata", {{"labels", {{kTopologyKey, nullptr}}}}}})
              .ok());
  REQUIRE(Eventually([&] {
    objects = Capacities(*client, ns, classes);
    return objects.size() == 4;
  }));
  for (const auto& [key, o] : objects) {
    INFO(key);
    CHECK(key.find("node-3") == std::string::npos);
    CHECK(versions[Field(*o, "metadata", "name")] == Field(*o, "metadata", "resourceVersion"));
  }

  // Class removed: its objects are deleted.
  REQUIRE(client->Delete(kStorageClasses, "", late_b, {}).ok());
  REQUIRE(Eventually([&] {
    objects = Capacities(*client, ns, classes);
    return objects.size() == 2 && objects.count(late_a + "/node-1") == 1 &&
           objects.count(late_a + "/node-2") == 1;
  }));
  REQUIRE(client
              ->MergePatch(kNodes, "", "node-3",
                           {{"metadata", {{"labels", {{kTopologyKey, "node-3"}}}}}})
              .ok());
  REQUIRE(Eventually([&] { return Capacities(*client, ns, classes).size() == 3; }));
  CHECK(controller->Running());
}

// The fault matrix: a Node deleted (with its CSINode, which the kubelet makes owned by the Node):
// its objects go within seconds, the others stay untouched.
TEST_CASE("Storage capacity: a deleted Node's objects are gone within seconds",
          "[cluster][capacity]") {
  const TestCluster cluster = TestCluster::FromEnvironment();
  auto client = cluster.AdminClient();
  csi::testing::DriverFixture driver("1Gi", {"--node-id=node-1"});
  RegisterDriverOnNodes(*client);
  const std::string suffix = RandomSuffix();
  const std::string sc = "cap-gone-" + suffix;
  ClassCleanup cleanup{*client, {sc}};
  CreateClass(*client, sc, "WaitForFirstConsumer");
  const std::string ns = cluster.CreateNamespace("cap-gone");
  // A node of its own, as a kubelet registers it.
  const std::string node = "node-gone-" + suffix;
  Object node_object = {{"apiVersion", "v1"}, {"kind", "Node"}};
  node_object["metadata"] = {{"name", node}, {"labels", {{kTopologyKey, node}}}};
  auto made = client->Create(kNodes, "", node_object);
  REQUIRE(made.ok());
  Object csinode = {{"apiVersion", "storage.k8s.io/v1"}, {"kind", "CSINode"}};
  csinode["metadata"] = {{"name", node},
                         {"ownerReferences",
                          {{{"apiVersion", "v1"},
                            {"kind", "Node"},
                            {"name", node},
                            {"uid", Field(**made, "metadata", "uid")}}}}};
  csinode["spec"]["drivers"] = {
      {{"name", kDriver}, {"nodeID", node}, {"topologyKeys", {kTopologyKey}}}};
  REQUIRE(client->Create(kCSINodes, "", csinode).ok());

  ControllerProcess controller(cluster, ControllerFlags(driver, ns));
  std::map<std::string, ObjectPtr> objects;
  REQUIRE(Eventually([&] {
    objects = Capacities(*client, ns, {sc});
    return objects.size() == 4 && objects.count(sc + "/" + node) == 1;
  }));
  std::map<std::string, std::string> versions;
  for (const auto& [key, o] : objects)
    versions[key] = Field(*o, "metadata", "resourceVersion");

  const auto deleted = std::chrono::steady_clock::now();
  REQUIRE(client->Delete(kNodes, "", node, {}).ok());
  REQUIRE(Eventually([&] {
    objects = Capacities(*client, ns, {sc});
    return objects.count(sc + "/" + node) == 0;
  }));
  const double gone =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - deleted).count();
  std::printf("a deleted Node's CSIStorageCapacity gone %.2f s after the delete\n", gone);
  CHECK(gone < 5.0);
  CHECK(objects.size() == 3);
  for (const auto& [key, o] : objects) {
    INFO(key);
    CHECK(versions[key] == Field(*o, "metadata", "resourceVersion"));
  }
  CHECK(controller.Running());
  (void)client->Delete(kCSINodes, "", node, {});  // if the garbage collector has not yet
}

// A kubeconfig for the ServiceAccount of manifests/controller-manager-rbac.yaml with exactly its
// roles, applied with kustomize into `ns` (cluster-wide names suffixed, the Role in `ns`).
// Returns its path; *kustomize_dir gets the directory to delete them with.
std::string ManifestRbacKubeconfig(const TestCluster& cluster, const std::string& ns,
                                   const std::string& suffix, std::string* kustomize_dir) {
  const std::string k =
      std::string(kSourceDir) + "/.tools/bin/kubectl --kubeconfig " + cluster.kubeconfig() + " ";
  const std::string dir = cluster.dir() + "/rbac-" + suffix;
  std::filesystem::create_directories(dir);
  std::filesystem::copy_file(std::string(kSourceDir) + "/manifests/controller-manager-rbac.yaml",
                             dir + "/controller-manager-rbac.yaml");
  std::ofstream(dir + "/kustomization.yaml") << "namespace: " << ns << "\nnameSuffix: \"-" << suffix
                                             << "\"\nresources: [controller-manager-rbac.yaml]\n";
  *kustomize_dir = dir;
  const std::string applied = Shell(k + "apply -k " + dir + " 2>&1");
  INFO(applied);
  REQUIRE(applied.find("serviceaccount/ephemera-controller-manager-" + suffix) !=
          std::string::npos);
  std::string token = Shell(k + "-n " + ns + " create token ephemera-controller-manager-" + suffix +
                            " --duration=1h");
  while (!token.empty() && (token.back() == '\n' || token.back() == '\r'))
    token.pop_back();
  REQUIRE(!token.empty());
  const std::string server =
      Shell(k + "config view --raw -o jsonpath='{.clusters[0].cluster.server}'");
  const std::string ca = Shell(
      k + "config view --raw -o jsonpath='{.clusters[0].cluster.certificate-authority-data}'");
  REQUIRE(!server.empty());
  std::string path = dir + "/sa.kubeconfig";
  std::ofstream(path) << "apiVersion: v1\nkind: Config\nclusters: [{name: local, cluster: {"
                      << "server: \"" << server << "\", certificate-authority-data: \"" << ca
                      << "\"}}]\nusers: [{name: sa, user: {token: \"" << token
                      << "\"}}]\ncontexts: [{name: sa, context: {cluster: local, user: sa}}]\n"
                      << "current-context: sa\n";
  return path;
}

TEST_CASE(
    "Storage capacity: a node's objects are owned by its Node and go with it without the "
    "controller and a restart writes nothing with the manifests' RBAC",
    "[cluster][capacity]") {
  const TestCluster cluster = TestCluster::FromEnvironment();
  auto client = cluster.AdminClient();
  csi::testing::DriverFixture driver("1Gi", {"--node-id=node-1"});
  RegisterDriverOnNodes(*client);
  const std::string suffix = RandomSuffix();
  const std::string sc = "cap-node-" + suffix;
  ClassCleanup cleanup{*client, {sc}};
  CreateClass(*client, sc, "WaitForFirstConsumer");
  const std::string ns = cluster.CreateNamespace("cap-node");
  // A node of its own, with its CSINode owned by it as the kubelet makes it.
  const std::string node = "node-own-" + suffix;
  Object node_object = {{"apiVersion", "v1"}, {"kind", "Node"}};
  node_object["metadata"] = {{"name", node}, {"labels", {{kTopologyKey, node}}}};
  auto made = client->Create(kNodes, "", node_object);
  REQUIRE(made.ok());
  const std::string node_uid = Field(**made, "metadata", "uid");
  Object csinode = {{"apiVersion", "storage.k8s.io/v1"}, {"kind", "CSINode"}};
  csinode["metadata"] = {
      {"name", node},
      {"ownerReferences",
       {{{"apiVersion", "v1"}, {"kind", "Node"}, {"name", node}, {"uid", node_uid}}}}};
  csinode["spec"]["drivers"] = {
      {{"name", kDriver}, {"nodeID", node}, {"topologyKeys", {kTopologyKey}}}};
  REQUIRE(client->Create(kCSINodes, "", csinode).ok());

  // The manager as the shipped Deployment runs it: the ServiceAccount with the manifests' roles
  // (the Role's namespace is the capacity namespace here), reservations on (claims watched).
  std::string rbac_dir;
  const std::string kubeconfig = ManifestRbacKubeconfig(cluster, ns, suffix, &rbac_dir);
  std::vector<std::string> flags = ControllerFlags(driver, ns);
  flags.push_back("--kubeconfig=" + kubeconfig);
  auto controller = std::make_unique<ControllerProcess>(cluster, flags);
  std::map<std::string, ObjectPtr> objects;
  REQUIRE(Eventually([&] {
    objects = Capacities(*client, ns, {sc});
    return objects.size() == 4;
  }));
  std::map<std::string, std::string> node_uids = {{node, node_uid}};
  for (int i = 1; i <= 3; ++i) {
    auto n = client->Get(kNodes, "", "node-" + std::to_string(i));
    REQUIRE(n.ok());
    node_uids["node-" + std::to_string(i)] = Field(**n, "metadata", "uid");
  }
  for (const auto& [key, o] : objects) {
    INFO(key);
    const std::string owner = Field(*o, "nodeTopology", "matchLabels", kTopologyKey);
    const Object& refs = (*o)["metadata"]["ownerReferences"];
    REQUIRE(refs.is_array());
    REQUIRE(refs.size() == 1);
    CHECK(refs[0] == Object{{"apiVersion", "v1"},
                            {"kind", "Node"},
                            {"name", owner},
                            {"uid", node_uids[owner]}});  // no blockOwnerDeletion
  }

  // An older version's object (no owner) for node-2: the next run adds the owner, once.
  controller->Stop();
  const std::string older = Field(*objects[sc + "/node-2"], "metadata", "name");
  REQUIRE(client
              ->MergePatch(kCSIStorageCapacities, ns, older,
                           {{"metadata", {{"ownerReferences", nullptr}}}})
              .ok());
  std::map<std::string, std::string> versions;
  for (const auto& [key, o] : Capacities(*client, ns, {sc}))
    versions[key] = Field(*o, "metadata", "resourceVersion");

  // The Node deleted while no controller runs: the garbage collector deletes its object.
  const auto deleted = std::chrono::steady_clock::now();
  REQUIRE(client->Delete(kNodes, "", node, {}).ok());
  REQUIRE(Eventually([&] { return Capacities(*client, ns, {sc}).count(sc + "/" + node) == 0; },
                     seconds(60)));
  std::printf("no controller: the Node's CSIStorageCapacity gone %.2f s after the delete\n",
              std::chrono::duration<double>(std::chrono::steady_clock::now() - deleted).count());

  // Restart: node-2's object gets its owner (one update); the others are not written at all.
  controller = std::make_unique<ControllerProcess>(cluster, flags);
  REQUIRE(Eventually([&] {
    objects = Capacities(*client, ns, {sc});
    return objects.count(sc + "/node-2") == 1 &&
           (*objects[sc + "/node-2"])["metadata"].contains("ownerReferences");
  }));
  std::this_thread::sleep_for(seconds(2));  // time for a wrong write to show
  objects = Capacities(*client, ns, {sc});
  CHECK(objects.size() == 3);
  for (const auto& [key, o] : objects) {
    INFO(key);
    if (key == sc + "/node-2") {
      CHECK(Field(*o, "metadata", "name") == older);
      CHECK(Field((*o)["metadata"]["ownerReferences"][0], "uid") == node_uids["node-2"]);
      continue;
    }
    CHECK(versions[key] == Field(*o, "metadata", "resourceVersion"));
  }
  const std::string log = ReadFile(controller->log());
  CHECK(log.find("\"created CSIStorageCapacity\"") == std::string::npos);
  CHECK(Count(log, "\"updated CSIStorageCapacity\"") == 1);
  CHECK(log.find("orbidden") == std::string::npos);  // the manifests' roles are enough
  CHECK(controller->Running());
  controller->Stop();
  (void)client->Delete(kCSINodes, "", node, {});  // if the garbage collector has not yet
  Shell(std::string(kSourceDir) + "/.tools/bin/kubectl --kubeconfig " + cluster.kubeconfig() +
        " delete -k " + rbac_dir + " --wait=false >/dev/null 2>&1");
}

TEST_CASE(
    "Storage capacity: Immediate classes with the flag and a new volume refreshes its "
    "segment within 2 s",
    "[cluster][capacity]") {
  const TestCluster cluster = TestCluster::FromEnvironment();
  auto client = cluster.AdminClient();
  csi::testing::DriverFixture driver("1Gi", {"--node-id=node-1"});
  const int64_t pool = driver.AvailableCapacity();
  RegisterDriverOnNodes(*client);
  const std::string suffix = RandomSuffix();
  const std::string late = "cap-late-" + suffix, now = "cap-now-" + suffix;
  ClassCleanup cleanup{*client, {late, now}};
  CreateClass(*client, late, "WaitForFirstConsumer");
  CreateClass(*client, now, "Immediate");
  const std::string ns = cluster.CreateNamespace("cap");
  auto flags = ControllerFlags(driver, ns);
  flags.push_back("--capacity-for-immediate-binding");
  ControllerProcess controller(cluster, flags);
  REQUIRE(Eventually([&] { return Capacities(*client, ns, {late, now}).size() == 6; }));

  // A volume made through the driver directly, and its PV naming node-1.
  ::csi::v1::CreateVolumeRequest create;
  create.set_name("cap-" + suffix);
  create.mutable_capacity_range()->set_required_bytes(64LL << 20);
  (*create.mutable_parameters())["eraseafter"] = "false";
  *create.add_volume_capabilities() = csi::testing::MountCapability();
  ::csi::v1::CreateVolumeResponse created;
  grpc::ClientContext ctx;
  REQUIRE(driver.controller().CreateVolume(&ctx, create, &created).ok());
  const int64_t after = driver.AvailableCapacity();
  REQUIRE(after == pool - (64LL << 20));
  const std::string pv_name = "pv-cap-" + suffix;
  Object expression = {{"key", kTopologyKey}, {"operator", "In"}, {"values", {"node-1"}}};
  Object term = {{"matchExpressions", Object::array({expression})}};
  Object pv = {{"apiVersion", "v1"}, {"kind", "PersistentVolume"}};
  pv["metadata"]["name"] = pv_name;
  pv["spec"] = {{"capacity", {{"storage", "64Mi"}}},
                {"accessModes", {"ReadWriteOnce"}},
                {"persistentVolumeReclaimPolicy", "Retain"},
                {"storageClassName", late}};
  pv["spec"]["csi"] = {{"driver", kDriver}, {"volumeHandle", created.volume().volume_id()}};
  pv["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"] = Object::array({term});
  const auto start = std::chrono::steady_clock::now();
  REQUIRE(client->Create(kPersistentVolumes, "", pv).ok());
  REQUIRE(Eventually(
      [&] {
        auto objects = Capacities(*client, ns, {late, now});
        return objects.count(late + "/node-1") == 1 && objects.count(now + "/node-1") == 1 &&
               *ParseQuantity(Field(*objects[late + "/node-1"], "capacity")) == after &&
               *ParseQuantity(Field(*objects[now + "/node-1"], "capacity")) == after;
      },
      seconds(2)));
  const auto took =
      std::chrono::duration_cast<milliseconds>(std::chrono::steady_clock::now() - start);
  WARN("PV created -> CSIStorageCapacity updated in " << took.count() << " ms");
  CHECK(took < seconds(2));

  // The volume expanded on its node (published as a raw block volume, NodeExpandVolume as kubelet
  // calls it), then its PV's size updated (as external-resizer does): node-1's objects follow
  // within 2 s, still without a poll.
  ::csi::v1::VolumeCapability block;
  block.mutable_block();
  block.mutable_access_mode()->set_mode(
      ::csi::v1::VolumeCapability::AccessMode::SINGLE_NODE_WRITER);
  const std::string target = driver.work() + "/block-target";
  ::csi::v1::NodePublishVolumeRequest publish;
  publish.set_volume_id(created.volume().volume_id());
  publish.set_target_path(target);
  *publish.mutable_volume_capability() = block;
  ::csi::v1::NodePublishVolumeResponse published;
  grpc::ClientContext ctx3;
  REQUIRE(driver.node().NodePublishVolume(&ctx3, publish, &published).ok());
  ::csi::v1::NodeExpandVolumeRequest expand;
  expand.set_volume_id(created.volume().volume_id());
  expand.set_volume_path(target);
  expand.mutable_capacity_range()->set_required_bytes(128LL << 20);
  *expand.mutable_volume_capability() = block;
  ::csi::v1::NodeExpandVolumeResponse expanded;
  grpc::ClientContext ctx4;
  grpc::Status grown = driver.node().NodeExpandVolume(&ctx4, expand, &expanded);
  REQUIRE(grown.error_message() == "");
  CHECK(expanded.capacity_bytes() == (128LL << 20));
  ::csi::v1::NodeUnpublishVolumeRequest unpublish;
  unpublish.set_volume_id(created.volume().volume_id());
  unpublish.set_target_path(target);
  ::csi::v1::NodeUnpublishVolumeResponse unpublished;
  grpc::ClientContext ctx5;
  REQUIRE(driver.node().NodeUnpublishVolume(&ctx5, unpublish, &unpublished).ok());
  const int64_t after_expansion = driver.AvailableCapacity();
  REQUIRE(after_expansion < after);
  const auto expand_start = std::chrono::steady_clock::now();
  REQUIRE(client
              ->MergePatch(kPersistentVolumes, "", pv_name,
                           {{"spec", {{"capacity", {{"storage", "128Mi"}}}}}})
              .ok());
  REQUIRE(Eventually(
      [&] {
        auto objects = Capacities(*client, ns, {late});
        return objects.count(late + "/node-1") == 1 &&
               *ParseQuantity(Field(*objects[late + "/node-1"], "capacity")) == after_expansion;
      },
      seconds(2)));
  WARN("PV expanded -> CSIStorageCapacity updated in "
       << std::chrono::duration_cast<milliseconds>(std::chrono::steady_clock::now() - expand_start)
              .count()
       << " ms");

  // Volume and PV deleted: back to the whole pool.
  ::csi::v1::DeleteVolumeRequest del;
  del.set_volume_id(created.volume().volume_id());
  ::csi::v1::DeleteVolumeResponse deleted;
  grpc::ClientContext ctx2;
  REQUIRE(driver.controller().DeleteVolume(&ctx2, del, &deleted).ok());
  REQUIRE(client->Delete(kPersistentVolumes, "", pv_name, {}).ok());
  CHECK(Eventually(
      [&] {
        auto objects = Capacities(*client, ns, {late});
        return objects.count(late + "/node-1") == 1 &&
               *ParseQuantity(Field(*objects[late + "/node-1"], "capacity")) == pool;
      },
      seconds(10)));
}

TEST_CASE("Storage capacity: an inline volume that comes or goes refreshes its node within 2 s",
          "[cluster][capacity]") {
  const TestCluster cluster = TestCluster::FromEnvironment();
  auto client = cluster.AdminClient();
  csi::testing::DriverFixture driver("1Gi", {"--node-id=node-1"});
  const int64_t pool = driver.AvailableCapacity();
  RegisterDriverOnNodes(*client);
  const std::string suffix = RandomSuffix();
  const std::string late = "cap-inline-" + suffix;
  ClassCleanup cleanup{*client, {late}};
  CreateClass(*client, late, "WaitForFirstConsumer");
  const std::string ns = cluster.CreateNamespace("cap");
  ControllerProcess controller(cluster, ControllerFlags(driver, ns));  // polls once an hour
  auto node1 = [&] {
    auto objects = Capacities(*client, ns, {late});
    return objects.count(late + "/node-1") == 1
               ? *ParseQuantity(Field(*objects[late + "/node-1"], "capacity"))
               : int64_t{-1};
  };
  REQUIRE(Eventually([&] { return node1() == pool; }));

  // A pod on node-1 with an inline volume; kubelet's part done by hand: NodePublishVolume (the
  // driver creates the volume), then the pod reported Running.
  Object pod = {{"apiVersion", "v1"}, {"kind", "Pod"}};
  pod["metadata"]["name"] = "inline";
  pod["spec"]["nodeName"] = "node-1";
  pod["spec"]["containers"] = Object::array({{{"name", "app"}, {"image", "busybox"}}});
  pod["spec"]["volumes"] =
      Object::array({{{"name", "data"},
                      {"csi", {{"driver", kDriver}, {"volumeAttributes", {{"size", "64Mi"}}}}}}});
  auto created = client->Create(apiclient::resources::kPods, ns, pod);
  REQUIRE(created.ok());
  ::csi::v1::NodePublishVolumeRequest publish;
  publish.set_volume_id("csi-inline-" + suffix);
  publish.set_target_path(driver.work() + "/inline-target");
  *publish.mutable_volume_capability() = csi::testing::MountCapability();
  (*publish.mutable_volume_context())["size"] = "64Mi";
  (*publish.mutable_volume_context())["csi.storage.k8s.io/ephemeral"] = "true";
  ::csi::v1::NodePublishVolumeResponse published;
  grpc::ClientContext ctx;
  REQUIRE(driver.node().NodePublishVolume(&ctx, publish, &published).ok());
  const int64_t with_volume = driver.AvailableCapacity();
  REQUIRE(with_volume < pool);
  Object running = **created;
  running["status"]["phase"] = "Running";
  auto start = std::chrono::steady_clock::now();
  REQUIRE(client->UpdateStatus(apiclient::resources::kPods, ns, running).ok());
  CHECK(Eventually([&] { return node1() == with_volume; }, seconds(2)));
  WARN("inline volume's pod Running -> CSIStorageCapacity updated in "
       << std::chrono::duration_cast<milliseconds>(std::chrono::steady_clock::now() - start).count()
       << " ms");

  // kubelet unpublishes (the driver deletes the volume), then removes the pod for good.
  ::csi::v1::NodeUnpublishVolumeRequest unpublish;
  unpublish.set_volume_id("csi-inline-" + suffix);
  unpublish.set_target_path(driver.work() + "/inline-target");
  ::csi::v1::NodeUnpublishVolumeResponse unpublished;
  grpc::ClientContext ctx2;
  REQUIRE(driver.node().NodeUnpublishVolume(&ctx2, unpublish, &unpublished).ok());
  REQUIRE(driver.AvailableCapacity() == pool);
  start = std::chrono::steady_clock::now();
  apiclient::DeleteOptions now;
  now.grace_period_seconds = 0;
  REQUIRE(client->Delete(apiclient::resources::kPods, ns, "inline", now).ok());
  CHECK(Eventually([&] { return node1() == pool; }, seconds(2)));
  WARN("inline volume's pod deleted -> CSIStorageCapacity updated in "
       << std::chrono::duration_cast<milliseconds>(std::chrono::steady_clock::now() - start).count()
       << " ms");
}

// The Identity service of a test CSI driver of ours: a name, the controller service, healthy.
class TestIdentity final : public ::csi::v1::Identity::Service {
 public:
  explicit TestIdentity(std::string name) : name_(std::move(name)) {}
  grpc::Status GetPluginInfo(grpc::ServerContext*, const ::csi::v1::GetPluginInfoRequest*,
                             ::csi::v1::GetPluginInfoResponse* response) override {
    response->set_name(name_);
    response->set_vendor_version("0.0.1");
    return grpc::Status::OK;
  }
  grpc::Status GetPluginCapabilities(grpc::ServerContext*,
                                     const ::csi::v1::GetPluginCapabilitiesRequest*,
                                     ::csi::v1::GetPluginCapabilitiesResponse* response) override {
    response->add_capabilities()->mutable_service()->set_type(
        ::csi::v1::PluginCapability::Service::CONTROLLER_SERVICE);
    return grpc::Status::OK;
  }
  grpc::Status Probe(grpc::ServerContext*, const ::csi::v1::ProbeRequest*,
                     ::csi::v1::ProbeResponse*) override {
    return grpc::Status::OK;
  }

 private:
  const std::string name_;
};

// A CSI driver of our own that does NOT offer GET_CAPACITY: the real driver always offers it, so
// only a test server can show what the controller does with one that does not.
class NoCapacityController final : public ::csi::v1::Controller::Service {
 public:
  grpc::Status ControllerGetCapabilities(
      grpc::ServerContext*, const ::csi::v1::ControllerGetCapabilitiesRequest*,
      ::csi::v1::ControllerGetCapabilitiesResponse* response) override {
    response->add_capabilities()->mutable_rpc()->set_type(
        ::csi::v1::ControllerServiceCapability::RPC::CREATE_DELETE_VOLUME);
    return grpc::Status::OK;
  }
  grpc::Status GetCapacity(grpc::ServerContext*, const ::csi::v1::GetCapacityRequest*,
                           ::csi::v1::GetCapacityResponse*) override {
    ++calls;
    return grpc::Status(grpc::StatusCode::UNIMPLEMENTED, "no capacity here");
  }
  std::atomic<int> calls{0};
};

TEST_CASE(
    "Storage capacity: a driver without GET_CAPACITY gets one clear error and no objects "
    "and no crash loop",
    "[cluster][capacity]") {
  const TestCluster cluster = TestCluster::FromEnvironment();
  auto client = cluster.AdminClient();
  const std::string dir = cluster.dir() + "/nocap-" + RandomSuffix();
  std::filesystem::create_directories(dir);
  TestIdentity identity("nocap.test.ephemera.io");
  NoCapacityController controller_service;
  grpc::ServerBuilder builder;
  builder.AddListeningPort("unix://" + dir + "/csi.sock", grpc::InsecureServerCredentials());
  builder.RegisterService(&identity);
  builder.RegisterService(&controller_service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  REQUIRE(server != nullptr);

  const std::string suffix = RandomSuffix();
  ClassCleanup cleanup{*client, {"nocap-" + suffix}};
  const Object sc = {{"apiVersion", "storage.k8s.io/v1"},
                     {"kind", "StorageClass"},
                     {"metadata", {{"name", "nocap-" + suffix}}},
                     {"provisioner", "nocap.test.ephemera.io"},
                     {"volumeBindingMode", "WaitForFirstConsumer"}};
  REQUIRE(client->Create(kStorageClasses, "", sc).ok());
  const std::string ns = cluster.CreateNamespace("nocap");
  ControllerProcess controller(
      cluster, {"--csi-address=unix://" + dir + "/csi.sock", "--capacity-namespace=" + ns,
                "--capacity-poll-interval=1s"});
  REQUIRE(Eventually([&] {
    return ReadFile(controller.log()).find("does not offer the GET_CAPACITY") != std::string::npos;
  }));
  // Still running well after a poll interval, never asked for capacity, nothing published.
  std::this_thread::sleep_for(seconds(3));
  CHECK(controller.Running());
  CHECK(controller_service.calls == 0);
  auto list = client->List(kCSIStorageCapacities, ns, {});
  REQUIRE(list.ok());
  CHECK(list->items.empty());
  const std::string log = ReadFile(controller.log());
  size_t count = 0;
  for (size_t at = log.find("does not offer the GET_CAPACITY"); at != std::string::npos;
       at = log.find("does not offer the GET_CAPACITY", at + 1)) {
    ++count;
  }
  CHECK(count == 1);
  controller.Stop();
  server->Shutdown();
  std::filesystem::remove_all(dir);
}

// A CSI driver of our own with scripted capacities per node: the real driver reports one pool per
// process, and the scheduler test needs three nodes with different free space behind one socket.
class ScriptedController final : public ::csi::v1::Controller::Service {
 public:
  std::mutex mu;
  std::map<std::string, int64_t> per_node;  // GUARDED_BY(mu) once the server runs
  std::atomic<int> calls{0};
  void Set(const std::string& node, int64_t bytes) {
    std::lock_guard<std::mutex> lock(mu);
    per_node[node] = bytes;
  }
  grpc::Status ControllerGetCapabilities(
      grpc::ServerContext*, const ::csi::v1::ControllerGetCapabilitiesRequest*,
      ::csi::v1::ControllerGetCapabilitiesResponse* response) override {
    response->add_capabilities()->mutable_rpc()->set_type(
        ::csi::v1::ControllerServiceCapability::RPC::GET_CAPACITY);
    return grpc::Status::OK;
  }
  grpc::Status GetCapacity(grpc::ServerContext*, const ::csi::v1::GetCapacityRequest* request,
                           ::csi::v1::GetCapacityResponse* response) override {
    const auto& segments = request->accessible_topology().segments();
    auto it = segments.find(kTopologyKey);
    ++calls;
    std::lock_guard<std::mutex> lock(mu);
    const int64_t bytes =
        it == segments.end() || per_node.count(it->second) == 0 ? 0 : per_node.at(it->second);
    response->set_available_capacity(bytes);
    response->mutable_maximum_volume_size()->set_value(bytes);
    return grpc::Status::OK;
  }
};

// The scripted driver (kScripted) serving `per_node` on a socket of its own in `dir`, its CSIDriver
// (storageCapacity: true) and a WaitForFirstConsumer class `sc` ("<prefix>-<suffix>"). Everything
// goes at the end of the test (declare it before the controller, which then stops first).
struct ScriptedSetup {
  ScriptedSetup(const TestCluster& cluster, apiclient::ApiClient& api, const std::string& prefix,
                std::map<std::string, int64_t> per_node)
      : client(api),
        dir(cluster.dir() + "/" + prefix + "-" + RandomSuffix()),
        suffix(RandomSuffix()),
        sc(prefix + "-" + suffix),
        identity(kScripted) {
    std::filesystem::create_directories(dir);
    scripted.per_node = std::move(per_node);
    grpc::ServerBuilder builder;
    builder.AddListeningPort("unix://" + dir + "/csi.sock", grpc::InsecureServerCredentials());
    builder.RegisterService(&identity);
    builder.RegisterService(&scripted);
    server = builder.BuildAndStart();
    REQUIRE(server != nullptr);
    const Object csidriver = {{"apiVersion", "storage.k8s.io/v1"},
                              {"kind", "CSIDriver"},
                              {"metadata", {{"name", kScripted}}},
                              {"spec", {{"storageCapacity", true}, {"attachRequired", false}}}};
    auto made = client.Create(apiclient::resources::kCSIDrivers, "", csidriver);
    REQUIRE((made.ok() || apiclient::IsAlreadyExists(made.status())));
    REQUIRE(client
                .Create(kStorageClasses, "",
                        {{"apiVersion", "storage.k8s.io/v1"},
                         {"kind", "StorageClass"},
                         {"metadata", {{"name", sc}}},
                         {"provisioner", kScripted},
                         {"volumeBindingMode", "WaitForFirstConsumer"}})
                .ok());
  }
  ~ScriptedSetup() {
    (void)client.Delete(kStorageClasses, "", sc, {});
    (void)client.Delete(apiclient::resources::kCSIDrivers, "", kScripted, {});
    if (server) server->Shutdown();
    std::filesystem::remove_all(dir);
  }
  ScriptedSetup(const ScriptedSetup&) = delete;
  ScriptedSetup& operator=(const ScriptedSetup&) = delete;
  std::string Address() const { return "--csi-address=unix://" + dir + "/csi.sock"; }

  apiclient::ApiClient& client;
  const std::string dir;
  const std::string suffix;
  const std::string sc;
  TestIdentity identity;
  ScriptedController scripted;
  std::unique_ptr<grpc::Server> server;
};

TEST_CASE(
    "Storage capacity: kube-scheduler puts a pod whose ephemeral volume fits one node on "
    "that node",
    "[cluster][capacity]") {
  const TestCluster cluster = TestCluster::FromEnvironment();
  auto client = cluster.AdminClient();
  RegisterDriverOnNodes(*client);
  ScriptedSetup setup(cluster, *client, "sched",
                      {{"node-1", 100LL << 20}, {"node-2", 2LL << 30}, {"node-3", 100LL << 20}});
  const std::string& sc_name = setup.sc;
  const std::string ns = cluster.CreateNamespace("sched");
  // Both controllers: ephemeral-volume makes the PVC, storage-capacity the capacities.
  ControllerProcess controller(cluster,
                               {"--controllers=ephemeral-volume,storage-capacity", setup.Address(),
                                "--capacity-namespace=" + ns, "--capacity-poll-interval=1h",
                                "--kube-api-capacity-qps=20", "--kube-api-capacity-burst=20"});
  REQUIRE(Eventually([&] { return Capacities(*client, ns, {sc_name}).size() == 3; }));

  Object volume = {{"name", "data"}};
  volume["ephemeral"]["volumeClaimTemplate"]["spec"] = {
      {"accessModes", {"ReadWriteOnce"}},
      {"storageClassName", sc_name},
      {"resources", {{"requests", {{"storage", "1Gi"}}}}}};
  Object pod = {{"apiVersion", "v1"}, {"kind", "Pod"}};
  pod["metadata"] = {{"name", "big"}, {"namespace", ns}};
  pod["spec"]["containers"] = Object::array({{{"name", "app"}, {"image", "registry.invalid/app"}}});
  pod["spec"]["volumes"] = Object::array({volume});
  REQUIRE(client->Create(apiclient::resources::kPods, ns, pod).ok());
  std::string selected;
  CHECK(Eventually(
      [&] {
        auto pvc = client->Get(apiclient::resources::kPersistentVolumeClaims, ns, "big-data");
        if (!pvc.ok()) return false;
        selected = Field(**pvc, "metadata", "annotations", "volume.kubernetes.io/selected-node");
        return !selected.empty();
      },
      seconds(60)));
  CHECK(selected == "node-2");
  (void)client->Delete(apiclient::resources::kPods, ns, "big", {});
}

TEST_CASE(
    "Storage capacity: a burst of pods with ephemeral volumes on little room: with claim pacing "
    "kube-scheduler places no node beyond its capacity",
    "[cluster][capacity]") {
  const TestCluster cluster = TestCluster::FromEnvironment();
  auto client = cluster.AdminClient();
  RegisterDriverOnNodes(*client);
  // Room for 3, 2 and 1 volumes of 256Mi: 6 in all, and 6 pods at once.
  constexpr int64_t kMi = 1LL << 20;
  const std::map<std::string, int64_t> room = {
      {"node-1", 768 * kMi}, {"node-2", 512 * kMi}, {"node-3", 256 * kMi}};
  ScriptedSetup setup(cluster, *client, "pacing", room);
  const std::string& sc = setup.sc;
  const std::string ns = cluster.CreateNamespace("pacing");
  const int port = 23000 + static_cast<int>((getpid() + 500) % 1000);
  const std::string metrics_address = "127.0.0.1:" + std::to_string(port);
  ControllerProcess controller(
      cluster,
      {"--controllers=ephemeral-volume,storage-capacity", setup.Address(),
       "--capacity-namespace=" + ns, "--capacity-poll-interval=1h", "--kube-api-capacity-qps=20",
       "--kube-api-capacity-burst=20", "--http-endpoint=" + metrics_address});
  REQUIRE(Eventually([&] { return Capacities(*client, ns, {sc}).size() == 3; }));

  // No provisioner runs: a placed claim keeps its node (and its reservation), so what
  // kube-scheduler placed is what is counted below.
  constexpr int kPods = 6;
  for (int i = 0; i < kPods; ++i) {
    Object volume = {{"name", "data"}};
    volume["ephemeral"]["volumeClaimTemplate"]["spec"] = {
        {"accessModes", {"ReadWriteOnce"}},
        {"storageClassName", sc},
        {"resources", {{"requests", {{"storage", "256Mi"}}}}}};
    Object pod = {{"apiVersion", "v1"}, {"kind", "Pod"}};
    pod["metadata"] = {{"name", "p" + std::to_string(i)}, {"namespace", ns}};
    pod["spec"]["containers"] =
        Object::array({{{"name", "app"}, {"image", "registry.invalid/app"}}});
    pod["spec"]["volumes"] = Object::array({volume});
    REQUIRE(client->Create(apiclient::resources::kPods, ns, pod).ok());
  }
  std::map<std::string, int64_t> placed;  // node -> bytes of the claims placed there
  const bool all_placed = Eventually(
      [&] {
        placed.clear();
        int n = 0;
        for (int i = 0; i < kPods; ++i) {
          auto pvc = client->Get(apiclient::resources::kPersistentVolumeClaims, ns,
                                 "p" + std::to_string(i) + "-data");
          if (!pvc.ok()) continue;
          const std::string node =
              Field(**pvc, "metadata", "annotations", "volume.kubernetes.io/selected-node");
          if (node.empty()) continue;
          placed[node] += 256 * kMi;
          ++n;
        }
        return n == kPods;
      },
      seconds(60));
  std::string summary;
  for (const auto& [node, bytes] : placed)
    summary += node + ": " + std::to_string(bytes / kMi) + " Mi placed; ";
  INFO(summary);
  CHECK(all_placed);
  for (const auto& [node, bytes] : placed) {
    INFO(node << ": " << bytes / kMi << " Mi placed, room for " << room.at(node) / kMi << " Mi");
    CHECK(bytes <= room.at(node));
  }
  // Some claims did wait: 6 x 256Mi never fit the largest node's 768Mi at once. (With
  // --capacity-claim-pacing=false this burst put 768Mi on node-2 in 3 runs of 3.)
  CHECK(Shell("curl -s http://" + metrics_address + "/metrics")
            .find("ephemeral_volume_controller_claims_paced_total 0") == std::string::npos);
  for (int i = 0; i < kPods; ++i)
    (void)client->Delete(apiclient::resources::kPods, ns, "p" + std::to_string(i), {});
}

// A pod on claim `claim` (no kubelet runs it: kube-scheduler only places it).
void PodOnClaim(apiclient::ApiClient& client, const std::string& ns, const std::string& name,
                const std::string& claim) {
  Object pod = {{"apiVersion", "v1"}, {"kind", "Pod"}};
  pod["metadata"] = {{"name", name}, {"namespace", ns}};
  pod["spec"]["containers"] = Object::array({{{"name", "app"}, {"image", "registry.invalid/app"}}});
  pod["spec"]["volumes"] =
      Object::array({{{"name", "data"}, {"persistentVolumeClaim", {{"claimName", claim}}}}});
  REQUIRE(client.Create(apiclient::resources::kPods, ns, pod).ok());
}

void MakeClaim(apiclient::ApiClient& client, const std::string& ns, const std::string& name,
               const std::string& sc, const std::string& size, const std::string& node = "") {
  Object pvc = {{"apiVersion", "v1"}, {"kind", "PersistentVolumeClaim"}};
  pvc["metadata"] = {{"name", name}, {"namespace", ns}};
  if (!node.empty()) pvc["metadata"]["annotations"]["volume.kubernetes.io/selected-node"] = node;
  pvc["spec"] = {{"accessModes", {"ReadWriteOnce"}},
                 {"storageClassName", sc},
                 {"resources", {{"requests", {{"storage", size}}}}}};
  REQUIRE(client.Create(apiclient::resources::kPersistentVolumeClaims, ns, pvc).ok());
}

TEST_CASE(
    "Storage capacity: a claim placed by kube-scheduler lowers its node within 1 s and the "
    "reservation ends with its PV, its annotation or the claim",
    "[cluster][capacity]") {
  const TestCluster cluster = TestCluster::FromEnvironment();
  auto client = cluster.AdminClient();
  RegisterDriverOnNodes(*client);
  // Only node-1 has room for 256Mi: kube-scheduler has one choice.
  ScriptedSetup setup(cluster, *client, "reserve",
                      {{"node-1", 1LL << 30}, {"node-2", 100LL << 20}, {"node-3", 100LL << 20}});
  ScriptedController& scripted = setup.scripted;
  const std::string& suffix = setup.suffix;
  const std::string& sc = setup.sc;
  const std::string ns = cluster.CreateNamespace("reserve");
  const int port = 23000 + static_cast<int>(getpid() % 1000);
  const std::string metrics_address = "127.0.0.1:" + std::to_string(port);
  ControllerProcess controller(
      cluster, {setup.Address(), "--capacity-namespace=" + ns, "--capacity-poll-interval=1h",
                "--kube-api-capacity-qps=20", "--kube-api-capacity-burst=20",
                "--http-endpoint=" + metrics_address});
  auto metrics = [&] { return Shell("curl -s http://" + metrics_address + "/metrics"); };
  auto node1 = [&]() -> std::pair<int64_t, int64_t> {  // capacity, maximumVolumeSize
    auto objects = Capacities(*client, ns, {sc});
    if (objects.count(sc + "/node-1") == 0) return {-1, -1};
    const Object& o = *objects[sc + "/node-1"];
    auto c = ParseQuantity(Field(o, "capacity"));
    auto m = ParseQuantity(Field(o, "maximumVolumeSize"));
    return {c.ok() ? *c : -1, m.ok() ? *m : -1};
  };
  constexpr int64_t kMi = 1LL << 20;
  REQUIRE(Eventually(
      [&] { return Capacities(*client, ns, {sc}).size() == 3 && node1().first == 1024 * kMi; }));
  // Waits (polling every 10 ms) until node-1 publishes `want`; the time it took, or nullopt.
  auto until_node1 = [&](int64_t want, std::chrono::steady_clock::time_point since,
                         seconds timeout) -> std::optional<double> {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < deadline) {
      if (node1() == std::pair<int64_t, int64_t>{want, want}) {
        return std::chrono::duration<double>(std::chrono::steady_clock::now() - since).count();
      }
      std::this_thread::sleep_for(milliseconds(10));
    }
    return std::nullopt;
  };
  const auto pvcs = apiclient::resources::kPersistentVolumeClaims;
  // A claim and its pod; kube-scheduler places the claim on node-1. Returns when the test saw
  // the annotation, and the claim's uid.
  std::chrono::steady_clock::time_point pod_made;
  auto placed = [&](const std::string& name) {
    MakeClaim(*client, ns, name, sc, "256Mi");
    pod_made = std::chrono::steady_clock::now();
    PodOnClaim(*client, ns, "pod-" + name, name);
    std::string node, uid;
    std::chrono::steady_clock::time_point seen;
    const auto deadline = std::chrono::steady_clock::now() + seconds(60);
    while (node.empty() && std::chrono::steady_clock::now() < deadline) {
      auto pvc = client->Get(pvcs, ns, name);
      if (pvc.ok()) {
        node = Field(**pvc, "metadata", "annotations", "volume.kubernetes.io/selected-node");
        uid = Field(**pvc, "metadata", "uid");
      }
      seen = std::chrono::steady_clock::now();
      if (node.empty()) std::this_thread::sleep_for(milliseconds(10));
    }
    REQUIRE(node == "node-1");
    return std::make_pair(seen, uid);
  };

  // 1. Placed: node-1 goes down by the request within 1 s, capacity and maximumVolumeSize.
  auto [seen_a, uid_a] = placed("claim-a");
  auto took = until_node1(768 * kMi, seen_a, seconds(5));
  REQUIRE(took.has_value());
  std::printf(
      "placed claim -> node-1 lowered %.3f s after the test saw the annotation (%.3f s after "
      "the pod was created)\n",
      *took, *took + std::chrono::duration<double>(seen_a - pod_made).count());
  CHECK(*took < 1.0);
  CHECK(metrics().find("csistoragecapacity_reservations 1") != std::string::npos);

  // Its volume made (the driver's figure drops) and its PV created, as external-provisioner
  // does: the claim counts once all along (768Mi: never 1Gi, never 512Mi), and the reservation
  // ends after a GetCapacity asked after the PV.
  scripted.Set("node-1", 768 * kMi);
  const int calls = scripted.calls.load();
  Object expression = {{"key", kTopologyKey}, {"operator", "In"}, {"values", {"node-1"}}};
  Object pv = {{"apiVersion", "v1"}, {"kind", "PersistentVolume"}};
  pv["metadata"]["name"] = "pv-a-" + suffix;
  pv["spec"] = {{"capacity", {{"storage", "256Mi"}}},
                {"accessModes", {"ReadWriteOnce"}},
                {"persistentVolumeReclaimPolicy", "Delete"},
                {"storageClassName", sc},
                {"claimRef", {{"namespace", ns}, {"name", "claim-a"}, {"uid", uid_a}}}};
  pv["spec"]["csi"] = {{"driver", kScripted}, {"volumeHandle", "vol-a-" + suffix}};
  pv["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"] =
      Object::array({{{"matchExpressions", Object::array({expression})}}});
  REQUIRE(client->Create(kPersistentVolumes, "", pv).ok());
  const auto pv_made = std::chrono::steady_clock::now();
  std::set<int64_t> seen_values;
  bool ended = false;
  while (std::chrono::steady_clock::now() - pv_made < seconds(3)) {
    seen_values.insert(node1().first);
    ended = ended || metrics().find("csistoragecapacity_reservations 0") != std::string::npos;
    std::this_thread::sleep_for(milliseconds(20));
  }
  CHECK(seen_values == std::set<int64_t>{768 * kMi});
  CHECK(ended);
  CHECK(scripted.calls.load() > calls);  // a fresh figure was asked
  CHECK(Eventually([&] {
    auto pvc = client->Get(pvcs, ns, "claim-a");
    return pvc.ok() && Field(**pvc, "status", "phase") == "Bound";
  }));
  CHECK(node1().first == 768 * kMi);

  // 2. The annotation removed (external-provisioner does so when it gives the claim back to the
  //    scheduler): the reservation ends at once. The pod goes first, so that the claim is not
  //    placed again.
  placed("claim-b");
  REQUIRE(until_node1(512 * kMi, std::chrono::steady_clock::now(), seconds(5)).has_value());
  REQUIRE(client->Delete(apiclient::resources::kPods, ns, "pod-claim-b", {}).ok());
  const auto unannotated = std::chrono::steady_clock::now();
  REQUIRE(client
              ->MergePatch(pvcs, ns, "claim-b",
                           {{"metadata",
                             {{"annotations", {{"volume.kubernetes.io/selected-node", nullptr}}}}}})
              .ok());
  took = until_node1(768 * kMi, unannotated, seconds(5));
  REQUIRE(took.has_value());
  std::printf("annotation removed -> node-1 back %.3f s later\n", *took);
  CHECK(*took < 1.0);

  // 3. The claim deleted (its pod first): back at once.
  placed("claim-c");
  REQUIRE(until_node1(512 * kMi, std::chrono::steady_clock::now(), seconds(5)).has_value());
  REQUIRE(client->Delete(apiclient::resources::kPods, ns, "pod-claim-c", {}).ok());
  const auto deleted = std::chrono::steady_clock::now();
  REQUIRE(client->Delete(pvcs, ns, "claim-c", {}).ok());
  took = until_node1(768 * kMi, deleted, seconds(5));
  REQUIRE(took.has_value());
  std::printf("claim deleted -> node-1 back %.3f s later\n", *took);
  CHECK(*took < 1.0);

  // Odd claims reserve nothing and are reported: a node that does not exist, a request larger
  // than the node (published 0, never below), the other nodes untouched.
  MakeClaim(*client, ns, "ghost", sc, "1Gi", "no-such-node");
  CHECK(Eventually([&] {
    return metrics().find("csistoragecapacity_claims_skipped_total{reason=\"unknown_node\"} 1") !=
           std::string::npos;
  }));
  MakeClaim(*client, ns, "huge", sc, "1Ti", "node-1");
  CHECK(until_node1(0, std::chrono::steady_clock::now(), seconds(5)).has_value());
  CHECK(metrics().find("csistoragecapacity_reservations_clamped_total 1") != std::string::npos);
  auto objects = Capacities(*client, ns, {sc});
  CHECK(*ParseQuantity(Field(*objects[sc + "/node-2"], "capacity")) == 100 * kMi);
  REQUIRE(client->Delete(pvcs, ns, "huge", {}).ok());
  CHECK(until_node1(768 * kMi, std::chrono::steady_clock::now(), seconds(5)).has_value());
  CHECK(controller.Running());

  (void)client->Delete(apiclient::resources::kPods, ns, "pod-claim-a", {});
  (void)client->Delete(kPersistentVolumes, "", "pv-a-" + suffix, {});
}

// A CA with a server and a client certificate, and a foreign CA with its own client certificate.
void MakeCertificates(const std::string& dir) {
  csi::ExecCommandRunner runner;
  auto run = [&](const std::vector<std::string>& argv) {
    auto r = runner.Run(argv, std::chrono::minutes(2));
    REQUIRE(r.ok());
    INFO(r->output);
    REQUIRE(r->exit_code == 0);
  };
  // DIR/NAME.EXT
  auto file = [&](const std::string& name, const char* ext) { return dir + "/" + name + ext; };
  for (const std::string ca : {"ca", "otherca"}) {
    run({"openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
         "/CN=" + ca, "-keyout", file(ca, ".key"), "-out", file(ca, ".crt")});
  }
  std::ofstream(dir + "/san.ext")
      << "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:127.0.1.1,IP:127.0.1.2\n";
  for (const auto& [name, ca] : std::vector<std::pair<std::string, std::string>>{
           {"server", "ca"}, {"client", "ca"}, {"stranger", "otherca"}}) {
    run({"openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=" + name, "-keyout",
         file(name, ".key"), "-out", file(name, ".csr")});
    run({"openssl", "x509", "-req", "-in", file(name, ".csr"), "-CA", file(ca, ".crt"), "-CAkey",
         file(ca, ".key"), "-CAcreateserial", "-days", "1", "-extfile", dir + "/san.ext", "-out",
         file(name, ".crt")});
  }
}

// True once something accepts TCP connections on 127.0.0.1:port.
bool Accepts(int port) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return false;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  const bool ok = connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
  close(fd);
  return ok;
}

TEST_CASE("Storage capacity: per-node source over mutual TLS to the driver's capacity listener",
          "[cluster][capacity]") {
  const TestCluster cluster = TestCluster::FromEnvironment();
  auto client = cluster.AdminClient();
  RegisterDriverOnNodes(*client);
  const std::string certs = cluster.dir() + "/certs-" + RandomSuffix();
  std::filesystem::create_directories(certs);
  MakeCertificates(certs);
  const int port = 21000 + static_cast<int>(getpid() % 1000);
  const std::string address = "127.0.0.1:" + std::to_string(port);
  csi::testing::DriverFixture driver(
      "512Mi", {"--node-id=node-1", "--capacity-listen=" + address, "--tls-ca=" + certs + "/ca.crt",
                "--tls-cert=" + certs + "/server.crt", "--tls-key=" + certs + "/server.key"});
  const Segment node1 = {{kTopologyKey, "node-1"}};
  // The fixture waits for the CSI socket; the capacity listener starts just after it. A source
  // made before it listens backs off for seconds after its first refused connection.
  REQUIRE(Eventually([&] { return Accepts(port); }, seconds(10)));

  // In process: the right certificates work; a wrong CA or a foreign client certificate do not.
  auto make = [&](const std::string& ca, const std::string& who) {
    auto source = controllers::NewTlsCapacitySource(
        address,
        {certs + "/" + ca + ".crt", certs + "/" + who + ".crt", certs + "/" + who + ".key"},
        seconds(5));
    REQUIRE(source.ok());
    return std::shared_ptr<controllers::CapacitySource>(std::move(*source));
  };
  auto per_node = controllers::NewPerNodeCapacitySource({{"node-1", make("ca", "client")}});
  REQUIRE(Eventually([&] { return per_node->DriverName().ok(); }, seconds(10)));
  CHECK(*per_node->DriverName() == kDriver);
  CHECK(per_node->CheckGetCapacity().ok());
  auto good = per_node->GetCapacity(node1, {}, {"node-1"});
  REQUIRE(good.ok());
  CHECK(good->available == 512LL << 20);
  CHECK(per_node->GetCapacity({{kTopologyKey, "node-2"}}, {}, {"node-2"}).status().code() ==
        Code::kNotFound);
  CHECK_FALSE(make("otherca", "client")->GetCapacity(node1, {}, {"node-1"}).ok());
  CHECK_FALSE(make("ca", "stranger")->GetCapacity(node1, {}, {"node-1"}).ok());
  CHECK(controllers::NewTlsCapacitySource(address, {certs + "/ca.crt", "", ""}).status().code() ==
        Code::kInvalidArgument);  // no client certificate: refused before any connection

  // The manager with the per-node source: node-1 published; node-2 and node-3 have no endpoint,
  // so they get no object (never a zero).
  const std::string suffix = RandomSuffix();
  const std::string late = "cap-tls-" + suffix;
  ClassCleanup cleanup{*client, {late}};
  CreateClass(*client, late, "WaitForFirstConsumer");
  const std::string ns = cluster.CreateNamespace("captls");
  ControllerProcess controller(
      cluster, {"--csi-node-endpoint=node-1=" + address, "--capacity-tls-ca=" + certs + "/ca.crt",
                "--capacity-tls-cert=" + certs + "/client.crt",
                "--capacity-tls-key=" + certs + "/client.key", "--capacity-namespace=" + ns,
                "--capacity-poll-interval=1h", "--kube-api-capacity-qps=20",
                "--kube-api-capacity-burst=20"});
  std::map<std::string, ObjectPtr> objects;
  REQUIRE(Eventually([&] {
    objects = Capacities(*client, ns, {late});
    return objects.count(late + "/node-1") == 1;
  }));
  CHECK(*ParseQuantity(Field(*objects[late + "/node-1"], "capacity")) == 512LL << 20);
  std::this_thread::sleep_for(seconds(1));
  CHECK(Capacities(*client, ns, {late}).size() == 1);
  CHECK(controller.Running());
  controller.Stop();
  std::filesystem::remove_all(certs);
}

// Events of the storage-capacity controller about `node` with `reason`.
int NodeEvents(apiclient::ApiClient& client, const std::string& node, const std::string& reason) {
  auto list = client.List(apiclient::resources::kEvents, "default", {});
  if (!list.ok()) return 0;
  int n = 0;
  for (const auto& e : list->items) {
    if (Field(*e, "reportingController") == "ephemera.io/storage-capacity" &&
        Field(*e, "regarding", "kind") == "Node" && Field(*e, "regarding", "name") == node &&
        Field(*e, "reason") == reason) {
      ++n;
    }
  }
  return n;
}

TEST_CASE("Storage capacity: a node whose endpoint stops keeps its value and is reported",
          "[cluster][capacity]") {
  const TestCluster cluster = TestCluster::FromEnvironment();
  auto client = cluster.AdminClient();
  RegisterDriverOnNodes(*client);
  const std::string certs = cluster.dir() + "/certs-" + RandomSuffix();
  std::filesystem::create_directories(certs);
  MakeCertificates(certs);
  const int base = 22000 + static_cast<int>(getpid() % 1000) * 3;
  const std::string address1 = "127.0.0.1:" + std::to_string(base);
  const std::string address2 = "127.0.0.1:" + std::to_string(base + 1);
  const std::string metrics_address = "127.0.0.1:" + std::to_string(base + 2);
  auto tls = [&](const std::string& address, const std::string& node) {
    return std::vector<std::string>{
        "--node-id=" + node, "--capacity-listen=" + address, "--tls-ca=" + certs + "/ca.crt",
        "--tls-cert=" + certs + "/server.crt", "--tls-key=" + certs + "/server.key"};
  };
  csi::testing::DriverFixture driver1("512Mi", tls(address1, "node-1"));
  csi::testing::DriverFixture driver2("256Mi", tls(address2, "node-2"));

  const std::string late = "cap-down-" + RandomSuffix();
  ClassCleanup cleanup{*client, {late}};
  CreateClass(*client, late, "WaitForFirstConsumer");
  const std::string ns = cluster.CreateNamespace("capdown");
  const int unreachable_before = NodeEvents(*client, "node-2", "CapacityEndpointUnreachable");
  const int reachable_before = NodeEvents(*client, "node-2", "CapacityEndpointReachable");
  ControllerProcess controller(
      cluster,
      {"--csi-node-endpoint=node-1=" + address1 + ",node-2=" + address2,
       "--capacity-tls-ca=" + certs + "/ca.crt", "--capacity-tls-cert=" + certs + "/client.crt",
       "--capacity-tls-key=" + certs + "/client.key", "--capacity-namespace=" + ns,
       "--capacity-poll-interval=1s", "--kube-api-capacity-qps=20", "--kube-api-capacity-burst=20",
       "--http-endpoint=" + metrics_address});
  std::map<std::string, ObjectPtr> objects;
  REQUIRE(Eventually([&] {
    objects = Capacities(*client, ns, {late});
    return objects.size() == 2 && objects.count(late + "/node-2") == 1;
  }));
  CHECK(*ParseQuantity(Field(*objects[late + "/node-1"], "capacity")) == 512LL << 20);
  CHECK(*ParseQuantity(Field(*objects[late + "/node-2"], "capacity")) == 256LL << 20);
  const std::string version2 = Field(*objects[late + "/node-2"], "metadata", "resourceVersion");
  auto metrics = [&] { return Shell("curl -s http://" + metrics_address + "/metrics"); };
  CHECK(metrics().find("csistoragecapacity_unreachable_nodes 0") != std::string::npos);

  // node-2's endpoint goes away: a Warning Event on the Node, the gauge and the per-node counter.
  driver2.Kill(SIGTERM);
  CHECK(Eventually(
      [&] {
        return NodeEvents(*client, "node-2", "CapacityEndpointUnreachable") > unreachable_before;
      },
      seconds(60)));
  std::string text;
  CHECK(Eventually(
      [&] {
        text = metrics();
        return text.find("csistoragecapacity_unreachable_nodes 1") != std::string::npos &&
               text.find("csistoragecapacity_node_getcapacity_errors_total{node=\"node-2\"}") !=
                   std::string::npos;
      },
      seconds(30)));
  INFO(text);
  CHECK(text.find("csistoragecapacity_node_getcapacity_errors_total{node=\"node-1\"}") ==
        std::string::npos);
  // Several polls later node-2's object is still there, untouched: its last value, not zero.
  std::this_thread::sleep_for(seconds(4));
  objects = Capacities(*client, ns, {late});
  REQUIRE(objects.count(late + "/node-2") == 1);
  CHECK(*ParseQuantity(Field(*objects[late + "/node-2"], "capacity")) == 256LL << 20);
  CHECK(Field(*objects[late + "/node-2"], "metadata", "resourceVersion") == version2);
  CHECK(*ParseQuantity(Field(*objects[late + "/node-1"], "capacity")) == 512LL << 20);
  CHECK(NodeEvents(*client, "node-1", "CapacityEndpointUnreachable") == 0);
  CHECK(controller.Running());

  // Back again: a Normal Event and the gauge at zero.
  driver2.Start();
  CHECK(Eventually(
      [&] { return NodeEvents(*client, "node-2", "CapacityEndpointReachable") > reachable_before; },
      seconds(60)));
  CHECK(Eventually(
      [&] { return metrics().find("csistoragecapacity_unreachable_nodes 0") != std::string::npos; },
      seconds(30)));
  controller.Stop();
  std::filesystem::remove_all(certs);
}

// Sets environment variables for the processes a test starts, and removes them at the end.
struct ScopedEnv {
  std::vector<std::string> names;
  ScopedEnv(std::initializer_list<std::pair<std::string, std::string>> vars) {
    for (const auto& [k, v] : vars) {
      setenv(k.c_str(), v.c_str(), 1);  // NOLINT(concurrency-mt-unsafe): before any fork
      names.push_back(k);
    }
  }
  ~ScopedEnv() {
    for (const auto& k : names)
      unsetenv(k.c_str());  // NOLINT(concurrency-mt-unsafe)
  }
};

TEST_CASE("Storage capacity: the owner is the controller's Deployment via its pod and ReplicaSet",
          "[cluster][capacity]") {
  const TestCluster cluster = TestCluster::FromEnvironment();
  auto client = cluster.AdminClient();
  csi::testing::DriverFixture driver("1Gi", {"--node-id=node-1"});
  RegisterDriverOnNodes(*client);
  const std::string late = "cap-own-" + RandomSuffix();
  ClassCleanup cleanup{*client, {late}};
  CreateClass(*client, late, "WaitForFirstConsumer");
  const std::string ns = cluster.CreateNamespace("capown");

  // A Deployment of the manager: kube-controller-manager makes its ReplicaSet and that one's pod
  // (no kubelet runs it). The manager is told that pod's name, as the downward API would.
  const Object labels = {{"app", "capacity-owner"}};
  const Object template_spec = {
      {"metadata", {{"labels", labels}}},
      {"spec",
       {{"containers", Object::array({{{"name", "manager"}, {"image", "registry.invalid/m"}}})}}}};
  Object deployment = {{"apiVersion", "apps/v1"}, {"kind", "Deployment"}};
  deployment["metadata"] = {{"name", "manager"}, {"namespace", ns}};
  deployment["spec"] = {
      {"replicas", 1}, {"selector", {{"matchLabels", labels}}}, {"template", template_spec}};
  auto made_deployment = client->Create(apiclient::resources::kDeployments, ns, deployment);
  REQUIRE(made_deployment.ok());
  const std::string deployment_uid = Field(**made_deployment, "metadata", "uid");
  auto controller_of = [](const Object& o) -> Object {
    const Object* refs = nullptr;
    if (o.contains("metadata") && o["metadata"].contains("ownerReferences")) {
      refs = &o["metadata"]["ownerReferences"];
    }
    if (refs != nullptr && refs->is_array()) {
      for (const auto& r : *refs)
        if (r.is_object() && r.value("controller", false)) return r;
    }
    return Object::object();
  };
  std::string pod_name;
  REQUIRE(Eventually(
      [&] {
        auto pods =
            client->List(apiclient::resources::kPods, ns, {.label_selector = "app=capacity-owner"});
        if (!pods.ok()) return false;
        for (const auto& p : pods->items) {
          const Object ref = controller_of(*p);
          if (Field(ref, "kind") != "ReplicaSet" ||
              !Field(*p, "metadata", "deletionTimestamp").empty()) {
            continue;
          }
          auto rs = client->Get(apiclient::resources::kReplicaSets, ns, Field(ref, "name"));
          if (rs.ok() && Field(controller_of(**rs), "uid") == deployment_uid) {
            pod_name = Field(*p, "metadata", "name");
            return true;
          }
        }
        return false;
      },
      seconds(60)));
  Object pod = {{"apiVersion", "v1"}, {"kind", "Pod"}};
  pod["spec"] = template_spec["spec"];

  std::map<std::string, ObjectPtr> objects;
  {
    ScopedEnv env{{"POD_NAME", pod_name}, {"POD_NAMESPACE", ns}};
    std::vector<std::string> flags = ControllerFlags(driver, ns);
    flags.push_back("--capacity-ownerref-level=2");  // pod -> ReplicaSet -> Deployment
    // The segments here are one node each: their objects would be their Nodes' otherwise.
    flags.push_back("--capacity-node-ownerref=false");
    ControllerProcess controller(cluster, flags);
    REQUIRE(Eventually([&] {
      objects = Capacities(*client, ns, {late});
      return objects.size() == 3;
    }));
    for (const auto& [key, o] : objects) {
      INFO(key);
      const Object& refs = (*o)["metadata"]["ownerReferences"];
      REQUIRE(refs.is_array());
      REQUIRE(refs.size() == 1);
      CHECK(Field(refs[0], "apiVersion") == "apps/v1");
      CHECK(Field(refs[0], "kind") == "Deployment");
      CHECK(Field(refs[0], "name") == "manager");
      CHECK(Field(refs[0], "uid") == deployment_uid);
      CHECK(refs[0].value("controller", false));
    }
    controller.Stop();
  }
  // kube-controller-manager's garbage collector follows the reference: the Deployment deleted
  // (background propagation, the API default), the objects go too.
  REQUIRE(client->Delete(apiclient::resources::kDeployments, ns, "manager", {}).ok());
  CHECK(Eventually([&] { return Capacities(*client, ns, {late}).empty(); }, seconds(60)));

  // A pod without a controller cannot give level 1: the manager says so and does not publish.
  Object lonely = pod;
  lonely["metadata"] = {{"name", "lonely"}, {"namespace", ns}};
  REQUIRE(client->Create(apiclient::resources::kPods, ns, lonely).ok());
  {
    ScopedEnv env{{"POD_NAME", "lonely"}, {"POD_NAMESPACE", ns}};
    std::vector<std::string> flags = ControllerFlags(driver, ns);
    flags.push_back("--capacity-ownerref-level=1");
    ControllerProcess controller(cluster, flags);
    CHECK(Eventually([&] { return !controller.Running(); }, seconds(30)));
    CHECK(ReadFile(controller.log()).find("has no controller") != std::string::npos);
    CHECK(Capacities(*client, ns, {late}).empty());
  }
}

// Sets a pod's IP (and phase Running) through the status subresource, as kubelet would.
void SetPodIP(apiclient::ApiClient& client, const std::string& ns, const std::string& name,
              const std::string& ip) {
  REQUIRE(Eventually([&] {
    auto pod = client.Get(apiclient::resources::kPods, ns, name);
    if (!pod.ok()) return false;
    Object copy = **pod;
    copy["status"]["phase"] = "Running";
    copy["status"]["podIP"] = ip;
    copy["status"]["podIPs"] = Object::array({{{"ip", ip}}});
    return client.UpdateStatus(apiclient::resources::kPods, ns, copy).ok();
  }));
}

// A pod of the driver as the API knows it without a kubelet: on `node`, with `ip` (set through
// the status subresource) when not empty.
void DriverPod(apiclient::ApiClient& client, const std::string& ns, const std::string& name,
               const std::string& app, const std::string& node, const std::string& ip) {
  Object pod = {{"apiVersion", "v1"}, {"kind", "Pod"}};
  pod["metadata"] = {{"name", name}, {"namespace", ns}, {"labels", {{"app", app}}}};
  pod["spec"] = {
      {"nodeName", node},
      {"tolerations", Object::array({{{"operator", "Exists"}}})},
      {"containers", Object::array({{{"name", "driver"}, {"image", "registry.invalid/d"}}})}};
  auto created = client.Create(apiclient::resources::kPods, ns, pod);
  REQUIRE(created.ok());
  if (ip.empty()) return;
  SetPodIP(client, ns, name, ip);
}

// The first IPv4 address of this machine that is not loopback: the API server's proxy refuses
// loopback addresses as pod IPs.
std::string HostAddress() {
  std::string words = Shell("hostname -I 2>/dev/null");
  std::istringstream in(words);
  std::string word;
  while (in >> word) {
    in_addr addr{};
    if (inet_pton(AF_INET, word.c_str(), &addr) == 1 && word.rfind("127.", 0) != 0) return word;
  }
  return "";
}

TEST_CASE(
    "Storage capacity: kubectl ephemera capacity shows when the driver last confirmed each "
    "value without writes",
    "[cluster][capacity]") {
  const TestCluster cluster = TestCluster::FromEnvironment();
  auto client = cluster.AdminClient();
  const std::string host = HostAddress();
  if (host.empty()) {
    WARN("SKIP: no non-loopback IPv4 address for the pod proxy");
    return;
  }
  csi::testing::DriverFixture driver("1Gi", {"--node-id=node-1"});
  RegisterDriverOnNodes(*client);
  const std::string sc = "cap-fresh-" + RandomSuffix();
  ClassCleanup cleanup{*client, {sc}};
  CreateClass(*client, sc, "WaitForFirstConsumer");
  const std::string ns = cluster.CreateNamespace("cap-fresh");
  const int port = 24000 + static_cast<int>(getpid() % 1000);
  // The manager polls every second and serves /metrics on this machine's address; a pod object
  // with the manifests' label and that address stands for its pod (no kubelet runs it), so the
  // plugin reaches the metrics through the API server's pod proxy as it would in a cluster.
  std::vector<std::string> flags = ControllerFlags(driver, ns);
  flags.push_back("--capacity-poll-interval=1s");
  flags.push_back("--http-endpoint=" + host + ":" + std::to_string(port));
  ControllerProcess controller(cluster, flags);
  Object pod = {{"apiVersion", "v1"}, {"kind", "Pod"}};
  pod["metadata"] = {{"name", "manager"},
                     {"namespace", ns},
                     {"labels", {{"app.kubernetes.io/name", "ephemera-controller-manager"}}}};
  pod["spec"] = {
      {"nodeName", "node-1"},
      {"containers",
       Object::array(
           {{{"name", "controller-manager"},
             {"image", "registry.invalid/m"},
             {"ports", Object::array({{{"name", "metrics"}, {"containerPort", port}}})}}})}};
  REQUIRE(client->Create(apiclient::resources::kPods, ns, pod).ok());
  SetPodIP(*client, ns, "manager", host);
  REQUIRE(Eventually([&] { return Capacities(*client, ns, {sc}).size() == 3; }));

  const std::string plugin = std::string(kBinaryDir) + "/bin/kubectl-ephemera";
  // node-1's CONFIRMED cell in seconds, or -1 (unknown, or no row).
  auto confirmed_node1 = [&]() -> int {
    const std::string table =
        Shell(plugin + " capacity -n " + ns + " --kubeconfig " + cluster.kubeconfig() + " 2>&1");
    std::istringstream lines(table);
    std::string line;
    while (std::getline(lines, line)) {
      if (line.rfind("node-1 ", 0) != 0 || line.find(sc) == std::string::npos) continue;
      const size_t ago = line.rfind(" ago");
      if (ago == std::string::npos) return -1;
      const size_t start = line.rfind(' ', ago - 1) + 1;
      const std::string cell = line.substr(start, ago - start);  // "3s", "1m5s"
      int seconds_total = 0, number = 0;
      for (char ch : cell) {
        if (ch >= '0' && ch <= '9') {
          number = number * 10 + (ch - '0');
        } else {
          seconds_total += number * (ch == 'm' ? 60 : ch == 'h' ? 3600 : 1);
          number = 0;
        }
      }
      return seconds_total;
    }
    return -1;
  };
  int age = -1;
  REQUIRE(Eventually([&] {
    age = confirmed_node1();
    return age >= 0;
  }));
  CHECK(age <= 3);  // polled every second

  // Steady state: 3 s of polls with the same values write nothing, and the age stays small.
  std::map<std::string, std::string> versions;
  for (const auto& [key, o] : Capacities(*client, ns, {sc}))
    versions[key] = Field(*o, "metadata", "resourceVersion");
  std::this_thread::sleep_for(seconds(3));
  age = confirmed_node1();
  CHECK(age >= 0);
  CHECK(age <= 3);
  for (const auto& [key, o] : Capacities(*client, ns, {sc}))
    CHECK(versions[key] == Field(*o, "metadata", "resourceVersion"));

  // The driver stops: nothing confirms the values any more. The objects do not change (their
  // last value stays), but the age grows.
  driver.Kill(SIGKILL);
  std::this_thread::sleep_for(seconds(6));
  age = confirmed_node1();
  std::printf("driver stopped 6 s ago: CONFIRMED %d s ago\n", age);
  CHECK(age >= 5);
  for (const auto& [key, o] : Capacities(*client, ns, {sc}))
    CHECK(versions[key] == Field(*o, "metadata", "resourceVersion"));
  driver.Start();
  CHECK(Eventually(
      [&] {
        age = confirmed_node1();
        return age >= 0 && age <= 3;
      },
      seconds(40)));
  CHECK(controller.Running());
}

TEST_CASE("Storage capacity: per-node endpoints follow the driver's pods", "[cluster][capacity]") {
  const TestCluster cluster = TestCluster::FromEnvironment();
  auto client = cluster.AdminClient();
  RegisterDriverOnNodes(*client);
  const std::string certs = cluster.dir() + "/certs-" + RandomSuffix();
  std::filesystem::create_directories(certs);
  MakeCertificates(certs);
  const std::string port = std::to_string(25000 + static_cast<int>(getpid() % 1000));
  auto tls = [&](const std::string& address, const std::string& node) {
    return std::vector<std::string>{
        "--node-id=" + node, "--capacity-listen=" + address, "--tls-ca=" + certs + "/ca.crt",
        "--tls-cert=" + certs + "/server.crt", "--tls-key=" + certs + "/server.key"};
  };
  // Two node drivers on two loopback addresses with the same port, as pods on two nodes would be.
  csi::testing::DriverFixture driver1("512Mi", tls("127.0.1.1:" + port, "node-1"));
  csi::testing::DriverFixture driver2("256Mi", tls("127.0.1.2:" + port, "node-2"));

  const std::string suffix = RandomSuffix();
  const std::string late = "cap-pods-" + suffix;
  const std::string app = "ephemera-node-" + suffix;
  ClassCleanup cleanup{*client, {late}};
  CreateClass(*client, late, "WaitForFirstConsumer");
  const std::string ns = cluster.CreateNamespace("cappods");
  ControllerProcess controller(
      cluster, {"--csi-node-endpoints-selector=app=" + app, "--csi-node-endpoints-port=" + port,
                "--driver-name=" + std::string(kDriver), "--capacity-tls-ca=" + certs + "/ca.crt",
                "--capacity-tls-cert=" + certs + "/client.crt",
                "--capacity-tls-key=" + certs + "/client.key", "--capacity-namespace=" + ns,
                "--capacity-poll-interval=1s", "--kube-api-capacity-qps=20",
                "--kube-api-capacity-burst=20"});
  auto value = [&](const std::string& node) -> std::optional<int64_t> {
    auto objects = Capacities(*client, ns, {late});
    auto it = objects.find(late + "/" + node);
    if (it == objects.end()) return std::nullopt;
    auto q = ParseQuantity(Field(*it->second, "capacity"));
    return q.ok() ? std::optional<int64_t>(*q) : std::nullopt;
  };

  // A driver pod on node-1 with its IP: node-1 is published.
  DriverPod(*client, ns, "driver-a", app, "node-1", "127.0.1.1");
  CHECK(Eventually([&] { return value("node-1") == (512LL << 20); }));
  // A pod on node-2 without an IP yet (not started): no endpoint, no object; then its IP.
  DriverPod(*client, ns, "driver-b", app, "node-2", "");
  std::this_thread::sleep_for(seconds(3));
  CHECK_FALSE(value("node-2").has_value());
  SetPodIP(*client, ns, "driver-b", "127.0.1.2");
  CHECK(Eventually([&] { return value("node-2") == (256LL << 20); }));
  // A pod that does not match the selector changes nothing.
  DriverPod(*client, ns, "other", app + "-not", "node-3", "127.0.1.1");
  // node-2's driver pod replaced by one at another address: node-2 is asked there now (that
  // driver is node-1's, which reports 0 for node-2's segment).
  REQUIRE(client->Delete(apiclient::resources::kPods, ns, "driver-b", {}).ok());
  DriverPod(*client, ns, "driver-c", app, "node-2", "127.0.1.1");
  CHECK(Eventually([&] { return value("node-2") == 0; }));
  CHECK_FALSE(value("node-3").has_value());
  CHECK(value("node-1") == (512LL << 20));
  CHECK(controller.Running());
  controller.Stop();
  std::filesystem::remove_all(certs);
}

TEST_CASE("Storage capacity: bootstrap-tls makes the certificates into Secrets and reuses them",
          "[cluster][capacity]") {
  const TestCluster cluster = TestCluster::FromEnvironment();
  auto client = cluster.AdminClient();
  RegisterDriverOnNodes(*client);
  const std::string dir = cluster.dir() + "/boot-" + RandomSuffix();
  std::filesystem::create_directories(dir);
  const std::string address = "127.0.0.1:" + std::to_string(26000 + getpid() % 1000);
  const std::string late = "cap-boot-" + RandomSuffix();
  ClassCleanup cleanup{*client, {late}};
  CreateClass(*client, late, "WaitForFirstConsumer");
  const std::string ns = cluster.CreateNamespace("capboot");
  auto flags = [&](const std::string& files) {
    return std::vector<std::string>{
        "--csi-node-endpoint=node-1=" + address, "--bootstrap-tls",
        "--bootstrap-tls-dir=" + files,          "--capacity-namespace=" + ns,
        "--capacity-poll-interval=1s",           "--kube-api-capacity-qps=20",
        "--kube-api-capacity-burst=20"};
  };
  const std::vector<std::string> names = {
      "ephemera-capacity-tls-ca", "ephemera-capacity-tls-server", "ephemera-capacity-tls-client"};
  auto secrets = [&] {
    std::map<std::string, ObjectPtr> out;
    for (const auto& n : names) {
      auto s = client->Get(apiclient::resources::kSecrets, ns, n);
      if (s.ok()) out[n] = *s;
    }
    return out;
  };
  auto decoded = [](const ObjectPtr& secret, const char* key) {
    auto d = Base64Decode(Field(*secret, "data", key));
    return d.ok() ? *d : std::string();
  };
  std::filesystem::create_directories(dir + "/run1");
  auto controller = std::make_unique<ControllerProcess>(cluster, flags(dir + "/run1"));
  std::map<std::string, ObjectPtr> first;
  REQUIRE(Eventually([&] {
    first = secrets();
    return first.size() == 3;
  }));
  CHECK(decoded(first[names[0]], "ca.key").find("PRIVATE KEY") != std::string::npos);
  CHECK(decoded(first[names[2]], "ca.crt") == decoded(first[names[0]], "ca.crt"));

  // The node driver with the server Secret's files, as a pod mounting the Secret would have them.
  const auto& server = first[names[1]];
  std::ofstream(dir + "/server.crt") << decoded(server, "tls.crt");
  std::ofstream(dir + "/server.key") << decoded(server, "tls.key");
  std::ofstream(dir + "/ca.crt") << decoded(server, "ca.crt");
  csi::testing::DriverFixture driver(
      "512Mi", {"--node-id=node-1", "--capacity-listen=" + address, "--tls-ca=" + dir + "/ca.crt",
                "--tls-cert=" + dir + "/server.crt", "--tls-key=" + dir + "/server.key"});
  CHECK(Eventually(
      [&] {
        auto objects = Capacities(*client, ns, {late});
        return objects.count(late + "/node-1") == 1 &&
               *ParseQuantity(Field(*objects[late + "/node-1"], "capacity")) == 512LL << 20;
      },
      seconds(60)));
  CHECK(controller->Running());

  // The server certificate names no address: a client that verifies the address it dials (no
  // server name override) is refused; with the name it works.
  controllers::TlsFiles files{dir + "/run1/ca.crt", dir + "/run1/tls.crt", dir + "/run1/tls.key"};
  auto by_address = controllers::NewTlsCapacitySource(address, files, seconds(5));
  REQUIRE(by_address.ok());
  CHECK_FALSE((*by_address)->GetCapacity({{kTopologyKey, "node-1"}}, {}, {"node-1"}).ok());
  files.server_name = "ephemera-capacity";
  auto by_name = controllers::NewTlsCapacitySource(address, files, seconds(5));
  REQUIRE(by_name.ok());
  auto answer = (*by_name)->GetCapacity({{kTopologyKey, "node-1"}}, {}, {"node-1"});
  REQUIRE(answer.ok());
  CHECK(answer->available == 512LL << 20);

  // A restart reuses the Secrets unchanged and still reaches the driver: an object deleted by
  // hand is made again from a fresh GetCapacity.
  controller.reset();
  std::filesystem::create_directories(dir + "/run2");
  controller = std::make_unique<ControllerProcess>(cluster, flags(dir + "/run2"));
  std::this_thread::sleep_for(seconds(2));
  auto objects = Capacities(*client, ns, {late});
  REQUIRE(objects.count(late + "/node-1") == 1);
  REQUIRE(client
              ->Delete(kCSIStorageCapacities, ns,
                       Field(*objects[late + "/node-1"], "metadata", "name"), {})
              .ok());
  CHECK(Eventually(
      [&] {
        auto now = Capacities(*client, ns, {late});
        return now.count(late + "/node-1") == 1 &&
               *ParseQuantity(Field(*now[late + "/node-1"], "capacity")) == 512LL << 20;
      },
      seconds(60)));
  const auto second = secrets();
  REQUIRE(second.size() == 3);
  for (const auto& n : names) {
    INFO(n);
    CHECK(Field(*second.at(n), "metadata", "uid") == Field(*first.at(n), "metadata", "uid"));
    CHECK(Field(*second.at(n), "metadata", "resourceVersion") ==
          Field(*first.at(n), "metadata", "resourceVersion"));
  }
  CHECK(ReadFile(dir + "/run2/tls.crt") == ReadFile(dir + "/run1/tls.crt"));
  controller.reset();
  std::filesystem::remove_all(dir);
}

TEST_CASE(
    "Leader election: two replicas whose start-up outlasts two lease durations never lead at "
    "once",
    "[cluster][capacity][leader]") {
  const TestCluster cluster = TestCluster::FromEnvironment();
  auto client = cluster.AdminClient();
  csi::testing::DriverFixture driver("1Gi", {"--node-id=node-1"});
  RegisterDriverOnNodes(*client);
  const std::string late = "cap-le-" + RandomSuffix();
  ClassCleanup cleanup{*client, {late}};
  CreateClass(*client, late, "WaitForFirstConsumer");
  const std::string ns = cluster.CreateNamespace("cap-le");
  // The driver is down while the replicas start: the leader's start-up waits for it.
  driver.Kill(SIGKILL);

  const auto lease_duration = seconds(3);
  std::vector<std::string> flags = ControllerFlags(driver, ns);
  for (const char* f : {"--leader-elect=true", "--leader-elect-lease-name=capacity-le",
                        "--leader-elect-lease-duration=3s", "--leader-elect-renew-deadline=2s",
                        "--leader-elect-retry-period=500ms"}) {
    flags.emplace_back(f);
  }
  flags.push_back("--leader-elect-namespace=" + ns);
  auto holder = [&]() -> std::string {
    auto lease = client->Get(apiclient::resources::kLeases, ns, "capacity-le");
    return lease.ok() ? Field(**lease, "spec", "holderIdentity") : "";
  };
  auto first = std::make_unique<ControllerProcess>(cluster, flags);
  std::string first_identity;
  REQUIRE(Eventually([&] {
    first_identity = holder();
    return !first_identity.empty();
  }));
  ControllerProcess second(cluster, flags);

  // Three lease durations with the leader still starting: the lease never changes hands.
  std::set<std::string> holders;
  const auto until = std::chrono::steady_clock::now() + 3 * lease_duration;
  while (std::chrono::steady_clock::now() < until) {
    const std::string h = holder();
    if (!h.empty()) holders.insert(h);
    std::this_thread::sleep_for(milliseconds(100));
  }
  CHECK(holders == std::set<std::string>{first_identity});
  CHECK(first->Running());
  CHECK(second.Running());

  // The driver comes up: the leader finishes starting and publishes; the standby never did.
  driver.Start();
  REQUIRE(Eventually([&] { return Capacities(*client, ns, {late}).size() == 3; }));
  std::this_thread::sleep_for(seconds(1));
  CHECK(holder() == first_identity);
  const std::string first_log = ReadFile(first->log());
  const std::string second_log = ReadFile(second.log());
  CHECK(Count(first_log, "\"became leader\"") == 1);
  CHECK(Count(first_log, "\"created CSIStorageCapacity\"") >= 3);
  CHECK(Count(second_log, "\"became leader\"") == 0);
  CHECK(Count(second_log, "CSIStorageCapacity\"") == 0);
  CHECK(Count(second_log, "\"starting\"") == 0);

  // A clean stop of the leader hands over at once: the released lease is taken without waiting
  // out a lease duration, and the new leader adopts the objects without writing them again.
  const auto stopped_at = std::chrono::steady_clock::now();
  first->Stop();
  first.reset();
  REQUIRE(Eventually([&] { return !holder().empty() && holder() != first_identity; }, seconds(10)));
  const auto takeover = std::chrono::steady_clock::now() - stopped_at;
  INFO("takeover after " << std::chrono::duration_cast<milliseconds>(takeover).count() << " ms");
  CHECK(takeover < lease_duration);
  REQUIRE(Eventually([&] { return Count(ReadFile(second.log()), "\"started\"") >= 1; }));
  CHECK(Count(ReadFile(second.log()), "\"created CSIStorageCapacity\"") == 0);
  CHECK(Capacities(*client, ns, {late}).size() == 3);
}

}  // namespace
}  // namespace ephemera::testing
