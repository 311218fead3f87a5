#include "apiclient/errors.h"

#include <nlohmann/json.hpp>

#include "apiclient/client.h"

namespace ephemera::apiclient {

Status StatusFromHttp(int http_code, std::string_view body, std::string_view what) {
  std::string reason;
  std::string message;
  const auto parsed = Object::parse(body, nullptr, /*allow_exceptions=*/false);
  if (Field(parsed, "kind") == "Status") {
    reason = Field(parsed, "reason");
    message = Field(parsed, "message");
  }
  if (message.empty()) {
    // Not a metav1.Status (a proxy, or a server that is still starting): keep a bounded excerpt.
    message = std::string(body.substr(0, 200));
  }
  Code code = Code::kUnknown;
  switch (http_code) {
    case 400:
    case 413:
    case 415:
    case 422:
      code = Code::kInvalidArgument;
      break;
    case 401:
      code = Code::kUnauthenticated;
      break;
    case 403:
      code = Code::kPermissionDenied;
      break;
    case 404:
      code = Code::kNotFound;
      break;
    case 405:
      code = Code::kUnimplemented;
      break;
    case 409:
      code = reason == "AlreadyExists" ? Code::kAlreadyExists : Code::kAborted;
      break;
    case 410:
      code = Code::kOutOfRange;
      break;
    case 429:
      code = Code::kResourceExhausted;
      break;
    case 500:
      code = Code::kInternal;
      break;
    case 502:
    case 503:
      code = Code::kUnavailable;
      break;
    case 504:
      code = Code::kDeadlineExceeded;
      break;
    default:
      code = http_code >= 500 ? Code::kUnavailable : Code::kUnknown;
      break;
  }
  if (reason == "Timeout" || reason == "ServerTimeout") code = Code::kDeadlineExceeded;
  if (reason == "Expired" || reason == "Gone") code = Code::kOutOfRange;
  std::string text(what);
  text += ": HTTP ";
  text += std::to_string(http_code);
  if (!reason.empty()) {
    text += " ";
    text += reason;
  }
  if (!message.empty()) {
    text += ": ";
    text += message;
  }
  return {code, std::move(text)};
}

bool IsTransient(const Status& s) {
  switch (s.code()) {
    case Code::kResourceExhausted:
    case Code::kUnavailable:
    case Code::kDeadlineExceeded:
    case Code::kInternal:
      return true;
    default:
      return false;
  }
}

}  // namespace ephemera::apiclient
