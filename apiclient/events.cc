#include "apiclient/events.h"

#include <random>

#include "apiclient/leader_election.h"

namespace ephemera::apiclient {
namespace {

constexpr auto kSeriesWindow = std::chrono::minutes(10);
constexpr auto kSweepInterval = std::chrono::minutes(1);

std::string Truncate(const std::string& s, size_t n) {
  return s.size() <= n ? s : s.substr(0, n);
}

}  // namespace

EventRecorder::EventRecorder(ApiClientPtr client, EventSource source, const Clock& clock,
                             size_t max_queue)
    : client_(std::move(client)), source_(std::move(source)), clock_(clock), max_queue_(max_queue) {
  thread_ = std::thread([this] { Run(); });
}

EventRecorder::~EventRecorder() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void EventRecorder::Record(const Object& regarding, const std::string& type,
                           const std::string& reason, const std::string& action,
                           const std::string& note) {
  std::lock_guard<std::mutex> lock(mu_);
  if (stopping_) return;
  if (queue_.size() >= max_queue_) {
    ++dropped_;
    return;
  }
  queue_.push_back({regarding, type, reason, action, note, clock_.Now(), clock_.WallNow()});
  cv_.notify_one();
}

void EventRecorder::Flush() {
  std::unique_lock<std::mutex> lock(mu_);
  idle_cv_.wait(lock, [this] { return queue_.empty() && !busy_; });
}

uint64_t EventRecorder::Dropped() const {
  std::lock_guard<std::mutex> lock(mu_);
  return dropped_;
}

uint64_t EventRecorder::Failed() const {
  std::lock_guard<std::mutex> lock(mu_);
  return failed_;
}

void EventRecorder::Run() {
  while (true) {
    Pending event;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
      if (queue_.empty()) return;  // stopping, all written
      event = std::move(queue_.front());
      queue_.pop_front();
      busy_ = true;
    }
    Write(event);
    {
      std::lock_guard<std::mutex> lock(mu_);
      busy_ = false;
    }
    idle_cv_.notify_all();
  }
}

void EventRecorder::Write(const Pending& e) {
  const Object& r = e.regarding;
  const std::string uid = Field(r, "metadata", "uid");
  const std::string key = uid + "\n" + e.type + "\n" + e.reason + "\n" + e.action + "\n" + e.note;
  const std::string wall = FormatMicroTime(e.wall);
  // Forget series older than the window, so the map does not grow without bound. Once a minute,
  // not for every event: a scan of the whole map per event cost more than writing the event.
  if (e.when - last_sweep_ >= kSweepInterval) {
    last_sweep_ = e.when;
    for (auto it = seen_.begin(); it != seen_.end();) {
      it = e.when - it->second.first > kSeriesWindow ? seen_.erase(it) : std::next(it);
    }
  }
  auto seen = seen_.find(key);
  if (seen != seen_.end() && e.when - seen->second.first > kSeriesWindow) {
    seen_.erase(seen);  // Too old to add to, though not swept yet: start a new series.
    seen = seen_.end();
  }
  if (seen != seen_.end()) {
    Written& w = seen->second;
    ++w.count;
    const Object patch = {{"series", {{"count", w.count}, {"lastObservedTime", wall}}}};
    if (client_->MergePatch(resources::kEvents, w.ns, w.name, patch).ok()) return;
    seen_.erase(seen);  // The event is gone (e.g. expired): write a new one.
  }
  std::string ns = Field(r, "metadata", "namespace");
  if (ns.empty()) ns = "default";
  static thread_local std::mt19937_64 rng{std::random_device{}()};
  char suffix[20];
  std::snprintf(suffix, sizeof(suffix), "%016llx", static_cast<unsigned long long>(rng()));
  const std::string name = Truncate(Field(r, "metadata", "name"), 200) + "." + suffix;
  Object regarding = {{"apiVersion", Field(r, "apiVersion")},
                      {"kind", Field(r, "kind")},
                      {"name", Field(r, "metadata", "name")},
                      {"uid", uid}};
  if (!Field(r, "metadata", "namespace").empty()) regarding["namespace"] = ns;
  const Object event = {{"apiVersion", "events.k8s.io/v1"},
                        {"kind", "Event"},
                        {"metadata", {{"name", name}, {"namespace", ns}}},
                        {"eventTime", wall},
                        {"reportingController", Truncate(source_.controller, 128)},
                        {"reportingInstance", Truncate(source_.instance, 128)},
                        {"action", Truncate(e.action, 128)},
                        {"reason", Truncate(e.reason, 128)},
                        {"type", e.type},
                        {"note", Truncate(e.note, 1024)},
                        {"regarding", regarding}};
  if (client_->CreateOnly(resources::kEvents, ns, event).ok()) {
    seen_[key] = {ns, name, 1, e.when};
  } else {
    std::lock_guard<std::mutex> lock(mu_);
    ++failed_;
  }
}

}  // namespace ephemera::apiclient
