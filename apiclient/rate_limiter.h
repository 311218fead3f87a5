// Rate limiting and backoff for API clients and work queues.
//
// Thread safety: TokenBucket is safe for concurrent use. ExponentialBackoff is a value type.
#pragma once

#include <chrono>
#include <mutex>

#include "apiclient/clock.h"

namespace ephemera::apiclient {

// A token bucket: `qps` tokens a second, at most `burst` saved up. qps <= 0 means no limit.
class TokenBucket {
 public:
  TokenBucket(double qps, int burst, const Clock& clock = SystemClock());

  // Takes a token, sleeping until one is available. Tokens are handed out in order of calls.
  void Wait();
  // Takes a token if one is available now.
  bool TryAccept();
  // Reserves a token and returns how long the caller must wait before using it (zero if none).
  Clock::Duration Reserve();

  bool unlimited() const { return qps_ <= 0; }

 private:
  void RefillLocked(Clock::TimePoint now);

  const double qps_;
  const double burst_;
  const Clock& clock_;
  std::mutex mu_;
  double tokens_;          // GUARDED_BY(mu_); negative when future tokens are reserved
  Clock::TimePoint last_;  // GUARDED_BY(mu_)
};

// base * 2^attempt, capped at max. Attempt 0 gives base.
class ExponentialBackoff {
 public:
  ExponentialBackoff(std::chrono::milliseconds base, std::chrono::milliseconds max)
      : base_(base), max_(max) {}
  std::chrono::milliseconds Delay(int attempt) const;

 private:
  std::chrono::milliseconds base_;
  std::chrono::milliseconds max_;
};

}  // namespace ephemera::apiclient
