// Exec credential plugins against the live API server: a real plugin (a shell script written here)
// prints an ExecCredential with a service account's token from the TokenRequest API, or the
// admin's client certificate. Checks who the server thinks we are, how often the plugin runs
// (cached while valid, again after expiry and after a 401), and the errors of broken plugins.
#include <algorithm>
#include <catch2/catch.hpp>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "apiclient/errors.h"
#include "tests/integration/cluster_client.h"
#include "tests/integration/process.h"

namespace ephemera::testing {
namespace {

using apiclient::Object;
using apiclient::Resource;
namespace res = apiclient::resources;

const Resource kSelfSubjectReviews{"authentication.k8s.io", "v1", "selfsubjectreviews",
                                   "SelfSubjectReview", false};
const Resource kRoleBindings{"rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding",
                             true};

std::string ReadAll(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

// The user the API server sees for `client`.
std::string WhoAmI(apiclient::ApiClient& client) {
  auto review = client.Create(kSelfSubjectReviews, "",
                              {{"apiVersion", "authentication.k8s.io/v1"},
                               {"kind", "SelfSubjectReview"},
                               {"metadata", Object::object()}});
  if (!review.ok()) return "error: " + review.status().ToString();
  return (**review)["status"]["userInfo"].value("username", "");
}

// A namespace with a service account that may view it, and a token for it (1 hour).
struct ServiceAccount {
  std::string ns;
  std::string name = "plugin-user";
  std::string token;
};

ServiceAccount MakeServiceAccount(const TestCluster& cluster) {
  auto admin = cluster.AdminClient();
  ServiceAccount sa;
  sa.ns = cluster.CreateNamespace("exec");
  REQUIRE(admin
              ->Create(res::kServiceAccounts, sa.ns,
                       {{"apiVersion", "v1"},
                        {"kind", "ServiceAccount"},
                        {"metadata", {{"name", sa.name}, {"namespace", sa.ns}}}})
              .ok());
  REQUIRE(admin
              ->Create(kRoleBindings, sa.ns,
                       {{"apiVersion", "rbac.authorization.k8s.io/v1"},
                        {"kind", "RoleBinding"},
                        {"metadata", {{"name", "plugin-view"}, {"namespace", sa.ns}}},
                        {"roleRef",
                         {{"apiGroup", "rbac.authorization.k8s.io"},
                          {"kind", "ClusterRole"},
                          {"name", "view"}}},
                        {"subjects",
                         {{{"kind", "ServiceAccount"}, {"name", sa.name}, {"namespace", sa.ns}}}}})
              .ok());
  // The TokenRequest subresource: POST .../serviceaccounts/NAME/token.
  const Resource token_request{"", "v1", "serviceaccounts/" + sa.name + "/token", "TokenRequest",
                               true};
  auto issued = admin->Create(token_request, sa.ns,
                              {{"apiVersion", "authentication.k8s.io/v1"},
                               {"kind", "TokenRequest"},
                               {"spec", {{"expirationSeconds", 3600}}}});
  INFO(issued.status().ToString());
  REQUIRE(issued.ok());
  sa.token = (**issued)["status"].value("token", "");
  REQUIRE_FALSE(sa.token.empty());
  return sa;
}

// A folder with a token plugin: run N prints the token of file token.N if there is one, else of
// file token, expiring `lifetime` seconds after it ran; every run adds a line to runs.
class TokenPlugin {
 public:
  TokenPlugin(const TestCluster& cluster, const std::string& token, int lifetime_seconds)
      : dir_(cluster.dir() + "/exec-" + RandomSuffix()) {
    std::filesystem::create_directories(dir_);
    std::ofstream(dir_ + "/token") << token;
    WriteScript(dir_ + "/plugin",
                "d=$(dirname \"$0\")\n"
                "echo run >> \"$d/runs\"\n"
                "n=$(grep -c . \"$d/runs\")\n"
                "if [ -f \"$d/token.$n\" ]; then t=$(cat \"$d/token.$n\"); "
                "else t=$(cat \"$d/token\"); fi\n"
                "exp=$(date -u -d \"+" +
                    std::to_string(lifetime_seconds) +
                    " seconds\" +%Y-%m-%dT%H:%M:%SZ)\n"
                    "echo \"plugin run $n\" >&2\n"
                    "printf '{\"apiVersion\":\"client.authentication.k8s.io/v1\","
                    "\"kind\":\"ExecCredential\",\"status\":{\"token\":\"%s\","
                    "\"expirationTimestamp\":\"%s\"}}\\n' \"$t\" \"$exp\"\n");
    std::ofstream(dir_ + "/kubeconfig") << ExecKubeconfig(cluster, dir_ + "/plugin");
  }
  // The token that run `n` prints instead of the usual one.
  void TokenForRun(int n, const std::string& token) const {
    std::ofstream(dir_ + "/token." + std::to_string(n)) << token;
  }
  std::shared_ptr<apiclient::RestClient> Client() const {
    auto config = apiclient::LoadKubeconfig(dir_ + "/kubeconfig");
    INFO(config.status().ToString());
    REQUIRE(config.ok());
    REQUIRE(config->exec != nullptr);
    config->qps = 0;
    auto client = apiclient::RestClient::New(*config);
    REQUIRE(client.ok());
    return *client;
  }
  // How often the plugin ran, counted by the script itself.
  int Runs() const {
    const std::string runs = ReadAll(dir_ + "/runs");
    return static_cast<int>(std::count(runs.begin(), runs.end(), '\n'));
  }

 private:
  std::string dir_;
};

TEST_CASE("exec plugin: requests carry its token, it runs once while the token is valid",
          "[cluster][exec]") {
  const TestCluster cluster = TestCluster::FromEnvironment();
  const ServiceAccount sa = MakeServiceAccount(cluster);
  const TokenPlugin plugin(cluster, sa.token, 3600);
  auto client = plugin.Client();

  CHECK(WhoAmI(*client) == "system:serviceaccount:" + sa.ns + ":" + sa.name);
  // The RoleBinding lets it view its namespace (once the authorizer has seen the binding)...
  CHECK(Eventually([&] { return client->List(res::kConfigMaps, sa.ns, {}).ok(); }));
  for (int i = 0; i < 30; ++i) {
    auto list = client->List(res::kConfigMaps, sa.ns, {});
    REQUIRE(list.ok());
  }
  // ...and nothing else: these requests are the service account's, not the admin's.
  CHECK(client->List(res::kConfigMaps, "kube-system", {}).status().code() ==
        Code::kPermissionDenied);
  CHECK(plugin.Runs() == 1);
  CHECK(client->config().exec->runs() == 1);
}

TEST_CASE("exec plugin: runs again once its credential has expired", "[cluster][exec]") {
  const TestCluster cluster = TestCluster::FromEnvironment();
  const ServiceAccount sa = MakeServiceAccount(cluster);
  // The script's expiry is in whole seconds: 3 to 4 s after it ran.
  const TokenPlugin plugin(cluster, sa.token, 4);
  auto client = plugin.Client();
  REQUIRE(WhoAmI(*client) == "system:serviceaccount:" + sa.ns + ":" + sa.name);
  const int before = plugin.Runs();
  CHECK(before == 1);
  std::this_thread::sleep_for(std::chrono::seconds(5));
  CHECK(WhoAmI(*client) == "system:serviceaccount:" + sa.ns + ":" + sa.name);
  CHECK(plugin.Runs() == before + 1);
}

TEST_CASE("exec plugin: a refused token (401) makes it run again, once per request",
          "[cluster][exec]") {
  const TestCluster cluster = TestCluster::FromEnvironment();
  const ServiceAccount sa = MakeServiceAccount(cluster);
  const std::string user = "system:serviceaccount:" + sa.ns + ":" + sa.name;

  SECTION("a request and a watch recover with the next credential") {
    const TokenPlugin plugin(cluster, sa.token, 3600);
    plugin.TokenForRun(1, "revoked-token");
    plugin.TokenForRun(3, "revoked-token");
    auto client = plugin.Client();
    // Run 1's token is refused; the request is sent again with run 2's.
    CHECK(WhoAmI(*client) == user);
    CHECK(plugin.Runs() == 2);
    CHECK(Eventually([&] { return client->List(res::kConfigMaps, sa.ns, {}).ok(); }));
    CHECK(plugin.Runs() == 2);
    // Forget the credential: the next run (3) prints a refused token, run 4 a good one. A watch
    // refused with 401 is opened again with a fresh credential.
    client->config().exec->Invalidate(*client->config().exec->Get());
    auto watch = client->Watch(res::kConfigMaps, sa.ns, {.timeout_seconds = 5});
    INFO(watch.status().ToString());
    REQUIRE(watch.ok());
    (*watch)->Stop();
    CHECK(plugin.Runs() == 4);
  }
  SECTION("a token that stays refused: one retry per request, then UNAUTHENTICATED") {
    const TokenPlugin plugin(cluster, "not-a-token", 3600);
    auto client = plugin.Client();
    auto got = client->Get(res::kNamespaces, "", sa.ns);
    CHECK(got.status().code() == Code::kUnauthenticated);
    CHECK(got.status().message().find("not-a-token") == std::string::npos);
    CHECK(plugin.Runs() == 2);
    // The next request tries the cached (second) credential, is refused, and runs the plugin
    // once more: one run per request, not a loop.
    CHECK(client->Get(res::kNamespaces, "", sa.ns).status().code() == Code::kUnauthenticated);
    CHECK(plugin.Runs() == 3);
  }
}

TEST_CASE("exec plugin: a client certificate from the plugin authenticates", "[cluster][exec]") {
  const TestCluster cluster = TestCluster::FromEnvironment();
  const std::string dir = cluster.dir() + "/exec-" + RandomSuffix();
  std::filesystem::create_directories(dir);
  const Object credential = {{"apiVersion", "client.authentication.k8s.io/v1"},
                             {"kind", "ExecCredential"},
                             {"status",
                              {{"clientCertificateData", ReadAll(cluster.dir() + "/pki/admin.crt")},
                               {"clientKeyData", ReadAll(cluster.dir() + "/pki/admin.key")}}}};
  std::ofstream(dir + "/credential.json") << credential.dump();
  WriteScript(dir + "/plugin",
              "echo run >> \"$(dirname \"$0\")/runs\"\n"
              "cat \"$(dirname \"$0\")/credential.json\"");
  std::ofstream(dir + "/kubeconfig") << ExecKubeconfig(cluster, dir + "/plugin");
  auto config = apiclient::LoadKubeconfig(dir + "/kubeconfig");
  REQUIRE(config.ok());
  CHECK(config->client_cert_pem.empty());
  auto client = apiclient::RestClient::New(*config);
  REQUIRE(client.ok());
  CHECK(WhoAmI(**client) == "ephemera-admin");
  for (int i = 0; i < 10; ++i)
    REQUIRE((*client)->List(res::kConfigMaps, "kube-system", {}).ok());
  CHECK(ReadAll(dir + "/runs") == "run\n");
}

TEST_CASE("exec plugin: a broken plugin fails requests with a clear error", "[cluster][exec]") {
  const TestCluster cluster = TestCluster::FromEnvironment();
  const std::string dir = cluster.dir() + "/exec-" + RandomSuffix();
  std::filesystem::create_directories(dir);
  struct Case {
    std::string name;
    std::string script;  // empty: no such file
    std::vector<std::string> expect;
  };
  for (const Case& c : std::vector<Case>{
           {"fails",
            "echo 'error: SSO session expired, run login' >&2; exit 3",
            {"exited with status 3", "SSO session expired, run login"}},
           {"bad-json", "echo '{\"token\": '", {"printed an unusable credential", "not a JSON"}},
           {"wrong-version",
            "echo '{\"apiVersion\":\"client.authentication.k8s.io/v1beta1\","
            "\"kind\":\"ExecCredential\",\"status\":{\"token\":\"x\"}}'",
            {"answered with apiVersion \"client.authentication.k8s.io/v1beta1\""}},
           {"missing", "", {"cannot be run: no such file", "Install it with: make plugin"}},
       }) {
    INFO(c.name);
    const std::string path = dir + "/" + c.name;
    if (!c.script.empty()) WriteScript(path, c.script);
    std::ofstream(dir + "/kubeconfig-" + c.name)
        << ExecKubeconfig(cluster, path, "installHint: 'Install it with: make plugin'");
    auto config = apiclient::LoadKubeconfig(dir + "/kubeconfig-" + c.name);
    REQUIRE(config.ok());
    auto client = apiclient::RestClient::New(*config);
    REQUIRE(client.ok());
    auto got = (*client)->Get(res::kNamespaces, "", "default");
    REQUIRE_FALSE(got.ok());
    const std::string& message = got.status().message();
    INFO(message);
    CHECK(got.status().code() == Code::kFailedPrecondition);
    CHECK(message.find("exec credential plugin \"" + path + "\"") != std::string::npos);
    for (const auto& e : c.expect)
      CHECK(message.find(e) != std::string::npos);
    CHECK((message.find("Install it with") != std::string::npos) == (c.name == "missing"));
  }
}

}  // namespace
}  // namespace ephemera::testing
