// The storage-capacity controller: asks the CSI driver how much space each topology segment has
// (GetCapacity) and publishes one CSIStorageCapacity per (segment, StorageClass of the driver), so
// that kube-scheduler places pods only where their volumes fit.
//
// external-provisioner's capacity controller is the reference: segments come from the CSINode
// objects that list the driver (its topology keys) and the Node labels for those keys (a node
// missing a label is skipped; equal segments merge; no keys = one empty segment for all nodes).
// Only WaitForFirstConsumer classes count unless immediate binding is enabled.
//
// The reconciler is level-based and runs on one thread: it computes the wanted items, refreshes
// the capacities that are due (poll interval, or marked stale by a PV, class or topology change,
// debounced), and makes the CSIStorageCapacity objects match: create the missing, update the
// changed (nothing written when nothing changed), delete the obsolete and the duplicates. Objects
// with our labels that exist at start are adopted (matched on class and topology). Cached
// objects are never modified.
//
// A driver without GET_CAPACITY: one clear error (log and Event-free), no objects, no exit.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
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
#include "apiclient/events.h"
#include "apiclient/informer.h"
#include "apiclient/manager.h"
#include "apiclient/metrics.h"
#include "apiclient/rate_limiter.h"
#include "controllers/capacity/source.h"

namespace ephemera::controllers {

struct CapacityOptions {
  std::string driver_name;  // "" = learn it from GetPluginInfo
  std::string ns;           // where the CSIStorageCapacity objects live
  std::string managed_by = "ephemera-controller-manager";
  std::chrono::milliseconds poll_interval{60000};
  std::chrono::milliseconds debounce{200};
  bool immediate_binding = false;
  double write_qps = 1;     // --kube-api-capacity-qps
  int write_burst = 5;      // --kube-api-capacity-burst
  apiclient::Object owner;  // owner reference, or null
  // Where "node endpoint unreachable" / "reachable again" Events go; null = no Events.
  std::shared_ptr<apiclient::EventRecorder> events;
  // How long Start() waits for the driver to answer and for the caches to sync.
  std::chrono::seconds start_timeout{120};
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

// The object for `item` with `result` (no name: generateName).
apiclient::Object DesiredCapacityObject(const CapacityItem& item, const CapacityResult& result,
                                        const CapacityOptions& options, const std::string& driver);

// True when `existing` already publishes `result` (values compared as quantities) and `owner`.
bool CapacityUpToDate(const apiclient::Object& existing, const CapacityResult& result);

class CapacityController final : public apiclient::Runnable {
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

  // One reconciliation (public for tests): refresh due capacities, then write.
  Status Sync();
  // Marks every capacity stale (as the poll does).
  void RefreshAll();
  const std::string& driver() const { return driver_; }
  // Writes (create, update, delete) done so far.
  uint64_t Writes() const { return writes_.load(); }
  // The driver refused to serve GET_CAPACITY: the controller publishes nothing.
  bool Disabled() const { return disabled_.load(); }
  // Nodes whose own endpoint did not answer the last GetCapacity (per-node source only).
  std::set<std::string> UnreachableNodes();

 private:
  void Loop();
  void Trigger(bool immediately = false);
  void MarkStale(const std::function<bool(const CapacityItem&)>& which);
  Status Prepare();  // driver name and capability
  std::vector<CapacityItem> WantedItems();
  void ObjectSeen(const apiclient::ObjectPtr& object);
  void ObjectGone(const apiclient::ObjectPtr& object);
  Status Write(const std::function<Status()>& call);
  // Records how `node`'s endpoint answered; Events and metrics on a change of reachability.
  void NodeAnswered(const std::string& node, const Status& status);

  const apiclient::ApiClientPtr client_;
  const std::shared_ptr<CapacitySource> source_;
  CapacityOptions options_;
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
  std::unique_ptr<apiclient::Informer> csinodes_;
  std::unique_ptr<apiclient::Informer> nodes_;
  std::unique_ptr<apiclient::Informer> classes_;
  std::unique_ptr<apiclient::Informer> capacities_;
  std::unique_ptr<apiclient::Informer> volumes_;
  // Pods, trimmed to what tells where an inline volume of the driver came or went.
  std::unique_ptr<apiclient::Informer> pods_;

  std::mutex sync_mu_;  // one Sync at a time
  std::mutex mu_;
  std::condition_variable cv_;
  bool triggered_ = false;                            // GUARDED_BY(mu_)
  std::chrono::steady_clock::time_point trigger_at_;  // GUARDED_BY(mu_)
  std::map<CapacityItem, CapacityResult> known_;      // GUARDED_BY(mu_): last GetCapacity answers
  std::set<CapacityItem> stale_;                      // GUARDED_BY(mu_)
  bool all_stale_ = true;                             // GUARDED_BY(mu_)
  // The objects as we know them: the informer's, overlaid with our own writes. name -> object.
  std::map<std::string, apiclient::ObjectPtr> objects_;             // GUARDED_BY(mu_)
  std::set<std::pair<std::string, std::string>> published_labels_;  // GUARDED_BY(mu_)
  std::map<std::string, std::string> unreachable_;  // GUARDED_BY(mu_): node -> last error

  std::atomic<bool> stopped_{false};
  std::atomic<bool> disabled_{false};
  std::atomic<uint64_t> writes_{0};
  std::thread loop_;
};

}  // namespace ephemera::controllers
