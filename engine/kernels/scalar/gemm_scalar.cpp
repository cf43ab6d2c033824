// Reference GEMM: plain loops, the oracle every SIMD kernel is tested against.
#include <vector>

#include "engine/gemm.h"

namespace isplit {

void gemm_scalar(const GemmArgs& g) {
  // Loop order i-p-j keeps the inner loop unit-stride in B and C for the common case.
  std::vector<float> acc(static_cast<size_t>(g.n));
  for (int64_t i = 0; i < g.m; ++i) {
    for (int64_t j = 0; j < g.n; ++j) acc[j] = 0.0f;
    for (int64_t p = 0; p < g.k; ++p) {
      const float av = g.trans_a ? g.a[p * g.lda + i] : g.a[i * g.lda + p];
      if (g.trans_b) {
        for (int64_t j = 0; j < g.n; ++j) acc[j] += av * g.b[j * g.ldb + p];
      } else {
        const float* brow = g.b + p * g.ldb;
        for (int64_t j = 0; j < g.n; ++j) acc[j] += av * brow[j];
      }
    }
    float* crow = g.c + i * g.ldc;
    if (g.beta == 0.0f) {
      for (int64_t j = 0; j < g.n; ++j) crow[j] = acc[j];
    } else {
      for (int64_t j = 0; j < g.n; ++j) crow[j] = acc[j] + g.beta * crow[j];
    }
  }
}

}  // namespace isplit
