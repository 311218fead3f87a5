// Text of errno values for error messages, without the thread-unsafe std::strerror.
//
// Thread safety: pure functions (strerror_r).
#pragma once

#include <cerrno>
#include <string>

namespace ephemera::csi {

// "what: <text of error>", e.g. "open /dev/loop3: No such file or directory".
std::string ErrnoMessage(const std::string& what, int error = errno);

// The text of an errno value.
std::string ErrnoText(int error);

}  // namespace ephemera::csi
