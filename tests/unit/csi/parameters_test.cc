// Parameter parsing and the sizing rules of capacity ranges.
#include "csi/parameters.h"

#include <catch2/catch.hpp>

namespace ephemera::csi {
namespace {

constexpr int64_t kMi = int64_t{1024} * 1024;
constexpr int64_t kAlign = 4 * kMi;

TEST_CASE("rounding to the allocation unit", "[csi][parameters]") {
  CHECK(*RoundUp(1, kAlign) == kAlign);
  CHECK(*RoundUp(kAlign, kAlign) == kAlign);
  CHECK(*RoundUp(kAlign + 1, kAlign) == 2 * kAlign);
  CHECK(*RoundUp(0, kAlign) == 0);
  CHECK(RoundUp(INT64_MAX - 5, kAlign).status().code() == Code::kOutOfRange);
  CHECK(RoundDown(kAlign - 1, kAlign) == 0);
  CHECK(RoundDown(3 * kAlign + 7, kAlign) == 3 * kAlign);
  CHECK(RoundDown(-5, kAlign) == 0);
}

TEST_CASE("sizes for capacity ranges", "[csi][parameters]") {
  const int64_t def = 16 * kMi;
  SECTION("nothing set: the default") {
    CHECK(*SizeForRange(0, 0, def, kAlign) == def);
  }
  SECTION("default not aligned is rounded up") {
    CHECK(*SizeForRange(0, 0, 5 * kMi, kAlign) == 8 * kMi);
  }
  SECTION("required is rounded up") {
    CHECK(*SizeForRange(1, 0, def, kAlign) == kAlign);
    CHECK(*SizeForRange(10 * kMi, 0, def, kAlign) == 12 * kMi);
  }
  SECTION("required equal to limit, aligned") {
    CHECK(*SizeForRange(8 * kMi, 8 * kMi, def, kAlign) == 8 * kMi);
  }
  SECTION("limit honoured: rounding up must not pass the limit") {
    CHECK(SizeForRange(5 * kMi, 7 * kMi, def, kAlign).status().code() == Code::kOutOfRange);
    CHECK(*SizeForRange(5 * kMi, 8 * kMi, def, kAlign) == 8 * kMi);
  }
  SECTION("only a limit: the default when it fits, else the largest aligned size below") {
    CHECK(*SizeForRange(0, 100 * kMi, def, kAlign) == def);
    CHECK(*SizeForRange(0, 10 * kMi, def, kAlign) == 8 * kMi);
    CHECK(SizeForRange(0, kAlign - 1, def, kAlign).status().code() == Code::kOutOfRange);
  }
  SECTION("bad ranges are INVALID_ARGUMENT naming the field") {
    Status negative = SizeForRange(-1, 0, def, kAlign).status();
    CHECK(negative.code() == Code::kInvalidArgument);
    CHECK(negative.message().starts_with("capacity_range.required_bytes"));
    CHECK(SizeForRange(0, -1, def, kAlign)
              .status()
              .message()
              .starts_with("capacity_range.limit_bytes"));
    CHECK(SizeForRange(10 * kMi, 5 * kMi, def, kAlign).status().code() == Code::kInvalidArgument);
  }
  SECTION("overflow") {
    CHECK(SizeForRange(INT64_MAX, 0, def, kAlign).status().code() == Code::kOutOfRange);
  }
}

TEST_CASE("StorageClass parameters", "[csi][parameters]") {
  CHECK(ParseVolumeParameters("parameters", {})->erase_after);
  CHECK_FALSE(ParseVolumeParameters("parameters", {{"eraseafter", "false"}})->erase_after);
  CHECK(ParseVolumeParameters("parameters", {{"eraseafter", "true"}})->erase_after);
  CHECK(ParseVolumeParameters("parameters", {{"csi.storage.k8s.io/pvc/name", "x"},
                                             {"csi.storage.k8s.io/pv/name", "y"}})
            .ok());
  Status unknown = ParseVolumeParameters("parameters", {{"color", "blue"}}).status();
  CHECK(unknown.code() == Code::kInvalidArgument);
  CHECK(unknown.message() == "parameters[\"color\"]: unknown parameter");
  Status bad = ParseVolumeParameters("parameters", {{"eraseafter", "yes"}}).status();
  CHECK(bad.code() == Code::kInvalidArgument);
  CHECK(bad.message().starts_with("parameters[\"eraseafter\"]"));
  // A prefix that only looks similar is not accepted.
  CHECK_FALSE(ParseVolumeParameters("parameters", {{"csi.storage.k8s.io", "x"}}).ok());
}

TEST_CASE("inline ephemeral volume context", "[csi][parameters]") {
  std::map<std::string, std::string> context = {
      {"csi.storage.k8s.io/ephemeral", "true"},
      {"csi.storage.k8s.io/pod.name", "p"},
      {"size", "2Gi"},
  };
  CHECK(IsEphemeral(context));
  StatusOr<EphemeralParameters> params = ParseEphemeralParameters(context);
  REQUIRE(params.ok());
  CHECK(params->size == 2LL * 1024 * 1024 * 1024);
  CHECK(params->volume.erase_after);
  // The pod cannot turn erasing off (nor say "true": the key is the administrator's).
  for (const char* value : {"false", "true"}) {
    auto with_erase = context;
    with_erase["eraseafter"] = value;
    const Status refused = ParseEphemeralParameters(with_erase).status();
    CHECK(refused.code() == Code::kInvalidArgument);
    CHECK(refused.message().starts_with("volume_context[\"eraseafter\"]: not allowed"));
  }

  context.erase("size");
  Status missing = ParseEphemeralParameters(context).status();
  CHECK(missing.code() == Code::kInvalidArgument);
  CHECK(missing.message().starts_with("volume_context[\"size\"]"));

  for (const char* bad : {"0", "-1Gi", "lots", "1Xi", ""}) {
    context["size"] = bad;
    INFO("size " << bad);
    Status status = ParseEphemeralParameters(context).status();
    CHECK(status.code() == Code::kInvalidArgument);
    CHECK(status.message().starts_with("volume_context[\"size\"]"));
  }
  context["size"] = "100Mi";
  context["foo"] = "bar";
  CHECK(ParseEphemeralParameters(context).status().message() ==
        "volume_context[\"foo\"]: unknown parameter");
  CHECK_FALSE(IsEphemeral({{"csi.storage.k8s.io/ephemeral", "false"}}));
  CHECK_FALSE(IsEphemeral({}));
}

TEST_CASE("filesystem types", "[csi][parameters]") {
  CHECK(*ParseFsType("fs_type", "") == "ext4");
  CHECK(*ParseFsType("fs_type", "ext4") == "ext4");
  CHECK(*ParseFsType("fs_type", "xfs") == "xfs");
  Status bad = ParseFsType("volume_capability.mount.fs_type", "ntfs").status();
  CHECK(bad.code() == Code::kInvalidArgument);
  CHECK(bad.message().starts_with("volume_capability.mount.fs_type"));
}

}  // namespace
}  // namespace ephemera::csi

