// GEMM: C = op(A) * op(B) + beta * C, row-major, float32.
#pragma once
#include <cstdint>

#include "engine/cpu.h"

namespace isplit {

// Arguments of one row-major GEMM: C[M x N] = op(A)[M x K] * op(B)[K x N] + beta * C.
// op(A) is A (M x K, leading dimension lda) or, with trans_a, A^T where A is K x M.
// op(B) is B (K x N, ldb) or, with trans_b, B^T where B is N x K.
// beta == 0 means C is write-only (its old contents, even NaN, are ignored).
struct GemmArgs {
  bool trans_a = false;
  bool trans_b = false;
  int64_t m = 0, n = 0, k = 0;
  const float* a = nullptr;
  int64_t lda = 0;
  const float* b = nullptr;
  int64_t ldb = 0;
  float beta = 0.0f;
  float* c = nullptr;
  int64_t ldc = 0;
};

// Multi-threaded GEMM on the active ISA. Each element of C is summed over k in a
// fixed order by one thread, so results do not depend on the thread count.
void gemm(const GemmArgs& args);
// The same GEMM on one thread with the kernel of one ISA (tests compare these).
void gemm_single(Isa isa, const GemmArgs& args);

// Convenience wrapper for gemm(GemmArgs).
inline void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, const float* a,
                 int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  gemm(GemmArgs{trans_a, trans_b, m, n, k, a, lda, b, ldb, beta, c, ldc});
}

// The orientation rule of the packed kernels: whether C [m x n] of depth k is computed with
// the vector lanes along M (C written transposed, tile by tile) rather than along N. Worth
// it when N wastes clearly more of the vl lanes than M does and N is narrow (under 4 nr).
// With deep_max_kb > 0, a transposed tile is re-read and re-written with masked
// transposing stores once per k block (k cut into blocks of at most kc), which on some
// CPUs costs more than the lanes it saves: beyond deep_max_kb blocks, lanes along M are
// kept only when N would leave more than a quarter of the lanes idle. Either orientation
// gives the same bits, so this choice is only about speed.
inline bool packed_lanes_along_m(int64_t m, int64_t n, int64_t k, int64_t vl, int64_t nr, int64_t kc,
                                 int64_t deep_max_kb) {
  auto efficiency = [vl](int64_t d) {
    return static_cast<double>(d) / static_cast<double>((d + vl - 1) / vl * vl);
  };
  const double eff_m = efficiency(m), eff_n = efficiency(n);
  if (!(eff_m > eff_n + 0.08 && n < 4 * nr)) return false;
  const int64_t k_blocks = (k + kc - 1) / kc;
  return deep_max_kb <= 0 || k_blocks <= deep_max_kb || eff_n < 0.75;
}

// Per-ISA single-threaded kernels (same contract as gemm_single).
void gemm_scalar(const GemmArgs& args);
void gemm_avx2(const GemmArgs& args);
void gemm_avx512(const GemmArgs& args);
void gemm_neon(const GemmArgs& args);

}  // namespace isplit
