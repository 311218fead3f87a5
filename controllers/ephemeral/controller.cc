#include "controllers/ephemeral/controller.h"

#include "apiclient/errors.h"
#include "common/log.h"
#include "common/quantity.h"

namespace ephemera::controllers {
namespace {

using apiclient::ArrayField;
using apiclient::BoolField;
using apiclient::Field;
using apiclient::Object;
using apiclient::ObjectPtr;
using apiclient::resources::kPersistentVolumeClaims;
using apiclient::resources::kPods;
using apiclient::resources::kStorageClasses;

constexpr char kClaimIndex[] = "ephemeral-claims";
constexpr char kAnnStorageProvisioner[] = "volume.kubernetes.io/storage-provisioner";
constexpr char kAnnBetaStorageProvisioner[] = "volume.beta.kubernetes.io/storage-provisioner";

bool IsEphemeral(const Object& volume) {
  return volume.is_object() && volume.contains("ephemeral") && volume["ephemeral"].is_object() &&
         volume["ephemeral"].contains("volumeClaimTemplate");
}

const Object& Volumes(const Object& pod) {
  static const Object kNone = Object::array();
  if (!pod.contains("spec") || !pod["spec"].is_object()) return kNone;
  auto it = pod["spec"].find("volumes");
  return it != pod["spec"].end() && it->is_array() ? *it : kNone;
}

std::vector<std::string> ClaimKeys(const Object& pod) {
  std::vector<std::string> keys;
  const std::string ns = Field(pod, "metadata", "namespace");
  const std::string name = Field(pod, "metadata", "name");
  for (const auto& volume : Volumes(pod)) {
    if (IsEphemeral(volume)) {
      keys.push_back(ns + "/" + EphemeralClaimName(name, Field(volume, "name")));
    }
  }
  return keys;
}

bool IsTerminated(const Object& pod) {
  const std::string phase = Field(pod, "status", "phase");
  return phase == "Succeeded" || phase == "Failed";
}

bool BeingDeleted(const Object& object) {
  return object.contains("metadata") && object["metadata"].contains("deletionTimestamp") &&
         !object["metadata"]["deletionTimestamp"].is_null();
}

// The pod that controls `pvc`, as "name (uid)", or "" when none does.
std::string ControllerName(const Object& pvc) {
  for (const auto& ref : ArrayField(pvc, "metadata", "ownerReferences")) {
    if (BoolField(ref, "controller")) return Field(ref, "kind") + " " + Field(ref, "name");
  }
  return "";
}

Object CopyKeys(const Object& from, std::initializer_list<const char*> keys) {
  Object out = Object::object();
  for (const char* key : keys) {
    auto it = from.find(key);
    if (it != from.end()) out[key] = *it;
  }
  return out;
}

// What TrimPod and TrimClaim keep, as decode filters: the rest of a pod is never built.
std::shared_ptr<const apiclient::FieldFilter> PodFilter() {
  using apiclient::FieldFilter;
  const FieldFilter all;
  return std::make_shared<const FieldFilter>(FieldFilter{{"apiVersion", all},
                                                         {"kind", all},
                                                         {"metadata",
                                                          {{"name", all},
                                                           {"namespace", all},
                                                           {"uid", all},
                                                           {"resourceVersion", all},
                                                           {"deletionTimestamp", all},
                                                           {"creationTimestamp", all}}},
                                                         {"spec", {{"volumes", all}}},
                                                         {"status", {{"phase", all}}}});
}

std::shared_ptr<const apiclient::FieldFilter> ClaimFilter() {
  using apiclient::FieldFilter;
  const FieldFilter all;
  return std::make_shared<const FieldFilter>(FieldFilter{{"apiVersion", all},
                                                         {"kind", all},
                                                         {"metadata",
                                                          {{"name", all},
                                                           {"namespace", all},
                                                           {"uid", all},
                                                           {"resourceVersion", all},
                                                           {"ownerReferences", all},
                                                           {"deletionTimestamp", all}}}});
}

// What the controller reads of a StorageClass.
std::shared_ptr<const apiclient::FieldFilter> ClassFilter() {
  using apiclient::FieldFilter;
  const FieldFilter all;
  return std::make_shared<const FieldFilter>(
      FieldFilter{{"apiVersion", all},
                  {"kind", all},
                  {"metadata", {{"name", all}, {"resourceVersion", all}}},
                  {"provisioner", all},
                  {"volumeBindingMode", all}});
}

}  // namespace

std::string ProvisionerAnnotationFor(const Object& storage_class) {
  if (Field(storage_class, "volumeBindingMode") != "WaitForFirstConsumer") return "";
  std::string provisioner = Field(storage_class, "provisioner");
  // In-tree plugins: the PV controller decides (and may rename them for CSI migration).
  if (provisioner.rfind("kubernetes.io/", 0) == 0) return "";
  return provisioner;
}

void AnnotateProvisioner(Object& claim, const std::string& provisioner) {
  if (provisioner.empty()) return;
  if (!Field(claim, "metadata", "annotations", kAnnStorageProvisioner).empty() ||
      !Field(claim, "metadata", "annotations", kAnnBetaStorageProvisioner).empty()) {
    return;  // The template names one: the PV controller settles it, as without us.
  }
  Object& annotations = claim["metadata"]["annotations"];
  if (!annotations.is_object()) annotations = Object::object();
  annotations[kAnnStorageProvisioner] = provisioner;
  annotations[kAnnBetaStorageProvisioner] = provisioner;
}

std::string EphemeralClaimName(const std::string& pod, const std::string& volume) {
  return pod + "-" + volume;
}

Object DesiredClaim(const Object& pod, const Object& volume) {
  const Object& tmpl = volume["ephemeral"]["volumeClaimTemplate"];
  Object claim = {{"apiVersion", "v1"}, {"kind", "PersistentVolumeClaim"}};
  Object metadata = {
      {"name", EphemeralClaimName(Field(pod, "metadata", "name"), Field(volume, "name"))},
      {"namespace", Field(pod, "metadata", "namespace")},
      {"ownerReferences",
       {{{"apiVersion", "v1"},
         {"kind", "Pod"},
         {"name", Field(pod, "metadata", "name")},
         {"uid", Field(pod, "metadata", "uid")},
         {"controller", true},
         {"blockOwnerDeletion", true}}}}};
  if (tmpl.contains("metadata") && tmpl["metadata"].is_object()) {
    for (const char* key : {"labels", "annotations"}) {
      auto it = tmpl["metadata"].find(key);
      if (it != tmpl["metadata"].end() && it->is_object() && !it->empty()) metadata[key] = *it;
    }
  }
  claim["metadata"] = std::move(metadata);
  claim["spec"] = tmpl.contains("spec") ? tmpl["spec"] : Object::object();
  return claim;
}

bool IsControlledBy(const Object& pvc, const std::string& pod_uid) {
  if (pod_uid.empty()) return false;
  for (const auto& ref : ArrayField(pvc, "metadata", "ownerReferences")) {
    if (BoolField(ref, "controller") && Field(ref, "uid") == pod_uid) return true;
  }
  return false;
}

Object TrimPod(Object pod) {
  Object out = CopyKeys(pod, {"apiVersion", "kind"});
  if (pod.contains("metadata")) {
    out["metadata"] = CopyKeys(pod["metadata"], {"name", "namespace", "uid", "resourceVersion",
                                                 "deletionTimestamp", "creationTimestamp"});
  }
  // `pod` is ours: move the volumes we keep out of it instead of copying them.
  Object volumes = Object::array();
  auto spec = pod.find("spec");
  if (spec != pod.end() && spec->is_object()) {
    auto all = spec->find("volumes");
    if (all != spec->end() && all->is_array()) {
      for (auto& volume : *all) {
        if (IsEphemeral(volume)) volumes.push_back(std::move(volume));
      }
    }
  }
  if (!volumes.empty()) out["spec"]["volumes"] = std::move(volumes);
  const std::string phase = Field(pod, "status", "phase");
  if (!phase.empty()) out["status"]["phase"] = phase;
  return out;
}

Object TrimClaim(Object pvc) {
  Object out = CopyKeys(pvc, {"apiVersion", "kind"});
  if (pvc.contains("metadata")) {
    out["metadata"] = CopyKeys(pvc["metadata"], {"name", "namespace", "uid", "resourceVersion",
                                                 "ownerReferences", "deletionTimestamp"});
  }
  return out;
}

EphemeralVolumeController::EphemeralVolumeController(
    apiclient::ApiClientPtr client, std::shared_ptr<apiclient::EventRecorder> events,
    apiclient::MetricsRegistry& metrics, EphemeralVolumeOptions options)
    : client_(std::move(client)),
      events_(std::move(events)),
      options_(std::move(options)),
      clock_(options_.clock != nullptr ? *options_.clock : apiclient::SystemClock()),
      creates_(metrics
                   .Counter("ephemeral_volume_controller_create_total",
                            "Number of PersistentVolumeClaims created for ephemeral volumes.")
                   .With({})),
      create_failures_(
          metrics
              .Counter("ephemeral_volume_controller_create_failures_total",
                       "Number of failed attempts to create PersistentVolumeClaims for "
                       "ephemeral volumes.")
              .With({})),
      releases_(metrics
                    .Counter("ephemeral_volume_controller_release_total",
                             "Number of PersistentVolumeClaims of terminated pods deleted "
                             "(--release-terminated-pods).")
                    .With({})),
      paced_(metrics
                 .Counter("ephemeral_volume_controller_claims_paced_total",
                          "Number of times a PersistentVolumeClaim was held back because the "
                          "claims created just before it are not yet counted in the published "
                          "storage capacity (claim pacing).")
                 .With({})),
      create_latency_(metrics
                          .Histogram("ephemeral_volume_controller_create_latency_seconds",
                                     "Time from a pod being seen to the creation of its "
                                     "PersistentVolumeClaim.")
                          .With({})) {
  auto& depth = metrics.Gauge("workqueue_depth", "Current depth of the work queue.", {"name"});
  auto& adds = metrics.Counter("workqueue_adds_total", "Keys added to the work queue.", {"name"});
  auto& retries =
      metrics.Counter("workqueue_retries_total", "Keys re-added after an error.", {"name"});
  auto& latency =
      metrics.Histogram("workqueue_queue_duration_seconds",
                        "Time a key waits in the queue before a worker takes it.", {"name"});
  auto& work = metrics.Histogram("workqueue_work_duration_seconds",
                                 "Time a worker spends on one key.", {"name"});
  const std::vector<std::string> name = {"ephemeral_volume"};
  queue_ = std::make_unique<apiclient::WorkQueue>(
      apiclient::WorkQueueOptions{.name = "ephemeral_volume",
                                  .base_delay = std::chrono::milliseconds(5),
                                  .max_delay = std::chrono::seconds(1000),
                                  .qps = 10,
                                  .burst = 100},
      clock_,
      apiclient::WorkQueueObserver{
          .on_depth = [&d = depth.With(name)](size_t n) { d.Set(static_cast<double>(n)); },
          .on_add = [&a = adds.With(name)] { a.Inc(); },
          .on_retry = [&r = retries.With(name)] { r.Inc(); },
          .on_queue_latency = [&l = latency.With(name)](double s) { l.Observe(s); },
          .on_work_duration = [&w = work.With(name)](double s) { w.Observe(s); }});

  pods_ = std::make_unique<apiclient::Informer>(
      client_, apiclient::InformerOptions{.resource = kPods,
                                          .indexers = {{kClaimIndex, ClaimKeys}},
                                          .transform = TrimPod,
                                          .decode_filter = PodFilter()});
  claims_ = std::make_unique<apiclient::Informer>(
      client_, apiclient::InformerOptions{.resource = kPersistentVolumeClaims,
                                          .transform = TrimClaim,
                                          .decode_filter = ClaimFilter()});

  if (options_.annotate_storage_provisioner) {
    classes_ = std::make_unique<apiclient::Informer>(
        client_,
        apiclient::InformerOptions{.resource = kStorageClasses, .decode_filter = ClassFilter()});
  }

  pods_->AddHandlers({.on_add = [this](const ObjectPtr& pod) { EnqueuePod(pod); },
                      .on_update =
                          [this](const ObjectPtr& old_pod, const ObjectPtr& pod) {
                            // The pod spec is immutable: only a pod that just terminated is news,
                            // and only when its volumes are to be released.
                            if (options_.release_terminated_pods && IsTerminated(*pod) &&
                                !IsTerminated(*old_pod)) {
                              EnqueuePod(pod);
                            }
                          },
                      .on_delete =
                          [this](const ObjectPtr& pod) {
                            std::lock_guard<std::mutex> lock(seen_mu_);
                            seen_.erase(apiclient::Store::KeyOf(*pod));
                          }});
  claims_->AddHandlers({.on_add =
                            [this](const ObjectPtr& pvc) {
                              // A pod that finished before its PVC reached this cache was synced
                              // without it: the PVC is released now.
                              if (!options_.release_terminated_pods) return;
                              for (const auto& pod : pods_->store().ByIndex(
                                       kClaimIndex, apiclient::Store::KeyOf(*pvc))) {
                                if (IsTerminated(*pod)) queue_->Add(apiclient::Store::KeyOf(*pod));
                              }
                            },
                        .on_delete =
                            [this](const ObjectPtr& pvc) {
                              // A PVC deleted while its pod lives is recreated: find the pods that
                              // want it.
                              for (const auto& pod : pods_->store().ByIndex(
                                       kClaimIndex, apiclient::Store::KeyOf(*pvc))) {
                                queue_->Add(apiclient::Store::KeyOf(*pod));
                              }
                            }});
}

EphemeralVolumeController::~EphemeralVolumeController() {
  Stop();
}

void EphemeralVolumeController::EnqueuePod(const ObjectPtr& pod) {
  if (Volumes(*pod).empty()) return;  // Trimmed: only ephemeral volumes are left.
  const std::string key = apiclient::Store::KeyOf(*pod);
  {
    std::lock_guard<std::mutex> lock(seen_mu_);
    seen_.emplace(key, clock_.Now());
  }
  queue_->Add(key);
}

Status EphemeralVolumeController::Start(std::stop_token stop) {
  std::vector<const apiclient::Informer*> informers = {claims_.get(), pods_.get()};
  claims_->Start();
  pods_->Start();
  if (classes_) {
    classes_->Start();
    informers.push_back(classes_.get());
  }
  EPHEMERA_RETURN_IF_ERROR(apiclient::WaitForCacheSync(
      stop, std::chrono::duration_cast<std::chrono::milliseconds>(options_.cache_sync_timeout),
      informers));
  for (int i = 0; i < std::max(1, options_.workers); ++i) {
    workers_.emplace_back([this] { Worker(); });
  }
  log::Info(
      "ephemeral-volume controller started",
      {{"workers", std::to_string(options_.workers)},
       {"releaseTerminatedPods", options_.release_terminated_pods ? "true" : "false"},
       {"annotateStorageProvisioner", options_.annotate_storage_provisioner ? "true" : "false"}});
  return Status::Ok();
}

void EphemeralVolumeController::Stop() {
  if (stopped_.exchange(true)) return;
  // No wake of the admission reaches this controller's queue any more.
  if (options_.admission) options_.admission->CancelWakes();
  queue_->ShutDown();
  for (auto& t : workers_)
    t.join();
  workers_.clear();
  pods_->Stop();
  claims_->Stop();
  if (classes_) classes_->Stop();
}

bool EphemeralVolumeController::Synced() const {
  return pods_->HasSynced() && claims_->HasSynced() && (!classes_ || classes_->HasSynced());
}

void EphemeralVolumeController::Worker() {
  std::string key;
  while (queue_->Get(&key)) {
    const Status status = Sync(key);
    if (status.ok()) {
      queue_->Forget(key);
    } else {
      if (log::V(2) || queue_->NumRequeues(key) == 0) {
        log::Error("syncing pod failed; will retry", status, {{"pod", key}});
      }
      queue_->AddRateLimited(key);
    }
    queue_->Done(key);
  }
}

void EphemeralVolumeController::Warn(const Object& pod, const std::string& reason,
                                     const std::string& note) {
  if (events_) events_->Record(pod, "Warning", reason, "Provisioning", note);
}

Status EphemeralVolumeController::Sync(const std::string& key) {
  const ObjectPtr pod = pods_->store().Get(key);
  if (pod == nullptr) {
    std::lock_guard<std::mutex> lock(seen_mu_);
    seen_.erase(key);
    // Claims of the pod held back by pacing ("<ns>/<pod>-<volume>"): never created now.
    paced_claims_.erase(paced_claims_.lower_bound(key + "-"), paced_claims_.lower_bound(key + "."));
    return Status::Ok();
  }
  if (BeingDeleted(*pod)) return Status::Ok();  // Its PVCs go with it.
  if (options_.release_terminated_pods && IsTerminated(*pod)) return ReleaseClaims(*pod);
  Status first_error;
  bool paced = false;
  for (const auto& volume : Volumes(*pod)) {
    if (!IsEphemeral(volume)) continue;
    Status s = EnsureClaim(*pod, volume, &paced);
    if (!s.ok() && first_error.ok()) first_error = std::move(s);
  }
  if (first_error.ok() && !paced) {
    std::lock_guard<std::mutex> lock(seen_mu_);
    seen_.erase(key);
  }
  return first_error;
}

Status EphemeralVolumeController::EnsureClaim(const Object& pod, const Object& volume,
                                              bool* paced) {
  const std::string ns = Field(pod, "metadata", "namespace");
  const std::string pod_name = Field(pod, "metadata", "name");
  const std::string pod_uid = Field(pod, "metadata", "uid");
  const std::string volume_name = Field(volume, "name");
  const std::string claim = EphemeralClaimName(pod_name, volume_name);
  auto collision = [&](const Object& existing) {
    std::string note = "ephemeral volume " + volume_name + ": PVC " + ns + "/" + claim +
                       " was not created for pod " + ns + "/" + pod_name + " (pod is not owner)";
    const std::string owner = ControllerName(existing);
    note += owner.empty() ? "; it has no controller" : "; it belongs to " + owner;
    Warn(pod, "FailedBinding", note);
    return Status::FailedPrecondition(note);
  };

  if (const ObjectPtr cached = claims_->store().Get(ns + "/" + claim)) {
    if (IsControlledBy(*cached, pod_uid)) {
      if (BeingDeleted(*cached)) {
        // Deleted while the pod lives: once it is gone, the delete event brings the pod back.
        return Status::Unavailable("PVC " + ns + "/" + claim + " is being deleted");
      }
      return Status::Ok();
    }
    return collision(*cached);
  }

  Object desired = DesiredClaim(pod, volume);
  if (classes_) {
    const std::string class_name = Field(desired, "spec", "storageClassName");
    if (!class_name.empty()) {
      if (const ObjectPtr storage_class = classes_->store().Get(class_name)) {
        AnnotateProvisioner(desired, ProvisionerAnnotationFor(*storage_class));
      }
    }
  }
  // Claim pacing: the claim key the admission counts, until the claim is created.
  std::string admitted;
  if (options_.admission) {
    const std::string storage_class = Field(desired, "spec", "storageClassName");
    auto bytes = ParseByteQuantity(Field(desired, "spec", "resources", "requests", "storage"));
    if (!storage_class.empty() && bytes.ok() && *bytes > 0) {
      const std::string pod_key = ns + "/" + pod_name;
      const std::string claim_key = ns + "/" + claim;
      if (!options_.admission->Admit(claim_key, storage_class, *bytes,
                                     [this, pod_key] { queue_->Add(pod_key); })) {
        paced_.Inc();
        *paced = true;
        bool first = false;
        {
          std::lock_guard<std::mutex> lock(seen_mu_);
          first = paced_claims_.insert(claim_key).second;
        }
        if (first) {
          // Once per claim: why the pod waits for its claim.
          log::Info(
              "claim held back until the claims created before it are counted in the "
              "published capacity",
              {{"pod", pod_key}, {"claim", claim}, {"storageClass", storage_class}});
          if (events_) {
            events_->Record(pod, "Normal", "ClaimPaced", "Provisioning",
                            "ephemeral volume " + volume_name + ": PVC " + claim_key +
                                " (StorageClass " + storage_class +
                                ") waits until the claims created before it are counted in the "
                                "published storage capacity (claim pacing)");
          }
        }
        queue_->AddAfter(pod_key, options_.admission_retry);
        return Status::Ok();
      }
      admitted = claim_key;
    }
  }
  Status created = client_->CreateOnly(kPersistentVolumeClaims, ns, desired);
  if (!admitted.empty()) {
    std::lock_guard<std::mutex> lock(seen_mu_);
    paced_claims_.erase(admitted);
  }
  if (created.ok()) {
    creates_.Inc();
    {
      std::lock_guard<std::mutex> lock(seen_mu_);
      auto it = seen_.find(ns + "/" + pod_name);
      if (it != seen_.end()) {
        create_latency_.Observe(std::chrono::duration<double>(clock_.Now() - it->second).count());
      }
    }
    if (events_) {
      events_->Record(pod, "Normal", "ProvisioningClaimCreated", "Provisioning",
                      "ephemeral volume " + volume_name + ": created PVC " + ns + "/" + claim);
    }
    return Status::Ok();
  }
  if (apiclient::IsAlreadyExists(created)) {
    // Our cache is behind, or another controller (kube-controller-manager's) was faster.
    auto existing = client_->Get(kPersistentVolumeClaims, ns, claim);
    if (existing.ok() && IsControlledBy(**existing, pod_uid)) return Status::Ok();
    if (existing.ok()) return collision(**existing);
    return existing.status();
  }
  if (!admitted.empty()) options_.admission->Abandon(admitted);
  create_failures_.Inc();
  Warn(pod, "FailedCreate",
       "ephemeral volume " + volume_name + ": creating PVC " + ns + "/" + claim +
           " failed: " + created.message());
  return created;
}

Status EphemeralVolumeController::ReleaseClaims(const Object& pod) {
  const std::string ns = Field(pod, "metadata", "namespace");
  const std::string pod_uid = Field(pod, "metadata", "uid");
  Status first_error;
  for (const auto& volume : Volumes(pod)) {
    if (!IsEphemeral(volume)) continue;
    const std::string claim =
        EphemeralClaimName(Field(pod, "metadata", "name"), Field(volume, "name"));
    std::string key = ns;
    key += '/';
    key += claim;
    const ObjectPtr cached = claims_->store().Get(key);
    if (cached == nullptr || !IsControlledBy(*cached, pod_uid) || BeingDeleted(*cached)) continue;
    const Status s = client_->Delete(kPersistentVolumeClaims, ns, claim,
                                     {.precondition_uid = Field(*cached, "metadata", "uid"),
                                      .propagation_policy = "Background"});
    if (s.ok() || apiclient::IsNotFound(s)) {
      releases_.Inc();
      if (events_) {
        std::string message = "pod is ";
        message += Field(pod, "status", "phase");
        message += ": deleted PVC ";
        message += key;
        message += " of ephemeral volume ";
        message += Field(volume, "name");
        message +=
            " (its storage is freed when PVC protection lets it go: "
            "kube-controller-manager keeps it while the pod exists)";
        events_->Record(pod, "Normal", "ReleasedClaim", "Release", message);
      }
    } else if (first_error.ok()) {
      first_error = s;
    }
  }
  return first_error;
}

}  // namespace ephemera::controllers
