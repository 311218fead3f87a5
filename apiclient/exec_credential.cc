#include "apiclient/exec_credential.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <ctime>
#include <nlohmann/json.hpp>
#include <system_error>
#include <thread>

#include "common/log.h"

extern char** environ;  // NOLINT(readability-redundant-declaration)

namespace ephemera::apiclient {
namespace {

using Json = nlohmann::json;

// Printable ASCII only, at most `max` bytes: for putting the plugin's stderr into a message.
std::string Printable(std::string_view text, size_t max) {
  std::string out;
  for (const char c : text) {
    if (out.size() >= max) {
      out += "...";
      break;
    }
    const auto u = static_cast<unsigned char>(c);
    if (c == '\n' || c == '\t') {
      if (!out.empty() && out.back() != ' ') out += ' ';
    } else if (u >= 0x20 && u != 0x7f) {
      out += c;  // printable ASCII and UTF-8; other control characters are dropped
    }
  }
  while (!out.empty() && out.back() == ' ')
    out.pop_back();
  return out;
}

std::string Base64Encode(std::string_view in) {
  static constexpr char kTable[] =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  out.reserve((in.size() + 2) / 3 * 4);
  size_t i = 0;
  for (; i + 2 < in.size(); i += 3) {
    const uint32_t v = (uint32_t{static_cast<unsigned char>(in[i])} << 16) |
                       (uint32_t{static_cast<unsigned char>(in[i + 1])} << 8) |
                       static_cast<unsigned char>(in[i + 2]);
    out += kTable[(v >> 18) & 63];
    out += kTable[(v >> 12) & 63];
    out += kTable[(v >> 6) & 63];
    out += kTable[v & 63];
  }
  if (i < in.size()) {
    uint32_t v = uint32_t{static_cast<unsigned char>(in[i])} << 16;
    if (i + 1 < in.size()) v |= uint32_t{static_cast<unsigned char>(in[i + 1])} << 8;
    out += kTable[(v >> 18) & 63];
    out += kTable[(v >> 12) & 63];
    out += i + 1 < in.size() ? kTable[(v >> 6) & 63] : '=';
    out += '=';
  }
  return out;
}

// The text of an errno value (thread-safe, unlike strerror).
std::string ErrnoText(int error) {
  return std::generic_category().message(error);
}

// Closes a descriptor once.
class Fd {
 public:
  Fd() = default;
  explicit Fd(int fd) : fd_(fd) {}
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  ~Fd() { Close(); }
  int get() const { return fd_; }
  void Close() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

 private:
  int fd_ = -1;
};

// The parent's environment with `extra` added (an extra variable replaces one of the same name).
std::vector<std::string> BuildEnvironment(
    const std::vector<std::pair<std::string, std::string>>& extra) {
  std::vector<std::string> env;
  for (char** e = environ; e != nullptr && *e != nullptr; ++e) {
    const std::string_view entry(*e);
    const std::string_view name = entry.substr(0, entry.find('='));
    bool replaced = false;
    for (const auto& [key, value] : extra) {
      if (key == name) replaced = true;
    }
    if (!replaced) env.emplace_back(entry);
  }
  for (const auto& [key, value] : extra) {
    std::string entry = key;
    entry += '=';
    entry += value;
    env.push_back(std::move(entry));
  }
  return env;
}

// Waits for `pid`; the exit code, or 128 + the signal.
int Reap(pid_t pid) {
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return -1;
}

}  // namespace

StatusOr<CommandResult> RunCommand(const CommandSpec& spec) {
  if (spec.path.empty()) return Status::InvalidArgument("no command");
  std::array<int, 2> out_pipe{-1, -1};
  std::array<int, 2> err_pipe{-1, -1};
  if (::pipe2(out_pipe.data(), O_CLOEXEC) != 0) {
    return Status::Internal("pipe: " + ErrnoText(errno));
  }
  Fd out_read(out_pipe[0]);
  Fd out_write(out_pipe[1]);
  if (::pipe2(err_pipe.data(), O_CLOEXEC) != 0) {
    return Status::Internal("pipe: " + ErrnoText(errno));
  }
  Fd err_read(err_pipe[0]);
  Fd err_write(err_pipe[1]);

  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_adddup2(&actions, out_write.get(), 1);
  posix_spawn_file_actions_adddup2(&actions, err_write.get(), 2);
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 34))
  posix_spawn_file_actions_addclosefrom_np(&actions, 3);  // no descriptor of ours leaks into it
