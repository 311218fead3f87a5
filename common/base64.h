// Base64 (RFC 4648, the standard alphabet) through OpenSSL's EVP_EncodeBlock/EVP_DecodeBlock:
// Secret data, kubeconfig "-data" fields.
//
// Thread safety: plain functions.
#pragma once

#include <string>
#include <string_view>

#include "common/status.h"

namespace ephemera {

// With padding, no line breaks.
std::string Base64Encode(std::string_view in);
// Strict: the standard alphabet only, padding optional but never more than the length needs, no
// data after it; whitespace anywhere is ignored (PEM-style line breaks). INVALID_ARGUMENT
// otherwise.
StatusOr<std::string> Base64Decode(std::string_view in);

}  // namespace ephemera
