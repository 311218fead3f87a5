#include "apiclient/leader_election.h"

#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <ctime>
#include <limits>
#include <random>
#include <thread>

#include "apiclient/deadline.h"
#include "apiclient/errors.h"
#include "common/log.h"

namespace ephemera::apiclient {

Status ValidateLeaderElection(const LeaderElectionConfig& c) {
  if (c.lease_namespace.empty() || c.lease_name.empty() || c.identity.empty()) {
    return Status::InvalidArgument("leader election needs a lease namespace, name and identity");
  }
  if (c.retry_period.count() <= 0) {
    return Status::InvalidArgument("--leader-elect-retry-period must be positive");
  }
  if (c.lease_duration <= c.renew_deadline) {
    return Status::InvalidArgument(
        "--leader-elect-lease-duration must be longer than --leader-elect-renew-deadline");
  }
  if (static_cast<double>(c.renew_deadline.count()) <=
      1.2 * static_cast<double>(c.retry_period.count())) {
    return Status::InvalidArgument(
        "--leader-elect-renew-deadline must be longer than 1.2 x --leader-elect-retry-period");
  }
  return Status::Ok();
}

std::string MakeLeaderIdentity() {
  const char* pod = std::getenv("POD_NAME");  // NOLINT(concurrency-mt-unsafe)
  std::string base;
  if (pod != nullptr && *pod != '\0') {
    base = pod;
  } else {
    char host[256] = {};
    gethostname(host, sizeof(host) - 1);
    base = host;
  }
  std::random_device rd;
  char suffix[16];
  std::snprintf(suffix, sizeof(suffix), "%08x", rd());
  return base + "_" + suffix;
}

std::string FormatMicroTime(std::chrono::system_clock::time_point t) {
  const auto micros =
      std::chrono::duration_cast<std::chrono::microseconds>(t.time_since_epoch()).count();
  const time_t secs = static_cast<time_t>(micros / 1000000);
  tm utc{};
  gmtime_r(&secs, &utc);
  char buf[96];
  std::snprintf(buf, sizeof(buf), "%04d-%02d-%02dT%02d:%02d:%02d.%06dZ", utc.tm_year + 1900,
                utc.tm_mon + 1, utc.tm_mday, utc.tm_hour, utc.tm_min, utc.tm_sec,
                static_cast<int>(micros % 1000000));
  return buf;
}

LeaderElector::LeaderElector(ApiClientPtr client, LeaderElectionConfig config,
                             LeaderCallbacks callbacks, const Clock& clock)
    : client_(std::move(client)),
      config_(std::move(config)),
      callbacks_(std::move(callbacks)),
      clock_(clock) {}

bool LeaderElector::SleepUnlessStopped(Clock::Duration d) {
  std::unique_lock<std::mutex> lock(mu_);
  return !clock_.WaitFor(lock, cv_, d, [this] { return stopped_.load(); });
}

void LeaderElector::Stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopped_ = true;
  }
  cv_.notify_all();
}

Status LeaderElector::Check() const {
  if (!leading_) return Status::Ok();
  std::lock_guard<std::mutex> lock(mu_);
  if (clock_.Now() - last_renew_ > config_.lease_duration + std::chrono::seconds(20)) {
    return Status::Unavailable("leader has not renewed its lease in time");
  }
  return Status::Ok();
}

void LeaderElector::Post(std::function<void()> call) {
  if (!call) return;
  {
    std::lock_guard<std::mutex> lock(notify_mu_);
    pending_.push_back(std::move(call));
  }
  notify_cv_.notify_all();
}

void LeaderElector::NotifierLoop() {
  std::unique_lock<std::mutex> lock(notify_mu_);
  while (true) {
    notify_cv_.wait(lock, [this] { return notifier_done_ || !pending_.empty(); });
    if (pending_.empty()) return;  // done, and everything posted has run
    auto call = std::move(pending_.front());
    pending_.pop_front();
    lock.unlock();
    call();
    lock.lock();
  }
}

