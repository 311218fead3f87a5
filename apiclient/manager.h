// Manager: the runtime of a controller program, in the shape controller-runtime's Manager has.
//
// It owns what the controllers share: the API client (with request metrics), a second client for
// Events, the metrics registry, the clock, the HTTP endpoint (/metrics, /healthz, /livez, /readyz)
// and the leader elector. Controllers are Runnables added before Run(): those that need leader
// election run only while this process leads, the others in every replica.
//
// Run() blocks until the stop token is requested (returns OK), a runnable fails to start (returns
// its error), or leadership is lost (ABORTED). On the way out the leader's runnables are stopped
// before the lease is released, so a successor never overlaps them; when leadership is lost they
// must stop within the margin the lease leaves (lease duration - renew deadline), or the process is
// ended at once (ManagerConfig::on_stop_overrun), as kube-controller-manager exits.
//
// Thread safety: Add() before Run(); Run() once, from one thread; accessors from any thread.
#pragma once

#include <atomic>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <stop_token>
#include <string>
#include <thread>
#include <vector>

#include "apiclient/client.h"
#include "apiclient/clock.h"
#include "apiclient/config.h"
#include "apiclient/events.h"
#include "apiclient/leader_election.h"
#include "apiclient/metrics.h"
#include "common/http_endpoint.h"

namespace ephemera::apiclient {

// A piece of work the Manager starts and stops: a controller, or a cache it depends on.
class Runnable {
 public:
  virtual ~Runnable() = default;
  // Short, for logs and /readyz: "ephemeral-volume".
  virtual std::string Name() const = 0;
  // True (the default): runs only while this process leads. False: in every replica.
  virtual bool NeedsLeaderElection() const { return true; }
  // Starts the work and returns once it is running (its caches synced), or the error that kept it
  // from running; CANCELLED when `stop` was requested first. Called at most once.
  virtual Status Start(std::stop_token stop) = 0;
  // Stops the work and waits for it. Called once after Start() returned, whatever it returned.
  virtual void Stop() = 0;
};

struct ManagerConfig {
  std::string user_agent = "ephemera/0.1";
  // Leader election, or none (every runnable runs at once).
  std::optional<LeaderElectionConfig> leader_election;
  // "HOST:PORT" of the HTTP endpoint, or "" for none.
  std::string http_endpoint;
  // Called when the leader's runnables have not stopped within the lease's margin after
  // leadership was lost. The default ends the process with exit code 1 at once.
  std::function<void()> on_stop_overrun;
};

class Manager {
 public:
  // Makes the clients from `rest` (INVALID_ARGUMENT when its credentials cannot be loaded).
  static StatusOr<std::unique_ptr<Manager>> New(const RestConfig& rest, ManagerConfig config,
                                                const Clock& clock = SystemClock());
  ~Manager();
  Manager(const Manager&) = delete;
  Manager& operator=(const Manager&) = delete;

  const ApiClientPtr& client() const { return client_; }
  MetricsRegistry& metrics() { return *metrics_; }
  const Clock& clock() const { return clock_; }
  // This process's identity in the lease and in Events ("<pod>_<random>").
  const std::string& identity() const { return identity_; }
  // An EventRecorder writing through the Events client as `controller`; flushed on shutdown.
  std::shared_ptr<EventRecorder> EventRecorderFor(const std::string& controller);

  void Add(std::shared_ptr<Runnable> runnable);
  Status Run(std::stop_token stop);

  bool IsLeader() const { return leading_.load(); }
  // The HTTP endpoint's port once Run() serves it (for tests that ask for port 0).
  int http_port() const { return http_port_.load(); }

  // For tests: a Manager over given clients. The lease goes through `election_client` (null:
  // `client`).
  Manager(ApiClientPtr client, ApiClientPtr event_client, std::unique_ptr<MetricsRegistry> metrics,
          ManagerConfig config, const Clock& clock, ApiClientPtr election_client = nullptr);

 private:
  // The runnables of one kind (always, or leader-only), started in the order added on a thread
  // of their own.
  class Group;
  enum class Event { kLeading, kLost, kFailed };
  void Post(Event event, Status status = Status::Ok());
  Status Serve();
  // After a lost lease: stops the leader-only runnables within lease duration - renew deadline,
  // or calls on_stop_overrun.
  void StopLeaderWorkAfterLoss();

  const ApiClientPtr client_;
  const ApiClientPtr event_client_;
  // The lease's own client, as kube-controller-manager has: its rate limit and connections are
  // not shared with the controllers, so a queue of their requests never delays a renewal.
  const ApiClientPtr election_client_;
  const std::unique_ptr<MetricsRegistry> metrics_;
  const ManagerConfig config_;
  const Clock& clock_;
  const std::string identity_;
  std::unique_ptr<Group> always_;
  std::unique_ptr<Group> leader_only_;
  std::unique_ptr<LeaderElector> elector_;
  std::unique_ptr<HttpEndpoint> endpoint_;
  std::atomic<bool> leading_{false};
  std::atomic<int> http_port_{0};

  std::mutex recorders_mu_;
  std::vector<std::shared_ptr<EventRecorder>> recorders_;  // GUARDED_BY(recorders_mu_)

  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::pair<Event, Status>> events_;  // GUARDED_BY(mu_)
};

// SIGTERM and SIGINT request a stop of `source` (a second one ends the process at once, exit 1).
// Blocks the signals in the calling thread, and so in every thread started after it: make it
// first in main(). The signals are unblocked again when it goes.
class SignalStop {
 public:
  SignalStop();
  ~SignalStop();
  SignalStop(const SignalStop&) = delete;
  SignalStop& operator=(const SignalStop&) = delete;
  std::stop_token token() const { return source_.get_token(); }

 private:
  std::stop_source source_;
  std::atomic<bool> done_{false};
  std::thread thread_;
};

// Waits until every informer has synced. CANCELLED when `stop` is requested first,
// DEADLINE_EXCEEDED naming the informer's resource when `timeout` passes.
class Informer;
Status WaitForCacheSync(const std::stop_token& stop, std::chrono::milliseconds timeout,
                        const std::vector<const Informer*>& informers);

}  // namespace ephemera::apiclient
