#include "apiclient/manager.h"

#include <pthread.h>
#include <signal.h>

#include <cstdlib>
#include <ctime>

#include "apiclient/informer.h"
#include "apiclient/rest_client.h"
#include "common/log.h"

namespace ephemera::apiclient {

class Manager::Group {
 public:
  // `failed` is told about a runnable whose Start() failed while the group was not stopping.
  explicit Group(std::function<void(const std::string&, const Status&)> failed)
      : failed_(std::move(failed)) {}
  ~Group() { Stop(); }

  void Add(std::shared_ptr<Runnable> r) { runnables_.push_back(std::move(r)); }
  bool empty() const { return runnables_.empty(); }

  // Starts the runnables one after another on a thread of the group's own.
  void Start() {
    if (starter_.joinable() || runnables_.empty()) {
      if (runnables_.empty()) ready_ = true;
      return;
    }
    starter_ = std::jthread([this] {
      const std::stop_token stop = stop_.get_token();
      for (const auto& r : runnables_) {
        if (stop.stop_requested()) return;
        {
          std::lock_guard<std::mutex> lock(mu_);
          started_.push_back(r);
        }
        log::Info("starting", {{"runnable", r->Name()}});
        const Status s = r->Start(stop);
        if (!s.ok()) {
          if (!stop.stop_requested()) failed_(r->Name(), s);
          return;
        }
        log::Info("started", {{"runnable", r->Name()}});
      }
      ready_ = true;
    });
  }

  // Asks every runnable to stop, waits for their starts to return, then stops them, newest first.
  void Stop() {
    stop_.request_stop();
    if (starter_.joinable()) starter_.join();
    std::vector<std::shared_ptr<Runnable>> started;
    {
      std::lock_guard<std::mutex> lock(mu_);
      started.swap(started_);
    }
    for (auto it = started.rbegin(); it != started.rend(); ++it) {
      (*it)->Stop();
      log::Info("stopped", {{"runnable", (*it)->Name()}});
    }
    ready_ = false;
  }

  // True once every runnable has started.
  bool ready() const { return ready_.load(); }
  // The first runnable that has not started yet (for /readyz), or "".
  std::string Waiting() const {
    std::lock_guard<std::mutex> lock(mu_);
    return started_.empty() ? runnables_.front()->Name() : started_.back()->Name();
  }

