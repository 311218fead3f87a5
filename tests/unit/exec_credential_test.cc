// Unit tests of exec credential plugins: the kubeconfig's exec section, parsing of the plugin's
// ExecCredential, caching and re-running with a fake clock, and RunCommand on real processes
// (/bin/sh scripts: timeouts, output limits, stdin, no zombie left).
#include "apiclient/exec_credential.h"

#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cerrno>
#include <chrono>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "apiclient/config.h"

namespace ephemera::apiclient {
namespace {

using std::chrono::seconds;
using std::chrono::system_clock;

// Wall time that moves only when told to.
class FakeWallClock final : public Clock {
 public:
  TimePoint Now() const override { return {}; }
  system_clock::time_point WallNow() const override { return wall_; }
  void SleepFor(Duration) const override {}
  void Advance(system_clock::duration d) { wall_ += d; }

 private:
  system_clock::time_point wall_ = system_clock::from_time_t(1800000000);  // 2027-01-15T08:00:00Z
};

std::string Rfc3339(system_clock::time_point t) {
  const time_t secs = system_clock::to_time_t(t);
  std::tm tm{};
  gmtime_r(&secs, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

std::string CredentialJson(const std::string& token, const std::string& expiry,
                           std::string_view version = kExecApiV1) {
  nlohmann::json doc = {{"apiVersion", version}, {"kind", "ExecCredential"}};
  doc["status"]["token"] = token;
  if (!expiry.empty()) doc["status"]["expirationTimestamp"] = expiry;
  return doc.dump();
}

// A runner that answers from a list of results and records what it was asked.
struct ScriptedRunner {
  std::vector<StatusOr<CommandResult>> answers;
  std::vector<CommandSpec> calls;
  CommandRunner Runner() {
    return [this](const CommandSpec& spec) -> StatusOr<CommandResult> {
      calls.push_back(spec);
      if (answers.empty()) return Status::Internal("no more answers");
      auto next = answers.front();
      answers.erase(answers.begin());
      return next;
    };
  }
};

CommandResult Printed(std::string out, int code = 0, std::string err = "") {
  return CommandResult{code, std::move(out), std::move(err)};
}

ExecConfig Config() {
  ExecConfig c;
  c.command = "get-token";
  c.args = {"--cluster", "a b"};
  c.env = {{"FOO", "bar"}};
  c.api_version = std::string(kExecApiV1);
  c.install_hint = "install get-token from your cloud's CLI";
  return c;
}

const char* kExecKubeconfig = R"(
apiVersion: v1
kind: Config
current-context: a
clusters:
- name: c
  cluster: {server: 'https://127.0.0.1:6443', certificate-authority-data: Q0EtUEVN}
contexts:
- name: a
  context: {cluster: c, user: u}
users:
- name: u
  user:
    exec:
      apiVersion: client.authentication.k8s.io/v1beta1
      command: ./bin/token-tool
      args: [get-token, --output, json]
      env:
      - name: AWS_PROFILE
        value: prod
      installHint: brew install token-tool
      provideClusterInfo: true
      interactiveMode: Never
)";

std::string WithExec(const std::string& exec_yaml) {
  return "current-context: a\n"
         "clusters: [{name: c, cluster: {server: 'https://h'}}]\n"
         "contexts: [{name: a, context: {cluster: c, user: u}}]\n"
         "users: [{name: u, user: {exec: " +
         exec_yaml + "}}]\n";
}

TEST_CASE("exec kubeconfig: every field is read, the command resolved against the file",
          "[apiclient][exec]") {
  auto config = ParseKubeconfig(kExecKubeconfig, "/etc/kube");
  INFO(config.status().ToString());
  REQUIRE(config.ok());
  REQUIRE(config->exec != nullptr);
  const ExecConfig& exec = config->exec->config();
  CHECK(exec.command == "/etc/kube/./bin/token-tool");
  CHECK(exec.args == std::vector<std::string>{"get-token", "--output", "json"});
  REQUIRE(exec.env.size() == 1);
  CHECK(exec.env[0] == std::pair<std::string, std::string>{"AWS_PROFILE", "prod"});
  CHECK(exec.api_version == kExecApiV1beta1);
  CHECK(exec.install_hint == "brew install token-tool");
  CHECK(exec.provide_cluster_info);
  CHECK(config->DescribeForLog().find("exec plugin /etc/kube/./bin/token-tool") !=
        std::string::npos);

  // A bare name stays a name, looked up in $PATH when run.
  auto bare = ParseKubeconfig(
      WithExec("{command: aws, apiVersion: client.authentication.k8s.io/v1, interactiveMode: "
               "IfAvailable}"),
      "/etc/kube");
  REQUIRE(bare.ok());
  CHECK(bare->exec->config().command == "aws");
}

TEST_CASE("exec kubeconfig: bad sections are refused with a clear error", "[apiclient][exec]") {
  struct Case {
    const char* exec;
    const char* expect;
  };
  for (const Case& c : std::vector<Case>{
           {"{apiVersion: client.authentication.k8s.io/v1}", "no command"},
           {"{command: x}", "apiVersion \"\" is not supported"},
           {"{command: x, apiVersion: client.authentication.k8s.io/v1alpha1}", "v1alpha1"},
           {"{command: x, apiVersion: client.authentication.k8s.io/v1, args: 5}", "args"},
           {"{command: x, apiVersion: client.authentication.k8s.io/v1, args: [[1]]}", "args"},
           {"{command: x, apiVersion: client.authentication.k8s.io/v1, env: [{value: 1}]}", "env"},
           {"{command: x, apiVersion: client.authentication.k8s.io/v1, env: {a: b}}", "env"},
           {"{command: x, apiVersion: client.authentication.k8s.io/v1, interactiveMode: Maybe}",
            "interactiveMode"},
           {"{command: x, apiVersion: client.authentication.k8s.io/v1, interactiveMode: Always}",
            "interactiveMode Always"},
           {"[x]", "not a map"},
       }) {
    INFO(c.exec);
    auto config = ParseKubeconfig(WithExec(c.exec), "/x");
    REQUIRE_FALSE(config.ok());
    CHECK(config.status().message().find(c.expect) != std::string::npos);
    CHECK(config.status().message().find("kubeconfig user \"u\"") != std::string::npos);
  }
}

TEST_CASE("exec credential: a token with or without expiry, v1 and v1beta1", "[apiclient][exec]") {
  auto v1 = ParseExecCredential(CredentialJson("tok-1", "2027-01-15T08:30:00Z"), kExecApiV1);
  REQUIRE(v1.ok());
  CHECK(v1->token == "tok-1");
  REQUIRE(v1->expiry);
  CHECK(*v1->expiry == system_clock::from_time_t(1800001800));

  auto beta = ParseExecCredential(CredentialJson("tok-2", "", kExecApiV1beta1), kExecApiV1beta1);
  REQUIRE(beta.ok());
  CHECK(beta->token == "tok-2");
  CHECK_FALSE(beta->expiry);

  auto cert = ParseExecCredential(
      R"({"apiVersion":"client.authentication.k8s.io/v1","kind":"ExecCredential",
          "status":{"clientCertificateData":"CERT","clientKeyData":"KEY","token":null}})",
      kExecApiV1);
  REQUIRE(cert.ok());
  CHECK(cert->client_cert_pem == "CERT");
  CHECK(cert->client_key_pem == "KEY");
  CHECK(cert->token.empty());
}

TEST_CASE("exec credential: hostile or broken output is refused, the token never echoed",
          "[apiclient][exec]") {
  const std::string v1(kExecApiV1);
  struct Case {
    std::string out;
    const char* expect;
  };
  for (
      const Case& c : std::vector<Case>{
          {"", "not a JSON object"},
          {"token: abc", "not a JSON object"},
          {"[1,2]", "not a JSON object"},
          {"{\"apiVersion\":\"" + v1 + "\",\"kind\":\"ExecCredential\"", "not a JSON object"},
          {CredentialJson("secret-tok", "", kExecApiV1beta1), "answered with apiVersion"},
          {R"({"apiVersion":7,"kind":"ExecCredential","status":{"token":"secret-tok"}})",
           "apiVersion is not a string"},
          {R"({"apiVersion":")" + v1 + R"(","kind":"Pod","status":{"token":"secret-tok"}})",
           "kind \"Pod\""},
          {R"({"apiVersion":")" + v1 + R"(","kind":"ExecCredential"})", "no status"},
          {R"({"apiVersion":")" + v1 + R"(","kind":"ExecCredential","status":"secret-tok"})",
           "no status"},
          {R"({"apiVersion":")" + v1 + R"(","kind":"ExecCredential","status":{}})",
           "neither a token nor a client certificate"},
          {R"({"apiVersion":")" + v1 + R"(","kind":"ExecCredential","status":{"token":123}})",
           "token is not a string"},
          {R"({"apiVersion":")" + v1 +
               R"(","kind":"ExecCredential","status":{"token":["secret-tok"]}})",
           "token is not a string"},
          {R"({"apiVersion":")" + v1 +
               R"(","kind":"ExecCredential","status":{"clientCertificateData":"C"}})",
           "only one of"},
          {CredentialJson("secret-tok\r\nX-Evil: 1", ""), "cannot go into a header"},
          {CredentialJson("secret-tok", "tomorrow"), "not an RFC 3339 time"},
          {R"({"apiVersion":")" + v1 +
               R"(","kind":"ExecCredential","status":{"token":"secret-tok","expirationTimestamp":5}})",
           "expirationTimestamp is not a string"},
      }) {
    INFO(c.out);
    auto parsed = ParseExecCredential(c.out, kExecApiV1);
    REQUIRE_FALSE(parsed.ok());
    CHECK(parsed.status().message().find(c.expect) != std::string::npos);
    CHECK(parsed.status().message().find("secret-tok") == std::string::npos);
  }
  // Deeply nested JSON is an error, not a crash.
  std::string deep(100000, '[');
  CHECK_FALSE(ParseExecCredential(deep, kExecApiV1).ok());
}

