#include "controllers/capacity/controller.h"

#include <algorithm>
#include <iterator>
#include <limits>

#include "apiclient/errors.h"
#include "common/log.h"
#include "common/quantity.h"

namespace ephemera::controllers {
namespace {

using apiclient::BoolField;
using apiclient::Field;
using apiclient::Object;
using apiclient::ObjectPtr;
using apiclient::resources::kCSINodes;
using apiclient::resources::kCSIStorageCapacities;
using apiclient::resources::kNodes;
using apiclient::resources::kPersistentVolumeClaims;
using apiclient::resources::kPersistentVolumes;
using apiclient::resources::kPods;
using apiclient::resources::kStorageClasses;

constexpr char kDriverLabel[] = "csi.storage.k8s.io/drivername";
constexpr char kManagedByLabel[] = "csi.storage.k8s.io/managed-by";
// Queue keys besides the items' (which are JSON arrays).
constexpr char kResyncKey[] = "resync";
constexpr char kPollKey[] = "poll";
constexpr char kSelectedNode[] = "volume.kubernetes.io/selected-node";

// A string member of an object, or "" (hostile objects may carry anything).
const Object* Member(const Object& o, const char* key) {
  if (!o.is_object()) return nullptr;
  auto it = o.find(key);
  return it == o.end() ? nullptr : &*it;
}

// matchLabels of a nodeTopology, or nullopt when the selector is not a plain label match.
std::optional<Segment> SelectorLabels(const Object* selector) {
  Segment out;
  if (selector == nullptr || selector->is_null()) return out;
  if (!selector->is_object()) return std::nullopt;
  const Object* exprs = Member(*selector, "matchExpressions");
  if (exprs != nullptr && !exprs->is_null() && !(exprs->is_array() && exprs->empty())) {
    return std::nullopt;
  }
  const Object* labels = Member(*selector, "matchLabels");
  if (labels == nullptr || labels->is_null()) return out;
  if (!labels->is_object()) return std::nullopt;
  for (const auto& [k, v] : labels->items()) {
    if (!v.is_string()) return std::nullopt;
    out[k] = v.get<std::string>();
  }
  return out;
}

bool QuantityEquals(const Object* field, const std::optional<int64_t>& want) {
  if (field == nullptr || field->is_null()) return !want.has_value();
  if (!want.has_value() || !field->is_string()) return false;
  auto have = ParseQuantity(field->get<std::string>());
  return have.ok() && *have == *want;
}

// Does the PV's node affinity select nodes of `segment`? True when there is no affinity.
bool AffinityMatches(const Object& pv, const Segment& segment) {
  const Object* spec = Member(pv, "spec");
  const Object* affinity = spec ? Member(*spec, "nodeAffinity") : nullptr;
  const Object* required = affinity ? Member(*affinity, "required") : nullptr;
  const Object* terms = required ? Member(*required, "nodeSelectorTerms") : nullptr;
  if (terms == nullptr || !terms->is_array() || terms->empty()) return true;
  for (const auto& term : *terms) {
    const Object* exprs = Member(term, "matchExpressions");
    if (exprs == nullptr || !exprs->is_array()) continue;
    bool all = true;
    for (const auto& e : *exprs) {
      const std::string key = Field(e, "key");
      auto it = segment.find(key);
      if (it == segment.end()) continue;  // a key the segment does not constrain
      const Object* values = Member(e, "values");
      bool in = false;
      if (Field(e, "operator") == "In" && values != nullptr && values->is_array()) {
        for (const auto& v : *values)
          in = in || (v.is_string() && v.get<std::string>() == it->second);
      }
      all = all && in;
    }
    if (all) return true;
  }
  return false;
}

std::string PvDriver(const Object& pv) {
  return Field(pv, "spec", "csi", "driver");
}

// A pod trimmed to what the inline-volume trigger reads: identity, node, phase, and whether it
// has a CSI inline volume of `driver` ("inline").
Object InlineVolumePod(const Object& pod, const std::string& driver) {
  Object out = {{"metadata", Object::object()}, {"spec", Object::object()}};
  if (const Object* meta = Member(pod, "metadata")) {
    for (const char* key : {"name", "namespace", "uid", "resourceVersion"}) {
      if (const Object* v = Member(*meta, key)) out["metadata"][key] = *v;
    }
  }
  out["spec"]["nodeName"] = Field(pod, "spec", "nodeName");
  out["status"]["phase"] = Field(pod, "status", "phase");
  bool inline_volume = false;
  const Object* spec = Member(pod, "spec");
  const Object* volumes = spec ? Member(*spec, "volumes") : nullptr;
  if (volumes != nullptr && volumes->is_array()) {
    for (const auto& v : *volumes)
      inline_volume = inline_volume || Field(v, "csi", "driver") == driver;
  }
  out["inline"] = inline_volume;
  return out;
}

// What the informers decode of each object (the rest is never built): identity and what the
// controller reads. A real cluster's Nodes (status.images, conditions) and Pods are mostly what
// the controller never looks at, and every object's managedFields are a large part of it.
using apiclient::FieldFilter;

FieldFilter IdentityAnd(std::initializer_list<std::pair<std::string, FieldFilter>> metadata_extra,
                        std::initializer_list<std::pair<std::string, FieldFilter>> top) {
  const FieldFilter all;
  std::vector<std::pair<std::string, FieldFilter>> meta = {{"name", all},
                                                           {"namespace", all},
                                                           {"uid", all},
                                                           {"resourceVersion", all},
                                                           {"deletionTimestamp", all}};
  meta.insert(meta.end(), metadata_extra.begin(), metadata_extra.end());
  std::vector<std::pair<std::string, FieldFilter>> members = {
      {"apiVersion", all}, {"kind", all}, {"metadata", FieldFilter(meta)}};
  members.insert(members.end(), top.begin(), top.end());
  return FieldFilter(members);
}

std::shared_ptr<const FieldFilter> NodeFilter() {
  const FieldFilter all;
  return std::make_shared<const FieldFilter>(IdentityAnd({{"labels", all}}, {}));
}

std::shared_ptr<const FieldFilter> CsiNodeFilter() {
  const FieldFilter all;
  return std::make_shared<const FieldFilter>(IdentityAnd({}, {{"spec", {{"drivers", all}}}}));
}

std::shared_ptr<const FieldFilter> VolumeFilter() {
  const FieldFilter all;
  return std::make_shared<const FieldFilter>(IdentityAnd({}, {{"spec",
                                                               {{"capacity", all},
                                                                {"nodeAffinity", all},
                                                                {"csi", {{"driver", all}}},
                                                                {"claimRef", all}}}}));
}

std::shared_ptr<const FieldFilter> PodFilter() {
  const FieldFilter all;
  return std::make_shared<const FieldFilter>(
      IdentityAnd({}, {{"spec", {{"nodeName", all}, {"volumes", {{"csi", {{"driver", all}}}}}}},
                       {"status", {{"phase", all}}}}));
}

std::shared_ptr<const FieldFilter> ClaimFilter() {
  const FieldFilter all;
  return std::make_shared<const FieldFilter>(
      IdentityAnd({{"annotations", all}}, {{"spec",
                                            {{"storageClassName", all},
                                             {"volumeName", all},
                                             {"resources", {{"requests", {{"storage", all}}}}}}}}));
}

// A claim trimmed to what a reservation reads: identity, the selected-node annotation, class,
// volume name and request, each as it came (ReadPlacedClaim checks the types).
Object TrimClaim(const Object& pvc) {
  Object out = {{"metadata", Object::object()}, {"spec", Object::object()}};
  if (const Object* meta = Member(pvc, "metadata")) {
    for (const char* key : {"name", "namespace", "uid", "resourceVersion", "deletionTimestamp"}) {
      if (const Object* v = Member(*meta, key)) out["metadata"][key] = *v;
    }
    const Object* annotations = Member(*meta, "annotations");
    if (const Object* v = annotations ? Member(*annotations, kSelectedNode) : nullptr) {
      out["metadata"]["annotations"][kSelectedNode] = *v;
    }
  }
  if (const Object* spec = Member(pvc, "spec")) {
    for (const char* key : {"storageClassName", "volumeName"}) {
      if (const Object* v = Member(*spec, key)) out["spec"][key] = *v;
    }
    const Object* resources = Member(*spec, "resources");
    const Object* requests = resources ? Member(*resources, "requests") : nullptr;
    if (const Object* v = requests ? Member(*requests, "storage") : nullptr) {
      out["spec"]["resources"]["requests"]["storage"] = *v;
    }
  }
  return out;
}

std::string ClaimKey(const Object& pvc) {
  return Field(pvc, "metadata", "namespace") + "/" + Field(pvc, "metadata", "name");
}

// Does `node` (its labels) belong to `segment`?
bool NodeInSegment(const Object& node, const Segment& segment) {
  const Object* meta = Member(node, "metadata");
  const Object* labels = meta ? Member(*meta, "labels") : nullptr;
  for (const auto& [key, value] : segment) {
    if (labels == nullptr || Field(*labels, key.c_str()) != value) return false;
  }
  return true;
}

}  // namespace

StatusOr<std::optional<PlacedClaim>> ReadPlacedClaim(const Object& pvc) {
  const Object* meta = Member(pvc, "metadata");
  const Object* annotations = meta ? Member(*meta, "annotations") : nullptr;
  const Object* node = annotations ? Member(*annotations, kSelectedNode) : nullptr;
  if (node == nullptr || node->is_null()) return std::optional<PlacedClaim>();
  if (!node->is_string()) return Status::InvalidArgument("selected-node is not a string");
  PlacedClaim out;
  out.node = node->get<std::string>();
  if (out.node.empty()) return std::optional<PlacedClaim>();
  out.storage_class = Field(pvc, "spec", "storageClassName");
  out.volume_name = Field(pvc, "spec", "volumeName");
  const Object* spec = Member(pvc, "spec");
  const Object* resources = spec ? Member(*spec, "resources") : nullptr;
  const Object* requests = resources ? Member(*resources, "requests") : nullptr;
  const Object* storage = requests ? Member(*requests, "storage") : nullptr;
  if (storage == nullptr || !storage->is_string()) {
    return Status::InvalidArgument("no storage request");
  }
  auto bytes = ParseByteQuantity(storage->get<std::string>());
  if (!bytes.ok()) return bytes.status().WithContext("storage request");
  out.bytes = *bytes;
  return std::optional<PlacedClaim>(std::move(out));
}

int64_t AddReserved(int64_t a, int64_t b) {
  constexpr int64_t kMax = std::numeric_limits<int64_t>::max();
  a = std::max<int64_t>(a, 0);
  b = std::max<int64_t>(b, 0);
  return a > kMax - b ? kMax : a + b;
}

CapacityResult ApplyReservations(const CapacityResult& driver, int64_t reserved) {
  CapacityResult out = driver;
  if (reserved <= 0) return out;  // the driver's figure as it is
  const int64_t available = std::max<int64_t>(driver.available, 0);
  out.available = reserved >= available ? 0 : available - reserved;
  if (out.maximum_volume_size) {
    out.maximum_volume_size =
        std::max<int64_t>(0, std::min(*out.maximum_volume_size, out.available));
  }
  return out;
}

std::string DescribeSegment(const Segment& segment) {
  std::string out;
  for (const auto& [k, v] : segment) {
    if (!out.empty()) out += ',';
    out += k;
    out += '=';
    out += v;
  }
  return out.empty() ? "<all nodes>" : out;
}

bool VolumeUpdateMatters(const Object& old_pv, const Object& pv) {
  const Object* a = Member(old_pv, "spec");
  const Object* b = Member(pv, "spec");
  auto same = [&](const char* key) {
    const Object* x = a ? Member(*a, key) : nullptr;
    const Object* y = b ? Member(*b, key) : nullptr;
    return (x == nullptr) == (y == nullptr) && (x == nullptr || *x == *y);
  };
  return !same("capacity") || !same("nodeAffinity") || PvDriver(old_pv) != PvDriver(pv);
}

std::vector<Segment> ComputeSegments(const std::vector<ObjectPtr>& csinodes,
                                     const std::map<std::string, ObjectPtr>& nodes,
                                     const std::string& driver) {
  std::set<Segment> segments;
  for (const auto& csinode : csinodes) {
    const Object* spec = Member(*csinode, "spec");
    const Object* drivers = spec ? Member(*spec, "drivers") : nullptr;
    if (drivers == nullptr || !drivers->is_array()) continue;
    for (const auto& d : *drivers) {
      if (Field(d, "name") != driver) continue;
      std::vector<std::string> keys;
      const Object* tk = Member(d, "topologyKeys");
      if (tk != nullptr && tk->is_array()) {
        for (const auto& k : *tk)
          if (k.is_string()) keys.push_back(k.get<std::string>());
      }
      Segment segment;
      bool complete = true;
      if (!keys.empty()) {
        auto node = nodes.find(Field(*csinode, "metadata", "name"));
        if (node == nodes.end()) {
          complete = false;
        } else {
          for (const auto& key : keys) {
            const Object* md = Member(*node->second, "metadata");
            const Object* labels = md ? Member(*md, "labels") : nullptr;
            const Object* value = labels ? Member(*labels, key.c_str()) : nullptr;
            if (value == nullptr || !value->is_string()) {
              complete = false;
              break;
            }
            segment[key] = value->get<std::string>();
          }
        }
      }
      if (complete) segments.insert(segment);
      break;
    }
  }
  return {segments.begin(), segments.end()};
}

bool ClassWanted(const Object& storage_class, const std::string& driver, bool immediate_binding) {
  if (Field(storage_class, "provisioner") != driver) return false;
  if (Field(storage_class, "volumeBindingMode") == "WaitForFirstConsumer") return true;
  return immediate_binding;
}

std::optional<CapacityItem> ItemOf(const Object& object) {
  const Object* sc = Member(object, "storageClassName");
  if (sc == nullptr || !sc->is_string()) return std::nullopt;
  auto labels = SelectorLabels(Member(object, "nodeTopology"));
  if (!labels) return std::nullopt;
  return CapacityItem{.segment = *labels, .storage_class = sc->get<std::string>()};
}

Object NodeOwnerReference(const Object& node) {
  return Object{{"apiVersion", "v1"},
                {"kind", "Node"},
                {"name", Field(node, "metadata", "name")},
                {"uid", Field(node, "metadata", "uid")}};
}

bool OwnedOnlyBy(const Object& existing, const Object& owner) {
  const Object* meta = Member(existing, "metadata");
  const Object* refs = meta ? Member(*meta, "ownerReferences") : nullptr;
  if (refs == nullptr || !refs->is_array() || refs->size() != 1) return false;
  const Object& ref = (*refs)[0];
  for (const char* key : {"apiVersion", "kind", "name", "uid"}) {
    if (Field(ref, key) != Field(owner, key)) return false;
  }
  // Nothing more than what we set (a blockOwnerDeletion or controller of someone else's is
  // rewritten).
  return !BoolField(ref, "blockOwnerDeletion") && !BoolField(ref, "controller");
}

Object DesiredCapacityObject(const CapacityItem& item, const CapacityResult& result,
                             const CapacityOptions& options, const std::string& driver,
                             const Object* node_owner) {
  Object labels = Object::object();
  for (const auto& [k, v] : item.segment)
    labels[k] = v;
  Object metadata = {{"generateName", "csisc-"},
                     {"namespace", options.ns},
                     {"labels", {{kDriverLabel, driver}, {kManagedByLabel, options.managed_by}}}};
  if (node_owner != nullptr) {
    metadata["ownerReferences"] = Object::array({*node_owner});
  } else if (options.owner.is_object() && !options.owner.empty()) {
    metadata["ownerReferences"] = Object::array({options.owner});
  }
  Object out = {{"apiVersion", "storage.k8s.io/v1"},
                {"kind", "CSIStorageCapacity"},
                {"metadata", std::move(metadata)},
                {"storageClassName", item.storage_class},
                {"nodeTopology", {{"matchLabels", std::move(labels)}}},
                {"capacity", FormatBinaryQuantity(result.available)}};
  if (result.maximum_volume_size) {
    out["maximumVolumeSize"] = FormatBinaryQuantity(*result.maximum_volume_size);
  }
  return out;
}

bool CapacityUpToDate(const Object& existing, const CapacityResult& result) {
  return QuantityEquals(Member(existing, "capacity"), result.available) &&
         QuantityEquals(Member(existing, "maximumVolumeSize"), result.maximum_volume_size);
}

CapacityController::CapacityController(apiclient::ApiClientPtr client,
                                       std::shared_ptr<CapacitySource> source,
                                       apiclient::MetricsRegistry& metrics, CapacityOptions options)
    : client_(std::move(client)),
      writer_(options.write_client != nullptr ? options.write_client : client_),
      source_(std::move(source)),
      options_(std::move(options)),
      clock_(options_.clock != nullptr ? *options_.clock : apiclient::SystemClock()),
      write_limit_(options_.write_qps, std::max(1, options_.write_burst), clock_),
      goal_(metrics.Gauge("csistoragecapacities_desired_goal",
                          "Number of CSIStorageCapacity objects that should exist.")),
      current_(metrics.Gauge("csistoragecapacities_desired_current",
                             "Number of wanted CSIStorageCapacity objects that exist.")),
      obsolete_(metrics.Gauge("csistoragecapacities_obsolete",
                              "Number of CSIStorageCapacity objects to be deleted.")),
      latency_(metrics.Histogram("csistoragecapacity_getcapacity_duration_seconds",
                                 "Latency of the driver's GetCapacity calls.")),
      errors_(metrics.Counter("csistoragecapacity_getcapacity_errors_total",
                              "Failed GetCapacity calls by gRPC code.", {"code"})),
      published_(metrics.Gauge("csistoragecapacity_published_bytes",
                               "Available capacity published, by segment and storage class.",
                               {"segment", "storage_class"})),
      writes_metric_(metrics.Counter("csistoragecapacity_writes_total",
                                     "Writes of CSIStorageCapacity objects by operation.",
                                     {"operation"})),
      unreachable_metric_(
          metrics.Gauge("csistoragecapacity_unreachable_nodes",
                        "Nodes whose own capacity endpoint did not answer the last GetCapacity.")),
      node_errors_(metrics.Counter("csistoragecapacity_node_getcapacity_errors_total",
                                   "Failed GetCapacity calls to a node's own endpoint, by node.",
                                   {"node"})),
      reservations_metric_(
          metrics.Gauge("csistoragecapacity_reservations",
                        "Placed claims whose request is subtracted from the published capacity.")),
      confirmed_(metrics.Gauge(
          "csistoragecapacity_confirmed_timestamp_seconds",
          "Unix time when the driver last confirmed the capacity of an item (a GetCapacity "
          "answer), by segment and storage class.",
          {"segment", "storage_class"})),
      claims_skipped_(metrics.Counter(
          "csistoragecapacity_claims_skipped_total",
          "Placed claims that reserve nothing because they are odd, by reason.", {"reason"})),
      clamped_(metrics.Counter(
          "csistoragecapacity_reservations_clamped_total",
          "Publishes where placed claims reserved more than the driver's figure (published 0).")),
      pacer_(options_.debounce) {
  // Only the per-item backoff limits retries: items are independent (their own node or class),
  // GetCapacity calls are bounded per endpoint and writes have their own token bucket.
  queue_ = std::make_unique<apiclient::WorkQueue>(
      apiclient::WorkQueueOptions{.name = "storage_capacity",
                                  .base_delay = options_.retry_base,
                                  .max_delay = options_.retry_max,
                                  .qps = 0},
      clock_);
}

CapacityController::~CapacityController() {
  Stop();
}

apiclient::Clock::Duration ChangePacer::Changed(const std::string& key,
                                                apiclient::Clock::TimePoint now) {
  State& s = items_[key];
  if (s.scheduled) {
    // A call is to come and has not started: it covers this change too.
    return std::max<apiclient::Clock::Duration>(*s.scheduled - now, {});
  }
  s.scheduled = std::max(now, s.next_free);  // at once for a quiet item
  return *s.scheduled - now;
}

void ChangePacer::Started(const std::string& key, apiclient::Clock::TimePoint now) {
  State& s = items_[key];
  s.scheduled.reset();
  s.next_free = now + interval_;
}

void ChangePacer::Retain(const std::function<bool(const std::string&)>& keep) {
  for (auto it = items_.begin(); it != items_.end();)
    it = keep(it->first) ? std::next(it) : items_.erase(it);
}

std::string CapacityController::KeyOf(const CapacityItem& item) {
  Object segment = Object::object();
  for (const auto& [k, v] : item.segment)
    segment[k] = v;
  // A JSON array: never one of the reserved keys below, and unambiguous whatever the names hold.
  return Object::array({item.storage_class, std::move(segment)}).dump();
}

Status CapacityController::Prepare() {
  if (options_.driver_name.empty()) {
    auto name = source_->DriverName();
    if (!name.ok()) return name.status();
    driver_ = *name;
  } else {
    driver_ = options_.driver_name;
  }
  return source_->CheckGetCapacity();
}

bool CapacityController::SleepFor(apiclient::Clock::Duration d) {
  const auto until = clock_.Now() + d;
  // In steps, so that Stop() is not kept waiting.
  for (auto now = clock_.Now(); !stopped_ && now < until; now = clock_.Now()) {
    clock_.SleepFor(
        std::min<apiclient::Clock::Duration>(until - now, std::chrono::milliseconds(100)));
  }
  return !stopped_;
}

Status CapacityController::Start(std::stop_token stop) {
  const auto deadline = clock_.Now() + options_.start_timeout;
  Status s = Prepare();
  while (!s.ok() && s.code() != Code::kFailedPrecondition) {
    if (stop.stop_requested() || stopped_) {
      return Status::Cancelled("stopped before the driver answered");
    }
    if (clock_.Now() >= deadline) {
      return s.WithContext("the CSI driver did not answer within " +
                           std::to_string(options_.start_timeout.count()) + " s");
    }
    log::Error("cannot reach the CSI driver; retrying", s);
    // 2 s, in steps, so that a stop is not kept waiting.
    const auto until = clock_.Now() + std::chrono::seconds(2);
    for (auto now = clock_.Now(); !stop.stop_requested() && !stopped_ && now < until;
         now = clock_.Now()) {
      clock_.SleepFor(
          std::min<apiclient::Clock::Duration>(until - now, std::chrono::milliseconds(100)));
    }
    s = Prepare();
  }
  if (s.code() == Code::kFailedPrecondition) {
    // Not a crash loop: the driver will not grow the capability by restarting us.
    disabled_ = true;
    log::Error(
        "storage-capacity controller disabled: no CSIStorageCapacity objects will be "
        "published",
        s, {{"driver", driver_}});
    return Status::Ok();
  }

  csinodes_ = std::make_unique<apiclient::Informer>(
      client_, apiclient::InformerOptions{.resource = kCSINodes, .decode_filter = CsiNodeFilter()});
  nodes_ = std::make_unique<apiclient::Informer>(
      client_, apiclient::InformerOptions{.resource = kNodes, .decode_filter = NodeFilter()});
  classes_ = std::make_unique<apiclient::Informer>(
      client_, apiclient::InformerOptions{.resource = kStorageClasses});
  volumes_ = std::make_unique<apiclient::Informer>(
      client_,
      apiclient::InformerOptions{.resource = kPersistentVolumes, .decode_filter = VolumeFilter()});
  // CSI inline volumes are no PVs: the driver creates one when kubelet publishes it and deletes it
  // at unpublish. A pod with one that turns Running (kubelet reports after the mounts) or is
  // deleted for good (after the unmounts) changes its node's free space.
  const std::string driver = driver_;
  pods_ = std::make_unique<apiclient::Informer>(
      client_,
      apiclient::InformerOptions{
          .resource = kPods,
          .transform = [driver](const Object& pod) { return InlineVolumePod(pod, driver); },
          .decode_filter = PodFilter()});
  if (options_.reservations) {
    claims_ = std::make_unique<apiclient::Informer>(
        client_,
        apiclient::InformerOptions{.resource = kPersistentVolumeClaims,
                                   .transform = [](const Object& pvc) { return TrimClaim(pvc); },
                                   .decode_filter = ClaimFilter()});
    claims_->AddHandlers(
        {.on_add = [this](const ObjectPtr& pvc) { ClaimChanged(*pvc); },
         .on_update = [this](const ObjectPtr&, const ObjectPtr& pvc) { ClaimChanged(*pvc); },
         .on_delete = [this](const ObjectPtr& pvc) { ClaimGone(*pvc); }});
  }
  capacities_ = std::make_unique<apiclient::Informer>(
      client_,
      apiclient::InformerOptions{.resource = kCSIStorageCapacities,
                                 .ns = options_.ns,
                                 .label_selector = std::string(kDriverLabel) + "=" + driver_ + "," +
                                                   kManagedByLabel + "=" + options_.managed_by});
  auto any = [this](const ObjectPtr&) { Trigger(); };
  csinodes_->AddHandlers({.on_add = any,
                          .on_update = [this](const ObjectPtr&, const ObjectPtr&) { Trigger(); },
                          .on_delete = any});
  nodes_->AddHandlers({.on_add = any,
                       .on_update =
                           [this](const ObjectPtr& old_node, const ObjectPtr& node) {
                             // Only labels decide segments.
                             const Object* a = Member(*old_node, "metadata");
                             const Object* b = Member(*node, "metadata");
                             const Object* la = a ? Member(*a, "labels") : nullptr;
                             const Object* lb = b ? Member(*b, "labels") : nullptr;
                             if ((la == nullptr) != (lb == nullptr) || (la && *la != *lb)) {
                               Trigger();
                             }
                           },
                       .on_delete = any});
  auto class_changed = [this](const ObjectPtr& sc) {
    ClassChanged(Field(*sc, "metadata", "name"));
  };
  classes_->AddHandlers(
      {.on_add = class_changed,
       .on_update = [class_changed](const ObjectPtr&, const ObjectPtr& sc) { class_changed(sc); },
       .on_delete = class_changed});
  auto volume_changed = [this](const ObjectPtr& pv) { VolumeChanged(*pv); };
  volumes_->AddHandlers({.on_add =
                             [this, volume_changed](const ObjectPtr& pv) {
                               PvClaim(*pv, false);
                               volume_changed(pv);
                             },
                         .on_update =
                             [this](const ObjectPtr& old_pv, const ObjectPtr& pv) {
                               PvClaim(*pv, false);
                               // An expansion changes the free space; phase, claim and
                               // annotation changes do not (a release frees nothing until the
                               // PV is deleted).
                               if (!VolumeUpdateMatters(*old_pv, *pv)) return;
                               VolumeChanged(*old_pv, *pv);
                             },
                         .on_delete =
                             [this, volume_changed](const ObjectPtr& pv) {
                               PvClaim(*pv, true);
                               volume_changed(pv);
                             }});
  auto pod_changed = [this](const ObjectPtr& pod) {
    if (!pod->value("inline", false)) return;
    const std::string node_name = Field(*pod, "spec", "nodeName");
    if (node_name.empty()) return;
    ObjectPtr node = nodes_->store().Get(node_name);
    if (node == nullptr) return;
    MarkStale([&](const CapacityItem& item) { return NodeInSegment(*node, item.segment); });
  };
  pods_->AddHandlers({.on_update =
                          [pod_changed](const ObjectPtr& old_pod, const ObjectPtr& pod) {
                            if (Field(*old_pod, "status", "phase") !=
                                Field(*pod, "status", "phase")) {
                              pod_changed(pod);
                            }
                          },
                      .on_delete = pod_changed});
  // A change of one of our objects by someone else (or its deletion) is undone by its item; any
  // new object may be a duplicate or obsolete, which the resync deletes.
  capacities_->AddHandlers({.on_add =
                                [this](const ObjectPtr& o) {
                                  ObjectSeen(o);
                                  Trigger();
                                },
                            .on_update =
                                [this](const ObjectPtr&, const ObjectPtr& o) {
                                  ObjectSeen(o);
                                  RecheckItemOf(o);
                                  Trigger();
                                },
                            .on_delete =
                                [this](const ObjectPtr& o) {
                                  ObjectGone(o);
                                  RecheckItemOf(o);
                                  Trigger();
                                }});
  std::vector<apiclient::Informer*> informers = {csinodes_.get(), nodes_.get(), classes_.get(),
                                                 volumes_.get(),  pods_.get(),  capacities_.get()};
  if (claims_) informers.push_back(claims_.get());
  for (auto* inf : informers)
    inf->Start();
  const std::vector<const apiclient::Informer*> synced(informers.begin(), informers.end());
  EPHEMERA_RETURN_IF_ERROR(apiclient::WaitForCacheSync(
      stop,
      std::max(std::chrono::duration_cast<std::chrono::milliseconds>(deadline - clock_.Now()),
               std::chrono::milliseconds(1)),
      synced));
  // The claims' handlers may have run before the classes, nodes and PVs were all in the caches.
  ReevaluateClaims();
  const int threads = std::max(1, options_.threads);
  for (int i = 0; i < threads; ++i)
    workers_.emplace_back([this] { Worker(); });
  queue_->Add(kResyncKey);
  queue_->AddAfter(kPollKey, options_.poll_interval);
  log::Info("storage-capacity controller started",
            {{"driver", driver_},
             {"namespace", options_.ns},
             {"pollInterval", std::to_string(options_.poll_interval.count()) + "ms"},
             {"threads", std::to_string(threads)},
             {"immediateBinding", options_.immediate_binding ? "true" : "false"},
             {"reservations", options_.reservations ? "true" : "false"}});
  return Status::Ok();
}

void CapacityController::Stop() {
  if (stopped_.exchange(true)) return;
  queue_->ShutDown();
  for (auto& t : workers_)
    t.join();
  workers_.clear();
  // No call starts any more: cancel those in flight and wait for their answers, which use `this`.
  std::vector<CapacitySource::Cancel> cancels;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& [key, cancel] : in_flight_)
      if (cancel) cancels.push_back(cancel);
  }
  for (const auto& cancel : cancels)
    cancel();
  {
    std::unique_lock<std::mutex> lock(mu_);
    calls_done_.wait(lock, [this] { return in_flight_.empty() && answering_ == 0; });
  }
  for (auto* inf : {csinodes_.get(), nodes_.get(), classes_.get(), volumes_.get(), pods_.get(),
                    capacities_.get(), claims_.get()}) {
    if (inf != nullptr) inf->Stop();
  }
}

