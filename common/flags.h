// The command line of our three programs (ephemera-controller-manager, ephemera-pmem-csi,
// kubectl-ephemera): one table of flags per program, one parser (Boost.Program_options splits the
// words), one set of value parsers. A program lists its flags, each bound to the field it sets:
//
//   std::vector<flags::Flag> table = {
//       flags::String("kubeconfig", &o.kubeconfig),
//       flags::Int("kube-api-burst", &o.kube_api_burst, {.min = 1}, "kubeAPIBurst"),
//       flags::Bool("leader-elect", &o.leader_elect, "leaderElection.leaderElect"),
//   };
//   Status s = flags::Parse(args, table, flags::Syntax{}, &help);
//
// Spelling: "--name=value" and "--name value"; a boolean flag stands alone ("--x" = true) or takes
// "=true"/"=false" ("=1"/"=0"), never the next word; "--name=" is an empty value. With
// Syntax::single_dash_long also "-name" (Go style, "-v 2"). Short names: "-n value", "-nvalue",
// "-n=value". "-h" and "--help" ask for the usage. A flag given twice: the values are applied in
// order (the last wins, unless the flag collects, like a list). Every error is INVALID_ARGUMENT
// naming the flag: unknown flags, missing values, bad values.
//
// The same table reads a YAML config file (ApplyConfigFile): a flag's config_key names its key,
// dotted for nested maps ("leaderElection.leaseName").
//
// Thread safety: plain functions; a table's setters write the fields they were given.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "common/status.h"

namespace ephemera::flags {

// One flag: its name without dashes, how it takes a value, and what to do with the value.
struct Flag {
  std::string name;
  bool is_bool = false;  // may stand alone, meaning "true"
  std::function<Status(const std::string& value)> set;
  std::string config_key;  // key in the --config file; "" = a flag only
  char short_name = '\0';  // 'n' for -n
};

struct IntRange {
  int min = std::numeric_limits<int>::min();
  int max = std::numeric_limits<int>::max();
};

// The usual kinds of flags. `config_key` as in Flag.
Flag String(std::string name, std::string* field, std::string config_key = "");
Flag Int(std::string name, int* field, IntRange range, std::string config_key = "");
Flag Double(std::string name, double* field, std::string config_key = "");
Flag Bool(std::string name, bool* field, std::string config_key = "");
// Go-style durations ("1m30s") of at least `min`.
Flag Duration(std::string name, std::chrono::milliseconds* field, std::chrono::milliseconds min,
              std::string config_key = "");
// Kubernetes quantities of bytes ("10Gi").
Flag Bytes(std::string name, int64_t* field, std::string config_key = "");
// A comma-separated list; each occurrence replaces the list.
Flag List(std::string name, std::vector<std::string>* field, std::string config_key = "");
// One of `choices`.
Flag OneOf(std::string name, std::string* field, std::vector<std::string> choices,
           std::string config_key = "");
// Anything else: `set` checks and applies the value.
Flag Custom(std::string name, std::function<Status(const std::string&)> set,
            std::string config_key = "");
// The same flag with a one-letter form.
Flag WithShort(Flag flag, char short_name);

struct Syntax {
  bool single_dash_long = false;  // "-name" as "--name"
};

// The words of a command line, split by the flags' names but not applied yet.
struct CommandLine {
  std::vector<std::pair<std::string, std::string>> values;  // flag name, value; in order
  std::vector<std::string> positional;                      // words that are no flag
  bool help = false;                                        // -h or --help
};

// Splits `args` (after the program name). INVALID_ARGUMENT: an unknown flag, a missing value.
StatusOr<CommandLine> Split(const std::vector<std::string>& args, const std::vector<Flag>& flags,
                            const Syntax& syntax);
// Applies the values of `line` in order, except those of the flags named in `skip`.
Status Apply(const CommandLine& line, const std::vector<Flag>& flags,
             const std::vector<std::string>& skip = {});
// Whether a word of `args` is -h or --help.
bool AsksForHelp(const std::vector<std::string>& args);
// Split, refuse positional words, Apply. `*help` is set for -h/--help, even when the rest is bad.
Status Parse(const std::vector<std::string>& args, const std::vector<Flag>& flags,
             const Syntax& syntax, bool* help);

// Applies a YAML file (one map) through the flags' config keys. Lists may be YAML sequences.
// INVALID_ARGUMENT names the file and the key: unknown keys, bad values, a file that is no map.
Status ApplyConfigFile(const std::string& path, const std::vector<Flag>& flags);

// The names of the flags, and their config keys (those that have one); "help" is always a flag.
std::vector<std::string> Names(const std::vector<Flag>& flags);
std::vector<std::string> ConfigKeys(const std::vector<Flag>& flags);

// Value parsers; `flag` (e.g. "--kube-api-burst") names the flag in the message.
StatusOr<int> ParseInt(const std::string& flag, const std::string& text, IntRange range);
StatusOr<double> ParseDouble(const std::string& flag, const std::string& text);
StatusOr<bool> ParseBool(const std::string& flag, const std::string& text);
// "15s", "1m30s", "500ms", "2h".
StatusOr<std::chrono::milliseconds> ParseDuration(const std::string& text);
// "a,b,,c" -> {"a", "b", "c"}.
std::vector<std::string> SplitList(const std::string& text);

}  // namespace ephemera::flags