 private:
  const std::function<void(const std::string&, const Status&)> failed_;
  std::vector<std::shared_ptr<Runnable>> runnables_;
  std::stop_source stop_;
  std::jthread starter_;
  std::atomic<bool> ready_{false};
  mutable std::mutex mu_;
  std::vector<std::shared_ptr<Runnable>> started_;  // GUARDED_BY(mu_)
};

namespace {

// `preferred`, or `fallback` when there is none.
ApiClientPtr EitherClient(ApiClientPtr preferred, const ApiClientPtr& fallback) {
  if (preferred != nullptr) return preferred;
  return fallback;
}

}  // namespace

StatusOr<std::unique_ptr<Manager>> Manager::New(const RestConfig& rest, ManagerConfig config,
                                                const Clock& clock) {
  auto metrics = std::make_unique<MetricsRegistry>();
  auto& latency =
      metrics->Histogram("rest_client_request_duration_seconds",
                         "API request latency by verb and HTTP code.", {"verb", "code"});
  auto& requests = metrics->Counter("rest_client_requests_total",
                                    "API requests by verb and HTTP code.", {"verb", "code"});
  RestConfig main_config = rest;
  main_config.user_agent = config.user_agent;
  auto client = RestClient::New(
      main_config, [&latency, &requests](std::string_view verb, int code, double seconds) {
        const std::vector<std::string> labels = {std::string(verb), std::to_string(code)};
        latency.With(labels).Observe(seconds);
        requests.With(labels).Inc();
      });
  if (!client.ok()) return client.status().WithContext("API client");
  // Events go through a client of their own, with its own rate limit of the same size: Events
  // about the work never slow the work down.
  RestConfig event_config = rest;
  event_config.user_agent = config.user_agent + " (events)";
  auto event_client = RestClient::New(event_config);
  if (!event_client.ok()) return event_client.status().WithContext("API client for Events");
  ApiClientPtr election_client;
  if (config.leader_election) {
    RestConfig election_config = rest;
    election_config.user_agent = config.user_agent + " (leader-election)";
    auto made = RestClient::New(election_config);
    if (!made.ok()) return made.status().WithContext("API client for leader election");
    election_client = *std::move(made);
  }
  return std::make_unique<Manager>(*client, *event_client, std::move(metrics), std::move(config),
                                   clock, std::move(election_client));
}

Manager::Manager(ApiClientPtr client, ApiClientPtr event_client,
                 std::unique_ptr<MetricsRegistry> metrics, ManagerConfig config, const Clock& clock,
                 ApiClientPtr election_client)
    : client_(std::move(client)),
      event_client_(std::move(event_client)),
      election_client_(EitherClient(std::move(election_client), client_)),
      metrics_(std::move(metrics)),
      config_(std::move(config)),
      clock_(clock),
      identity_(config_.leader_election ? config_.leader_election->identity
                                        : MakeLeaderIdentity()) {
  auto failed = [this](const std::string& name, const Status& s) {
    Post(Event::kFailed, s.WithContext(name));
  };
  always_ = std::make_unique<Group>(failed);
  leader_only_ = std::make_unique<Group>(failed);
}

Manager::~Manager() = default;

std::shared_ptr<EventRecorder> Manager::EventRecorderFor(const std::string& controller) {
  auto recorder =
      std::make_shared<EventRecorder>(event_client_, EventSource{controller, identity_}, clock_);
  std::lock_guard<std::mutex> lock(recorders_mu_);
  recorders_.push_back(recorder);
  return recorder;
}

void Manager::Add(std::shared_ptr<Runnable> runnable) {
  const bool leader_only = runnable->NeedsLeaderElection() && config_.leader_election;
  (leader_only ? leader_only_ : always_)->Add(std::move(runnable));
}

void Manager::Post(Event event, Status status) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    events_.emplace_back(event, std::move(status));
  }
  cv_.notify_all();
}

Status Manager::Serve() {
  if (config_.http_endpoint.empty()) return Status::Ok();
  endpoint_ = std::make_unique<HttpEndpoint>(
      *metrics_, [](const Status& s) { log::Error("HTTP endpoint", s); });
  endpoint_->AddLivenessCheck("leader-election", [this] {
    // The elector exists before the endpoint starts and goes after it stops.
    return elector_ != nullptr ? elector_->Check() : Status::Ok();
  });
  endpoint_->AddReadinessCheck("runnables", [this] {
    // A standby replica is ready: it is healthy and waiting for the lease.
    if (!always_->ready()) return Status::Unavailable("starting " + always_->Waiting());
    if (leading_ && !leader_only_->ready()) {
      return Status::Unavailable("starting " + leader_only_->Waiting());
    }
    return Status::Ok();
  });
  EPHEMERA_RETURN_IF_ERROR(endpoint_->Start(config_.http_endpoint));
  http_port_ = endpoint_->port();
  log::Info("serving /metrics, /healthz, /livez, /readyz",
            {{"address", config_.http_endpoint}, {"port", std::to_string(endpoint_->port())}});
  return Status::Ok();
}