void CapacityController::Trigger() {
  // Debounce: AddAfter keeps the earliest pending time, so the first change starts the timer and
  // later ones ride along.
  queue_->AddAfter(kResyncKey, options_.debounce);
}

void CapacityController::MarkStale(const std::function<bool(const CapacityItem&)>& which) {
  std::vector<std::pair<std::string, apiclient::Clock::Duration>> keys;
  {
    std::lock_guard<std::mutex> lock(mu_);
    const auto now = clock_.Now();
    for (const auto& [key, wanted] : wanted_) {
      if (!which(wanted.item)) continue;
      stale_.insert(key);
      urgent_.insert(key);
      changed_at_.emplace(key, now);
      keys.emplace_back(key, pacer_.Changed(key, now));
    }
  }
  for (const auto& [key, delay] : keys)
    queue_->AddAfter(key, delay);  // a zero delay adds at once
}

void CapacityController::RefreshAll() {
  std::vector<std::string> keys;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& [key, wanted] : wanted_) {
      stale_.insert(key);
      keys.push_back(key);
    }
  }
  for (const auto& key : keys)
    queue_->Add(key);
}

void CapacityController::VolumeChanged(const Object& pv) {
  if (PvDriver(pv) != driver_) return;
  MarkStale([&](const CapacityItem& item) { return AffinityMatches(pv, item.segment); });
}

