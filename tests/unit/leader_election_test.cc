// Unit tests of the LeaderElector and the Manager against a Lease kept in memory. The elector's
// tests run on a fake clock: every wait advances it, so minutes of lease traffic take
// milliseconds and a stalled API server is a call that moves the clock.
#include "apiclient/leader_election.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <condition_variable>
#include <map>
#include <mutex>
#include <set>
#include <thread>

#include "apiclient/deadline.h"
#include "apiclient/errors.h"
#include "apiclient/manager.h"
#include "apiclient/rest_client.h"

namespace ephemera::apiclient {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;

// A clock that moves only when waited on; safe from many threads.
class SimClock final : public Clock {
 public:
  TimePoint Now() const override {
    std::lock_guard<std::mutex> lock(mu_);
    return now_;
  }
  std::chrono::system_clock::time_point WallNow() const override {
    return std::chrono::system_clock::time_point(std::chrono::hours(24 * 365 * 50)) +
           (Now() - TimePoint{});
  }
  void SleepFor(Duration d) const override { Advance(d); }
  bool WaitFor(std::unique_lock<std::mutex>& lock, std::condition_variable&, Duration d,
               const std::function<bool()>& stop) const override {
    if (stop()) return true;
    lock.unlock();
    Advance(d);
    lock.lock();
    return stop();
  }
  void Advance(Duration d) const {
    std::lock_guard<std::mutex> lock(mu_);
    now_ += d;
  }

 private:
  mutable std::mutex mu_;
  mutable TimePoint now_{seconds(1000)};
};

// One Lease, with resourceVersion conflicts as the API server has them. Records every write.
class LeaseServer {
 public:
  struct Write {
    std::string holder;
    Clock::TimePoint at;  // on the test's clock
  };
  explicit LeaseServer(const SimClock& clock) : clock_(clock) {}

  StatusOr<ObjectPtr> Get() {
    std::lock_guard<std::mutex> lock(mu_);
    if (on_get) {
      const Object before = lease_;
      on_get(lease_);
      if (lease_ != before) lease_["metadata"]["resourceVersion"] = std::to_string(++version_);
    }
    if (lease_.is_null()) return Status::NotFound("lease");
    return std::make_shared<const Object>(lease_);
  }
  StatusOr<ObjectPtr> Create(const Object& o) {
    std::lock_guard<std::mutex> lock(mu_);
    if (!lease_.is_null()) return Status::AlreadyExists("lease");
    return StoreLocked(o);
  }
  StatusOr<ObjectPtr> Update(const Object& o) {
    std::lock_guard<std::mutex> lock(mu_);
    if (Field(o, "metadata", "resourceVersion") != Field(lease_, "metadata", "resourceVersion")) {
      return Status::Aborted("conflict");
    }
    return StoreLocked(o);
  }
  std::vector<Write> writes() {
    std::lock_guard<std::mutex> lock(mu_);
    return writes_;
  }
  std::string holder() {
    std::lock_guard<std::mutex> lock(mu_);
    return lease_.is_null() ? "" : Field(lease_, "spec", "holderIdentity");
  }
  // Called under the server's lock before each Get, with the lease (null when none): lets a test
  // play another holder that keeps renewing.
  std::function<void(Object&)> on_get;

 private:
  StatusOr<ObjectPtr> StoreLocked(const Object& o) {
    lease_ = o;
    lease_["metadata"]["resourceVersion"] = std::to_string(++version_);
    writes_.push_back({Field(o, "spec", "holderIdentity"), clock_.Now()});
    return std::make_shared<const Object>(lease_);
  }
  const SimClock& clock_;
  std::mutex mu_;
  Object lease_;
  int version_ = 0;
  std::vector<Write> writes_;
};

// One candidate's client. `before` runs before each call (a stall, an error).
class LeaseClient final : public ApiClient {
 public:
  explicit LeaseClient(LeaseServer& server) : server_(server) {}
  std::function<Status(const std::string& verb)> before;
  std::atomic<int> calls{0};

