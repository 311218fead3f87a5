// Volume ID derivation and the validation of hostile request fields.
#include "csi/volume_id.h"

#include <catch2/catch.hpp>
#include <string>

namespace ephemera::csi {
namespace {

TEST_CASE("volume IDs are derived from names with SHA-256", "[csi][volume_id]") {
  std::string id = DeriveVolumeId("pvc-1234");
  CHECK(id.size() == kVolumeIdLength);
  CHECK(id.starts_with("eph-"));
  CHECK(id == DeriveVolumeId("pvc-1234"));
  CHECK(id != DeriveVolumeId("pvc-1235"));
  // SHA-256("abc") starts with ba7816bf8f01cfea414140de5dae2223b00361a3.
  CHECK(DeriveVolumeId("abc") == "eph-ba7816bf8f01cfea414140de5dae2223b00361a3");
  CHECK(ValidateVolumeId("id", id).ok());
  // Fits ndctl's 63-character namespace names.
  CHECK(id.size() <= 63);
}

TEST_CASE("ephemeral IDs differ from the IDs of equally named volumes", "[csi][volume_id]") {
  CHECK(DeriveEphemeralVolumeId("csi-abc") != DeriveVolumeId("csi-abc"));
  CHECK(DeriveEphemeralVolumeId("csi-abc") == DeriveEphemeralVolumeId("csi-abc"));
  CHECK(ValidateVolumeId("id", DeriveEphemeralVolumeId("x")).ok());
}

TEST_CASE("hostile volume IDs are rejected as INVALID_ARGUMENT naming the field",
          "[csi][volume_id]") {
  std::string nul("abc\0def", 7);
  for (const std::string& bad :
       {std::string("../x"), std::string("a/b"), std::string(200, 'a'), nul, std::string(""),
        std::string(".."), std::string(".hidden"), std::string("-rf"), std::string("a b"),
        std::string("a\nb"), std::string("a..b"), std::string("/etc/passwd"), std::string("a\\b"),
        std::string("$(reboot)"), std::string("\xc3\xa9t\xc3\xa9")}) {
    INFO("id: " << bad);
    Status status = ValidateVolumeId("volume_id", bad);
    CHECK(status.code() == Code::kInvalidArgument);
    CHECK(status.message().starts_with("volume_id: "));
  }
  CHECK(ValidateVolumeId("volume_id", std::string(128, 'a')).ok());
  CHECK_FALSE(ValidateVolumeId("volume_id", std::string(129, 'a')).ok());
  CHECK(ValidateVolumeId("volume_id", "csi-0123456789abcdef").ok());
  CHECK(ValidateVolumeId("volume_id", "fake_vol.1-2").ok());
}

TEST_CASE("volume names: any text without banned control characters", "[csi][volume_id]") {
  CHECK(ValidateVolumeName("name", "pvc-1/../x y").ok());  // only hashed, never a path
  CHECK(ValidateVolumeName("name", "\xc3\xa9t\xc3\xa9").ok());
  CHECK(ValidateVolumeName("name", "").code() == Code::kInvalidArgument);
  CHECK(ValidateVolumeName("name", std::string("a\0b", 3)).code() == Code::kInvalidArgument);
  CHECK(ValidateVolumeName("name",
                           "a\x1b"
                           "b")
            .code() == Code::kInvalidArgument);
  CHECK(ValidateVolumeName("name", std::string(129, 'n')).code() == Code::kInvalidArgument);
  CHECK(ValidateVolumeName("name", "x").ok());
}

TEST_CASE("paths must be absolute and normalized", "[csi][volume_id]") {
  CHECK(ValidatePath("target_path", "/var/lib/kubelet/pods/x/volumes/y/mount").ok());
  for (const std::string& bad :
       {std::string(""), std::string("relative/path"), std::string("/a/../etc"),
        std::string("/a/./b"), std::string("/a/.."), std::string("/a\0b", 4),
        std::string(5000, '/'), std::string("/var/lib/target/"), std::string("/var//lib"),
        std::string("//var")}) {
    INFO("path: " << bad);
    Status status = ValidatePath("target_path", bad);
    CHECK(status.code() == Code::kInvalidArgument);
    CHECK(status.message().starts_with("target_path: "));
  }
}

}  // namespace
}  // namespace ephemera::csi
