// Status: the one error type of ephemera.
//
// Every fallible operation in the project returns a Status (or a StatusOr<T>) carrying a canonical
// code in gRPC's numbering and a human-readable message. HTTP status codes from the API server are
// mapped to these codes once, in apiclient/, and the codes are mapped to grpc::Status once, in
// csi/. Exceptions never cross a module boundary; they are caught at the edge and turned into a
// Status.
//
// Thread safety: a Status is a value; distinct objects may be used from distinct threads freely.
#pragma once

#include <cassert>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <variant>

namespace ephemera {

// Canonical error codes. The numeric values are gRPC's and are part of the contract: the CSI layer
// converts them to grpc::StatusCode by value.
enum class Code : int {
  kOk = 0,
  kCancelled = 1,
  kUnknown = 2,
  kInvalidArgument = 3,
  kDeadlineExceeded = 4,
  kNotFound = 5,
  kAlreadyExists = 6,
  kPermissionDenied = 7,
  kResourceExhausted = 8,
  kFailedPrecondition = 9,
  kAborted = 10,
  kOutOfRange = 11,
  kUnimplemented = 12,
  kInternal = 13,
  kUnavailable = 14,
  kDataLoss = 15,
  kUnauthenticated = 16,
};

// The canonical upper-case name of a code, e.g. "NOT_FOUND".
std::string_view CodeName(Code code);

class [[nodiscard]] Status {
 public:
  // An OK status: no allocation, nothing to free.
  Status() = default;
  Status(Code code, std::string message);

  static Status Ok() { return {}; }
  static Status Cancelled(std::string msg) { return {Code::kCancelled, std::move(msg)}; }
  static Status Unknown(std::string msg) { return {Code::kUnknown, std::move(msg)}; }
  static Status InvalidArgument(std::string msg) {
    return {Code::kInvalidArgument, std::move(msg)};
  }
  static Status DeadlineExceeded(std::string msg) {
    return {Code::kDeadlineExceeded, std::move(msg)};
  }
  static Status NotFound(std::string msg) { return {Code::kNotFound, std::move(msg)}; }
  static Status AlreadyExists(std::string msg) { return {Code::kAlreadyExists, std::move(msg)}; }
  static Status PermissionDenied(std::string msg) {
    return {Code::kPermissionDenied, std::move(msg)};
  }
  static Status ResourceExhausted(std::string msg) {
    return {Code::kResourceExhausted, std::move(msg)};
  }
  static Status FailedPrecondition(std::string msg) {
    return {Code::kFailedPrecondition, std::move(msg)};
  }
  static Status Aborted(std::string msg) { return {Code::kAborted, std::move(msg)}; }
  static Status OutOfRange(std::string msg) { return {Code::kOutOfRange, std::move(msg)}; }
  static Status Unimplemented(std::string msg) { return {Code::kUnimplemented, std::move(msg)}; }
  static Status Internal(std::string msg) { return {Code::kInternal, std::move(msg)}; }
  static Status Unavailable(std::string msg) { return {Code::kUnavailable, std::move(msg)}; }
  static Status DataLoss(std::string msg) { return {Code::kDataLoss, std::move(msg)}; }
  static Status Unauthenticated(std::string msg) {
    return {Code::kUnauthenticated, std::move(msg)};
  }

  bool ok() const { return code_ == Code::kOk; }
  Code code() const { return code_; }
  const std::string& message() const { return message_; }

  // "NOT_FOUND: pvc default/a not found"; "OK" for an OK status.
  std::string ToString() const;

  // The same code with "context: " put before the message; OK stays OK. For adding what was being
  // done when a lower layer failed, e.g. status.WithContext("creating volume pvc-1").
  Status WithContext(std::string_view context) const;

  friend bool operator==(const Status& a, const Status& b) {
    return a.code_ == b.code_ && a.message_ == b.message_;
  }

 private:
  Code code_ = Code::kOk;
  std::string message_;
};

// Either a value or a non-OK Status.
template <typename T>
class [[nodiscard]] StatusOr {
 public:
  // Implicit on purpose, so that functions can `return value;` or `return status;`.
  StatusOr(T value) : value_(std::move(value)) {}  // NOLINT(google-explicit-constructor)
  StatusOr(Status status)                          // NOLINT(google-explicit-constructor)
      : status_(std::move(status)) {
    if (status_.ok()) status_ = Status::Internal("StatusOr constructed from an OK status");
  }

  bool ok() const { return value_.has_value(); }
  const Status& status() const { return status_; }

  // Precondition: ok(). Calling these on an error is a programming error.
  const T& value() const& {
    assert(ok());
    return *value_;
  }
  T& value() & {
    assert(ok());
    return *value_;
  }
  T&& value() && {
    assert(ok());
    return std::move(*value_);
  }
  const T& operator*() const& { return value(); }
  T& operator*() & { return value(); }
  const T* operator->() const { return &value(); }
  T* operator->() { return &value(); }

 private:
  Status status_;  // OK when value_ is set.
  std::optional<T> value_;
};

}  // namespace ephemera

// Returns from the enclosing function when `expr` (a Status) is not OK.
#define EPHEMERA_RETURN_IF_ERROR(expr)                   \
  do {                                                   \
    ::ephemera::Status ephemera_status_ = (expr);        \
    if (!ephemera_status_.ok()) return ephemera_status_; \
  } while (false)
