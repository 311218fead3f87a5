#include "controllers/manager/manager.h"

#include <algorithm>
#include <csignal>
#include <cstdlib>
#include <map>
#include <memory>
#include <thread>

#include "apiclient/errors.h"
#include "apiclient/leader_election.h"
#include "apiclient/log.h"
#include "apiclient/rest_client.h"
#include "common/http_endpoint.h"
#include "controllers/capacity/bootstrap_tls.h"
#include "controllers/capacity/controller.h"
#include "controllers/capacity/discovery.h"
#include "controllers/ephemeral/controller.h"

namespace ephemera::controllers {
namespace {

std::atomic<bool> g_stop{false};

void OnSignal(int /*signal*/) {
  g_stop = true;
}

bool Enabled(const ManagerOptions& options, const std::string& name) {
  return std::find(options.controllers.begin(), options.controllers.end(), name) !=
         options.controllers.end();
}

// The owner of the CSIStorageCapacity objects: $POD_NAME in $POD_NAMESPACE (level 1), its
// controller (2: the ReplicaSet), that one's controller (3: the Deployment).
StatusOr<apiclient::Object> ResolveOwner(apiclient::ApiClient& client, int level) {
  const char* pod = std::getenv("POD_NAME");      // NOLINT(concurrency-mt-unsafe)
  const char* ns = std::getenv("POD_NAMESPACE");  // NOLINT(concurrency-mt-unsafe)
  if (pod == nullptr || ns == nullptr || *pod == '\0' || *ns == '\0') {
    return Status::InvalidArgument(
        "--capacity-ownerref-level > 0 needs $POD_NAME and $POD_NAMESPACE");
  }
  auto object = client.Get(apiclient::resources::kPods, ns, pod);
  if (!object.ok()) return object.status().WithContext("owner: pod");
  apiclient::ObjectPtr current = *object;
  for (int i = 1; i < level; ++i) {
    const apiclient::Object* refs = nullptr;
    if ((*current)["metadata"].contains("ownerReferences")) {
      refs = &(*current)["metadata"]["ownerReferences"];
    }
    const apiclient::Object* controller = nullptr;
    if (refs != nullptr && refs->is_array()) {
      for (const auto& r : *refs)
        if (r.is_object() && r.value("controller", false)) controller = &r;
    }
    if (controller == nullptr) {
      return Status::FailedPrecondition("owner: " + apiclient::Field(*current, "metadata", "name") +
                                        " has no controller");
    }
    const std::string kind = apiclient::Field(*controller, "kind");
    const std::string name = apiclient::Field(*controller, "name");
    const apiclient::Resource* resource = nullptr;
    if (kind == "ReplicaSet") resource = &apiclient::resources::kReplicaSets;
    if (kind == "Deployment") resource = &apiclient::resources::kDeployments;
    if (resource == nullptr) {
      return Status::FailedPrecondition("owner: unsupported owner kind \"" + kind.substr(0, 64) +
                                        "\"");
    }
    auto next = client.Get(*resource, ns, name);
    if (!next.ok()) return next.status().WithContext("owner: " + kind + " " + name);
    current = *next;
  }
  return apiclient::Object{{"apiVersion", apiclient::Field(*current, "apiVersion")},
                           {"kind", apiclient::Field(*current, "kind")},
                           {"name", apiclient::Field(*current, "metadata", "name")},
                           {"uid", apiclient::Field(*current, "metadata", "uid")},
                           {"controller", true}};
}

}  // namespace

int RunManager(const ManagerOptions& options) {
  Status s = log::Configure(options.logging_format, options.verbosity);
  if (!s.ok()) {
    log::Error("bad logging flags", s);
    return 2;
  }
  log::SetComponent("ephemera-controller-manager");
  std::signal(SIGTERM, OnSignal);
  std::signal(SIGINT, OnSignal);

  auto config = apiclient::LoadConfig(options.kubeconfig, options.context);
  if (!config.ok()) {
    log::Error("cannot load the API server configuration", config.status());
    return 1;
  }
  config->qps = options.kube_api_qps;
  config->burst = options.kube_api_burst;
  config->user_agent = "ephemera-controller-manager/0.1";
  log::Info("API server", {{"config", config->DescribeForLog()}});

  apiclient::MetricsRegistry metrics;
  auto& latency = metrics.Histogram("rest_client_request_duration_seconds",
                                    "API request latency by verb and HTTP code.", {"verb", "code"});
  auto& requests = metrics.Counter("rest_client_requests_total",
                                   "API requests by verb and HTTP code.", {"verb", "code"});
  auto client =
      apiclient::RestClient::New(*config, [&](std::string_view verb, int code, double sec) {
        const std::vector<std::string> labels = {std::string(verb), std::to_string(code)};
        latency.With(labels).Observe(sec);
        requests.With(labels).Inc();
      });
  if (!client.ok()) {
    log::Error("cannot create the API client", client.status());
    return 1;
  }

  apiclient::LeaderElectionConfig le{.lease_namespace = options.leader_elect_namespace,
                                     .lease_name = options.leader_elect_lease_name,
                                     .identity = apiclient::MakeLeaderIdentity(),
                                     .lease_duration = options.leader_elect_lease_duration,
                                     .renew_deadline = options.leader_elect_renew_deadline,
                                     .retry_period = options.leader_elect_retry_period};
  if (options.leader_elect) {
    s = apiclient::ValidateLeaderElection(le);
    if (!s.ok()) {
      log::Error("bad leader election flags", s);
      return 2;
    }
  }

  // Events go through a client of their own, with its own rate limit of the same size: Events
  // about our work never slow the work down (kube-controller-manager writes no Event when a PVC
  // is created; we do, and must not pay for it in PVC throughput).
  auto event_config = *config;
  event_config.user_agent = "ephemera-controller-manager/0.1 (events)";
  auto event_client = apiclient::RestClient::New(event_config);
  if (!event_client.ok()) {
    log::Error("cannot create the API client for events", event_client.status());
    return 1;
  }
  auto events = std::make_shared<apiclient::EventRecorder>(
      *event_client, apiclient::EventSource{"ephemera.io/ephemeral-volume", le.identity});
  std::unique_ptr<EphemeralVolumeController> controller;
  std::unique_ptr<CapacityController> capacity;
  std::shared_ptr<CapacitySource> capacity_source;
  std::shared_ptr<PodEndpointSource> discovered;  // capacity_source, when found from pods
  TlsFiles tls{options.capacity_tls_ca, options.capacity_tls_cert, options.capacity_tls_key,
               options.capacity_tls_server_name};
  if (Enabled(options, "storage-capacity") && options.bootstrap_tls) {
    std::string dir = options.bootstrap_tls_dir;
    if (dir.empty()) {
      std::string pattern = "/tmp/ephemera-capacity-tls-XXXXXX";
      if (mkdtemp(pattern.data()) == nullptr) {
        log::Error("bootstrap-tls: cannot make a directory", Status::Internal("mkdtemp"));
        return 1;
      }
      dir = pattern;
    }
    auto files =
        BootstrapTls(**client, options.capacity_namespace, options.bootstrap_tls_secret_prefix,
                     options.bootstrap_tls_server_name, dir);
    if (!files.ok()) {
      log::Error("bootstrap-tls failed", files.status());
      return 1;
    }
    tls = *files;
    tls.server_name = options.bootstrap_tls_server_name;
  }
  if (Enabled(options, "storage-capacity") && !options.csi_node_endpoints.empty()) {
    std::map<std::string, std::shared_ptr<CapacitySource>> by_node;
    for (const auto& [node, address] : options.csi_node_endpoints) {
      auto source = NewTlsCapacitySource(address, tls);
      if (!source.ok()) {
        log::Error("bad --csi-node-endpoint", source.status(), {{"node", node}});
        return 2;
      }
      by_node[node] = std::move(*source);
    }
    capacity_source = NewPerNodeCapacitySource(std::move(by_node));
  } else if (Enabled(options, "storage-capacity") && !options.csi_node_endpoints_selector.empty()) {
    discovered = std::make_shared<PodEndpointSource>(
        *client,
        options.csi_node_endpoints_namespace.empty() ? options.capacity_namespace
                                                     : options.csi_node_endpoints_namespace,
        options.csi_node_endpoints_selector, options.csi_node_endpoints_port,
        [tls](const std::string& address) -> StatusOr<std::shared_ptr<CapacitySource>> {
          auto source = NewTlsCapacitySource(address, tls);
          if (!source.ok()) return source.status();
          return std::shared_ptr<CapacitySource>(std::move(*source));
        });
    capacity_source = discovered;
  } else if (Enabled(options, "storage-capacity")) {
    auto source = NewGrpcCapacitySource(options.csi_address);
    if (!source.ok()) {
      log::Error("bad --csi-address", source.status());
      return 2;
    }
    capacity_source = std::move(*source);
  }
  std::atomic<bool> controllers_ready{false};

  // Declared before the endpoint, so that the endpoint's thread has stopped before the elector
  // goes; the checks, which run on that thread, see it through an atomic pointer set once it
  // exists.
  std::unique_ptr<apiclient::LeaderElector> elector;
  std::atomic<apiclient::LeaderElector*> elector_for_checks{nullptr};
  HttpEndpoint endpoint(metrics, [](const Status& s) { log::Error("HTTP endpoint", s); });
  if (!options.http_endpoint.empty()) {
    endpoint.AddLivenessCheck("leader-election", [&elector_for_checks] {
      const apiclient::LeaderElector* e = elector_for_checks.load();
      return e != nullptr ? e->Check() : Status::Ok();
    });
    endpoint.AddReadinessCheck("controllers", [&controllers_ready, &options, &elector_for_checks] {
      // A standby replica is ready: it is healthy and waiting for the lease.
      const apiclient::LeaderElector* e = elector_for_checks.load();
      if (options.leader_elect && e != nullptr && !e->IsLeader()) return Status::Ok();
      return controllers_ready ? Status::Ok() : Status::Unavailable("caches not synced yet");
    });
    s = endpoint.Start(options.http_endpoint);
    if (!s.ok()) {
      log::Error("cannot serve the HTTP endpoint", s);
      return 1;
    }
    log::Info("serving /metrics, /healthz, /readyz", {{"address", options.http_endpoint}});
  }

  auto start_controllers = [&]() -> bool {
    if (Enabled(options, "ephemeral-volume")) {
      controller = std::make_unique<EphemeralVolumeController>(
          *client, events, metrics,
          EphemeralVolumeOptions{.workers = options.concurrent_ephemeralvolume_syncs,
                                 .release_terminated_pods = options.release_terminated_pods});
      if (!controller->Start()) {
        log::Error("informer caches did not sync", Status::DeadlineExceeded("cache sync"));
        return false;
      }
    }
    if (capacity_source) {
      CapacityOptions copts{.driver_name = options.driver_name,
                            .ns = options.capacity_namespace,
                            .poll_interval = options.capacity_poll_interval,
                            .immediate_binding = options.capacity_for_immediate_binding,
                            .write_qps = options.kube_api_capacity_qps,
                            .write_burst = options.kube_api_capacity_burst,
                            .threads = options.capacity_threads};
      copts.events = std::make_shared<apiclient::EventRecorder>(
          *event_client, apiclient::EventSource{"ephemera.io/storage-capacity", le.identity});
      if (options.capacity_ownerref_level > 0) {
        auto owner = ResolveOwner(**client, options.capacity_ownerref_level);
        if (!owner.ok()) {
          log::Error("cannot resolve the owner of the CSIStorageCapacity objects", owner.status());
          return false;
        }
        copts.owner = *owner;
      }
      if (discovered && !discovered->Start(std::chrono::seconds(120))) {
        log::Error("the driver's pods could not be listed",
                   Status::DeadlineExceeded("pod informer sync"));
        return false;
      }
      capacity = std::make_unique<CapacityController>(*client, capacity_source, metrics, copts);
      if (!capacity->Start()) {
        log::Error("storage-capacity controller did not start",
                   Status::DeadlineExceeded("driver or cache sync"));
        return false;
      }
    }
    controllers_ready = true;
    return true;
  };

  int exit_code = 0;
  if (options.leader_elect) {
    log::Info("campaigning for leadership",
              {{"lease", le.lease_namespace + "/" + le.lease_name}, {"identity", le.identity}});
    std::atomic<bool> start_failed{false};
    elector = std::make_unique<apiclient::LeaderElector>(
        *client, le,
        apiclient::LeaderCallbacks{.on_started_leading =
                                       [&] {
                                         log::Info("became leader", {{"identity", le.identity}});
                                         if (!start_controllers()) {
                                           start_failed = true;
                                           g_stop = true;
                                         }
                                       },
                                   .on_new_leader =
                                       [](const std::string& who) {
                                         log::Info("leader is", {{"identity", who}});
                                       }});
    elector_for_checks = elector.get();
    std::thread stopper([&] {
      while (!g_stop)
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
      elector->Stop();
    });
    const bool led = elector->Run();
    const bool stopped_by_signal = g_stop.load() && !start_failed;
    g_stop = true;
    stopper.join();
    if (capacity) capacity->Stop();
    if (discovered) discovered->Stop();
    if (controller) controller->Stop();
    if (start_failed) {
      exit_code = 1;
    } else if (led && !stopped_by_signal) {
      log::Error("lost the leader lease", Status::Aborted("leader election lost"));
      exit_code = 1;
    }
  } else {
    if (!start_controllers()) {
      exit_code = 1;
    } else {
      while (!g_stop)
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    if (capacity) capacity->Stop();
    if (discovered) discovered->Stop();
    if (controller) controller->Stop();
  }
  events->Flush();
  endpoint.Stop();
  log::Info("stopped", {{"exitCode", std::to_string(exit_code)}});
  return exit_code;
}

}  // namespace ephemera::controllers
