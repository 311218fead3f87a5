#include "apiclient/informer.h"

#include <malloc.h>

#include <random>

#include "apiclient/errors.h"
#include "apiclient/rate_limiter.h"

namespace ephemera::apiclient {
namespace {

// Under a sanitizer its own allocator owns the heap: glibc's malloc_trim has nothing to give
// back, and with glibc's arenas never set up by the main thread, two informers trimming at once
// crashed inside glibc (seen under ASan, 4 runs in 40).
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
constexpr bool kTrimHeap = false;
#else
constexpr bool kTrimHeap = true;
#endif

}  // namespace

Object DropManagedFields(Object object) {
  auto metadata = object.find("metadata");
  if (metadata != object.end() && metadata->is_object()) metadata->erase("managedFields");
  return object;
}

Informer::Informer(ApiClientPtr client, InformerOptions options)
    : client_(std::move(client)), options_(std::move(options)), store_(options_.indexers) {}

Informer::~Informer() {
  Stop();
}

void Informer::AddHandlers(EventHandlers handlers) {
  handlers_.push_back(std::move(handlers));
}

void Informer::Start() {
  thread_ = std::thread([this] { Run(); });
  if (options_.resync_period.count() > 0) resync_thread_ = std::thread([this] { RunResync(); });
}

void Informer::Stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopped_ = true;
    if (current_watch_ != nullptr) current_watch_->Stop();
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
  if (resync_thread_.joinable()) resync_thread_.join();
}

bool Informer::WaitForSync(std::chrono::milliseconds timeout) const {
  std::unique_lock<std::mutex> lock(mu_);
  return cv_.wait_for(lock, timeout, [this] { return synced_.load() || stopped_.load(); }) &&
         synced_.load();
}

std::string Informer::LastResourceVersion() const {
  std::lock_guard<std::mutex> lock(mu_);
  return resource_version_;
}

bool Informer::SleepUnlessStopped(Clock::Duration d) {
  std::unique_lock<std::mutex> lock(mu_);
  return !cv_.wait_for(lock, d, [this] { return stopped_.load(); });
}

ObjectPtr Informer::Prepare(FreshObjectPtr object) const {
  if (!options_.transform || object == nullptr) return object;
  if (object.use_count() == 1) {
    *object = options_.transform(std::move(*object));
    return object;
  }
  return std::make_shared<const Object>(options_.transform(Object(*object)));
}

void Informer::Deliver(const std::function<void()>& call) {
  std::lock_guard<std::mutex> lock(handler_mu_);
  if (stopped_) return;
  call();
}

StatusOr<std::string> Informer::ListAndReplace() {
  ListOptions list_options{.label_selector = options_.label_selector,
                           .field_selector = options_.field_selector,
                           .limit = options_.page_size,
                           .filter = options_.decode_filter};
  std::vector<ObjectPtr> objects;
  std::string version;
  do {
    auto page = client_->List(options_.resource, options_.ns, list_options);
    if (!page.ok()) return page.status();
    for (auto& item : page->items)
      objects.push_back(Prepare(std::move(item)));
    version = page->resource_version;
    list_options.continue_token = page->continue_token;
  } while (!list_options.continue_token.empty() && !stopped_);
  ++list_count_;
  store_.Replace(
      std::move(objects),
      [this](const ObjectPtr& o) {
        Deliver([&] {
          for (auto& h : handlers_) {
            if (h.on_add) h.on_add(o);
          }
        });
      },
      [this](const ObjectPtr& old, const ObjectPtr& o) {
        // After a relist, only objects whose version moved are news.
        if (Field(*old, "metadata", "resourceVersion") ==
            Field(*o, "metadata", "resourceVersion")) {
          return;
        }
        Deliver([&] {
          for (auto& h : handlers_) {
            if (h.on_update) h.on_update(old, o);
          }
        });
      },
      [this](const ObjectPtr& o) {
        Deliver([&] {
          for (auto& h : handlers_) {
            if (h.on_delete) h.on_delete(o);
          }
        });
      });
  return version;
}

Status Informer::WatchFrom(std::string* resource_version) {
  // Spread watch ends over time, as client-go does (5 to 10 minutes).
  static thread_local std::mt19937 rng{std::random_device{}()};
  WatchOptions watch_options{.label_selector = options_.label_selector,
                             .field_selector = options_.field_selector,
                             .resource_version = *resource_version,
                             .allow_bookmarks = true,
                             .timeout_seconds = 300 + static_cast<int>(rng() % 300),
                             .filter = options_.decode_filter};
  auto stream = client_->Watch(options_.resource, options_.ns, watch_options);
  if (!stream.ok()) return stream.status();
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopped_) return Status::Cancelled("stopped");
    current_watch_ = stream->get();
  }
  WatchEvent event;
  Status error;
  while ((*stream)->Next(&event, &error)) {
    const std::string version = Field(*event.object, "metadata", "resourceVersion");
    if (event.type == WatchEvent::Type::kBookmark) {
      if (!version.empty()) *resource_version = version;
      continue;
    }
    ObjectPtr object = Prepare(std::move(event.object));
    if (event.type == WatchEvent::Type::kDeleted) {
      ObjectPtr old = store_.Remove(Store::KeyOf(*object));
      Deliver([&] {
        for (auto& h : handlers_) {
          if (h.on_delete) h.on_delete(object);
        }
      });
    } else {
      ObjectPtr old = store_.Upsert(object);
      Deliver([&] {
        for (auto& h : handlers_) {
          if (old == nullptr) {
            if (h.on_add) h.on_add(object);
          } else if (h.on_update) {
            h.on_update(old, object);
          }
        }
      });
    }
    if (!version.empty()) *resource_version = version;
    std::lock_guard<std::mutex> lock(mu_);
    resource_version_ = *resource_version;
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    current_watch_ = nullptr;
  }
  return error;
}

void Informer::Run() {
  const ExponentialBackoff backoff(std::chrono::milliseconds(800), std::chrono::seconds(30));
  int failures = 0;
  bool need_list = true;
  std::string version;
  while (!stopped_) {
    if (need_list) {
      auto listed = ListAndReplace();
      if (!listed.ok()) {
        if (!SleepUnlessStopped(backoff.Delay(failures++))) break;
        continue;
      }
      version = *listed;
      {
        std::lock_guard<std::mutex> lock(mu_);
        resource_version_ = version;
      }
      // A large list leaves freed pages behind in the allocator; give them back to the system.
      if (kTrimHeap) malloc_trim(0);
      if (!synced_.exchange(true)) cv_.notify_all();
      need_list = false;
      failures = 0;
    }
    const Status status = WatchFrom(&version);
    if (stopped_) break;
    if (status.ok()) {  // The server ended the watch on time: watch again from where we are.
      failures = 0;
      continue;
    }
    if (IsGone(status)) {
      need_list = true;  // Our version is compacted away: relist, report what we missed.
      continue;
    }
    if (!SleepUnlessStopped(backoff.Delay(failures++))) break;
  }
}

void Informer::RunResync() {
  while (SleepUnlessStopped(options_.resync_period)) {
    if (!synced_) continue;
    for (const auto& object : store_.List()) {
      Deliver([&] {
        for (auto& h : handlers_) {
          if (h.on_update) h.on_update(object, object);
        }
      });
    }
  }
}

}  // namespace ephemera::apiclient
