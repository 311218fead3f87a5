// Clock: the time source of the controller runtime, an interface so that tests can drive time.
//
// Thread safety: implementations are safe to use from any thread.
#pragma once

#include <chrono>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>

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
  // Waits up to `d` on `cv` (the caller holds `lock`, as for condition_variable::wait_for) and
  // returns early once `stop()` is true; returns stop(). A fake clock advances its time instead of
  // blocking, so that code which waits this way is tested without sleeping.
  virtual bool WaitFor(std::unique_lock<std::mutex>& lock, std::condition_variable& cv, Duration d,
                       const std::function<bool()>& stop) const {
    return cv.wait_for(lock, d, stop);
  }
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
