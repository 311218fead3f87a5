#include "controllers/manager/manager.h"

#include <algorithm>
#include <cstdlib>
#include <map>
#include <memory>

#include "apiclient/errors.h"
#include "apiclient/leader_election.h"
#include "apiclient/manager.h"
#include "apiclient/rest_client.h"
#include "common/log.h"
#include "controllers/capacity/bootstrap_tls.h"
#include "controllers/capacity/controller.h"
#include "controllers/capacity/discovery.h"
#include "controllers/ephemeral/controller.h"

namespace ephemera::controllers {
namespace {

constexpr const char* kUserAgent = "ephemera-controller-manager/0.1";

using apiclient::ArrayField;
using apiclient::BoolField;
using apiclient::Field;
using apiclient::Object;

bool Enabled(const ManagerOptions& options, const std::string& name) {
  return std::find(options.controllers.begin(), options.controllers.end(), name) !=
         options.controllers.end();
}

// The controller reference of `object`, or null.
const Object* ControllerRef(const Object& object) {
  for (const auto& r : ArrayField(object, "metadata", "ownerReferences")) {
    if (BoolField(r, "controller")) return &r;
  }
  return nullptr;
}

// The owner of the CSIStorageCapacity objects, as external-provisioner finds it: the pod $POD_NAME
// in $POD_NAMESPACE (level 0), then `level` steps along controller references (1: its
// ReplicaSet, StatefulSet or DaemonSet; 2: the ReplicaSet's Deployment).
StatusOr<Object> ResolveOwner(apiclient::ApiClient& client, int level) {
  const char* pod = std::getenv("POD_NAME");      // NOLINT(concurrency-mt-unsafe)
  const char* ns = std::getenv("POD_NAMESPACE");  // NOLINT(concurrency-mt-unsafe)
  if (pod == nullptr || ns == nullptr || *pod == '\0' || *ns == '\0') {
    return Status::InvalidArgument(
        "--capacity-ownerref-level >= 0 needs $POD_NAME and $POD_NAMESPACE");
  }
  auto object = client.Get(apiclient::resources::kPods, ns, pod);
  if (!object.ok()) return object.status().WithContext("owner: pod");
  apiclient::ObjectPtr current = *object;
  for (int i = 0; i < level; ++i) {
    const Object* controller = ControllerRef(*current);
    if (controller == nullptr) {
      return Status::FailedPrecondition(
          "owner: " + Field(*current, "kind") + " " + Field(*current, "metadata", "name") +
          " has no controller (--capacity-ownerref-level=" + std::to_string(level) + ")");
    }
    const std::string kind = Field(*controller, "kind");
    const std::string name = Field(*controller, "name");
    const apiclient::Resource* resource = nullptr;
    for (const auto* r :
         {&apiclient::resources::kReplicaSets, &apiclient::resources::kDeployments,
          &apiclient::resources::kStatefulSets, &apiclient::resources::kDaemonSets}) {
      if (r->kind == kind) resource = r;
    }
    if (resource == nullptr) {
      return Status::FailedPrecondition("owner: unsupported owner kind \"" + kind.substr(0, 64) +
                                        "\"");
    }
    auto next = client.Get(*resource, ns, name);
    if (!next.ok()) {
      std::string context = "owner: ";
      context += kind;
      context += ' ';
      context += name;
      return next.status().WithContext(context);
    }
    current = *next;
  }
  return Object{{"apiVersion", Field(*current, "apiVersion")},
                {"kind", Field(*current, "kind")},
                {"name", Field(*current, "metadata", "name")},
                {"uid", Field(*current, "metadata", "uid")},
                {"controller", true}};
}

// The TLS files of per-node capacity sources: the flags' files, or made by --bootstrap-tls.
StatusOr<TlsFiles> CapacityTls(const ManagerOptions& options, apiclient::ApiClient& client) {
  TlsFiles tls{options.capacity_tls_ca, options.capacity_tls_cert, options.capacity_tls_key,
               options.capacity_tls_server_name};
  if (!options.bootstrap_tls) return tls;
  std::string dir = options.bootstrap_tls_dir;
  if (dir.empty()) {
    std::string pattern = "/tmp/ephemera-capacity-tls-XXXXXX";
    if (mkdtemp(pattern.data()) == nullptr) return Status::Internal("bootstrap-tls: mkdtemp");
    dir = pattern;
  }
  auto files = BootstrapTls(client, options.capacity_namespace, options.bootstrap_tls_secret_prefix,
                            options.bootstrap_tls_server_name, dir);
  if (!files.ok()) return files.status().WithContext("bootstrap-tls");
  files->server_name = options.bootstrap_tls_server_name;
  return *files;
}

// Adds the storage-capacity controller and what it asks: one source per node from
// --csi-node-endpoint, or from the driver's pods (a runnable of its own), or the central driver.
// Its CSIStorageCapacity writes go through a client of their own (`rest` with the capacity QPS
// and burst), as external-provisioner's do.
Status AddCapacity(const ManagerOptions& options, const apiclient::RestConfig& rest,
                   apiclient::Manager& manager, std::shared_ptr<CapacityController>* added) {
  apiclient::RestConfig write_config = rest;
  write_config.qps = options.kube_api_capacity_qps;
  write_config.burst = options.kube_api_capacity_burst;
  write_config.user_agent = kUserAgent + std::string(" (storage-capacity)");
  auto write_client = apiclient::RestClient::New(write_config);
  if (!write_client.ok()) return write_client.status().WithContext("API client for capacity");
  std::shared_ptr<CapacitySource> source;
  if (!options.csi_node_endpoints.empty() || !options.csi_node_endpoints_selector.empty()) {
    auto tls = CapacityTls(options, *manager.client());
    if (!tls.ok()) return tls.status();
    auto dial = [tls = *tls](const std::string& address) {
      return NewTlsCapacitySource(address, tls);
    };
    if (!options.csi_node_endpoints.empty()) {
      std::map<std::string, std::shared_ptr<CapacitySource>> by_node;
      for (const auto& [node, address] : options.csi_node_endpoints) {
        auto one = dial(address);
        if (!one.ok()) return one.status().WithContext("--csi-node-endpoint for " + node);
        by_node[node] = std::move(*one);
      }
      source = NewPerNodeCapacitySource(std::move(by_node));
    } else {
      auto discovered = std::make_shared<PodEndpointSource>(
          manager.client(),
          options.csi_node_endpoints_namespace.empty() ? options.capacity_namespace
                                                       : options.csi_node_endpoints_namespace,
          options.csi_node_endpoints_selector, options.csi_node_endpoints_port,
          [dial](const std::string& address) -> StatusOr<std::shared_ptr<CapacitySource>> {
            auto one = dial(address);
            if (!one.ok()) return one.status();
            return std::shared_ptr<CapacitySource>(std::move(*one));
          });
      manager.Add(discovered);  // started before the controller that asks it
      source = discovered;
    }
  } else {
    auto central = NewGrpcCapacitySource(options.csi_address);
    if (!central.ok()) return central.status().WithContext("--csi-address");
    source = std::move(*central);
  }
  CapacityOptions copts{.driver_name = options.driver_name,
                        .ns = options.capacity_namespace,
                        .poll_interval = options.capacity_poll_interval,
                        .immediate_binding = options.capacity_for_immediate_binding,
                        .write_qps = options.kube_api_capacity_qps,
                        .write_burst = options.kube_api_capacity_burst,
                        .threads = options.capacity_threads,
                        .reservations = options.capacity_reservations,
                        .node_owner = options.capacity_node_ownerref,
                        .claim_pacing = options.capacity_claim_pacing};
  copts.write_client = *std::move(write_client);
  copts.events = manager.EventRecorderFor("ephemera.io/storage-capacity");
  if (options.capacity_ownerref_level >= 0) {
    auto owner = ResolveOwner(*manager.client(), options.capacity_ownerref_level);
    if (!owner.ok()) {
      return owner.status().WithContext("the owner of the CSIStorageCapacity objects");
    }
    copts.owner = *owner;
  }
  *added = std::make_shared<CapacityController>(manager.client(), std::move(source),
                                                manager.metrics(), copts);
  manager.Add(*added);
  return Status::Ok();
}

}  // namespace

int RunManager(const ManagerOptions& options) {
  // First, before any thread exists: every thread started after it has the signals blocked.
  const apiclient::SignalStop signals;
  Status s = log::Configure(options.logging_format, options.verbosity);
  if (!s.ok()) {
    log::Error("bad logging flags", s);
    return 2;
  }
  log::SetComponent("ephemera-controller-manager");

  auto config = apiclient::LoadConfig(options.kubeconfig, options.context);
  if (!config.ok()) {
    log::Error("cannot load the API server configuration", config.status());
    return 1;
  }
  config->qps = options.kube_api_qps;
  config->burst = options.kube_api_burst;
  log::Info("API server", {{"config", config->DescribeForLog()}});

  apiclient::ManagerConfig runtime{.user_agent = kUserAgent,
                                   .http_endpoint = options.http_endpoint};
  if (options.leader_elect) {
    runtime.leader_election =
        apiclient::LeaderElectionConfig{.lease_namespace = options.leader_elect_namespace,
                                        .lease_name = options.leader_elect_lease_name,
                                        .identity = apiclient::MakeLeaderIdentity(),
                                        .lease_duration = options.leader_elect_lease_duration,
                                        .renew_deadline = options.leader_elect_renew_deadline,
                                        .retry_period = options.leader_elect_retry_period};
    s = apiclient::ValidateLeaderElection(*runtime.leader_election);
    if (!s.ok()) {
      log::Error("bad leader election flags", s);
      return 2;
    }
  }
  auto manager = apiclient::Manager::New(*config, std::move(runtime));
  if (!manager.ok()) {
    log::Error("cannot create the API client", manager.status());
    return 1;
  }
  std::shared_ptr<CapacityController> capacity;
  if (Enabled(options, "storage-capacity")) {
    s = AddCapacity(options, *config, **manager, &capacity);
    if (!s.ok()) {
      log::Error("cannot set up the storage-capacity controller", s);
      return s.code() == Code::kInvalidArgument ? 2 : 1;
    }
  }
  if (Enabled(options, "ephemeral-volume")) {
    EphemeralVolumeOptions eopts{
        .workers = options.concurrent_ephemeralvolume_syncs,
        .release_terminated_pods = options.release_terminated_pods,
        .annotate_storage_provisioner = options.annotate_storage_provisioner};
    // Claim pacing: the claims of ephemeral volumes are admitted by the storage-capacity
    // controller (controllers/claim_admission.h).
    if (capacity && options.capacity_claim_pacing && options.capacity_reservations) {
      eopts.admission = capacity;
    }
    (*manager)->Add(std::make_shared<EphemeralVolumeController>(
        (*manager)->client(), (*manager)->EventRecorderFor("ephemera.io/ephemeral-volume"),
        (*manager)->metrics(), std::move(eopts)));
  }
  s = (*manager)->Run(signals.token());
  if (!s.ok()) log::Error("stopped with an error", s);
  const int exit_code = s.ok() ? 0 : 1;
  log::Info("stopped", {{"exitCode", std::to_string(exit_code)}});
  return exit_code;
}

}  // namespace ephemera::controllers
