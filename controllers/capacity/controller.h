// The storage-capacity controller: asks the CSI driver how much space each topology segment has
// (GetCapacity) and publishes one CSIStorageCapacity per (segment, StorageClass of the driver), so
// that kube-scheduler places pods only where their volumes fit.
//
// external-provisioner's capacity controller is the reference: segments come from the CSINode
// objects that list the driver (its topology keys) and the Node labels for those keys (a node
// missing a label is skipped; equal segments merge; no keys = one empty segment for all nodes).
// Only WaitForFirstConsumer classes count unless immediate binding is enabled.
//
// The reconciler is level-based and runs on a work queue (apiclient/workqueue.h) whose keys are
// the items (segment x class), plus "resync" (work out the wanted items, delete obsolete and
// duplicate objects) and "poll" (mark every item stale, every poll interval). Working on an item:
// if its capacity is due (never asked, poll, or marked stale by a PV, class, pod or topology
// change, paced), ask the driver; then make its CSIStorageCapacity match: create it if
// missing, update it if changed, nothing when nothing changed. A failure re-queues the item with
// its own exponential backoff; other items go on. Objects with our labels that exist at start
// are adopted (matched on class and topology). Cached objects are never modified.
//
// GetCapacity calls do not hold a worker: they are asynchronous (CapacitySource's
// GetCapacityAsync), at most one in flight per node endpoint (per-node sources) and at most
// `threads` at once to a central driver. An item whose call is in flight or waiting for its
// endpoint is queued again when the answer comes. So a node endpoint that does not answer
// delays only that node's items, whatever the number of workers. The workers (`threads`) do the
// writes, through one token bucket (write_qps / write_burst).
//
// All timing (poll, debounce, backoff, write rate) uses the injected Clock.
//
// Changes are paced per item (ChangePacer): the first change of a quiet item is asked at once, the
// changes that follow within `debounce` of that call ride along with one more call at the end of
// it; an item marked by a change goes before the items of a poll waiting for the same endpoint.
//
// A driver without GET_CAPACITY: one clear error (log and Event-free), no objects, no exit.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "apiclient/client.h"
#include "apiclient/clock.h"
#include "apiclient/events.h"
#include "apiclient/informer.h"
#include "apiclient/manager.h"
#include "apiclient/metrics.h"
#include "apiclient/rate_limiter.h"
#include "apiclient/workqueue.h"
#include "controllers/capacity/source.h"
#include "controllers/claim_admission.h"

