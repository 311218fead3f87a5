// The ephemeral-volume controller: for every pod volume with `ephemeral.volumeClaimTemplate`, a
// PersistentVolumeClaim "<pod>-<volume>" in the pod's namespace, owned by the pod, so that the
// garbage collector deletes it with the pod.
//
// It matches kube-controller-manager's ephemeral volume controller point by point (REFERENCE.md):
// same PVC name, labels, annotations, spec and owner reference; pods being deleted are skipped; a
// PVC of that name that the pod does not control is never touched (Warning Event FailedBinding,
// retry with backoff); a PVC deleted while its pod lives is recreated. Beyond it: a Normal Event
// when a PVC is created, a Warning naming the owner of a colliding PVC, a latency histogram,
// opt-in release of the PVCs of pods that will never run again (phase Succeeded or Failed), and
// the provisioner annotation set at creation where it is already known (see below).
//
// The provisioner annotation (--annotate-storage-provisioner, on by default): a claim of a
// WaitForFirstConsumer class whose provisioner is an external (CSI) one is created with
// `volume.kubernetes.io/storage-provisioner` (and its beta twin) naming that provisioner: what
// kube-controller-manager's PV controller would write on it once kube-scheduler has chosen a node.
// The external provisioner acts only on claims that carry it, so without it every claim waits for
// the PV controller's next sync after placement — one worker for the whole cluster, at that
// controller's API rate limit — and costs it one more write. With it, provisioning starts when the
// node is chosen, and the PV controller finds nothing to write (it writes only when the value
// differs). Left alone: classes with Immediate binding (the PV controller first looks for an
// existing volume), in-tree provisioners ("kubernetes.io/...": CSI migration renames them),
// claims without an explicit class, classes not (yet) in the cache, and templates that set the
// annotation themselves.
//
// The sync is level-based: it reads the pod and PVCs from the informers' caches, makes the API
// match, and returns an error for anything worth retrying. It never modifies a cached object.
//
// Thread safety: Start() and Stop() from the owner (the Manager); Sync() from any thread.
#pragma once

#include <atomic>
#include <chrono>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "apiclient/client.h"
#include "apiclient/events.h"
#include "apiclient/informer.h"
#include "apiclient/manager.h"
#include "apiclient/metrics.h"
#include "apiclient/workqueue.h"
#include "controllers/claim_admission.h"

namespace ephemera::controllers {

struct EphemeralVolumeOptions {
  int workers = 5;                       // --concurrent-ephemeralvolume-syncs
  bool release_terminated_pods = false;  // --release-terminated-pods
  std::chrono::seconds cache_sync_timeout{120};
  // The clock of the work queue, the informers and the latency metric; null = the real one.
  const apiclient::Clock* clock = nullptr;
  // Claim pacing (claim_admission.h; the storage-capacity controller of the same process, with
  // --capacity-claim-pacing): a claim is created only when admitted. Null = never paced.
  std::shared_ptr<ClaimAdmission> admission;
  // A pod whose claim was not admitted is synced again after this, if not woken before.
  std::chrono::milliseconds admission_retry{1000};
  // --annotate-storage-provisioner: the provisioner annotation at creation (see above). Needs
  // list/watch of StorageClasses.
  bool annotate_storage_provisioner = true;
};

// The name of the PVC of a pod's ephemeral volume: "<pod>-<volume>".
std::string EphemeralClaimName(const std::string& pod, const std::string& volume);

// The PVC that the ephemeral volume `volume` (an entry of pod.spec.volumes) of `pod` needs.
apiclient::Object DesiredClaim(const apiclient::Object& pod, const apiclient::Object& volume);

// The provisioner to name in a claim of `storage_class` at its creation, or "" for none: the
// class's provisioner when it binds WaitForFirstConsumer and is not an in-tree one.
std::string ProvisionerAnnotationFor(const apiclient::Object& storage_class);

// Sets the provisioner annotations of `claim` (and its beta twin) to `provisioner`, unless it is
// empty or the claim names a provisioner already.
void AnnotateProvisioner(apiclient::Object& claim, const std::string& provisioner);

// True when `pvc` has a controller owner reference to the pod with this uid.
bool IsControlledBy(const apiclient::Object& pvc, const std::string& pod_uid);

// What the controller needs of a pod / a PVC: everything else is dropped before caching.
apiclient::Object TrimPod(apiclient::Object pod);
apiclient::Object TrimClaim(apiclient::Object pvc);

class EphemeralVolumeController final : public apiclient::Runnable {
 public:
  EphemeralVolumeController(apiclient::ApiClientPtr client,
                            std::shared_ptr<apiclient::EventRecorder> events,
                            apiclient::MetricsRegistry& metrics, EphemeralVolumeOptions options);
  ~EphemeralVolumeController() override;

  // Runnable: leader-only. Start() starts the informers and, once their caches are synced, the
  // workers (DEADLINE_EXCEEDED after options.cache_sync_timeout).
  std::string Name() const override { return "ephemeral-volume"; }
  Status Start(std::stop_token stop) override;
  void Stop() override;
  bool Synced() const;

  // One reconciliation of the pod with key "namespace/name" (public for tests).
  Status Sync(const std::string& key);

 private:
  void Worker();
  void EnqueuePod(const apiclient::ObjectPtr& pod);
  // *paced: the claim was not admitted yet (the pod is synced again later).
  Status EnsureClaim(const apiclient::Object& pod, const apiclient::Object& volume, bool* paced);
  Status ReleaseClaims(const apiclient::Object& pod);
  void Warn(const apiclient::Object& pod, const std::string& reason, const std::string& note);

  const apiclient::ApiClientPtr client_;
  const std::shared_ptr<apiclient::EventRecorder> events_;
  const EphemeralVolumeOptions options_;
  const apiclient::Clock& clock_;
  apiclient::CounterCell& creates_;
  apiclient::CounterCell& create_failures_;
  apiclient::CounterCell& releases_;
  apiclient::CounterCell& paced_;
  apiclient::HistogramCell& create_latency_;
  std::unique_ptr<apiclient::WorkQueue> queue_;
  std::unique_ptr<apiclient::Informer> pods_;
  std::unique_ptr<apiclient::Informer> claims_;
  std::unique_ptr<apiclient::Informer> classes_;  // null without annotate_storage_provisioner
  std::vector<std::thread> workers_;
  std::atomic<bool> stopped_{false};
  std::mutex seen_mu_;
  // When a pod was first seen, for the pod-seen-to-PVC-created latency. Entries go when all of
  // the pod's PVCs exist.
  std::unordered_map<std::string, apiclient::Clock::TimePoint> seen_;  // GUARDED_BY(seen_mu_)
  // Claims ("ns/name") held back by claim pacing and not created yet: an Event once for each.
  std::set<std::string> paced_claims_;  // GUARDED_BY(seen_mu_)
};

}  // namespace ephemera::controllers
