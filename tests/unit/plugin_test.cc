// kubectl-ephemera's library: formatting, the rows built from API objects, the JSON shape and the
// command line, with a fake API client.
#include <catch2/catch.hpp>
#include <sstream>

#include "plugin/cli.h"
#include "plugin/format.h"
#include "plugin/views.h"

namespace ephemera::plugin {
namespace {

using namespace std::chrono_literals;

ObjectPtr Ptr(Object o) {
  return std::make_shared<const Object>(std::move(o));
}

Object Node(const std::string& name, Object labels) {
  return {{"metadata", {{"name", name}, {"labels", std::move(labels)}}}};
}

Object Capacity(const std::string& name, const std::string& sc, Object topology,
                std::optional<std::string> capacity, std::optional<std::string> max_size) {
  Object o = {{"metadata",
               {{"name", name},
                {"namespace", "ephemera-system"},
                {"creationTimestamp", "2026-11-22T07:00:00Z"}}},
              {"storageClassName", sc},
              {"nodeTopology", std::move(topology)}};
  if (capacity) o["capacity"] = *capacity;
  if (max_size) o["maximumVolumeSize"] = *max_size;
  return o;
}

const auto kNow = std::chrono::system_clock::from_time_t(1795331400);  // 2026-11-22T07:10:00Z

TEST_CASE("Tables align columns with three spaces and no trailing blanks", "[plugin]") {
  const std::string table =
      FormatTable({"NAME", "SIZE", "AGE"}, {{"a-long-name", "1Gi", "5s"}, {"b", "", "10m"}});
  CHECK(table ==
        "NAME          SIZE   AGE\n"
        "a-long-name   1Gi    5s\n"
        "b                    10m\n");
  CHECK(FormatTable({"A", "B"}, {}) == "A   B\n");
  CHECK(FormatTable({"A", "B"}, {{"x"}}) == "A   B\nx\n");
}

TEST_CASE("Sizes print exactly when short and round down otherwise", "[plugin]") {
  CHECK(FormatSize(0) == "0");
  CHECK(FormatSize(512) == "512");
  CHECK(FormatSize(2LL << 30) == "2Gi");
  CHECK(FormatSize(1536LL << 20) == "1536Mi");
  CHECK(FormatSize(10LL << 40) == "10Ti");
  // 10Gi minus 4 KiB: "10485756Ki" exactly, shown as 9.9Gi (never rounded up).
  CHECK(FormatSize((10LL << 30) - 4096) == "9.9Gi");
  CHECK(FormatSize(1000000000) == "953.6Mi");
  CHECK(FormatSize(1000) == "1k");
  CHECK(FormatSize(1500) == "1500");
  CHECK(FormatSize(15000) == "14.6Ki");
  CHECK(FormatSize(-5) == "-5");
  CHECK(FormatQuantityCell(std::string("8G")) == "7.4Gi");
  CHECK(FormatQuantityCell(std::string("4Gi")) == "4Gi");
  CHECK(FormatQuantityCell(std::nullopt) == "<unset>");
  CHECK(FormatQuantityCell(std::string("lots")) == "<unset>");
}

TEST_CASE("Ages print like kubectl's", "[plugin]") {
  CHECK(FormatAge(-5s) == "<invalid>");
  CHECK(FormatAge(-1s) == "0s");
  CHECK(FormatAge(0s) == "0s");
  CHECK(FormatAge(119s) == "119s");
  CHECK(FormatAge(120s) == "2m");
  CHECK(FormatAge(330s) == "5m30s");
  CHECK(FormatAge(42min) == "42m");
  CHECK(FormatAge(179min) == "179m");
  CHECK(FormatAge(3h + 20min) == "3h20m");
  CHECK(FormatAge(10h) == "10h");
  CHECK(FormatAge(52h) == "2d4h");
  CHECK(FormatAge(24h * 30) == "30d");
  CHECK(FormatAge(24h * (365 * 2 + 10)) == "2y10d");
  CHECK(FormatAge(24h * 365 * 9) == "9y");
}

TEST_CASE("Timestamps parse as UTC and bad ones are unknown ages", "[plugin]") {
  auto t = ParseTimestamp("2026-11-22T07:00:00Z");
  REQUIRE(t);
  CHECK(std::chrono::system_clock::to_time_t(*t) == 1795330800);
  CHECK(AgeCell("2026-11-22T07:00:00Z", kNow) == "10m");
  CHECK(AgeCell("", kNow) == "<unknown>");
  CHECK(AgeCell("2026-13-22T07:00:00Z", kNow) == "<unknown>");
  CHECK(AgeCell("2026-11-22 07:00:00", kNow) == "<unknown>");
}

TEST_CASE("Label selectors match as the API defines them", "[plugin]") {
  const Object labels = {{"kubernetes.io/hostname", "node-1"}, {"zone", "a"}};
  const Object by_host = {{"matchLabels", {{"kubernetes.io/hostname", "node-1"}}}};
  const Object other = {{"matchLabels", {{"kubernetes.io/hostname", "node-2"}}}};
  const Object empty = Object::object();
  const Object in = {
      {"matchExpressions", {{{"key", "zone"}, {"operator", "In"}, {"values", {"a", "b"}}}}}};
  const Object notin = {
      {"matchExpressions", {{{"key", "zone"}, {"operator", "NotIn"}, {"values", {"a"}}}}}};
  const Object exists = {{"matchExpressions", {{{"key", "zone"}, {"operator", "Exists"}}}}};
  const Object absent = {{"matchExpressions", {{{"key", "rack"}, {"operator", "DoesNotExist"}}}}};
  const Object bad_op = {{"matchExpressions", {{{"key", "zone"}, {"operator", "Gt"}}}}};
  const Object bad_type = {{"matchLabels", {{"zone", 5}}}};
  CHECK(SelectorMatches(&by_host, labels));
  CHECK_FALSE(SelectorMatches(&other, labels));
  CHECK(SelectorMatches(&empty, labels));
  CHECK_FALSE(SelectorMatches(nullptr, labels));
  CHECK(SelectorMatches(&in, labels));
  CHECK_FALSE(SelectorMatches(&notin, labels));
  CHECK(SelectorMatches(&exists, labels));
  CHECK(SelectorMatches(&absent, labels));
  CHECK_FALSE(SelectorMatches(&bad_op, labels));
  CHECK_FALSE(SelectorMatches(&bad_type, labels));
  CHECK(SelectorString(&by_host) == "kubernetes.io/hostname=node-1");
  CHECK(SelectorString(&in) == "zone in (a,b)");
  CHECK(SelectorString(&absent) == "!rack");
  CHECK(SelectorString(nullptr) == "<none>");
  CHECK(SelectorString(&empty) == "<all>");
}

TEST_CASE("Capacity rows name the nodes of each segment or the segment itself", "[plugin]") {
  const std::vector<ObjectPtr> nodes = {
      Ptr(Node("node-2", {{"kubernetes.io/hostname", "node-2"}})),
      Ptr(Node("node-1", {{"kubernetes.io/hostname", "node-1"}, {"zone", "a"}})),
      Ptr(Node("node-3", {{"kubernetes.io/hostname", "node-3"}, {"zone", "a"}})),
      Ptr(Object("not a node")),
  };
  const std::vector<ObjectPtr> capacities = {
      Ptr(Capacity("csisc-b", "ephemera-pmem-xfs",
                   {{"matchLabels", {{"kubernetes.io/hostname", "node-2"}}}}, "10Gi", "8Gi")),
      Ptr(Capacity("csisc-a", "ephemera-pmem-ext4", {{"matchLabels", {{"zone", "a"}}}}, "4Gi",
                   std::nullopt)),
      Ptr(Capacity("csisc-c", "ephemera-pmem-ext4",
                   {{"matchLabels", {{"kubernetes.io/hostname", "gone"}}}}, std::nullopt,
                   std::nullopt)),
      Ptr(Capacity("csisc-d", "ephemera-pmem-ext4", nullptr, "1Gi", "1Gi")),
      Ptr(Object::array()),
  };
  auto rows = BuildCapacityRows(capacities, nodes);
  REQUIRE(rows.size() == 4);
  // Sorted by the NODE cell: "<none>" < "kubernetes.io/..." < "node-1,node-3" < "node-2".
  CHECK(rows[0].name == "csisc-d");
  CHECK(rows[0].segment == "<none>");
  CHECK(rows[1].name == "csisc-c");
  CHECK(rows[1].nodes.empty());
  CHECK(rows[2].name == "csisc-a");
  CHECK(rows[2].nodes == std::vector<std::string>{"node-1", "node-3"});
  CHECK(rows[3].nodes == std::vector<std::string>{"node-2"});
  // The segment as the controller's metrics label it.
  CHECK(rows[0].controller_segment == "<all nodes>");
  CHECK(rows[3].controller_segment == "kubernetes.io/hostname=node-2");

  // CONFIRMED: how long ago the driver confirmed the value (not the object's age, 10m here).
  const double now_seconds = std::chrono::duration<double>(kNow.time_since_epoch()).count();
  rows[3].confirmed = now_seconds - 42.5;
  rows[2].confirmed = now_seconds + 3;  // another machine's clock ahead: never in the future
  CHECK(CapacityTable(rows, kNow) ==
        "NODE                          STORAGECLASS         CAPACITY   MAXIMUM VOLUME SIZE   "
        "CONFIRMED\n"
        "<none>                        ephemera-pmem-ext4   1Gi        1Gi                   "
        "<unknown>\n"
        "kubernetes.io/hostname=gone   ephemera-pmem-ext4   <unset>    <unset>               "
        "<unknown>\n"
        "node-1,node-3                 ephemera-pmem-ext4   4Gi        <unset>               "
        "0s ago\n"
        "node-2                        ephemera-pmem-xfs    10Gi       8Gi                   "
        "42s ago\n");
}

TEST_CASE("Capacity JSON has exact bytes and nulls for absent quantities", "[plugin]") {
  const auto rows =
      BuildCapacityRows({Ptr(Capacity("csisc-a", "ephemera-pmem-xfs",
                                      {{"matchLabels", {{"kubernetes.io/hostname", "node-1"}}}},
                                      "10Gi", std::nullopt))},
                        {Ptr(Node("node-1", {{"kubernetes.io/hostname", "node-1"}}))});
  const Object json = CapacityJson(rows);
  CHECK(json["kind"] == "CapacityList");
  REQUIRE(json["items"].size() == 1);
  const Object& item = json["items"][0];
  CHECK(item["namespace"] == "ephemera-system");
  CHECK(item["name"] == "csisc-a");
  CHECK(item["nodes"] == Object::array({"node-1"}));
  CHECK(item["allNodes"] == false);
  CHECK(item["segment"] == "kubernetes.io/hostname=node-1");
  CHECK(item["storageClassName"] == "ephemera-pmem-xfs");
  CHECK(item["capacity"] == "10Gi");
  CHECK(item["capacityBytes"] == 10LL << 30);
  CHECK(item["maximumVolumeSize"].is_null());
  CHECK(item["maximumVolumeSizeBytes"].is_null());
  CHECK(item["creationTimestamp"] == "2026-11-22T07:00:00Z");
  CHECK(item["confirmedTimestampSeconds"].is_null());
}

TEST_CASE("Capacity confirmations are read from the controller's metrics text", "[plugin]") {
  const std::string text =
      "# HELP csistoragecapacity_confirmed_timestamp_seconds Unix time ...\n"
      "# TYPE csistoragecapacity_confirmed_timestamp_seconds gauge\n"
      "csistoragecapacity_confirmed_timestamp_seconds{segment=\"k=node-1\",storage_class=\"a\"} "
      "1795331358.25\n"
      "csistoragecapacity_confirmed_timestamp_seconds{storage_class=\"b\",segment=\"<all "
      "nodes>\"} 17\n"
      "csistoragecapacity_confirmed_timestamp_seconds{segment=\"q\\\"x\\\\y\",storage_class=\"c\"} "
      "5\n"
      "csistoragecapacity_published_bytes{segment=\"k=node-1\",storage_class=\"a\"} 1024\n"
      "csistoragecapacity_confirmed_timestamp_seconds{segment=\"unterminated} 1\n"
      "csistoragecapacity_confirmed_timestamp_seconds{segment=\"k=node-2\"} 1\n"
      "csistoragecapacity_confirmed_timestamp_seconds{segment=\"x\",storage_class=\"a\"} NaN\n"
      "csistoragecapacity_confirmed_timestamp_seconds{segment=\"x\",storage_class=\"a\"} junk\n"
      "csistoragecapacity_confirmed_timestamp_seconds{segment=\"y\",storage_class=\"a\"}";
  const auto parsed = ParseConfirmations(text);
  REQUIRE(parsed.size() == 3);
  CHECK(parsed[0].first == std::make_pair(std::string("k=node-1"), std::string("a")));
  CHECK(parsed[0].second == 1795331358.25);
  CHECK(parsed[1].first == std::make_pair(std::string("<all nodes>"), std::string("b")));
  CHECK(parsed[2].first.first == "q\"x\\y");
  CHECK(ParseConfirmations("").empty());

  Object pod = {
      {"spec",
       {{"containers",
         Object::array(
             {{{"name", "m"},
               {"ports", Object::array({{{"name", "grpc"}, {"containerPort", 9}},
                                        {{"name", "metrics"}, {"containerPort", 9090}}})}}})}}}};
  CHECK(MetricsPort(pod) == 9090);
  pod["spec"]["containers"][0]["ports"][1]["containerPort"] = "9090";
  CHECK(MetricsPort(pod) == 8080);
  CHECK(MetricsPort(Object("hostile")) == 8080);
}

Object Pod(const std::string& ns, const std::string& name, const std::string& uid,
           const std::string& node, Object volumes) {
  Object pod = {{"metadata", {{"namespace", ns}, {"name", name}, {"uid", uid}}},
                {"spec", {{"volumes", std::move(volumes)}}},
                {"status", {{"phase", "Running"}}}};
  if (!node.empty()) pod["spec"]["nodeName"] = node;
  return pod;
}

Object EphemeralVolume(const std::string& name, const std::string& sc, const std::string& size) {
  Object spec = {{"accessModes", {"ReadWriteOnce"}},
                 {"resources", {{"requests", {{"storage", size}}}}}};
  if (!sc.empty()) spec["storageClassName"] = sc;
  return {{"name", name}, {"ephemeral", {{"volumeClaimTemplate", {{"spec", spec}}}}}};
}

Object Pvc(const std::string& ns, const std::string& name, const std::string& owner_uid,
           const std::string& sc, const std::string& phase, std::optional<std::string> capacity) {
  Object pvc = {
      {"metadata",
       {{"namespace", ns},
        {"name", name},
        {"ownerReferences",
         {{{"apiVersion", "v1"}, {"kind", "Pod"}, {"uid", owner_uid}, {"controller", true}}}},
        {"annotations", {{"volume.kubernetes.io/selected-node", "node-9"}}}}},
      {"spec", {{"storageClassName", sc}, {"resources", {{"requests", {{"storage", "1Gi"}}}}}}},
      {"status", {{"phase", phase}}}};
  if (capacity) pvc["status"]["capacity"] = {{"storage", *capacity}};
  return pvc;
}

Object Class(const std::string& name, const std::string& provisioner, bool is_default = false) {
  Object sc = {{"metadata", {{"name", name}}}, {"provisioner", provisioner}};
  if (is_default) {
    sc["metadata"]["annotations"] = {{"storageclass.kubernetes.io/is-default-class", "true"}};
  }
  return sc;
}

TEST_CASE("Volume rows cover generic ephemeral and inline volumes of the driver", "[plugin]") {
  const std::string driver = kDefaultDriver;
  const std::vector<ObjectPtr> pods = {
      Ptr(Pod("b", "web", "uid-web", "node-1",
              {EphemeralVolume("scratch", "ephemera-pmem-xfs", "4Gi"),
               {{"name", "config"}, {"configMap", {{"name", "x"}}}},
               {{"name", "inline"},
                {"csi", {{"driver", driver}, {"volumeAttributes", {{"size", "2Gi"}}}}}},
               {{"name", "other-inline"}, {"csi", {{"driver", "other.csi"}}}}})),
      Ptr(Pod("a", "pending", "uid-pending", "",
              {EphemeralVolume("data", "", "1Gi"), EphemeralVolume("other", "standard", "1Gi")})),
      Ptr(Pod("a", "thief", "uid-thief", "node-2",
              {EphemeralVolume("data", "ephemera-pmem-ext4", "1Gi")})),
      Ptr(Pod("a", "new", "uid-new", "node-2",
              {EphemeralVolume("data", "ephemera-pmem-ext4", "3Gi")})),
      Ptr(Object(nullptr)),
  };
  const std::vector<ObjectPtr> pvcs = {
      Ptr(Pvc("b", "web-scratch", "uid-web", "ephemera-pmem-xfs", "Bound", "4Gi")),
      Ptr(Pvc("a", "pending-data", "uid-pending", "ephemera-pmem-ext4", "Pending", std::nullopt)),
      Ptr(Pvc("a", "thief-data", "someone-else", "ephemera-pmem-ext4", "Bound", "1Gi")),
  };
  const std::vector<ObjectPtr> classes = {Ptr(Class("ephemera-pmem-xfs", driver)),
                                          Ptr(Class("ephemera-pmem-ext4", driver, true)),
                                          Ptr(Class("standard", "other.csi"))};

  const auto rows = BuildVolumeRows(pods, pvcs, classes, driver);
  REQUIRE(rows.size() == 5);
  CHECK(rows[0].pod == "new");
  CHECK(rows[0].phase == "Missing");
  CHECK(rows[0].pvc == "new-data");
  CHECK(rows[0].size == "3Gi");
  CHECK(rows[1].pod == "pending");  // default class via the PVC's class
  CHECK(rows[1].phase == "Pending");
  CHECK(rows[1].node == "node-9");  // not scheduled: the PVC's selected node
  CHECK(rows[1].size == "1Gi");
  CHECK(rows[2].pod == "thief");
  CHECK(rows[2].phase == "NotOwned");
  CHECK(rows[3].pod == "web");
  CHECK(rows[3].volume == "scratch");
  CHECK(rows[3].phase == "Bound");
  CHECK(rows[4].volume == "inline");
  CHECK(rows[4].type == "csi-inline");
  CHECK(rows[4].pvc.empty());
  CHECK(rows[4].phase == "Running");
  CHECK(rows[4].size == "2Gi");

  CHECK(VolumeTable(rows, true) ==
        "NAMESPACE   POD       VOLUME    PVC            PHASE      NODE     SIZE\n"
        "a           new       data      new-data       Missing    node-2   3Gi\n"
        "a           pending   data      pending-data   Pending    node-9   1Gi\n"
        "a           thief     data      thief-data     NotOwned   node-2   1Gi\n"
        "b           web       scratch   web-scratch    Bound      node-1   4Gi\n"
        "b           web       inline    <inline>       Running    node-1   2Gi\n");
  CHECK(VolumeTable({rows[4]}, false) ==
        "POD   VOLUME   PVC        PHASE     NODE     SIZE\n"
        "web   inline   <inline>   Running   node-1   2Gi\n");

  // Without StorageClasses (no right to list them) every generic ephemeral volume shows.
  CHECK(BuildVolumeRows(pods, pvcs, std::nullopt, driver).size() == 6);
  // Another driver: only its inline volume.
  const auto other = BuildVolumeRows(pods, pvcs, classes, "other.csi");
  REQUIRE(other.size() == 2);
  CHECK(other[0].volume == "other");
  CHECK(other[1].volume == "other-inline");
}

TEST_CASE("Volume JSON has one item per volume with nulls for what is absent", "[plugin]") {
  VolumeRow inline_row{.ns = "a",
                       .pod = "p",
                       .volume = "v",
                       .type = "csi-inline",
                       .pvc = "",
                       .phase = "Pending",
                       .node = "",
                       .size = "2Gi"};
  const Object json = VolumeJson({inline_row});
  CHECK(json["kind"] == "VolumeList");
  REQUIRE(json["items"].size() == 1);
  const Object& item = json["items"][0];
  CHECK(item["namespace"] == "a");
  CHECK(item["pod"] == "p");
  CHECK(item["volume"] == "v");
  CHECK(item["type"] == "csi-inline");
  CHECK(item["pvc"].is_null());
  CHECK(item["node"].is_null());
  CHECK(item["size"] == "2Gi");
  CHECK(item["sizeBytes"] == 2LL << 30);
}

TEST_CASE("The command line takes kubectl-style flags anywhere", "[plugin]") {
  auto o = ParseArgs({"-n", "demo", "volumes", "-ojson", "--context=kind", "--kubeconfig", "k"});
  REQUIRE(o.ok());
  CHECK(o->command == "volumes");
  CHECK(o->ns == "demo");
  CHECK(o->output == "json");
  CHECK(o->context == "kind");
  CHECK(o->kubeconfig == "k");
  o = ParseArgs({"capacity", "-A", "--driver", "x.csi", "-o", "table"});
  REQUIRE(o.ok());
  CHECK(o->all_namespaces);
  CHECK(o->driver == "x.csi");
  CHECK(o->output.empty());
  o = ParseArgs({"--namespace=x", "capacity"});
  REQUIRE(o.ok());
  CHECK(o->ns == "x");
  CHECK(ParseArgs({"--help"})->help);

  for (const std::vector<std::string>& bad :
       std::vector<std::vector<std::string>>{{"capacity", "--bogus"},
                                             {"capacity", "-n"},
                                             {"capacity", "-o", "yaml"},
                                             {"capacity", "-A", "-n", "x"},
                                             {"snapshots"},
                                             {"capacity", "volumes"},
                                             {"capacity", "--namespace="},
                                             {"capacity", "-x"}}) {
    INFO(bad.back());
    auto parsed = ParseArgs(bad);
    CHECK(parsed.status().code() == Code::kInvalidArgument);
  }
}

// An API client that answers lists from fixed objects, or with a fixed error.
class FakeClient : public apiclient::ApiClient {
 public:
  std::map<std::string, std::vector<ObjectPtr>> objects;  // by plural
  std::map<std::string, Status> errors;                   // by plural
  std::vector<std::string> requests;                      // "plural ns selector"

