// The test cluster that scripts/cluster started for this suite (the ctest fixture puts its
// directory in $EPHEMERA_TEST_CLUSTER), and API clients for it.
#pragma once

#include <memory>
#include <string>

#include "apiclient/rest_client.h"

namespace ephemera::testing {

class TestCluster {
 public:
  // Throws when $EPHEMERA_TEST_CLUSTER is unset or holds no cluster: run the test through ctest.
  static TestCluster FromEnvironment();

  const std::string& dir() const { return dir_; }
  const std::string& kubeconfig() const { return kubeconfig_; }
  // The cluster-admin config; tests may change qps/burst before making a client.
  apiclient::RestConfig AdminConfig() const;
  // A client as cluster admin with the given client-side rate limit.
  std::shared_ptr<apiclient::RestClient> AdminClient(double qps = 100, int burst = 200) const;
  // A fresh namespace for one test (it goes with the suite's cluster).
  std::string CreateNamespace(const std::string& prefix) const;
  // Compacts etcd at its current revision (tests/cluster/etcd-compact): every older
  // resourceVersion is gone. ConfigMaps bypass the watch cache, so their watches see 410 at once.
  bool CompactEtcd() const;

 private:
  explicit TestCluster(std::string dir);
  std::string dir_;
  std::string kubeconfig_;
};

std::string RandomSuffix();

// A kubeconfig for `cluster` (its server and CA) whose user gets credentials from an exec plugin:
// `exec_fields` is the rest of the exec map in YAML flow style, e.g. "args: [a], installHint: x".
std::string ExecKubeconfig(const TestCluster& cluster, const std::string& command,
                           const std::string& exec_fields = "");

// An executable /bin/sh script at `path` with `body`.
void WriteScript(const std::string& path, const std::string& body);

}  // namespace ephemera::testing
