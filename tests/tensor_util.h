// Small tensor helpers shared by the kernel suites: seeded uniform tensors and bit-for-bit
// comparison.
#pragma once
#include <cstring>
#include <random>

#include "engine/tensor.h"

namespace isplit::testing {

// A tensor of values drawn uniformly from [lo, hi).
inline Tensor uniform_tensor(std::mt19937& rng, const Shape& shape, float lo = -1.0f,
                             float hi = 1.0f) {
  std::uniform_real_distribution<float> dist(lo, hi);
  Tensor t = Tensor::empty(shape);
  for (int64_t i = 0; i < t.numel(); ++i) t[i] = dist(rng);
  return t;
}

// True when both tensors have the same shape and the same bits (NaN payloads and signed
// zeros included).
inline bool same_bits(const Tensor& a, const Tensor& b) {
  return a.shape() == b.shape() &&
         std::memcmp(a.data(), b.data(), static_cast<size_t>(a.numel()) * sizeof(float)) == 0;
}

}  // namespace isplit::testing
