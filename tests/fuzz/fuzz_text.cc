// Fuzz targets for the parsers of short outside text: Kubernetes quantities, durations and other
// flag values, volume IDs and names, URLs and host:port, RFC 3339 times. Each input is split at
// its first byte into a selector and the text, so one target covers the family. Every parser must
// answer with a value or an error and never crash, hang or throw; where a parser has an inverse,
// the round trip must hold.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "apiclient/exec_credential.h"
#include "apiclient/https_transport.h"
#include "common/flags.h"
#include "common/http_endpoint.h"
#include "common/quantity.h"
#include "csi/command_runner.h"
#include "csi/volume_id.h"

namespace {

void Check(bool condition) {
  if (!condition) __builtin_trap();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace ephemera;  // NOLINT(google-build-using-namespace)
  if (size == 0) return 0;
  const std::string text(reinterpret_cast<const char*>(data) + 1, size - 1);
  switch (data[0] % 8) {
    case 0: {
      auto q = ParseQuantity(text);
      // What we print, we read back as the same value.
      if (q.ok() && *q >= 0) Check(*ParseQuantity(FormatBinaryQuantity(*q)) == *q);
      (void)ParseByteQuantity(text);
      break;
    }
    case 1: {
      (void)flags::ParseDuration(text);
      (void)csi::ParseCommandTimeout(text);
      break;
    }
    case 2: {
      (void)flags::ParseInt("flag", text, flags::IntRange{-1000, 1000000});
      (void)flags::ParseDouble("flag", text);
      (void)flags::ParseBool("flag", text);
      break;
    }
    case 3: {
      // A valid ID is derived from any name, deterministically.
      const std::string id = csi::DeriveVolumeId(text);
      Check(csi::ValidateVolumeId("id", id).ok());
      Check(csi::DeriveVolumeId(text) == id);
      Check(csi::ValidateVolumeId("id", csi::DeriveEphemeralVolumeId(text)).ok());
      break;
    }
    case 4: {
      (void)csi::ValidateVolumeId("id", text);
      (void)csi::ValidateVolumeName("name", text);
      (void)csi::ValidatePath("path", text);
      break;
    }
    case 5: {
      auto target = apiclient::ParseHttpsUrl(text);
      if (target.ok()) (void)target->HostHeader();
      break;
    }
    case 6: {
      std::string host;
      int port = 0;
      if (ParseHostPort(text, &host, &port).ok()) Check(port >= 0 && port <= 65535);
      break;
    }
    default:
      (void)apiclient::ParseRfc3339(text);
      break;
  }
  return 0;
}
