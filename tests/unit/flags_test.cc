// The shared command-line parser (common/flags.h): spellings, bad values, unknown flags, missing
// values, repeated flags, the config file; and the three programs' tables on top of it.
#include "common/flags.h"

#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstdlib>
#include <fstream>

#include "controllers/manager/options.h"
#include "csi/config.h"
#include "plugin/cli.h"

namespace ephemera {
namespace {

struct Settings {
  std::string name;
  int count = 1;
  bool on = false;
  double rate = 0;
  std::chrono::milliseconds period{0};
  int64_t bytes = 0;
  std::vector<std::string> list;
  std::string format = "text";
  std::vector<std::string> collected;
};

std::vector<flags::Flag> Table(Settings& s) {
  using namespace flags;  // NOLINT(google-build-using-namespace)
  return {
      WithShort(String("name", &s.name, "name"), 'n'),
      Int("count", &s.count, {.min = 1, .max = 10}, "nested.count"),
      Bool("on", &s.on, "nested.on"),
      Double("rate", &s.rate, "rate"),
      Duration("period", &s.period, std::chrono::seconds(1), "period"),
      Bytes("size", &s.bytes),
      List("list", &s.list, "list"),
      OneOf("format", &s.format, {"text", "json"}),
      Custom("add",
             [&s](const std::string& v) {
               s.collected.push_back(v);
               return Status::Ok();
             }),
  };
}

constexpr flags::Syntax kGo{.single_dash_long = true};

Status ParseInto(Settings& s, const std::vector<std::string>& args,
                 const flags::Syntax& syntax = kGo) {
  bool help = false;
  return flags::Parse(args, Table(s), syntax, &help);
}

// The message of a failed parse; fails the test when the parse succeeds or is no
// INVALID_ARGUMENT.
std::string ErrorOf(const std::vector<std::string>& args, const flags::Syntax& syntax = kGo) {
  Settings s;
  const Status status = ParseInto(s, args, syntax);
  REQUIRE(status.code() == Code::kInvalidArgument);
  return status.message();
}

bool Has(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

TEST_CASE("flags: every spelling of a value", "[unit][flags]") {
  for (const std::vector<std::string>& args :
       std::vector<std::vector<std::string>>{{"--name=a", "--count=3"},
                                             {"--name", "a", "--count", "3"},
                                             {"-name", "a", "-count=3"},
                                             {"-n", "a", "--count", "3"},
                                             {"-na", "--count=3"},
                                             {"-n=a", "--count=3"}}) {
    Settings s;
    INFO(args[0] << " " << args[1]);
    REQUIRE(ParseInto(s, args).ok());
    CHECK(s.name == "a");
    CHECK(s.count == 3);
  }
  Settings empty;
  empty.name = "x";
  REQUIRE(ParseInto(empty, {"--name="}).ok());
  CHECK(empty.name.empty());
  // Without single_dash_long, "-name" is the short flag -n with the value "ame".
  Settings plain;
  REQUIRE(ParseInto(plain, {"-name"}, flags::Syntax{}).ok());
  CHECK(plain.name == "ame");
  CHECK(Has(ErrorOf({"-count=3"}, flags::Syntax{}), "\"-c"));
}

TEST_CASE("flags: booleans stand alone or take =true/=false, never the next word",
          "[unit][flags]") {
  Settings s;
  REQUIRE(ParseInto(s, {"--on"}).ok());
  CHECK(s.on);
  REQUIRE(ParseInto(s, {"--on=false"}).ok());
  CHECK_FALSE(s.on);
  REQUIRE(ParseInto(s, {"-on=1"}).ok());
  CHECK(s.on);
  REQUIRE(ParseInto(s, {"--on=0"}).ok());
  CHECK_FALSE(s.on);
  CHECK(Has(ErrorOf({"--on", "false"}), "unexpected argument \"false\""));
  CHECK(Has(ErrorOf({"--on=yes"}), "--on must be true or false"));
  CHECK(Has(ErrorOf({"--on="}), "--on must be true or false"));
  // The word after a boolean stays a positional word, in its place.
  auto line = flags::Split(
      {"--on", "cmd", "--name", "x", "more"},
      [] {
        static Settings unused;
        return Table(unused);
      }(),
      kGo);
  REQUIRE(line.ok());
  CHECK(line->positional == std::vector<std::string>{"cmd", "more"});
  CHECK(line->values ==
        std::vector<std::pair<std::string, std::string>>{{"on", "true"}, {"name", "x"}});
}

TEST_CASE("flags: bad values name the flag", "[unit][flags]") {
  CHECK(Has(ErrorOf({"--count=x"}), "--count must be a whole number, not \"x\""));
  CHECK(Has(ErrorOf({"--count=3.5"}), "--count must be a whole number"));
  CHECK(Has(ErrorOf({"--count=99999999999"}), "--count must be a whole number"));
  CHECK(Has(ErrorOf({"--count=0"}), "--count must be from 1 to 10, not 0"));
  CHECK(Has(ErrorOf({"--count=11"}), "--count must be from 1 to 10"));
  CHECK(Has(ErrorOf({"--rate=fast"}), "--rate must be a number"));
  CHECK(Has(ErrorOf({"--rate=1.5x"}), "--rate must be a number"));
  CHECK(Has(ErrorOf({"--period=10"}), "--period"));
  CHECK(Has(ErrorOf({"--period=.s"}), "--period"));
  CHECK(Has(ErrorOf({"--period=-5s"}), "--period"));
  CHECK(Has(ErrorOf({"--period=500ms"}), "--period must be at least 1s"));
  CHECK(Has(ErrorOf({"--size=lots"}), "--size"));
  CHECK(Has(ErrorOf({"--format=xml"}), "--format must be one of text, json, not \"xml\""));
  Settings s;
  REQUIRE(ParseInto(s, {"--count=-0", "--rate=-2.5", "--period=1m30s", "--size=10Gi"}).code() ==
          Code::kInvalidArgument);  // -0 is below 1
  REQUIRE(ParseInto(s, {"--count=10", "--rate=-2.5", "--period=1m30.5s", "--size=10Gi"}).ok());
  CHECK(s.count == 10);
  CHECK(s.rate == -2.5);
  CHECK(s.period == std::chrono::milliseconds(90500));
  CHECK(s.bytes == 10LL << 30);
}

TEST_CASE("flags: unknown flags, missing values, stray words", "[unit][flags]") {
  CHECK(Has(ErrorOf({"--bogus"}), "unknown flag \"--bogus\""));
  CHECK(Has(ErrorOf({"--bogus=1"}), "unknown flag \"--bogus"));
  CHECK(Has(ErrorOf({"-x"}), "unknown flag \"-x\""));
  // No abbreviations: "--nam" is not "--name".
  CHECK(Has(ErrorOf({"--nam=a"}), "unknown flag \"--nam"));
  CHECK(Has(ErrorOf({"--name"}), "--name needs a value"));
  CHECK(Has(ErrorOf({"--count", "--name", "a"}), "--count needs a value"));
  CHECK(Has(ErrorOf({"--help=yes"}), "--help takes no value"));
  CHECK(Has(ErrorOf({"word"}), "unexpected argument \"word\""));
}

TEST_CASE("flags: repeated flags apply in order", "[unit][flags]") {
  Settings s;
  REQUIRE(ParseInto(s, {"--name=a", "--count=2", "--name=b", "--add=1", "--add", "2", "--list=x,y",
                        "--list=z"})
              .ok());
  CHECK(s.name == "b");
  CHECK(s.count == 2);
  CHECK(s.collected == std::vector<std::string>{"1", "2"});
  CHECK(s.list == std::vector<std::string>{"z"});
  // A bad value stops the parse even when a later one would be good.
  CHECK(Has(ErrorOf({"--count=0", "--count=2"}), "--count"));
}

TEST_CASE("flags: help is seen even beside a bad flag", "[unit][flags]") {
  Settings s;
  bool help = false;
  CHECK(flags::Parse({"--bogus", "-h"}, Table(s), kGo, &help).code() == Code::kInvalidArgument);
  CHECK(help);
  REQUIRE(flags::Parse({"--help"}, Table(s), kGo, &help).ok());
  CHECK(help);
  REQUIRE(flags::Parse({"--name=x"}, Table(s), kGo, &help).ok());
  CHECK_FALSE(help);
}

TEST_CASE("flags: value parsers", "[unit][flags]") {
  CHECK(*flags::ParseDuration("15s") == std::chrono::seconds(15));
  CHECK(*flags::ParseDuration("2h") == std::chrono::hours(2));
  CHECK(*flags::ParseDuration("1h1m1s1ms") == std::chrono::milliseconds(3661001));
  CHECK(*flags::ParseDuration("0s") == std::chrono::milliseconds(0));
  for (const char* bad : {"", "s", "1", "1d", "1s2", "1e3s", "abc", "1.2.3s", " 1s"}) {
    INFO(bad);
    CHECK(flags::ParseDuration(bad).status().code() == Code::kInvalidArgument);
  }
  CHECK(flags::SplitList("a,,b,") == std::vector<std::string>{"a", "b"});
  CHECK(flags::SplitList("").empty());
  CHECK(*flags::ParseInt("-v", "-1", {.min = -1}) == -1);
  CHECK(*flags::ParseBool("--x", "1"));
}

class TempFile {
 public:
  explicit TempFile(const std::string& text) {
    char name[] = "/tmp/ephemera-flags-test-XXXXXX";
    const int fd = mkstemp(name);
    REQUIRE(fd >= 0);
    close(fd);
    path_ = name;
    std::ofstream(path_) << text;
  }
  ~TempFile() { std::remove(path_.c_str()); }
  TempFile(const TempFile&) = delete;
  TempFile& operator=(const TempFile&) = delete;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

TEST_CASE("flags: the config file goes through the same table", "[unit][flags]") {
  Settings s;
  TempFile good("name: a\nnested:\n  count: 4\n  on: true\nlist: [x, y]\nperiod: 2s\n");
  REQUIRE(flags::ApplyConfigFile(good.path(), Table(s)).ok());
  CHECK(s.name == "a");
  CHECK(s.count == 4);
  CHECK(s.on);
  CHECK(s.list == std::vector<std::string>{"x", "y"});
  CHECK(s.period == std::chrono::seconds(2));
  CHECK(flags::ConfigKeys(Table(s)) ==
        std::vector<std::string>{"name", "nested.count", "nested.on", "rate", "period", "list"});

  auto error = [&](const std::string& text) {
    TempFile file(text);
    Settings unused;
    const Status status = flags::ApplyConfigFile(file.path(), Table(unused));
    REQUIRE(status.code() == Code::kInvalidArgument);
    CHECK(Has(status.message(), file.path()));
    return status.message();
  };
  CHECK(Has(error("bogus: 1\n"), "unknown key bogus"));
  CHECK(Has(error("nested:\n  bogus: 1\n"), "unknown key nested.bogus"));
  CHECK(Has(error("nested: 3\n"), "nested must be a map"));
  CHECK(Has(error("nested:\n  count: 0\n"), "nested.count: --count must be from 1 to 10"));
  CHECK(Has(error("name: {a: 1}\n"), "name must be a value"));
  CHECK(Has(error("- a\n- b\n"), "is not a YAML map"));
  CHECK(Has(error("name: [unclosed\n"), "config file"));
  // "add" has no config key: a flag only.
  CHECK(Has(error("add: 1\n"), "unknown key add"));
  Settings unused;
  CHECK(flags::ApplyConfigFile("/nonexistent/ephemera.yaml", Table(unused)).code() ==
        Code::kInvalidArgument);
}

TEST_CASE("controller-manager: flags win over the config file, wherever --config stands",
          "[unit][flags]") {
  TempFile file(
      "kubeAPIBurst: 7\nkubeAPIQPS: 3\nleaderElection:\n  leaseName: from-file\n"
      "csiNodeEndpoints: [a=h:1]\n");
  controllers::ManagerOptions o;
  REQUIRE(
      controllers::ParseManagerOptions({"--kube-api-burst", "9", "--config", file.path(), "-v", "2",
                                        "--leader-elect=false", "--csi-node-endpoint=b=h:2"},
                                       &o)
          .ok());
  CHECK(o.config_file == file.path());
  CHECK(o.kube_api_burst == 9);
  CHECK(o.kube_api_qps == 3);
  CHECK(o.leader_elect_lease_name == "from-file");
  CHECK_FALSE(o.leader_elect);
  CHECK(o.verbosity == 2);
  // The list flag adds to the file's list, as before.
  CHECK(o.csi_node_endpoints.size() == 2);

  controllers::ManagerOptions bad;
  const Status unknown = controllers::ParseManagerOptions({"--kube-api-burts=3"}, &bad);
  CHECK(Has(unknown.message(), "--kube-api-burts"));
  CHECK(controllers::ParseManagerOptions({"--leader-elect", "false"}, &bad).code() ==
        Code::kInvalidArgument);
  CHECK(controllers::ParseManagerOptions({"--logging-format=xml"}, &bad).code() ==
        Code::kInvalidArgument);
  CHECK(controllers::ParseManagerOptions({"-v=-1"}, &bad).code() == Code::kInvalidArgument);
  CHECK(controllers::ParseManagerOptions({"--csi-node-endpoints-port=65536"}, &bad).code() ==
        Code::kInvalidArgument);
  controllers::ManagerOptions help;
  CHECK(controllers::ParseManagerOptions({"--bogus", "--help"}, &help).code() ==
        Code::kInvalidArgument);
  CHECK(help.help);
}

TEST_CASE("ephemera-pmem-csi: its flags through the shared parser", "[unit][flags]") {
  csi::Config c;
  bool help = false;
  REQUIRE(
      flags::Parse({"--endpoint=unix:///x.sock", "--node-id", "n1", "--file-capacity=64Mi",
                    "--remove-orphans", "--pmem-percentage=50", "-v", "3", "--logging-format=json"},
                   csi::DriverFlags(c), csi::kDriverSyntax, &help)
          .ok());
  CHECK(c.endpoint == "unix:///x.sock");
  CHECK(c.node_id == "n1");
  CHECK(c.file_capacity == 64LL << 20);
  CHECK(c.remove_orphans);
  CHECK(c.pmem_percentage == 50);
  CHECK(c.verbosity == 3);
  CHECK(c.logging_format == "json");
  for (const std::vector<std::string>& args :
       std::vector<std::vector<std::string>>{{"--pmem-percentage=0"},
                                             {"--pmem-percentage=101"},
                                             {"--file-capacity=big"},
                                             {"--bogus=1"},
                                             {"--endpoint"},
                                             {"stray"}}) {
    csi::Config bad;
    INFO(args[0]);
    const Status s = flags::Parse(args, csi::DriverFlags(bad), csi::kDriverSyntax, &help);
    CHECK(s.code() == Code::kInvalidArgument);
    CHECK(Has(s.message(), args[0].substr(0, args[0].find('='))));
  }
}

}  // namespace
}  // namespace ephemera
