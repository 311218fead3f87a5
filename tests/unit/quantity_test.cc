#include "common/quantity.h"

#include <catch2/catch.hpp>
#include <limits>

namespace ephemera {
namespace {

int64_t Parse(std::string_view s) {
  auto v = ParseQuantity(s);
  INFO(s << ": " << v.status().ToString());
  REQUIRE(v.ok());
  return *v;
}

TEST_CASE("Binary and decimal suffixes", "[quantity]") {
  CHECK(Parse("0") == 0);
  CHECK(Parse("1") == 1);
  CHECK(Parse("1Ki") == 1024);
  CHECK(Parse("2Gi") == 2LL << 30);
  CHECK(Parse("1Ti") == 1LL << 40);
  CHECK(Parse("7Ei") == 7LL << 60);
  CHECK(Parse("1k") == 1000);
  CHECK(Parse("1M") == 1000000);
  CHECK(Parse("1G") == 1000000000);
  CHECK(Parse("3T") == 3000000000000LL);
  CHECK(Parse("1P") == 1000000000000000LL);
  CHECK(Parse("1E") == 1000000000000000000LL);
  CHECK(Parse("1e9") == 1000000000);
  CHECK(Parse("1E3") == 1000);
  CHECK(Parse("5e+2") == 500);
  CHECK(Parse("+12") == 12);
  CHECK(Parse("-12Mi") == -12LL * 1024 * 1024);
}

TEST_CASE("Fractions are rounded up to a whole byte / as Quantity.Value() does", "[quantity]") {
  CHECK(Parse("1.5Gi") == 3LL << 29);
  CHECK(Parse("0.5") == 1);
  CHECK(Parse("1.") == 1);
  CHECK(Parse(".5k") == 500);
  CHECK(Parse("100m") == 1);
  CHECK(Parse("1500m") == 2);
  CHECK(Parse("1n") == 1);
  CHECK(Parse("0.000m") == 0);
  CHECK(Parse("1e-3") == 1);
  CHECK(Parse("0.1Ki") == 103);  // 102.4 rounds up
}

TEST_CASE("Bad quantities are rejected with a clear message", "[quantity]") {
  for (std::string_view bad : {"", "Gi", "1 Gi", "1GB", "1gi", "1.2.3", "--1", "1e", "1e1000",
                               "0x10", "1Gi ", " 1", "1iG", "+", ".", "1ee3"}) {
    auto v = ParseQuantity(bad);
    INFO("input: \"" << bad << "\"");
    CHECK_FALSE(v.ok());
    CHECK((v.status().code() == Code::kInvalidArgument || v.status().code() == Code::kOutOfRange));
    CHECK_FALSE(v.status().message().empty());
  }
  CHECK(ParseQuantity("1GB").status().message().find("\"1GB\"") != std::string::npos);
}

TEST_CASE("Values that do not fit 64 bits are OUT_OF_RANGE", "[quantity]") {
  CHECK(ParseQuantity("8Ei").status().code() == Code::kOutOfRange);
  CHECK(ParseQuantity("9223372036854775808").status().code() == Code::kOutOfRange);
  CHECK(ParseQuantity("99999999999999999999999999999999999999999").status().code() ==
        Code::kOutOfRange);
  CHECK(Parse("9223372036854775807") == std::numeric_limits<int64_t>::max());
}

TEST_CASE("Byte quantities are never negative", "[quantity]") {
  CHECK(ParseByteQuantity("-1").status().code() == Code::kInvalidArgument);
  CHECK(*ParseByteQuantity("2Gi") == 2LL << 30);
}

TEST_CASE("Formatting matches the API server's canonical BinarySI form", "[quantity]") {
  CHECK(FormatBinaryQuantity(0) == "0");
  CHECK(FormatBinaryQuantity(512) == "512");
  CHECK(FormatBinaryQuantity(1000) == "1k");
  CHECK(FormatBinaryQuantity(1024) == "1Ki");
  CHECK(FormatBinaryQuantity(1536LL << 20) == "1536Mi");
  CHECK(FormatBinaryQuantity(4278190080LL) == "4080Mi");
  CHECK(FormatBinaryQuantity(1LL << 30) == "1Gi");
  CHECK(FormatBinaryQuantity(1000000001) == "1000000001");
  CHECK(FormatBinaryQuantity(-(1LL << 30)) == "-1Gi");
  for (int64_t v : {int64_t{1}, int64_t{1023}, int64_t{4096}, int64_t{123456789}, int64_t{3} << 40,
                    std::numeric_limits<int64_t>::max()}) {
    CHECK(Parse(FormatBinaryQuantity(v)) == v);
  }
}

}  // namespace
}  // namespace ephemera
