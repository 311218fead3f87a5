// Unit tests of the apiclient pieces that need no server: kubeconfig parsing, error mapping,
// rate limiting and backoff, URL building, filtered decoding.
#include <catch2/catch.hpp>
#include <cstdio>
#include <fstream>
#include <thread>

#include "apiclient/config.h"
#include "apiclient/errors.h"
#include "apiclient/field_filter.h"
#include "apiclient/rate_limiter.h"
#include "apiclient/resource.h"
#include "apiclient/rest_client.h"
#include "common/base64.h"

namespace ephemera::apiclient {
namespace {

// A clock that moves only when told to; SleepFor advances it.
class FakeClock final : public Clock {
 public:
  TimePoint Now() const override { return now_; }
  std::chrono::system_clock::time_point WallNow() const override { return {}; }
  void SleepFor(Duration d) const override { now_ += d; }
  void Advance(Duration d) { now_ += d; }

 private:
  mutable TimePoint now_{};
};

const char* kKubeconfig = R"(
apiVersion: v1
kind: Config
current-context: admin@test
clusters:
- name: test
  cluster:
    server: https://127.0.0.1:6443/
    certificate-authority-data: Q0EtUEVN
- name: other
  cluster:
    server: https://10.1.2.3:443
    certificate-authority: ca.pem
users:
- name: admin
  user:
    client-certificate-data: Q0VSVA==
    client-key-data: S0VZ
- name: robot
  user:
    token: secret-token
- name: plugin
  user:
    exec: {command: get-token, apiVersion: client.authentication.k8s.io/v1}
- name: files
  user:
    tokenFile: token.txt
contexts:
- name: admin@test
  context: {cluster: test, user: admin}
- name: robot@test
  context: {cluster: test, user: robot}
- name: plugin@test
  context: {cluster: test, user: plugin}
- name: files@other
  context: {cluster: other, user: files}
)";

TEST_CASE("kubeconfig: current context with embedded data", "[apiclient][config]") {
  auto config = ParseKubeconfig(kKubeconfig, "/nonexistent");
  INFO(config.status().ToString());
  REQUIRE(config.ok());
  CHECK(config->server == "https://127.0.0.1:6443");
  CHECK(config->ca_pem == "CA-PEM");
  CHECK(config->client_cert_pem == "CERT");
  CHECK(config->client_key_pem == "KEY");
  CHECK(config->bearer_token.empty());
  CHECK(config->DescribeForLog().find("client certificate") != std::string::npos);
}

TEST_CASE("kubeconfig: the context's namespace is the default namespace", "[apiclient][config]") {
  const std::string text = R"(
apiVersion: v1
kind: Config
current-context: one
clusters:
- name: c
  cluster: {server: "https://127.0.0.1:6443"}
users:
- name: u
  user: {token: t}
contexts:
- name: one
  context: {cluster: c, user: u, namespace: team-a}
- name: two
  context: {cluster: c, user: u}
)";
  CHECK(ParseKubeconfig(text, "/x")->default_namespace == "team-a");
  CHECK(ParseKubeconfig(text, "/x", "two")->default_namespace.empty());
  CHECK(ParseKubeconfig(text, "/x", "three").status().code() == Code::kInvalidArgument);
}

TEST_CASE("kubeconfig: a token is used but never described", "[apiclient][config]") {
  auto config = ParseKubeconfig(kKubeconfig, "/nonexistent", "robot@test");
  REQUIRE(config.ok());
  CHECK(*config->CurrentToken() == "secret-token");
  CHECK(config->DescribeForLog().find("secret-token") == std::string::npos);
}

TEST_CASE("kubeconfig: files relative to the kubeconfig / token file re-read when it changes",
          "[apiclient][config]") {
  char dir_template[] = "/tmp/ephemera-kubeconfig-XXXXXX";
  const std::string dir = mkdtemp(dir_template);
  std::ofstream(dir + "/ca.pem") << "FILE-CA";
  std::ofstream(dir + "/token.txt") << "first\n";
  std::ofstream(dir + "/config") << kKubeconfig;
  auto config = LoadKubeconfig(dir + "/config", "files@other");
  INFO(config.status().ToString());
  REQUIRE(config.ok());
  CHECK(config->ca_pem == "FILE-CA");
  CHECK(*config->CurrentToken() == "first");
  std::this_thread::sleep_for(std::chrono::milliseconds(1100));
  std::ofstream(dir + "/token.txt.new") << "second\n";
  std::rename((dir + "/token.txt.new").c_str(), (dir + "/token.txt").c_str());
  CHECK(*config->CurrentToken() == "second");
  for (const char* f : {"/ca.pem", "/token.txt", "/config"})
    std::remove((dir + f).c_str());
  std::remove(dir.c_str());
}

