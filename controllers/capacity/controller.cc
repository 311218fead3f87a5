#include "controllers/capacity/controller.h"

#include <algorithm>

#include "apiclient/errors.h"
#include "common/log.h"
#include "common/quantity.h"

namespace ephemera::controllers {
namespace {

using apiclient::Field;
using apiclient::Object;
using apiclient::ObjectPtr;
using apiclient::resources::kCSINodes;
using apiclient::resources::kCSIStorageCapacities;
using apiclient::resources::kNodes;
using apiclient::resources::kPersistentVolumes;
using apiclient::resources::kPods;
using apiclient::resources::kStorageClasses;

constexpr char kDriverLabel[] = "csi.storage.k8s.io/drivername";
constexpr char kManagedByLabel[] = "csi.storage.k8s.io/managed-by";

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

std::string DescribeSegment(const Segment& segment) {
  std::string out;
  for (const auto& [k, v] : segment)
    out += (out.empty() ? "" : ",") + k + "=" + v;
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

Object DesiredCapacityObject(const CapacityItem& item, const CapacityResult& result,
                             const CapacityOptions& options, const std::string& driver) {
  Object labels = Object::object();
  for (const auto& [k, v] : item.segment)
    labels[k] = v;
  Object metadata = {{"generateName", "csisc-"},
                     {"namespace", options.ns},
                     {"labels", {{kDriverLabel, driver}, {kManagedByLabel, options.managed_by}}}};
  if (options.owner.is_object() && !options.owner.empty()) {
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
      source_(std::move(source)),
      options_(std::move(options)),
      write_limit_(options_.write_qps, std::max(1, options_.write_burst)),
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
                                   {"node"})) {}

CapacityController::~CapacityController() {
  Stop();
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

Status CapacityController::Start(std::stop_token stop) {
  const auto deadline = std::chrono::steady_clock::now() + options_.start_timeout;
  Status s = Prepare();
  while (!s.ok() && s.code() != Code::kFailedPrecondition) {
    if (stop.stop_requested() || stopped_)
      return Status::Cancelled("stopped before the driver answered");
    if (std::chrono::steady_clock::now() >= deadline) {
      return s.WithContext("the CSI driver did not answer within " +
                           std::to_string(options_.start_timeout.count()) + " s");
    }
    log::Error("cannot reach the CSI driver; retrying", s);
    std::mutex mu;
    std::condition_variable_any wake;
    std::unique_lock<std::mutex> lock(mu);
    wake.wait_for(lock, stop, std::chrono::seconds(2), [] { return false; });
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
      client_, apiclient::InformerOptions{.resource = kCSINodes});
  nodes_ = std::make_unique<apiclient::Informer>(client_,
                                                 apiclient::InformerOptions{.resource = kNodes});
  classes_ = std::make_unique<apiclient::Informer>(
      client_, apiclient::InformerOptions{.resource = kStorageClasses});
  volumes_ = std::make_unique<apiclient::Informer>(
      client_, apiclient::InformerOptions{.resource = kPersistentVolumes});
  // CSI inline volumes are no PVs: the driver creates one when kubelet publishes it and deletes it
  // at unpublish. A pod with one that turns Running (kubelet reports after the mounts) or is
  // deleted for good (after the unmounts) changes its node's free space.
  const std::string driver = driver_;
  pods_ = std::make_unique<apiclient::Informer>(
      client_, apiclient::InformerOptions{.resource = kPods, .transform = [driver](Object pod) {
                                            return InlineVolumePod(pod, driver);
                                          }});
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
    const std::string name = Field(*sc, "metadata", "name");
    MarkStale([&](const CapacityItem& item) { return item.storage_class == name; });
    Trigger();
  };
  classes_->AddHandlers(
      {.on_add = class_changed,
       .on_update = [class_changed](const ObjectPtr&, const ObjectPtr& sc) { class_changed(sc); },
       .on_delete = class_changed});
  auto volume_changed = [this](const ObjectPtr& pv) {
    if (PvDriver(*pv) != driver_) return;
    MarkStale([&](const CapacityItem& item) { return AffinityMatches(*pv, item.segment); });
    Trigger();
  };
  volumes_->AddHandlers({.on_add = volume_changed,
                         .on_update =
                             [volume_changed](const ObjectPtr& old_pv, const ObjectPtr& pv) {
                               // An expansion changes the free space; phase, claim and
                               // annotation changes do not (a release frees nothing until the
                               // PV is deleted).
                               if (!VolumeUpdateMatters(*old_pv, *pv)) return;
                               volume_changed(old_pv);
                               volume_changed(pv);
                             },
                         .on_delete = volume_changed});
  auto pod_changed = [this](const ObjectPtr& pod) {
    if (!pod->value("inline", false)) return;
    const std::string node_name = Field(*pod, "spec", "nodeName");
    if (node_name.empty()) return;
    ObjectPtr node = nodes_->store().Get(node_name);
    if (node == nullptr) return;
    MarkStale([&](const CapacityItem& item) { return NodeInSegment(*node, item.segment); });
    Trigger();
  };
  pods_->AddHandlers({.on_update =
                          [pod_changed](const ObjectPtr& old_pod, const ObjectPtr& pod) {
                            if (Field(*old_pod, "status", "phase") !=
                                Field(*pod, "status", "phase")) {
                              pod_changed(pod);
                            }
                          },
                      .on_delete = pod_changed});
  capacities_->AddHandlers({.on_add =
                                [this](const ObjectPtr& o) {
                                  ObjectSeen(o);
                                  Trigger();
                                },
                            .on_update =
                                [this](const ObjectPtr&, const ObjectPtr& o) {
                                  ObjectSeen(o);
                                  Trigger();
                                },
                            .on_delete =
                                [this](const ObjectPtr& o) {
                                  ObjectGone(o);
                                  Trigger();
                                }});
  for (auto* inf : {csinodes_.get(), nodes_.get(), classes_.get(), volumes_.get(), pods_.get(),
                    capacities_.get()}) {
    inf->Start();
  }
  EPHEMERA_RETURN_IF_ERROR(
      apiclient::WaitForCacheSync(stop,
                                  std::max(std::chrono::duration_cast<std::chrono::milliseconds>(
                                               deadline - std::chrono::steady_clock::now()),
                                           std::chrono::milliseconds(1)),
                                  {csinodes_.get(), nodes_.get(), classes_.get(), volumes_.get(),
                                   pods_.get(), capacities_.get()}));
  loop_ = std::thread([this] { Loop(); });
  Trigger(true);
  log::Info("storage-capacity controller started",
            {{"driver", driver_},
             {"namespace", options_.ns},
             {"pollInterval", std::to_string(options_.poll_interval.count()) + "ms"},
             {"immediateBinding", options_.immediate_binding ? "true" : "false"}});
  return Status::Ok();
}

void CapacityController::Stop() {
  if (stopped_.exchange(true)) return;
  cv_.notify_all();
  if (loop_.joinable()) loop_.join();
  for (auto* inf : {csinodes_.get(), nodes_.get(), classes_.get(), volumes_.get(), pods_.get(),
                    capacities_.get()}) {
    if (inf != nullptr) inf->Stop();
  }
}

void CapacityController::Trigger(bool immediately) {
  std::lock_guard<std::mutex> lock(mu_);
  const auto now = std::chrono::steady_clock::now();
  if (immediately) {
    triggered_ = true;
    trigger_at_ = now;
  } else if (!triggered_) {
    // Debounce: the first change starts the timer, later ones ride along.
    triggered_ = true;
    trigger_at_ = now + options_.debounce;
  }
  cv_.notify_all();
}

void CapacityController::MarkStale(const std::function<bool(const CapacityItem&)>& which) {
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& [item, result] : known_) {
    if (which(item)) stale_.insert(item);
  }
}

void CapacityController::RefreshAll() {
  std::lock_guard<std::mutex> lock(mu_);
  all_stale_ = true;
}

void CapacityController::ObjectSeen(const ObjectPtr& object) {
  std::lock_guard<std::mutex> lock(mu_);
  objects_[Field(*object, "metadata", "name")] = object;
}

void CapacityController::ObjectGone(const ObjectPtr& object) {
  std::lock_guard<std::mutex> lock(mu_);
  objects_.erase(Field(*object, "metadata", "name"));
}

void CapacityController::Loop() {
  auto next_poll = std::chrono::steady_clock::now() + options_.poll_interval;
  int failures = 0;
  while (!stopped_) {
    {
      std::unique_lock<std::mutex> lock(mu_);
      while (!stopped_) {
        const auto now = std::chrono::steady_clock::now();
        if (now >= next_poll) {
          all_stale_ = true;
          next_poll = now + options_.poll_interval;
          break;
        }
        if (triggered_ && now >= trigger_at_) break;
        auto until = next_poll;
        if (triggered_) until = std::min(until, trigger_at_);
        cv_.wait_until(lock, until);
      }
      triggered_ = false;
    }
    if (stopped_) break;
    const Status s = Sync();
    if (s.ok()) {
      failures = 0;
      continue;
    }
    log::Error("storage-capacity sync failed; will retry", s);
    // Retry with backoff (0.5 s .. 30 s), unless something else triggers first.
    const auto delay = std::chrono::milliseconds(std::min(30000, 500 << std::min(failures, 6)));
    ++failures;
    std::lock_guard<std::mutex> lock(mu_);
    if (!triggered_) {
      triggered_ = true;
      trigger_at_ = std::chrono::steady_clock::now() + delay;
    }
  }
}

std::vector<CapacityItem> CapacityController::WantedItems() {
  std::map<std::string, ObjectPtr> nodes;
  for (const auto& node : nodes_->store().List())
    nodes[Field(*node, "metadata", "name")] = node;
  const auto segments = ComputeSegments(csinodes_->store().List(), nodes, driver_);
  std::vector<CapacityItem> items;
  for (const auto& sc : classes_->store().List()) {
    if (!ClassWanted(*sc, driver_, options_.immediate_binding)) continue;
    for (const auto& segment : segments) {
      items.push_back({.segment = segment, .storage_class = Field(*sc, "metadata", "name")});
    }
  }
  std::sort(items.begin(), items.end());
  return items;
}

std::set<std::string> CapacityController::UnreachableNodes() {
  std::lock_guard<std::mutex> lock(mu_);
  std::set<std::string> out;
  for (const auto& [node, error] : unreachable_)
    out.insert(node);
  return out;
}

void CapacityController::NodeAnswered(const std::string& node, const Status& status) {
  // Only a transport failure means "cannot be reached"; a driver that answers with an error is
  // reachable (its error is counted, and logged by the sync).
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
  write_limit_.Wait();
  writes_++;
  return call();
}

Status CapacityController::Sync() {
  if (disabled_ || !capacities_) return Status::Ok();
  std::lock_guard<std::mutex> sync_lock(sync_mu_);
  const std::vector<CapacityItem> items = WantedItems();

  // 1. Capacities that are due.
  std::vector<CapacityItem> due;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& item : items) {
      if (all_stale_ || stale_.count(item) > 0 || known_.count(item) == 0) due.push_back(item);
    }
    all_stale_ = false;
    stale_.clear();
    // Forget items that are no longer wanted.
    for (auto it = known_.begin(); it != known_.end();) {
      it = std::binary_search(items.begin(), items.end(), it->first) ? std::next(it)
                                                                     : known_.erase(it);
    }
  }
  Status first_error;
  std::map<std::string, Object> class_params;
  for (const auto& sc : classes_->store().List()) {
    Object params = Object::object();
    const Object* p = Member(*sc, "parameters");
    if (p != nullptr && p->is_object()) params = *p;
    class_params[Field(*sc, "metadata", "name")] = params;
  }
  for (const auto& item : due) {
    std::map<std::string, std::string> params;
    for (const auto& [k, v] : class_params[item.storage_class].items()) {
      if (v.is_string()) params[k] = v.get<std::string>();
    }
    std::vector<std::string> in_segment;
    for (const auto& node : nodes_->store().List()) {
      const Object* md = Member(*node, "metadata");
      const Object* labels = md ? Member(*md, "labels") : nullptr;
      bool match = true;
      for (const auto& [k, v] : item.segment) {
        const Object* value = labels ? Member(*labels, k.c_str()) : nullptr;
        match = match && value != nullptr && value->is_string() && value->get<std::string>() == v;
      }
      if (match) in_segment.push_back(Field(*node, "metadata", "name"));
    }
    std::sort(in_segment.begin(), in_segment.end());
    const std::string node = source_->NodeFor(in_segment);
    const auto start = std::chrono::steady_clock::now();
    auto result = source_->GetCapacity(item.segment, params, in_segment);
    latency_.With({}).Observe(
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
    if (!node.empty()) NodeAnswered(node, result.status());
    std::lock_guard<std::mutex> lock(mu_);
    if (result.ok()) {
      known_[item] = *result;
    } else {
      errors_.With({std::string(CodeName(result.status().code()))}).Inc();
      stale_.insert(item);  // retried with the next sync; the old value (if any) stays
      if (first_error.ok()) {
        first_error = result.status().WithContext("GetCapacity for class " + item.storage_class +
                                                  ", segment " + DescribeSegment(item.segment));
      }
    }
  }

  // 2. The objects.
  std::map<CapacityItem, CapacityResult> known;
  std::map<std::string, ObjectPtr> objects;
  {
    std::lock_guard<std::mutex> lock(mu_);
    known = known_;
    objects = objects_;
  }
  std::map<CapacityItem, std::vector<ObjectPtr>> by_item;
  std::vector<ObjectPtr> obsolete;
  for (const auto& [name, object] : objects) {
    auto item = ItemOf(*object);
    if (item && std::binary_search(items.begin(), items.end(), *item)) {
      by_item[*item].push_back(object);  // by name order: the first one is kept
    } else {
      obsolete.push_back(object);
    }
  }
  for (auto& [item, list] : by_item) {
    for (size_t i = 1; i < list.size(); ++i)
      obsolete.push_back(list[i]);  // duplicates
  }
  int current = 0;
  for (const auto& item : items) {
    auto have = by_item.find(item);
    auto value = known.find(item);
    if (have != by_item.end()) ++current;
    if (value == known.end()) continue;  // never answered: nothing to publish (not even zero)
    published_.With({DescribeSegment(item.segment), item.storage_class})
        .Set(static_cast<double>(value->second.available));
    Status s;
    if (have == by_item.end()) {
      s = Write([&] {
        auto created =
            client_->Create(kCSIStorageCapacities, options_.ns,
                            DesiredCapacityObject(item, value->second, options_, driver_));
        if (!created.ok()) return created.status();
        writes_metric_.With({"create"}).Inc();
        ObjectSeen(*created);
        log::Info("created CSIStorageCapacity", {{"name", Field(**created, "metadata", "name")},
                                                 {"storageClass", item.storage_class},
                                                 {"segment", DescribeSegment(item.segment)},
                                                 {"capacity", Field(**created, "capacity")}});
        return Status::Ok();
      });
    } else if (!CapacityUpToDate(*have->second.front(), value->second)) {
      Object updated = *have->second.front();  // a copy: the cached object stays untouched
      updated["capacity"] = FormatBinaryQuantity(value->second.available);
      if (value->second.maximum_volume_size) {
        updated["maximumVolumeSize"] = FormatBinaryQuantity(*value->second.maximum_volume_size);
      } else {
        updated.erase("maximumVolumeSize");
      }
      s = Write([&] {
        auto result = client_->Update(kCSIStorageCapacities, options_.ns, updated);
        if (!result.ok()) return result.status();
        writes_metric_.With({"update"}).Inc();
        ObjectSeen(*result);
        log::Info("updated CSIStorageCapacity", {{"name", Field(**result, "metadata", "name")},
                                                 {"capacity", Field(**result, "capacity")}});
        return Status::Ok();
      });
    }
    if (!s.ok() && first_error.ok()) first_error = s;
  }
  for (const auto& object : obsolete) {
    const std::string name = Field(*object, "metadata", "name");
    const Status s = Write([&] {
      Status d = client_->Delete(kCSIStorageCapacities, options_.ns, name,
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
  // Published gauges of items that are gone.
  {
    std::lock_guard<std::mutex> lock(mu_);
    std::set<std::pair<std::string, std::string>> now;
    for (const auto& [item, result] : known)
      now.emplace(DescribeSegment(item.segment), item.storage_class);
    for (const auto& old : published_labels_) {
      if (now.count(old) == 0) published_.Remove({old.first, old.second});
    }
    published_labels_ = std::move(now);
  }
  // Nodes that are gone are no longer reported as unreachable.
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto it = unreachable_.begin(); it != unreachable_.end();) {
      it = nodes_->store().Get(it->first) ? std::next(it) : unreachable_.erase(it);
    }
    unreachable_metric_.With({}).Set(static_cast<double>(unreachable_.size()));
  }
  goal_.With({}).Set(static_cast<double>(items.size()));
  current_.With({}).Set(current);
  obsolete_.With({}).Set(static_cast<double>(obsolete.size()));
  return first_error;
}

}  // namespace ephemera::controllers