  StatusOr<ObjectPtr> Get(const Resource&, const std::string&, const std::string&) override {
    EPHEMERA_RETURN_IF_ERROR(Before("GET"));
    return server_.Get();
  }
  StatusOr<ObjectPtr> Create(const Resource&, const std::string&, const Object& o) override {
    EPHEMERA_RETURN_IF_ERROR(Before("CREATE"));
    return server_.Create(o);
  }
  StatusOr<ObjectPtr> Update(const Resource&, const std::string&, const Object& o) override {
    EPHEMERA_RETURN_IF_ERROR(Before("UPDATE"));
    return server_.Update(o);
  }
  StatusOr<ListResult> List(const Resource&, const std::string&, const ListOptions&) override {
    return Status::Unimplemented("list");
  }
  StatusOr<ObjectPtr> UpdateStatus(const Resource&, const std::string&, const Object&) override {
    return Status::Unimplemented("update status");
  }
  StatusOr<ObjectPtr> MergePatch(const Resource&, const std::string&, const std::string&,
                                 const Object&) override {
    return Status::Unimplemented("patch");
  }
  StatusOr<ObjectPtr> Apply(const Resource&, const std::string&, const Object&, const std::string&,
                            bool) override {
    return Status::Unimplemented("apply");
  }
  Status Delete(const Resource&, const std::string&, const std::string&,
                const DeleteOptions&) override {
    return Status::Unimplemented("delete");
  }
  StatusOr<WatchStreamPtr> Watch(const Resource&, const std::string&,
                                 const WatchOptions&) override {
    return Status::Unimplemented("watch");
  }

 private:
  Status Before(const std::string& verb) {
    ++calls;
    return before ? before(verb) : Status::Ok();
  }
  LeaseServer& server_;
};

LeaderElectionConfig Config(const std::string& identity) {
  return {.lease_namespace = "ns", .lease_name = "lease", .identity = identity};
}

// The longest time between two writes of `holder` while it held the lease.
Clock::Duration LongestGap(const std::vector<LeaseServer::Write>& writes,
                           const std::string& holder) {
  Clock::Duration longest{};
  for (size_t i = 1; i < writes.size(); ++i) {
    if (writes[i - 1].holder == holder && writes[i].holder == holder) {
      longest = std::max(longest, writes[i].at - writes[i - 1].at);
    }
  }
  return longest;
}

// Polls `condition` in real time until it holds or `timeout` passes.
bool WaitUntil(const std::function<bool()>& condition, milliseconds timeout = seconds(20)) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (!condition()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(milliseconds(2));
  }
  return true;
}

TEST_CASE("LeaderElector: a slow on_started_leading does not hold up the renewals",
          "[unit][leader]") {
  SimClock clock;
  LeaseServer server(clock);
  auto client = std::make_shared<LeaseClient>(server);
  std::mutex mu;
  std::condition_variable cv;
  bool release_callback = false;
  std::atomic<bool> callback_returned{false};
  const LeaderElectionConfig config = Config("a");
  LeaderElector elector(client, config,
                        {.on_started_leading =
                             [&] {
                               // A start-up that takes "forever": until the test lets it go.
                               std::unique_lock<std::mutex> lock(mu);
                               cv.wait(lock, [&] { return release_callback; });
                               callback_returned = true;
                             }},
                        clock);
  std::thread runner([&] { elector.Run(); });
  // While the callback blocks, the lease is renewed for 10 lease durations.
  REQUIRE(WaitUntil([&] { return server.writes().size() > 5; }));
  const auto start = clock.Now();
  REQUIRE(WaitUntil([&] { return clock.Now() - start > 10 * config.lease_duration; }));
  CHECK_FALSE(callback_returned);
  CHECK(elector.IsLeader());
  {
    std::lock_guard<std::mutex> lock(mu);
    release_callback = true;
  }
  cv.notify_all();
  elector.Stop();
  runner.join();
  CHECK(callback_returned);
  const auto writes = server.writes();
  CHECK(writes.size() > 40);
  // Every renewal came within one retry period (+ 20% jitter at most) of the one before: nobody
  // could have taken over.
  CHECK(LongestGap(writes, "a") <= milliseconds(2400));
  CHECK(server.holder().empty());  // released on Stop()
}

