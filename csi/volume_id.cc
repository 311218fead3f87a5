// Volume ID derivation and request validation (see volume_id.h).
#include "csi/volume_id.h"

#include <openssl/sha.h>

#include <cstdio>

namespace ephemera::csi {

namespace {

std::string HexSha256(std::string_view data) {
  unsigned char digest[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const unsigned char*>(data.data()), data.size(), digest);
  static constexpr char kHex[] = "0123456789abcdef";
  std::string hex;
  hex.reserve(size_t{2} * SHA256_DIGEST_LENGTH);
  for (unsigned char byte : digest) {
    hex.push_back(kHex[byte >> 4]);
    hex.push_back(kHex[byte & 0xf]);
  }
  return hex;
}

bool IsAlnum(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
}

std::string Field(std::string_view field) {
  return std::string(field) + ": ";
}

}  // namespace

std::string DeriveVolumeId(std::string_view name) {
  return "eph-" + HexSha256(name).substr(0, kVolumeIdLength - 4);
}

std::string DeriveSnapshotId(std::string_view name) {
  return "snap-" + HexSha256(name).substr(0, kVolumeIdLength - 4);
}

std::string DeriveEphemeralVolumeId(std::string_view request_volume_id) {
  // A prefix that no CSI volume name could collide with by accident: names from the CO are
  // hashed as they are, this one with a NUL separator that ValidateVolumeName rejects in names.
  std::string input = "ephemeral";
  input.push_back('\0');
  input.append(request_volume_id);
  return DeriveVolumeId(input);
}

Status ValidateVolumeId(std::string_view field, std::string_view id) {
  if (id.empty()) return Status::InvalidArgument(Field(field) + "must not be empty");
  if (id.size() > kMaxRequestIdLength) {
    return Status::InvalidArgument(Field(field) + "longer than " +
                                   std::to_string(kMaxRequestIdLength) + " characters");
  }
  if (!IsAlnum(id[0])) {
    return Status::InvalidArgument(Field(field) + "must start with a letter or a digit");
  }
  for (char c : id) {
    if (!IsAlnum(c) && c != '-' && c != '_' && c != '.') {
      return Status::InvalidArgument(Field(field) +
                                     "may contain only letters, digits, '-', '_' and '.'");
    }
  }
  if (id.find("..") != std::string_view::npos) {
    return Status::InvalidArgument(Field(field) + "must not contain \"..\"");
  }
  return Status::Ok();
}

Status ValidateVolumeName(std::string_view field, std::string_view name) {
  if (name.empty()) return Status::InvalidArgument(Field(field) + "must not be empty");
  if (name.size() > 128) {
    return Status::InvalidArgument(Field(field) + "longer than 128 bytes");
  }
  for (char ch : name) {
    auto c = static_cast<unsigned char>(ch);
    if ((c <= 0x08) || c == 0x0b || c == 0x0c || (c >= 0x0e && c <= 0x1f) || c == 0x7f) {
      return Status::InvalidArgument(Field(field) + "contains a control character");
    }
  }
  return Status::Ok();
}

Status ValidatePath(std::string_view field, std::string_view path) {
  if (path.empty()) return Status::InvalidArgument(Field(field) + "must not be empty");
  if (path.size() > 4096) return Status::InvalidArgument(Field(field) + "longer than 4096 bytes");
  if (path[0] != '/') return Status::InvalidArgument(Field(field) + "must be an absolute path");
  if (path.find('\0') != std::string_view::npos) {
    return Status::InvalidArgument(Field(field) + "contains a NUL byte");
  }
  size_t start = 1;
  while (start <= path.size()) {
    size_t end = path.find('/', start);
    if (end == std::string_view::npos) end = path.size();
    std::string_view component = path.substr(start, end - start);
    if (component == "." || component == "..") {
      return Status::InvalidArgument(Field(field) + "must not contain \".\" or \"..\" components");
    }
    // "/a/" or "/a//b" name the same directory as "/a" and "/a/b" but are other strings: the
    // mount table lists the canonical one, so a publish would not find its own mount again.
    if (component.empty() && path.size() > 1) {
      return Status::InvalidArgument(Field(field) + "must not end in \"/\" or contain \"//\"");
    }
    start = end + 1;
  }
  return Status::Ok();
}

}  // namespace ephemera::csi
