// ExecCommandRunner on posix_spawnp (see exec_command_runner.h).
#include "csi/exec_command_runner.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <iostream>
#include <system_error>
#include <thread>

#include "common/log.h"
#include "csi/system_error.h"

extern char** environ;

namespace ephemera::csi {

namespace {

constexpr size_t kMaxOutput = size_t{64} * 1024;
// While the command runs and its output is open, how often to look whether it has exited (only
// matters when something else holds the pipe: normally the exit closes it and wakes us).
constexpr std::chrono::milliseconds kExitCheck{100};
// After the output has closed, the waits for the exit grow from 50 us (the exit is usually that
// close) to this.
constexpr std::chrono::microseconds kFirstNap{50};
constexpr std::chrono::microseconds kMaxNap{50000};

using Clock = std::chrono::steady_clock;

std::chrono::milliseconds Since(Clock::time_point start) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - start);
}

// Milliseconds from now until `until`, rounded up, at least 0 and at most `cap`.
int MillisUntil(Clock::time_point until, std::chrono::milliseconds cap) {
  auto left = std::chrono::ceil<std::chrono::milliseconds>(until - Clock::now());
  return static_cast<int>(std::clamp(left, std::chrono::milliseconds(0), cap).count());
}

// A started command: its process ID (also its process group's) and the read end of its output
// pipe. The child is not reaped until Reap(), so the ID (and the group's) stays ours to signal.
class Child {
 public:
  Child(pid_t pid, int fd) : pid_(pid), fd_(fd) {}
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;
  ~Child() {
    if (fd_ >= 0) close(fd_);
  }

  bool exited() const { return exited_; }
  std::string& output() { return output_; }

  // Collects output until the child has exited or `until` has passed.
  void WaitForExit(Clock::time_point until) {
    std::chrono::microseconds nap = kFirstNap;
    while (!CheckExited() && Clock::now() < until) {
      if (!eof_) {
        Pump(MillisUntil(until, kExitCheck));
      } else {
        // The output is closed: the exit follows at once, or the command closed it and goes on.
        std::this_thread::sleep_for(std::min<Clock::duration>(nap, until - Clock::now()));
        nap = std::min(nap * 2, kMaxNap);
      }
    }
  }

  // Collects output until it is closed (by every process holding it) or `until` has passed.
  void DrainOutput(Clock::time_point until) {
    while (!eof_ && Clock::now() < until)
      Pump(MillisUntil(until, std::chrono::hours(1)));
  }

  // SIGTERM/SIGKILL to the process group, and to the child should it have left the group.
  void Signal(int signal) const {
    kill(-pid_, signal);
    kill(pid_, signal);
  }

  // Collects the exit status of an exited child: 128+N when killed by signal N.
  int Reap() {
    int wstatus = 0;
    while (waitpid(pid_, &wstatus, 0) < 0 && errno == EINTR) {
    }
    if (WIFSIGNALED(wstatus)) return 128 + WTERMSIG(wstatus);
    return WEXITSTATUS(wstatus);
  }

  // For a child that would not die: a detached thread waits for it, so that it leaves no zombie.
  void ReapLater() const {
    pid_t pid = pid_;
    try {
      std::thread([pid] {
        while (waitpid(pid, nullptr, 0) < 0 && errno == EINTR) {
        }
      }).detach();
    } catch (const std::system_error& e) {
      log::Error("cannot start a thread to reap a process", Status::Internal(e.what()),
                 {{"pid", std::to_string(pid)}});
    }
  }

 private:
  // Whether the child has exited, without reaping it (WNOWAIT).
  bool CheckExited() {
    if (exited_) return true;
    siginfo_t info{};
    if (waitid(P_PID, static_cast<id_t>(pid_), &info, WEXITED | WNOHANG | WNOWAIT) == 0 &&
        info.si_pid == pid_) {
      exited_ = true;
    }
    return exited_;
  }

  // Waits up to `timeout_ms` for output and reads what there is.
  void Pump(int timeout_ms) {
    pollfd fd{fd_, POLLIN, 0};
    int ready = poll(&fd, 1, timeout_ms);
    if (ready <= 0) return;  // timeout or EINTR: the caller looks at the clock
    char buffer[4096];
    for (;;) {
      ssize_t n = read(fd_, buffer, sizeof(buffer));
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && errno == EAGAIN) return;
      if (n <= 0) {
        eof_ = true;
        return;
      }
      if (output_.size() < kMaxOutput) {
        output_.append(buffer,
                       std::min<size_t>(static_cast<size_t>(n), kMaxOutput - output_.size()));
      }
    }
  }

  const pid_t pid_;
  const int fd_;
  std::string output_;
  bool eof_ = false;
  bool exited_ = false;
};

}  // namespace

