// Validation of volume capabilities and topology in requests.
#include "csi/request_validation.h"

#include <catch2/catch.hpp>

namespace ephemera::csi {
namespace {

using ::csi::v1::VolumeCapability;

VolumeCapability Mount(
    const std::string& fs,
    VolumeCapability::AccessMode::Mode mode = VolumeCapability::AccessMode::SINGLE_NODE_WRITER) {
  VolumeCapability capability;
  capability.mutable_mount()->set_fs_type(fs);
  capability.mutable_access_mode()->set_mode(mode);
  return capability;
}

TEST_CASE("volume capabilities", "[csi][validation]") {
  CHECK(ValidateCapability("c", Mount("")).ok());
  CHECK(ValidateCapability("c", Mount("xfs")).ok());
  CHECK(
      ValidateCapability("c", Mount("ext4", VolumeCapability::AccessMode::SINGLE_NODE_READER_ONLY))
          .ok());
  Status multi =
      ValidateCapability("volume_capabilities[0]",
                         Mount("ext4", VolumeCapability::AccessMode::MULTI_NODE_MULTI_WRITER));
  CHECK(multi.code() == Code::kInvalidArgument);
  CHECK(multi.message().starts_with("volume_capabilities[0].access_mode.mode"));
  CHECK(ValidateCapability("c", Mount("btrfs")).message().starts_with("c.mount.fs_type"));

  VolumeCapability no_type;
  no_type.mutable_access_mode()->set_mode(VolumeCapability::AccessMode::SINGLE_NODE_WRITER);
  CHECK(ValidateCapability("c", no_type).code() == Code::kInvalidArgument);
  VolumeCapability no_mode;
  no_mode.mutable_block();
  CHECK(ValidateCapability("c", no_mode).message() == "c.access_mode: required");
}

TEST_CASE("hostile mount flags are rejected", "[csi][validation]") {
  for (const std::string& flag :
       {std::string("noatime,errors=panic"), std::string("errors=panic"),
        std::string("journal_path=/dev/sda"), std::string("logdev=/dev/sda1"),
        std::string("rtdev=/dev/nvme0n1"), std::string("a\0b", 3)}) {
    INFO("flag " << flag);
    VolumeCapability capability = Mount("ext4");
    capability.mutable_mount()->add_mount_flags(flag);
    Status status = ValidateCapability("volume_capability", capability);
    CHECK(status.code() == Code::kInvalidArgument);
    CHECK(status.message().starts_with("volume_capability.mount.mount_flags"));
  }
  VolumeCapability fine = Mount("ext4");
  fine.mutable_mount()->add_mount_flags("noatime");
  fine.mutable_mount()->add_mount_flags("errors=remount-ro");
  CHECK(ValidateCapability("volume_capability", fine).ok());
  VolumeCapability huge = Mount("ext4");
  huge.mutable_mount()->add_mount_flags(std::string(5000, 'a'));
  CHECK(ValidateCapability("volume_capability", huge).code() == Code::kInvalidArgument);
}

TEST_CASE("topology of this node", "[csi][validation]") {
  ::csi::v1::Topology topology;
  (*topology.mutable_segments())["pmem-csi.ephemera.io/node"] = "n1";
  CHECK(TopologyMatchesNode(topology, "n1"));
  CHECK_FALSE(TopologyMatchesNode(topology, "n2"));
  (*topology.mutable_segments())["zone"] = "a";
  CHECK_FALSE(TopologyMatchesNode(topology, "n1"));
}

}  // namespace
}  // namespace ephemera::csi
