#include "apiclient/deadline.h"

#include <algorithm>

namespace ephemera::apiclient {
namespace {
thread_local std::optional<ScopedRequestDeadline::TimePoint> t_deadline;
}  // namespace

ScopedRequestDeadline::ScopedRequestDeadline(TimePoint deadline) : previous_(t_deadline) {
  t_deadline = previous_ ? std::min(*previous_, deadline) : deadline;
}

ScopedRequestDeadline::~ScopedRequestDeadline() {
  t_deadline = previous_;
}

std::optional<ScopedRequestDeadline::TimePoint> ScopedRequestDeadline::Current() {
  return t_deadline;
}

}  // namespace ephemera::apiclient
