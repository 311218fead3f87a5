#include "common/quantity.h"

#include <array>
#include <cstdlib>
#include <limits>

namespace ephemera {
namespace {

using Int128 = unsigned __int128;

// Intermediate values stay below 2^120 (checked at every step), far from the 2^128 limit.
constexpr Int128 kAccumulateLimit = static_cast<Int128>(1) << 120;

struct Suffix {
  int base2_exponent = 0;   // value *= 2^base2_exponent
  int base10_exponent = 0;  // value *= 10^base10_exponent
};

bool ParseSuffix(std::string_view s, Suffix* out) {
  struct Entry {
    std::string_view name;
    Suffix suffix;
  };
  static constexpr std::array<Entry, 16> kSuffixes = {{
      {"", {0, 0}},
      {"Ki", {10, 0}},
      {"Mi", {20, 0}},
      {"Gi", {30, 0}},
      {"Ti", {40, 0}},
      {"Pi", {50, 0}},
      {"Ei", {60, 0}},
      {"n", {0, -9}},
      {"u", {0, -6}},
      {"m", {0, -3}},
      {"k", {0, 3}},
      {"M", {0, 6}},
      {"G", {0, 9}},
      {"T", {0, 12}},
      {"P", {0, 15}},
      {"E", {0, 18}},
  }};
  for (const auto& e : kSuffixes) {
    if (s == e.name) {
      *out = e.suffix;
      return true;
    }
  }
  // Decimal exponent: e or E followed by an optionally signed integer.
  if (s.size() >= 2 && (s[0] == 'e' || s[0] == 'E')) {
    std::string_view digits = s.substr(1);
    bool negative = false;
    if (digits[0] == '+' || digits[0] == '-') {
      negative = digits[0] == '-';
      digits.remove_prefix(1);
    }
    if (digits.empty() || digits.size() > 3) return false;
    int exponent = 0;
    for (char c : digits) {
      if (c < '0' || c > '9') return false;
      exponent = exponent * 10 + (c - '0');
    }
    *out = Suffix{0, negative ? -exponent : exponent};
    return true;
  }
  return false;
}

bool MultiplyChecked(Int128* value, Int128 factor) {
  if (*value != 0 && factor > kAccumulateLimit / *value) return false;
  *value *= factor;
  return true;
}

}  // namespace

StatusOr<int64_t> ParseQuantity(std::string_view text) {
  const std::string quoted = "\"" + std::string(text.substr(0, 64)) + "\"";
  if (text.empty()) return Status::InvalidArgument("empty quantity");
  std::string_view rest = text;
  bool negative = false;
  if (rest[0] == '+' || rest[0] == '-') {
    negative = rest[0] == '-';
    rest.remove_prefix(1);
  }
  Int128 mantissa = 0;
  int digits = 0;
  int fraction_digits = 0;
  bool in_fraction = false;
  size_t i = 0;
  for (; i < rest.size(); ++i) {
    const char c = rest[i];
    if (c == '.' && !in_fraction) {
      in_fraction = true;
      continue;
    }
    if (c < '0' || c > '9') break;
    ++digits;
    if (in_fraction) ++fraction_digits;
    if (!MultiplyChecked(&mantissa, 10)) {
      return Status::OutOfRange("quantity " + quoted + " is too large");
    }
    mantissa += static_cast<Int128>(c - '0');
  }
  if (digits == 0) return Status::InvalidArgument("quantity " + quoted + " has no digits");
  Suffix suffix;
  if (!ParseSuffix(rest.substr(i), &suffix)) {
    return Status::InvalidArgument("quantity " + quoted +
                                   " has an unknown suffix (expected Ki, Mi, Gi, Ti, Pi, Ei, n, u, "
                                   "m, k, M, G, T, P, E or an exponent such as e9)");
  }
  // value = mantissa * 2^b2 * 10^(b10 - fraction_digits), rounded up to a whole number.
  const int scale10 = suffix.base10_exponent - fraction_digits;
  Int128 numerator = mantissa;
  Int128 denominator = 1;
  if (!MultiplyChecked(&numerator, static_cast<Int128>(1) << suffix.base2_exponent)) {
    return Status::OutOfRange("quantity " + quoted + " is too large");
  }
  for (int k = 0; k < std::abs(scale10); ++k) {
    if (scale10 > 0) {
      if (!MultiplyChecked(&numerator, 10)) {
        return Status::OutOfRange("quantity " + quoted + " is too large");
      }
    } else {
      if (denominator > kAccumulateLimit) {
        numerator = numerator != 0 ? 1 : 0;  // Smaller than any whole unit: rounds up to 1 or 0.
        denominator = 1;
        break;
      }
      denominator *= 10;
    }
  }
  Int128 value = numerator / denominator + (numerator % denominator != 0 ? 1 : 0);
  const Int128 limit = static_cast<Int128>(std::numeric_limits<int64_t>::max());
  if (value > limit) return Status::OutOfRange("quantity " + quoted + " does not fit in 64 bits");
  const auto result = static_cast<int64_t>(value);
  return negative ? -result : result;
}

StatusOr<int64_t> ParseByteQuantity(std::string_view text) {
  auto value = ParseQuantity(text);
  if (!value.ok()) return value;
  if (*value < 0) {
    return Status::InvalidArgument("quantity \"" + std::string(text.substr(0, 64)) +
                                   "\" is negative");
  }
  return value;
}

std::string FormatBinaryQuantity(int64_t value) {
  if (value > -1024 && value < 1024) {
    if (value == 0) return "0";
    if (value % 1000 == 0) return std::to_string(value / 1000) + "k";
    return std::to_string(value);
  }
  static constexpr std::array<std::string_view, 6> kBinary = {"Ki", "Mi", "Gi", "Ti", "Pi", "Ei"};
  int index = -1;
  // Work on the magnitude as unsigned so that INT64_MIN does not overflow.
  uint64_t magnitude = value < 0 ? 0 - static_cast<uint64_t>(value) : static_cast<uint64_t>(value);
  while (index + 1 < static_cast<int>(kBinary.size()) && magnitude % 1024 == 0) {
    magnitude /= 1024;
    ++index;
  }
  std::string out = value < 0 ? "-" : "";
  out += std::to_string(magnitude);
  if (index >= 0) out += kBinary[static_cast<size_t>(index)];
  return out;
}

}  // namespace ephemera
