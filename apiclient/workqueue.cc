#include "apiclient/workqueue.h"

#include <algorithm>

namespace ephemera::apiclient {

WorkQueue::WorkQueue(WorkQueueOptions options, const Clock& clock, WorkQueueObserver observer)
    : options_(std::move(options)),
      clock_(clock),
      observer_(std::move(observer)),
      backoff_(options_.base_delay, options_.max_delay),
      bucket_(options_.qps, options_.burst, clock) {
  delayed_thread_ = std::thread([this] { RunDelayed(); });
}

WorkQueue::~WorkQueue() {
  ShutDown();
  if (delayed_thread_.joinable()) delayed_thread_.join();
}

void WorkQueue::AddLocked(const std::string& key) {
  if (shutting_down_) return;
  if (dirty_.count(key) != 0) return;
  if (observer_.on_add) observer_.on_add();
  dirty_.insert(key);
  added_at_.emplace(key, clock_.Now());
  if (processing_.count(key) != 0) return;  // Queued again by Done().
  queue_.push_back(key);
  if (observer_.on_depth) observer_.on_depth(queue_.size());
  cv_.notify_one();
}

void WorkQueue::Add(const std::string& key) {
  std::lock_guard<std::mutex> lock(mu_);
  AddLocked(key);
}

void WorkQueue::AddAfter(const std::string& key, Clock::Duration delay) {
  if (delay <= Clock::Duration::zero()) {
    Add(key);
    return;
  }
  std::lock_guard<std::mutex> lock(mu_);
  if (shutting_down_) return;
  const auto when = clock_.Now() + delay;
  // Keep only the earliest pending time of a key.
  auto it = delayed_until_.find(key);
  if (it != delayed_until_.end() && it->second <= when) return;
  delayed_until_[key] = when;
  delayed_.emplace(when, key);
  delayed_cv_.notify_one();
}

void WorkQueue::AddRateLimited(const std::string& key) {
  int failures = 0;
  {
    std::lock_guard<std::mutex> lock(mu_);
    failures = failures_[key]++;
  }
  if (observer_.on_retry) observer_.on_retry();
  const Clock::Duration item_delay = backoff_.Delay(failures);
  const Clock::Duration bucket_delay = bucket_.Reserve();
  AddAfter(key, std::max(item_delay, bucket_delay));
}

void WorkQueue::Forget(const std::string& key) {
  std::lock_guard<std::mutex> lock(mu_);
  failures_.erase(key);
}

int WorkQueue::NumRequeues(const std::string& key) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = failures_.find(key);
  return it == failures_.end() ? 0 : it->second;
}

bool WorkQueue::Get(std::string* key) {
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait(lock, [this] {
    return !queue_.empty() || (shutting_down_ && (!drain_ || processing_.empty()));
  });
  if (queue_.empty() || (shutting_down_ && !drain_)) return false;
  *key = std::move(queue_.front());
  queue_.pop_front();
  if (observer_.on_depth) observer_.on_depth(queue_.size());
  processing_.insert(*key);
  dirty_.erase(*key);
  const auto now = clock_.Now();
  auto added = added_at_.find(*key);
  if (added != added_at_.end()) {
    if (observer_.on_queue_latency) {
      observer_.on_queue_latency(std::chrono::duration<double>(now - added->second).count());
    }
    added_at_.erase(added);
  }
  started_at_[*key] = now;
  return true;
}

void WorkQueue::Done(const std::string& key) {
  std::lock_guard<std::mutex> lock(mu_);
  processing_.erase(key);
  auto started = started_at_.find(key);
  if (started != started_at_.end()) {
    if (observer_.on_work_duration) {
      observer_.on_work_duration(
          std::chrono::duration<double>(clock_.Now() - started->second).count());
    }
    started_at_.erase(started);
  }
  if (dirty_.count(key) != 0) {
    queue_.push_back(key);
    if (observer_.on_depth) observer_.on_depth(queue_.size());
  }
  cv_.notify_all();  // A draining shutdown may be waiting for processing_ to empty.
}

void WorkQueue::ShutDown() {
  std::lock_guard<std::mutex> lock(mu_);
  shutting_down_ = true;
  drain_ = false;
  cv_.notify_all();
  delayed_cv_.notify_all();
}

void WorkQueue::ShutDownDrain() {
  std::lock_guard<std::mutex> lock(mu_);
  shutting_down_ = true;
  drain_ = true;
  cv_.notify_all();
  delayed_cv_.notify_all();
}

bool WorkQueue::ShuttingDown() const {
  std::lock_guard<std::mutex> lock(mu_);
  return shutting_down_;
}

size_t WorkQueue::Len() const {
  std::lock_guard<std::mutex> lock(mu_);
  return queue_.size();
}

void WorkQueue::RunDelayed() {
  std::unique_lock<std::mutex> lock(mu_);
  while (!shutting_down_) {
    if (delayed_.empty()) {
      delayed_cv_.wait(lock);
      continue;
    }
    const auto [when, key] = delayed_.top();
    const auto now = clock_.Now();
    if (when > now) {
      // Real time passes here even under a fake clock; tests with a fake clock poke the queue.
      delayed_cv_.wait_for(lock,
                           std::min<Clock::Duration>(when - now, std::chrono::milliseconds(50)));
      continue;
    }
    delayed_.pop();
    auto it = delayed_until_.find(key);
    if (it == delayed_until_.end() || it->second != when) continue;  // Superseded.
    delayed_until_.erase(it);
    AddLocked(key);
  }
}

}  // namespace ephemera::apiclient