void CapacityController::VolumeChanged(const Object& old_pv, const Object& pv) {
  // One mark for both segments: an item of both is one change, not a second one to pace.
  const bool old_ours = PvDriver(old_pv) == driver_;
  const bool ours = PvDriver(pv) == driver_;
  if (!old_ours && !ours) return;
  MarkStale([&](const CapacityItem& item) {
    return (old_ours && AffinityMatches(old_pv, item.segment)) ||
           (ours && AffinityMatches(pv, item.segment));
  });
}

void CapacityController::ClassChanged(const std::string& name) {
  // Its parameters may have changed; and a new or deleted class adds or removes items.
  MarkStale([&](const CapacityItem& item) { return item.storage_class == name; });
  Trigger();
  // Claims of a class that is (no longer) the driver's start (end) their reservations.
  ReevaluateClaims();
}

void CapacityController::ObjectSeen(const ObjectPtr& object) {
  const std::string name = Field(*object, "metadata", "name");
  auto item = ItemOf(*object);
  const std::string key = item ? KeyOf(*item) : "";
  std::lock_guard<std::mutex> lock(mu_);
  auto old = object_keys_.find(name);
  if (old != object_keys_.end() && old->second != key) {
    by_item_[old->second].erase(name);
    if (by_item_[old->second].empty()) by_item_.erase(old->second);
  }
  objects_[name] = object;
  object_keys_[name] = key;
  by_item_[key].insert(name);
}

