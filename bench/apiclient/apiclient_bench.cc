// Benchmarks of ephemera's apiclient against a live cluster; bench/apiclient/run drives them and
// runs client-go (bench/reference) beside them.
//
//   apiclient_bench create-configmaps --kubeconfig K --namespace NS --count N --inflight K
//   apiclient_bench create-pods       --kubeconfig K --namespace NS --count N --inflight K
//   apiclient_bench watch-latency     --kubeconfig K --namespace NS --count N
//   apiclient_bench informer-memory   --kubeconfig K --namespace NS [--transform]
// Each prints one JSON line.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <fstream>
#include <iostream>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "apiclient/informer.h"
#include "apiclient/rest_client.h"

namespace {

using namespace ephemera::apiclient;  // NOLINT(google-build-using-namespace): a small tool
using Steady = std::chrono::steady_clock;

long RssKb() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::stol(line.substr(6));
  }
  return -1;
}

double Seconds(Steady::time_point since) {
  return std::chrono::duration<double>(Steady::now() - since).count();
}

// Creates `count` objects made by `make(i)` with `inflight` threads.
nlohmann::json CreateMany(ApiClient& client, const Resource& resource, const std::string& ns,
                          int count, int inflight, const std::function<Object(int)>& make) {
  std::atomic<int> next{0};
  std::atomic<int> failures{0};
  std::vector<std::thread> workers;
  workers.reserve(inflight);
  const auto start = Steady::now();
  for (int w = 0; w < inflight; ++w) {
    workers.emplace_back([&] {
      for (int i = next++; i < count; i = next++) {
        if (!client.Create(resource, ns, make(i)).ok()) ++failures;
      }
    });
  }
  for (auto& t : workers)
    t.join();
  const double seconds = Seconds(start);
  return {{"client", "ephemera"},        {"count", count},     {"inflight", inflight},
          {"failures", failures.load()}, {"seconds", seconds}, {"per_second", count / seconds}};
}

// A pod as a workload controller would make it: two containers, env, resources, a generic
// ephemeral volume and a projected token volume.
Object BenchPod(const std::string& ns, int i) {
  const std::string name = "bench-pod-" + std::to_string(i);
  Object container = {
      {"name", "app"},
      {"image", "registry.invalid/app:1.2.3"},
      {"args", {"--listen=:8080", "--cache=/cache"}},
      {"env",
       {{{"name", "MODE"}, {"value", "production"}},
        {{"name", "SHARD"}, {"value", std::to_string(i % 16)}}}},
      {"resources",
       {{"requests", {{"cpu", "10m"}, {"memory", "16Mi"}}}, {"limits", {{"memory", "64Mi"}}}}},
      {"volumeMounts", {{{"name", "scratch"}, {"mountPath", "/cache"}}}},
      {"ports", {{{"containerPort", 8080}, {"name", "http"}}}}};
  Object sidecar = container;
  sidecar["name"] = "sidecar";
  return {{"apiVersion", "v1"},
          {"kind", "Pod"},
          {"metadata",
           {{"name", name},
            {"namespace", ns},
            {"labels", {{"app", "bench"}, {"shard", std::to_string(i % 16)}}},
            {"annotations", {{"example.com/owner", "team-storage"}}}}},
          {"spec",
           {{"schedulerName", "none"},  // nobody schedules them: the benchmark measures the client
            {"containers", {container, sidecar}},
            {"volumes",
             {{{"name", "scratch"},
               {"ephemeral",
                {{"volumeClaimTemplate",
                  {{"spec",
                    {{"accessModes", {"ReadWriteOnce"}},
                     {"storageClassName", "pmem-csi-ext4"},
                     {"resources", {{"requests", {{"storage", "1Gi"}}}}}}}}}}}}}}}}};
}