TEST_CASE("kubeconfig: unsupported and broken input gives a clear error / no crash",
          "[apiclient][config]") {
  // Exec plugins are supported (exec_credential_test.cc); the plugin runs only when asked.
  auto exec = ParseKubeconfig(kKubeconfig, "/x", "plugin@test");
  REQUIRE(exec.ok());
  REQUIRE(exec->exec != nullptr);
  CHECK(exec->exec->runs() == 0);

  CHECK(ParseKubeconfig(kKubeconfig, "/x", "nope").status().message().find("\"nope\"") !=
        std::string::npos);
  CHECK(ParseKubeconfig(kKubeconfig, "/nonexistent", "files@other").status().code() ==
        Code::kNotFound);

  for (const char* bad :
       {"", "[1, 2]", "{{{", "current-context: x", "clusters: 5\ncurrent-context: a",
        "current-context: a\ncontexts: [{name: a, context: 7}]",
        "current-context: a\ncontexts: [{name: a, context: {cluster: c}}]\n"
        "clusters: [{name: c, cluster: {server: http://plain}}]",
        "current-context: a\ncontexts: [{name: a, context: {cluster: c}}]\n"
        "clusters: [{name: c, cluster: {server: 'https://x', "
        "insecure-skip-tls-verify: true}}]",
        "current-context: a\ncontexts: [{name: a, context: {cluster: c}}]\n"
        "clusters: [{name: c, cluster: {server: 'https://x', "
        "certificate-authority-data: '!!notbase64'}}]"}) {
    INFO("input: " << bad);
    auto config = ParseKubeconfig(bad, "/x");
    CHECK_FALSE(config.ok());
    CHECK_FALSE(config.status().message().empty());
  }
  CHECK(LoadKubeconfig("/nonexistent/kubeconfig").status().code() == Code::kNotFound);
}

TEST_CASE("base64", "[apiclient][config]") {
  CHECK(*Base64Decode("aGVsbG8=") == "hello");
  CHECK(*Base64Decode("aGVs\nbG8") == "hello");
  CHECK(*Base64Decode("") == "");
  CHECK_FALSE(Base64Decode("a").ok());
  CHECK_FALSE(Base64Decode("aGVsbG8=x").ok());
  CHECK_FALSE(Base64Decode("a*==").ok());
  // OpenSSL underneath (common/base64.h): padding optional but exact, every length, round trips.
  CHECK(*Base64Decode("aGVsbG8") == "hello");
  CHECK(*Base64Decode(" aGVs bG8=\r\n") == "hello");
  CHECK(*Base64Decode("YQ") == "a");
  CHECK(*Base64Decode("YWI=") == "ab");
  CHECK_FALSE(Base64Decode("aGVsbG8==").ok());
  CHECK_FALSE(Base64Decode("YQ=").ok());
  CHECK_FALSE(Base64Decode("YQ===").ok());
  CHECK_FALSE(Base64Decode("=").ok());
  CHECK_FALSE(Base64Decode("aGVs-G8=").ok());  // base64url is another alphabet
  CHECK(Base64Encode("") == "");
  CHECK(Base64Encode("a") == "YQ==");
  CHECK(Base64Encode("ab") == "YWI=");
  CHECK(Base64Encode("hello") == "aGVsbG8=");
  std::string bytes;
  for (int i = 0; i < 256; ++i) {
    bytes += static_cast<char>(i);
    CHECK(*Base64Decode(Base64Encode(bytes)) == bytes);
  }
}

TEST_CASE("HTTP errors map to canonical codes", "[apiclient][errors]") {
  const std::string conflict =
      R"({"kind":"Status","status":"Failure","reason":"Conflict","message":"the object has been modified","code":409})";
  const std::string exists =
      R"({"kind":"Status","status":"Failure","reason":"AlreadyExists","message":"pvc \"a\" already exists","code":409})";
  CHECK(IsConflict(StatusFromHttp(409, conflict, "PUT x")));
  CHECK(IsAlreadyExists(StatusFromHttp(409, exists, "POST x")));
  CHECK(IsNotFound(StatusFromHttp(404, "", "GET x")));
  CHECK(IsGone(StatusFromHttp(410, R"({"kind":"Status","reason":"Expired","code":410})", "W")));
  CHECK(IsForbidden(StatusFromHttp(403, "", "GET x")));
  CHECK(IsInvalid(StatusFromHttp(422, "", "POST x")));
  CHECK(IsTooManyRequests(StatusFromHttp(429, "", "GET x")));
  CHECK(StatusFromHttp(401, "", "GET x").code() == Code::kUnauthenticated);
  CHECK(StatusFromHttp(503, "", "GET x").code() == Code::kUnavailable);
  CHECK(StatusFromHttp(504, "", "GET x").code() == Code::kDeadlineExceeded);
  CHECK(
      StatusFromHttp(500, R"({"kind":"Status","reason":"ServerTimeout","code":500})", "G").code() ==
      Code::kDeadlineExceeded);
  CHECK(StatusFromHttp(500, "", "GET x").code() == Code::kInternal);
  CHECK(IsTransient(StatusFromHttp(429, "", "x")));
  CHECK_FALSE(IsTransient(StatusFromHttp(404, "", "x")));
  const Status s = StatusFromHttp(409, exists, "POST /api/v1/namespaces/d/persistentvolumeclaims");
  CHECK(s.message() ==
        "POST /api/v1/namespaces/d/persistentvolumeclaims: HTTP 409 AlreadyExists: pvc \"a\" "
        "already exists");
  // A body that is not a Status is cut, not copied whole.
  CHECK(StatusFromHttp(502, std::string(10000, 'x'), "G").message().size() < 300);
}

