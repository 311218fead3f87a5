// Clock: the time source of the controller runtime, an interface so that tests can drive time.
//
// Thread safety: implementations are safe to use from any thread.
#pragma once

#include <chrono>
#include <memory>

namespace ephemera::apiclient {

class Clock {
 public:
  using TimePoint = std::chrono::steady_clock::time_point;
  using Duration = std::chrono::steady_clock::duration;

  virtual ~Clock() = default;
  virtual TimePoint Now() const = 0;
  // Wall-clock time, for timestamps written to the API (Lease renewTime, Event times).
  virtual std::chrono::system_clock::time_point WallNow() const = 0;
  virtual void SleepFor(Duration d) const = 0;
};

// The process's real clocks.
class RealClock final : public Clock {
 public:
  TimePoint Now() const override { return std::chrono::steady_clock::now(); }
  std::chrono::system_clock::time_point WallNow() const override {
    return std::chrono::system_clock::now();
  }
  void SleepFor(Duration d) const override;
};

// A process-wide RealClock.
const Clock& SystemClock();

}  // namespace ephemera::apiclient