#endif
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  // Its own process group, so that a timeout kills whatever it started too; default signal
  // dispositions and an empty mask whatever our threads block or ignore.
  sigset_t none;
  sigemptyset(&none);
  sigset_t defaults;
  sigemptyset(&defaults);
  for (const int sig : {SIGPIPE, SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGCHLD, SIGUSR1, SIGUSR2}) {
    sigaddset(&defaults, sig);
  }
  posix_spawnattr_setflags(&attr,
                           POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
  posix_spawnattr_setpgroup(&attr, 0);
  posix_spawnattr_setsigmask(&attr, &none);
  posix_spawnattr_setsigdefault(&attr, &defaults);

  std::vector<std::string> args = {spec.path};
  args.insert(args.end(), spec.args.begin(), spec.args.end());
  std::vector<char*> argv;
  argv.reserve(args.size() + 1);
  for (auto& a : args)
    argv.push_back(a.data());
  argv.push_back(nullptr);
  std::vector<std::string> env = BuildEnvironment(spec.env);
  std::vector<char*> envp;
  envp.reserve(env.size() + 1);
  for (auto& e : env)
    envp.push_back(e.data());
  envp.push_back(nullptr);

  pid_t pid = -1;
  const bool search = spec.path.find('/') == std::string::npos;
  const int spawn_error =
      search ? posix_spawnp(&pid, spec.path.c_str(), &actions, &attr, argv.data(), envp.data())
             : posix_spawn(&pid, spec.path.c_str(), &actions, &attr, argv.data(), envp.data());
  posix_spawn_file_actions_destroy(&actions);
  posix_spawnattr_destroy(&attr);
  if (spawn_error != 0) {
    const std::string why = ErrnoText(spawn_error);
    if (spawn_error == ENOENT) {
      return Status::NotFound(search ? "not found in $PATH" : "no such file");
    }
    return Status::FailedPrecondition("cannot execute it: " + why);
  }
  out_write.Close();
  err_write.Close();

  CommandResult result;
  const auto deadline = std::chrono::steady_clock::now() + spec.timeout;
  bool out_open = true;
  bool err_open = true;
  Status failure;
  std::array<char, size_t{16} * 1024> buf{};
  while (out_open || err_open) {
    // Rounded up: truncating would end the wait up to a millisecond before the deadline.
    const auto left =
        std::chrono::ceil<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now())
            .count();
    if (left <= 0) {
      failure = Status::DeadlineExceeded("did not finish within " +
                                         std::to_string(spec.timeout.count()) + " ms");
      break;
    }
    std::array<pollfd, 2> fds{pollfd{out_open ? out_read.get() : -1, POLLIN, 0},
                              pollfd{err_open ? err_read.get() : -1, POLLIN, 0}};
    const int n = ::poll(fds.data(), fds.size(), static_cast<int>(std::min<int64_t>(left, 1000)));
    if (n < 0 && errno != EINTR) {
      failure = Status::Internal("poll: " + ErrnoText(errno));
      break;
    }
    if (n <= 0) continue;
    for (size_t i = 0; i < fds.size(); ++i) {
      if (fds[i].fd < 0 || fds[i].revents == 0) continue;
      const ssize_t got = ::read(fds[i].fd, buf.data(), buf.size());
      if (got < 0 && errno == EINTR) continue;
      if (got <= 0) {
        (i == 0 ? out_open : err_open) = false;
        continue;
      }
      if (i == 0) {
        result.out.append(buf.data(), static_cast<size_t>(got));
      } else {
        result.err.append(buf.data(), static_cast<size_t>(got));
        if (result.err.size() > 2 * spec.max_err) {
          result.err.erase(0, result.err.size() - spec.max_err);
        }
      }
    }
    if (result.out.size() > spec.max_out) {
      failure = Status::ResourceExhausted("wrote more than " + std::to_string(spec.max_out) +
                                          " bytes to stdout");
      break;
    }
  }
  // Both pipes are closed: wait for its exit, still within the deadline (it may have closed them
  // and gone on).
  int status = 0;
  while (failure.ok()) {
    const pid_t done = ::waitpid(pid, &status, WNOHANG);
    if (done == pid) {
      result.exit_code = WIFEXITED(status)     ? WEXITSTATUS(status)
                         : WIFSIGNALED(status) ? 128 + WTERMSIG(status)
                                               : -1;
      break;
    }
    if (done < 0 && errno != EINTR) {
      failure = Status::Internal("waitpid: " + ErrnoText(errno));
      break;
    }
    if (std::chrono::steady_clock::now() >= deadline) {
      failure = Status::DeadlineExceeded("did not exit within " +
                                         std::to_string(spec.timeout.count()) + " ms");
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  if (!failure.ok()) {
    // The whole group: a script's children too. Then reap it: no zombie is left.
    ::kill(-pid, SIGKILL);
    ::kill(pid, SIGKILL);
    Reap(pid);
    return failure;
  }
  if (result.err.size() > spec.max_err) result.err.erase(0, result.err.size() - spec.max_err);
  return result;
}

std::string ExecInfoJson(const ExecConfig& config, const ExecClusterInfo& cluster) {
  Json request = {{"apiVersion", config.api_version},
                  {"kind", "ExecCredential"},
                  {"spec", {{"interactive", false}}}};
  if (config.provide_cluster_info) {
    Json c = {{"server", cluster.server}};
    if (!cluster.tls_server_name.empty()) c["tls-server-name"] = cluster.tls_server_name;
    if (!cluster.ca_pem.empty()) c["certificate-authority-data"] = Base64Encode(cluster.ca_pem);
    request["spec"]["cluster"] = std::move(c);
  }
  return request.dump();
}

std::optional<std::chrono::system_clock::time_point> ParseRfc3339(std::string_view text) {
  // YYYY-MM-DDTHH:MM:SS[.fraction](Z|+HH:MM|-HH:MM)
  if (text.size() < 20 || text.size() > 40) return std::nullopt;
  auto digits = [&text](size_t pos, size_t n, int* value) {
    if (pos + n > text.size()) return false;
    int v = 0;
    for (size_t i = pos; i < pos + n; ++i) {
      if (text[i] < '0' || text[i] > '9') return false;
      v = v * 10 + (text[i] - '0');
    }
    *value = v;
    return true;
  };
  int year = 0, month = 0, day = 0, hour = 0, minute = 0, second = 0;
  if (!digits(0, 4, &year) || text[4] != '-' || !digits(5, 2, &month) || text[7] != '-' ||
      !digits(8, 2, &day) || (text[10] != 'T' && text[10] != 't') || !digits(11, 2, &hour) ||
      text[13] != ':' || !digits(14, 2, &minute) || text[16] != ':' || !digits(17, 2, &second)) {
    return std::nullopt;
  }
  if (month < 1 || month > 12 || day < 1 || day > 31 || hour > 23 || minute > 59 || second > 60) {
    return std::nullopt;
  }
  size_t pos = 19;
  std::chrono::nanoseconds fraction{0};
  if (text[pos] == '.') {
    ++pos;
    int64_t nanos = 0;
    int n = 0;
    while (pos < text.size() && text[pos] >= '0' && text[pos] <= '9') {
      if (n < 9) {
        nanos = nanos * 10 + (text[pos] - '0');
        ++n;
      }
      ++pos;
    }
    if (n == 0) return std::nullopt;
    for (; n < 9; ++n)
      nanos *= 10;
    fraction = std::chrono::nanoseconds(nanos);
  }
  if (pos >= text.size()) return std::nullopt;
  int offset_minutes = 0;
  if (text[pos] == 'Z' || text[pos] == 'z') {
    ++pos;
  } else if (text[pos] == '+' || text[pos] == '-') {
    int oh = 0, om = 0;
    if (!digits(pos + 1, 2, &oh) || pos + 3 >= text.size() || text[pos + 3] != ':' ||
        !digits(pos + 4, 2, &om) || oh > 23 || om > 59) {
      return std::nullopt;
    }
    offset_minutes = (oh * 60 + om) * (text[pos] == '-' ? -1 : 1);
    pos += 6;
  } else {
    return std::nullopt;
  }
  if (pos != text.size()) return std::nullopt;
  // The clock counts nanoseconds in 64 bits: about 1678 to 2262. A time beyond that is as far in
  // the future (or past) as the clock can say (found by fuzzing: the year 8026 overflowed).
  if (year > 2261) return std::chrono::system_clock::time_point::max();
  if (year < 1678) return std::chrono::system_clock::time_point::min();
  std::tm tm{};
  tm.tm_year = year - 1900;
  tm.tm_mon = month - 1;
  tm.tm_mday = day;
  tm.tm_hour = hour;
  tm.tm_min = minute;
  tm.tm_sec = second;
  const time_t t = timegm(&tm);
  return std::chrono::system_clock::from_time_t(t) - std::chrono::minutes(offset_minutes) +
         std::chrono::duration_cast<std::chrono::system_clock::duration>(fraction);
}

StatusOr<ExecCredential> ParseExecCredential(std::string_view out, std::string_view api_version) {
  const Json doc = Json::parse(out, nullptr, /*allow_exceptions=*/false);
  if (doc.is_discarded() || !doc.is_object()) {
    return Status::InvalidArgument("its output is not a JSON object");
  }
  auto string_field = [](const Json& object, const char* key,
                         std::string* value) -> StatusOr<bool> {
    auto it = object.find(key);
    if (it == object.end() || it->is_null()) return false;
    if (!it->is_string()) return Status::InvalidArgument(std::string(key) + " is not a string");
    *value = it->get<std::string>();
    return true;
  };
  std::string version;
  std::string kind;
  auto has = string_field(doc, "apiVersion", &version);
  if (!has.ok()) return has.status();
  if (version != api_version) {
    return Status::InvalidArgument("it is configured for " + std::string(api_version) +
                                   " but answered with apiVersion \"" + Printable(version, 80) +
                                   "\"");
  }
  has = string_field(doc, "kind", &kind);
  if (!has.ok()) return has.status();
  if (kind != "ExecCredential") {
    return Status::InvalidArgument("it answered with kind \"" + Printable(kind, 80) +
                                   "\", not ExecCredential");
  }
  auto status = doc.find("status");
  if (status == doc.end() || !status->is_object()) {
    return Status::InvalidArgument("its ExecCredential has no status");
  }
  ExecCredential credential;
  for (auto [key, value] : {std::pair{"token", &credential.token},
                            std::pair{"clientCertificateData", &credential.client_cert_pem},
                            std::pair{"clientKeyData", &credential.client_key_pem}}) {
    has = string_field(*status, key, value);
    if (!has.ok()) return has.status().WithContext("status");
  }
  std::string expiry;
  has = string_field(*status, "expirationTimestamp", &expiry);
  if (!has.ok()) return has.status().WithContext("status");
  if (!expiry.empty()) {
    auto when = ParseRfc3339(expiry);
    if (!when) {
      return Status::InvalidArgument("status.expirationTimestamp \"" + Printable(expiry, 40) +
                                     "\" is not an RFC 3339 time");
    }
    credential.expiry = *when;
  }
  if (credential.client_cert_pem.empty() != credential.client_key_pem.empty()) {
    return Status::InvalidArgument(
        "its status has only one of clientCertificateData and clientKeyData");
  }
  if (credential.token.empty() && credential.client_cert_pem.empty()) {
    return Status::InvalidArgument("its status has neither a token nor a client certificate");
  }
  // The token goes into an HTTP header as it is.
  for (const char c : credential.token) {
    const auto u = static_cast<unsigned char>(c);
    if (u < 0x20 || u >= 0x7f) {
      return Status::InvalidArgument("its token has a character that cannot go into a header");
    }
  }
  return credential;
}

ExecCredentialProvider::ExecCredentialProvider(ExecConfig config, ExecClusterInfo cluster,
                                               const Clock* clock, CommandRunner runner)
    : config_(std::move(config)),
      cluster_(std::move(cluster)),
      clock_(clock),
      runner_(std::move(runner)) {}

int ExecCredentialProvider::runs() const {
  std::lock_guard<std::mutex> lock(mu_);
  return runs_;
}

StatusOr<std::shared_ptr<const ExecCredential>> ExecCredentialProvider::Get() {
  std::lock_guard<std::mutex> lock(mu_);
  if (cached_ != nullptr && (!cached_->expiry || clock_->WallNow() < *cached_->expiry)) {
    return cached_;
  }
  cached_ = nullptr;
  auto fresh = Run();
  if (!fresh.ok()) return fresh.status();
  cached_ = *fresh;
  return cached_;
}

void ExecCredentialProvider::Invalidate(const std::shared_ptr<const ExecCredential>& used) {
  std::lock_guard<std::mutex> lock(mu_);
  if (cached_ == used) cached_ = nullptr;
}

StatusOr<std::shared_ptr<const ExecCredential>> ExecCredentialProvider::Run() {
  const std::string what = "exec credential plugin \"" + Printable(config_.command, 200) + "\"";
  auto fail = [&](const std::string& why, const std::string& err, bool hint = false) {
    std::string message = what + " " + why;
    const std::string tail = Printable(err, 2000);
    if (!tail.empty()) message += "; its stderr: " + tail;
    if (hint && !config_.install_hint.empty()) {
      message += "; " + Printable(config_.install_hint, 2000);
    }
    return Status::FailedPrecondition(std::move(message));
  };
  if (config_.interactive_mode == "Always") {
    return fail("needs an interactive terminal (interactiveMode: Always), which ephemera never has",
                "");
  }
  CommandSpec spec;
  spec.path = config_.command;
  spec.args = config_.args;
  spec.env = config_.env;
  spec.env.emplace_back("KUBERNETES_EXEC_INFO", ExecInfoJson(config_, cluster_));
  spec.timeout = config_.timeout;
  ++runs_;
  auto result = runner_(spec);
  if (!result.ok()) {
    if (result.status().code() == Code::kNotFound) {
      return fail("cannot be run: " + result.status().message(), "", /*hint=*/true);
    }
    return fail("failed: " + result.status().message(), "");
  }
  if (result->exit_code != 0) {
    return fail("exited with status " + std::to_string(result->exit_code), result->err);
  }
  auto credential = ParseExecCredential(result->out, config_.api_version);
  if (!credential.ok()) {
    return fail("printed an unusable credential: " + credential.status().message(), result->err);
  }
  if (credential->expiry && *credential->expiry <= clock_->WallNow()) {
    return fail("printed a credential that has already expired", result->err);
  }
  if (log::V(2)) {
    log::Info("ran exec credential plugin",
              {{"command", config_.command},
               {"credential", credential->token.empty() ? "client certificate" : "token"},
               {"expires", credential->expiry ? "yes" : "no"}});
  }
  return std::make_shared<const ExecCredential>(std::move(*credential));
}

}  // namespace ephemera::apiclient