namespace ephemera::controllers {

struct CapacityOptions {
  std::string driver_name;  // "" = learn it from GetPluginInfo
  std::string ns;           // where the CSIStorageCapacity objects live
  std::string managed_by = "ephemera-controller-manager";
  std::chrono::milliseconds poll_interval{60000};
  // The least time between two calls for an item that changes keep asking for (ChangePacer); a
  // topology change resyncs after it.
  std::chrono::milliseconds debounce{200};
  bool immediate_binding = false;
  double write_qps = 1;  // --kube-api-capacity-qps
  int write_burst = 5;   // --kube-api-capacity-burst
  // The client of the CSIStorageCapacity writes; null = the controller's client. The
  // controller-manager gives it a client of its own, rate-limited at write_qps / write_burst and
  // not at --kube-api-qps, as external-provisioner does: capacity writes neither wait behind the
  // other controllers' requests nor take their share.
  apiclient::ApiClientPtr write_client;
  // --capacity-threads: workers, and GetCapacity calls at once to a central driver.
  int threads = 4;
  apiclient::Object owner;  // owner reference, or null
  // Where "node endpoint unreachable" / "reachable again" Events go; null = no Events.
  std::shared_ptr<apiclient::EventRecorder> events;
  // How long Start() waits for the driver to answer and for the caches to sync.
  std::chrono::seconds start_timeout{120};
  // The clock of every timer (poll, debounce, backoff, write rate); null = the real one.
  const apiclient::Clock* clock = nullptr;
  // Backoff of a failed item: base, doubling with every failure, up to max.
  std::chrono::milliseconds retry_base{500};
  std::chrono::milliseconds retry_max{30000};
  // --capacity-reservations: claims that kube-scheduler placed on a node
  // (volume.kubernetes.io/selected-node) and whose volume does not exist yet are subtracted from
  // their segment's published capacity.
  bool reservations = true;
  // --capacity-node-ownerref: the object of a segment of one node is owned by that Node only.
  bool node_owner = true;
  // --capacity-claim-pacing: the controller admits the claims of the ephemeral-volume controller
  // of its process (ClaimAdmission, claim_admission.h). Needs reservations.
  bool claim_pacing = true;
  // An admitted claim counts as not yet published for at most this long.
  std::chrono::milliseconds claim_pacing_hold{1000};
};

// One (segment, class) pair. Ordered so it can key maps.
struct CapacityItem {
  Segment segment;
  std::string storage_class;
  bool operator<(const CapacityItem& o) const {
    return std::tie(storage_class, segment) < std::tie(o.storage_class, o.segment);
  }
  bool operator==(const CapacityItem& o) const {
    return storage_class == o.storage_class && segment == o.segment;
  }
};

std::string DescribeSegment(const Segment& segment);

// The distinct segments of `driver`, from CSINode objects and Node objects (by name).
std::vector<Segment> ComputeSegments(const std::vector<apiclient::ObjectPtr>& csinodes,
                                     const std::map<std::string, apiclient::ObjectPtr>& nodes,
                                     const std::string& driver);

// True when a PV update can change free space: its size (an expansion), its node affinity or its
// driver changed. Phase, claim, annotation and status changes do not.
bool VolumeUpdateMatters(const apiclient::Object& old_pv, const apiclient::Object& pv);

// True when the class belongs to the driver and is to be published.
bool ClassWanted(const apiclient::Object& storage_class, const std::string& driver,
                 bool immediate_binding);

// The item a CSIStorageCapacity object stands for, or nullopt if it is not one we can match.
std::optional<CapacityItem> ItemOf(const apiclient::Object& capacity_object);

// The object for `item` with `result` (no name: generateName). Its owner: `node_owner` when
// given (a per-node segment), else options.owner (when set).
apiclient::Object DesiredCapacityObject(const CapacityItem& item, const CapacityResult& result,
                                        const CapacityOptions& options, const std::string& driver,
                                        const apiclient::Object* node_owner = nullptr);

// The owner reference to a Node: apiVersion, kind, name, uid; neither controller nor
// blockOwnerDeletion (the garbage collector needs neither, and blockOwnerDeletion would need
// update on nodes/finalizers).
apiclient::Object NodeOwnerReference(const apiclient::Object& node);

// True when `existing` has exactly `owner` as its only owner (compared on apiVersion, kind, name,
// uid).
bool OwnedOnlyBy(const apiclient::Object& existing, const apiclient::Object& owner);

// True when `existing` already publishes `result` (values compared as quantities) and `owner`.
bool CapacityUpToDate(const apiclient::Object& existing, const CapacityResult& result);

// A claim of the driver that kube-scheduler placed: its node and its request.
struct PlacedClaim {
  std::string node;           // volume.kubernetes.io/selected-node
  std::string storage_class;  // spec.storageClassName
  std::string volume_name;    // spec.volumeName ("" while unbound)
  int64_t bytes = 0;          // spec.resources.requests.storage
};

// Reads a claim: nullopt when it is not placed (no selected-node annotation), INVALID_ARGUMENT
// for a placed claim whose annotation or request is not what the API would hold (not a string, a
// malformed or negative quantity). Hostile shapes are rejected, never trusted.
StatusOr<std::optional<PlacedClaim>> ReadPlacedClaim(const apiclient::Object& pvc);

// a + b for reserved bytes, saturated at INT64_MAX (thousands of huge requests never wrap).
int64_t AddReserved(int64_t a, int64_t b);

// What is published for a driver's figure with `reserved` bytes of placed claims subtracted:
// available - reserved, never below zero; maximumVolumeSize (when the driver gives one) lowered
// to what is left.
CapacityResult ApplyReservations(const CapacityResult& driver, int64_t reserved);

// When the driver is asked again for an item after a change (PV, class, inline-volume pod, our
// object changed by someone else): at once when the item is quiet (its last call started at least
// `interval` ago), else when `interval` has passed since that call; the changes until the call
// starts ride along with it. So a single change is published without waiting, and a burst of
// changes to one item costs at most one call (and one write) per `interval`, as the trailing
// debounce did. Not thread-safe (the controller holds its lock).
class ChangePacer {
 public:
  explicit ChangePacer(apiclient::Clock::Duration interval) : interval_(interval) {}
  // A change of `key` at `now`: how long until the call that covers it.
  apiclient::Clock::Duration Changed(const std::string& key, apiclient::Clock::TimePoint now);
  // A call for `key` started at `now` (whatever asked for it): it covers the changes so far.
  void Started(const std::string& key, apiclient::Clock::TimePoint now);
  // Forgets the items `keep` says no to.
  void Retain(const std::function<bool(const std::string&)>& keep);
  size_t size() const { return items_.size(); }

