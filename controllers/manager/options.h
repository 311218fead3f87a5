// The controller-manager's settings: flags, and a YAML file (--config, mounted from a ConfigMap)
// with the same settings in camelCase. Flags win over the file. A bad value, an unknown flag or an
// unknown key is an error that names it; the program refuses to start rather than guess.
#pragma once

#include <chrono>
#include <string>
#include <utility>
#include <vector>

#include "common/flags.h"
#include "common/status.h"

namespace ephemera::controllers {

// --capacity-ownerref-level's highest value: pod, ReplicaSet, Deployment and a little room.
constexpr int kMaxOwnerrefLevel = 5;

struct ManagerOptions {
  std::string kubeconfig;
  std::string context;
  std::vector<std::string> controllers = {"ephemeral-volume"};
  int concurrent_ephemeralvolume_syncs = 5;
  double kube_api_qps = 20;
  int kube_api_burst = 30;
  bool release_terminated_pods = false;
  bool annotate_storage_provisioner = true;  // --annotate-storage-provisioner
  bool leader_elect = true;
  std::string leader_elect_namespace;  // default: $POD_NAMESPACE, else kube-system
  std::string leader_elect_lease_name = "ephemera-controller-manager";
  std::chrono::milliseconds leader_elect_lease_duration{15000};
  std::chrono::milliseconds leader_elect_renew_deadline{10000};
  std::chrono::milliseconds leader_elect_retry_period{2000};
  std::string http_endpoint;  // "" = no metrics/health endpoint
  std::string logging_format = "text";
  int verbosity = 0;
  // storage-capacity
  std::string csi_address;  // unix:///PATH of the CSI driver
  std::string driver_name;  // default: GetPluginInfo
  std::vector<std::pair<std::string, std::string>> csi_node_endpoints;  // NODE, HOST:PORT
  // Or the endpoints from the driver's pods: label selector, their namespace (default: the
  // capacity namespace), the port of the driver's --capacity-listen.
  std::string csi_node_endpoints_selector;
  std::string csi_node_endpoints_namespace;
  int csi_node_endpoints_port = 10000;
  std::string capacity_tls_ca, capacity_tls_cert, capacity_tls_key;
  std::string capacity_tls_server_name;  // empty: each endpoint's host
  // --bootstrap-tls: certificates made by the manager and kept in Secrets instead of the files.
  bool bootstrap_tls = false;
  std::string bootstrap_tls_secret_prefix = "ephemera-capacity-tls";
  std::string bootstrap_tls_server_name = "ephemera-capacity";
  std::string bootstrap_tls_dir;   // "" = a new directory below /tmp
  std::string capacity_namespace;  // default: $POD_NAMESPACE
  std::chrono::milliseconds capacity_poll_interval{60000};
  bool capacity_for_immediate_binding = false;
  bool capacity_reservations = true;   // --capacity-reservations
  bool capacity_claim_pacing = true;   // --capacity-claim-pacing
  bool capacity_node_ownerref = true;  // --capacity-node-ownerref
  // external-provisioner's meaning: how many controller references to follow from the pod
  // $POD_NAME to the owner of the objects; -1 = no owner, 0 = the pod, 1 = its ReplicaSet, ...
  int capacity_ownerref_level = -1;
  double kube_api_capacity_qps = 1;
  int kube_api_capacity_burst = 5;
  int capacity_threads = 4;  // --capacity-threads
  std::string config_file;
  bool help = false;
};

// Parses argv (after the program name) into `options`, reading --config first.
Status ParseManagerOptions(const std::vector<std::string>& args, ManagerOptions* options);
// Applies a YAML config file's settings.
Status LoadManagerConfigFile(const std::string& path, ManagerOptions* options);
// Checks values that depend on each other.
Status ValidateManagerOptions(const ManagerOptions& options);

// "15s", "1m30s", "500ms", "2h" (common/flags.h).
using flags::ParseDuration;

std::string ManagerUsage();

// Every flag name the parser accepts, without dashes ("kubeconfig", "v", "config", "help"), and
// every key of the --config file ("kubeAPIQPS", "leaderElection.leaseName"). For the test that
// keeps docs/configuration.md complete.
std::vector<std::string> ManagerFlagNames();
std::vector<std::string> ManagerConfigKeys();

}  // namespace ephemera::controllers