TEST_CASE("RFC 3339 times", "[apiclient][exec]") {
  const auto base = system_clock::from_time_t(1800000000);  // 2027-01-15T08:00:00Z
  CHECK(ParseRfc3339("2027-01-15T08:00:00Z") == base);
  CHECK(ParseRfc3339("2027-01-15T09:00:00+01:00") == base);
  CHECK(ParseRfc3339("2027-01-15T07:30:00-00:30") == base);
  CHECK(ParseRfc3339("2027-01-15T08:00:00.250Z") ==
        base + std::chrono::duration_cast<system_clock::duration>(std::chrono::milliseconds(250)));
  for (const char* bad : {"", "2027-01-15", "2027-01-15T08:00:00", "2027-01-15 08:00:00Z",
                          "2027-13-15T08:00:00Z", "2027-01-15T08:00:00.Z", "2027-01-15T08:00:00+1",
                          "2027-01-15T08:00:00Zjunk", "2027-01-15T25:00:00Z"}) {
    INFO(bad);
    CHECK_FALSE(ParseRfc3339(bad));
  }
  // Beyond the clock's range (about 1678-2262): as far as it goes, not an overflow (fuzzing).
  CHECK(ParseRfc3339("8026-11-07T15:04:05Z") == system_clock::time_point::max());
  CHECK(ParseRfc3339("9999-12-31T23:59:59.999999999-23:59") == system_clock::time_point::max());
  CHECK(ParseRfc3339("0000-01-01T00:00:00Z") == system_clock::time_point::min());
  CHECK(ParseRfc3339("2261-12-31T23:59:59Z") > base);
}

