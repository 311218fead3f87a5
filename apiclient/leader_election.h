// LeaderElector: leader election on a coordination.k8s.io/v1 Lease, with client-go's semantics
// and defaults (lease 15 s, renew deadline 10 s, retry period 2 s).
//
// A candidate takes the lease when it does not exist, is free, or its holder has not renewed it
// for leaseDurationSeconds as observed on the candidate's own clock (so clock skew between
// machines does not matter). The leader renews every retry period; when it cannot renew within
// the renew deadline it stops leading. On a clean Stop() the leader releases the lease (holder
// cleared, duration 1 s) so a successor takes over at once.
//
// Thread safety: Run() on one thread; Stop(), IsLeader(), Check() from any.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
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

struct LeaderCallbacks {
  std::function<void()> on_started_leading;  // called on Run()'s thread; should return quickly
  std::function<void()> on_stopped_leading;
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
  // and lost (or was stopped while leading), false when stopped before ever leading.
  bool Run();
  void Stop();
  bool IsLeader() const { return leading_.load(); }
  const std::string& identity() const { return config_.identity; }
  // For /healthz: an error when this process leads but has not renewed for longer than the lease
  // duration plus 20 s (it is stuck and another leader may already be acting).
  Status Check() const;

 private:
  // One attempt to take or renew the lease.
  bool TryAcquireOrRenew();
  void Release();
  bool SleepUnlessStopped(std::chrono::milliseconds d);

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
  Clock::TimePoint last_renew_{};    // GUARDED_BY(mu_)
};

}  // namespace ephemera::apiclient