void CapacityController::ObjectGone(const ObjectPtr& object) {
  const std::string name = Field(*object, "metadata", "name");
  std::lock_guard<std::mutex> lock(mu_);
  objects_.erase(name);
  auto old = object_keys_.find(name);
  if (old == object_keys_.end()) return;
  by_item_[old->second].erase(name);
  if (by_item_[old->second].empty()) by_item_.erase(old->second);
  object_keys_.erase(old);
}

void CapacityController::RecheckItemOf(const ObjectPtr& object) {
  auto item = ItemOf(*object);
  if (!item) return;
  const std::string key = KeyOf(*item);
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (wanted_.count(key) == 0) return;
  }
  queue_->AddAfter(key, options_.debounce);
}

void CapacityController::Worker() {
  std::string key;
  while (queue_->Get(&key)) {
    bool pending = false;
    Status s;
    if (key == kPollKey) {
      queue_->AddAfter(kPollKey, options_.poll_interval);  // first: the interval starts now
      RefreshAll();
      queue_->Add(kResyncKey);
    } else if (key == kResyncKey) {
      s = Resync();
    } else {
      s = SyncItem(key, &pending);
    }
    if (!pending) {
      if (s.ok()) {
        queue_->Forget(key);
      } else {
        if (log::V(2) || queue_->NumRequeues(key) == 0) {
          log::Error("storage-capacity sync failed; will retry", s);
        }
        queue_->AddRateLimited(key);
      }
    }
    queue_->Done(key);
  }
}

