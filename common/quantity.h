// Kubernetes resource quantities ("2Gi", "1.5G", "500M", "1e9") as whole byte counts.
//
// Storage sizes reach ephemera as quantities from the API (PVC requests, CSIStorageCapacity) and
// from CSI volume attributes (the `size` of an inline ephemeral volume). Both the driver and the
// controllers parse them here, so that "1Gi" means the same everywhere.
//
// Thread safety: pure functions.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "common/status.h"

namespace ephemera {

// Parses a quantity in Kubernetes' syntax:
//   [+-] digits [. digits] [suffix], suffix one of Ki Mi Gi Ti Pi Ei, n u m k M G T P E,
//   or an exponent e<int> / E<int>.
// Fractions of a unit are rounded up to the next whole number, as resource.Quantity.Value() does,
// so "0.5" is 1. Returns INVALID_ARGUMENT for anything else (empty, stray characters, a suffix
// that is not one of the above) and OUT_OF_RANGE when the value does not fit an int64.
StatusOr<int64_t> ParseQuantity(std::string_view text);

// Like ParseQuantity, and also rejects negative values: for sizes and capacities.
StatusOr<int64_t> ParseByteQuantity(std::string_view text);

// Formats a byte count the way the API server serializes resource.NewQuantity(v, BinarySI):
// the largest binary suffix that divides the value exactly ("1Gi", "1536Mi"); values between -1024
// and 1024 in decimal SI ("0", "1k", "512").
std::string FormatBinaryQuantity(int64_t value);

}  // namespace ephemera
