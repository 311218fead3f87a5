#include "plugin/cli.h"

#include <algorithm>
#include <cstdlib>
#include <map>
#include <optional>
#include <set>

#include "apiclient/config.h"
#include "apiclient/rest_client.h"
#include "common/flags.h"
#include "plugin/views.h"

namespace ephemera::plugin {
namespace {

namespace res = apiclient::resources;

constexpr const char* kUsage =
    R"(kubectl ephemera: what ephemera's PMEM storage looks like in a cluster.

Usage:
  kubectl ephemera capacity [flags]   storage capacity published per node and StorageClass
                                      (CSIStorageCapacity objects of the driver)
  kubectl ephemera volumes [flags]    generic ephemeral and CSI inline volumes of the driver, by pod

Flags:
  -n, --namespace NS        namespace (volumes: default the context's; capacity: default all)
  -A, --all-namespaces      every namespace
  -o, --output FORMAT       "json" for machine-readable output (default: a table)
      --driver NAME         CSI driver name (default pmem-csi.ephemera.io)
      --kubeconfig PATH     kubeconfig file (default $KUBECONFIG, then ~/.kube/config)
      --context NAME        kubeconfig context (default the current one)
  -h, --help                this text

Examples:
  kubectl ephemera capacity
  kubectl ephemera volumes -A
  kubectl ephemera volumes -n demo -o json
)";

// A value flag that must not be empty ("--namespace=" is a mistake, not "no namespace").
flags::Flag NonEmpty(const std::string& name, char short_name, std::string* field) {
  flags::Flag flag = flags::Custom(name, [name, field](const std::string& v) {
    if (v.empty()) return Status::InvalidArgument("flag \"--" + name + "\" needs a value");
    *field = v;
    return Status::Ok();
  });
  return flags::WithShort(std::move(flag), short_name);
}

std::vector<flags::Flag> PluginFlags(Options& o) {
  return {
      NonEmpty("namespace", 'n', &o.ns),
      flags::WithShort(flags::Bool("all-namespaces", &o.all_namespaces), 'A'),
      NonEmpty("output", 'o', &o.output),
      NonEmpty("driver", '\0', &o.driver),
      NonEmpty("kubeconfig", '\0', &o.kubeconfig),
      NonEmpty("context", '\0', &o.context),
  };
}

StatusOr<std::vector<apiclient::ObjectPtr>> ListAll(apiclient::ApiClient& client,
                                                    const apiclient::Resource& resource,
                                                    const std::string& ns,
                                                    const std::string& label_selector = "") {
  std::vector<apiclient::ObjectPtr> items;
  apiclient::ListOptions options{.label_selector = label_selector, .limit = 500};
  for (;;) {
    auto page = client.List(resource, ns, options);
    if (!page.ok()) return page.status();
    items.insert(items.end(), page->items.begin(), page->items.end());
    if (page->continue_token.empty()) break;
    options.continue_token = page->continue_token;
  }
  return items;
}

// One line for stderr that says what failed and, for the usual causes, what to check.
std::string Explain(const Status& s, const Connection& c, const std::string& what) {
  std::string out = "error: " + what + ": " + s.message();
  switch (s.code()) {
    case Code::kUnavailable:
    case Code::kDeadlineExceeded:
      out = "error: cannot reach the Kubernetes API server at " + c.server + " (" + what +
            "): " + s.message();
      break;
    case Code::kPermissionDenied:
      out += " (your user may not " + what + ": ask for read access)";
      break;
    case Code::kUnauthenticated:
      out += " (the kubeconfig's credentials were refused)";
      break;
    default:
      break;
  }
  return out;
}

// When the driver last confirmed each row's value, from the storage-capacity controller's own
// /metrics (csistoragecapacity_confirmed_timestamp_seconds) through the API server's pod proxy:
// no object carries it, so that confirming costs no write. The controller-manager's pods are
// found by the manifests' label in the namespaces of the objects; only the leader has the
// series. Rows stay unconfirmed (shown as <unknown>) when no pod can be read (no right to
// pods/proxy, no such pod, another deployment).
void AddConfirmations(const Connection& c, std::vector<CapacityRow>& rows) {
  if (!c.get_text) return;
  std::set<std::string> namespaces;
  for (const auto& row : rows)
    namespaces.insert(row.ns);
  std::map<std::pair<std::string, std::string>, double> confirmed;  // (segment, class) -> time
  for (const auto& ns : namespaces) {
    auto pods = ListAll(*c.client, res::kPods, ns, kControllerLabel);
    if (!pods.ok()) continue;
    for (const auto& pod : *pods) {
      if (apiclient::Field(*pod, "status", "phase") != "Running" ||
          apiclient::Field(*pod, "status", "podIP").empty()) {
        continue;
      }
      const std::string name = apiclient::Field(*pod, "metadata", "name");
      std::string path = "/api/v1/namespaces/";
      path += ns;
      path += "/pods/";
      path += name;
      path += ':';
      path += std::to_string(MetricsPort(*pod));
      path += "/proxy/metrics";
      auto text = c.get_text(path);
      if (!text.ok()) continue;
      for (const auto& [labels, value] : ParseConfirmations(*text)) {
        auto [it, added] = confirmed.emplace(labels, value);
        if (!added) it->second = std::max(it->second, value);
      }
    }
  }
  for (auto& row : rows) {
    auto it = confirmed.find({row.controller_segment, row.storage_class});
    if (it != confirmed.end()) row.confirmed = it->second;
  }
}

int Capacity(const Options& o, const Connection& c, std::ostream& out, std::ostream& err,
             std::chrono::system_clock::time_point now) {
  const std::string ns = o.all_namespaces ? "" : o.ns;
  const std::string driver = o.driver.empty() ? kDefaultDriver : o.driver;
  auto capacities =
      ListAll(*c.client, res::kCSIStorageCapacities, ns, std::string(kDriverLabel) + "=" + driver);
  if (!capacities.ok()) {
    err << Explain(capacities.status(), c, "list csistoragecapacities") << "\n";
    return 1;
  }
  // Without the right to list Nodes the table still shows every segment.
  auto nodes = ListAll(*c.client, res::kNodes, "");
  if (!nodes.ok() && nodes.status().code() != Code::kPermissionDenied) {
    err << Explain(nodes.status(), c, "list nodes") << "\n";
    return 1;
  }
  auto rows =
      BuildCapacityRows(*capacities, nodes.ok() ? *nodes : std::vector<apiclient::ObjectPtr>{});
  AddConfirmations(c, rows);
  if (o.output == "json") {
    out << CapacityJson(rows).dump(2) << "\n";
    return 0;
  }
  if (rows.empty()) {
    err << "No storage capacity of driver " << driver << " found"
        << (ns.empty() ? "" : " in namespace " + ns) << ".\n";
    return 0;
  }
  out << CapacityTable(rows, now);
  return 0;
}

int Volumes(const Options& o, const Connection& c, std::ostream& out, std::ostream& err) {
  const std::string ns = o.all_namespaces ? "" : (o.ns.empty() ? c.default_namespace : o.ns);
  const std::string driver = o.driver.empty() ? kDefaultDriver : o.driver;
  auto pods = ListAll(*c.client, res::kPods, ns);
  if (!pods.ok()) {
    err << Explain(pods.status(), c, "list pods") << "\n";
    return 1;
  }
  auto pvcs = ListAll(*c.client, res::kPersistentVolumeClaims, ns);
  if (!pvcs.ok()) {
    err << Explain(pvcs.status(), c, "list persistentvolumeclaims") << "\n";
    return 1;
  }
  // Without the right to list StorageClasses every generic ephemeral volume is shown.
  std::optional<std::vector<apiclient::ObjectPtr>> classes;
  auto listed = ListAll(*c.client, res::kStorageClasses, "");
  if (listed.ok()) {
    classes = std::move(*listed);
  } else if (listed.status().code() != Code::kPermissionDenied) {
    err << Explain(listed.status(), c, "list storageclasses") << "\n";
    return 1;
  }
  const auto rows = BuildVolumeRows(*pods, *pvcs, classes, driver);
  if (o.output == "json") {
    out << VolumeJson(rows).dump(2) << "\n";
    return 0;
  }
  if (rows.empty()) {
    err << "No volumes of driver " << driver << " found"
        << (ns.empty() ? "" : " in namespace " + ns) << ".\n";
    return 0;
  }
  out << VolumeTable(rows, ns.empty());
  return 0;
}

}  // namespace

std::string Usage() {
  return kUsage;
}

StatusOr<Options> ParseArgs(const std::vector<std::string>& args) {
  Options o;
  const std::vector<flags::Flag> table = PluginFlags(o);
  auto line = flags::Split(args, table, flags::Syntax{});
  if (!line.ok()) return line.status();
  EPHEMERA_RETURN_IF_ERROR(flags::Apply(*line, table));
  o.help = line->help;
  for (const std::string& word : line->positional) {
    if (word == "help") {
      o.help = true;
    } else if (!o.command.empty()) {
      return Status::InvalidArgument("unexpected argument \"" + word.substr(0, 64) + "\" after " +
                                     o.command);
    } else if (word != "capacity" && word != "volumes") {
      return Status::InvalidArgument("unknown command \"" + word.substr(0, 64) +
                                     "\" (commands: capacity, volumes)");
    } else {
      o.command = word;
    }
  }
  if (!o.output.empty() && o.output != "json" && o.output != "table") {
    return Status::InvalidArgument("--output must be json or table, not \"" +
                                   o.output.substr(0, 32) + "\"");
  }
  if (o.output == "table") o.output.clear();
  if (o.all_namespaces && !o.ns.empty()) {
    return Status::InvalidArgument("--namespace and --all-namespaces exclude each other");
  }
  return o;
}

StatusOr<Connection> ConnectToCluster(const Options& options) {
  auto config = apiclient::LoadConfig(options.kubeconfig, options.context);
  if (!config.ok()) return config.status().WithContext("kubeconfig");
  config->user_agent = "kubectl-ephemera/0.1";
  config->request_timeout = std::chrono::seconds(15);
  config->qps = 0;  // a handful of requests

  Connection c;
  c.server = config->server;
  c.default_namespace = config->default_namespace.empty() ? "default" : config->default_namespace;
  auto client = apiclient::RestClient::New(*config);
  if (!client.ok()) return client.status().WithContext("kubeconfig");
  std::shared_ptr<apiclient::RestClient> rest = std::move(*client);
  c.get_text = [rest](const std::string& path) { return rest->GetText(path); };
  c.client = std::move(rest);
  return c;
}

int Run(const std::vector<std::string>& args, const Connector& connect, std::ostream& out,
        std::ostream& err, std::chrono::system_clock::time_point now) {
  auto options = ParseArgs(args);
  if (!options.ok()) {
    err << "error: " << options.status().message() << "\nSee 'kubectl ephemera --help'.\n";
    return 2;
  }
  if (options->help) {
    out << kUsage;
    return 0;
  }
  if (options->command.empty()) {
    err << "error: no command given\n\n" << kUsage;
    return 2;
  }
  auto connection = connect(*options);
  if (!connection.ok()) {
    err << "error: " << connection.status().message() << "\n";
    return 1;
  }
  if (options->command == "capacity") return Capacity(*options, *connection, out, err, now);
  return Volumes(*options, *connection, out, err);
}

}  // namespace ephemera::plugin
