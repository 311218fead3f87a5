// LeaderElector: leader election on a coordination.k8s.io/v1 Lease, with client-go's defaults
// (lease 15 s, renew deadline 10 s, retry period 2 s).
//
// A candidate takes the lease when it does not exist, is free, or its holder has not renewed it
// for leaseDurationSeconds as observed on the candidate's own clock (so clock skew between
// machines does not matter). The leader renews every retry period.
//
// Why there can be no second leader: another candidate takes over no earlier than one lease
// duration after it saw our last renewal, and it cannot have seen it before that renewal's
// request was sent. The leader counts its renew deadline from the moment it sent its last
// successful renewal, bounds every request of a renewal attempt by that deadline
// (ScopedRequestDeadline), and stops leading when it passes: lease duration - renew deadline
// (5 s by default) before anyone else may lead. The callbacks run on a thread of their own, never
// on the thread that renews, so a slow callback cannot hold up a renewal; the owner of the leader's
// work (Manager) stops that work on on_stopped_leading within that margin. On a clean Stop() the
// leader releases the lease (holder cleared, duration 1 s) so a successor takes over at once; the
// owner calls Stop() only after the leader's work has stopped.
//
// Thread safety: Run() on one thread; Stop(), IsLeader(), Check() from any.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <string>

#include "apiclient/client.h"
#include "apiclient/clock.h"

namespace ephemera::apiclient {

struct LeaderElectionConfig {
  std::string lease_namespace;
  std::string lease_name;
  std::string identity;  // pod name + random suffix: see MakeLeaderIdentity()
  std::chrono::milliseconds lease_duration{15000};
  std::chrono::milliseconds renew_deadline{10000};
  std::chrono::milliseconds retry_period{2000};
  bool release_on_stop = true;
};

// Called one at a time, in order, on the elector's notifier thread (never the renewing one). A
// slow callback delays only the callbacks after it.
struct LeaderCallbacks {
  std::function<void()> on_started_leading;
  std::function<void()> on_stopped_leading;  // after leading, when the lease is lost or on Stop()
  std::function<void(const std::string& identity)> on_new_leader;  // any change of holder
};

// INVALID_ARGUMENT unless lease_duration > renew_deadline > 1.2 * retry_period > 0 and the
// names are set.
Status ValidateLeaderElection(const LeaderElectionConfig& config);

// "<pod name or hostname>_<8 random hex digits>".
std::string MakeLeaderIdentity();

// RFC 3339 with microseconds, as metav1.MicroTime: "2026-11-22T05:20:00.123456Z".
std::string FormatMicroTime(std::chrono::system_clock::time_point t);

class LeaderElector {
 public:
  LeaderElector(ApiClientPtr client, LeaderElectionConfig config, LeaderCallbacks callbacks,
                const Clock& clock = SystemClock());

  // Campaigns, then leads until leadership is lost or Stop() is called. Returns true when it led
  // and lost (or was stopped while leading), false when stopped before ever leading. Returns after
  // every callback has run.
  bool Run();
  void Stop();
  bool IsLeader() const { return leading_.load(); }
  const std::string& identity() const { return config_.identity; }
  // For /healthz: an error when this process leads but has not renewed for longer than the lease
  // duration plus 20 s (it is stuck and another leader may already be acting).
  Status Check() const;

 private:
  // One attempt to take or renew the lease, its requests bounded by `deadline`. OK when we hold
  // the lease now; FAILED_PRECONDITION when another holder's lease has not expired; otherwise the
  // API's error.
  Status TryAcquireOrRenew(Clock::TimePoint deadline);
  void Release();
  // Waits up to `d` (on the injected clock); false when stopped.
  bool SleepUnlessStopped(Clock::Duration d);
  // Logs a failed attempt: API errors always, a held lease only at -v=4.
  void LogFailure(const Status& s, bool leading) const;
  // Runs `call` on the notifier thread, after the calls posted before it.
  void Post(std::function<void()> call);
  void NotifierLoop();

  const ApiClientPtr client_;
  const LeaderElectionConfig config_;
  const LeaderCallbacks callbacks_;
  const Clock& clock_;

  std::atomic<bool> stopped_{false};
  std::atomic<bool> leading_{false};
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::string observed_holder_;      // GUARDED_BY(mu_)
  std::string observed_renew_time_;  // GUARDED_BY(mu_)
  Clock::TimePoint observed_at_{};   // GUARDED_BY(mu_)
  // When the last successful acquire or renew was sent (before its requests), on our clock.
  Clock::TimePoint last_renew_{};  // GUARDED_BY(mu_)

  std::mutex notify_mu_;
  std::condition_variable notify_cv_;
  std::deque<std::function<void()>> pending_;  // GUARDED_BY(notify_mu_)
  bool notifier_done_ = false;                 // GUARDED_BY(notify_mu_)
};

}  // namespace ephemera::apiclient
