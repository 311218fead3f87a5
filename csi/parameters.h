// Parsing of the driver's request parameters: StorageClass parameters, the volume context of inline
// ephemeral volumes, filesystem types, and the sizing rules of capacity ranges.
//
// Thread safety: pure functions.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <string_view>

#include "common/status.h"
#include "csi/backends/device_manager.h"

namespace ephemera::csi {

inline constexpr std::string_view kParamEraseAfter = "eraseafter";
inline constexpr std::string_view kParamSize = "size";
inline constexpr std::string_view kParamUsage = "usage";
inline constexpr std::string_view kEphemeralKey = "csi.storage.k8s.io/ephemeral";
// Keys with this prefix are added by external-provisioner and kubelet; they are accepted and
// ignored.
inline constexpr std::string_view kKubernetesPrefix = "csi.storage.k8s.io/";

struct VolumeParameters {
  bool erase_after = true;
  DeviceUsage usage = DeviceUsage::kAppDirect;  // "usage": "AppDirect" (default) or "FileIO"
  friend bool operator==(const VolumeParameters&, const VolumeParameters&) = default;
};

// CreateVolume / GetCapacity parameters. `field` names the map in messages ("parameters").
// Accepts "eraseafter" ("true"/"false"), "usage" ("AppDirect"/"FileIO") and csi.storage.k8s.io/*
// keys; every other key, and a bad value, is INVALID_ARGUMENT naming field["key"].
StatusOr<VolumeParameters> ParseVolumeParameters(std::string_view field,
                                                 const std::map<std::string, std::string>& params);

struct EphemeralParameters {
  int64_t size = 0;  // bytes, as requested (not yet rounded)
  VolumeParameters volume;
};

// The volume_context of an inline ephemeral volume: "size" (a Kubernetes quantity, required,
// > 0), "usage", and csi.storage.k8s.io/* keys. INVALID_ARGUMENT naming the key otherwise; also
// for "eraseafter": the context is the pod's, and an inline volume is always erased.
StatusOr<EphemeralParameters> ParseEphemeralParameters(
    const std::map<std::string, std::string>& volume_context);

// True when the volume context marks an inline ephemeral volume
// (csi.storage.k8s.io/ephemeral=true).
bool IsEphemeral(const std::map<std::string, std::string>& volume_context);

// The smallest device a filesystem of `fs_type` can be made on: mkfs.xfs (xfsprogs 5.19 and later)
// refuses data devices below 300 MiB; ext4 and raw block have no floor that matters here.
inline constexpr int64_t kMinXfsBytes = int64_t{300} << 20;
int64_t MinimumFilesystemBytes(std::string_view fs_type);

// Raises `required_bytes` to the floor of `fs_type` (a volume may be larger than asked, CSI allows
// it up to `limit_bytes`); OUT_OF_RANGE naming `field` when `limit_bytes` (0: none) is below it.
StatusOr<int64_t> RequiredBytesFor(std::string_view fs_type, int64_t required_bytes,
                                   int64_t limit_bytes, std::string_view field);

// "" (meaning ext4), "ext4" or "xfs"; returns the effective type. INVALID_ARGUMENT naming `field`
// otherwise.
StatusOr<std::string> ParseFsType(std::string_view field, std::string_view fs_type);

// Rounds up / down to a multiple of `alignment` (> 0). RoundUp returns OUT_OF_RANGE on overflow.
StatusOr<int64_t> RoundUp(int64_t value, int64_t alignment);
int64_t RoundDown(int64_t value, int64_t alignment);

// The size of a new volume for a capacity range:
//   - required_bytes or limit_bytes negative, or limit < required: INVALID_ARGUMENT;
//   - neither set: default_size rounded up to the alignment;
//   - required set: required rounded up; OUT_OF_RANGE if that exceeds a set limit;
//   - only limit set: default_size rounded up when that is <= limit, else the largest aligned size
//     <= limit; OUT_OF_RANGE when the limit is below one alignment unit.
// The result is always a positive multiple of alignment within [required, limit].
StatusOr<int64_t> SizeForRange(int64_t required_bytes, int64_t limit_bytes, int64_t default_size,
                               int64_t alignment);

}  // namespace ephemera::csi
