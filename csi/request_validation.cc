// Shared request validation (see request_validation.h).
#include "csi/request_validation.h"

#include "csi/parameters.h"

namespace ephemera::csi {

using ::csi::v1::VolumeCapability;

Status ValidateCapability(std::string_view field, const VolumeCapability& capability) {
  std::string prefix(field);
  if (capability.access_type_case() == VolumeCapability::ACCESS_TYPE_NOT_SET) {
    return Status::InvalidArgument(prefix + ": access_type (block or mount) is required");
  }
  if (!capability.has_access_mode()) {
    return Status::InvalidArgument(prefix + ".access_mode: required");
  }
  switch (capability.access_mode().mode()) {
    case VolumeCapability::AccessMode::SINGLE_NODE_WRITER:
    case VolumeCapability::AccessMode::SINGLE_NODE_READER_ONLY:
    case VolumeCapability::AccessMode::SINGLE_NODE_SINGLE_WRITER:
      break;
    default:
      return Status::InvalidArgument(
          prefix + ".access_mode.mode: unsupported access mode " +
          VolumeCapability::AccessMode::Mode_Name(capability.access_mode().mode()) +
          " (a volume lives on one node)");
  }
  if (capability.has_mount()) {
    StatusOr<std::string> fs = ParseFsType(prefix + ".mount.fs_type", capability.mount().fs_type());
    if (!fs.ok()) return fs.status();
    size_t flags_size = 0;
    for (const std::string& flag : capability.mount().mount_flags()) {
      flags_size += flag.size();
      if (flag.find(',') != std::string::npos || flag.find('\0') != std::string::npos) {
        return Status::InvalidArgument(prefix + ".mount.mount_flags: a flag contains ',' or NUL");
      }
      // Options that would let a request reach another device or file of the node (an external
      // journal or log device) or turn a filesystem error into a kernel panic.
      std::string key = flag.substr(0, flag.find('='));
      if (key == "journal_path" || key == "journal_dev" || key == "logdev" || key == "rtdev" ||
          flag == "errors=panic") {
        return Status::InvalidArgument(prefix + ".mount.mount_flags: \"" + flag.substr(0, 64) +
                                       "\" is not allowed");
      }
    }
    if (flags_size > 4096) {
      return Status::InvalidArgument(prefix + ".mount.mount_flags: more than 4 KiB");
    }
  }
  return Status::Ok();
}

bool TopologyMatchesNode(const ::csi::v1::Topology& topology, const std::string& node_id) {
  auto it = topology.segments().find(std::string(kTopologyKey));
  return topology.segments().size() == 1 && it != topology.segments().end() &&
         it->second == node_id;
}

bool IsReadOnlyMode(const VolumeCapability& capability) {
  return capability.access_mode().mode() == VolumeCapability::AccessMode::SINGLE_NODE_READER_ONLY;
}

}  // namespace ephemera::csi
