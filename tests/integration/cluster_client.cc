#include "tests/integration/cluster_client.h"

#include <sys/stat.h>

#include <cstdlib>
#include <fstream>
#include <random>
#include <stdexcept>

#include "tests/test_paths.h"

namespace ephemera::testing {

TestCluster TestCluster::FromEnvironment() {
  const char* dir = std::getenv("EPHEMERA_TEST_CLUSTER");  // NOLINT(concurrency-mt-unsafe)
  if (dir == nullptr || *dir == '\0') {
    throw std::runtime_error("EPHEMERA_TEST_CLUSTER is not set: run this test through ctest");
  }
  return TestCluster(dir);
}

TestCluster::TestCluster(std::string dir)
    : dir_(std::move(dir)), kubeconfig_(dir_ + "/kubeconfig") {}

apiclient::RestConfig TestCluster::AdminConfig() const {
  auto config = apiclient::LoadKubeconfig(kubeconfig_);
  if (!config.ok()) throw std::runtime_error(config.status().ToString());
  return *config;
}

std::shared_ptr<apiclient::RestClient> TestCluster::AdminClient(double qps, int burst) const {
  auto config = AdminConfig();
  config.qps = qps;
  config.burst = burst;
  config.user_agent = "ephemera-tests";
  auto client = apiclient::RestClient::New(config);
  if (!client.ok()) throw std::runtime_error(client.status().ToString());
  return *client;
}

std::string TestCluster::CreateNamespace(const std::string& prefix) const {
  std::string name = prefix + "-" + RandomSuffix();
  auto created = AdminClient()->Create(
      apiclient::resources::kNamespaces, "",
      {{"apiVersion", "v1"}, {"kind", "Namespace"}, {"metadata", {{"name", name}}}});
  if (!created.ok()) throw std::runtime_error(created.status().ToString());
  return name;
}

bool TestCluster::CompactEtcd() const {
  const std::string command =
      std::string(kSourceDir) + "/tests/cluster/etcd-compact '" + dir_ + "' > /dev/null";
  return std::system(command.c_str()) == 0;  // NOLINT(concurrency-mt-unsafe,cert-env33-c)
}

std::string RandomSuffix() {
  static thread_local std::mt19937 rng{std::random_device{}()};
  static constexpr char kChars[] = "abcdefghijklmnopqrstuvwxyz0123456789";
  std::string s;
  for (int i = 0; i < 6; ++i)
    s += kChars[rng() % 36];
  return s;
}

std::string ExecKubeconfig(const TestCluster& cluster, const std::string& command,
                           const std::string& exec_fields) {
  const auto admin = cluster.AdminConfig();
  return "apiVersion: v1\nkind: Config\ncurrent-context: exec\n"
         "clusters:\n- name: c\n  cluster:\n    server: " +
         admin.server + "\n    certificate-authority: " + cluster.dir() +
         "/pki/ca.crt\n"
         "contexts:\n- name: exec\n  context: {cluster: c, user: plugin}\n"
         "users:\n- name: plugin\n  user:\n    exec: {apiVersion: "
         "client.authentication.k8s.io/v1, interactiveMode: Never, command: '" +
         command + "'" + (exec_fields.empty() ? "" : ", " + exec_fields) + "}\n";
}

void WriteScript(const std::string& path, const std::string& body) {
  {
    std::ofstream out(path + ".tmp");
    out << "#!/bin/sh\n" << body << "\n";
    if (!out) throw std::runtime_error("cannot write " + path);
  }
  chmod((path + ".tmp").c_str(), 0700);
  // Renamed into place: a script being executed is never rewritten in place (ETXTBSY).
  if (std::rename((path + ".tmp").c_str(), path.c_str()) != 0) {
    throw std::runtime_error("cannot rename to " + path);
  }
}

}  // namespace ephemera::testing
