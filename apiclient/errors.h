// Errors of the Kubernetes API, as ephemera::Status.
//
// The mapping from HTTP to canonical codes happens here and nowhere else:
//   400, 413, 415, 422 Invalid/BadRequest  -> INVALID_ARGUMENT
//   401 Unauthorized                       -> UNAUTHENTICATED
//   403 Forbidden                          -> PERMISSION_DENIED
//   404 NotFound                           -> NOT_FOUND
//   405 MethodNotAllowed                   -> UNIMPLEMENTED
//   409 AlreadyExists                      -> ALREADY_EXISTS
//   409 Conflict (stale resourceVersion)   -> ABORTED
//   410 Gone / Expired (watch too old)     -> OUT_OF_RANGE
//   429 TooManyRequests                    -> RESOURCE_EXHAUSTED
//   500 InternalError                      -> INTERNAL
//   502, 503 ServiceUnavailable            -> UNAVAILABLE
//   504, Timeout, ServerTimeout            -> DEADLINE_EXCEEDED
// Transport failures (connection refused, TLS) are UNAVAILABLE.
//
// Thread safety: pure functions.
#pragma once

#include <string>
#include <string_view>

#include "common/status.h"

namespace ephemera::apiclient {

// Builds the Status for an HTTP error response. `body` is the response body (a metav1.Status when
// the API server wrote it); `what` says which request failed, e.g. "GET /api/v1/pods".
Status StatusFromHttp(int http_code, std::string_view body, std::string_view what);

inline bool IsNotFound(const Status& s) {
  return s.code() == Code::kNotFound;
}
inline bool IsAlreadyExists(const Status& s) {
  return s.code() == Code::kAlreadyExists;
}
inline bool IsConflict(const Status& s) {
  return s.code() == Code::kAborted;
}
inline bool IsGone(const Status& s) {
  return s.code() == Code::kOutOfRange;
}
inline bool IsForbidden(const Status& s) {
  return s.code() == Code::kPermissionDenied;
}
inline bool IsInvalid(const Status& s) {
  return s.code() == Code::kInvalidArgument;
}
inline bool IsTooManyRequests(const Status& s) {
  return s.code() == Code::kResourceExhausted;
}
// Worth retrying later with backoff: throttling, timeouts, unavailability, server errors.
bool IsTransient(const Status& s);

}  // namespace ephemera::apiclient
