// WorkQueue: the rate-limited work queue of a level-based controller, with client-go's semantics.
//
// - A key that is added while it waits is not added twice.
// - A key is never handed to two workers at once: added while being processed, it is queued again
//   when the worker calls Done().
// - AddAfter() delays; AddRateLimited() delays by the larger of the key's exponential backoff
//   (base..max, doubling with every NumRequeues) and the overall token bucket; Forget() resets the
//   key's backoff after success.
// - ShutDown() wakes every worker: Get() returns false once the queue is drained (ShutDownDrain)
//   or at once (ShutDown).
//
// Thread safety: all methods may be called from any thread.
#pragma once

#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <queue>
#include <set>
#include <string>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "apiclient/clock.h"
#include "apiclient/rate_limiter.h"

namespace ephemera::apiclient {

struct WorkQueueOptions {
  std::string name;  // for metrics
  std::chrono::milliseconds base_delay{5};
  std::chrono::milliseconds max_delay{1000 * 1000};
  double qps = 10;  // overall bucket for retries
  int burst = 100;
};

// Observes the queue for metrics (all optional).
struct WorkQueueObserver {
  std::function<void(size_t depth)> on_depth;
  std::function<void()> on_add;
  std::function<void()> on_retry;
  std::function<void(double seconds)> on_queue_latency;  // added -> handed to a worker
  std::function<void(double seconds)> on_work_duration;  // handed out -> Done()
};

class WorkQueue {
 public:
  explicit WorkQueue(WorkQueueOptions options = {}, const Clock& clock = SystemClock(),
                     WorkQueueObserver observer = {});
  ~WorkQueue();
  WorkQueue(const WorkQueue&) = delete;
  WorkQueue& operator=(const WorkQueue&) = delete;

  void Add(const std::string& key);
  void AddAfter(const std::string& key, Clock::Duration delay);
  void AddRateLimited(const std::string& key);
  void Forget(const std::string& key);
  int NumRequeues(const std::string& key) const;

  // Blocks until a key is ready; false when shut down.
  bool Get(std::string* key);
  void Done(const std::string& key);

  void ShutDown();       // Get() returns false at once, even with keys queued
  void ShutDownDrain();  // Get() returns false once the queue is empty and nothing is processing
  bool ShuttingDown() const;
  size_t Len() const;

 private:
  void AddLocked(const std::string& key);
  void RunDelayed();

  const WorkQueueOptions options_;
  const Clock& clock_;
  const WorkQueueObserver observer_;
  const ExponentialBackoff backoff_;
  TokenBucket bucket_;

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::string> queue_;                                 // GUARDED_BY(mu_)
  std::unordered_set<std::string> dirty_;                         // GUARDED_BY(mu_)
  std::unordered_set<std::string> processing_;                    // GUARDED_BY(mu_)
  std::unordered_map<std::string, Clock::TimePoint> added_at_;    // GUARDED_BY(mu_)
  std::unordered_map<std::string, Clock::TimePoint> started_at_;  // GUARDED_BY(mu_)
  std::unordered_map<std::string, int> failures_;                 // GUARDED_BY(mu_)
  bool shutting_down_ = false;                                    // GUARDED_BY(mu_)
  bool drain_ = false;                                            // GUARDED_BY(mu_)

  // Delayed adds: earliest first.
  using Delayed = std::pair<Clock::TimePoint, std::string>;
  std::priority_queue<Delayed, std::vector<Delayed>, std::greater<>> delayed_;  // GUARDED_BY(mu_)
  std::unordered_map<std::string, Clock::TimePoint> delayed_until_;             // GUARDED_BY(mu_)
  std::condition_variable delayed_cv_;
  std::thread delayed_thread_;
};

}  // namespace ephemera::apiclient