  StatusOr<apiclient::ListResult> List(const apiclient::Resource& r, const std::string& ns,
                                       const apiclient::ListOptions& o) override {
    requests.push_back(r.plural + " " + ns + " " + o.label_selector);
    if (auto it = errors.find(r.plural); it != errors.end()) return it->second;
    apiclient::ListResult result;
    for (const ObjectPtr& o : objects[r.plural]) {
      result.items.push_back(std::make_shared<Object>(*o));  // a list's items are the caller's
    }
    return result;
  }
  StatusOr<ObjectPtr> Get(const apiclient::Resource&, const std::string&,
                          const std::string&) override {
    return Status::Unimplemented("get");
  }
  StatusOr<ObjectPtr> Create(const apiclient::Resource&, const std::string&,
                             const Object&) override {
    return Status::Unimplemented("create");
  }
  StatusOr<ObjectPtr> Update(const apiclient::Resource&, const std::string&,
                             const Object&) override {
    return Status::Unimplemented("update");
  }
  StatusOr<ObjectPtr> UpdateStatus(const apiclient::Resource&, const std::string&,
                                   const Object&) override {
    return Status::Unimplemented("update");
  }
  StatusOr<ObjectPtr> MergePatch(const apiclient::Resource&, const std::string&, const std::string&,
                                 const Object&) override {
    return Status::Unimplemented("patch");
  }
  StatusOr<ObjectPtr> Apply(const apiclient::Resource&, const std::string&, const Object&,
                            const std::string&, bool) override {
    return Status::Unimplemented("apply");
  }
  Status Delete(const apiclient::Resource&, const std::string&, const std::string&,
                const apiclient::DeleteOptions&) override {
    return Status::Unimplemented("delete");
  }
  StatusOr<apiclient::WatchStreamPtr> Watch(const apiclient::Resource&, const std::string&,
                                            const apiclient::WatchOptions&) override {
    return Status::Unimplemented("watch");
  }
};

struct RunResult {
  int code;
  std::string out, err;
};

RunResult RunWith(const std::shared_ptr<FakeClient>& client, const std::vector<std::string>& args) {
  std::ostringstream out, err;
  Connector connect = [&](const Options&) -> StatusOr<Connection> {
    return Connection{client, "home", "https://127.0.0.1:1"};
  };
  const int code = Run(args, connect, out, err, kNow);
  return {code, out.str(), err.str()};
}

TEST_CASE("Run lists with the driver label and the right namespace", "[plugin]") {
  auto client = std::make_shared<FakeClient>();
  client->objects["csistoragecapacities"] = {
      Ptr(Capacity("csisc-a", "ephemera-pmem-xfs",
                   {{"matchLabels", {{"kubernetes.io/hostname", "node-1"}}}}, "10Gi", "10Gi"))};
  client->objects["nodes"] = {Ptr(Node("node-1", {{"kubernetes.io/hostname", "node-1"}}))};

  auto r = RunWith(client, {"capacity"});
  CHECK(r.code == 0);
  CHECK(r.out.find("node-1   ephemera-pmem-xfs   10Gi") != std::string::npos);
  CHECK(client->requests.at(0) ==
        "csistoragecapacities  csi.storage.k8s.io/drivername=pmem-csi.ephemera.io");

  client->requests.clear();
  r = RunWith(client, {"capacity", "-n", "ephemera-system", "--driver", "x.csi", "-o", "json"});
  CHECK(r.code == 0);
  CHECK(Object::parse(r.out)["items"][0]["nodes"][0] == "node-1");
  CHECK(client->requests.at(0) ==
        "csistoragecapacities ephemera-system csi.storage.k8s.io/drivername=x.csi");

  // volumes: the context's namespace by default, every namespace with -A.
  client->requests.clear();
  r = RunWith(client, {"volumes"});
  CHECK(r.code == 0);
  CHECK(r.err.find("No volumes of driver pmem-csi.ephemera.io found in namespace home") !=
        std::string::npos);
  CHECK(client->requests.at(0) == "pods home ");
  client->requests.clear();
  r = RunWith(client, {"volumes", "-A", "-o", "json"});
  CHECK(r.code == 0);
  CHECK(Object::parse(r.out) == Object({{"kind", "VolumeList"}, {"items", Object::array()}}));
  CHECK(client->requests.at(0) == "pods  ");
}

TEST_CASE("Run reports errors on stderr with a non-zero exit code", "[plugin]") {
  auto client = std::make_shared<FakeClient>();
  client->errors["csistoragecapacities"] = Status::Unavailable("connection refused");
  auto r = RunWith(client, {"capacity"});
  CHECK(r.code == 1);
  CHECK(r.out.empty());
  CHECK(r.err.find("cannot reach the Kubernetes API server at https://127.0.0.1:1") !=
        std::string::npos);

  client->errors["pods"] = Status::PermissionDenied("pods is forbidden");
  r = RunWith(client, {"volumes"});
  CHECK(r.code == 1);
  CHECK(r.err.find("pods is forbidden") != std::string::npos);

  // Nodes and StorageClasses are optional: forbidden is not an error.
  client->errors.clear();
  client->errors["nodes"] = Status::PermissionDenied("nodes is forbidden");
  client->errors["storageclasses"] = Status::PermissionDenied("forbidden");
  client->objects["csistoragecapacities"] = {Ptr(Capacity(
      "c", "sc", {{"matchLabels", {{"kubernetes.io/hostname", "node-1"}}}}, "1Gi", "1Gi"))};
  r = RunWith(client, {"capacity"});
  CHECK(r.code == 0);
  CHECK(r.out.find("kubernetes.io/hostname=node-1") != std::string::npos);
  CHECK(RunWith(client, {"volumes"}).code == 0);

  r = RunWith(client, {"capacity", "--nope"});
  CHECK(r.code == 2);
  CHECK(r.err.find("unknown flag \"--nope\"") != std::string::npos);
  r = RunWith(client, {});
  CHECK(r.code == 2);
  CHECK(r.err.find("no command given") != std::string::npos);
  r = RunWith(client, {"-h"});
  CHECK(r.code == 0);
  CHECK(r.out.find("kubectl ephemera capacity") != std::string::npos);
}

TEST_CASE("Run shows when the driver confirmed each value, from the leader's metrics", "[plugin]") {
  auto client = std::make_shared<FakeClient>();
  client->objects["csistoragecapacities"] = {
      Ptr(Capacity("csisc-a", "ephemera-pmem-xfs",
                   {{"matchLabels", {{"kubernetes.io/hostname", "node-1"}}}}, "10Gi", "10Gi")),
      Ptr(Capacity("csisc-b", "ephemera-pmem-xfs",
                   {{"matchLabels", {{"kubernetes.io/hostname", "node-2"}}}}, "1Gi", "1Gi"))};
  client->objects["nodes"] = {Ptr(Node("node-1", {{"kubernetes.io/hostname", "node-1"}})),
                              Ptr(Node("node-2", {{"kubernetes.io/hostname", "node-2"}}))};
  auto manager_pod = [](const std::string& name, const std::string& phase) {
    return Ptr(
        {{"metadata", {{"name", name}, {"namespace", "ephemera-system"}}},
         {"spec",
          {{"containers",
            Object::array(
                {{{"name", "m"},
                  {"ports", Object::array({{{"name", "metrics"}, {"containerPort", 8081}}})}}})}}},
         {"status", {{"phase", phase}, {"podIP", "10.0.0.5"}}}});
  };
  client->objects["pods"] = {manager_pod("leader", "Running"), manager_pod("standby", "Running"),
                             manager_pod("gone", "Failed")};
  std::vector<std::string> paths;
  const double now_seconds = std::chrono::duration<double>(kNow.time_since_epoch()).count();
  auto get_text = [&](const std::string& path) -> StatusOr<std::string> {
    paths.push_back(path);
    if (path.find("/pods/leader:") == std::string::npos) return std::string("# standby\n");
    return "csistoragecapacity_confirmed_timestamp_seconds{segment=\"kubernetes.io/"
           "hostname=node-1\",storage_class=\"ephemera-pmem-xfs\"} " +
           std::to_string(now_seconds - 75.5) + "\n";
  };
  std::ostringstream out, err;
  Connector connect = [&](const Options&) -> StatusOr<Connection> {
    return Connection{client, "home", "https://127.0.0.1:1", get_text};
  };
  REQUIRE(Run({"capacity"}, connect, out, err, kNow) == 0);
  CHECK(out.str().find("node-1   ephemera-pmem-xfs   10Gi       10Gi                  75s ago") !=
        std::string::npos);
  CHECK(out.str().find("node-2   ephemera-pmem-xfs   1Gi        1Gi                   <unknown>") !=
        std::string::npos);
  CHECK(paths == std::vector<std::string>{
                     "/api/v1/namespaces/ephemera-system/pods/leader:8081/proxy/metrics",
                     "/api/v1/namespaces/ephemera-system/pods/standby:8081/proxy/metrics"});
  CHECK(std::count(client->requests.begin(), client->requests.end(),
                   "pods ephemera-system app.kubernetes.io/name=ephemera-controller-manager") == 1);
  std::ostringstream json, err2;
  REQUIRE(Run({"capacity", "-o", "json"}, connect, json, err2, kNow) == 0);
  const Object items = Object::parse(json.str())["items"];
  CHECK(items[0]["confirmedTimestampSeconds"].get<double>() == Approx(now_seconds - 75.5));
  CHECK(items[1]["confirmedTimestampSeconds"].is_null());
  // Metrics that cannot be read (no pods/proxy right): the table still comes, unconfirmed.
  std::ostringstream out3, err3;
  Connector refused = [&](const Options&) -> StatusOr<Connection> {
    return Connection{client, "home", "https://127.0.0.1:1",
                      [](const std::string&) -> StatusOr<std::string> {
                        return Status::PermissionDenied("pods/proxy is forbidden");
                      }};
  };
  REQUIRE(Run({"capacity"}, refused, out3, err3, kNow) == 0);
  CHECK(out3.str().find("10Gi       10Gi                  <unknown>") != std::string::npos);
}

}  // namespace
}  // namespace ephemera::plugin
