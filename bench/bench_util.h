// Helpers shared by the benchmark suites.
#pragma once
#include <cstdint>

#include "engine/tensor.h"

namespace isplit::bench {

// A tensor of deterministic values in [-1, 1) (a linear congruential sequence per seed).
inline Tensor filled(const Shape& shape, uint32_t seed) {
  Tensor t = Tensor::empty(shape);
  uint32_t s = seed * 2654435761u + 1u;
  for (int64_t i = 0; i < t.numel(); ++i) {
    s = s * 1664525u + 1013904223u;
    t[i] = static_cast<float>(s >> 8) * (2.0f / 16777216.0f) - 1.0f;
  }
  return t;
}

}  // namespace isplit::bench
