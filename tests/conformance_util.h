// Helpers shared by the PyTorch-conformance tests.
#pragma once
#include <doctest/doctest.h>

#include <cmath>
#include <filesystem>
#include <string>

#include "engine/tensor.h"

namespace isplit::testing {

// Directory of a fixture case written by tools/make_fixtures.py.
inline std::string fixture_dir(const std::string& name) {
  return std::string(ISPLIT_FIXTURE_DIR) + "/" + name;
}

// True when the fixture exists; otherwise reports how to make it and fails the test.
inline bool require_fixture(const std::string& name) {
  const std::string dir = fixture_dir(name);
  if (std::filesystem::exists(dir + "/io.safetensors")) return true;
  FAIL_CHECK("fixture " << dir << " is missing: run `make fixtures` (tools/make_fixtures.py)");
  return false;
}

// max |a - b| / max |b|: the error measure of DESIGN.md ("relative to the largest value").
inline double rel_error(const Tensor& a, const Tensor& b) {
  double num = 0.0, den = 0.0;
  for (int64_t i = 0; i < b.numel(); ++i) {
    num = std::max(num, std::fabs(double(a[i]) - b[i]));
    den = std::max(den, std::fabs(double(b[i])));
  }
  return den > 0 ? num / den : num;
}

// ||a - b||_2 / ||b||_2: the error measure for gradients, which tolerates the few
// elements where a ReLU or max-pool decision flips on a value within rounding of a tie
// (a flip changes one element by O(1), which a max-norm measure would blame on the whole
// tensor).
inline double rel_l2_error(const Tensor& a, const Tensor& b) {
  double num = 0.0, den = 0.0;
  for (int64_t i = 0; i < b.numel(); ++i) {
    const double d = double(a[i]) - b[i];
    num += d * d;
    den += double(b[i]) * b[i];
  }
  return den > 0 ? std::sqrt(num / den) : std::sqrt(num);
}

// Checks shape equality and rel_l2_error(ours, ref) <= tol, naming the tensor on failure.
inline void check_close_l2(const Tensor& ours, const Tensor& ref, double tol,
                           const std::string& what) {
  INFO(what);
  REQUIRE(shape_str(ours.shape()) == shape_str(ref.shape()));
  const double err = rel_l2_error(ours, ref);
  CHECK_MESSAGE(err <= tol, what << ": relative L2 error " << err << " > " << tol
                                 << " (max-norm error " << rel_error(ours, ref) << ")");
}

// Fraction of elements with |a - b| > tol * max|b|.
inline double fraction_off(const Tensor& a, const Tensor& b, double tol) {
  double mx = 0.0;
  for (int64_t i = 0; i < b.numel(); ++i) mx = std::max(mx, std::fabs(double(b[i])));
  int64_t off = 0;
  for (int64_t i = 0; i < b.numel(); ++i) off += std::fabs(double(a[i]) - b[i]) > tol * mx;
  return b.numel() ? double(off) / b.numel() : 0.0;
}

// Checks shape equality and rel_error(ours, ref) <= tol, naming the tensor on failure.
inline void check_close(const Tensor& ours, const Tensor& ref, double tol, const std::string& what) {
  INFO(what);
  REQUIRE(shape_str(ours.shape()) == shape_str(ref.shape()));
  const double err = rel_error(ours, ref);
  CHECK_MESSAGE(err <= tol, what << ": relative error " << err << " > " << tol);
}

}  // namespace isplit::testing
