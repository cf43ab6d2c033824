// The Winograd F(4x4, 3x3) transforms behind engine/kernels/winograd.h. Each ISA's
// translation unit includes this file and builds its table from these functions, so the
// same loops are compiled once per instruction set (with that TU's flags). Everything sits
// in an anonymous namespace: no TU can reach another's code through a shared symbol.
//
// The loops run over 16 lanes with a constant trip count and round after every operation
// (the build uses -ffp-contract=off), so the compiler turns each line into vector
// instructions and every ISA gives the scalar table's bits.
#pragma once
#include <cstdint>

#include "engine/kernels/winograd.h"

namespace isplit {
namespace {
namespace winograd_impl {

constexpr int64_t L = kWinogradLanes;

// o[k * os] = (B^T s)[k] for the 6-vector s[k * ss], lane by lane (B^T of F(4x4, 3x3)).
inline void apply_bt(const float* s, int64_t ss, float* o, int64_t os) {
  for (int64_t l = 0; l < L; ++l) {
    const float d0 = s[l], d1 = s[ss + l], d2 = s[2 * ss + l], d3 = s[3 * ss + l],
                d4 = s[4 * ss + l], d5 = s[5 * ss + l];
    o[l] = (4.0f * d0 - 5.0f * d2) + d4;
    o[os + l] = (d4 + d3) - 4.0f * (d1 + d2);
    o[2 * os + l] = (d4 - d3) + 4.0f * (d1 - d2);
    o[3 * os + l] = (d4 - d2) + 2.0f * (d3 - d1);
    o[4 * os + l] = (d4 - d2) - 2.0f * (d3 - d1);
    o[5 * os + l] = (4.0f * d1 - 5.0f * d3) + d5;
  }
}

// o[k * os] = (A^T s)[k], k = 0..3, for the 6-vector s[k * ss] (A^T of F(4x4, 3x3)).
inline void apply_at(const float* s, int64_t ss, float* o, int64_t os) {
  for (int64_t l = 0; l < L; ++l) {
    const float m0 = s[l], m1 = s[ss + l], m2 = s[2 * ss + l], m3 = s[3 * ss + l],
                m4 = s[4 * ss + l], m5 = s[5 * ss + l];
    const float p12 = m1 + m2, d12 = m1 - m2, p34 = m3 + m4, d34 = m3 - m4;
    o[l] = (p12 + p34) + m0;
    o[os + l] = d12 + 2.0f * d34;
    o[2 * os + l] = p12 + 4.0f * p34;
    o[3 * os + l] = (d12 + 8.0f * d34) + m5;
  }
}

// WinogradKernels::input16: v = B^T d B for sixteen 6x6 patches.
void input16(const float* in, float* v, int64_t stride) {
  alignas(64) float t[36 * L];
  for (int64_t c = 0; c < 6; ++c) apply_bt(in + c * L, 6 * L, t + c * L, 6 * L);
  for (int64_t r = 0; r < 6; ++r) apply_bt(t + r * 6 * L, L, v + r * 6 * stride, stride);
}

// WinogradKernels::output16: out = A^T m A + bias (then ReLU) for sixteen tiles.
void output16(const float* m, int64_t stride, float bias, bool relu, float* out) {
  alignas(64) float t[24 * L];
  for (int64_t c = 0; c < 6; ++c) apply_at(m + c * stride, 6 * stride, t + c * L, 6 * L);
  for (int64_t r = 0; r < 4; ++r) apply_at(t + r * 6 * L, L, out + r * 4 * L, L);
  for (int64_t i = 0; i < 16 * L; ++i) out[i] += bias;
  if (relu)
    for (int64_t i = 0; i < 16 * L; ++i) out[i] = out[i] > 0.0f ? out[i] : 0.0f;
}

}  // namespace winograd_impl
}  // namespace
}  // namespace isplit