TEST_CASE("LeaderElector: with the API stalled the leader stops before the lease can expire",
          "[unit][leader]") {
  SimClock clock;
  LeaseServer server(clock);
  auto client = std::make_shared<LeaseClient>(server);
  const LeaderElectionConfig config = Config("a");
  std::atomic<bool> stall{false};
  std::atomic<int> calls_without_deadline{0};
  std::atomic<int64_t> longest_deadline_ms{0};
  client->before = [&](const std::string&) -> Status {
    const auto deadline = ScopedRequestDeadline::Current();
    if (!deadline) {
      ++calls_without_deadline;
      return Status::Ok();
    }
    const auto left =
        std::chrono::duration_cast<milliseconds>(*deadline - std::chrono::steady_clock::now());
    longest_deadline_ms = std::max<int64_t>(longest_deadline_ms, left.count());
    if (!stall) return Status::Ok();
    // What RestClient does with a server that does not answer: wait until the deadline.
    clock.Advance(std::max(left, milliseconds(0)));
    return Status::DeadlineExceeded("no answer");
  };
  std::atomic<bool> stopped{false};
  Clock::TimePoint stopped_at{};
  LeaderElector elector(client, config,
                        {.on_started_leading = [&] { stall = true; },
                         .on_stopped_leading =
                             [&] {
                               stopped_at = clock.Now();
                               stopped = true;
                             }},
                        clock);
  bool led = false;
  std::thread runner([&] { led = elector.Run(); });
  REQUIRE(WaitUntil([&] { return stopped.load(); }));
  runner.join();  // it returns on its own: the lease was lost
  CHECK(led);
  CHECK_FALSE(elector.IsLeader());
  CHECK(calls_without_deadline == 0);
  CHECK(longest_deadline_ms <=
        std::chrono::duration_cast<milliseconds>(config.renew_deadline).count());
  const auto writes = server.writes();
  REQUIRE_FALSE(writes.empty());
  // Another candidate may take over one lease duration after the last write; we stopped leading
  // by the renew deadline after it.
  const auto last_write = writes.back().at;
  INFO("stopped " << std::chrono::duration_cast<milliseconds>(stopped_at - last_write).count()
                  << " ms after the last renewal");
  CHECK(stopped_at - last_write <= config.renew_deadline + milliseconds(1));
  CHECK(stopped_at - last_write < config.lease_duration);
  CHECK(server.holder() == "a");  // not released: the API did not answer
}

TEST_CASE(
    "LeaderElector: another holder's lease is taken only a lease duration after its last "
    "renewal",
    "[unit][leader]") {
  SimClock clock;
  LeaseServer server(clock);
  const LeaderElectionConfig config = Config("a");
  // "other" renews on every read until the clock reaches `other_stops`.
  const Clock::TimePoint other_stops = clock.Now() + seconds(60);
  int renewals = 0;
  Clock::TimePoint last_other_renewal{};
  server.on_get = [&](Object& lease) {
    if (clock.Now() >= other_stops) return;
    last_other_renewal = clock.Now();
    lease["apiVersion"] = "coordination.k8s.io/v1";
    lease["kind"] = "Lease";
    lease["spec"]["holderIdentity"] = "other";
    lease["spec"]["leaseDurationSeconds"] = 15;
    lease["spec"]["leaseTransitions"] = 3;
    lease["spec"]["renewTime"] = "t" + std::to_string(++renewals);
  };
  auto client = std::make_shared<LeaseClient>(server);
  std::vector<std::string> leaders;
  std::mutex leaders_mu;
  LeaderElector elector(client, config,
                        {.on_new_leader =
                             [&](const std::string& who) {
                               std::lock_guard<std::mutex> lock(leaders_mu);
                               leaders.push_back(who);
                             }},
                        clock);
  std::thread runner([&] { elector.Run(); });
  REQUIRE(WaitUntil([&] { return elector.IsLeader(); }));
  elector.Stop();
  runner.join();
  const auto writes = server.writes();
  REQUIRE_FALSE(writes.empty());
  CHECK(writes.front().holder == "a");
  CHECK(last_other_renewal > other_stops - seconds(3));
  CHECK(writes.front().at >= last_other_renewal + config.lease_duration);
  // At most one retry period (with 20% jitter) late.
  CHECK(writes.front().at <= last_other_renewal + config.lease_duration + milliseconds(2400));
  std::lock_guard<std::mutex> lock(leaders_mu);
  REQUIRE_FALSE(leaders.empty());
  CHECK(leaders.front() == "other");
}

