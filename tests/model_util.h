// Helpers for the suites that run whole models: seeded random inputs, non-trivial
// BatchNorm statistics and the error measure of DESIGN.md (relative to the largest value).
#pragma once
#include <algorithm>
#include <cmath>
#include <random>
#include <string>

#include "models/model.h"

namespace isplit::testing {

// A tensor of standard normal values from a seed.
inline Tensor random_tensor(const Shape& shape, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  Tensor t = Tensor::empty(shape);
  for (int64_t i = 0; i < t.numel(); ++i) t[i] = dist(rng);
  return t;
}

// Gives BatchNorm non-trivial statistics so that folding has something to fold.
inline void randomise_batchnorm(Model& m) {
  std::mt19937_64 rng(3);
  std::uniform_real_distribution<float> u(0.5f, 1.5f);
  for (auto& [name, p] : m.named_parameters()) {
    if (name.find("bn") == std::string::npos && name.find("downsample.1") == std::string::npos)
      continue;
    for (int64_t i = 0; i < p->value.numel(); ++i)
      p->value[i] = name.find("running_mean") != std::string::npos || name.find("bias") != std::string::npos
                        ? u(rng) - 1.0f
                        : u(rng);
  }
}

// Largest |a - b| over the largest |b|.
inline double max_rel(const Tensor& a, const Tensor& b) {
  double num = 0, den = 0;
  for (int64_t i = 0; i < a.numel(); ++i) {
    num = std::max(num, double(std::fabs(a[i] - b[i])));
    den = std::max(den, double(std::fabs(b[i])));
  }
  return num / den;
}

}  // namespace isplit::testing
