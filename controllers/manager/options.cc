#include "controllers/manager/options.h"

#include <cstdlib>
#include <set>

#include "common/flags.h"

namespace ephemera::controllers {
namespace {

// --csi-node-endpoint NODE=HOST:PORT[,...]: adds to the list (the flag may be repeated).
Status AddNodeEndpoints(ManagerOptions* o, const std::string& v) {
  for (const auto& entry : flags::SplitList(v)) {
    const auto eq = entry.find('=');
    if (eq == std::string::npos || eq == 0 || eq + 1 == entry.size()) {
      return Status::InvalidArgument("--csi-node-endpoint must be NODE=HOST:PORT, not \"" +
                                     entry.substr(0, 64) + "\"");
    }
    o->csi_node_endpoints.emplace_back(entry.substr(0, eq), entry.substr(eq + 1));
  }
  return Status::Ok();
}

Status SetSecretPrefix(ManagerOptions* o, const std::string& v) {
  if (v.empty() || v.size() > 200) {
    return Status::InvalidArgument("--bootstrap-tls-secret-prefix: 1 to 200 characters");
  }
  o->bootstrap_tls_secret_prefix = v;
  return Status::Ok();
}

Status SetServerName(ManagerOptions* o, const std::string& v) {
  if (v.empty()) return Status::InvalidArgument("--bootstrap-tls-server-name is empty");
  o->bootstrap_tls_server_name = v;
  return Status::Ok();
}

// Every flag: name, the field it sets (with its checks), and its key in the --config file.
std::vector<flags::Flag> ManagerFlags(ManagerOptions& o) {
  using namespace flags;  // NOLINT(google-build-using-namespace): the table reads better
  using std::chrono::seconds;
  const std::string le = "leaderElection.";
  const auto with = [&o](Status (*set)(ManagerOptions*, const std::string&)) {
    return [set, &o](const std::string& v) { return set(&o, v); };
  };
  return {
      String("config", &o.config_file),  // read first, by ParseManagerOptions
      String("kubeconfig", &o.kubeconfig),
      String("context", &o.context),
      List("controllers", &o.controllers, "controllers"),
      Int("concurrent-ephemeralvolume-syncs", &o.concurrent_ephemeralvolume_syncs, {.min = 1},
          "concurrentEphemeralVolumeSyncs"),
      Double("kube-api-qps", &o.kube_api_qps, "kubeAPIQPS"),
      Int("kube-api-burst", &o.kube_api_burst, {.min = 1}, "kubeAPIBurst"),
      Bool("release-terminated-pods", &o.release_terminated_pods, "releaseTerminatedPods"),
      Bool("annotate-storage-provisioner", &o.annotate_storage_provisioner,
           "annotateStorageProvisioner"),
      Bool("leader-elect", &o.leader_elect, le + "leaderElect"),
      String("leader-elect-namespace", &o.leader_elect_namespace, le + "namespace"),
      String("leader-elect-lease-name", &o.leader_elect_lease_name, le + "leaseName"),
      Duration("leader-elect-lease-duration", &o.leader_elect_lease_duration, {},
               le + "leaseDuration"),
      Duration("leader-elect-renew-deadline", &o.leader_elect_renew_deadline, {},
               le + "renewDeadline"),
      Duration("leader-elect-retry-period", &o.leader_elect_retry_period, {}, le + "retryPeriod"),
      String("http-endpoint", &o.http_endpoint, "httpEndpoint"),
      OneOf("logging-format", &o.logging_format, {"text", "json"}, "loggingFormat"),
      Int("v", &o.verbosity, {.min = 0}, "verbosity"),
      String("csi-address", &o.csi_address, "csiAddress"),
      String("driver-name", &o.driver_name, "driverName"),
      Custom("csi-node-endpoint", with(AddNodeEndpoints), "csiNodeEndpoints"),
      String("csi-node-endpoints-selector", &o.csi_node_endpoints_selector,
             "csiNodeEndpointsSelector"),
      String("csi-node-endpoints-namespace", &o.csi_node_endpoints_namespace,
             "csiNodeEndpointsNamespace"),
      Int("csi-node-endpoints-port", &o.csi_node_endpoints_port, {.min = 1, .max = 65535},
          "csiNodeEndpointsPort"),
      Bool("bootstrap-tls", &o.bootstrap_tls, "bootstrapTLS"),
      Custom("bootstrap-tls-secret-prefix", with(SetSecretPrefix), "bootstrapTLSSecretPrefix"),
      Custom("bootstrap-tls-server-name", with(SetServerName), "bootstrapTLSServerName"),
      String("bootstrap-tls-dir", &o.bootstrap_tls_dir, "bootstrapTLSDir"),
      String("capacity-tls-ca", &o.capacity_tls_ca, "capacityTLSCA"),
      String("capacity-tls-cert", &o.capacity_tls_cert, "capacityTLSCert"),
      String("capacity-tls-key", &o.capacity_tls_key, "capacityTLSKey"),
      String("capacity-tls-server-name", &o.capacity_tls_server_name, "capacityTLSServerName"),
      String("capacity-namespace", &o.capacity_namespace, "capacityNamespace"),
      Duration("capacity-poll-interval", &o.capacity_poll_interval, seconds(1),
               "capacityPollInterval"),
      Bool("capacity-for-immediate-binding", &o.capacity_for_immediate_binding,
           "capacityForImmediateBinding"),
      Bool("capacity-reservations", &o.capacity_reservations, "capacityReservations"),
      Bool("capacity-claim-pacing", &o.capacity_claim_pacing, "capacityClaimPacing"),
      Bool("capacity-node-ownerref", &o.capacity_node_ownerref, "capacityNodeOwnerref"),
      Int("capacity-ownerref-level", &o.capacity_ownerref_level,
          {.min = -1, .max = kMaxOwnerrefLevel}, "capacityOwnerrefLevel"),
      Double("kube-api-capacity-qps", &o.kube_api_capacity_qps, "kubeAPICapacityQPS"),
      Int("kube-api-capacity-burst", &o.kube_api_capacity_burst, {.min = 1},
          "kubeAPICapacityBurst"),
      Int("capacity-threads", &o.capacity_threads, {.min = 1}, "capacityThreads"),
  };
}

// The Go flag package's spelling, as Kubernetes components take it: "-v 2" as well as "--v=2".
constexpr flags::Syntax kSyntax{.single_dash_long = true};

}  // namespace

Status LoadManagerConfigFile(const std::string& path, ManagerOptions* options) {
  options->config_file = path;
  return flags::ApplyConfigFile(path, ManagerFlags(*options));
}

// --config first, whatever its place: the flags win over the file.
Status ParseManagerOptions(const std::vector<std::string>& args, ManagerOptions* options) {
  const std::vector<flags::Flag> table = ManagerFlags(*options);
  options->help = flags::AsksForHelp(args);
  auto line = flags::Split(args, table, kSyntax);
  if (!line.ok()) return line.status();
  if (!line->positional.empty()) {
    return Status::InvalidArgument("unexpected argument \"" + line->positional[0].substr(0, 64) +
                                   "\"");
  }
  for (const auto& [name, value] : line->values) {
    if (name == "config") EPHEMERA_RETURN_IF_ERROR(LoadManagerConfigFile(value, options));
  }
  EPHEMERA_RETURN_IF_ERROR(flags::Apply(*line, table, {"config"}));
  if (options->leader_elect_namespace.empty()) {
    const char* ns = std::getenv("POD_NAMESPACE");  // NOLINT(concurrency-mt-unsafe)
    options->leader_elect_namespace = ns != nullptr && *ns != '\0' ? ns : "kube-system";
  }
  if (options->capacity_namespace.empty()) {
    const char* ns = std::getenv("POD_NAMESPACE");  // NOLINT(concurrency-mt-unsafe)
    if (ns != nullptr) options->capacity_namespace = ns;
  }
  return ValidateManagerOptions(*options);
}

Status ValidateManagerOptions(const ManagerOptions& o) {
  static const std::set<std::string> kKnown = {"ephemeral-volume", "storage-capacity"};
  if (o.controllers.empty()) return Status::InvalidArgument("--controllers names no controller");
  for (const auto& c : o.controllers) {
    if (kKnown.count(c) == 0) {
      return Status::InvalidArgument("--controllers: unknown controller \"" + c.substr(0, 64) +
                                     "\" (known: ephemeral-volume, storage-capacity)");
    }
    if (c == "storage-capacity") {
      const int sources = (o.csi_address.empty() ? 0 : 1) + (o.csi_node_endpoints.empty() ? 0 : 1) +
                          (o.csi_node_endpoints_selector.empty() ? 0 : 1);
      if (sources != 1) {
        return Status::InvalidArgument(
            "--controllers: storage-capacity needs exactly one of --csi-address=unix:///PATH of "
            "the CSI driver, --csi-node-endpoint NODE=HOST:PORT (one or more) or "
            "--csi-node-endpoints-selector");
      }
      if (!o.csi_node_endpoints_selector.empty() && o.driver_name.empty()) {
        return Status::InvalidArgument(
            "--csi-node-endpoints-selector needs --driver-name (no endpoint may be known at "
            "start)");
      }
      const bool tls_files =
          !o.capacity_tls_ca.empty() || !o.capacity_tls_cert.empty() || !o.capacity_tls_key.empty();
      if (o.bootstrap_tls && (tls_files || !o.csi_address.empty())) {
        return Status::InvalidArgument(
            "--bootstrap-tls is for per-node endpoints and replaces --capacity-tls-ca/-cert/-key");
      }
      if (!o.bootstrap_tls &&
          (!o.csi_node_endpoints.empty() || !o.csi_node_endpoints_selector.empty()) &&
          (o.capacity_tls_ca.empty() || o.capacity_tls_cert.empty() ||
           o.capacity_tls_key.empty())) {
        return Status::InvalidArgument(
            "per-node endpoints need --capacity-tls-ca, --capacity-tls-cert and "
            "--capacity-tls-key (mutual TLS)");
      }
      if (o.capacity_namespace.empty()) {
        return Status::InvalidArgument(
            "--controllers: storage-capacity needs --capacity-namespace or $POD_NAMESPACE");
      }
    }
  }
  return Status::Ok();
}

std::vector<std::string> ManagerFlagNames() {
  ManagerOptions unused;
  return flags::Names(ManagerFlags(unused));
}

std::vector<std::string> ManagerConfigKeys() {
  ManagerOptions unused;
  return flags::ConfigKeys(ManagerFlags(unused));
}

std::string ManagerUsage() {
  return R"(ephemera-controller-manager: pod-owned PVCs for generic ephemeral volumes (ephemeral-volume)
and CSIStorageCapacity objects (storage-capacity).

Flags (also settable in the --config YAML file, camelCase; flags win):
  --kubeconfig PATH                       kubeconfig; default $KUBECONFIG, in-cluster, ~/.kube/config
  --context NAME                          kubeconfig context (default: the current one)
  --controllers LIST                      controllers to run (default ephemeral-volume)
  --concurrent-ephemeralvolume-syncs N    workers of the ephemeral-volume controller (default 5)
  --kube-api-qps Q, --kube-api-burst B    client-side rate limit (default 20, 30)
  --release-terminated-pods[=true|false]  delete the PVCs of Succeeded/Failed pods (default false)
  --annotate-storage-provisioner[=B]      create a claim of a WaitForFirstConsumer class of an
                                          external provisioner with its provisioner annotation,
                                          so that provisioning starts when kube-scheduler picks
                                          a node (default true; reads StorageClasses)
  --leader-elect[=true|false]             leader election (default true)
  --leader-elect-namespace NS             namespace of the Lease (default $POD_NAMESPACE or kube-system)
  --leader-elect-lease-name NAME          (default ephemera-controller-manager)
  --leader-elect-lease-duration D         (default 15s)
  --leader-elect-renew-deadline D         (default 10s)
  --leader-elect-retry-period D           (default 2s)
  --http-endpoint HOST:PORT               /metrics, /healthz, /readyz (default off)
  --logging-format text|json, -v N        logging
  --config PATH                           YAML config file

storage-capacity (CSIStorageCapacity objects from the CSI driver's GetCapacity):
  --csi-address unix:///PATH              the driver's socket (required for storage-capacity)
  --csi-node-endpoint NODE=HOST:PORT      instead: each node's driver --capacity-listen (repeatable)
  --csi-node-endpoints-selector SEL       instead: the driver's pods (label selector): node =
                                          spec.nodeName, address = status.podIP
  --csi-node-endpoints-namespace NS       their namespace (default: the capacity namespace)
  --csi-node-endpoints-port P             the port of their --capacity-listen (default 10000)
  --capacity-tls-ca/-cert/-key PATH       PEM files for the per-node endpoints' mutual TLS
  --capacity-tls-server-name NAME         name in the drivers' certificate (default: each host)
  --bootstrap-tls[=B]                     instead: make CA, server and client certificates into
                                          Secrets PREFIX-ca/-server/-client when missing
  --bootstrap-tls-secret-prefix PREFIX    (default ephemera-capacity-tls)
  --bootstrap-tls-server-name NAME        the server certificate's DNS name, verified whatever
                                          address is dialled (default ephemera-capacity)
  --bootstrap-tls-dir DIR                 where the client files are written (default: /tmp/...)
  --driver-name NAME                      driver name (default: from GetPluginInfo)
  --capacity-namespace NS                 namespace of the objects (default $POD_NAMESPACE)
  --capacity-poll-interval D              how often every capacity is asked again (default 1m)
  --capacity-for-immediate-binding[=B]    also Immediate classes (default false)
  --capacity-reservations[=B]             subtract placed claims whose volume does not exist yet
                                          from their node's capacity (default true)
  --capacity-claim-pacing[=B]             with both controllers and reservations: hold back an
                                          ephemeral volume's claim while the claims created
                                          before it that are not yet in the published capacity
                                          would not fit on its class's roomiest node (default
                                          true)
  --capacity-node-ownerref[=B]            the object of a one-node segment is owned by that
                                          Node only (default true)
  --capacity-ownerref-level N             owner of the objects, as external-provisioner's: -1
                                          none, 0 the pod $POD_NAME in $POD_NAMESPACE, 1 its
                                          controller (a ReplicaSet), 2 that one's (a
                                          Deployment), ... (default -1)
  --kube-api-capacity-qps Q               rate limit of capacity writes (default 1)
  --kube-api-capacity-burst B             (default 5)
  --capacity-threads N                    workers publishing CSIStorageCapacity objects, and
                                          GetCapacity calls at once to a central driver (default 4)
)";
}

}  // namespace ephemera::controllers