std::map<std::string, CapacityController::Wanted> CapacityController::WantedItems() {
  std::map<std::string, ObjectPtr> nodes;
  for (const auto& node : nodes_->store().List())
    nodes[Field(*node, "metadata", "name")] = node;
  const auto segments = ComputeSegments(csinodes_->store().List(), nodes, driver_);
  // The nodes of each segment, in one pass over the nodes per set of topology keys.
  std::map<std::vector<std::string>, std::map<Segment, std::vector<std::string>>> by_keys;
  for (const auto& segment : segments) {
    std::vector<std::string> keys;
    keys.reserve(segment.size());
    for (const auto& [k, v] : segment)
      keys.push_back(k);
    by_keys[keys][segment];
  }
  for (const auto& [name, node] : nodes) {
    const Object* md = Member(*node, "metadata");
    const Object* labels = md ? Member(*md, "labels") : nullptr;
    for (auto& [keys, members] : by_keys) {
      Segment projected;
      bool complete = true;
      for (const auto& key : keys) {
        const Object* value = labels ? Member(*labels, key.c_str()) : nullptr;
        if (value == nullptr || !value->is_string()) {
          complete = false;
          break;
        }
        projected[key] = value->get<std::string>();
      }
      if (!complete) continue;
      auto it = members.find(projected);
      if (it != members.end()) it->second.push_back(name);
    }
  }
  std::map<std::string, Wanted> out;
  for (const auto& sc : classes_->store().List()) {
    if (!ClassWanted(*sc, driver_, options_.immediate_binding)) continue;
    const std::string name = Field(*sc, "metadata", "name");
    for (const auto& [keys, members] : by_keys) {
      for (const auto& [segment, in_segment] : members) {
        CapacityItem item{.segment = segment, .storage_class = name};
        out[KeyOf(item)] = Wanted{.item = item, .nodes = in_segment};
      }
    }
  }
  return out;
}

Status CapacityController::Resync() {
  std::map<std::string, Wanted> items = WantedItems();
  std::vector<std::string> added;
  std::vector<ObjectPtr> obsolete;
  int current = 0;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& [key, wanted] : items) {
      if (wanted_.count(key) == 0) added.push_back(key);
      if (by_item_.count(key) > 0) ++current;
    }
    // Forget items that are no longer wanted.
    for (auto it = known_.begin(); it != known_.end();) {
      it = items.count(it->first) > 0 ? std::next(it) : known_.erase(it);
    }
    for (auto it = stale_.begin(); it != stale_.end();) {
      it = items.count(*it) > 0 ? std::next(it) : stale_.erase(it);
    }
    wanted_ = std::move(items);
    node_keys_.clear();
    for (const auto& [key, wanted] : wanted_) {
      for (const auto& node : wanted.nodes)
        node_keys_[node].push_back(key);
    }
    for (auto it = asked_at_.begin(); it != asked_at_.end();) {
      it = wanted_.count(it->first) > 0 ? std::next(it) : asked_at_.erase(it);
    }
    for (auto it = clamped_keys_.begin(); it != clamped_keys_.end();) {
      it = wanted_.count(*it) > 0 ? std::next(it) : clamped_keys_.erase(it);
    }
    for (auto it = written_at_.begin(); it != written_at_.end();) {
      it = wanted_.count(it->first) > 0 ? std::next(it) : written_at_.erase(it);
    }
    for (auto it = written_limit_.begin(); it != written_limit_.end();) {
      it = wanted_.count(it->first) > 0 ? std::next(it) : written_limit_.erase(it);
    }
    pacer_.Retain([this](const std::string& key) { return wanted_.count(key) > 0; });
    for (auto it = urgent_.begin(); it != urgent_.end();) {
      it = wanted_.count(*it) > 0 ? std::next(it) : urgent_.erase(it);
    }
    for (auto it = changed_at_.begin(); it != changed_at_.end();) {
      it = wanted_.count(it->first) > 0 ? std::next(it) : changed_at_.erase(it);
    }
    for (auto it = change_asked_.begin(); it != change_asked_.end();) {
      it = wanted_.count(it->first) > 0 ? std::next(it) : change_asked_.erase(it);
    }
    std::vector<std::string> nodes;
    for (const auto& [node, claims] : node_claims_)
      nodes.push_back(node);
    for (const auto& node : nodes)
      SettleLocked(node);
    // Objects of no wanted item, and all but the first (by name) of an item.
    for (const auto& [key, names] : by_item_) {
      const bool wanted = wanted_.count(key) > 0;
      for (auto name = names.begin(); name != names.end(); ++name) {
        if (wanted && name == names.begin()) continue;
        obsolete.push_back(objects_.at(*name));
      }
    }
    // Published gauges of items that are gone.
    for (auto it = published_labels_.begin(); it != published_labels_.end();) {
      if (known_.count(it->first) > 0) {
        ++it;
        continue;
      }
      published_.Remove({it->second.first, it->second.second});
      confirmed_.Remove({it->second.first, it->second.second});
      it = published_labels_.erase(it);
    }
    // Nodes that are gone are no longer reported as unreachable.
    for (auto it = unreachable_.begin(); it != unreachable_.end();) {
      it = nodes_->store().Get(it->first) ? std::next(it) : unreachable_.erase(it);
    }
    unreachable_metric_.With({}).Set(static_cast<double>(unreachable_.size()));
    goal_.With({}).Set(static_cast<double>(wanted_.size()));
  }
  current_.With({}).Set(current);
  obsolete_.With({}).Set(static_cast<double>(obsolete.size()));
  for (const auto& key : added)
    queue_->Add(key);

  Status first_error;
  for (const auto& object : obsolete) {
    const std::string name = Field(*object, "metadata", "name");
    const Status s = Write([&] {
      Status d = writer_->Delete(kCSIStorageCapacities, options_.ns, name,
                                 {.precondition_uid = Field(*object, "metadata", "uid")});
      if (d.ok() || apiclient::IsNotFound(d)) {
        writes_metric_.With({"delete"}).Inc();
        ObjectGone(object);
        log::Info("deleted obsolete CSIStorageCapacity", {{"name", name}});
        return Status::Ok();
      }
      return d;
    });
    if (!s.ok() && first_error.ok()) first_error = s;
  }
  return first_error;
}

void CapacityController::RemoveWaitingLocked(const std::string& key) {
  auto w = waiting_keys_.find(key);
  if (w == waiting_keys_.end()) return;
  auto queue = waiting_.find(w->second);
  if (queue != waiting_.end()) {
    queue->second.erase(std::remove(queue->second.begin(), queue->second.end(), key),
                        queue->second.end());
    if (queue->second.empty()) waiting_.erase(queue);
  }
  waiting_keys_.erase(w);
}

