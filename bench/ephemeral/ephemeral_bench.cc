// The load side of the ephemeral-volume benchmark (bench/ephemeral/run): creates N pods with one
// generic ephemeral volume each, watches pods and PVCs of the namespace, and reports the time until
// every PVC exists and the latency from a pod's ADDED event to its PVC's ADDED event. Whichever
// controller is running (ours or kube-controller-manager's) does the work.
//   ephemeral_bench --kubeconfig K --namespace NS --count N [--inflight 8] [--rate R]
//                   [--timeout-s 900]
// --rate R paces the creates: pod i is created no sooner than i / R seconds after the start, so
// two runs see the same arrival of pods as long as the API server keeps up with R (0: as fast as
// the workers go). "pods_behind_pace_ms" is the most any create started after its slot.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <iostream>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <thread>
#include <vector>

#include "apiclient/informer.h"
#include "apiclient/rest_client.h"

using namespace ephemera::apiclient;  // NOLINT(google-build-using-namespace): a small tool
using Steady = std::chrono::steady_clock;

int main(int argc, char** argv) {
  std::map<std::string, std::string> flags = {
      {"inflight", "8"}, {"rate", "0"}, {"timeout-s", "900"}};
  for (int i = 1; i + 1 < argc; i += 2)
    flags[std::string(argv[i]).substr(2)] = argv[i + 1];
  auto config = LoadKubeconfig(flags["kubeconfig"]);
  if (!config.ok()) {
    std::cerr << config.status().ToString() << "\n";
    return 1;
  }
  config->qps = 0;
  auto client = RestClient::New(*config);
  if (!client.ok()) return 1;
  const std::string ns = flags["namespace"];
  const int count = std::stoi(flags["count"]);
  const int inflight = std::stoi(flags["inflight"]);
  const double rate = std::stod(flags["rate"]);

  std::mutex mu;
  std::condition_variable cv;
  std::map<std::string, Steady::time_point> pod_seen, claim_seen;
  auto strip = [](const std::string& claim) {
    return claim.substr(0, claim.size() - 8);
  };  // "-scratch"
  Informer pods(*client, {.resource = resources::kPods, .ns = ns, .transform = DropManagedFields});
  Informer claims(
      *client,
      {.resource = resources::kPersistentVolumeClaims, .ns = ns, .transform = DropManagedFields});
  pods.AddHandlers({.on_add = [&](const ObjectPtr& o) {
    std::lock_guard<std::mutex> lock(mu);
    pod_seen.emplace(Field(*o, "metadata", "name"), Steady::now());
  }});
  claims.AddHandlers({.on_add = [&](const ObjectPtr& o) {
    std::lock_guard<std::mutex> lock(mu);
    claim_seen.emplace(strip(Field(*o, "metadata", "name")), Steady::now());
    cv.notify_all();
  }});
  pods.Start();
  claims.Start();
  pods.WaitForSync(std::chrono::seconds(30));
  claims.WaitForSync(std::chrono::seconds(30));

  const Object volume = {{"name", "scratch"},
                         {"ephemeral",
                          {{"volumeClaimTemplate",
                            {{"spec",
                              {{"accessModes", {"ReadWriteOnce"}},
                               {"storageClassName", "late"},
                               {"resources", {{"requests", {{"storage", "1Gi"}}}}}}}}}}}};
  const auto start = Steady::now();
  std::atomic<int> next{0}, failures{0};
  std::atomic<int64_t> behind_us{0};  // the most a create started after its slot
  std::vector<std::thread> workers;
  workers.reserve(inflight);
  for (int w = 0; w < inflight; ++w) {
    workers.emplace_back([&] {
      for (int i = next++; i < count; i = next++) {
        if (rate > 0) {
          const auto slot = start + std::chrono::duration_cast<Steady::duration>(
                                        std::chrono::duration<double>(i / rate));
          std::this_thread::sleep_until(slot);
          const int64_t late =
              std::chrono::duration_cast<std::chrono::microseconds>(Steady::now() - slot).count();
          for (int64_t seen = behind_us.load(); late > seen;) {
            if (behind_us.compare_exchange_weak(seen, late)) break;
          }
        }
        const Object pod = {
            {"apiVersion", "v1"},
            {"kind", "Pod"},
            {"metadata", {{"name", "p" + std::to_string(i)}, {"namespace", ns}}},
            {"spec",
             {{"schedulerName", "none"},  // the controller is measured, not the scheduler
              {"containers", {{{"name", "app"}, {"image", "registry.invalid/app"}}}},
              {"volumes", {volume}}}}};
        if (!(*client)->Create(resources::kPods, ns, pod).ok()) ++failures;
      }
    });
  }
  for (auto& t : workers)
    t.join();
  const double create_seconds = std::chrono::duration<double>(Steady::now() - start).count();
  bool complete = false;
  {
    std::unique_lock<std::mutex> lock(mu);
    complete = cv.wait_for(lock, std::chrono::seconds(std::stoi(flags["timeout-s"])),
                           [&] { return static_cast<int>(claim_seen.size()) >= count; });
  }
  const double all_seconds = std::chrono::duration<double>(Steady::now() - start).count();
  pods.Stop();
  claims.Stop();
  std::vector<double> latencies;
  for (const auto& [pod, seen] : pod_seen) {
    auto it = claim_seen.find(pod);
    if (it != claim_seen.end()) {
      latencies.push_back(std::chrono::duration<double, std::milli>(it->second - seen).count());
    }
  }
  std::sort(latencies.begin(), latencies.end());
  auto q = [&](double p) {
    return latencies.empty()
               ? -1.0
               : latencies[static_cast<size_t>(p * static_cast<double>(latencies.size() - 1))];
  };
  std::cout << nlohmann::json{{"count", count},
                              {"complete", complete},
                              {"claims", claim_seen.size()},
                              {"pod_create_failures", failures.load()},
                              {"pods_created_seconds", create_seconds},
                              {"pods_behind_pace_ms",
                               static_cast<double>(behind_us.load()) / 1000.0},
                              {"all_claims_seconds", all_seconds},
                              {"p50_ms", q(0.5)},
                              {"p99_ms", q(0.99)}}
                   .dump()
            << std::endl;
  return complete ? 0 : 1;
}
