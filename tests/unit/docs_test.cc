// docs/configuration.md against the code: every flag and config key of the controller-manager and
// every flag of the CSI driver is documented, and nothing documented is gone from the code.
#include <catch2/catch.hpp>
#include <fstream>
#include <regex>
#include <set>
#include <sstream>

#include "common/flags.h"
#include "controllers/manager/options.h"
#include "csi/config.h"
#include "tests/test_paths.h"

namespace ephemera {
namespace {

std::string ReadSource(const std::string& relative) {
  std::ifstream in(std::string(::ephemera::testing::kSourceDir) + "/" + relative);
  REQUIRE(in.good());
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

// The text of the "## <title>" section, up to the next "## " heading.
std::string Section(const std::string& doc, const std::string& title) {
  const std::string heading = "\n## " + title + "\n";
  const size_t start = doc.find(heading);
  REQUIRE(start != std::string::npos);
  const size_t end = doc.find("\n## ", start + heading.size());
  return doc.substr(start, end == std::string::npos ? std::string::npos : end - start);
}

// The cells of column `column` of every markdown table row in `text` (escaped \| stays in a cell).
std::vector<std::string> Column(const std::string& text, size_t column) {
  std::vector<std::string> cells;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind('|', 0) != 0 || line.rfind("| ---", 0) == 0) continue;
    std::vector<std::string> row;
    std::string cell;
    for (size_t i = 1; i < line.size(); ++i) {
      if (line[i] == '|' && line[i - 1] != '\\') {
        row.push_back(cell);
        cell.clear();
      } else {
        cell += line[i];
      }
    }
    if (column < row.size()) cells.push_back(row[column]);
  }
  return cells;
}

// Flag names in backticks at the start of a code span: "`--a=x`, `-v N`" -> {"a", "v"}.
std::set<std::string> FlagsIn(const std::vector<std::string>& cells) {
  std::set<std::string> flags;
  static const std::regex kFlag("`--?([a-z][a-z0-9-]*)");
  for (const auto& cell : cells) {
    for (std::sregex_iterator it(cell.begin(), cell.end(), kFlag), end; it != end; ++it)
      flags.insert((*it)[1]);
  }
  return flags;
}

// Config keys in backticks: "`leaderElection.leaseName`" -> {"leaderElection.leaseName"}.
std::set<std::string> KeysIn(const std::vector<std::string>& cells) {
  std::set<std::string> keys;
  static const std::regex kKey("`([a-zA-Z.]+)`");
  for (const auto& cell : cells) {
    for (std::sregex_iterator it(cell.begin(), cell.end(), kKey), end; it != end; ++it)
      keys.insert((*it)[1]);
  }
  return keys;
}

// The CSI driver's flags as its parser takes them (csi::DriverFlags).
std::set<std::string> DriverFlags() {
  csi::Config config;
  const auto names = flags::Names(csi::DriverFlags(config));
  return {names.begin(), names.end()};
}

TEST_CASE("configuration.md lists every flag and config key", "[docs]") {
  const std::string doc = ReadSource("docs/configuration.md");

  SECTION("ephemera-controller-manager") {
    const std::string section = Section(doc, "ephemera-controller-manager");
    const std::set<std::string> documented_flags = FlagsIn(Column(section, 0));
    const std::set<std::string> documented_keys = KeysIn(Column(section, 1));
    const auto flags = controllers::ManagerFlagNames();
    const auto keys = controllers::ManagerConfigKeys();
    REQUIRE(flags.size() > 20);
    REQUIRE(keys.size() > 20);
    for (const auto& flag : flags) {
      INFO("flag --" << flag << " is not in docs/configuration.md");
      CHECK(documented_flags.count(flag) == 1);
    }
    for (const auto& key : keys) {
      INFO("config key " << key << " is not in docs/configuration.md");
      CHECK(documented_keys.count(key) == 1);
    }
    const std::set<std::string> flag_set(flags.begin(), flags.end());
    const std::set<std::string> key_set(keys.begin(), keys.end());
    for (const auto& flag : documented_flags) {
      if (flag == "h") continue;  // -h: the short form of --help
      INFO("docs/configuration.md documents --" << flag << " which the code does not have");
      CHECK(flag_set.count(flag) == 1);
    }
    for (const auto& key : documented_keys) {
      INFO("docs/configuration.md documents config key " << key << " which the code lacks");
      CHECK(key_set.count(key) == 1);
    }
  }

  SECTION("ephemera-pmem-csi") {
    const std::set<std::string> documented = FlagsIn(Column(Section(doc, "ephemera-pmem-csi"), 0));
    const std::set<std::string> flags = DriverFlags();
    // The scan must see the flags we know of, or it would pass by finding nothing.
    for (const char* known : {"endpoint", "node-id", "file-capacity", "remove-orphans", "help"})
      REQUIRE(flags.count(known) == 1);
    for (const auto& flag : flags) {
      INFO("ephemera-pmem-csi flag --" << flag << " is not in docs/configuration.md");
      CHECK(documented.count(flag) == 1);
    }
    for (const auto& flag : documented) {
      if (flag == "h") continue;  // -h: the short form of --help
      INFO("docs/configuration.md documents ephemera-pmem-csi --" << flag << ", not in the code");
      CHECK(flags.count(flag) == 1);
    }
  }
}

}  // namespace
}  // namespace ephemera