Status CapacityController::SyncItem(const std::string& key, bool* pending) {
  Wanted wanted;
  bool due = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = wanted_.find(key);
    if (it == wanted_.end()) {  // gone; the resync deletes its object
      RemoveWaitingLocked(key);
      return Status::Ok();
    }
    wanted = it->second;
    if (in_flight_.count(key) > 0) {
      *pending = true;  // its answer queues it again
      return Status::Ok();
    }
    due = stale_.count(key) > 0 || known_.count(key) == 0;
    if (!due) RemoveWaitingLocked(key);
  }
  if (!due) {
    Status s = Publish(key, wanted);
    item_syncs_++;
    return s;
  }

  // Ask the driver, without holding this worker.
  const std::string endpoint = source_->NodeFor(wanted.nodes);
  const int limit = endpoint.empty() ? std::max(1, options_.threads) : 1;
  *pending = true;
  {
    std::lock_guard<std::mutex> lock(mu_);
    int& calls = endpoint_calls_[endpoint];
    if (calls >= limit) {
      // Its turn comes with an answer from the endpoint. An item marked by a change goes before
      // the others (those of a poll: 2,000 of them at 1,000 nodes and 2 classes), after the
      // changed ones already waiting.
      const bool urgent = urgent_.count(key) > 0;
      auto is_urgent = [this](const std::string& k) { return urgent_.count(k) > 0; };
      auto w = waiting_keys_.find(key);
      if (w != waiting_keys_.end() && w->second == endpoint) {
        if (!urgent) return Status::Ok();
        // Already among the changed ones at the front: it keeps its place.
        const std::deque<std::string>& line = waiting_[endpoint];
        if (std::all_of(line.begin(), std::find(line.begin(), line.end(), key), is_urgent)) {
          return Status::Ok();
        }
      }
      RemoveWaitingLocked(key);  // it waited for another endpoint, or goes to the front now
      waiting_keys_[key] = endpoint;
      std::deque<std::string>& line = waiting_[endpoint];
      if (urgent) {
        line.insert(std::find_if_not(line.begin(), line.end(), is_urgent), key);
      } else {
        line.push_back(key);
      }
      return Status::Ok();
    }
    RemoveWaitingLocked(key);
    ++calls;
    in_flight_[key] = nullptr;
    stale_.erase(key);  // a change from now on marks it again
    urgent_.erase(key);
    const auto now = clock_.Now();
    pacer_.Started(key, now);
    auto changed = changed_at_.find(key);
    if (changed != changed_at_.end()) {
      change_asked_[key] = {changed->second, now};
      changed_at_.erase(changed);
    }
  }
  std::map<std::string, std::string> params;
  if (ObjectPtr sc = classes_->store().Get(wanted.item.storage_class)) {
    const Object* p = Member(*sc, "parameters");
    if (p != nullptr && p->is_object()) {
      for (const auto& [k, v] : p->items())
        if (v.is_string()) params[k] = v.get<std::string>();
    }
  }
  const auto start = clock_.Now();
  CapacitySource::Cancel cancel =
      source_->GetCapacityAsync(wanted.item.segment, params, wanted.nodes,
                                [this, key, endpoint, start](StatusOr<CapacityResult> result) {
                                  Answered(key, endpoint, start, std::move(result));
                                });
  std::lock_guard<std::mutex> lock(mu_);
  auto it = in_flight_.find(key);
  if (it != in_flight_.end()) it->second = std::move(cancel);  // not answered yet
  return Status::Ok();
}

void CapacityController::Answered(const std::string& key, const std::string& endpoint,
                                  apiclient::Clock::TimePoint start,
                                  StatusOr<CapacityResult> result) {
  const Status status = result.status();
  const bool stopping = status.code() == Code::kCancelled && stopped_;
  // Only a transport failure means "cannot be reached"; a driver that answers with an error is
  // reachable.
  const bool unreachable = !endpoint.empty() && (status.code() == Code::kUnavailable ||
                                                 status.code() == Code::kDeadlineExceeded);
  std::vector<std::string> failed;
  std::string next, segment;
  bool log_error = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    // From here until the end Stop() waits for this callback (answering_), not for the call.
    in_flight_.erase(key);
    ++answering_;
    if (--endpoint_calls_[endpoint] <= 0) endpoint_calls_.erase(endpoint);
    auto wanted = wanted_.find(key);
    if (wanted != wanted_.end()) segment = DescribeSegment(wanted->second.item.segment);
    if (result.ok()) {
      failing_ = false;
      if (wanted != wanted_.end()) {
        known_[key] = *result;
        asked_at_[key] = start;
        // Freshness: when the driver last said so (its value may be unchanged: no write).
        const std::string described = DescribeSegment(wanted->second.item.segment);
        // Whole seconds: the renderer prints other values with 9 significant digits, which
        // would round a Unix time to tens of seconds.
        confirmed_.With({described, wanted->second.item.storage_class})
            .Set(static_cast<double>(std::chrono::duration_cast<std::chrono::seconds>(
                                         clock_.WallNow().time_since_epoch())
                                         .count()));
        published_labels_[key] = {described, wanted->second.item.storage_class};
        for (const auto& node : wanted->second.nodes)
          SettleLocked(node);
      }
    } else if (!stopping) {
      errors_.With({std::string(CodeName(status.code()))}).Inc();
      stale_.insert(key);  // asked again at the retry; the old value (if any) stays
      log_error = !failing_ && !unreachable;
      failing_ = true;
    }
    // The endpoint's next item. After a node that cannot be reached, all its waiting items fail
    // too (each with its own backoff) instead of waiting out the same timeout one by one.
    auto queue = waiting_.find(endpoint);
    while (queue != waiting_.end() && !queue->second.empty() && next.empty()) {
      std::string k = std::move(queue->second.front());
      queue->second.pop_front();
      waiting_keys_.erase(k);
      if (wanted_.count(k) == 0) continue;
      if (unreachable && !stopping) {
        failed.push_back(std::move(k));
      } else {
        next = std::move(k);
      }
    }
    if (queue != waiting_.end() && queue->second.empty()) waiting_.erase(queue);
  }
  if (!stopping) {
    latency_.With({}).Observe(std::chrono::duration<double>(clock_.Now() - start).count());
    if (!endpoint.empty()) NodeAnswered(endpoint, status);
    if (log_error) {
      log::Error(
          "GetCapacity failed; will retry with backoff (only the first failure after a good "
          "answer is logged)",
          status, {{"segment", segment}});
    }
    // A failure counts as an item sync once its retry is scheduled.
    if (result.ok()) {
      queue_->Add(key);  // to publish
    } else {
      queue_->AddRateLimited(key);
      item_syncs_++;
    }
    if (!next.empty()) queue_->Add(next);
    for (const auto& k : failed) {
      queue_->AddRateLimited(k);
      item_syncs_++;
    }
  }
  std::lock_guard<std::mutex> lock(mu_);
  --answering_;
  calls_done_.notify_all();  // under the lock: Stop() may destroy us as soon as it is released
}

Status CapacityController::Publish(const std::string& key, const Wanted& wanted) {
  const CapacityItem& item = wanted.item;
  // A segment of one node: the object is that Node's (the garbage collector deletes it with the
  // Node, whether we run or not). Only the Node: a dependent goes only when all its owners are
  // gone, so the --capacity-ownerref-level owner would keep it alive.
  std::optional<Object> node_owner;
  if (options_.node_owner && !item.segment.empty() && wanted.nodes.size() == 1) {
    const ObjectPtr node = nodes_->store().Get(wanted.nodes.front());
    if (node == nullptr || Field(*node, "metadata", "uid").empty()) {
      return Status::Ok();  // gone: the resync drops the item and its object
    }
    node_owner = NodeOwnerReference(*node);
  }
  CapacityResult value;
  ObjectPtr have;
  int64_t reserved = 0;
  bool newly_clamped = false;
  const apiclient::Clock::TimePoint computed = clock_.Now();
  // The figure is in the API: what claim pacing compares with, and which reservations it counts.
  auto written = [&] {
    {
      std::lock_guard<std::mutex> lock(mu_);
      WrittenLocked(key, computed, value);
    }
    WakeParked();
  };
  // A change this publish answers: when it came and when the call that counts it started.
  std::optional<std::pair<apiclient::Clock::TimePoint, apiclient::Clock::TimePoint>> change;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto known = known_.find(key);
    if (known == known_.end()) return Status::Ok();  // never answered: nothing (not even zero)
    auto asked = change_asked_.find(key);
    auto answer = asked_at_.find(key);
    if (asked != change_asked_.end() && answer != asked_at_.end() &&
        answer->second >= asked->second.second) {
      change = asked->second;
      change_asked_.erase(asked);
    }
    reserved = ReservedLocked(key, wanted);
    value = ApplyReservations(known->second, reserved);
    const bool clamped = reserved > 0 && reserved > known->second.available;
    if (clamped) {
      newly_clamped = clamped_keys_.insert(key).second;
    } else {
      clamped_keys_.erase(key);
    }
    auto names = by_item_.find(key);
    if (names != by_item_.end() && !names->second.empty()) {
      have = objects_.at(*names->second.begin());  // by name order: the first one is kept
    }
    const std::string segment = DescribeSegment(item.segment);
    published_.With({segment, item.storage_class}).Set(static_cast<double>(value.available));
    published_labels_[key] = {segment, item.storage_class};
  }
  if (newly_clamped) {
    clamped_.With({}).Inc();
    log::Error("placed claims reserve more than the driver reports; published 0",
               Status::ResourceExhausted("reservations exceed the capacity"),
               {{"segment", DescribeSegment(item.segment)},
                {"storageClass", item.storage_class},
                {"reservedBytes", std::to_string(reserved)}});
  }
  if (have == nullptr) {
    return Write([&] {
      auto created = writer_->Create(kCSIStorageCapacities, options_.ns,
                                     DesiredCapacityObject(item, value, options_, driver_,
                                                           node_owner ? &*node_owner : nullptr));
      if (!created.ok()) return created.status();
      writes_metric_.With({"create"}).Inc();
      ObjectSeen(*created);
      written();
      log::Info("created CSIStorageCapacity", {{"name", Field(**created, "metadata", "name")},
                                               {"storageClass", item.storage_class},
                                               {"segment", DescribeSegment(item.segment)},
                                               {"capacity", Field(**created, "capacity")}});
      return Status::Ok();
    });
  }
  const bool owned = !node_owner || OwnedOnlyBy(*have, *node_owner);
  if (CapacityUpToDate(*have, value) && owned) {
    written();
    return Status::Ok();
  }
  Object updated = *have;  // a copy: the cached object stays untouched
  // An object of an older version (or whose Node was made again under the same name) gets the
  // Node as its owner: one update, once.
  if (!owned) updated["metadata"]["ownerReferences"] = Object::array({*node_owner});
  updated["capacity"] = FormatBinaryQuantity(value.available);
  if (value.maximum_volume_size) {
    updated["maximumVolumeSize"] = FormatBinaryQuantity(*value.maximum_volume_size);
  } else {
    updated.erase("maximumVolumeSize");
  }
  return Write([&] {
    auto result = writer_->Update(kCSIStorageCapacities, options_.ns, updated);
    if (!result.ok()) return result.status();
    writes_metric_.With({"update"}).Inc();
    ObjectSeen(*result);
    written();
    log::Fields fields = {{"name", Field(**result, "metadata", "name")},
                          {"capacity", Field(**result, "capacity")}};
    if (change) {
      // Where the time of a change goes: until the call started (pacing, queue, endpoint
      // slots), then the call, the write rate and the write itself.
      auto ms = [](apiclient::Clock::Duration d) {
        return std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(d).count());
      };
      fields.emplace_back("changeToCallMs", ms(change->second - change->first));
      fields.emplace_back("changeToWrittenMs", ms(clock_.Now() - change->first));
    }
    log::Info("updated CSIStorageCapacity", fields);
    return Status::Ok();
  });
}

