// Validation of the CSI message parts that several RPCs share: volume capabilities and topology.
//
// Thread safety: pure functions.
#pragma once

#include <string>
#include <string_view>

#include "common/status.h"
#include "csi/proto/csi.pb.h"

namespace ephemera::csi {

inline constexpr std::string_view kDriverName = "pmem-csi.ephemera.io";
inline constexpr std::string_view kTopologyKey = "pmem-csi.ephemera.io/node";

// The capability names an access type (block or mount), a supported access mode (single node:
// SINGLE_NODE_WRITER, SINGLE_NODE_READER_ONLY, SINGLE_NODE_SINGLE_WRITER) and, for mount, a
// supported fs_type. INVALID_ARGUMENT naming `field` (e.g. "volume_capabilities[1]") otherwise.
Status ValidateCapability(std::string_view field, const ::csi::v1::VolumeCapability& capability);

// Whether a topology segment map names this node (it must have exactly our key with our node ID).
bool TopologyMatchesNode(const ::csi::v1::Topology& topology, const std::string& node_id);

// The access mode is read-only (SINGLE_NODE_READER_ONLY).
bool IsReadOnlyMode(const ::csi::v1::VolumeCapability& capability);

}  // namespace ephemera::csi
