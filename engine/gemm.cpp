#include "engine/gemm.h"

#include <algorithm>

#include "engine/parallel.h"
#include "engine/tensor.h"

namespace isplit {

namespace {
using Kernel = void (*)(const GemmArgs&);

Kernel kernel_for(Isa isa) {
  switch (isa) {
#if defined(ISPLIT_HAVE_X86_KERNELS)
    case Isa::Avx512: return gemm_avx512;
    case Isa::Avx2: return gemm_avx2;
#endif
#if defined(ISPLIT_HAVE_NEON_KERNELS)
    case Isa::Neon: return gemm_neon;
#endif
    default: return gemm_scalar;
  }
}

// Sub-problem covering rows [r0, r1) and columns [c0, c1) of C.
GemmArgs block(const GemmArgs& g, int64_t r0, int64_t r1, int64_t c0, int64_t c1) {
  GemmArgs s = g;
  s.m = r1 - r0;
  s.n = c1 - c0;
  s.a = g.trans_a ? g.a + r0 : g.a + r0 * g.lda;
  s.b = g.trans_b ? g.b + c0 * g.ldb : g.b + c0;
  s.c = g.c + r0 * g.ldc + c0;
  return s;
}
}  // namespace

void gemm_single(Isa isa, const GemmArgs& g) {
  if (g.m <= 0 || g.n <= 0) return;
  kernel_for(isa)(g);  // every kernel handles k == 0 (C = beta * C)
}

void gemm(const GemmArgs& g) {
  if (g.m <= 0 || g.n <= 0) return;
  const Isa isa = active_isa();
  const int threads = num_threads();
  const double flops = 2.0 * g.m * g.n * g.k;
  if (threads <= 1 || flops < 2e5) {
    gemm_single(isa, g);
    return;
  }
  // Split the longer side of C into one panel per thread, in units of 16 so the panels are
  // balanced to within a vector. Each thread packs its own operands once; the kernels sum
  // every element identically however C is cut, so the split never changes a result.
  const bool split_cols = g.n >= g.m;
  const int64_t len = split_cols ? g.n : g.m;
  const int64_t unit = 16;
  const int64_t units = (len + unit - 1) / unit;
  const int64_t parts = std::min<int64_t>(units, threads);
  parallel_for(parts, [&](int64_t b, int64_t e) {
    for (int64_t p = b; p < e; ++p) {
      const int64_t u0 = units * p / parts, u1 = units * (p + 1) / parts;
      const int64_t s0 = std::min(len, u0 * unit), s1 = std::min(len, u1 * unit);
      if (s0 >= s1) continue;
      GemmArgs s = split_cols ? block(g, 0, g.m, s0, s1) : block(g, s0, s1, 0, g.n);
      gemm_single(isa, s);
    }
  });
}

}  // namespace isplit