std::set<std::string> CapacityController::UnreachableNodes() {
  std::lock_guard<std::mutex> lock(mu_);
  std::set<std::string> out;
  for (const auto& [node, error] : unreachable_)
    out.insert(node);
  return out;
}

std::vector<std::string> CapacityController::WaitingKeys(const std::string& endpoint) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = waiting_.find(endpoint);
  return it == waiting_.end() ? std::vector<std::string>{}
                              : std::vector<std::string>(it->second.begin(), it->second.end());
}

void CapacityController::NodeAnswered(const std::string& node, const Status& status) {
  // Only a transport failure means "cannot be reached"; a driver that answers with an error is
  // reachable (its error is counted, and logged).
  const bool unreachable =
      status.code() == Code::kUnavailable || status.code() == Code::kDeadlineExceeded;
  if (!status.ok()) node_errors_.With({node}).Inc();
  bool changed = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    changed = unreachable ? unreachable_.emplace(node, status.message()).second
                          : unreachable_.erase(node) > 0;
    unreachable_metric_.With({}).Set(static_cast<double>(unreachable_.size()));
  }
  if (!changed) return;
  if (unreachable) {
    log::Error("a node's capacity endpoint cannot be reached; its last published capacity stays",
               status, {{"node", node}});
  } else {
    log::Info("a node's capacity endpoint answers again", {{"node", node}});
  }
  if (!options_.events) return;
  // The uid is the node's name, as kubelet's node Events have it: `kubectl describe node` looks
  // for exactly that.
  const Object regarding = {
      {"apiVersion", "v1"}, {"kind", "Node"}, {"metadata", {{"name", node}, {"uid", node}}}};
  if (unreachable) {
    options_.events->Record(regarding, "Warning", "CapacityEndpointUnreachable", "GetCapacity",
                            "the driver's capacity endpoint on this node cannot be reached (" +
                                status.message().substr(0, 300) +
                                "); the last published CSIStorageCapacity values are kept");
  } else {
    options_.events->Record(regarding, "Normal", "CapacityEndpointReachable", "GetCapacity",
                            "the driver's capacity endpoint on this node answers again");
  }
}

Status CapacityController::Write(const std::function<Status()>& call) {
  if (!SleepFor(write_limit_.Reserve())) return Status::Cancelled("stopping");
  writes_++;
  return call();
}

}  // namespace ephemera::controllers

namespace ephemera::controllers {

int64_t CapacityController::ReservedLocked(const std::string& key, const Wanted& wanted) {
  auto asked = asked_at_.find(key);
  int64_t reserved = 0;
  for (const auto& node : wanted.nodes) {
    auto claims = node_claims_.find(node);
    if (claims == node_claims_.end()) continue;
    for (const auto& claim : claims->second) {
      const Reservation& r = reservations_.at(claim);
      // Once the PV exists, the volume is in every figure asked after that: count it only
      // against an older one, so that it counts exactly once.
      if (r.pv_seen && asked != asked_at_.end() && asked->second >= *r.pv_seen) continue;
      reserved = AddReserved(reserved, r.bytes);
    }
  }
  return reserved;
}

void CapacityController::SettleLocked(const std::string& node) {
  auto claims = node_claims_.find(node);
  if (claims == node_claims_.end()) return;
  auto keys = node_keys_.find(node);
  for (auto it = claims->second.begin(); it != claims->second.end();) {
    const Reservation& r = reservations_.at(*it);
    bool settled = r.pv_seen.has_value();
    if (settled && keys != node_keys_.end()) {
      for (const auto& key : keys->second) {
        auto asked = asked_at_.find(key);
        // An item never answered has nothing published to count the volume against.
        if (asked != asked_at_.end() && asked->second < *r.pv_seen) settled = false;
      }
    }
    if (!settled) {
      ++it;
      continue;
    }
    reservations_.erase(*it);
    it = claims->second.erase(it);
  }
  if (claims->second.empty()) node_claims_.erase(claims);
  reservations_metric_.With({}).Set(static_cast<double>(reservations_.size()));
}

size_t CapacityController::Reservations() {
  std::lock_guard<std::mutex> lock(mu_);
  return reservations_.size();
}

void CapacityController::WrittenLocked(const std::string& key, apiclient::Clock::TimePoint computed,
                                       const CapacityResult& value) {
  auto& at = written_at_[key];
  at = std::max(at, computed);
  written_limit_[key] = value.maximum_volume_size.value_or(value.available);
}

bool CapacityController::ReservationWrittenLocked(const std::string& claim) {
  const Reservation& r = reservations_.at(claim);
  auto keys = node_keys_.find(r.node);
  if (keys == node_keys_.end()) return true;  // no item of ours holds the node
  for (const auto& key : keys->second) {
    auto wanted = wanted_.find(key);
    if (wanted == wanted_.end() || wanted->second.item.storage_class != r.storage_class) continue;
    auto at = written_at_.find(key);
    if (at == written_at_.end() || at->second < r.since) return false;
  }
  return true;
}

void CapacityController::PruneInFlightLocked(apiclient::Clock::TimePoint now) {
  for (auto it = in_flight_claims_.begin(); it != in_flight_claims_.end();) {
    const std::string& claim = it->first;
    bool done = now - it->second.admitted >= options_.claim_pacing_hold;
    if (!done && reservations_.count(claim) > 0) {
      done = ReservationWrittenLocked(claim);
    } else if (!done) {
      // Not reserved: its volume exists (counted by the driver's figure), or it is not placed yet.
      done = pv_claims_.count(claim) > 0;
    }
    it = done ? in_flight_claims_.erase(it) : std::next(it);
  }
}

int64_t CapacityController::InFlightBytesLocked() {
  // Every class: the classes of one driver share its pools (as for reservations).
  int64_t sum = 0;
  for (const auto& [claim, c] : in_flight_claims_)
    sum = AddReserved(sum, c.bytes);
  return sum;
}

std::optional<int64_t> CapacityController::LargestWrittenLocked(const std::string& storage_class) {
  std::optional<int64_t> largest;
  for (const auto& [key, wanted] : wanted_) {
    if (wanted.item.storage_class != storage_class) continue;
    auto limit = written_limit_.find(key);
    if (limit == written_limit_.end()) continue;
    largest = std::max(largest.value_or(0), limit->second);
  }
  return largest;
}

bool CapacityController::Admit(const std::string& claim, const std::string& storage_class,
                               int64_t bytes, std::function<void()> wake) {
  if (!options_.claim_pacing || !options_.reservations) return true;
  std::lock_guard<std::mutex> lock(mu_);
  if (in_flight_claims_.count(claim) > 0) return true;  // admitted before (a retried create)
  const std::optional<int64_t> largest = LargestWrittenLocked(storage_class);
  if (!largest) return true;  // not a class of ours, or nothing published yet
  const apiclient::Clock::TimePoint now = clock_.Now();
  PruneInFlightLocked(now);
  const int64_t in_flight = InFlightBytesLocked();
  auto& parked = parked_[storage_class];
  auto mine = std::find_if(parked.begin(), parked.end(),
                           [&](const ParkedClaim& p) { return p.claim == claim; });
  if (in_flight == 0 || AddReserved(in_flight, bytes) <= *largest) {
    if (mine != parked.end()) parked.erase(mine);
    if (parked.empty()) parked_.erase(storage_class);
    in_flight_claims_[claim] = InFlightClaim{storage_class, bytes, now};
    return true;
  }
  // Parked (once: asked again, it keeps its place with the newer wake) until WakeParked.
  if (mine != parked.end()) {
    mine->wake = std::move(wake);
  } else {
    parked.push_back(ParkedClaim{claim, bytes, std::move(wake)});
  }
  return false;
}

void CapacityController::Abandon(const std::string& claim) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    in_flight_claims_.erase(claim);
  }
  WakeParked();
}

