// The load side of the storage-capacity benchmark (bench/capacity/run). One process:
//   - serves a CSI driver with scripted capacities on a unix socket (Identity, and Controller with
//     GET_CAPACITY: the answer is the value set for the node named in accessible_topology), and
//     counts its GetCapacity calls;
//   - makes N fake nodes (Node + CSINode listing the driver with one topology key) and two
//     WaitForFirstConsumer classes, if they are missing;
//   - starts the controller command given after `--` (ours or external-provisioner, both in the
//     central mode against this one socket), and watches CSIStorageCapacity objects in the
//     namespace;
//   - reports: the time until every (node, class) object exists with the driver's value; API
//     writes (watch events) and GetCapacity calls per minute over a steady window in which nothing
//     changes; and staleness: C capacity changes, one per second, each the way a volume creation
//     looks from outside (the driver's value drops, then a PV of the driver naming that node
//     appears), timed from the change to the object showing the new value.
//   With --unreachable U, U of the nodes (every N/U-th) do not answer: on the unix socket their
//   GetCapacity calls are held until the caller gives up (a central driver that hangs for those
//   segments), and with --tls-dir the same driver also serves mutual TLS on 127.0.0.1 for a
//   per-node controller, while each unreachable node gets its own loopback address
//   (127.0.2.x) with a socket that listens and never accepts: the connection is made by the
//   kernel, no byte ever comes back. "@ENDPOINTS@" in COMMAND becomes NODE=HOST:PORT,... for
//   --csi-node-endpoint. Completion then counts the answering nodes only.
//   capacity_bench --kubeconfig K --namespace NS --nodes N --socket PATH --poll-s P
//                  [--window-s 60] [--changes 20] [--log FILE] [--unreachable U]
//                  [--tls-dir DIR (ca.crt, server.crt, server.key)] -- COMMAND...
#include <arpa/inet.h>
#include <fcntl.h>
#include <grpcpp/grpcpp.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <random>
#include <set>
#include <sstream>
#include <thread>
#include <vector>

#include "apiclient/errors.h"
#include "apiclient/informer.h"
#include "apiclient/rest_client.h"
#include "common/quantity.h"
#include "csi/proto/csi.grpc.pb.h"

extern char** environ;

using namespace ephemera::apiclient;  // NOLINT(google-build-using-namespace): a small tool
using Steady = std::chrono::steady_clock;