// What the ephemeral-volume controller needs of a pod; everything else is dropped.
Object TrimPod(Object pod) {
  Object out;
  out["apiVersion"] = pod["apiVersion"];
  out["kind"] = pod["kind"];
  for (const char* key :
       {"name", "namespace", "uid", "resourceVersion", "deletionTimestamp", "ownerReferences"}) {
    if (pod["metadata"].contains(key)) out["metadata"][key] = pod["metadata"][key];
  }
  if (pod["spec"].contains("volumes")) {
    for (const auto& v : pod["spec"]["volumes"]) {
      if (v.contains("ephemeral")) out["spec"]["volumes"].push_back(v);
    }
  }
  if (pod["spec"].contains("nodeName")) out["spec"]["nodeName"] = pod["spec"]["nodeName"];
  if (pod.contains("status") && pod["status"].contains("phase")) {
    out["status"]["phase"] = pod["status"]["phase"];
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::cerr << "usage: apiclient_bench MODE --kubeconfig K --namespace NS [--count N] "
                 "[--inflight K] [--transform]\n";
    return 2;
  }
  const std::string mode = argv[1];
  std::map<std::string, std::string> flags;
  for (int i = 2; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--transform") {
      flags["transform"] = "1";
    } else if (a.rfind("--", 0) == 0 && i + 1 < argc) {
      flags[a.substr(2)] = argv[++i];
    }
  }
  auto config = LoadKubeconfig(flags["kubeconfig"]);
  if (!config.ok()) {
    std::cerr << config.status().ToString() << "\n";
    return 1;
  }
  config->qps = 0;  // rate limits off, as in the client-go run
  config->user_agent = "apiclient-bench";
  auto client = RestClient::New(*config);
  if (!client.ok()) {
    std::cerr << client.status().ToString() << "\n";
    return 1;
  }
  const std::string ns = flags["namespace"];
  const int count = flags.count("count") ? std::stoi(flags["count"]) : 5000;
  const int inflight = flags.count("inflight") ? std::stoi(flags["inflight"]) : 8;
  const std::string prefix = flags.count("prefix") ? flags["prefix"] : "ours";

  if (mode == "create-configmaps") {
    auto result = CreateMany(**client, resources::kConfigMaps, ns, count, inflight, [&](int i) {
      return Object{{"apiVersion", "v1"},
                    {"kind", "ConfigMap"},
                    {"metadata", {{"name", prefix + "-" + std::to_string(i)}, {"namespace", ns}}},
                    {"data", {{"value", std::to_string(i)}}}};
    });
    std::cout << result.dump() << std::endl;
    return result["failures"] == 0 ? 0 : 1;
  }
  if (mode == "create-pods") {
    auto result = CreateMany(**client, resources::kPods, ns, count, inflight,
                             [&](int i) { return BenchPod(ns, i); });
    std::cout << result.dump() << std::endl;
    return result["failures"] == 0 ? 0 : 1;
  }
  if (mode == "watch-latency") {
    // Time from just before Create() to the informer's handler call, one object at a time.
    Informer informer(*client, {.resource = resources::kConfigMaps, .ns = ns});
    std::mutex mu;
    std::condition_variable cv;
    std::map<std::string, Steady::time_point> seen;
    informer.AddHandlers({.on_add = [&](const ObjectPtr& o) {
      std::lock_guard<std::mutex> lock(mu);
      seen[Field(*o, "metadata", "name")] = Steady::now();
      cv.notify_all();
    }});
    informer.Start();
    informer.WaitForSync(std::chrono::seconds(30));
    std::vector<double> latencies;
    for (int i = 0; i < count; ++i) {
      const std::string name = "lat-" + std::to_string(i);
      const auto start = Steady::now();
      if (!(*client)
               ->Create(resources::kConfigMaps, ns,
                        {{"apiVersion", "v1"},
                         {"kind", "ConfigMap"},
                         {"metadata", {{"name", name}, {"namespace", ns}}}})
               .ok()) {
        return 1;
      }
      std::unique_lock<std::mutex> lock(mu);
      if (!cv.wait_for(lock, std::chrono::seconds(10), [&] { return seen.count(name) != 0; })) {
        std::cerr << "no event for " << name << "\n";
        return 1;
      }
      latencies.push_back(std::chrono::duration<double, std::milli>(seen[name] - start).count());
    }
    informer.Stop();
    std::sort(latencies.begin(), latencies.end());
    auto q = [&](double p) {
      return latencies[static_cast<size_t>(p * static_cast<double>(latencies.size() - 1))];
    };
    std::cout << nlohmann::json{{"client", "ephemera"},
                                {"samples", latencies.size()},
                                {"p50_ms", q(0.5)},
                                {"p99_ms", q(0.99)},
                                {"max_ms", latencies.back()}}
                     .dump()
              << std::endl;
    return 0;
  }
  if (mode == "informer-memory") {
    const bool transform = flags.count("transform") != 0;
    const long before = RssKb();
    InformerOptions options{.resource = resources::kPods, .ns = ns};
    if (transform) options.transform = TrimPod;
    Informer informer(*client, options);
    const auto start = Steady::now();
    informer.Start();
    if (!informer.WaitForSync(std::chrono::seconds(300))) return 1;
    const double sync_seconds = Seconds(start);
    const long after = RssKb();
    std::cout << nlohmann::json{{"client", "ephemera"},
                                {"transform", transform},
                                {"objects", informer.store().Size()},
                                {"sync_seconds", sync_seconds},
                                {"rss_before_kb", before},
                                {"rss_after_kb", after},
                                {"rss_delta_mb", static_cast<double>(after - before) / 1024.0}}
                     .dump()
              << std::endl;
    informer.Stop();
    return 0;
  }
  std::cerr << "unknown mode " << mode << "\n";
  return 2;
}
