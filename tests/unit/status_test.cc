#include "common/status.h"

#include <catch2/catch.hpp>
#include <set>

namespace ephemera {
namespace {

TEST_CASE("An OK status has no message and compares equal to every OK", "[status]") {
  Status ok;
  CHECK(ok.ok());
  CHECK(ok.code() == Code::kOk);
  CHECK(ok.ToString() == "OK");
  CHECK(Status(Code::kOk, "ignored") == Status::Ok());
  CHECK(Status(Code::kOk, "ignored").message().empty());
}

TEST_CASE("Named constructors carry gRPC's numbering", "[status]") {
  CHECK(static_cast<int>(Status::InvalidArgument("x").code()) == 3);
  CHECK(static_cast<int>(Status::NotFound("x").code()) == 5);
  CHECK(static_cast<int>(Status::AlreadyExists("x").code()) == 6);
  CHECK(static_cast<int>(Status::ResourceExhausted("x").code()) == 8);
  CHECK(static_cast<int>(Status::FailedPrecondition("x").code()) == 9);
  CHECK(static_cast<int>(Status::Aborted("x").code()) == 10);
  CHECK(static_cast<int>(Status::OutOfRange("x").code()) == 11);
  CHECK(static_cast<int>(Status::Unavailable("x").code()) == 14);
  CHECK(static_cast<int>(Status::Unauthenticated("x").code()) == 16);
}

TEST_CASE("ToString and WithContext", "[status]") {
  const Status s = Status::NotFound("pvc default/a not found");
  CHECK(s.ToString() == "NOT_FOUND: pvc default/a not found");
  const Status wrapped = s.WithContext("syncing pod default/a");
  CHECK(wrapped.code() == Code::kNotFound);
  CHECK(wrapped.message() == "syncing pod default/a: pvc default/a not found");
  CHECK(Status::Ok().WithContext("anything").ok());
}

TEST_CASE("Every code has a distinct name", "[status]") {
  std::set<std::string_view> names;
  for (int c = 0; c <= 16; ++c)
    names.insert(CodeName(static_cast<Code>(c)));
  CHECK(names.size() == 17);
}

StatusOr<int> Half(int v) {
  if (v % 2 != 0) return Status::InvalidArgument("odd");
  return v / 2;
}

Status HalveTwice(int v, int* out) {
  auto first = Half(v);
  EPHEMERA_RETURN_IF_ERROR(first.status());
  auto second = Half(*first);
  EPHEMERA_RETURN_IF_ERROR(second.status());
  *out = *second;
  return Status::Ok();
}

TEST_CASE("StatusOr holds a value or an error", "[status]") {
  auto good = Half(8);
  REQUIRE(good.ok());
  CHECK(*good == 4);
  auto bad = Half(3);
  CHECK_FALSE(bad.ok());
  CHECK(bad.status().code() == Code::kInvalidArgument);

  int out = 0;
  CHECK(HalveTwice(8, &out).ok());
  CHECK(out == 2);
  CHECK(HalveTwice(6, &out).code() == Code::kInvalidArgument);  // 6 -> 3 -> odd
}

TEST_CASE("A StatusOr made from an OK status is an internal error / not a value", "[status]") {
  StatusOr<int> wrong{Status::Ok()};
  CHECK_FALSE(wrong.ok());
  CHECK(wrong.status().code() == Code::kInternal);
}

}  // namespace
}  // namespace ephemera