namespace {

constexpr char kDriver[] = "bench.capacity.ephemera.io";
constexpr char kKey[] = "bench.capacity.ephemera.io/node";
const std::vector<std::string> kClasses = {"bench-a", "bench-b"};

class Identity final : public ::csi::v1::Identity::Service {
 public:
  grpc::Status GetPluginInfo(grpc::ServerContext*, const ::csi::v1::GetPluginInfoRequest*,
                             ::csi::v1::GetPluginInfoResponse* response) override {
    response->set_name(kDriver);
    response->set_vendor_version("0.0.1");
    return grpc::Status::OK;
  }
  grpc::Status GetPluginCapabilities(grpc::ServerContext*,
                                     const ::csi::v1::GetPluginCapabilitiesRequest*,
                                     ::csi::v1::GetPluginCapabilitiesResponse* response) override {
    response->add_capabilities()->mutable_service()->set_type(
        ::csi::v1::PluginCapability::Service::CONTROLLER_SERVICE);
    response->add_capabilities()->mutable_service()->set_type(
        ::csi::v1::PluginCapability::Service::VOLUME_ACCESSIBILITY_CONSTRAINTS);
    return grpc::Status::OK;
  }
  grpc::Status Probe(grpc::ServerContext*, const ::csi::v1::ProbeRequest*,
                     ::csi::v1::ProbeResponse* response) override {
    response->mutable_ready()->set_value(true);
    return grpc::Status::OK;
  }
};

class Controller final : public ::csi::v1::Controller::Service {
 public:
  grpc::Status ControllerGetCapabilities(
      grpc::ServerContext*, const ::csi::v1::ControllerGetCapabilitiesRequest*,
      ::csi::v1::ControllerGetCapabilitiesResponse* response) override {
    for (auto type : {::csi::v1::ControllerServiceCapability::RPC::GET_CAPACITY,
                      ::csi::v1::ControllerServiceCapability::RPC::CREATE_DELETE_VOLUME}) {
      response->add_capabilities()->mutable_rpc()->set_type(type);
    }
    return grpc::Status::OK;
  }
  grpc::Status GetCapacity(grpc::ServerContext* context,
                           const ::csi::v1::GetCapacityRequest* request,
                           ::csi::v1::GetCapacityResponse* response) override {
    calls++;
    const auto& segments = request->accessible_topology().segments();
    auto it = segments.find(kKey);
    if (it != segments.end() && hung.count(it->second) > 0) {
      // A node that does not answer: hold the call until the caller gives up.
      held_calls++;
      while (!context->IsCancelled())
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
      return grpc::Status(grpc::StatusCode::CANCELLED, "never answered");
    }
    std::lock_guard<std::mutex> lock(mu);
    const int64_t bytes =
        it == segments.end() || per_node.count(it->second) == 0 ? 0 : per_node.at(it->second);
    response->set_available_capacity(bytes);
    return grpc::Status::OK;
  }
  std::atomic<uint64_t> calls{0};
  std::atomic<uint64_t> held_calls{0};
  std::set<std::string> hung;  // set before serving
  std::mutex mu;
  std::map<std::string, int64_t> per_node;  // GUARDED_BY(mu)
};

// "class/node": how the published and pending capacities are keyed.
std::string ClassNodeKey(const std::string& storage_class, const std::string& node) {
  std::string key = storage_class;
  key += '/';
  key += node;
  return key;
}

std::string NodeName(int i) {
  char name[32];
  std::snprintf(name, sizeof(name), "bench-node-%04d", i);
  return name;
}

bool Ok(const ephemera::StatusOr<ObjectPtr>& r) {
  return r.ok() || IsAlreadyExists(r.status());
}

// Nodes, CSINodes and classes, created by 8 threads; existing ones are kept.
bool Setup(ApiClient& client, int nodes) {
  std::atomic<int> next{0};
  std::atomic<bool> ok{true};
  std::vector<std::thread> workers;
  workers.reserve(8);
  for (int w = 0; w < 8; ++w) {
    workers.emplace_back([&] {
      for (int i = next++; i < nodes; i = next++) {
        const std::string name = NodeName(i);
        Object node = {{"apiVersion", "v1"}, {"kind", "Node"}};
        node["metadata"] = {{"name", name}, {"labels", {{kKey, name}}}};
        Object csinode = {{"apiVersion", "storage.k8s.io/v1"}, {"kind", "CSINode"}};
        csinode["metadata"]["name"] = name;
        csinode["spec"]["drivers"] = Object::array(
            {{{"name", kDriver}, {"nodeID", name}, {"topologyKeys", Object::array({kKey})}}});
        if (!Ok(client.Create(resources::kNodes, "", node)) ||
            !Ok(client.Create(resources::kCSINodes, "", csinode))) {
          ok = false;
        }
      }
    });
  }
  for (auto& t : workers)
    t.join();
  for (const auto& name : kClasses) {
    const Object sc = {{"apiVersion", "storage.k8s.io/v1"},
                       {"kind", "StorageClass"},
                       {"metadata", {{"name", name}}},
                       {"provisioner", kDriver},
                       {"volumeBindingMode", "WaitForFirstConsumer"}};
    if (!Ok(client.Create(resources::kStorageClasses, "", sc))) ok = false;
  }
  return ok;
}

void DeleteBenchVolumes(ApiClient& client) {
  auto list = client.List(resources::kPersistentVolumes, "", {.label_selector = "bench=capacity"});
  if (!list.ok()) return;
  for (const auto& pv : list->items)
    (void)client.Delete(resources::kPersistentVolumes, "", Field(*pv, "metadata", "name"), {});
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream out;
  out << in.rdbuf();
  return out.str();
}

// A socket on `ip` (loopback) that listens and never accepts; its port, or -1. The fd stays open.
int BlackHole(const std::string& ip) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return -1;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = 0;
  if (inet_pton(AF_INET, ip.c_str(), &addr.sin_addr) != 1 ||
      bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 || listen(fd, 16) != 0) {
    close(fd);
    return -1;
  }
  socklen_t len = sizeof(addr);
  if (getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) return -1;
  return ntohs(addr.sin_port);
}

