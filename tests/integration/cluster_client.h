// A minimal HTTPS client for the test cluster that scripts/cluster starts: it talks to the
// cluster's kube-apiserver as the cluster admin, with the cluster's CA verified. For tests only;
// the product's client lives in apiclient/.
#pragma once

#include <cpprest/http_client.h>

#include <nlohmann/json.hpp>
#include <string>

namespace ephemera::testing {

struct Response {
  int status = 0;
  nlohmann::json body;
};

class TestCluster {
 public:
  // Reads the cluster from the directory in $EPHEMERA_TEST_CLUSTER (the ctest fixture sets it).
  static TestCluster FromEnvironment();
  explicit TestCluster(std::string dir);

  const std::string& dir() const { return dir_; }
  const std::string& server() const { return server_; }

  Response Request(const web::http::method& method, const std::string& path,
                   const nlohmann::json* body = nullptr) const;

 private:
  std::string dir_;
  std::string server_;
};

}  // namespace ephemera::testing