void LeaderElector::LogFailure(const Status& s, bool leading) const {
  if (s.code() == Code::kFailedPrecondition) {
    if (log::V(4)) log::Info("lease is held by another candidate", {{"detail", s.message()}});
    return;
  }
  log::Error(leading ? "cannot renew the leader lease" : "cannot acquire the leader lease", s,
             {{"lease", config_.lease_namespace + "/" + config_.lease_name}});
}

Status LeaderElector::TryAcquireOrRenew(Clock::TimePoint deadline) {
  const auto attempt_start = clock_.Now();
  if (attempt_start >= deadline) return Status::DeadlineExceeded("renew deadline passed");
  // The requests of this attempt end by the deadline, in the transport's real time.
  const ScopedRequestDeadline request_deadline(std::chrono::steady_clock::now() +
                                               (deadline - attempt_start));
  const auto wall_now = FormatMicroTime(clock_.WallNow());
  const int lease_seconds = static_cast<int>(
      std::chrono::duration_cast<std::chrono::seconds>(config_.lease_duration).count());
  // Success counts only when it came back before the deadline: a renewal that took longer may
  // have been seen by the others too late.
  auto succeeded = [&]() -> Status {
    if (clock_.Now() >= deadline) return Status::DeadlineExceeded("renewal came back too late");
    std::lock_guard<std::mutex> lock(mu_);
    observed_holder_ = config_.identity;
    observed_renew_time_ = wall_now;
    observed_at_ = attempt_start;
    last_renew_ = attempt_start;
    return Status::Ok();
  };
  auto current = client_->Get(resources::kLeases, config_.lease_namespace, config_.lease_name);
  if (!current.ok()) {
    if (!IsNotFound(current.status())) return current.status().WithContext("get lease");
    const Object lease = {
        {"apiVersion", "coordination.k8s.io/v1"},
        {"kind", "Lease"},
        {"metadata", {{"name", config_.lease_name}, {"namespace", config_.lease_namespace}}},
        {"spec",
         {{"holderIdentity", config_.identity},
          {"leaseDurationSeconds", lease_seconds},
          {"acquireTime", wall_now},
          {"renewTime", wall_now},
          {"leaseTransitions", 0}}}};
    auto created = client_->Create(resources::kLeases, config_.lease_namespace, lease);
    if (!created.ok()) return created.status().WithContext("create lease");
    return succeeded();
  }
  const Object& lease = **current;
  const std::string holder = Field(lease, "spec", "holderIdentity");
  const std::string renew_time = Field(lease, "spec", "renewTime");
  int record_seconds = lease_seconds;
  if (lease.contains("spec") && lease["spec"].contains("leaseDurationSeconds") &&
      lease["spec"]["leaseDurationSeconds"].is_number_integer()) {
    // Hostile or odd values (negative, years) are clamped to something a lease can mean.
    record_seconds = static_cast<int>(std::clamp(
        lease["spec"]["leaseDurationSeconds"].get<int64_t>(), int64_t{1}, int64_t{3600}));
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (holder != observed_holder_ || renew_time != observed_renew_time_) {
      if (holder != observed_holder_ && !holder.empty() && callbacks_.on_new_leader) {
        Post([cb = callbacks_.on_new_leader, holder] { cb(holder); });
      }
      observed_holder_ = holder;
      observed_renew_time_ = renew_time;
      observed_at_ = clock_.Now();
    }
    if (!holder.empty() && holder != config_.identity &&
        observed_at_ + std::chrono::seconds(record_seconds) > clock_.Now()) {
      return Status::FailedPrecondition("lease held by " + holder.substr(0, 253));
    }
  }
  Object updated = lease;  // A copy: the fetched object stays as it was.
  auto& spec = updated["spec"];
  const bool ours = holder == config_.identity;
  spec["holderIdentity"] = config_.identity;
  spec["leaseDurationSeconds"] = lease_seconds;
  spec["renewTime"] = wall_now;
  if (!ours) {
    spec["acquireTime"] = wall_now;
    const int64_t transitions =
        spec.contains("leaseTransitions") && spec["leaseTransitions"].is_number_integer()
            ? spec["leaseTransitions"].get<int64_t>()
            : 0;
    // A hostile count at the type's end stays there instead of overflowing.
    const bool more = !holder.empty() && transitions < std::numeric_limits<int64_t>::max();
    spec["leaseTransitions"] = more ? transitions + 1 : transitions;
  }
  // Conditional on the resourceVersion we read: a holder that changed meanwhile wins (ABORTED).
  auto written = client_->Update(resources::kLeases, config_.lease_namespace, updated);
  if (!written.ok()) return written.status().WithContext("update lease");
  return succeeded();
}

