#include "controllers/manager/options.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <functional>
#include <map>
#include <set>

namespace ephemera::controllers {
namespace {

StatusOr<int> ParseInt(const std::string& name, const std::string& v, int min) {
  const std::string digits = !v.empty() && v[0] == '-' ? v.substr(1) : v;
  if (digits.empty() || digits.size() > 9 ||
      digits.find_first_not_of("0123456789") != std::string::npos) {
    return Status::InvalidArgument(name + " must be a whole number, not \"" + v.substr(0, 32) +
                                   "\"");
  }
  const int n = std::stoi(v);
  if (n < min) return Status::InvalidArgument(name + " must be at least " + std::to_string(min));
  return n;
}

StatusOr<double> ParseDouble(const std::string& name, const std::string& v) {
  try {
    size_t used = 0;
    const double d = std::stod(v, &used);
    if (used != v.size()) throw std::invalid_argument(v);
    return d;
  } catch (const std::exception&) {
    return Status::InvalidArgument(name + " must be a number, not \"" + v.substr(0, 32) + "\"");
  }
}

StatusOr<bool> ParseBool(const std::string& name, const std::string& v) {
  if (v == "true" || v == "1") return true;
  if (v == "false" || v == "0") return false;
  return Status::InvalidArgument(name + " must be true or false, not \"" + v.substr(0, 32) + "\"");
}

std::vector<std::string> SplitList(const std::string& v) {
  std::vector<std::string> out;
  size_t start = 0;
  while (start <= v.size()) {
    const size_t comma = v.find(',', start);
    std::string item =
        v.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
    if (!item.empty()) out.push_back(item);
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  return out;
}

// One setting: how to apply a textual value. Shared by flags and the config file.
using Setter = std::function<Status(ManagerOptions*, const std::string&)>;

const std::map<std::string, Setter>& Setters() {
  static const std::map<std::string, Setter> kSetters = {
      {"kubeconfig",
       [](ManagerOptions* o, const std::string& v) {
         o->kubeconfig = v;
         return Status::Ok();
       }},
      {"context",
       [](ManagerOptions* o, const std::string& v) {
         o->context = v;
         return Status::Ok();
       }},
      {"controllers",
       [](ManagerOptions* o, const std::string& v) {
         o->controllers = SplitList(v);
         return Status::Ok();
       }},
      {"concurrent-ephemeralvolume-syncs",
       [](ManagerOptions* o, const std::string& v) {
         auto n = ParseInt("--concurrent-ephemeralvolume-syncs", v, 1);
         if (!n.ok()) return n.status();
         o->concurrent_ephemeralvolume_syncs = *n;
         return Status::Ok();
       }},
      {"kube-api-qps",
       [](ManagerOptions* o, const std::string& v) {
         auto d = ParseDouble("--kube-api-qps", v);
         if (!d.ok()) return d.status();
         o->kube_api_qps = *d;
         return Status::Ok();
       }},
      {"kube-api-burst",
       [](ManagerOptions* o, const std::string& v) {
         auto n = ParseInt("--kube-api-burst", v, 1);
         if (!n.ok()) return n.status();
         o->kube_api_burst = *n;
         return Status::Ok();
       }},
      {"release-terminated-pods",
       [](ManagerOptions* o, const std::string& v) {
         auto b = ParseBool("--release-terminated-pods", v);
         if (!b.ok()) return b.status();
         o->release_terminated_pods = *b;
         return Status::Ok();
       }},
      {"leader-elect",
       [](ManagerOptions* o, const std::string& v) {
         auto b = ParseBool("--leader-elect", v);
         if (!b.ok()) return b.status();
         o->leader_elect = *b;
         return Status::Ok();
       }},
      {"leader-elect-namespace",
       [](ManagerOptions* o, const std::string& v) {
         o->leader_elect_namespace = v;
         return Status::Ok();
       }},
      {"leader-elect-lease-name",
       [](ManagerOptions* o, const std::string& v) {
         o->leader_elect_lease_name = v;
         return Status::Ok();
       }},
      {"leader-elect-lease-duration",
       [](ManagerOptions* o, const std::string& v) {
         auto d = ParseDuration(v);
         if (!d.ok()) return d.status().WithContext("--leader-elect-lease-duration");
         o->leader_elect_lease_duration = *d;
         return Status::Ok();
       }},
      {"leader-elect-renew-deadline",
       [](ManagerOptions* o, const std::string& v) {
         auto d = ParseDuration(v);
         if (!d.ok()) return d.status().WithContext("--leader-elect-renew-deadline");
         o->leader_elect_renew_deadline = *d;
         return Status::Ok();
       }},
      {"leader-elect-retry-period",
       [](ManagerOptions* o, const std::string& v) {
         auto d = ParseDuration(v);
         if (!d.ok()) return d.status().WithContext("--leader-elect-retry-period");
         o->leader_elect_retry_period = *d;
         return Status::Ok();
       }},
      {"http-endpoint",
       [](ManagerOptions* o, const std::string& v) {
         o->http_endpoint = v;
         return Status::Ok();
       }},
      {"logging-format",
       [](ManagerOptions* o, const std::string& v) {
         if (v != "text" && v != "json") {
           return Status::InvalidArgument("--logging-format must be text or json");
         }
         o->logging_format = v;
         return Status::Ok();
       }},
      {"csi-address",
       [](ManagerOptions* o, const std::string& v) {
         o->csi_address = v;
         return Status::Ok();
       }},
      {"csi-node-endpoint",
       [](ManagerOptions* o, const std::string& v) {
         for (const auto& entry : SplitList(v)) {
           const auto eq = entry.find('=');
           if (eq == std::string::npos || eq == 0 || eq + 1 == entry.size()) {
             return Status::InvalidArgument("--csi-node-endpoint must be NODE=HOST:PORT, not \"" +
                                            entry.substr(0, 64) + "\"");
           }
           o->csi_node_endpoints.emplace_back(entry.substr(0, eq), entry.substr(eq + 1));
         }
         return Status::Ok();
       }},
      {"csi-node-endpoints-selector",
       [](ManagerOptions* o, const std::string& v) {
         o->csi_node_endpoints_selector = v;
         return Status::Ok();
       }},
      {"csi-node-endpoints-namespace",
       [](ManagerOptions* o, const std::string& v) {
         o->csi_node_endpoints_namespace = v;
         return Status::Ok();
       }},
      {"csi-node-endpoints-port",
       [](ManagerOptions* o, const std::string& v) {
         auto n = ParseInt("--csi-node-endpoints-port", v, 1);
         if (!n.ok()) return n.status();
         if (*n > 65535) return Status::InvalidArgument("--csi-node-endpoints-port: above 65535");
         o->csi_node_endpoints_port = *n;
         return Status::Ok();
       }},
      {"bootstrap-tls",
       [](ManagerOptions* o, const std::string& v) {
         auto b = ParseBool("--bootstrap-tls", v);
         if (!b.ok()) return b.status();
         o->bootstrap_tls = *b;
         return Status::Ok();
       }},
      {"bootstrap-tls-secret-prefix",
       [](ManagerOptions* o, const std::string& v) {
         if (v.empty() || v.size() > 200) {
           return Status::InvalidArgument("--bootstrap-tls-secret-prefix: 1 to 200 characters");
         }
         o->bootstrap_tls_secret_prefix = v;
         return Status::Ok();
       }},
      {"bootstrap-tls-server-name",
       [](ManagerOptions* o, const std::string& v) {
         if (v.empty()) return Status::InvalidArgument("--bootstrap-tls-server-name is empty");
         o->bootstrap_tls_server_name = v;
         return Status::Ok();
       }},
      {"bootstrap-tls-dir",
       [](ManagerOptions* o, const std::string& v) {
         o->bootstrap_tls_dir = v;
         return Status::Ok();
       }},
      {"capacity-tls-ca",
       [](ManagerOptions* o, const std::string& v) {
         o->capacity_tls_ca = v;
         return Status::Ok();
       }},
      {"capacity-tls-cert",
       [](ManagerOptions* o, const std::string& v) {
         o->capacity_tls_cert = v;
         return Status::Ok();
       }},
      {"capacity-tls-key",
       [](ManagerOptions* o, const std::string& v) {
         o->capacity_tls_key = v;
         return Status::Ok();
       }},
      {"capacity-tls-server-name",
       [](ManagerOptions* o, const std::string& v) {
         o->capacity_tls_server_name = v;
         return Status::Ok();
       }},
      {"driver-name",
       [](ManagerOptions* o, const std::string& v) {
         o->driver_name = v;
         return Status::Ok();
       }},
      {"capacity-namespace",
       [](ManagerOptions* o, const std::string& v) {
         o->capacity_namespace = v;
         return Status::Ok();
       }},
      {"capacity-poll-interval",
       [](ManagerOptions* o, const std::string& v) {
         auto d = ParseDuration(v);
         if (!d.ok()) return d.status().WithContext("--capacity-poll-interval");
         if (d->count() < 1000) {
           return Status::InvalidArgument("--capacity-poll-interval must be at least 1s");
         }
         o->capacity_poll_interval = *d;
         return Status::Ok();
       }},
      {"capacity-for-immediate-binding",
       [](ManagerOptions* o, const std::string& v) {
         auto b = ParseBool("--capacity-for-immediate-binding", v);
         if (!b.ok()) return b.status();
         o->capacity_for_immediate_binding = *b;
         return Status::Ok();
       }},
      {"capacity-ownerref-level",
       [](ManagerOptions* o, const std::string& v) {
         auto n = ParseInt("--capacity-ownerref-level", v, -1);
         if (!n.ok()) return n.status();
         if (*n > kMaxOwnerrefLevel) {
           return Status::InvalidArgument("--capacity-ownerref-level must be -1.." +
                                          std::to_string(kMaxOwnerrefLevel));
         }
         o->capacity_ownerref_level = *n;
         return Status::Ok();
       }},
      {"kube-api-capacity-qps",
       [](ManagerOptions* o, const std::string& v) {
         auto d = ParseDouble("--kube-api-capacity-qps", v);
         if (!d.ok()) return d.status();
         o->kube_api_capacity_qps = *d;
         return Status::Ok();
       }},
      {"kube-api-capacity-burst",
       [](ManagerOptions* o, const std::string& v) {
         auto n = ParseInt("--kube-api-capacity-burst", v, 1);
         if (!n.ok()) return n.status();
         o->kube_api_capacity_burst = *n;
         return Status::Ok();
       }},
      {"capacity-threads",
       [](ManagerOptions* o, const std::string& v) {
         auto n = ParseInt("--capacity-threads", v, 1);
         if (!n.ok()) return n.status();
         o->capacity_threads = *n;
         return Status::Ok();
       }},
      {"v",
       [](ManagerOptions* o, const std::string& v) {
         auto n = ParseInt("-v", v, 0);
         if (!n.ok()) return n.status();
         o->verbosity = *n;
         return Status::Ok();
       }},
  };
  return kSetters;
}

// Config file keys (camelCase) -> flag names.
const std::map<std::string, std::string>& FileKeys() {
  static const std::map<std::string, std::string> kKeys = {
      {"controllers", "controllers"},
      {"concurrentEphemeralVolumeSyncs", "concurrent-ephemeralvolume-syncs"},
      {"kubeAPIQPS", "kube-api-qps"},
      {"kubeAPIBurst", "kube-api-burst"},
      {"releaseTerminatedPods", "release-terminated-pods"},
      {"httpEndpoint", "http-endpoint"},
      {"loggingFormat", "logging-format"},
      {"verbosity", "v"},
      {"csiAddress", "csi-address"},
      {"driverName", "driver-name"},
      {"csiNodeEndpoints", "csi-node-endpoint"},
      {"csiNodeEndpointsSelector", "csi-node-endpoints-selector"},
      {"csiNodeEndpointsNamespace", "csi-node-endpoints-namespace"},
      {"csiNodeEndpointsPort", "csi-node-endpoints-port"},
      {"bootstrapTLS", "bootstrap-tls"},
      {"bootstrapTLSSecretPrefix", "bootstrap-tls-secret-prefix"},
      {"bootstrapTLSServerName", "bootstrap-tls-server-name"},
      {"bootstrapTLSDir", "bootstrap-tls-dir"},
      {"capacityTLSCA", "capacity-tls-ca"},
      {"capacityTLSCert", "capacity-tls-cert"},
      {"capacityTLSKey", "capacity-tls-key"},
      {"capacityTLSServerName", "capacity-tls-server-name"},
      {"capacityNamespace", "capacity-namespace"},
      {"capacityPollInterval", "capacity-poll-interval"},
      {"capacityForImmediateBinding", "capacity-for-immediate-binding"},
      {"capacityOwnerrefLevel", "capacity-ownerref-level"},
      {"kubeAPICapacityQPS", "kube-api-capacity-qps"},
      {"kubeAPICapacityBurst", "kube-api-capacity-burst"},
      {"capacityThreads", "capacity-threads"},
  };
  return kKeys;
}

const std::map<std::string, std::string>& LeaderElectionKeys() {
  static const std::map<std::string, std::string> kKeys = {
      {"leaderElect", "leader-elect"},
      {"namespace", "leader-elect-namespace"},
      {"leaseName", "leader-elect-lease-name"},
      {"leaseDuration", "leader-elect-lease-duration"},
      {"renewDeadline", "leader-elect-renew-deadline"},
      {"retryPeriod", "leader-elect-retry-period"},
  };
  return kKeys;
}

}  // namespace

StatusOr<std::chrono::milliseconds> ParseDuration(const std::string& text) {
  if (text.empty()) return Status::InvalidArgument("empty duration");
  double total_ms = 0;
  size_t i = 0;
  while (i < text.size()) {
    size_t j = i;
    while (j < text.size() && (std::isdigit(static_cast<unsigned char>(text[j])) || text[j] == '.'))
      ++j;
    if (j == i) break;
    // Digits with at most one point, and at least one digit: ".", "1..5" and "." are no numbers.
    const std::string number = text.substr(i, j - i);
    if (number.find_first_of("0123456789") == std::string::npos ||
        std::count(number.begin(), number.end(), '.') > 1 || number.size() > 32) {
      break;
    }
    const double value = std::strtod(number.c_str(), nullptr);
    size_t k = j;
    while (k < text.size() && std::isalpha(static_cast<unsigned char>(text[k])))
      ++k;
    const std::string unit = text.substr(j, k - j);
    double scale = 0;
    if (unit == "ms") {
      scale = 1;
    } else if (unit == "s") {
      scale = 1000;
    } else if (unit == "m") {
      scale = 60000;
    } else if (unit == "h") {
      scale = 3600000;
    } else {
      break;
    }
    total_ms += value * scale;
    i = k;
  }
  if (i != text.size()) {
    return Status::InvalidArgument("\"" + text.substr(0, 32) +
                                   "\" is not a duration such as 15s, 1m30s or 500ms");
  }
  // Beyond about 30 years a duration means a typo, and would overflow what it is added to.
  constexpr double kMaxMs = 1e12;
  if (total_ms > kMaxMs) {
    return Status::InvalidArgument("\"" + text.substr(0, 32) + "\" is too long a duration");
  }
  return std::chrono::milliseconds(static_cast<int64_t>(total_ms));
}

Status LoadManagerConfigFile(const std::string& path, ManagerOptions* options) {
  YAML::Node root;
  try {
    root = YAML::LoadFile(path);
  } catch (const YAML::Exception& e) {
    return Status::InvalidArgument("config file " + path + ": " + e.what());
  }
  if (root.IsNull()) return Status::Ok();
  if (!root.IsMap()) return Status::InvalidArgument("config file " + path + " is not a YAML map");
  auto apply = [&](const std::string& key, const std::string& flag, const YAML::Node& value) {
    std::string text;
    if (value.IsSequence()) {
      for (const auto& item : value)
        text += (text.empty() ? "" : ",") + item.as<std::string>();
    } else if (value.IsScalar()) {
      text = value.as<std::string>();
    } else {
      return Status::InvalidArgument("config file " + path + ": " + key + " must be a value");
    }
    Status s = Setters().at(flag)(options, text);
    return s.ok() ? s : Status(s.code(), "config file " + path + ": " + key + ": " + s.message());
  };
  try {
    for (const auto& entry : root) {
      const std::string key = entry.first.as<std::string>();
      if (key == "leaderElection") {
        if (!entry.second.IsMap()) {
          return Status::InvalidArgument("config file " + path + ": leaderElection must be a map");
        }
        for (const auto& le : entry.second) {
          const std::string sub = le.first.as<std::string>();
          auto it = LeaderElectionKeys().find(sub);
          if (it == LeaderElectionKeys().end()) {
            return Status::InvalidArgument("config file " + path + ": unknown key leaderElection." +
                                           sub);
          }
          EPHEMERA_RETURN_IF_ERROR(apply("leaderElection." + sub, it->second, le.second));
        }
        continue;
      }
      auto it = FileKeys().find(key);
      if (it == FileKeys().end()) {
        return Status::InvalidArgument("config file " + path + ": unknown key " + key);
      }
      EPHEMERA_RETURN_IF_ERROR(apply(key, it->second, entry.second));
    }
  } catch (const YAML::Exception& e) {
    return Status::InvalidArgument("config file " + path + ": " + e.what());
  }
  return Status::Ok();
}

Status ParseManagerOptions(const std::vector<std::string>& args, ManagerOptions* options) {
  std::vector<std::pair<std::string, std::string>> flags;
  for (size_t i = 0; i < args.size(); ++i) {
    std::string arg = args[i];
    if (arg == "-h" || arg == "--help") {
      options->help = true;
      continue;
    }
    if (arg.rfind("--", 0) == 0) {
      arg = arg.substr(2);
    } else if (arg.rfind("-", 0) == 0) {
      arg = arg.substr(1);
    } else {
      return Status::InvalidArgument("unexpected argument \"" + arg.substr(0, 64) + "\"");
    }
    std::string name = arg;
    std::string value;
    const auto eq = arg.find('=');
    if (eq != std::string::npos) {
      name = arg.substr(0, eq);
      value = arg.substr(eq + 1);
    } else if (name == "leader-elect" || name == "release-terminated-pods" ||
               name == "capacity-for-immediate-binding" || name == "bootstrap-tls") {
      value = "true";  // Boolean flags may stand alone.
    } else if (i + 1 < args.size()) {
      value = args[++i];
    } else {
      return Status::InvalidArgument("--" + name + " needs a value");
    }
    if (name != "config" && Setters().count(name) == 0) {
      return Status::InvalidArgument("unknown flag --" + name + " (see --help)");
    }
    flags.emplace_back(name, value);
  }
  for (const auto& [name, value] : flags) {
    if (name == "config") {
      options->config_file = value;
      EPHEMERA_RETURN_IF_ERROR(LoadManagerConfigFile(value, options));
    }
  }
  for (const auto& [name, value] : flags) {
    if (name != "config") EPHEMERA_RETURN_IF_ERROR(Setters().at(name)(options, value));
  }
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
  std::vector<std::string> names = {"config", "help"};
  for (const auto& [name, setter] : Setters())
    names.push_back(name);
  return names;
}

std::vector<std::string> ManagerConfigKeys() {
  std::vector<std::string> keys;
  for (const auto& [key, flag] : FileKeys())
    keys.push_back(key);
  for (const auto& [key, flag] : LeaderElectionKeys())
    keys.push_back("leaderElection." + key);
  return keys;
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