TEST_CASE("exec info: the request the plugin gets in KUBERNETES_EXEC_INFO", "[apiclient][exec]") {
  ExecConfig config = Config();
  const ExecClusterInfo cluster{"https://api:6443", "api.internal", "CA-PEM"};
  auto plain = nlohmann::json::parse(ExecInfoJson(config, cluster));
  CHECK(plain["apiVersion"] == kExecApiV1);
  CHECK(plain["kind"] == "ExecCredential");
  CHECK(plain["spec"]["interactive"] == false);
  CHECK_FALSE(plain["spec"].contains("cluster"));
  config.provide_cluster_info = true;
  config.api_version = std::string(kExecApiV1beta1);
  auto with_cluster = nlohmann::json::parse(ExecInfoJson(config, cluster));
  CHECK(with_cluster["apiVersion"] == kExecApiV1beta1);
  CHECK(with_cluster["spec"]["cluster"]["server"] == "https://api:6443");
  CHECK(with_cluster["spec"]["cluster"]["tls-server-name"] == "api.internal");
  CHECK(with_cluster["spec"]["cluster"]["certificate-authority-data"] == "Q0EtUEVN");
}

TEST_CASE("exec provider: cached until it expires, then run again", "[apiclient][exec]") {
  FakeWallClock clock;
  ScriptedRunner runner;
  runner.answers = {Printed(CredentialJson("tok-1", Rfc3339(clock.WallNow() + seconds(600)))),
                    Printed(CredentialJson("tok-2", Rfc3339(clock.WallNow() + seconds(1200))))};
  ExecCredentialProvider provider(Config(), {}, &clock, runner.Runner());
  for (int i = 0; i < 50; ++i) {
    auto credential = provider.Get();
    REQUIRE(credential.ok());
    CHECK((*credential)->token == "tok-1");
    clock.Advance(seconds(10));  // 500 s in all: still valid
  }
  CHECK(provider.runs() == 1);
  // What the plugin was given: its arguments, its environment and the request.
  REQUIRE(runner.calls.size() == 1);
  CHECK(runner.calls[0].path == "get-token");
  CHECK(runner.calls[0].args == std::vector<std::string>{"--cluster", "a b"});
  bool foo = false, info = false;
  for (const auto& [key, value] : runner.calls[0].env) {
    if (key == "FOO") foo = value == "bar";
    if (key == "KUBERNETES_EXEC_INFO") {
      info = nlohmann::json::parse(value)["spec"]["interactive"] == false;
    }
  }
  CHECK(foo);
  CHECK(info);

  clock.Advance(seconds(100));  // 600 s: expired
  auto renewed = provider.Get();
  REQUIRE(renewed.ok());
  CHECK((*renewed)->token == "tok-2");
  CHECK(provider.runs() == 2);
  CHECK((*provider.Get())->token == "tok-2");
  CHECK(provider.runs() == 2);
}

