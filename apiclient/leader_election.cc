#include "apiclient/leader_election.h"

#include <unistd.h>

#include <cstdlib>
#include <ctime>
#include <random>

#include "apiclient/errors.h"

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

bool LeaderElector::SleepUnlessStopped(std::chrono::milliseconds d) {
  std::unique_lock<std::mutex> lock(mu_);
  return !cv_.wait_for(lock, d, [this] { return stopped_.load(); });
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

bool LeaderElector::TryAcquireOrRenew() {
  const auto wall_now = FormatMicroTime(clock_.WallNow());
  const int lease_seconds = static_cast<int>(
      std::chrono::duration_cast<std::chrono::seconds>(config_.lease_duration).count());
  auto current = client_->Get(resources::kLeases, config_.lease_namespace, config_.lease_name);
  if (!current.ok()) {
    if (!IsNotFound(current.status())) return false;
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
    if (!client_->Create(resources::kLeases, config_.lease_namespace, lease).ok()) return false;
    std::lock_guard<std::mutex> lock(mu_);
    observed_holder_ = config_.identity;
    observed_renew_time_ = wall_now;
    observed_at_ = last_renew_ = clock_.Now();
    return true;
  }
  const Object& lease = **current;
  const std::string holder = Field(lease, "spec", "holderIdentity");
  const std::string renew_time = Field(lease, "spec", "renewTime");
  int record_seconds = lease_seconds;
  if (lease.contains("spec") && lease["spec"].contains("leaseDurationSeconds") &&
      lease["spec"]["leaseDurationSeconds"].is_number_integer()) {
    record_seconds = lease["spec"]["leaseDurationSeconds"].get<int>();
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (holder != observed_holder_ || renew_time != observed_renew_time_) {
      if (holder != observed_holder_ && callbacks_.on_new_leader && !holder.empty()) {
        callbacks_.on_new_leader(holder);
      }
      observed_holder_ = holder;
      observed_renew_time_ = renew_time;
      observed_at_ = clock_.Now();
    }
    if (!holder.empty() && holder != config_.identity &&
        observed_at_ + std::chrono::seconds(record_seconds) > clock_.Now()) {
      return false;  // Someone else holds a lease that has not expired by our clock.
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
    const int transitions =
        spec.contains("leaseTransitions") && spec["leaseTransitions"].is_number_integer()
            ? spec["leaseTransitions"].get<int>()
            : 0;
    spec["leaseTransitions"] = holder.empty() ? transitions : transitions + 1;
  }
  if (!client_->Update(resources::kLeases, config_.lease_namespace, updated).ok()) return false;
  std::lock_guard<std::mutex> lock(mu_);
  observed_holder_ = config_.identity;
  observed_renew_time_ = wall_now;
  observed_at_ = last_renew_ = clock_.Now();
  return true;
}

void LeaderElector::Release() {
  auto current = client_->Get(resources::kLeases, config_.lease_namespace, config_.lease_name);
  if (!current.ok() || Field(**current, "spec", "holderIdentity") != config_.identity) return;
  Object released = **current;
  const auto now = FormatMicroTime(clock_.WallNow());
  released["spec"]["holderIdentity"] = nullptr;
  released["spec"]["leaseDurationSeconds"] = 1;
  released["spec"]["renewTime"] = now;
  released["spec"]["acquireTime"] = now;
  (void)client_->Update(resources::kLeases, config_.lease_namespace, released);
}

bool LeaderElector::Run() {
  static thread_local std::mt19937 rng{std::random_device{}()};
  auto jittered = [this] {
    // Up to 20% more than the retry period, as client-go's JitterFactor 1.2.
    return config_.retry_period +
           std::chrono::milliseconds(rng() % (config_.retry_period.count() / 5 + 1));
  };
  // Campaign.
  while (!stopped_) {
    if (TryAcquireOrRenew()) break;
    if (!SleepUnlessStopped(jittered())) return false;
  }
  if (stopped_) return false;
  leading_ = true;
  if (callbacks_.on_started_leading) callbacks_.on_started_leading();
  // Lead: renew every retry period; give up when no renewal succeeded within the deadline.
  while (!stopped_) {
    if (!SleepUnlessStopped(config_.retry_period)) break;
    const auto deadline = clock_.Now() + config_.renew_deadline;
    bool renewed = false;
    while (!stopped_ && clock_.Now() < deadline) {
      if (TryAcquireOrRenew()) {
        renewed = true;
        break;
      }
      if (!SleepUnlessStopped(std::chrono::milliseconds(config_.retry_period.count() / 4 + 1))) {
        break;
      }
    }
    if (!renewed && !stopped_) break;  // Lost the lease.
  }
  leading_ = false;
  if (stopped_ && config_.release_on_stop) Release();
  if (callbacks_.on_stopped_leading) callbacks_.on_stopped_leading();
  return true;
}

}  // namespace ephemera::apiclient