 private:
  struct State {
    std::optional<apiclient::Clock::TimePoint> scheduled;  // a call to come covers changes
    apiclient::Clock::TimePoint next_free;                 // last call's start + interval
  };
  const apiclient::Clock::Duration interval_;
  std::map<std::string, State> items_;
};

class CapacityController final : public apiclient::Runnable, public ClaimAdmission {
 public:
  CapacityController(apiclient::ApiClientPtr client, std::shared_ptr<CapacitySource> source,
                     apiclient::MetricsRegistry& metrics, CapacityOptions options);
  ~CapacityController() override;

  // Runnable: leader-only. Start() waits for the driver to answer (retrying every 2 s), starts the
  // informers and, once their caches are synced, the loop. DEADLINE_EXCEEDED after
  // options.start_timeout; OK with Disabled() when the driver lacks GET_CAPACITY.
  std::string Name() const override { return "storage-capacity"; }
  Status Start(std::stop_token stop) override;
  void Stop() override;

  // Marks every capacity stale and queues every item (as the poll does).
  void RefreshAll();
  // What the informers' handlers call on a change (public for tests): the items the change can
  // affect are marked stale and queued after the debounce.
  void VolumeChanged(const apiclient::Object& pv);
  // A PV update that matters (VolumeUpdateMatters): the items of the old and the new segments.
  void VolumeChanged(const apiclient::Object& old_pv, const apiclient::Object& pv);
  void ClassChanged(const std::string& name);
  // A claim added or changed (its reservation starts, moves or ends), or deleted.
  void ClaimChanged(const apiclient::Object& pvc);
  void ClaimGone(const apiclient::Object& pvc);
  // A PV of the driver seen (or deleted): the reservation of the claim its claimRef names waits
  // for a figure asked from now on, which counts the volume.
  void PvClaim(const apiclient::Object& pv, bool deleted);
  // Claims whose reservation is counted now (placed, volume not yet in the driver's figure).
  size_t Reservations();

  // ClaimAdmission (claim pacing; admits everything without options.claim_pacing and
  // options.reservations): the claims admitted and not yet counted in what is written (their
  // reservation), plus this one, must fit in the largest published figure of the class (the
  // maximumVolumeSize, else the capacity, that kube-scheduler compares a claim with); claims of
  // all the driver's classes count, as they share its pools. The first claim is always admitted;
  // an unpublished class is not paced.
  bool Admit(const std::string& claim, const std::string& storage_class, int64_t bytes,
             std::function<void()> wake) override;
  void Abandon(const std::string& claim) override;
  void CancelWakes() override;
  // Admitted claims not yet counted in what is written (for tests and the log).
  size_t ClaimsInFlight();

  const std::string& driver() const { return driver_; }
  // Writes (create, update, delete) done so far.
  uint64_t Writes() const { return writes_.load(); }
  // Item syncs finished so far: published (or found up to date) or failed.
  uint64_t ItemSyncs() const { return item_syncs_.load(); }
  // The driver refused to serve GET_CAPACITY: the controller publishes nothing.
  bool Disabled() const { return disabled_.load(); }
  // Nodes whose own endpoint did not answer the last GetCapacity (per-node source only).
  std::set<std::string> UnreachableNodes();
  // The items waiting for a free call slot of `endpoint` ("" = central), in their order.
  std::vector<std::string> WaitingKeys(const std::string& endpoint = "");

  // The queue key of an item.
  static std::string KeyOf(const CapacityItem& item);