StatusOr<CommandResult> ExecCommandRunner::Run(const std::vector<std::string>& argv,
                                               std::chrono::milliseconds timeout) {
  if (argv.empty()) return Status::InvalidArgument("empty command");
  for (const std::string& arg : argv) {
    if (arg.find('\0') != std::string::npos) {
      return Status::InvalidArgument("command argument contains a NUL byte");
    }
  }
  const std::chrono::milliseconds limit = options_.timeout_override.value_or(timeout);
  if (limit.count() <= 0) {
    return Status::InvalidArgument("command timeout for " + argv[0] + " is not positive");
  }
  std::vector<char*> c_argv;
  c_argv.reserve(argv.size() + 1);
  for (const std::string& arg : argv)
    c_argv.push_back(const_cast<char*>(arg.c_str()));
  c_argv.push_back(nullptr);

  int pipe_fds[2];
  if (pipe2(pipe_fds, O_CLOEXEC) != 0) {
    return Status::Internal(std::string("pipe: ") + ErrnoText(errno));
  }
  // Only our end is non-blocking; the command's stdout and stderr stay as programs expect them.
  fcntl(pipe_fds[0], F_SETFL, O_NONBLOCK);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_adddup2(&actions, pipe_fds[1], 1);
  posix_spawn_file_actions_adddup2(&actions, pipe_fds[1], 2);
  // Nothing else of ours: descriptors opened without O_CLOEXEC (Boost.Asio's sockets are: the
  // metrics and capacity listeners and their connections) would be inherited, and LVM refuses to
  // run quietly with an inherited descriptor ("File descriptor 13 (socket:[...]) leaked on lvs
  // invocation", on stderr, in the middle of the output it reports).
  posix_spawn_file_actions_addclosefrom_np(&actions, 3);
  // A process group of its own (to be killed as one), no signal blocked, every signal's action
  // the default (the driver's threads block SIGTERM and SIGINT; a SIGPIPE ignored by a library
  // would be inherited too).
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  sigset_t none;
  sigemptyset(&none);
  posix_spawnattr_setsigmask(&attr, &none);
  sigset_t all;
  sigfillset(&all);
  posix_spawnattr_setsigdefault(&attr, &all);
  posix_spawnattr_setpgroup(&attr, 0);
  posix_spawnattr_setflags(&attr,
                           POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
  pid_t pid = 0;
  const Clock::time_point start = Clock::now();
  int rc = posix_spawnp(&pid, c_argv[0], &actions, &attr, c_argv.data(), environ);
  posix_spawnattr_destroy(&attr);
  posix_spawn_file_actions_destroy(&actions);
  close(pipe_fds[1]);
  if (rc != 0) {
    close(pipe_fds[0]);
    return Status::Internal("cannot start " + argv[0] + ": " + ErrnoText(rc));
  }
  Child child(pid, pipe_fds[0]);
  const std::chrono::milliseconds grace = options_.kill_grace;

  child.WaitForExit(start + limit);
  if (child.exited()) {
    // Done. What it left in the background may hold the pipe: read on for a while, not forever.
    child.DrainOutput(Clock::now() + grace);
    CommandResult result;
    result.exit_code = child.Reap();
    result.output = std::move(child.output());
    return result;
  }

  // Out of time: SIGTERM to the group; SIGKILL once the command is gone or after the grace (for
  // whatever of the group is left, e.g. a helper that ignores SIGTERM and holds the pipe).
  child.Signal(SIGTERM);
  Clock::time_point until = Clock::now() + grace;
  child.WaitForExit(until);
  if (child.exited()) child.DrainOutput(until);
  child.Signal(SIGKILL);
  until = Clock::now() + grace;
  child.WaitForExit(until);
  if (child.exited()) child.DrainOutput(until);
  std::string what = argv[0] + " did not finish within " + FormatDuration(limit);
  if (child.exited()) {
    const int code = child.Reap();
    what += "; killed after " + FormatDuration(Since(start)) +
            (code > 128 ? " (signal " + std::to_string(code - 128) + ")"
                        : " (it exited with " + std::to_string(code) + ")");
  } else {
    child.ReapLater();
    what += "; still not dead " + FormatDuration(Since(start)) +
            " after the start, SIGKILL notwithstanding (stuck in the kernel?)";
  }
  return Status::DeadlineExceeded(what + "; output so far: " + child.output());
}

}  // namespace ephemera::csi
