// Informer: keeps a Store in step with the API server and tells handlers what changed.
//
// The reflector lists (in pages), then watches from the list's resourceVersion; it follows
// bookmarks, relists when the server says the version is gone (410), and backs off (exponentially,
// up to 30 s) when the server cannot be reached. Objects that disappear while the informer was not
// watching are reported as deletes after the relist. An optional transform trims every object
// before it is stored (to save memory); an optional resync period re-delivers every object as an
// update.
//
// Handlers run one at a time, on the informer's threads; they should do little (compute a key and
// enqueue it). They must not modify the objects they are given.
//
// Thread safety: Start/Stop from one owner thread; everything else from any thread.
#pragma once

#include <atomic>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "apiclient/client.h"
#include "apiclient/clock.h"
#include "apiclient/field_filter.h"
#include "apiclient/store.h"

namespace ephemera::apiclient {

struct InformerOptions {
  Resource resource;
  std::string ns;  // "" for all namespaces
  std::string label_selector;
  std::string field_selector;
  int64_t page_size = 500;
  std::chrono::seconds resync_period{0};  // 0: no resync
  Indexers indexers;
  // Trims an object before it is stored, e.g. drops managedFields and fields a controller never
  // reads. Must keep metadata.name, namespace and resourceVersion.
  std::function<Object(Object)> transform;
  // Members to decode at all (nullptr: everything), so that what the transform drops is not built
  // first. Must keep what the transform and the indexers read, and metadata.name, namespace and
  // resourceVersion.
  std::shared_ptr<const FieldFilter> decode_filter;
};

struct EventHandlers {
  std::function<void(const ObjectPtr&)> on_add;
  std::function<void(const ObjectPtr& old_object, const ObjectPtr& new_object)> on_update;
  std::function<void(const ObjectPtr&)> on_delete;
};

// Removes metadata.managedFields: they are large and no controller reads them.
Object DropManagedFields(Object object);

class Informer {
 public:
  Informer(ApiClientPtr client, InformerOptions options);
  ~Informer();
  Informer(const Informer&) = delete;
  Informer& operator=(const Informer&) = delete;

  // Handlers must be added before Start().
  void AddHandlers(EventHandlers handlers);
  void Start();
  // Stops the threads; safe to call twice. Handlers are not called after Stop() returns.
  void Stop();

  // True once the first list is in the store and its events were delivered.
  bool HasSynced() const { return synced_.load(); }
  // Waits for HasSynced(); false when the timeout passed or the informer was stopped.
  bool WaitForSync(std::chrono::milliseconds timeout) const;

  const Store& store() const { return store_; }
  const Resource& resource() const { return options_.resource; }
  std::string LastResourceVersion() const;
  // How many times it listed (1 + relists), for tests and metrics.
  int ListCount() const { return list_count_.load(); }

 private:
  void Run();
  void RunResync();
  // Lists everything and replaces the store. Returns the list's resourceVersion.
  StatusOr<std::string> ListAndReplace();
  // Watches from `resource_version` until the stream ends; updates it as events arrive.
  Status WatchFrom(std::string* resource_version);
  // Applies the transform. An object nobody else holds is moved into it, not copied.
  ObjectPtr Prepare(FreshObjectPtr object) const;
  void Deliver(const std::function<void()>& call);
  // Sleeps up to `d`, returning early (false) when stopped.
  bool SleepUnlessStopped(Clock::Duration d);

  const ApiClientPtr client_;
  const InformerOptions options_;
  Store store_;
  std::vector<EventHandlers> handlers_;

  std::atomic<bool> stopped_{false};
  std::atomic<bool> synced_{false};
  std::atomic<int> list_count_{0};
  mutable std::mutex mu_;
  mutable std::condition_variable cv_;    // signalled on stop and on sync
  std::string resource_version_;          // GUARDED_BY(mu_)
  WatchStream* current_watch_ = nullptr;  // GUARDED_BY(mu_)
  std::mutex handler_mu_;                 // one handler call at a time
  std::thread thread_;
  std::thread resync_thread_;
};

}  // namespace ephemera::apiclient
