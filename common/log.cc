#include "common/log.h"

#include <sys/time.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <ctime>
#include <mutex>
#include <nlohmann/json.hpp>

namespace ephemera::log {
namespace {

std::atomic<int> g_verbosity{0};
std::atomic<Format> g_format{Format::kText};
std::mutex g_mu;
std::string g_component = "ephemera";  // GUARDED_BY(g_mu)

std::string Quote(std::string_view s) {
  std::string out = "\"";
  for (char c : s) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\t':
        out += "\\t";
        break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof(buf), "\\x%02x", c);
          out += buf;
        } else {
          out += c;
        }
    }
  }
  return out + "\"";
}

void Write(char severity, std::string_view message, const Status* status, const Fields& fields) {
  timeval tv{};
  gettimeofday(&tv, nullptr);
  std::string line;
  if (g_format.load() == Format::kJson) {
    nlohmann::json j;
    j["ts"] = static_cast<double>(tv.tv_sec) + static_cast<double>(tv.tv_usec) / 1e6;
    j["v"] = 0;
    if (severity == 'E') j["level"] = "error";
    if (severity == 'W') j["level"] = "warning";
    j["msg"] = std::string(message);
    if (status != nullptr) {
      j["err"] = status->ToString();
      j["code"] = std::string(CodeName(status->code()));
    }
    for (const auto& [k, v] : fields)
      j[std::string(k)] = v;
    line = j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
  } else {
    tm t{};
    gmtime_r(&tv.tv_sec, &t);
    char head[64];
    std::snprintf(head, sizeof(head), "%c%02d%02d %02d:%02d:%02d.%06ld %7d ", severity,
                  t.tm_mon + 1, t.tm_mday, t.tm_hour, t.tm_min, t.tm_sec,
                  static_cast<long>(tv.tv_usec), static_cast<int>(getpid()));
    line = head;
    {
      std::lock_guard<std::mutex> lock(g_mu);
      line += g_component;
    }
    line += "] ";
    line += Quote(message);
    if (status != nullptr) line += " err=" + Quote(status->ToString());
    for (const auto& [k, v] : fields) {
      line += " ";
      line += k;
      line += "=";
      line += Quote(v);
    }
    line += "\n";
  }
  std::lock_guard<std::mutex> lock(g_mu);
  std::fwrite(line.data(), 1, line.size(), stderr);
  std::fflush(stderr);
}

}  // namespace

Status Configure(std::string_view format, int verbosity) {
  if (format == "text" || format.empty()) {
    g_format = Format::kText;
  } else if (format == "json") {
    g_format = Format::kJson;
  } else {
    return Status::InvalidArgument("--logging-format must be text or json, not \"" +
                                   std::string(format.substr(0, 32)) + "\"");
  }
  if (verbosity < 0) return Status::InvalidArgument("-v must not be negative");
  g_verbosity = verbosity;
  return Status::Ok();
}

void SetComponent(std::string component) {
  std::lock_guard<std::mutex> lock(g_mu);
  g_component = std::move(component);
}

bool V(int level) {
  return level <= g_verbosity.load();
}

void Info(std::string_view message, const Fields& fields) {
  Write('I', message, nullptr, fields);
}
void Warning(std::string_view message, const Fields& fields) {
  Write('W', message, nullptr, fields);
}
void Error(std::string_view message, const Status& status, const Fields& fields) {
  Write('E', message, &status, fields);
}

}  // namespace ephemera::log
