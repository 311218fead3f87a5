// Fuzz target for the CSI requests a container orchestrator (or anyone who reaches the socket)
// sends to the driver: the first byte picks the message, the rest is its protobuf encoding. The
// request is then checked the way the services check it before anything touches a device:
// names, IDs, paths, capabilities, parameters, volume context, topology and capacity ranges.
// Every check must answer OK or an error, never crash, hang or throw.
#include <cstddef>
#include <cstdint>
#include <map>
#include <string>

#include "csi/parameters.h"
#include "csi/proto/csi.pb.h"
#include "csi/request_validation.h"
#include "csi/volume_id.h"

namespace {

std::map<std::string, std::string> ToMap(const google::protobuf::Map<std::string, std::string>& m) {
  return {m.begin(), m.end()};
}

void CheckCapabilities(const google::protobuf::RepeatedPtrField<csi::v1::VolumeCapability>& caps) {
  for (const auto& c : caps) {
    (void)ephemera::csi::ValidateCapability("volume_capabilities", c);
    (void)ephemera::csi::IsReadOnlyMode(c);
    if (c.has_mount()) (void)ephemera::csi::ParseFsType("fs_type", c.mount().fs_type());
  }
}

void CheckRange(const csi::v1::CapacityRange& range) {
  auto size = ephemera::csi::SizeForRange(range.required_bytes(), range.limit_bytes(),
                                          int64_t{16} << 20, int64_t{4} << 20);
  if (size.ok()) {
    // Within the range and aligned, as promised.
    if (*size <= 0 || *size % (int64_t{4} << 20) != 0 || *size < range.required_bytes() ||
        (range.limit_bytes() > 0 && *size > range.limit_bytes())) {
      __builtin_trap();
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace ephemera::csi;  // NOLINT(google-build-using-namespace)
  if (size == 0) return 0;
  const auto* bytes = data + 1;
  const int length = static_cast<int>(size - 1);
  switch (data[0] % 4) {
    case 0: {
      ::csi::v1::CreateVolumeRequest r;
      if (!r.ParseFromArray(bytes, length)) return 0;
      (void)ValidateVolumeName("name", r.name());
      CheckCapabilities(r.volume_capabilities());
      (void)ParseVolumeParameters("parameters", ToMap(r.parameters()));
      CheckRange(r.capacity_range());
      for (const auto& t : r.accessibility_requirements().requisite())
        (void)TopologyMatchesNode(t, "node-1");
      for (const auto& t : r.accessibility_requirements().preferred())
        (void)TopologyMatchesNode(t, "node-1");
      break;
    }
    case 1: {
      ::csi::v1::NodePublishVolumeRequest r;
      if (!r.ParseFromArray(bytes, length)) return 0;
      (void)ValidateVolumeId("volume_id", r.volume_id());
      (void)ValidatePath("target_path", r.target_path());
      (void)ValidatePath("staging_target_path", r.staging_target_path());
      if (r.has_volume_capability()) {
        (void)ValidateCapability("volume_capability", r.volume_capability());
      }
      const auto context = ToMap(r.volume_context());
      if (IsEphemeral(context)) {
        auto params = ParseEphemeralParameters(context);
        if (params.ok() && params->size <= 0) __builtin_trap();
      }
      break;
    }
    case 2: {
      ::csi::v1::NodeExpandVolumeRequest r;
      if (!r.ParseFromArray(bytes, length)) return 0;
      (void)ValidateVolumeId("volume_id", r.volume_id());
      (void)ValidatePath("volume_path", r.volume_path());
      CheckRange(r.capacity_range());
      break;
    }
    default: {
      ::csi::v1::GetCapacityRequest r;
      if (!r.ParseFromArray(bytes, length)) return 0;
      CheckCapabilities(r.volume_capabilities());
      (void)ParseVolumeParameters("parameters", ToMap(r.parameters()));
      if (r.has_accessible_topology()) (void)TopologyMatchesNode(r.accessible_topology(), "node-1");
      break;
    }
  }
  return 0;
}
