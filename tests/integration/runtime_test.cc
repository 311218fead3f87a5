// Leader election between two real processes, Events visible to kubectl, and the metrics and
// health endpoint, against the live cluster.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <thread>

#include "apiclient/events.h"
#include "apiclient/leader_election.h"
#include "apiclient/metrics.h"
#include "common/http_endpoint.h"
#include "tests/integration/cluster_client.h"
#include "tests/integration/http_get.h"
#include "tests/test_paths.h"

namespace ephemera::testing {
namespace {

using apiclient::Field;
using std::chrono::milliseconds;
using std::chrono::seconds;

std::string ReadAll(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

std::string RunCommand(const std::string& command) {
  std::string out;
  FILE* pipe = popen(command.c_str(), "r");  // NOLINT(cert-env33-c): test-only, fixed command
  if (pipe == nullptr) return out;
  char buf[4096];
  size_t n = 0;
  while ((n = fread(buf, 1, sizeof(buf), pipe)) > 0)
    out.append(buf, n);
  pclose(pipe);
  return out;
}

pid_t StartCandidate(const TestCluster& cluster, const std::string& ns, const std::string& out) {
  const pid_t pid = fork();
  if (pid == 0) {
    const std::string helper = std::string(kBinaryDir) + "/bin/ephemera_leader_helper";
    execl(helper.c_str(), helper.c_str(), cluster.kubeconfig().c_str(), ns.c_str(), "ephemera-test",
          out.c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  return pid;
}

// The identity that most recently logged `verb` in the file, or "".
std::string Last(const std::string& file, const std::string& verb) {
  std::istringstream lines(ReadAll(file));
  std::string line;
  std::string who;
  while (std::getline(lines, line)) {
    if (line.rfind(verb + " ", 0) == 0) who = line.substr(verb.size() + 1);
  }
  return who;
}

std::string WaitForLeader(const std::string& out_a, const std::string& out_b, seconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    for (const auto* f : {&out_a, &out_b}) {
      const std::string who = Last(*f, "LEADING");
      if (!who.empty()) return *f;
    }
    std::this_thread::sleep_for(milliseconds(100));
  }
  return "";
}

TEST_CASE("Leader election: the second process takes over within 20 s of a SIGKILL", "[cluster]") {
  const TestCluster cluster = TestCluster::FromEnvironment();
  const std::string ns = cluster.CreateNamespace("le");
  char tmpl[] = "/tmp/ephemera-le-XXXXXX";
  const std::string dir = mkdtemp(tmpl);
  const std::string out_a = dir + "/a", out_b = dir + "/b";
  const pid_t a = StartCandidate(cluster, ns, out_a);
  const pid_t b = StartCandidate(cluster, ns, out_b);

  const std::string first_file = WaitForLeader(out_a, out_b, seconds(20));
  REQUIRE_FALSE(first_file.empty());
  const bool a_leads = first_file == out_a;
  const std::string second_file = a_leads ? out_b : out_a;
  const pid_t leader = a_leads ? a : b;
  const pid_t follower = a_leads ? b : a;
  CHECK(Last(second_file, "LEADING").empty());  // Only one leads.
  auto client = cluster.AdminClient();
  auto lease = client->Get(apiclient::resources::kLeases, ns, "ephemera-test");
  REQUIRE(lease.ok());
  CHECK(Field(**lease, "spec", "holderIdentity") == Last(first_file, "LEADING"));

  kill(leader, SIGKILL);
  waitpid(leader, nullptr, 0);
  const auto killed_at = std::chrono::steady_clock::now();
  while (Last(second_file, "LEADING").empty() &&
         std::chrono::steady_clock::now() - killed_at < seconds(25)) {
    std::this_thread::sleep_for(milliseconds(100));
  }
  const auto takeover = std::chrono::steady_clock::now() - killed_at;
  INFO("takeover after " << std::chrono::duration_cast<milliseconds>(takeover).count() << " ms");
  REQUIRE_FALSE(Last(second_file, "LEADING").empty());
  CHECK(takeover < seconds(20));
  lease = client->Get(apiclient::resources::kLeases, ns, "ephemera-test");
  REQUIRE(lease.ok());
  CHECK(Field(**lease, "spec", "holderIdentity") == Last(second_file, "LEADING"));
  CHECK((**lease)["spec"]["leaseTransitions"] == 1);

  // A clean stop releases the lease at once.
  kill(follower, SIGTERM);
  int status = 0;
  waitpid(follower, &status, 0);
  CHECK(WIFEXITED(status));
  CHECK_FALSE(Last(second_file, "STOPPED").empty());
  lease = client->Get(apiclient::resources::kLeases, ns, "ephemera-test");
  REQUIRE(lease.ok());
  CHECK(Field(**lease, "spec", "holderIdentity").empty());
  CHECK((**lease)["spec"]["leaseDurationSeconds"] == 1);
  for (const auto& f : {out_a, out_b})
    std::remove(f.c_str());
  rmdir(dir.c_str());
}

TEST_CASE("Events: repeats aggregate into a series / kubectl get events shows them", "[cluster]") {
  const TestCluster cluster = TestCluster::FromEnvironment();
  auto client = cluster.AdminClient();
  const std::string ns = cluster.CreateNamespace("events");
  auto cm = client->Create(apiclient::resources::kConfigMaps, ns,
                           {{"apiVersion", "v1"},
                            {"kind", "ConfigMap"},
                            {"metadata", {{"name", "subject"}, {"namespace", ns}}}});
  REQUIRE(cm.ok());
  {
    apiclient::EventRecorder recorder(client, {"ephemera.io/test", "test-instance"});
    for (int i = 0; i < 3; ++i) {
      recorder.Record(**cm, "Warning", "FailedBinding", "Provisioning", "something went wrong");
    }
    recorder.Record(**cm, "Normal", "ProvisioningClaimCreated", "Provisioning", "created it");
    recorder.Flush();
    CHECK(recorder.Failed() == 0);
  }
  auto events = client->List(apiclient::resources::kEvents, ns, {});
  REQUIRE(events.ok());
  REQUIRE(events->items.size() == 2);
  int warnings = 0;
  for (const auto& e : events->items) {
    CHECK(Field(*e, "regarding", "uid") == Field(**cm, "metadata", "uid"));
    CHECK(Field(*e, "reportingController") == "ephemera.io/test");
    if (Field(*e, "reason") == "FailedBinding") {
      ++warnings;
      CHECK((*e)["series"]["count"] == 3);
    }
  }
  CHECK(warnings == 1);
  const std::string kubectl = std::string(kSourceDir) + "/.tools/bin/kubectl --kubeconfig " +
                              cluster.kubeconfig() + " get events -n " + ns + " 2>&1";
  const std::string out = RunCommand(kubectl);
  INFO(out);
  CHECK(out.find("FailedBinding") != std::string::npos);
  CHECK(out.find("something went wrong") != std::string::npos);
  CHECK(out.find("ProvisioningClaimCreated") != std::string::npos);
}

TEST_CASE("HTTP endpoint: /metrics passes promtool / /healthz and /readyz follow the checks",
          "[cluster]") {
  apiclient::MetricsRegistry registry;
  // The client's request metrics, as a controller wires them.
  auto& latency = registry.Histogram("rest_client_request_duration_seconds",
                                     "Request latency by verb and code.", {"verb", "code"});
  auto& requests = registry.Counter("rest_client_requests_total", "Requests by verb and code.",
                                    {"verb", "code"});
  registry.Gauge("workqueue_depth", "Depth of the queue.", {"name"}).With({"pods"}).Set(3);
  // A label value that needs every escape of the text format; promtool below must accept it.
  registry.Gauge("workqueue_depth", "Depth of the queue.", {"name"})
      .With({"a \\ \"quoted\"\nname"})
      .Set(1);
  const TestCluster cluster = TestCluster::FromEnvironment();
  auto config = cluster.AdminConfig();
  auto client = apiclient::RestClient::New(config, [&](std::string_view verb, int code, double s) {
    latency.With({std::string(verb), std::to_string(code)}).Observe(s);
    requests.With({std::string(verb), std::to_string(code)}).Inc();
  });
  REQUIRE(client.ok());
  REQUIRE((*client)->Get(apiclient::resources::kNamespaces, "", "default").ok());
  CHECK_FALSE((*client)->Get(apiclient::resources::kNamespaces, "", "nope-x").ok());

  HttpEndpoint endpoint(registry);
  std::atomic<bool> ready{false};
  endpoint.AddLivenessCheck("ping", [] { return Status::Ok(); });
  endpoint.AddReadinessCheck("informers-synced", [&] {
    return ready ? Status::Ok() : Status::Unavailable("informers not synced");
  });
  REQUIRE(endpoint.Start("127.0.0.1:0").ok());
  auto get = [&](const std::string& path) {
    const auto reply = HttpGet("127.0.0.1", endpoint.port(), path);
    INFO(path << ": " << reply.status().ToString());
    REQUIRE(reply.ok());
    return std::make_pair(reply->status, reply->body);
  };
  const auto [metrics_code, metrics] = get("/metrics");
  CHECK(metrics_code == 200);
  CHECK(metrics.find("rest_client_requests_total{verb=\"GET\",code=\"200\"} 1") !=
        std::string::npos);
  CHECK(metrics.find("rest_client_requests_total{verb=\"GET\",code=\"404\"} 1") !=
        std::string::npos);
  CHECK(
      metrics.find(
          "rest_client_request_duration_seconds_bucket{verb=\"GET\",code=\"200\",le=\"+Inf\"} 1") !=
      std::string::npos);
  CHECK(metrics.find("workqueue_depth{name=\"a \\\\ \\\"quoted\\\"\\nname\"} 1\n") !=
        std::string::npos);
  CHECK(get("/healthz").first == 200);
  const auto [not_ready, why] = get("/readyz");
  CHECK(not_ready == 503);
  CHECK(why.find("informers not synced") != std::string::npos);
  ready = true;
  CHECK(get("/readyz").first == 200);
  CHECK(get("/nothing").first == 404);

  const std::string file = "/tmp/ephemera-metrics-" + RandomSuffix() + ".txt";
  std::ofstream(file) << metrics;
  const std::string promtool = RunCommand("promtool check metrics < " + file + " 2>&1; echo rc=$?");
  std::remove(file.c_str());
  INFO(promtool);
  CHECK(promtool.find("rc=0") != std::string::npos);
  endpoint.Stop();
}

}  // namespace
}  // namespace ephemera::testing