TEST_CASE("exec provider: a credential without expiry is kept until the server refuses it",
          "[apiclient][exec]") {
  FakeWallClock clock;
  ScriptedRunner runner;
  runner.answers = {Printed(CredentialJson("tok-1", "")), Printed(CredentialJson("tok-2", ""))};
  ExecCredentialProvider provider(Config(), {}, &clock, runner.Runner());
  auto first = provider.Get();
  REQUIRE(first.ok());
  clock.Advance(std::chrono::hours(24 * 365));
  CHECK(*provider.Get() == *first);
  CHECK(provider.runs() == 1);

  provider.Invalidate(*first);  // a 401
  auto second = provider.Get();
  REQUIRE(second.ok());
  CHECK((*second)->token == "tok-2");
  CHECK(provider.runs() == 2);
  // A late 401 for the old credential (another request's) does not throw the new one away.
  provider.Invalidate(*first);
  CHECK(*provider.Get() == *second);
  CHECK(provider.runs() == 2);
}

TEST_CASE("exec provider: failures name the command and carry stderr, never the token",
          "[apiclient][exec]") {
  FakeWallClock clock;
  struct Case {
    StatusOr<CommandResult> answer;
    std::vector<const char*> expect;
    bool hint;
  };
  const std::string expired = CredentialJson("secret-tok", Rfc3339(clock.WallNow() - seconds(1)));
  for (const Case& c : std::vector<Case>{
           {Printed("", 3, "login first\n\x1b[31mred\x1b[0m"),
            {"exited with status 3", "login first", "red"},
            false},
           {Printed("{not json", 0, "warning: x"),
            {"printed an unusable credential", "not a JSON object", "warning: x"},
            false},
           {Printed(expired), {"already expired"}, false},
           {Status::NotFound("not found in $PATH"),
            {"cannot be run: not found in $PATH", "install get-token from your cloud's CLI"},
            true},
           {Status::DeadlineExceeded("did not finish within 60000 ms"),
            {"failed: did not finish within 60000 ms"},
            false},
       }) {
    ScriptedRunner runner;
    runner.answers = {c.answer, c.answer};
    ExecCredentialProvider provider(Config(), {}, &clock, runner.Runner());
    auto got = provider.Get();
    REQUIRE_FALSE(got.ok());
    const std::string& message = got.status().message();
    INFO(message);
    CHECK(message.find("exec credential plugin \"get-token\"") != std::string::npos);
    for (const char* e : c.expect)
      CHECK(message.find(e) != std::string::npos);
    CHECK((message.find("install get-token") != std::string::npos) == c.hint);
    CHECK(message.find("secret-tok") == std::string::npos);
    CHECK(message.find('\x1b') == std::string::npos);
    // A failure is not cached: the next request tries again.
    CHECK_FALSE(provider.Get().ok());
    CHECK(provider.runs() == 2);
  }

  ExecConfig always = Config();
  always.interactive_mode = "Always";
  ScriptedRunner runner;
  ExecCredentialProvider provider(always, {}, &clock, runner.Runner());
  auto refused = provider.Get();
  REQUIRE_FALSE(refused.ok());
  CHECK(refused.status().message().find("interactiveMode: Always") != std::string::npos);
  CHECK(runner.calls.empty());
}