void CapacityController::CancelWakes() {
  std::lock_guard<std::mutex> wake_lock(wake_mu_);
  wakes_cancelled_ = true;
  std::lock_guard<std::mutex> lock(mu_);
  parked_.clear();
}

size_t CapacityController::ClaimsInFlight() {
  std::lock_guard<std::mutex> lock(mu_);
  PruneInFlightLocked(clock_.Now());
  return in_flight_claims_.size();
}

void CapacityController::WakeParked() {
  std::vector<std::function<void()>> wakes;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (parked_.empty()) return;
    PruneInFlightLocked(clock_.Now());
    for (auto it = parked_.begin(); it != parked_.end();) {
      auto& parked = it->second;
      const std::optional<int64_t> largest = LargestWrittenLocked(it->first);
      int64_t in_flight = InFlightBytesLocked();
      // Wake, in order, those that fit beside what counts now (the first one always when nothing
      // counts). A woken claim leaves the line: its Admit decides, and parks it again if others
      // were faster. One whose pod went meanwhile is simply not asked for again.
      while (!parked.empty()) {
        const int64_t with = AddReserved(in_flight, parked.front().bytes);
        if (in_flight != 0 && (!largest || with > *largest)) break;
        in_flight = with;
        if (parked.front().wake) wakes.push_back(std::move(parked.front().wake));
        parked.pop_front();
      }
      it = parked.empty() ? parked_.erase(it) : std::next(it);
    }
  }
  std::lock_guard<std::mutex> wake_lock(wake_mu_);
  if (wakes_cancelled_) return;
  for (const auto& wake : wakes)
    wake();
}

void CapacityController::SetReservation(const std::string& claim,
                                        std::optional<Reservation> reservation,
                                        const std::string& skip_reason) {
  std::vector<std::string> keys;
  bool report = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (skip_reason.empty()) {
      claim_skips_.erase(claim);
    } else {
      auto [it, added] = claim_skips_.emplace(claim, skip_reason);
      report = added || it->second != skip_reason;
      it->second = skip_reason;
    }
    std::set<std::string> nodes;
    auto old = reservations_.find(claim);
    if (reservation) reservation->since = clock_.Now();
    if (old != reservations_.end()) {
      nodes.insert(old->second.node);
      // Still on the same node (its PV came): counted since it first was.
      if (reservation && reservation->node == old->second.node) {
        reservation->since = old->second.since;
      }
      if (reservation && reservation->node == old->second.node && old->second.pv_seen) {
        reservation->pv_seen = old->second.pv_seen;  // already waiting for a fresher figure
      }
      if (reservation && old->second.node == reservation->node &&
          old->second.bytes == reservation->bytes && old->second.pv_seen == reservation->pv_seen) {
        return;  // nothing changed (e.g. a status update of the claim)
      }
      auto on_node = node_claims_.find(old->second.node);
      if (on_node != node_claims_.end()) {
        on_node->second.erase(claim);
        if (on_node->second.empty()) node_claims_.erase(on_node);
      }
      reservations_.erase(old);
    }
    if (reservation) {
      nodes.insert(reservation->node);
      node_claims_[reservation->node].insert(claim);
      reservations_[claim] = *reservation;
      if (reservation->pv_seen) SettleLocked(reservation->node);
    }
    reservations_metric_.With({}).Set(static_cast<double>(reservations_.size()));
    for (const auto& node : nodes) {
      auto it = node_keys_.find(node);
      if (it != node_keys_.end()) keys.insert(keys.end(), it->second.begin(), it->second.end());
    }
  }
  if (report) {
    claims_skipped_.With({skip_reason}).Inc();
    log::Error("a placed claim reserves nothing", Status::InvalidArgument(skip_reason),
               {{"claim", claim}});
  }
  // At once, not debounced: the scheduler may place the next pod any moment. The queue holds a
  // key once, so a burst of claims on one node costs one write of its object per turn.
  for (const auto& key : keys)
    queue_->Add(key);
  // An ended reservation may end an admitted claim's wait.
  if (!reservation) WakeParked();
}

void CapacityController::ClaimChanged(const Object& pvc) {
  if (!options_.reservations) return;
  const std::string claim = ClaimKey(pvc);
  auto placed = ReadPlacedClaim(pvc);
  if (!placed.ok()) {
    SetReservation(claim, std::nullopt, "malformed_claim");
    return;
  }
  if (!placed->has_value() || !Field(pvc, "metadata", "deletionTimestamp").empty()) {
    // Not placed, no longer (rescheduled), or going: nothing will be provisioned for it.
    SetReservation(claim, std::nullopt, "");
    return;
  }
  const PlacedClaim& c = **placed;
  ObjectPtr sc = classes_->store().Get(c.storage_class);
  if (sc == nullptr || !ClassWanted(*sc, driver_, options_.immediate_binding)) {
    SetReservation(claim, std::nullopt, "");  // not one of ours
    return;
  }
  const ObjectPtr node = nodes_->store().Get(c.node);
  if (node == nullptr) {
    SetReservation(claim, std::nullopt, "unknown_node");
    return;
  }
  Reservation r{.node = c.node, .storage_class = c.storage_class, .bytes = c.bytes};
  bool pv_exists = !c.volume_name.empty() && volumes_->store().Get(c.volume_name) != nullptr;
  bool newly_seen = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    pv_exists = pv_exists || pv_claims_.count(claim) > 0;
    if (pv_exists) {
      auto old = reservations_.find(claim);
      if (old == reservations_.end()) {
        // Its volume is in the driver's figures already: nothing to reserve.
        claim_skips_.erase(claim);
        return;
      }
      newly_seen = !old->second.pv_seen.has_value();
      if (newly_seen) r.pv_seen = clock_.Now();
    }
  }
  if (newly_seen) {
    // Every figure asked from now on counts the volume: ask for one (the reservation stays
    // until it is in).
    MarkStale([&](const CapacityItem& item) { return NodeInSegment(*node, item.segment); });
  }
  SetReservation(claim, r, "");
}

void CapacityController::ClaimGone(const Object& pvc) {
  if (!options_.reservations) return;
  {
    std::lock_guard<std::mutex> lock(mu_);
    in_flight_claims_.erase(ClaimKey(pvc));
  }
  SetReservation(ClaimKey(pvc), std::nullopt, "");
}

void CapacityController::PvClaim(const Object& pv, bool deleted) {
  if (!options_.reservations || PvDriver(pv) != driver_) return;
  const std::string ns = Field(pv, "spec", "claimRef", "namespace");
  const std::string name = Field(pv, "spec", "claimRef", "name");
  if (name.empty()) return;
  const std::string claim = ns + "/" + name;
  std::string node_name;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (deleted) {
      pv_claims_.erase(claim);
      return;
    }
    pv_claims_[claim] = Field(pv, "metadata", "name");
    auto r = reservations_.find(claim);
    if (r == reservations_.end() || r->second.pv_seen) return;
    // The volume exists: every figure asked from now on counts it. The reservation stays until
    // such a figure is in for every item of its node (SettleLocked); ask for one.
    r->second.pv_seen = clock_.Now();
    node_name = r->second.node;
  }
  const ObjectPtr node = nodes_->store().Get(node_name);
  if (node == nullptr) return;
  MarkStale([&](const CapacityItem& item) { return NodeInSegment(*node, item.segment); });
}

void CapacityController::ReevaluateClaims() {
  if (!claims_) return;
  for (const auto& pvc : claims_->store().List())
    ClaimChanged(*pvc);
}

}  // namespace ephemera::controllers