namespace ephemera::csi {
namespace {

TEST_CASE("the usage parameter selects AppDirect or FileIO", "[csi][parameters]") {
  CHECK(ParseVolumeParameters("parameters", {})->usage == DeviceUsage::kAppDirect);
  CHECK(ParseVolumeParameters("parameters", {{"usage", "FileIO"}})->usage == DeviceUsage::kFileIO);
  CHECK(ParseVolumeParameters("parameters", {{"usage", "AppDirect"}})->usage ==
        DeviceUsage::kAppDirect);
  Status bad = ParseVolumeParameters("parameters", {{"usage", "fileio"}}).status();
  CHECK(bad.code() == Code::kInvalidArgument);
  CHECK(bad.message().find("parameters[\"usage\"]") != std::string::npos);
  StatusOr<EphemeralParameters> inline_volume =
      ParseEphemeralParameters({{"size", "1Gi"}, {"usage", "FileIO"}});
  REQUIRE(inline_volume.ok());
  CHECK(inline_volume->volume.usage == DeviceUsage::kFileIO);
  CHECK(ParseEphemeralParameters({{"size", "1Gi"}, {"usage", "x"}}).status().code() ==
        Code::kInvalidArgument);
}

}  // namespace
}  // namespace ephemera::csi

namespace ephemera::csi {
namespace {

TEST_CASE("the smallest volume a filesystem can be made on", "[csi][parameters]") {
  constexpr int64_t kMi = 1 << 20;
  CHECK(MinimumFilesystemBytes("xfs") == 300 * kMi);
  CHECK(MinimumFilesystemBytes("ext4") == 0);
  // Raised to the floor, also up to a limit that allows it.
  CHECK(*RequiredBytesFor("xfs", 256 * kMi, 0, "capacity_range") == 300 * kMi);
  CHECK(*RequiredBytesFor("xfs", 256 * kMi, 300 * kMi, "capacity_range") == 300 * kMi);
  CHECK(*RequiredBytesFor("xfs", 512 * kMi, 0, "capacity_range") == 512 * kMi);
  CHECK(*RequiredBytesFor("ext4", 8 * kMi, 16 * kMi, "capacity_range") == 8 * kMi);
  // A limit below the floor cannot be met: OUT_OF_RANGE naming the field and the floor.
  StatusOr<int64_t> refused = RequiredBytesFor("xfs", 64 * kMi, 128 * kMi, "capacity_range");
  REQUIRE_FALSE(refused.ok());
  CHECK(refused.status().code() == Code::kOutOfRange);
  CHECK(refused.status().message().find("capacity_range") != std::string::npos);
  CHECK(refused.status().message().find("314572800") != std::string::npos);
}

}  // namespace
}  // namespace ephemera::csi