 private:
  struct Wanted {
    CapacityItem item;
    std::vector<std::string> nodes;  // the nodes of the segment, by name
  };
  void Worker();
  // One item: ask the driver if due, else publish. *pending: a call was started (or the item
  // waits for its endpoint); its answer queues the item again.
  Status SyncItem(const std::string& key, bool* pending);
  void RemoveWaitingLocked(const std::string& key);
  Status Publish(const std::string& key, const Wanted& wanted);
  void Answered(const std::string& key, const std::string& endpoint,
                apiclient::Clock::TimePoint start, StatusOr<CapacityResult> result);
  Status Resync();
  void Trigger();  // a debounced resync
  // Marks the items `which` selects stale and queues each when its ChangePacer says.
  void MarkStale(const std::function<bool(const CapacityItem&)>& which);
  Status Prepare();  // driver name and capability
  std::map<std::string, Wanted> WantedItems();
  void ObjectSeen(const apiclient::ObjectPtr& object);
  void ObjectGone(const apiclient::ObjectPtr& object);
  // The wanted item an object of ours stands for, to be looked at again (after the debounce).
  void RecheckItemOf(const apiclient::ObjectPtr& object);
  Status Write(const std::function<Status()>& call);
  // Sleeps on the clock; false when stopped meanwhile.
  bool SleepFor(apiclient::Clock::Duration d);
  // Records how `node`'s endpoint answered; Events and metrics on a change of reachability.
  void NodeAnswered(const std::string& node, const Status& status);

  // Reservations of placed claims.
  struct Reservation {
    std::string node;
    std::string storage_class;
    int64_t bytes = 0;
    // When the reservation started (or moved): a publish of its node's items computed after
    // that counts it.
    apiclient::Clock::TimePoint since{};
    // When the claim's PV was first seen: from then on the driver's figure counts the volume, so
    // the reservation counts only for items whose last answer was asked before that.
    std::optional<apiclient::Clock::TimePoint> pv_seen;
  };
  // Sets (or with nullopt ends) a claim's reservation and queues the items of the nodes involved.
  void SetReservation(const std::string& claim, std::optional<Reservation> reservation,
                      const std::string& skip_reason);
  // Bytes reserved on the nodes of `wanted` for the answer of item `key`. Under mu_.
  int64_t ReservedLocked(const std::string& key, const Wanted& wanted);
  // Drops reservations whose volume every item of their node now counts. Under mu_.
  void SettleLocked(const std::string& node);
  void ReevaluateClaims();
  // Claim pacing. Drops the admitted claims that no longer count (published, volume there, or
  // older than the hold). Under mu_.
  void PruneInFlightLocked(apiclient::Clock::TimePoint now);
  // True when the claim's reservation is in what was written for its node's items of its class.
  bool ReservationWrittenLocked(const std::string& claim);
  // Bytes of admitted claims that still count (all classes: they share the driver's pools); the
  // largest written figure of a class (nullopt: none written). Under mu_.
  int64_t InFlightBytesLocked();
  std::optional<int64_t> LargestWrittenLocked(const std::string& storage_class);
  // Wakes the parked claims that may be admitted now (in their order).
  void WakeParked();
  // An item's figure as written (or found up to date) from a publish computed at `computed`.
  void WrittenLocked(const std::string& key, apiclient::Clock::TimePoint computed,
                     const CapacityResult& value);

  const apiclient::ApiClientPtr client_;
  const apiclient::ApiClientPtr writer_;  // options.write_client, or client_
  const std::shared_ptr<CapacitySource> source_;
  CapacityOptions options_;
  const apiclient::Clock& clock_;
  std::string driver_;
  apiclient::TokenBucket write_limit_;
  apiclient::GaugeFamily& goal_;
  apiclient::GaugeFamily& current_;
  apiclient::GaugeFamily& obsolete_;
  apiclient::HistogramFamily& latency_;
  apiclient::CounterFamily& errors_;
  apiclient::GaugeFamily& published_;
  apiclient::CounterFamily& writes_metric_;
  apiclient::GaugeFamily& unreachable_metric_;
  apiclient::CounterFamily& node_errors_;
  apiclient::GaugeFamily& reservations_metric_;
  apiclient::GaugeFamily& confirmed_;
  apiclient::CounterFamily& claims_skipped_;
  apiclient::CounterFamily& clamped_;
  std::unique_ptr<apiclient::WorkQueue> queue_;
  std::unique_ptr<apiclient::Informer> csinodes_;
  std::unique_ptr<apiclient::Informer> nodes_;
  std::unique_ptr<apiclient::Informer> classes_;
  std::unique_ptr<apiclient::Informer> capacities_;
  std::unique_ptr<apiclient::Informer> volumes_;
  // Pods, trimmed to what tells where an inline volume of the driver came or went.
  std::unique_ptr<apiclient::Informer> pods_;
  // Claims, trimmed to what a reservation needs (only with options.reservations).
  std::unique_ptr<apiclient::Informer> claims_;
  std::vector<std::thread> workers_;

