// Programs that integration tests run beside the cluster (ephemera-controller-manager, a second
// kube-controller-manager), and polling for a condition with a deadline.
#pragma once

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <functional>
#include <iterator>
#include <string>
#include <thread>
#include <vector>

#include "tests/integration/cluster_client.h"
#include "tests/test_paths.h"

namespace ephemera::testing {

// A program run for the duration of a test, its stderr in the cluster's logs/ directory.
// Stop() (or destruction) sends SIGTERM and waits for it.
class TestProcess {
 public:
  TestProcess(const TestCluster& cluster, const std::string& binary,
              const std::vector<std::string>& flags, const std::string& log_prefix = "process") {
    log_ = cluster.dir() + "/logs/" + log_prefix + "-" + RandomSuffix() + ".log";
    std::vector<std::string> args = {binary};
    args.insert(args.end(), flags.begin(), flags.end());
    pid_ = fork();
    if (pid_ == 0) {
      FILE* out = std::freopen(log_.c_str(), "w", stderr);
      (void)out;
      std::vector<char*> argv;
      argv.reserve(args.size() + 1);
      for (auto& a : args)
        argv.push_back(a.data());
      argv.push_back(nullptr);
      execv(binary.c_str(), argv.data());
      _exit(127);
    }
  }
  TestProcess(const TestProcess&) = delete;
  TestProcess& operator=(const TestProcess&) = delete;
  ~TestProcess() { Stop(); }

  void Stop() {
    if (pid_ <= 0) return;
    kill(pid_, SIGTERM);
    int status = 0;
    waitpid(pid_, &status, 0);
    pid_ = -1;
  }
  // True while the process runs.
  bool Running() {
    int status = 0;
    return pid_ > 0 && waitpid(pid_, &status, WNOHANG) == 0;
  }
  pid_t pid() const { return pid_; }
  const std::string& log() const { return log_; }

 private:
  pid_t pid_ = -1;
  std::string log_;
};

inline std::string ManagerBinary() {
  return std::string(kBinaryDir) + "/bin/ephemera-controller-manager";
}

// ephemera-controller-manager's flags for the test cluster: no leader election, -v 2, then `extra`.
inline std::vector<std::string> ManagerFlags(const TestCluster& cluster,
                                             const std::vector<std::string>& extra) {
  std::vector<std::string> flags = {"--kubeconfig", cluster.kubeconfig(), "--leader-elect=false",
                                    "-v", "2"};
  flags.insert(flags.end(), extra.begin(), extra.end());
  return flags;
}

// The whole content of a file ("" when it cannot be read), e.g. a TestProcess's log.
inline std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

// Polls `condition` every 50 ms until it holds or `timeout` passes; returns its last value.
inline bool Eventually(const std::function<bool()>& condition,
                       std::chrono::milliseconds timeout = std::chrono::seconds(30)) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    if (condition()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return condition();
}

}  // namespace ephemera::testing