TEST_CASE("LeaderElector: a Lease with a hostile leaseDurationSeconds is clamped",
          "[unit][leader]") {
  SimClock clock;
  LeaseServer server(clock);
  bool seeded = false;
  server.on_get = [&](Object& lease) {
    if (seeded) return;
    seeded = true;
    lease = {{"spec",
              {{"holderIdentity", "other"},
               {"leaseDurationSeconds", int64_t{1} << 40},
               {"renewTime", "x"}}}};
  };
  auto client = std::make_shared<LeaseClient>(server);
  const LeaderElectionConfig config = Config("a");
  LeaderElector elector(client, config, {}, clock);
  const auto start = clock.Now();
  std::thread runner([&] { elector.Run(); });
  REQUIRE(WaitUntil([&] { return elector.IsLeader(); }));
  elector.Stop();
  runner.join();
  // An hour at most, not 35,000 years.
  CHECK(server.writes().front().at - start <= std::chrono::hours(1) + seconds(3));
}

TEST_CASE("RestClient: requests end by the ScopedRequestDeadline", "[unit][leader]") {
  // A server that accepts connections (the kernel does) and never answers.
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  REQUIRE(fd >= 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0);
  REQUIRE(listen(fd, 16) == 0);
  socklen_t len = sizeof(addr);
  REQUIRE(getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0);
  RestConfig config;
  config.server = "https://127.0.0.1:" + std::to_string(ntohs(addr.sin_port));
  config.request_timeout = seconds(30);
  auto client = RestClient::New(config);
  REQUIRE(client.ok());
  const auto start = std::chrono::steady_clock::now();
  Status s;
  {
    const ScopedRequestDeadline deadline(start + milliseconds(300));
    s = (*client)->Get(resources::kLeases, "ns", "lease").status();
  }
  const auto took = std::chrono::steady_clock::now() - start;
  close(fd);
  CHECK_FALSE(s.ok());
  CHECK(took < seconds(3));
  CHECK(took >= milliseconds(250));
  // Scopes nest: the earlier deadline counts, and each ends with its scope.
  CHECK_FALSE(ScopedRequestDeadline::Current().has_value());
  {
    const ScopedRequestDeadline outer(start + seconds(5));
    {
      const ScopedRequestDeadline inner(start + seconds(10));
      CHECK(*ScopedRequestDeadline::Current() == start + seconds(5));
    }
    CHECK(*ScopedRequestDeadline::Current() == start + seconds(5));
  }
  CHECK_FALSE(ScopedRequestDeadline::Current().has_value());
}

// A runnable that records what happens to it in a shared journal.
class Recorder final : public Runnable {
 public:
  Recorder(std::string name, std::vector<std::string>& journal, std::mutex& mu,
           std::function<Status(std::stop_token)> start = nullptr,
           std::function<void()> stop = nullptr, bool leader = true)
      : name_(std::move(name)),
        journal_(journal),
        mu_(mu),
        start_(std::move(start)),
        stop_(std::move(stop)),
        leader_(leader) {}
  std::string Name() const override { return name_; }
  bool NeedsLeaderElection() const override { return leader_; }
  Status Start(std::stop_token stop) override {
    Note("start " + name_);
    return start_ ? start_(stop) : Status::Ok();
  }
  void Stop() override {
    if (stop_) stop_();
    Note("stop " + name_);
  }
  void Note(const std::string& what) {
    std::lock_guard<std::mutex> lock(mu_);
    journal_.push_back(what);
  }

 private:
  const std::string name_;
  std::vector<std::string>& journal_;
  std::mutex& mu_;
  const std::function<Status(std::stop_token)> start_;
  const std::function<void()> stop_;
  const bool leader_;
};