// A temporary shell script; removed at the end.
class Script {
 public:
  explicit Script(const std::string& body) {
    char name[] = "/tmp/ephemera-exec-test-XXXXXX";
    const int fd = mkstemp(name);
    REQUIRE(fd >= 0);
    close(fd);
    path_ = name;
    std::ofstream(path_) << "#!/bin/sh\n" << body << "\n";
    chmod(path_.c_str(), 0700);
  }
  ~Script() { std::remove(path_.c_str()); }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// True when this process has no child left, not even a zombie.
bool NoChildren() {
  int status = 0;
  return waitpid(-1, &status, WNOHANG) < 0 && errno == ECHILD;
}

TEST_CASE("RunCommand: arguments, environment, stdout, stderr, exit code, stdin from /dev/null",
          "[apiclient][exec]") {
  Script script(
      "printf '%s|' \"$@\"; echo \"$FOO\"; read line && echo got-stdin; echo oops >&2; exit 4");
  CommandSpec spec;
  spec.path = script.path();
  spec.args = {"a b", "c"};
  spec.env = {{"FOO", "bar baz"}, {"PATH", "/usr/bin:/bin"}};
  spec.timeout = seconds(20);
  auto result = RunCommand(spec);
  REQUIRE(result.ok());
  CHECK(result->out == "a b|c|bar baz\n");
  CHECK(result->err == "oops\n");
  CHECK(result->exit_code == 4);
  CHECK(NoChildren());

  spec.path = "sh";  // looked up in $PATH
  spec.args = {"-c", "echo found"};
  result = RunCommand(spec);
  REQUIRE(result.ok());
  CHECK(result->out == "found\n");
  CHECK(result->exit_code == 0);

  spec.path = "ephemera-no-such-plugin-xyz";
  CHECK(RunCommand(spec).status().code() == Code::kNotFound);
  spec.path = "/nonexistent/plugin";
  CHECK(RunCommand(spec).status().code() == Code::kNotFound);
  CHECK(NoChildren());
}

TEST_CASE("RunCommand: a hung plugin is killed with what it started, and reaped",
          "[apiclient][exec]") {
  char dir_template[] = "/tmp/ephemera-exec-pid-XXXXXX";
  const std::string dir = mkdtemp(dir_template);
  // The script starts a child that would outlive it, and hangs.
  Script script("sleep 300 & echo $! > " + dir + "/child; sleep 300");
  CommandSpec spec;
  spec.path = script.path();
  spec.timeout = std::chrono::milliseconds(1500);
  const auto start = std::chrono::steady_clock::now();
  auto result = RunCommand(spec);
  const auto took = std::chrono::steady_clock::now() - start;
  CHECK(result.status().code() == Code::kDeadlineExceeded);
  CHECK(took >= std::chrono::milliseconds(1500));
  CHECK(took < seconds(10));
  CHECK(NoChildren());
  int child = 0;
  std::ifstream(dir + "/child") >> child;
  REQUIRE(child > 0);
  // Killed too (once init has reaped it, it is gone).
  bool gone = false;
  for (int i = 0; i < 100 && !gone; ++i) {
    std::ifstream stat("/proc/" + std::to_string(child) + "/stat");
    std::string pid, comm, state;
    gone = !(stat >> pid >> comm >> state) || state == "Z";
    if (!gone) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  CHECK(gone);
  std::remove((dir + "/child").c_str());
  std::remove(dir.c_str());

  // One that closes its output and goes on is bounded too.
  Script quiet("exec >&- 2>&-; sleep 300");
  spec.path = quiet.path();
  result = RunCommand(spec);
  CHECK(result.status().code() == Code::kDeadlineExceeded);
  CHECK(NoChildren());
}

TEST_CASE("RunCommand: output over the limit is refused / stderr keeps its end",
          "[apiclient][exec]") {
  Script big("head -c 3000000 /dev/zero");
  CommandSpec spec;
  spec.path = big.path();
  spec.timeout = seconds(20);
  auto result = RunCommand(spec);
  CHECK(result.status().code() == Code::kResourceExhausted);
  CHECK(NoChildren());

  Script noisy("i=0; while [ $i -lt 5000 ]; do echo line-$i >&2; i=$((i+1)); done; echo ok");
  spec.path = noisy.path();
  spec.max_err = 100;
  result = RunCommand(spec);
  REQUIRE(result.ok());
  CHECK(result->out == "ok\n");
  CHECK(result->err.size() == 100);
  CHECK(result->err.find("line-4999\n") != std::string::npos);
}

TEST_CASE("exec provider: a real script end to end", "[apiclient][exec]") {
  char dir_template[] = "/tmp/ephemera-exec-e2e-XXXXXX";
  const std::string dir = mkdtemp(dir_template);
  // Prints a credential and the request it got; counts its runs.
  std::ofstream(dir + "/plugin") << "#!/bin/sh\n"
                                 << "echo run >> \"$(dirname \"$0\")/runs\"\n"
                                 << "printf '%s' \"$KUBERNETES_EXEC_INFO\" > "
                                    "\"$(dirname \"$0\")/info\"\n"
                                 << "echo \"using $PROFILE\" >&2\n"
                                 << "printf '" << CredentialJson("tok-$1", "") << "'\n";
  chmod((dir + "/plugin").c_str(), 0700);
  std::ofstream(dir + "/config")
      << "current-context: a\n"
         "clusters: [{name: c, cluster: {server: 'https://127.0.0.1:1'}}]\n"
         "contexts: [{name: a, context: {cluster: c, user: u}}]\n"
         "users: [{name: u, user: {exec: {command: ./plugin, args: [7], "
         "apiVersion: client.authentication.k8s.io/v1, env: [{name: PROFILE, value: p}]}}}]\n";
  auto config = LoadKubeconfig(dir + "/config");
  INFO(config.status().ToString());
  REQUIRE(config.ok());
  auto token = config->CurrentToken();
  INFO(token.status().ToString());
  REQUIRE(token.ok());
  // printf's format holds a literal "tok-$1": the shell does not expand it inside '...'.
  CHECK(*token == "tok-$1");
  CHECK(*config->CurrentToken() == "tok-$1");
  std::ifstream runs_file(dir + "/runs");
  std::string runs((std::istreambuf_iterator<char>(runs_file)), {});
  CHECK(runs == "run\n");
  std::ifstream info_file(dir + "/info");
  auto info = nlohmann::json::parse(info_file);
  CHECK(info["apiVersion"] == kExecApiV1);
  CHECK(info["spec"]["interactive"] == false);
  CHECK(config->DescribeForLog().find("tok-") == std::string::npos);
  for (const char* f : {"/plugin", "/config", "/runs", "/info"})
    std::remove((dir + f).c_str());
  std::remove(dir.c_str());
}

}  // namespace
}  // namespace ephemera::apiclient
