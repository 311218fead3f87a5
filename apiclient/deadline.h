// ScopedRequestDeadline: a deadline for the API requests that one thread makes while the object
// lives, as a Go context's deadline is for client-go. RestClient ends every request made under it
// by the deadline: the wait for a rate-limit token, each round trip and the waits between retries;
// past it a request returns DEADLINE_EXCEEDED. Scopes nest; the earliest deadline counts.
//
// The leader elector bounds each renewal by its renew deadline this way, so that a stalled API
// server cannot keep a leader working past the point where another replica may take over.
//
// Thread safety: each thread has its own deadline; an object must be destroyed on the thread that
// made it.
#pragma once

#include <chrono>
#include <optional>

namespace ephemera::apiclient {

class ScopedRequestDeadline {
 public:
  using TimePoint = std::chrono::steady_clock::time_point;
  explicit ScopedRequestDeadline(TimePoint deadline);
  ~ScopedRequestDeadline();
  ScopedRequestDeadline(const ScopedRequestDeadline&) = delete;
  ScopedRequestDeadline& operator=(const ScopedRequestDeadline&) = delete;

  // The deadline in force on this thread, if any.
  static std::optional<TimePoint> Current();

 private:
  std::optional<TimePoint> previous_;
};

}  // namespace ephemera::apiclient