void LeaderElector::Release() {
  // Bounded like a renewal: a stuck API server must not keep a stopping process alive.
  const ScopedRequestDeadline request_deadline(std::chrono::steady_clock::now() +
                                               config_.renew_deadline);
  auto current = client_->Get(resources::kLeases, config_.lease_namespace, config_.lease_name);
  if (!current.ok()) {
    log::Error("cannot release the leader lease", current.status());
    return;
  }
  if (Field(**current, "spec", "holderIdentity") != config_.identity) return;
  Object released = **current;
  const auto now = FormatMicroTime(clock_.WallNow());
  released["spec"]["holderIdentity"] = nullptr;
  released["spec"]["leaseDurationSeconds"] = 1;
  released["spec"]["renewTime"] = now;
  released["spec"]["acquireTime"] = now;
  auto written = client_->Update(resources::kLeases, config_.lease_namespace, released);
  if (!written.ok()) log::Error("cannot release the leader lease", written.status());
}

bool LeaderElector::Run() {
  static thread_local std::mt19937 rng{std::random_device{}()};
  auto jittered = [this] {
    // Up to 20% more than the retry period (client-go's JitterFactor 1.2 allows up to 120% more:
    // ours retries, and so takes over, sooner).
    const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(config_.retry_period);
    return config_.retry_period + std::chrono::milliseconds(rng() % (ms.count() / 5 + 1));
  };
  {
    std::lock_guard<std::mutex> lock(notify_mu_);
    notifier_done_ = false;
  }
  std::thread notifier([this] { NotifierLoop(); });
  auto finish = [&] {
    {
      std::lock_guard<std::mutex> lock(notify_mu_);
      notifier_done_ = true;
    }
    notify_cv_.notify_all();
    notifier.join();
  };

  // Campaign.
  bool acquired = false;
  while (!stopped_) {
    const Status s = TryAcquireOrRenew(clock_.Now() + config_.renew_deadline);
    if (s.ok()) {
      acquired = true;
      break;
    }
    LogFailure(s, false);
    if (!SleepUnlessStopped(jittered())) break;
  }
  if (!acquired || stopped_) {
    finish();
    return false;
  }
  leading_ = true;
  Post(callbacks_.on_started_leading);

  // Lead: renew every retry period. The deadline counts from when the last successful renewal was
  // sent, so that we stop before anyone else may start (see the header).
  bool lost = false;
  while (!stopped_ && !lost) {
    if (!SleepUnlessStopped(config_.retry_period)) break;
    Clock::TimePoint deadline;
    {
      std::lock_guard<std::mutex> lock(mu_);
      deadline = last_renew_ + config_.renew_deadline;
    }
    while (true) {
      const Status s = TryAcquireOrRenew(deadline);
      if (s.ok()) break;
      LogFailure(s, true);
      const auto left = deadline - clock_.Now();
      if (left <= Clock::Duration::zero()) {
        lost = true;
        break;
      }
      if (!SleepUnlessStopped(std::min<Clock::Duration>(config_.retry_period / 4, left))) break;
    }
  }
  leading_ = false;
  if (lost) {
    log::Error("leader lease not renewed within the renew deadline: stopping leading",
               Status::DeadlineExceeded("renew deadline"),
               {{"lease", config_.lease_namespace + "/" + config_.lease_name}});
  }
  Post(callbacks_.on_stopped_leading);
  finish();
  // Released only after on_stopped_leading has returned, that is after the leader's work stopped.
  if (!lost && config_.release_on_stop) Release();
  return true;
}

}  // namespace ephemera::apiclient