TEST_CASE("token bucket: burst / then qps", "[apiclient][ratelimit]") {
  FakeClock clock;
  TokenBucket bucket(10, 3, clock);
  for (int i = 0; i < 3; ++i)
    CHECK(bucket.TryAccept());
  CHECK_FALSE(bucket.TryAccept());
  clock.Advance(std::chrono::milliseconds(100));
  CHECK(bucket.TryAccept());
  CHECK_FALSE(bucket.TryAccept());
  // Wait() reserves in order: the next three callers wait 0.1, 0.2 and 0.3 s.
  CHECK(bucket.Reserve() == std::chrono::milliseconds(100));
  CHECK(bucket.Reserve() == std::chrono::milliseconds(200));
  const auto before = clock.Now();
  bucket.Wait();
  CHECK(clock.Now() - before == std::chrono::milliseconds(300));
  // Never more than burst saved up.
  clock.Advance(std::chrono::hours(1));
  for (int i = 0; i < 3; ++i)
    CHECK(bucket.TryAccept());
  CHECK_FALSE(bucket.TryAccept());
}

TEST_CASE("token bucket: qps <= 0 is unlimited", "[apiclient][ratelimit]") {
  FakeClock clock;
  TokenBucket bucket(0, 1, clock);
  for (int i = 0; i < 1000; ++i)
    CHECK(bucket.TryAccept());
  CHECK(bucket.Reserve() == Clock::Duration::zero());
}

TEST_CASE("exponential backoff doubles up to its cap", "[apiclient][backoff]") {
  ExponentialBackoff b(std::chrono::milliseconds(5), std::chrono::seconds(1000));
  CHECK(b.Delay(0) == std::chrono::milliseconds(5));
  CHECK(b.Delay(1) == std::chrono::milliseconds(10));
  CHECK(b.Delay(10) == std::chrono::milliseconds(5120));
  CHECK(b.Delay(30) == std::chrono::seconds(1000));
  CHECK(b.Delay(1000) == std::chrono::seconds(1000));
}

TEST_CASE("resource paths and query escaping", "[apiclient][resource]") {
  CHECK(resources::kPods.CollectionPath("default") == "/api/v1/namespaces/default/pods");
  CHECK(resources::kPods.CollectionPath("") == "/api/v1/pods");
  CHECK(resources::kCSINodes.CollectionPath("ignored") == "/apis/storage.k8s.io/v1/csinodes");
  CHECK(resources::kLeases.ObjectPath("kube-system", "l") ==
        "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/l");
  CHECK(resources::kCSIStorageCapacities.ApiVersion() == "storage.k8s.io/v1");
  CHECK(QueryEscape("app in (a,b), x!=y") == "app%20in%20%28a%2Cb%29%2C%20x%21%3Dy");
  for (const char* bad : {"", ".", "..", "a/b", "a%2fb", "a?b", "a#b", "a b", "a\nb"}) {
    CHECK_FALSE(IsSafePathSegment(bad));
  }
  CHECK(IsSafePathSegment("pod-a-scratch"));
  CHECK_FALSE(IsSafePathSegment(std::string(254, 'a')));
}

}  // namespace
TEST_CASE("field filter: only the named members are decoded", "[apiclient][filter]") {
  const FieldFilter all;
  const FieldFilter filter{
      {"type", all},
      {"object",
       {{"metadata", {{"name", all}, {"labels", all}}}, {"spec", {{"volumes", {{"name", all}}}}}}}};
  const std::string text = R"({"type":"ADDED","object":{"kind":"Pod",
    "metadata":{"name":"p","managedFields":[{"manager":"x","fieldsV1":{"f:a":{}}}],
                "labels":{"a":"1","b":{"deep":[1,2]}}},
    "spec":{"containers":[{"name":"c","image":"i"}],
            "volumes":[{"name":"v1","ephemeral":{"x":1}},{"name":"v2"},"odd",7]},
    "status":{"phase":"Running"}}})";
  const Object parsed = ParseFiltered(text, &filter);
  const Object expected = Object::parse(R"({"type":"ADDED","object":{
    "metadata":{"name":"p","labels":{"a":"1","b":{"deep":[1,2]}}},
    "spec":{"volumes":[{"name":"v1"},{"name":"v2"},"odd",7]}}})");
  CHECK(parsed == expected);
  // Member order is kept; nothing of the dropped members is left behind.
  CHECK(parsed["object"]["metadata"].size() == 2);
  CHECK(parsed["object"].find("status") == parsed["object"].end());
}

