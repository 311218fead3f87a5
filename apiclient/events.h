// EventRecorder: events.k8s.io/v1 Events about objects, visible with `kubectl get events` and
// `kubectl describe`.
//
// Recording never blocks the caller: events go to a bounded queue that one thread writes to the
// API (when the queue is full, new events are dropped and counted). The same event repeated
// (same object, type, reason, action and note) within 10 minutes is not written again: the first
// Event gets a `series` whose count and lastObservedTime are updated instead.
//
// Thread safety: Record() from any thread.
#pragma once

#include <condition_variable>
#include <deque>
#include <map>
#include <mutex>
#include <string>
#include <thread>

#include "apiclient/client.h"
#include "apiclient/clock.h"

namespace ephemera::apiclient {

struct EventSource {
  std::string controller;  // reportingController, e.g. "ephemera.io/ephemeral-volume"
  std::string instance;    // reportingInstance, e.g. the leader identity
};

class EventRecorder {
 public:
  EventRecorder(ApiClientPtr client, EventSource source, const Clock& clock = SystemClock(),
                size_t max_queue = 1000);
  ~EventRecorder();
  EventRecorder(const EventRecorder&) = delete;
  EventRecorder& operator=(const EventRecorder&) = delete;

  // type is "Normal" or "Warning". `regarding` is the object the event is about (its apiVersion,
  // kind, namespace, name and uid are used).
  void Record(const Object& regarding, const std::string& type, const std::string& reason,
              const std::string& action, const std::string& note);
  // Waits until every queued event is written (or failed). For tests and shutdown.
  void Flush();
  uint64_t Dropped() const;
  uint64_t Failed() const;

 private:
  struct Pending {
    Object regarding;
    std::string type, reason, action, note;
    Clock::TimePoint when;
    std::chrono::system_clock::time_point wall;
  };
  struct Written {
    std::string ns, name;
    int count = 1;
    Clock::TimePoint first;
  };
  void Run();
  void Write(const Pending& event);

  const ApiClientPtr client_;
  const EventSource source_;
  const Clock& clock_;
  const size_t max_queue_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::condition_variable idle_cv_;
  std::deque<Pending> queue_;            // GUARDED_BY(mu_)
  bool busy_ = false;                    // GUARDED_BY(mu_)
  bool stopping_ = false;                // GUARDED_BY(mu_)
  uint64_t dropped_ = 0;                 // GUARDED_BY(mu_)
  uint64_t failed_ = 0;                  // GUARDED_BY(mu_)
  std::map<std::string, Written> seen_;  // only touched by the writer thread
  Clock::TimePoint last_sweep_{};        // when seen_ was last cleared of old series
  std::thread thread_;
};

}  // namespace ephemera::apiclient
