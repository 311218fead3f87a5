// ExecCommandRunner with real processes: output and exit codes, the time limit (the process group
// is killed, a helper holding the pipe cannot keep Run() waiting, nothing is left running or
// unreaped), and the duration flag's parser. The bounds on elapsed time are generous: they tell a
// command killed at its limit from one that ran its course, on a busy machine.
#include "csi/exec_command_runner.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>

namespace ephemera::csi {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;
using Clock = std::chrono::steady_clock;

// The number after `label` in `text` ("grandchild 1234" -> 1234); 0 if absent.
pid_t NumberAfter(const std::string& text, const std::string& label) {
  size_t at = text.find(label + " ");
  if (at == std::string::npos) return 0;
  return static_cast<pid_t>(std::stol(text.substr(at + label.size() + 1)));
}

// The state letter of a process from /proc/PID/stat ('R', 'S', 'Z', ...); 0 when it is gone.
char ProcessState(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string stat((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  size_t paren = stat.rfind(')');
  if (!in.good() && stat.empty()) return 0;
  if (paren == std::string::npos || paren + 2 >= stat.size()) return 0;
  return stat[paren + 2];
}

// Processes of process group `pgid` that still run (zombies do not count: they wait for their
// parent, init for an orphan, to reap them).
int LiveMembers(pid_t pgid) {
  int live = 0;
  for (const auto& entry : std::filesystem::directory_iterator("/proc")) {
    const std::string name = entry.path().filename();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    std::ifstream in(entry.path() / "stat");
    std::string stat((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    size_t paren = stat.rfind(')');
    if (paren == std::string::npos) continue;
    // After ") ": state, ppid, pgrp.
    std::istringstream fields(stat.substr(paren + 2));
    char state = 0;
    long ppid = 0;
    long pgrp = 0;
    fields >> state >> ppid >> pgrp;
    if (pgrp == pgid && state != 'Z' && state != 'X') ++live;
  }
  return live;
}

// Whether the test process has no child left, running or unreaped.
bool NoChildren() {
  int status = 0;
  return waitpid(-1, &status, WNOHANG) == -1 && errno == ECHILD;
}

TEST_CASE("exec runner: output and exit code of a command that finishes", "[csi][exec]") {
  ExecCommandRunner runner;
  StatusOr<CommandResult> result =
      runner.Run({"sh", "-c", "echo out; echo err >&2; exit 3"}, seconds(60));
  REQUIRE(result.ok());
  CHECK(result->exit_code == 3);
  CHECK(result->output.find("out\n") != std::string::npos);
  CHECK(result->output.find("err\n") != std::string::npos);
  CHECK(NoChildren());

  StatusOr<CommandResult> killed = runner.Run({"sh", "-c", "kill -KILL $$"}, seconds(60));
  REQUIRE(killed.ok());
  CHECK(killed->exit_code == 128 + SIGKILL);

  CHECK(runner.Run({"no-such-program-ephemera"}, seconds(60)).status().code() == Code::kInternal);
  CHECK(runner.Run({}, seconds(60)).status().code() == Code::kInvalidArgument);
  CHECK(runner.Run({"true"}, milliseconds(0)).status().code() == Code::kInvalidArgument);
}

TEST_CASE("exec runner: output is truncated at 64 KiB", "[csi][exec]") {
  ExecCommandRunner runner;
  StatusOr<CommandResult> result =
      runner.Run({"sh", "-c", "head -c 200000 /dev/zero | tr '\\0' x"}, seconds(60));
  REQUIRE(result.ok());
  CHECK(result->exit_code == 0);
  CHECK(result->output.size() == size_t{64} * 1024);
}

TEST_CASE("exec runner: a command past its limit is killed with DEADLINE_EXCEEDED", "[csi][exec]") {
  ExecCommandRunner runner;
  const Clock::time_point start = Clock::now();
  StatusOr<CommandResult> result = runner.Run({"sleep", "100"}, milliseconds(200));
  const auto elapsed = Clock::now() - start;
  CHECK(result.status().code() == Code::kDeadlineExceeded);
  CHECK(result.status().message().find("sleep did not finish within 200ms; killed after") !=
        std::string::npos);
  CHECK(elapsed >= milliseconds(200));
  // SIGTERM ends sleep at once: far below its 100 s, and below the 5 s grace before SIGKILL.
  CHECK(elapsed < seconds(4));
  CHECK(NoChildren());
}

TEST_CASE("exec runner: the output before the limit is in the error", "[csi][exec]") {
  ExecCommandRunner runner;
  StatusOr<CommandResult> result =
      runner.Run({"sh", "-c", "echo started; exec sleep 100"}, seconds(3));
  CHECK(result.status().code() == Code::kDeadlineExceeded);
  CHECK(result.status().message().find("output so far: started\n") != std::string::npos);
}

TEST_CASE("exec runner: the whole process group is killed, even a helper ignoring SIGTERM",
          "[csi][exec]") {
  ExecCommandRunner runner;
  // The shell starts a grandchild that ignores SIGTERM and holds the output pipe, and waits.
  const Clock::time_point start = Clock::now();
  StatusOr<CommandResult> result = runner.Run(
      {"sh", "-c", "echo group $$; (trap '' TERM; exec sleep 100) & echo grandchild $!; wait"},
      seconds(2));
  const auto elapsed = Clock::now() - start;
  REQUIRE(result.status().code() == Code::kDeadlineExceeded);
  const std::string message = result.status().message();
  INFO(message);
  const pid_t group = NumberAfter(message, "group");
  const pid_t grandchild = NumberAfter(message, "grandchild");
  REQUIRE(group > 0);
  REQUIRE(grandchild > 0);
  // The limit, the 5 s grace for SIGTERM, then SIGKILL: well below the sleep's 100 s.
  CHECK(elapsed >= seconds(2));
  CHECK(elapsed < seconds(40));
  CHECK(NoChildren());
  // The grandchild was killed; as an orphan it is init's to reap, which may take a moment.
  const Clock::time_point until = Clock::now() + seconds(20);
  while (LiveMembers(group) > 0 && Clock::now() < until)
    std::this_thread::sleep_for(milliseconds(50));
  CHECK(LiveMembers(group) == 0);
  const char state = ProcessState(grandchild);
  CHECK((state == 0 || state == 'Z'));
}

TEST_CASE("exec runner: commands start with no signal blocked or ignored", "[csi][exec]") {
  // The driver blocks SIGTERM and SIGINT in every thread, and a library may ignore SIGPIPE; the
  // commands must not inherit either, or SIGTERM would not stop them.
  sigset_t term;
  sigemptyset(&term);
  sigaddset(&term, SIGTERM);
  sigset_t old_mask;
  REQUIRE(pthread_sigmask(SIG_BLOCK, &term, &old_mask) == 0);
  struct sigaction ignore {};
  ignore.sa_handler = SIG_IGN;
  struct sigaction old_pipe {};
  REQUIRE(sigaction(SIGPIPE, &ignore, &old_pipe) == 0);
  ExecCommandRunner runner;
  StatusOr<CommandResult> status =
      runner.Run({"grep", "^Sig[BI]", "/proc/self/status"}, seconds(60));
  const Clock::time_point start = Clock::now();
  StatusOr<CommandResult> killed = runner.Run({"sleep", "100"}, milliseconds(200));
  const auto elapsed = Clock::now() - start;
  sigaction(SIGPIPE, &old_pipe, nullptr);
  pthread_sigmask(SIG_SETMASK, &old_mask, nullptr);
  REQUIRE(status.ok());
  INFO(status->output);
  // The masks of signals 1 to 31 (glibc's posix_spawn sets its internal 32 and 33 to ignored).
  auto standard = [&](const std::string& field) {
    size_t at = status->output.find(field + ":\t");
    REQUIRE(at != std::string::npos);
    return std::stoull(status->output.substr(at + field.size() + 2), nullptr, 16) & 0x7fffffffULL;
  };
  CHECK(standard("SigBlk") == 0);
  CHECK(standard("SigIgn") == 0);
  // SIGTERM ended it, not the SIGKILL after the 5 s grace.
  CHECK(killed.status().code() == Code::kDeadlineExceeded);
  CHECK(killed.status().message().find("(signal 15)") != std::string::npos);
  CHECK(elapsed < seconds(4));
}

TEST_CASE("exec runner: commands inherit no descriptor but stdin, stdout and stderr",
          "[csi][exec]") {
  // A socket opened without SOCK_CLOEXEC, as Boost.Asio opens the listeners' sockets: LVM warns
  // about every inherited descriptor on stderr, inside the JSON report the driver parses.
  // (At 100 and up, so that its number differs from the one ls opens.)
  int sock = socket(AF_UNIX, SOCK_STREAM, 0);
  REQUIRE(sock >= 0);
  int leaky = fcntl(sock, F_DUPFD, 100);
  close(sock);
  REQUIRE(leaky >= 100);
  ExecCommandRunner runner;
  // ls of /proc/self/fd lists its own descriptors: 0, 1, 2 and the directory it reads.
  StatusOr<CommandResult> result = runner.Run({"ls", "/proc/self/fd"}, seconds(60));
  close(leaky);
  REQUIRE(result.ok());
  INFO(result->output);
  CHECK(result->exit_code == 0);
  std::istringstream fds(result->output);
  int count = 0;
  for (std::string fd; fds >> fd;) {
    ++count;
    CHECK(fd != std::to_string(leaky));
  }
  CHECK(count == 4);
}

TEST_CASE("exec runner: a command that exits is done though its helper holds the pipe",
          "[csi][exec]") {
  ExecCommandRunner::Options options;
  options.kill_grace = seconds(1);
  ExecCommandRunner runner(options);
  const Clock::time_point start = Clock::now();
  StatusOr<CommandResult> result =
      runner.Run({"sh", "-c", "sleep 100 & echo helper $!; exit 4"}, seconds(120));
  const auto elapsed = Clock::now() - start;
  REQUIRE(result.ok());
  INFO(result->output);
  CHECK(result->exit_code == 4);
  // Not the 120 s limit, nor the helper's 100 s: the exit plus the 1 s of reading on.
  CHECK(elapsed < seconds(30));
  const pid_t helper = NumberAfter(result->output, "helper");
  REQUIRE(helper > 0);
  // Left alone (it is not ours to kill once the command is done); the test ends it.
  CHECK(ProcessState(helper) != 0);
  kill(helper, SIGKILL);
}

TEST_CASE("exec runner: --command-timeout overrides the limit of every call", "[csi][exec]") {
  ExecCommandRunner::Options options;
  options.timeout_override = milliseconds(300);
  ExecCommandRunner runner(options);
  StatusOr<CommandResult> result = runner.Run({"sleep", "100"}, std::chrono::hours(1));
  CHECK(result.status().code() == Code::kDeadlineExceeded);
  CHECK(result.status().message().find("within 300ms") != std::string::npos);
}

TEST_CASE("command timeouts are parsed and printed", "[csi][exec]") {
  CHECK(*ParseCommandTimeout("2m") == std::chrono::minutes(2));
  CHECK(*ParseCommandTimeout("90s") == seconds(90));
  CHECK(*ParseCommandTimeout("1m30s") == seconds(90));
  CHECK(*ParseCommandTimeout("1h") == std::chrono::hours(1));
  CHECK(*ParseCommandTimeout("250ms") == milliseconds(250));
  CHECK(*ParseCommandTimeout("1.5m") == seconds(90));  // the shared duration parser's syntax
  for (const char* bad : {"", "0s", "5", "m", "-1s", "2d", "25h", "1m 2s", "99999999999h"}) {
    INFO(bad);
    CHECK(ParseCommandTimeout(bad).status().code() == Code::kInvalidArgument);
  }
  CHECK(FormatDuration(milliseconds(200)) == "200ms");
  CHECK(FormatDuration(std::chrono::minutes(2)) == "2m0s");
  CHECK(FormatDuration(milliseconds(1250)) == "1.25s");
  CHECK(FormatDuration(milliseconds(61500)) == "1m1.50s");
}

}  // namespace
}  // namespace ephemera::csi
