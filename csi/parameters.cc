// Parameter parsing and sizing rules (see parameters.h).
#include "csi/parameters.h"

#include <limits>

#include "common/quantity.h"

namespace ephemera::csi {

namespace {

std::string KeyField(std::string_view field, std::string_view key) {
  return std::string(field) + "[\"" + std::string(key) + "\"]";
}

bool HasKubernetesPrefix(std::string_view key) {
  return key.starts_with(kKubernetesPrefix);
}

Status ParseBool(std::string_view field, std::string_view value, bool* out) {
  if (value == "true") {
    *out = true;
  } else if (value == "false") {
    *out = false;
  } else {
    return Status::InvalidArgument(std::string(field) + ": must be \"true\" or \"false\", not \"" +
                                   std::string(value.substr(0, 64)) + "\"");
  }
  return Status::Ok();
}

Status ParseUsage(std::string_view field, std::string_view value, DeviceUsage* out) {
  if (value == "AppDirect") {
    *out = DeviceUsage::kAppDirect;
  } else if (value == "FileIO") {
    *out = DeviceUsage::kFileIO;
  } else {
    return Status::InvalidArgument(std::string(field) +
                                   ": must be \"AppDirect\" or \"FileIO\", not \"" +
                                   std::string(value.substr(0, 64)) + "\"");
  }
  return Status::Ok();
}

}  // namespace

StatusOr<VolumeParameters> ParseVolumeParameters(std::string_view field,
                                                 const std::map<std::string, std::string>& params) {
  VolumeParameters out;
  for (const auto& [key, value] : params) {
    if (key == kParamEraseAfter) {
      EPHEMERA_RETURN_IF_ERROR(ParseBool(KeyField(field, key), value, &out.erase_after));
    } else if (key == kParamUsage) {
      EPHEMERA_RETURN_IF_ERROR(ParseUsage(KeyField(field, key), value, &out.usage));
    } else if (!HasKubernetesPrefix(key)) {
      return Status::InvalidArgument(KeyField(field, key.substr(0, 64)) + ": unknown parameter");
    }
  }
  return out;
}

bool IsEphemeral(const std::map<std::string, std::string>& volume_context) {
  auto it = volume_context.find(std::string(kEphemeralKey));
  return it != volume_context.end() && it->second == "true";
}

StatusOr<EphemeralParameters> ParseEphemeralParameters(
    const std::map<std::string, std::string>& volume_context) {
  EphemeralParameters out;
  bool have_size = false;
  for (const auto& [key, value] : volume_context) {
    std::string field = KeyField("volume_context", key.substr(0, 64));
    if (key == kParamSize) {
      StatusOr<int64_t> size = ParseByteQuantity(value);
      if (!size.ok()) return Status::InvalidArgument(field + ": " + size.status().message());
      if (*size <= 0) return Status::InvalidArgument(field + ": must be greater than zero");
      out.size = *size;
      have_size = true;
    } else if (key == kParamEraseAfter) {
      // The attributes of an inline volume come from the pod: a pod that could turn erasing off
      // would leave its data to the next tenant of the space. Inline volumes are always erased.
      return Status::InvalidArgument(
          field +
          ": not allowed for an inline ephemeral volume (its data is always erased; "
          "erasing is the administrator's decision, never the pod's)");
    } else if (key == kParamUsage) {
      EPHEMERA_RETURN_IF_ERROR(ParseUsage(field, value, &out.volume.usage));
    } else if (!HasKubernetesPrefix(key)) {
      return Status::InvalidArgument(field + ": unknown parameter");
    }
  }
  if (!have_size) {
    return Status::InvalidArgument(
        "volume_context[\"size\"]: required for an inline ephemeral volume");
  }
  return out;
}

StatusOr<std::string> ParseFsType(std::string_view field, std::string_view fs_type) {
  if (fs_type.empty() || fs_type == "ext4") return std::string("ext4");
  if (fs_type == "xfs") return std::string("xfs");
  return Status::InvalidArgument(std::string(field) + ": unsupported filesystem \"" +
                                 std::string(fs_type.substr(0, 64)) + "\" (supported: ext4, xfs)");
}

StatusOr<int64_t> RoundUp(int64_t value, int64_t alignment) {
  if (value <= 0) return int64_t{0};
  int64_t remainder = value % alignment;
  if (remainder == 0) return value;
  if (value > std::numeric_limits<int64_t>::max() - (alignment - remainder)) {
    return Status::OutOfRange(std::to_string(value) +
                              " bytes cannot be rounded up to a multiple of " +
                              std::to_string(alignment));
  }
  return value + (alignment - remainder);
}

int64_t RoundDown(int64_t value, int64_t alignment) {
  if (value <= 0) return 0;
  return value - value % alignment;
}

StatusOr<int64_t> SizeForRange(int64_t required_bytes, int64_t limit_bytes, int64_t default_size,
                               int64_t alignment) {
  if (required_bytes < 0) {
    return Status::InvalidArgument("capacity_range.required_bytes: must not be negative");
  }
  if (limit_bytes < 0) {
    return Status::InvalidArgument("capacity_range.limit_bytes: must not be negative");
  }
  if (limit_bytes > 0 && limit_bytes < required_bytes) {
    return Status::InvalidArgument(
        "capacity_range.limit_bytes: smaller than capacity_range.required_bytes");
  }
  if (required_bytes > 0) {
    StatusOr<int64_t> size = RoundUp(required_bytes, alignment);
    if (!size.ok()) return size.status();
    if (limit_bytes > 0 && *size > limit_bytes) {
      return Status::OutOfRange("capacity_range: no multiple of " + std::to_string(alignment) +
                                " bytes lies between required_bytes " +
                                std::to_string(required_bytes) + " and limit_bytes " +
                                std::to_string(limit_bytes));
    }
    return *size;
  }
  StatusOr<int64_t> default_aligned = RoundUp(std::max<int64_t>(default_size, 1), alignment);
  if (!default_aligned.ok()) return default_aligned.status();
  if (limit_bytes == 0) return *default_aligned;
  int64_t largest = RoundDown(limit_bytes, alignment);
  if (largest == 0) {
    return Status::OutOfRange("capacity_range.limit_bytes: " + std::to_string(limit_bytes) +
                              " is below the allocation unit of " + std::to_string(alignment) +
                              " bytes");
  }
  return std::min(largest, *default_aligned);
}

int64_t MinimumFilesystemBytes(std::string_view fs_type) {
  return fs_type == "xfs" ? kMinXfsBytes : 0;
}

StatusOr<int64_t> RequiredBytesFor(std::string_view fs_type, int64_t required_bytes,
                                   int64_t limit_bytes, std::string_view field) {
  const int64_t floor = MinimumFilesystemBytes(fs_type);
  if (floor == 0 || required_bytes >= floor) return required_bytes;
  if (limit_bytes > 0 && limit_bytes < floor) {
    return Status::OutOfRange(std::string(field) + ": an " + std::string(fs_type) +
                              " filesystem needs at least " + std::to_string(floor) +
                              " bytes (mkfs refuses smaller devices); the limit is " +
                              std::to_string(limit_bytes));
  }
  return floor;
}

}  // namespace ephemera::csi