Status Manager::Run(std::stop_token stop) {
  if (config_.leader_election) {
    EPHEMERA_RETURN_IF_ERROR(ValidateLeaderElection(*config_.leader_election));
    elector_ = std::make_unique<LeaderElector>(
        election_client_, *config_.leader_election,
        LeaderCallbacks{.on_started_leading = [this] { Post(Event::kLeading); },
                        .on_stopped_leading = [this] { Post(Event::kLost); },
                        .on_new_leader =
                            [](const std::string& who) {
                              log::Info("leader is", {{"identity", who}});
                            }},
        clock_);
  }
  Status result = Serve();
  if (!result.ok()) {
    elector_.reset();
    return result.WithContext("HTTP endpoint");
  }
  std::stop_callback on_stop(stop, [this] {
    // Through the mutex, so that the wake-up cannot fall between the loop's check and its wait.
    { const std::lock_guard<std::mutex> lock(mu_); }
    cv_.notify_all();
  });
  always_->Start();
  std::thread election;
  if (elector_) {
    log::Info("campaigning for leadership",
              {{"lease", config_.leader_election->lease_namespace + "/" +
                             config_.leader_election->lease_name},
               {"identity", identity_}});
    election = std::thread([this] { elector_->Run(); });
  } else {
    Post(Event::kLeading);
  }

  bool lost = false;
  {
    std::unique_lock<std::mutex> lock(mu_);
    while (result.ok() && !lost) {
      cv_.wait(lock, [&] { return stop.stop_requested() || !events_.empty(); });
      if (events_.empty()) break;  // stop requested
      auto [event, status] = std::move(events_.front());
      events_.erase(events_.begin());
      lock.unlock();
      switch (event) {
        case Event::kLeading:
          if (elector_) log::Info("became leader", {{"identity", identity_}});
          leading_ = true;
          leader_only_->Start();
          break;
        case Event::kLost:
          lost = true;
          break;
        case Event::kFailed:
          log::Error("runnable failed to start", status);
          result = status;
          break;
      }
      lock.lock();
    }
  }

  if (lost) {
    StopLeaderWorkAfterLoss();
    result = Status::Aborted("leader election lost");
  } else {
    leader_only_->Stop();  // before the lease is released: a successor never overlaps us
  }
  leading_ = false;
  if (elector_) {
    elector_->Stop();
    election.join();
  }
  always_->Stop();
  {
    std::lock_guard<std::mutex> lock(recorders_mu_);
    for (auto& r : recorders_)
      r->Flush();
  }
  if (endpoint_) endpoint_->Stop();
  return result;
}

void Manager::StopLeaderWorkAfterLoss() {
  // The lease may pass to another replica once its margin is gone: the work stops before, or the
  // process ends.
  const auto margin =
      config_.leader_election->lease_duration - config_.leader_election->renew_deadline;
  log::Error("lost the leader lease: stopping the leader's work",
             Status::Aborted("leader election lost"),
             {{"within", std::to_string(margin.count()) + "ms"}});
  bool stopped = false;
  std::mutex mu;
  std::condition_variable cv;
  std::thread watchdog([&] {
    std::unique_lock<std::mutex> lock(mu);
    if (cv.wait_for(lock, margin, [&] { return stopped; })) return;
    log::Error("the leader's work did not stop in time: exiting",
               Status::DeadlineExceeded("stop after lost lease"));
    if (config_.on_stop_overrun) {
      config_.on_stop_overrun();
    } else {
      std::_Exit(1);
    }
  });
  leader_only_->Stop();
  {
    std::lock_guard<std::mutex> lock(mu);
    stopped = true;
  }
  cv.notify_all();
  watchdog.join();
}

SignalStop::SignalStop() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  thread_ = std::thread([this, set] {
    int received = 0;
    const timespec tick{0, 200L * 1000 * 1000};
    while (!done_) {
      siginfo_t info;
      if (sigtimedwait(&set, &info, &tick) < 0) continue;
      if (++received > 1) {
        log::Error("second signal: exiting at once", Status::Aborted("signal"));
        std::_Exit(1);
      }
      log::Info("signal received: stopping",
                {{"signal", info.si_signo == SIGTERM ? "TERM" : "INT"}});
      source_.request_stop();
    }
  });
}

SignalStop::~SignalStop() {
  done_ = true;
  thread_.join();
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  pthread_sigmask(SIG_UNBLOCK, &set, nullptr);
}

Status WaitForCacheSync(const std::stop_token& stop, std::chrono::milliseconds timeout,
                        const std::vector<const Informer*>& informers) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (const Informer* informer : informers) {
    while (!informer->WaitForSync(std::chrono::milliseconds(50))) {
      if (stop.stop_requested()) return Status::Cancelled("stopped while waiting for caches");
      if (std::chrono::steady_clock::now() >= deadline) {
        return Status::DeadlineExceeded("the cache of " + informer->resource().plural +
                                        " did not sync within " +
                                        std::to_string(timeout.count() / 1000) + " s");
      }
    }
  }
  return Status::Ok();
}

}  // namespace ephemera::apiclient
