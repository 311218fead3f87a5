// Unit tests of the controller-manager's value parsers: durations from flags and the config file.
#include "controllers/manager/options.h"

#include <catch2/catch.hpp>
#include <cstdio>
#include <fstream>

namespace ephemera::controllers {
namespace {

using std::chrono::milliseconds;

TEST_CASE("ParseDuration reads Go-style durations and refuses everything else", "[unit][options]") {
  CHECK(*ParseDuration("15s") == milliseconds(15000));
  CHECK(*ParseDuration("1m30s") == milliseconds(90000));
  CHECK(*ParseDuration("500ms") == milliseconds(500));
  CHECK(*ParseDuration("1.5h") == milliseconds(5400000));
  CHECK(*ParseDuration(".5s") == milliseconds(500));
  CHECK(*ParseDuration("2.s") == milliseconds(2000));
  // Each of these used to end the program with an uncaught exception or overflowed.
  for (const char* bad : {".", "..", ".s", "1..5s", "s", "", "15", "15x", "-1s", "1e3s",
                          "99999999999999999999h", "1000000000h", "5s.", "5s ", " 5s"}) {
    INFO(bad);
    const auto d = ParseDuration(bad);
    CHECK(d.status().code() == Code::kInvalidArgument);
  }
}

TEST_CASE("A malformed duration in a flag or the config file is a clear error", "[unit][options]") {
  for (const char* flag : {"--leader-elect-lease-duration=.", "--leader-elect-renew-deadline=..",
                           "--leader-elect-retry-period=1e400s"}) {
    ManagerOptions o;
    INFO(flag);
    const Status s = ParseManagerOptions({flag}, &o);
    CHECK(s.code() == Code::kInvalidArgument);
    CHECK(s.message().find("--leader-elect-") != std::string::npos);
  }
  char path[] = "/tmp/ephemera-options-XXXXXX";
  const int fd = mkstemp(path);
  REQUIRE(fd >= 0);
  close(fd);
  for (const char* yaml : {"leaderElection: {leaseDuration: \".\"}\n",
                           "capacityPollInterval: \".\"\ncontrollers: [storage-capacity]\n"}) {
    INFO(yaml);
    std::ofstream(path) << yaml;
    ManagerOptions o;
    const Status s = LoadManagerConfigFile(path, &o);
    CHECK(s.code() == Code::kInvalidArgument);
  }
  std::remove(path);
}

}  // namespace
}  // namespace ephemera::controllers
