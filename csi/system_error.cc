// errno texts (see system_error.h).
#include "csi/system_error.h"

#include <string.h>

namespace ephemera::csi {

std::string ErrnoText(int error) {
  char buffer[256];
  // The GNU strerror_r returns the message, in `buffer` or a static string.
  return strerror_r(error, buffer, sizeof(buffer));
}

std::string ErrnoMessage(const std::string& what, int error) {
  return what + ": " + ErrnoText(error);
}

}  // namespace ephemera::csi
