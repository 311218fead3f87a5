// Volume IDs and the validation of identifiers and paths that arrive in CSI requests.
//
// A volume ID is derived from the CSI volume name with SHA-256, so that it is short and safe
// enough for every backend's naming rules (ndctl namespace names: 63 characters; LVM volume
// names: letters, digits and "+_.-") whatever the CO chose as name. IDs arriving in requests are
// hostile input: they are checked here before they reach a file name or a command line.
//
// Thread safety: pure functions.
#pragma once

#include <string>
#include <string_view>

#include "common/status.h"

namespace ephemera::csi {

// Longest volume ID accepted in a request. Our own IDs are kVolumeIdLength long; kubelet's IDs of
// inline ephemeral volumes ("csi-" + 64 hex digits) are 68.
inline constexpr size_t kMaxRequestIdLength = 128;
// "eph-" + 40 hex digits (160 bits of SHA-256).
inline constexpr size_t kVolumeIdLength = 44;

// The ID of the volume named `name`: "eph-" + the first 40 hex digits of SHA-256(name).
std::string DeriveVolumeId(std::string_view name);

// The ID of the snapshot named `name`: "snap-" + the first 40 hex digits of SHA-256(name). The
// prefix keeps snapshot and volume IDs apart (a volume ID never starts with "snap-").
std::string DeriveSnapshotId(std::string_view name);

// The ID of the inline ephemeral volume that kubelet calls `request_volume_id`.
std::string DeriveEphemeralVolumeId(std::string_view request_volume_id);

// OK when `id` is 1..kMaxRequestIdLength characters of [A-Za-z0-9._-] starting with a letter or a
// digit: no path separator, no "..", no NUL or control character. Otherwise INVALID_ARGUMENT with a
// message naming `field`.
Status ValidateVolumeId(std::string_view field, std::string_view id);

// OK when `name` is 1..128 bytes without the control characters that the CSI specification bans
// in names (U+0000-U+0008, U+000B, U+000C, U+000E-U+001F, U+007F). INVALID_ARGUMENT naming `field`
// otherwise. Names are only ever hashed, never used as a path.
Status ValidateVolumeName(std::string_view field, std::string_view name);

// OK when `path` is an absolute path of at most 4096 bytes without NUL bytes, without "." or ".."
// components and in canonical form (no trailing "/", no "//"). INVALID_ARGUMENT naming `field`
// otherwise (also when it is empty).
Status ValidatePath(std::string_view field, std::string_view path);

}  // namespace ephemera::csi