// Short lease times on the real clock: the Manager's own waits are real.
LeaderElectionConfig ShortLease(const std::string& identity) {
  return {.lease_namespace = "ns",
          .lease_name = "lease",
          .identity = identity,
          .lease_duration = milliseconds(3000),
          .renew_deadline = milliseconds(1500),
          .retry_period = milliseconds(300)};
}

struct ManagerFixture {
  SimClock unused;
  LeaseServer server{unused};
  std::shared_ptr<LeaseClient> client = std::make_shared<LeaseClient>(server);
  std::vector<std::string> journal;
  std::mutex mu;
  std::unique_ptr<Manager> Make(ManagerConfig config) {
    return std::make_unique<Manager>(client, client, std::make_unique<MetricsRegistry>(),
                                     std::move(config), SystemClock());
  }
  std::vector<std::string> Journal() {
    std::lock_guard<std::mutex> lock(mu);
    return journal;
  }
};

TEST_CASE("Manager: leader-only runnables run while it leads and stop before the lease is released",
          "[unit][leader]") {
  ManagerFixture f;
  auto manager = f.Make({.leader_election = ShortLease("m")});
  std::string holder_at_start, holder_at_stop;
  manager->Add(std::make_shared<Recorder>("always", f.journal, f.mu, nullptr, nullptr, false));
  manager->Add(std::make_shared<Recorder>(
      "leader", f.journal, f.mu,
      [&](const std::stop_token&) {
        holder_at_start = f.server.holder();
        return Status::Ok();
      },
      [&] { holder_at_stop = f.server.holder(); }));
  std::stop_source stop;
  Status result = Status::Unknown("not run");
  std::thread runner([&] { result = manager->Run(stop.get_token()); });
  REQUIRE(WaitUntil([&] { return f.Journal().size() == 2; }));
  CHECK(manager->IsLeader());
  stop.request_stop();
  runner.join();
  CHECK(result.ok());
  // The two groups start on threads of their own, in either order; the leader's work stops first.
  const auto journal = f.Journal();
  REQUIRE(journal.size() == 4);
  CHECK(std::set<std::string>(journal.begin(), journal.begin() + 2) ==
        std::set<std::string>{"start always", "start leader"});
  CHECK(std::vector<std::string>(journal.begin() + 2, journal.end()) ==
        std::vector<std::string>{"stop leader", "stop always"});
  CHECK(holder_at_start == "m");
  CHECK(holder_at_stop == "m");      // still ours while the work stopped
  CHECK(f.server.holder().empty());  // released after
}

TEST_CASE("Manager: a lost lease stops the leader's work before another may lead",
          "[unit][leader]") {
  ManagerFixture f;
  std::atomic<bool> outage{false};
  f.client->before = [&](const std::string&) {
    return outage ? Status::Unavailable("connection refused") : Status::Ok();
  };
  const auto lease = ShortLease("m");
  std::atomic<bool> overrun{false};
  auto manager = f.Make({.leader_election = lease, .on_stop_overrun = [&] { overrun = true; }});
  std::chrono::steady_clock::time_point stopped_at;
  manager->Add(std::make_shared<Recorder>("leader", f.journal, f.mu, nullptr,
                                          [&] { stopped_at = std::chrono::steady_clock::now(); }));
  Status result = Status::Unknown("not run");
  std::thread runner([&] { result = manager->Run(std::stop_token{}); });
  REQUIRE(WaitUntil([&] { return f.Journal().size() == 1; }));
  const auto outage_at = std::chrono::steady_clock::now();
  outage = true;
  runner.join();  // returns by itself
  CHECK(result.code() == Code::kAborted);
  CHECK(f.Journal() == std::vector<std::string>{"start leader", "stop leader"});
  CHECK_FALSE(overrun);
  // The last renewal was sent before the outage began; others wait a lease duration after it.
  CHECK(stopped_at - outage_at < lease.lease_duration);
}