  std::mutex mu_;
  std::condition_variable calls_done_;
  std::map<std::string, Wanted> wanted_;         // GUARDED_BY(mu_): key -> item
  std::map<std::string, CapacityResult> known_;  // GUARDED_BY(mu_): last GetCapacity answers
  std::set<std::string> stale_;                  // GUARDED_BY(mu_)
  // Calls in flight: key -> how to cancel; per endpoint ("" = central) their number, and the
  // items waiting for a free slot.
  std::map<std::string, CapacitySource::Cancel> in_flight_;  // GUARDED_BY(mu_)
  std::map<std::string, int> endpoint_calls_;                // GUARDED_BY(mu_)
  std::map<std::string, std::deque<std::string>> waiting_;   // GUARDED_BY(mu_)
  std::map<std::string, std::string> waiting_keys_;          // GUARDED_BY(mu_): key -> endpoint
  int answering_ = 0;     // GUARDED_BY(mu_): answer callbacks running
  bool failing_ = false;  // GUARDED_BY(mu_): a call failed since the last good answer
  // The objects as we know them: the informer's, overlaid with our own writes. name -> object,
  // name -> item key ("" when it matches no item), item key -> names.
  std::map<std::string, apiclient::ObjectPtr> objects_;                          // GUARDED_BY(mu_)
  std::map<std::string, std::string> object_keys_;                               // GUARDED_BY(mu_)
  std::map<std::string, std::set<std::string>> by_item_;                         // GUARDED_BY(mu_)
  std::map<std::string, std::pair<std::string, std::string>> published_labels_;  // GUARDED_BY(mu_)
  std::map<std::string, std::string> unreachable_;  // GUARDED_BY(mu_): node -> last error
  // When the call behind known_[key] was started.
  std::map<std::string, apiclient::Clock::TimePoint> asked_at_;  // GUARDED_BY(mu_)
  // node -> the keys of the items whose segment holds it (from wanted_).
  std::map<std::string, std::vector<std::string>> node_keys_;  // GUARDED_BY(mu_)
  // claim "ns/name" -> its reservation; node -> claims reserving on it.
  std::map<std::string, Reservation> reservations_;           // GUARDED_BY(mu_)
  std::map<std::string, std::set<std::string>> node_claims_;  // GUARDED_BY(mu_)
  // claim -> the reason it was last reported as skipped (reported once per change).
  std::map<std::string, std::string> claim_skips_;  // GUARDED_BY(mu_)
  // claim "ns/name" -> the driver's PV whose claimRef names it.
  std::map<std::string, std::string> pv_claims_;  // GUARDED_BY(mu_)
  std::set<std::string> clamped_keys_;            // GUARDED_BY(mu_): items published at zero
  ChangePacer pacer_;                             // GUARDED_BY(mu_)
  // Items marked by a change since their last call started: first in line for an endpoint.
  std::set<std::string> urgent_;  // GUARDED_BY(mu_)
  // Claim pacing: admitted claims not yet counted; per class, the claims waiting (in order);
  // per item, when the publish that is in the API was computed and its figure there.
  struct InFlightClaim {
    std::string storage_class;
    int64_t bytes = 0;
    apiclient::Clock::TimePoint admitted;
  };
  struct ParkedClaim {
    std::string claim;
    int64_t bytes = 0;
    std::function<void()> wake;
  };
  std::map<std::string, InFlightClaim> in_flight_claims_;          // GUARDED_BY(mu_)
  std::map<std::string, std::deque<ParkedClaim>> parked_;          // GUARDED_BY(mu_)
  std::map<std::string, apiclient::Clock::TimePoint> written_at_;  // GUARDED_BY(mu_)
  std::map<std::string, int64_t> written_limit_;                   // GUARDED_BY(mu_)
  // Held while wakes run; CancelWakes takes it, so none runs after it returns.
  std::mutex wake_mu_;
  bool wakes_cancelled_ = false;  // GUARDED_BY(wake_mu_)
  // item key -> the first change since its last call started, and then that call's start (for
  // the log line of the write: how long from the change to the call, and to the write).
  std::map<std::string, apiclient::Clock::TimePoint> changed_at_;  // GUARDED_BY(mu_)
  std::map<std::string, std::pair<apiclient::Clock::TimePoint, apiclient::Clock::TimePoint>>
      change_asked_;  // GUARDED_BY(mu_)

  std::atomic<bool> stopped_{false};
  std::atomic<bool> disabled_{false};
  std::atomic<uint64_t> writes_{0};
  std::atomic<uint64_t> item_syncs_{0};
};

}  // namespace ephemera::controllers
