#include "common/flags.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <boost/program_options.hpp>
#include <charconv>
#include <climits>
#include <map>

#include "common/quantity.h"

namespace ephemera::flags {
namespace {

namespace po = boost::program_options;

// Stands for the empty value of "--name=", which Boost.Program_options refuses.
constexpr char kEmptyValue[] = "\x1f(empty)";

// "--name", or "-v" for a one-letter name.
std::string Dashed(const std::string& name) {
  return (name.size() == 1 ? "-" : "--") + name;
}

std::string Quoted(const std::string& text) {
  return "\"" + text.substr(0, 32) + "\"";
}

const Flag* Find(const std::vector<Flag>& flags, const std::string& name) {
  for (const Flag& f : flags) {
    if (f.name == name) return &f;
  }
  return nullptr;
}

po::options_description Describe(const std::vector<Flag>& flags) {
  po::options_description description;
  description.add_options()("help,h", "");
  for (const Flag& f : flags) {
    const std::string names = f.short_name == '\0' ? f.name : f.name + "," + f.short_name;
    auto* value = po::value<std::string>();
    if (f.is_bool) value->implicit_value("true");
    description.add_options()(names.c_str(), value);
  }
  return description;
}

int Style(const Syntax& syntax) {
  namespace style = po::command_line_style;
  int s = style::allow_long | style::long_allow_adjacent | style::long_allow_next |
          style::allow_short | style::allow_dash_for_short | style::short_allow_adjacent |
          style::short_allow_next;
  if (syntax.single_dash_long) s |= style::allow_long_disguise;
  return s;  // never allow_guessing: "--kube" is no abbreviation of "--kubeconfig"
}

// "--name=" (and "-name=", "-n=") get a value Boost accepts; it is made empty again after.
std::vector<std::string> MarkEmptyValues(const std::vector<std::string>& args) {
  std::vector<std::string> out = args;
  for (std::string& arg : out) {
    if (arg.size() > 2 && arg[0] == '-' && arg.back() == '=' && arg.find('=') == arg.size() - 1) {
      arg += kEmptyValue;
    }
  }
  return out;
}

Status FromBoostError(const po::error& e) {
  const auto* named = dynamic_cast<const po::error_with_option_name*>(&e);
  std::string name = named != nullptr ? named->get_option_name() : "";
  if (name.size() == 3 && name.starts_with("--")) name.erase(0, 1);  // "--v" was given as "-v"
  if (dynamic_cast<const po::unknown_option*>(&e) != nullptr) {
    return Status::InvalidArgument("unknown flag \"" + name.substr(0, 64) + "\"");
  }
  if (const auto* syntax = dynamic_cast<const po::invalid_command_line_syntax*>(&e)) {
    if (syntax->kind() == po::invalid_syntax::missing_parameter) {
      return Status::InvalidArgument(name + " needs a value");
    }
    if (syntax->kind() == po::invalid_syntax::extra_parameter) {
      return Status::InvalidArgument(name + " takes no value");
    }
  }
  return Status::InvalidArgument(e.what());
}

// Whether `word` is one of the flags ("--name", "-name", "--name=x", "-n"): Boost takes it as the
// value of a flag before it when it does not know it by its dashes.
bool IsFlag(const std::string& word, const std::vector<Flag>& flags) {
  if (word.size() < 2 || word[0] != '-') return false;
  const std::string name =
      word.substr(word[1] == '-' ? 2 : 1, word.find('=') - (word[1] == '-' ? 2 : 1));
  return name == "help" || name == "h" ||
         std::any_of(flags.begin(), flags.end(), [&](const Flag& f) {
           return f.name == name || (name.size() == 1 && f.short_name == name[0]);
         });
}

// One parsed option of Boost's as a flag value; positional words go to `line->positional`.
Status Add(const po::option& option, const std::vector<Flag>& flags, CommandLine* line) {
  if (option.string_key.empty()) {
    for (const std::string& word : option.value)
      line->positional.push_back(word);
    return Status::Ok();
  }
  if (option.string_key == "help") {
    line->help = true;
    return Status::Ok();
  }
  const Flag* flag = Find(flags, option.string_key);
  const std::string& first = option.original_tokens.front();
  std::string value = option.value.empty() ? "true" : option.value.front();
  if (flag->is_bool && option.original_tokens.size() == 2 && option.value.size() == 1) {
    // Boost 1.74 lets a flag with an implicit value take the next free word; a boolean never
    // does: "--leader-elect false" is the flag and a stray word.
    value = "true";
    line->positional.push_back(option.value.front());
  } else if (option.original_tokens.size() == 2 && IsFlag(value, flags)) {
    return Status::InvalidArgument(first + " needs a value");
  }
  if (value.ends_with(kEmptyValue)) value.clear();
  // "-n=value": Boost keeps the "=" of a short flag.
  if (flag->short_name != '\0' && first.size() > 2 && first[1] == flag->short_name &&
      first[2] == '=' && value.starts_with('=')) {
    value.erase(0, 1);
  }
  line->values.emplace_back(flag->name, value);
  return Status::Ok();
}

// A YAML value as a flag's text: scalars as written, sequences comma-separated.
StatusOr<std::string> ConfigText(const YAML::Node& value) {
  if (value.IsScalar()) return value.as<std::string>();
  if (!value.IsSequence()) return Status::InvalidArgument("must be a value");
  std::string text;
  for (const auto& item : value) {
    if (!item.IsScalar()) return Status::InvalidArgument("must be a list of values");
    text += (text.empty() ? "" : ",") + item.as<std::string>();
  }
  return text;
}

// Applies the map `node` whose keys start with `prefix` ("" or "leaderElection.").
Status ApplyConfigMap(const YAML::Node& node, const std::string& prefix,
                      const std::vector<Flag>& flags) {
  for (const auto& entry : node) {
    const std::string key = prefix + entry.first.as<std::string>();
    const bool nested = std::any_of(flags.begin(), flags.end(), [&](const Flag& f) {
      return f.config_key.starts_with(key + ".");
    });
    if (nested) {
      if (!entry.second.IsMap()) return Status::InvalidArgument(key + " must be a map");
      EPHEMERA_RETURN_IF_ERROR(ApplyConfigMap(entry.second, key + ".", flags));
      continue;
    }
    const auto flag = std::find_if(flags.begin(), flags.end(),
                                   [&](const Flag& f) { return f.config_key == key; });
    if (key.empty() || flag == flags.end()) return Status::InvalidArgument("unknown key " + key);
    auto text = ConfigText(entry.second);
    if (!text.ok()) return Status::InvalidArgument(key + " " + text.status().message());
    Status s = flag->set(*text);
    if (!s.ok()) return Status(s.code(), key + ": " + s.message());
  }
  return Status::Ok();
}

}  // namespace

StatusOr<int> ParseInt(const std::string& flag, const std::string& text, IntRange range) {
  int n = 0;
  const char* end = text.data() + text.size();
  const auto [at, error] = std::from_chars(text.data(), end, n);
  if (text.empty() || error != std::errc() || at != end) {
    return Status::InvalidArgument(flag + " must be a whole number, not " + Quoted(text));
  }
  if (n < range.min || n > range.max) {
    if (range.max == INT_MAX) {
      return Status::InvalidArgument(flag + " must be at least " + std::to_string(range.min));
    }
    return Status::InvalidArgument(flag + " must be from " + std::to_string(range.min) + " to " +
                                   std::to_string(range.max) + ", not " + std::to_string(n));
  }
  return n;
}

StatusOr<double> ParseDouble(const std::string& flag, const std::string& text) {
  double d = 0;
  const char* end = text.data() + text.size();
  const auto [at, error] = std::from_chars(text.data(), end, d);
  if (text.empty() || error != std::errc() || at != end) {
    return Status::InvalidArgument(flag + " must be a number, not " + Quoted(text));
  }
  return d;
}

StatusOr<bool> ParseBool(const std::string& flag, const std::string& text) {
  if (text == "true" || text == "1") return true;
  if (text == "false" || text == "0") return false;
  return Status::InvalidArgument(flag + " must be true or false, not " + Quoted(text));
}

StatusOr<std::chrono::milliseconds> ParseDuration(const std::string& text) {
  static const std::map<std::string, double, std::less<>> kUnits = {
      {"ms", 1}, {"s", 1000}, {"m", 60000}, {"h", 3600000}};
  const Status bad =
      Status::InvalidArgument(Quoted(text) + " is not a duration such as 15s, 1m30s or 500ms");
  if (text.empty()) return Status::InvalidArgument("empty duration");
  double total_ms = 0;
  const char* p = text.data();
  const char* const end = p + text.size();
  while (p != end) {
    double value = 0;
    const auto [after_number, error] = std::from_chars(p, end, value, std::chars_format::fixed);
    if (error != std::errc() || *p == '-' || *p == '+') return bad;
    const char* after_unit = after_number;
    while (after_unit != end && std::isalpha(static_cast<unsigned char>(*after_unit)) != 0)
      ++after_unit;
    const auto unit = kUnits.find(std::string_view(after_number, after_unit - after_number));
    if (unit == kUnits.end()) return bad;
    total_ms += value * unit->second;
    p = after_unit;
  }
  // Beyond about 30 years a duration means a typo, and would overflow what it is added to.
  constexpr double kMaxMs = 1e12;
  if (total_ms > kMaxMs) return Status::InvalidArgument(Quoted(text) + " is too long a duration");
  return std::chrono::milliseconds(static_cast<int64_t>(total_ms));
}

std::vector<std::string> SplitList(const std::string& text) {
  std::vector<std::string> out;
  size_t start = 0;
  while (start <= text.size()) {
    const size_t comma = std::min(text.find(',', start), text.size());
    if (comma > start) out.push_back(text.substr(start, comma - start));
    start = comma + 1;
  }
  return out;
}

Flag String(std::string name, std::string* field, std::string config_key) {
  return Flag{.name = std::move(name),
              .set =
                  [field](const std::string& v) {
                    *field = v;
                    return Status::Ok();
                  },
              .config_key = std::move(config_key)};
}

Flag Int(std::string name, int* field, IntRange range, std::string config_key) {
  std::string flag = Dashed(name);
  return Flag{.name = std::move(name),
              .set =
                  [field, range, flag = std::move(flag)](const std::string& v) {
                    auto n = ParseInt(flag, v, range);
                    if (!n.ok()) return n.status();
                    *field = *n;
                    return Status::Ok();
                  },
              .config_key = std::move(config_key)};
}

Flag Double(std::string name, double* field, std::string config_key) {
  std::string flag = Dashed(name);
  return Flag{.name = std::move(name),
              .set =
                  [field, flag = std::move(flag)](const std::string& v) {
                    auto d = ParseDouble(flag, v);
                    if (!d.ok()) return d.status();
                    *field = *d;
                    return Status::Ok();
                  },
              .config_key = std::move(config_key)};
}

Flag Bool(std::string name, bool* field, std::string config_key) {
  std::string flag = Dashed(name);
  return Flag{.name = std::move(name),
              .is_bool = true,
              .set =
                  [field, flag = std::move(flag)](const std::string& v) {
                    auto b = ParseBool(flag, v);
                    if (!b.ok()) return b.status();
                    *field = *b;
                    return Status::Ok();
                  },
              .config_key = std::move(config_key)};
}

Flag Duration(std::string name, std::chrono::milliseconds* field, std::chrono::milliseconds min,
              std::string config_key) {
  std::string flag = Dashed(name);
  return Flag{
      .name = std::move(name),
      .set =
          [field, min, flag = std::move(flag)](const std::string& v) {
            auto d = ParseDuration(v);
            if (!d.ok()) return d.status().WithContext(flag);
            if (*d < min) {
              const int64_t ms = min.count();
              return Status::InvalidArgument(
                  flag + " must be at least " +
                  (ms % 1000 == 0 ? std::to_string(ms / 1000) + "s" : std::to_string(ms) + "ms"));
            }
            *field = *d;
            return Status::Ok();
          },
      .config_key = std::move(config_key)};
}

Flag Bytes(std::string name, int64_t* field, std::string config_key) {
  std::string flag = Dashed(name);
  return Flag{.name = std::move(name),
              .set =
                  [field, flag = std::move(flag)](const std::string& v) {
                    auto bytes = ParseByteQuantity(v);
                    if (!bytes.ok()) return bytes.status().WithContext(flag);
                    *field = *bytes;
                    return Status::Ok();
                  },
              .config_key = std::move(config_key)};
}

Flag List(std::string name, std::vector<std::string>* field, std::string config_key) {
  return Flag{.name = std::move(name),
              .set =
                  [field](const std::string& v) {
                    *field = SplitList(v);
                    return Status::Ok();
                  },
              .config_key = std::move(config_key)};
}

Flag OneOf(std::string name, std::string* field, std::vector<std::string> choices,
           std::string config_key) {
  std::string flag = Dashed(name);
  return Flag{
      .name = std::move(name),
      .set =
          [field, choices = std::move(choices), flag = std::move(flag)](const std::string& v) {
            if (std::find(choices.begin(), choices.end(), v) == choices.end()) {
              std::string list;
              for (const auto& c : choices)
                list += (list.empty() ? "" : ", ") + c;
              return Status::InvalidArgument(flag + " must be one of " + list + ", not " +
                                             Quoted(v));
            }
            *field = v;
            return Status::Ok();
          },
      .config_key = std::move(config_key)};
}

Flag Custom(std::string name, std::function<Status(const std::string&)> set,
            std::string config_key) {
  return Flag{.name = std::move(name), .set = std::move(set), .config_key = std::move(config_key)};
}

Flag WithShort(Flag flag, char short_name) {
  flag.short_name = short_name;
  return flag;
}

StatusOr<CommandLine> Split(const std::vector<std::string>& args, const std::vector<Flag>& flags,
                            const Syntax& syntax) {
  CommandLine line;
  try {
    const po::parsed_options parsed = po::command_line_parser(MarkEmptyValues(args))
                                          .options(Describe(flags))
                                          .style(Style(syntax))
                                          .run();
    for (const po::option& option : parsed.options)
      EPHEMERA_RETURN_IF_ERROR(Add(option, flags, &line));
  } catch (const po::error& e) {
    return FromBoostError(e);
  }
  return line;
}

Status Apply(const CommandLine& line, const std::vector<Flag>& flags,
             const std::vector<std::string>& skip) {
  for (const auto& [name, value] : line.values) {
    if (std::find(skip.begin(), skip.end(), name) != skip.end()) continue;
    EPHEMERA_RETURN_IF_ERROR(Find(flags, name)->set(value));
  }
  return Status::Ok();
}

bool AsksForHelp(const std::vector<std::string>& args) {
  return std::any_of(args.begin(), args.end(),
                     [](const std::string& a) { return a == "-h" || a == "--help"; });
}

Status Parse(const std::vector<std::string>& args, const std::vector<Flag>& flags,
             const Syntax& syntax, bool* help) {
  *help = AsksForHelp(args);
  auto line = Split(args, flags, syntax);
  if (!line.ok()) return line.status();
  if (!line->positional.empty()) {
    return Status::InvalidArgument("unexpected argument " + Quoted(line->positional.front()));
  }
  return Apply(*line, flags);
}

Status ApplyConfigFile(const std::string& path, const std::vector<Flag>& flags) {
  try {
    const YAML::Node root = YAML::LoadFile(path);
    if (root.IsNull()) return Status::Ok();
    if (!root.IsMap()) return Status::InvalidArgument("config file " + path + " is not a YAML map");
    return ApplyConfigMap(root, "", flags).WithContext("config file " + path);
  } catch (const YAML::Exception& e) {
    return Status::InvalidArgument("config file " + path + ": " + e.what());
  }
}

std::vector<std::string> Names(const std::vector<Flag>& flags) {
  std::vector<std::string> names = {"help"};
  for (const Flag& f : flags)
    names.push_back(f.name);
  return names;
}

std::vector<std::string> ConfigKeys(const std::vector<Flag>& flags) {
  std::vector<std::string> keys;
  for (const Flag& f : flags) {
    if (!f.config_key.empty()) keys.push_back(f.config_key);
  }
  return keys;
}

}  // namespace ephemera::flags