TEST_CASE(
    "Manager: the lease has a client of its own / a drained controllers' client costs no lease",
    "[unit][leader]") {
  ManagerFixture f;
  // The controllers' client: every request waits 5 s (a rate limiter with a long queue).
  auto busy = std::make_shared<LeaseClient>(f.server);
  busy->before = [](const std::string&) {
    std::this_thread::sleep_for(seconds(5));
    return Status::Ok();
  };
  const auto lease = ShortLease("m");
  std::atomic<bool> overrun{false};
  auto manager = std::make_unique<Manager>(
      busy, busy, std::make_unique<MetricsRegistry>(),
      ManagerConfig{.leader_election = lease, .on_stop_overrun = [&] { overrun = true; }},
      SystemClock(), f.client);
  manager->Add(std::make_shared<Recorder>("leader", f.journal, f.mu, nullptr, nullptr));
  std::stop_source stop;
  Status result = Status::Unknown("not run");
  std::thread runner([&] { result = manager->Run(stop.get_token()); });
  REQUIRE(WaitUntil([&] { return f.Journal().size() == 1; }));
  // Three lease durations: each renewal must have gone through the election client.
  std::this_thread::sleep_for(3 * lease.lease_duration);
  CHECK(manager->IsLeader());
  CHECK(f.server.holder() == "m");
  CHECK(busy->calls == 0);
  stop.request_stop();
  runner.join();
  CHECK(result.ok());
  CHECK_FALSE(overrun);
}

TEST_CASE("Manager: work that does not stop within the lease's margin ends the process",
          "[unit][leader]") {
  ManagerFixture f;
  std::atomic<bool> outage{false};
  f.client->before = [&](const std::string&) {
    return outage ? Status::Unavailable("connection refused") : Status::Ok();
  };
  std::atomic<bool> overrun{false};
  std::mutex stuck_mu;
  std::condition_variable stuck_cv;
  auto manager = f.Make({.leader_election = ShortLease("m"), .on_stop_overrun = [&] {
                           overrun = true;
                           stuck_cv.notify_all();
                         }});
  manager->Add(std::make_shared<Recorder>("stuck", f.journal, f.mu, nullptr, [&] {
    // Stuck until the Manager gives up on it (at most 10 s).
    std::unique_lock<std::mutex> lock(stuck_mu);
    stuck_cv.wait_for(lock, seconds(10), [&] { return overrun.load(); });
  }));
  Status result = Status::Unknown("not run");
  std::thread runner([&] { result = manager->Run(std::stop_token{}); });
  REQUIRE(WaitUntil([&] { return f.Journal().size() == 1; }));
  outage = true;
  runner.join();
  CHECK(overrun);
  CHECK(result.code() == Code::kAborted);
}

TEST_CASE("Manager: a runnable that cannot start stops the others and is the error",
          "[unit][leader]") {
  ManagerFixture f;
  auto manager = f.Make({});  // no leader election: everything runs at once
  manager->Add(std::make_shared<Recorder>("first", f.journal, f.mu));
  manager->Add(std::make_shared<Recorder>("broken", f.journal, f.mu, [](const std::stop_token&) {
    return Status::DeadlineExceeded("the cache of pods did not sync within 120 s");
  }));
  manager->Add(std::make_shared<Recorder>("never", f.journal, f.mu));
  const Status result = manager->Run(std::stop_token{});
  CHECK(result.code() == Code::kDeadlineExceeded);
  CHECK(result.message().find("broken") != std::string::npos);
  CHECK(f.Journal() ==
        std::vector<std::string>{"start first", "start broken", "stop broken", "stop first"});
}

TEST_CASE("Manager: a stop during a slow start cancels it and is no error", "[unit][leader]") {
  ManagerFixture f;
  auto manager = f.Make({});
  manager->Add(std::make_shared<Recorder>("slow", f.journal, f.mu, [](std::stop_token stop) {
    std::mutex mu;
    std::condition_variable_any cv;
    std::unique_lock<std::mutex> lock(mu);
    cv.wait(lock, std::move(stop), [] { return false; });
    return Status::Cancelled("stopped while waiting for caches");
  }));
  std::stop_source stop;
  Status result = Status::Unknown("not run");
  std::thread runner([&] { result = manager->Run(stop.get_token()); });
  REQUIRE(WaitUntil([&] { return f.Journal().size() == 1; }));
  stop.request_stop();
  runner.join();
  CHECK(result.ok());
  CHECK(f.Journal() == std::vector<std::string>{"start slow", "stop slow"});
}

}  // namespace
}  // namespace ephemera::apiclient
