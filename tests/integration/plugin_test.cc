// kubectl-ephemera against a real control plane: objects made through the API, the plugin run as
// a process (directly and through kubectl's plugin discovery), its output checked.
#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>

#include "tests/integration/cluster_client.h"
#include "tests/test_paths.h"

namespace ephemera::testing {
namespace {

using apiclient::Object;
namespace res = apiclient::resources;

constexpr const char* kDriver = "pmem-csi.ephemera.io";

std::string PluginBinary() {
  return std::string(kBinaryDir) + "/bin/kubectl-ephemera";
}
std::string Kubectl() {
  return std::string(kSourceDir) + "/.tools/bin/kubectl";
}

struct Result {
  int code = -1;
  std::string out, err;
};

std::string ReadAll(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

// Runs `argv` with $KUBECONFIG set to the cluster's and build/bin first on $PATH.
Result RunProgram(const TestCluster& cluster, const std::vector<std::string>& argv) {
  const std::string base = cluster.dir() + "/logs/plugin-" + RandomSuffix();
  const std::string out_path = base + ".out", err_path = base + ".err";
  const pid_t pid = fork();
  if (pid == 0) {
    const int out = open(out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    const int err = open(err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (out < 0 || err < 0) _exit(126);
    dup2(out, 1);
    dup2(err, 2);
    const char* path = std::getenv("PATH");  // NOLINT(concurrency-mt-unsafe)
    const std::string new_path =
        std::string(kBinaryDir) + "/bin:" + (path != nullptr ? path : "/usr/bin:/bin");
    setenv("PATH", new_path.c_str(), 1);                    // NOLINT(concurrency-mt-unsafe)
    setenv("KUBECONFIG", cluster.kubeconfig().c_str(), 1);  // NOLINT(concurrency-mt-unsafe)
    std::vector<char*> args;
    std::vector<std::string> copy = argv;
    args.reserve(copy.size() + 1);
    for (auto& a : copy)
      args.push_back(a.data());
    args.push_back(nullptr);
    execv(copy[0].c_str(), args.data());
    _exit(127);
  }
  int status = 0;
  waitpid(pid, &status, 0);
  Result r;
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  r.out = ReadAll(out_path);
  r.err = ReadAll(err_path);
  return r;
}

Result Plugin(const TestCluster& cluster, std::vector<std::string> args) {
  args.insert(args.begin(), PluginBinary());
  return RunProgram(cluster, args);
}

// The data rows of a table (header dropped), each split on runs of spaces of 3 or more.
std::vector<std::vector<std::string>> Rows(const std::string& table) {
  std::vector<std::vector<std::string>> rows;
  std::istringstream in(table);
  std::string line;
  bool header = true;
  while (std::getline(in, line)) {
    if (header) {
      header = false;
      continue;
    }
    std::vector<std::string> cells;
    static const std::regex kGap(" {3,}");
    for (std::sregex_token_iterator it(line.begin(), line.end(), kGap, -1), end; it != end; ++it)
      cells.push_back(*it);
    rows.push_back(cells);
  }
  return rows;
}

Object CapacityObject(const std::string& name, const std::string& driver, const std::string& sc,
                      Object topology, const std::string& capacity, const std::string& max) {
  return {{"apiVersion", "storage.k8s.io/v1"},
          {"kind", "CSIStorageCapacity"},
          {"metadata", {{"name", name}, {"labels", {{"csi.storage.k8s.io/drivername", driver}}}}},
          {"storageClassName", sc},
          {"nodeTopology", std::move(topology)},
          {"capacity", capacity},
          {"maximumVolumeSize", max}};
}

TEST_CASE("kubectl ephemera capacity shows the CSIStorageCapacity of the driver by node",
          "[plugin]") {
  const auto cluster = TestCluster::FromEnvironment();
  auto client = cluster.AdminClient();
  const std::string ns = cluster.CreateNamespace("plugin-capacity");
  const std::string zone = "zone-" + RandomSuffix();
  // node-1 and node-3 share a zone of this test's own.
  for (const char* node : {"node-1", "node-3"}) {
    auto patched = client->MergePatch(res::kNodes, "", node,
                                      {{"metadata", {{"labels", {{"ephemera-test/zone", zone}}}}}});
    REQUIRE(patched.ok());
  }
  const std::vector<Object> objects = {
      CapacityObject("by-host", kDriver, "ephemera-pmem-xfs",
                     {{"matchLabels", {{"kubernetes.io/hostname", "node-2"}}}}, "10Gi", "9Gi"),
      CapacityObject("by-zone", kDriver, "ephemera-pmem-ext4",
                     {{"matchLabels", {{"ephemera-test/zone", zone}}}}, "20Gi", "4Gi"),
      CapacityObject("nowhere", kDriver, "ephemera-pmem-ext4",
                     {{"matchLabels", {{"kubernetes.io/hostname", "node-99"}}}}, "1Gi", "1Gi"),
      CapacityObject("other-driver", "other.csi.example", "ephemera-pmem-ext4",
                     {{"matchLabels", {{"kubernetes.io/hostname", "node-1"}}}}, "5Gi", "5Gi"),
  };
  for (const auto& o : objects) {
    auto created = client->Create(res::kCSIStorageCapacities, ns, o);
    REQUIRE(created.ok());
  }

  auto r = Plugin(cluster, {"capacity", "-n", ns});
  INFO(r.out << r.err);
  REQUIRE(r.code == 0);
  CHECK(r.out.rfind("NODE   ", 0) == 0);
  const auto rows = Rows(r.out);
  REQUIRE(rows.size() == 3);  // not the other driver's
  CHECK(rows[0] == std::vector<std::string>{"kubernetes.io/hostname=node-99", "ephemera-pmem-ext4",
                                            "1Gi", "1Gi", rows[0].back()});
  CHECK(rows[1] == std::vector<std::string>{"node-1,node-3", "ephemera-pmem-ext4", "20Gi", "4Gi",
                                            rows[1].back()});
  CHECK(rows[2] ==
        std::vector<std::string>{"node-2", "ephemera-pmem-xfs", "10Gi", "9Gi", rows[2].back()});
  // Written by the test, not by a controller-manager: nobody confirms them (the capacity suite
  // tests CONFIRMED against the controller's metrics).
  CHECK(rows[2].back() == "<unknown>");

  // The other driver's object, asked for by name.
  r = Plugin(cluster, {"capacity", "-n", ns, "--driver", "other.csi.example", "-o", "json"});
  REQUIRE(r.code == 0);
  const Object json = Object::parse(r.out);
  REQUIRE(json["items"].size() == 1);
  CHECK(json["items"][0]["name"] == "other-driver");
  CHECK(json["items"][0]["nodes"] == Object::array({"node-1"}));
  CHECK(json["items"][0]["capacityBytes"] == 5LL << 30);

  // Through kubectl's plugin discovery ($PATH holds build/bin).
  r = RunProgram(cluster, {Kubectl(), "ephemera", "capacity", "-n", ns, "-o", "json"});
  INFO(r.err);
  REQUIRE(r.code == 0);
  CHECK(Object::parse(r.out)["items"].size() == 3);

  for (const auto& o : objects) {
    auto deleted = client->Delete(res::kCSIStorageCapacities, ns, o["metadata"]["name"], {});
    CHECK(deleted.ok());
  }
  for (const char* node : {"node-1", "node-3"}) {
    auto patched = client->MergePatch(
        res::kNodes, "", node, {{"metadata", {{"labels", {{"ephemera-test/zone", nullptr}}}}}});
    CHECK(patched.ok());
  }
}

Object EphemeralVolume(const std::string& name, const std::string& sc, const std::string& size) {
  return {{"name", name},
          {"ephemeral",
           {{"volumeClaimTemplate",
             {{"spec",
               {{"accessModes", {"ReadWriteOnce"}},
                {"storageClassName", sc},
                {"resources", {{"requests", {{"storage", size}}}}}}}}}}}};
}

Object PodObject(const std::string& name, const std::string& node, Object volumes) {
  Object pod = {
      {"apiVersion", "v1"},
      {"kind", "Pod"},
      {"metadata", {{"name", name}}},
      {"spec",
       {{"containers", {{{"name", "c"}, {"image", "busybox"}}}}, {"volumes", std::move(volumes)}}}};
  if (!node.empty()) pod["spec"]["nodeName"] = node;
  return pod;
}

TEST_CASE("kubectl ephemera volumes lists ephemeral and inline volumes of the driver", "[plugin]") {
  const auto cluster = TestCluster::FromEnvironment();
  auto client = cluster.AdminClient();
  const std::string ns = cluster.CreateNamespace("plugin-volumes");
  const std::string ours = "plugin-pmem-" + RandomSuffix();
  const std::string theirs = "plugin-other-" + RandomSuffix();
  for (const auto& [name, provisioner] : std::vector<std::pair<std::string, std::string>>{
           {ours, kDriver}, {theirs, "other.csi.example"}}) {
    auto sc = client->Create(res::kStorageClasses, "",
                             {{"apiVersion", "storage.k8s.io/v1"},
                              {"kind", "StorageClass"},
                              {"metadata", {{"name", name}}},
                              {"provisioner", provisioner},
                              {"volumeBindingMode", "WaitForFirstConsumer"}});
    REQUIRE(sc.ok());
  }

  // app: a generic ephemeral volume of ours (with its PVC, as the controller would make it), one
  // of another driver, and a CSI inline volume of ours. lonely: its PVC was never created.
  auto app = client->Create(
      res::kPods, ns,
      PodObject(
          "app", "node-2",
          {EphemeralVolume("scratch", ours, "3Gi"),
           EphemeralVolume("other", theirs, "1Gi"),
           {{"name", "inline"},
            {"csi",
             {{"driver", kDriver}, {"fsType", "xfs"}, {"volumeAttributes", {{"size", "2Gi"}}}}}}}));
  REQUIRE(app.ok());
  auto pvc = client->Create(res::kPersistentVolumeClaims, ns,
                            {{"apiVersion", "v1"},
                             {"kind", "PersistentVolumeClaim"},
                             {"metadata",
                              {{"name", "app-scratch"},
                               {"ownerReferences",
                                {{{"apiVersion", "v1"},
                                  {"kind", "Pod"},
                                  {"name", "app"},
                                  {"uid", apiclient::Field(**app, "metadata", "uid")},
                                  {"controller", true},
                                  {"blockOwnerDeletion", true}}}}}},
                             {"spec",
                              {{"accessModes", {"ReadWriteOnce"}},
                               {"storageClassName", ours},
                               {"resources", {{"requests", {{"storage", "3Gi"}}}}}}}});
  REQUIRE(pvc.ok());
  auto lonely = client->Create(res::kPods, ns,
                               PodObject("lonely", "", {EphemeralVolume("data", ours, "1Gi")}));
  REQUIRE(lonely.ok());

  auto r = Plugin(cluster, {"volumes", "-n", ns});
  INFO(r.out << r.err);
  REQUIRE(r.code == 0);
  CHECK(r.out.rfind("POD   ", 0) == 0);
  const auto rows = Rows(r.out);
  REQUIRE(rows.size() == 3);
  CHECK(rows[0] ==
        std::vector<std::string>{"app", "scratch", "app-scratch", "Pending", "node-2", "3Gi"});
  CHECK(rows[1] ==
        std::vector<std::string>{"app", "inline", "<inline>", "Pending", "node-2", "2Gi"});
  CHECK(rows[2] ==
        std::vector<std::string>{"lonely", "data", "lonely-data", "Missing", "<none>", "1Gi"});

  // -A: a NAMESPACE column and pods of every namespace (ours among them).
  r = RunProgram(cluster, {Kubectl(), "ephemera", "volumes", "-A"});
  REQUIRE(r.code == 0);
  CHECK(r.out.rfind("NAMESPACE   ", 0) == 0);
  CHECK(r.out.find(ns + "   app ") != std::string::npos);

  r = Plugin(cluster, {"volumes", "-n", ns, "-o", "json"});
  REQUIRE(r.code == 0);
  const Object json = Object::parse(r.out);
  REQUIRE(json["items"].size() == 3);
  CHECK(json["items"][0]["type"] == "ephemeral");
  CHECK(json["items"][0]["sizeBytes"] == 3LL << 30);
  CHECK(json["items"][1]["type"] == "csi-inline");
  CHECK(json["items"][1]["pvc"].is_null());

  for (const auto& name : {ours, theirs}) {
    CHECK(client->Delete(res::kStorageClasses, "", name, {}).ok());
  }
}

TEST_CASE("kubectl ephemera fails clearly on bad flags and an unreachable cluster", "[plugin]") {
  const auto cluster = TestCluster::FromEnvironment();
  auto r = Plugin(cluster, {"capacity", "--bogus"});
  CHECK(r.code == 2);
  CHECK(r.out.empty());
  CHECK(r.err.find("unknown flag \"--bogus\"") != std::string::npos);

  r = Plugin(cluster, {"--help"});
  CHECK(r.code == 0);
  CHECK(r.out.find("kubectl ephemera volumes") != std::string::npos);

  // The same kubeconfig pointing at a port where nothing listens.
  std::string text = ReadAll(cluster.kubeconfig());
  text = std::regex_replace(text, std::regex("server: https://127\\.0\\.0\\.1:[0-9]+"),
                            "server: https://127.0.0.1:1");
  const std::string dead = cluster.dir() + "/kubeconfig-dead-" + RandomSuffix();
  // Relative certificate paths stay valid: the copy sits beside the original.
  std::ofstream(dead) << text;
  r = Plugin(cluster, {"volumes", "--kubeconfig", dead});
  CHECK(r.code == 1);
  CHECK(r.out.empty());
  CHECK(r.err.find("cannot reach the Kubernetes API server at https://127.0.0.1:1") !=
        std::string::npos);

  r = Plugin(cluster, {"capacity", "--kubeconfig", cluster.dir() + "/no-such-file"});
  CHECK(r.code == 1);
  CHECK(r.err.find("error: kubeconfig") != std::string::npos);
  std::remove(dead.c_str());
}

TEST_CASE("kubectl ephemera authenticates with a kubeconfig exec plugin", "[plugin]") {
  const auto cluster = TestCluster::FromEnvironment();
  const std::string ns = cluster.CreateNamespace("plugin-exec");
  const std::string dir = cluster.dir() + "/exec-" + RandomSuffix();
  std::filesystem::create_directories(dir);
  // A plugin that hands out the admin's client certificate, as a cloud's plugin hands out a token.
  const Object credential = {{"apiVersion", "client.authentication.k8s.io/v1"},
                             {"kind", "ExecCredential"},
                             {"status",
                              {{"clientCertificateData", ReadAll(cluster.dir() + "/pki/admin.crt")},
                               {"clientKeyData", ReadAll(cluster.dir() + "/pki/admin.key")}}}};
  std::ofstream(dir + "/credential.json") << credential.dump();
  WriteScript(dir + "/good",
              "echo run >> \"$(dirname \"$0\")/runs\"\n"
              "cat \"$(dirname \"$0\")/credential.json\"");
  WriteScript(dir + "/bad", "echo 'token cache is empty: run cloud-login' >&2; exit 1");
  std::ofstream(dir + "/kubeconfig-good") << ExecKubeconfig(cluster, dir + "/good");
  std::ofstream(dir + "/kubeconfig-bad") << ExecKubeconfig(cluster, dir + "/bad");
  std::ofstream(dir + "/kubeconfig-missing") << ExecKubeconfig(
      cluster, "no-such-cloud-plugin", "installHint: 'get it from the cloud CLI'");

  auto r = Plugin(cluster, {"volumes", "-n", ns, "--kubeconfig", dir + "/kubeconfig-good"});
  INFO(r.err);
  CHECK(r.code == 0);
  CHECK(ReadAll(dir + "/runs") == "run\n");  // once for all the plugin's requests

  r = Plugin(cluster, {"volumes", "-n", ns, "--kubeconfig", dir + "/kubeconfig-bad"});
  INFO(r.err);
  CHECK(r.code == 1);
  CHECK(r.out.empty());
  CHECK(r.err.find("exec credential plugin \"" + dir + "/bad\" exited with status 1") !=
        std::string::npos);
  CHECK(r.err.find("token cache is empty: run cloud-login") != std::string::npos);

  r = Plugin(cluster, {"capacity", "--kubeconfig", dir + "/kubeconfig-missing"});
  INFO(r.err);
  CHECK(r.code == 1);
  CHECK(r.err.find("\"no-such-cloud-plugin\" cannot be run: not found in $PATH") !=
        std::string::npos);
  CHECK(r.err.find("get it from the cloud CLI") != std::string::npos);
}

}  // namespace
}  // namespace ephemera::testing