TEST_CASE("field filter: no filter or keep-all decodes everything and bad JSON is discarded",
          "[apiclient][filter]") {
  const std::string text = R"({"a":{"b":[1,{"c":null}]},"d":"e"})";
  CHECK(ParseFiltered(text, nullptr) == Object::parse(text));
  const FieldFilter all;
  CHECK(ParseFiltered(text, &all) == Object::parse(text));
  const FieldFilter some{{"d", all}};
  CHECK(ParseFiltered(text, &some) == Object::parse(R"({"d":"e"})"));
  CHECK(ParseFiltered(R"({"d":"e")", &some).is_discarded());
  CHECK(ParseFiltered("[1,2", nullptr).is_discarded());
  // A filtered document whose root is an array: the node applies to each element.
  CHECK(ParseFiltered(R"([{"d":1,"x":2},{"x":3}])", &some) == Object::parse(R"([{"d":1},{}])"));
}

TEST_CASE("Watch lines: events decoded, anything else an error and never an exception",
          "[apiclient][watch]") {
  const FieldFilter keep_name = {{"metadata", FieldFilter{{"name", FieldFilter()}}}};
  const FieldFilter envelope = {{"type", FieldFilter()}, {"object", keep_name}};
  for (const FieldFilter* filter : {static_cast<const FieldFilter*>(nullptr), &envelope}) {
    WatchEvent event;
    Status error;
    REQUIRE(DecodeWatchEventLine(R"({"type":"ADDED","object":{"metadata":{"name":"a","uid":"u"}}})",
                                 filter, "watch", &event, &error));
    CHECK(event.type == WatchEvent::Type::kAdded);
    CHECK((*event.object)["metadata"]["name"] == "a");
    CHECK((*event.object)["metadata"].contains("uid") == (filter == nullptr));

    auto refused = [&](const std::string& line) {
      WatchEvent ignored;
      Status why;
      INFO(line);
      CHECK_FALSE(DecodeWatchEventLine(line, filter, "watch", &ignored, &why));
      CHECK_FALSE(why.ok());
      return why;
    };
    // Wrong JSON types threw nlohmann::type_error out of the watch thread before.
    CHECK(refused(R"({"type":5,"object":{}})").message().find("unknown watch event type") !=
          std::string::npos);
    CHECK(refused(R"({"type":"ERROR","object":{"code":"410"}})").code() == Code::kInternal);
    CHECK(refused(R"({"type":"ERROR","object":{"code":410,"reason":"Expired"}})").code() ==
          Code::kOutOfRange);
    for (const char* line : {"not json", "[1,2]", R"({"type":"ADDED"})",
                             R"({"type":"ADDED","object":[]})", R"({"type":"ODD","object":{}})"}) {
      CHECK(refused(line).code() == Code::kInternal);
    }
  }
}

TEST_CASE("StatusFromHttp: a Status body with fields of the wrong JSON type is no exception",
          "[apiclient]") {
  const Status status =
      StatusFromHttp(409, R"({"kind":"Status","reason":5,"message":["x"]})", "create pvc");
  CHECK(status.code() == Code::kAborted);  // not AlreadyExists: the reason is no string
  CHECK(status.message().find("create pvc") != std::string::npos);
  CHECK(StatusFromHttp(404, R"({"kind":7})", "get").code() == Code::kNotFound);
  CHECK(BoolField(Object::parse(R"({"a":{"b":true}})"), "a", "b"));
  CHECK_FALSE(BoolField(Object::parse(R"({"a":{"b":"true"}})"), "a", "b"));
  CHECK(ArrayField(Object::parse(R"({"m":{"r":{"x":1}}})"), "m", "r").empty());
  CHECK(ArrayField(Object::parse(R"({"m":{"r":[1,2]}})"), "m", "r").size() == 2);
}

}  // namespace ephemera::apiclient