double Quantile(std::vector<double> v, double q) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(q * static_cast<double>(v.size())))];
}

}  // namespace

int main(int argc, char** argv) {
  std::map<std::string, std::string> flags = {
      {"window-s", "60"}, {"changes", "20"}, {"log", "/dev/null"}, {"timeout-s", "1800"}};
  std::vector<std::string> command;
  for (int i = 1; i < argc; ++i) {
    if (std::string(argv[i]) == "--") {
      command.assign(argv + i + 1, argv + argc);
      break;
    }
    if (i + 1 < argc) flags[std::string(argv[i]).substr(2)] = argv[i + 1];
    ++i;
  }
  if (command.empty()) {
    std::cerr << "usage: capacity_bench --kubeconfig K --namespace NS --nodes N --socket PATH "
                 "--poll-s P [--window-s S] [--changes C] [--log FILE] -- COMMAND...\n";
    return 2;
  }
  auto config = LoadKubeconfig(flags["kubeconfig"]);
  if (!config.ok()) {
    std::cerr << config.status().ToString() << "\n";
    return 1;
  }
  config->qps = 0;
  auto made = RestClient::New(*config);
  if (!made.ok()) return 1;
  ApiClientPtr client = *made;
  const std::string ns = flags["namespace"];
  const int nodes = std::stoi(flags["nodes"]);
  const double poll_s = std::stod(flags["poll-s"]);
  const int window_s = std::stoi(flags["window-s"]);
  int changes = std::min(std::stoi(flags["changes"]), nodes);
  const auto timeout = std::chrono::seconds(std::stoi(flags["timeout-s"]));
  const int unreachable =
      std::min(nodes, flags.count("unreachable") ? std::stoi(flags["unreachable"]) : 0);
  std::set<std::string> hung;
  for (int k = 0; k < unreachable; ++k) {
    // Spread over the list, never the first node (per-node sources ask it first at start).
    const int stride = nodes / unreachable;
    hung.insert(NodeName(k * stride + stride - 1));
  }

  if (!Setup(*client, nodes)) {
    std::cerr << "setup failed\n";
    return 1;
  }
  DeleteBenchVolumes(*client);

  Identity identity;
  Controller driver;
  for (int i = 0; i < nodes; ++i)
    driver.per_node[NodeName(i)] = (1 + i % 7) * (1LL << 30);
  ::unlink(flags["socket"].c_str());
  driver.hung = hung;
  grpc::ServerBuilder builder;
  builder.AddListeningPort("unix://" + flags["socket"], grpc::InsecureServerCredentials());
  int tls_port = 0;
  if (!flags["tls-dir"].empty()) {
    const std::string dir = flags["tls-dir"];
    grpc::SslServerCredentialsOptions tls(
        GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
    tls.pem_root_certs = ReadFile(dir + "/ca.crt");
    tls.pem_key_cert_pairs.push_back(
        {ReadFile(dir + "/server.key"), ReadFile(dir + "/server.crt")});
    builder.AddListeningPort("127.0.0.1:0", grpc::SslServerCredentials(tls), &tls_port);
  }
  builder.RegisterService(&identity);
  builder.RegisterService(&driver);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (!server || (!flags["tls-dir"].empty() && tls_port <= 0)) {
    std::cerr << "cannot serve " << flags["socket"] << "\n";
    return 1;
  }
  // Per-node endpoints: the answering nodes share the TLS listener; each unreachable node has
  // its own black hole on 127.0.2.x / 127.0.3.x ...
  std::string endpoints;
  for (int i = 0, holes = 0; i < nodes; ++i) {
    const std::string name = NodeName(i);
    std::string address = "127.0.0.1:" + std::to_string(tls_port);
    if (hung.count(name) > 0) {
      const std::string ip =
          "127.0." + std::to_string(2 + holes / 250) + "." + std::to_string(1 + holes % 250);
      ++holes;
      const int port = BlackHole(ip);
      if (port < 0) {
        std::cerr << "cannot listen on " << ip << "\n";
        return 1;
      }
      address = ip + ":" + std::to_string(port);
    }
    if (!endpoints.empty()) endpoints += ',';
    endpoints += name;
    endpoints += '=';
    endpoints += address;
  }
  for (auto& arg : command) {
    const auto at = arg.find("@ENDPOINTS@");
    if (at != std::string::npos) arg.replace(at, 11, endpoints);
  }

  // What the controller published: "class/node" -> bytes; every watch event counted as a write.
  std::mutex mu;
  std::condition_variable cv;
  std::map<std::string, int64_t> published;
  uint64_t writes = 0;
  struct Pending {
    Steady::time_point changed;
    int64_t want = 0;
  };
  std::map<std::string, Pending> pending;
  std::vector<double> staleness_ms;
  auto seen = [&](const ObjectPtr& o) {
    const std::string key =
        Field(*o, "storageClassName") + "/" + Field(*o, "nodeTopology", "matchLabels", kKey);
    auto bytes = ephemera::ParseQuantity(Field(*o, "capacity"));
    std::lock_guard<std::mutex> lock(mu);
    ++writes;
    if (!bytes.ok()) return;
    published[key] = *bytes;
    auto p = pending.find(key);
    if (p != pending.end() && p->second.want == *bytes) {
      staleness_ms.push_back(
          std::chrono::duration<double, std::milli>(Steady::now() - p->second.changed).count());
      pending.erase(p);
    }
    cv.notify_all();
  };
  Informer capacities(
      client,
      {.resource = resources::kCSIStorageCapacities, .ns = ns, .transform = DropManagedFields});
  capacities.AddHandlers({.on_add = seen,
                          .on_update = [&](const ObjectPtr&, const ObjectPtr& o) { seen(o); },
                          .on_delete =
                              [&](const ObjectPtr&) {
                                std::lock_guard<std::mutex> lock(mu);
                                ++writes;
                              }});
  capacities.Start();
  capacities.WaitForSync(std::chrono::seconds(30));

  // The controller.
  std::vector<char*> args;
  args.reserve(command.size() + 1);
  for (auto& a : command)
    args.push_back(a.data());
  args.push_back(nullptr);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 1, flags["log"].c_str(), O_WRONLY | O_CREAT | O_TRUNC,
                                   0644);
  posix_spawn_file_actions_adddup2(&actions, 1, 2);
  pid_t pid = -1;
  const auto start = Steady::now();
  const int rc = posix_spawnp(&pid, args[0], &actions, nullptr, args.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  if (rc != 0) {
    std::cerr << "cannot start " << command[0] << "\n";
    return 1;
  }
  auto stop = [&] {
    if (pid > 0) {
      kill(pid, SIGTERM);
      int status = 0;
      waitpid(pid, &status, 0);
      pid = -1;
    }
  };

  nlohmann::json out = {{"nodes", nodes},
                        {"unreachable", unreachable},
                        {"items", (nodes - unreachable) * static_cast<int>(kClasses.size())}};
  std::map<std::string, int64_t> initial;  // the answering nodes'
  {
    std::lock_guard<std::mutex> driver_lock(driver.mu);
    initial = driver.per_node;
  }
  for (const auto& name : hung)
    initial.erase(name);
  auto complete = [&] {  // under mu
    for (const auto& [node, want] : initial) {
      for (const auto& c : kClasses) {
        auto it = published.find(ClassNodeKey(c, node));
        if (it == published.end() || it->second != want) return false;
      }
    }
    return true;
  };
  {
    std::unique_lock<std::mutex> lock(mu);
    if (!cv.wait_until(lock, start + timeout, complete)) {
      stop();
      std::cerr << "not everything published before the timeout (" << published.size() << " of "
                << initial.size() * kClasses.size() << ")\n";
      return 1;
    }
    out["publish_s"] = std::chrono::duration<double>(Steady::now() - start).count();
    int of_unreachable = 0;
    for (const auto& [key, bytes] : published)
      of_unreachable += hung.count(key.substr(key.find('/') + 1)) > 0 ? 1 : 0;
    out["unreachable_published"] = of_unreachable;
  }
  out["held_calls_at_publish"] = driver.held_calls.load();

  // Steady state: nothing changes.
  uint64_t w0 = 0;
  {
    std::lock_guard<std::mutex> lock(mu);
    w0 = writes;
  }
  const uint64_t c0 = driver.calls.load();
  if (window_s > 0) {
    std::this_thread::sleep_for(std::chrono::seconds(window_s));
    std::lock_guard<std::mutex> lock(mu);
    out["writes_per_min"] = static_cast<double>(writes - w0) * 60.0 / window_s;
    out["getcapacity_per_min"] = static_cast<double>(driver.calls.load() - c0) * 60.0 / window_s;
  }

  // Staleness: one change per second on distinct nodes, spread over the node list.
  std::mt19937 rng(42);
  std::vector<int> order;
  for (int i = 0; i < nodes; ++i)
    if (hung.count(NodeName(i)) == 0) order.push_back(i);
  std::shuffle(order.begin(), order.end(), rng);
  changes = std::min(changes, static_cast<int>(order.size()));
  for (int c = 0; c < changes; ++c) {
    const std::string node = NodeName(order[c]);
    int64_t want = 0;
    {
      std::lock_guard<std::mutex> lock(mu);
      std::lock_guard<std::mutex> driver_lock(driver.mu);
      want = driver.per_node[node] - (256LL << 20);
      driver.per_node[node] = want;
      for (const auto& cls : kClasses)
        pending[ClassNodeKey(cls, node)] = {Steady::now(), want};
    }
    Object pv = {{"apiVersion", "v1"}, {"kind", "PersistentVolume"}};
    pv["metadata"] = {{"name", "bench-pv-" + ns + "-" + std::to_string(c)},
                      {"labels", {{"bench", "capacity"}}}};
    pv["spec"] = {{"capacity", {{"storage", "256Mi"}}},
                  {"accessModes", {"ReadWriteOnce"}},
                  {"persistentVolumeReclaimPolicy", "Retain"},
                  {"storageClassName", kClasses[0]},
                  {"csi", {{"driver", kDriver}, {"volumeHandle", "bench-" + std::to_string(c)}}}};
    pv["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"] = Object::array(
        {{{"matchExpressions",
           Object::array({{{"key", kKey}, {"operator", "In"}, {"values", {node}}}})}}});
    if (!client->Create(resources::kPersistentVolumes, "", pv).ok()) {
      std::cerr << "cannot create PV for " << node << "\n";
    }
    std::this_thread::sleep_for(std::chrono::seconds(1));
  }
  {
    std::unique_lock<std::mutex> lock(mu);
    cv.wait_for(lock, std::chrono::duration<double>(poll_s * 2 + 10),
                [&] { return pending.empty(); });
    out["staleness_samples"] = staleness_ms.size();
    out["staleness_missing"] = pending.size();
    out["staleness_p50_ms"] = Quantile(staleness_ms, 0.5);
    out["staleness_p99_ms"] = Quantile(staleness_ms, 0.99);
    out["staleness_max_ms"] = Quantile(staleness_ms, 1.0);
  }
  stop();
  capacities.Stop();
  DeleteBenchVolumes(*client);
  server->Shutdown();
  std::cout << out.dump() << "\n";
  return 0;
}
