#include "tests/integration/cluster_client.h"

#include <cstdlib>
#include <fstream>
#include <stdexcept>

namespace ephemera::testing {

TestCluster TestCluster::FromEnvironment() {
  const char* dir = std::getenv("EPHEMERA_TEST_CLUSTER");  // NOLINT(concurrency-mt-unsafe)
  if (dir == nullptr || *dir == '\0') {
    throw std::runtime_error("EPHEMERA_TEST_CLUSTER is not set: run this test through ctest");
  }
  return TestCluster(dir);
}

TestCluster::TestCluster(std::string dir) : dir_(std::move(dir)) {
  std::ifstream port_file(dir_ + "/ports/apiserver");
  std::string port;
  if (!(port_file >> port)) throw std::runtime_error("no cluster at " + dir_);
  server_ = "https://127.0.0.1:" + port;
}

Response TestCluster::Request(const web::http::method& method, const std::string& path,
                              const nlohmann::json* body) const {
  web::http::client::http_client_config config;
  config.set_validate_certificates(true);
  const std::string pki = dir_ + "/pki/";
  config.set_ssl_context_callback([pki](boost::asio::ssl::context& ctx) {
    ctx.load_verify_file(pki + "ca.crt");
    ctx.use_certificate_file(pki + "admin.crt", boost::asio::ssl::context::pem);
    ctx.use_private_key_file(pki + "admin.key", boost::asio::ssl::context::pem);
  });
  web::http::client::http_client client(server_, config);
  web::http::http_request request(method);
  request.set_request_uri(path);
  if (body != nullptr) request.set_body(body->dump(), "application/json");
  auto response = client.request(request).get();
  Response out;
  out.status = response.status_code();
  const std::string text = response.extract_utf8string(true).get();
  if (!text.empty()) out.body = nlohmann::json::parse(text, nullptr, false);
  return out;
}

}  // namespace ephemera::testing
