// An Eraser for tests that holds every erase until the test releases it, so that a test can see
// what the backend lets happen while an erase (minutes for a big volume) is in progress.
//
// Thread safety: the eraser runs on the backend's caller's thread; the test calls WaitEntered()
// and Release() on its own.
#pragma once

#include <chrono>
#include <condition_variable>
#include <mutex>
#include <string>
#include <vector>

#include "csi/backends/device_manager.h"

namespace ephemera::csi::testing {

class HeldEraser {
 public:
  Eraser eraser() {
    return [this](const std::string& path, int64_t /*size*/) {
      std::unique_lock<std::mutex> lock(mu_);
      paths_.push_back(path);
      cv_.notify_all();
      cv_.wait(lock, [this] { return released_; });
      return Status::Ok();
    };
  }
  // Whether an erase has begun within `timeout`.
  bool WaitEntered(std::chrono::milliseconds timeout) {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, timeout, [this] { return !paths_.empty(); });
  }
  void Release() {
    std::lock_guard<std::mutex> lock(mu_);
    released_ = true;
    cv_.notify_all();
  }
  std::vector<std::string> paths() {
    std::lock_guard<std::mutex> lock(mu_);
    return paths_;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::string> paths_;
  bool released_ = false;
};

}  // namespace ephemera::csi::testing
