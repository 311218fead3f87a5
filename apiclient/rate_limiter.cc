#include "apiclient/rate_limiter.h"

#include <algorithm>
#include <thread>

namespace ephemera::apiclient {

void RealClock::SleepFor(Duration d) const {
  if (d > Duration::zero()) std::this_thread::sleep_for(d);
}

const Clock& SystemClock() {
  static const RealClock clock;
  return clock;
}

TokenBucket::TokenBucket(double qps, int burst, const Clock& clock)
    : qps_(qps),
      burst_(std::max(1, burst)),
      clock_(clock),
      tokens_(std::max(1, burst)),
      last_(clock.Now()) {}

void TokenBucket::RefillLocked(Clock::TimePoint now) {
  if (now <= last_) return;
  const double elapsed = std::chrono::duration<double>(now - last_).count();
  tokens_ = std::min(burst_, tokens_ + elapsed * qps_);
  last_ = now;
}

Clock::Duration TokenBucket::Reserve() {
  if (unlimited()) return Clock::Duration::zero();
  std::lock_guard<std::mutex> lock(mu_);
  RefillLocked(clock_.Now());
  tokens_ -= 1;
  if (tokens_ >= 0) return Clock::Duration::zero();
  return std::chrono::duration_cast<Clock::Duration>(
      std::chrono::duration<double>(-tokens_ / qps_));
}

void TokenBucket::Wait() {
  clock_.SleepFor(Reserve());
}

bool TokenBucket::TryAccept() {
  if (unlimited()) return true;
  std::lock_guard<std::mutex> lock(mu_);
  RefillLocked(clock_.Now());
  if (tokens_ < 1) return false;
  tokens_ -= 1;
  return true;
}

std::chrono::milliseconds ExponentialBackoff::Delay(int attempt) const {
  if (attempt < 0) attempt = 0;
  if (attempt >= 40) return max_;
  const auto delay = base_ * (int64_t{1} << attempt);
  return std::min(delay, max_);
}

}  // namespace ephemera::apiclient
