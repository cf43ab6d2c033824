// AArch64 Advanced SIMD (NEON) packed GEMM: 8x12 register-blocked FMA micro-kernel
// (24 q-register accumulators, A broadcast from lanes with vfmaq_laneq_f32), 4x4
// in-register transposes for the packing of transposed operands, partial tiles for the
// M and N tails. Plugged into the shared driver (gemm_pack.h), so every C element is
// summed in the same order however C is cut; with the same k blocks (KC = 256) and one
// fused multiply-add per step, results equal the x86 SIMD kernels' bit for bit.
#include <arm_neon.h>

#include <utility>

#include "engine/gemm.h"
#include "engine/kernels/gemm_pack.h"
#include "engine/kernels/gemm_prepack.h"

namespace isplit {

namespace {

using namespace gemm_pack;

constexpr int kMR = 8;
constexpr int kNR = 12;

// Transposes the 4x4 block held in r0..r3 (row i -> column i) in place.
inline void transpose4(float32x4_t& r0, float32x4_t& r1, float32x4_t& r2, float32x4_t& r3) {
  const float32x4_t t0 = vtrn1q_f32(r0, r1);  // a0 b0 a2 b2
  const float32x4_t t1 = vtrn2q_f32(r0, r1);  // a1 b1 a3 b3
  const float32x4_t t2 = vtrn1q_f32(r2, r3);  // c0 d0 c2 d2
  const float32x4_t t3 = vtrn2q_f32(r2, r3);  // c1 d1 c3 d3
  r0 = vreinterpretq_f32_f64(vtrn1q_f64(vreinterpretq_f64_f32(t0), vreinterpretq_f64_f32(t2)));
  r1 = vreinterpretq_f32_f64(vtrn1q_f64(vreinterpretq_f64_f32(t1), vreinterpretq_f64_f32(t3)));
  r2 = vreinterpretq_f32_f64(vtrn2q_f64(vreinterpretq_f64_f32(t0), vreinterpretq_f64_f32(t2)));
  r3 = vreinterpretq_f32_f64(vtrn2q_f64(vreinterpretq_f64_f32(t1), vreinterpretq_f64_f32(t3)));
}

// Loads the first n (0..4) floats at p into a vector, zero filling the rest.
inline float32x4_t load_partial(const float* p, int n) {
  if (n >= 4) return vld1q_f32(p);
  float tmp[4] = {0.0f, 0.0f, 0.0f, 0.0f};
  for (int q = 0; q < n; ++q) tmp[q] = p[q];
  return vld1q_f32(tmp);
}

// Stores the first n (0..4) lanes of v at p.
inline void store_partial(float* p, float32x4_t v, int n) {
  if (n >= 4) {
    vst1q_f32(p, v);
    return;
  }
  float tmp[4];
  vst1q_f32(tmp, v);
  for (int q = 0; q < n; ++q) p[q] = tmp[q];
}

// Packs op(A) rows [0, mc) x kc into np balanced MR-row panels: panel r at dst + r*MR*kc,
// element (i, p) at [p * MR + i], rows past the panel's end zero.
void pack_a_neon(bool trans, const float* src, int64_t ld, int64_t mc, int64_t np, int64_t kc,
                 float* dst) {
  if (trans) {
    // op(A)[i][p] = src[p * ld + i]: walk k outermost so every source row is read contiguously.
    for (int64_t p = 0; p < kc; ++p) {
      const float* s = src + p * ld;
      __builtin_prefetch(s + 4 * ld);
      for (int64_t r = 0; r < np; ++r) {
        const int64_t r0 = part_begin(mc, np, r), r1 = part_begin(mc, np, r + 1);
        const int rows = static_cast<int>(r1 - r0);
        float* d = dst + r * kMR * kc + p * kMR;
        vst1q_f32(d, load_partial(s + r0, rows));
        vst1q_f32(d + 4, load_partial(s + r0 + 4, rows - 4));
      }
    }
    return;
  }
  // op(A)[i][p] = src[i * ld + p]: transpose 4 rows x 4 k steps at a time.
  for (int64_t r = 0; r < np; ++r) {
    const int64_t r0 = part_begin(mc, np, r), r1 = part_begin(mc, np, r + 1);
    const int rows = static_cast<int>(r1 - r0);
    const float* s = src + r0 * ld;
    float* d = dst + r * kMR * kc;
    int64_t p0 = 0;
    for (; p0 + 4 <= kc; p0 += 4) {
      for (int g = 0; g < kMR; g += 4) {
        float32x4_t v[4];
        for (int i = 0; i < 4; ++i)
          v[i] = g + i < rows ? vld1q_f32(s + (g + i) * ld + p0) : vdupq_n_f32(0.0f);
        transpose4(v[0], v[1], v[2], v[3]);
        for (int q = 0; q < 4; ++q) vst1q_f32(d + (p0 + q) * kMR + g, v[q]);
      }
    }
    for (; p0 < kc; ++p0)
      for (int i = 0; i < kMR; ++i) d[p0 * kMR + i] = i < rows ? s[i * ld + p0] : 0.0f;
  }
}

// Packs op(B) kc x nc into NR-wide tiles (tile t at dst + t*NR*kc, element (p, j) at
// [p * NR + j]), zero padding the last.
void pack_b_neon(bool trans, const float* src, int64_t ld, int64_t nc, int64_t kc, float* dst) {
  const int64_t full = nc / kNR;
  const int tail = static_cast<int>(nc - full * kNR);
  if (!trans) {
    // op(B)[p][j] = src[p * ld + j]: walk k outermost so every source row streams contiguously.
    for (int64_t p = 0; p < kc; ++p) {
      const float* s = src + p * ld;
      __builtin_prefetch(s + 4 * ld);
      float* d = dst + p * kNR;
      for (int64_t t = 0; t < full; ++t) {
        float* dt = d + t * kNR * kc;
        const float* st = s + t * kNR;
        vst1q_f32(dt, vld1q_f32(st));
        vst1q_f32(dt + 4, vld1q_f32(st + 4));
        vst1q_f32(dt + 8, vld1q_f32(st + 8));
      }
      if (tail > 0) {
        float* dt = d + full * kNR * kc;
        for (int j = 0; j < kNR; ++j) dt[j] = j < tail ? s[full * kNR + j] : 0.0f;
      }
    }
    return;
  }
  // op(B)[p][j] = src[j * ld + p]: transpose 4 columns x 4 k steps at a time.
  const int64_t ntiles = full + (tail > 0 ? 1 : 0);
  for (int64_t t = 0; t < ntiles; ++t) {
    const int cols = static_cast<int>(std::min<int64_t>(kNR, nc - t * kNR));
    float* d = dst + t * kNR * kc;
    for (int j0 = 0; j0 < kNR; j0 += 4) {
      const int nj = std::max(0, std::min(4, cols - j0));
      const float* s = src + (t * kNR + j0) * ld;
      int64_t p0 = 0;
      for (; p0 + 4 <= kc; p0 += 4) {
        float32x4_t v[4];
        for (int j = 0; j < 4; ++j)
          v[j] = j < nj ? vld1q_f32(s + j * ld + p0) : vdupq_n_f32(0.0f);
        transpose4(v[0], v[1], v[2], v[3]);
        for (int q = 0; q < 4; ++q) vst1q_f32(d + (p0 + q) * kNR + j0, v[q]);
      }
      for (; p0 < kc; ++p0)
        for (int j = 0; j < 4; ++j) d[p0 * kNR + j0 + j] = j < nj ? s[j * ld + p0] : 0.0f;
    }
  }
}

// Combines one accumulator vector with the first n (1..4) floats of C at dst by mode:
// C = acc, C = fma(C, beta, acc) or C = C + acc (the rule of gemm_pack.h), then applies
// the tile epilogue ep (if any) for C row `row` with residual lanes at res.
inline void store_vec(float* dst, float32x4_t acc, int n, int mode, float32x4_t beta,
                      const TileEpilogue* ep, int64_t row, const float* res) {
  float32x4_t v = acc;
  if (mode == kStoreBeta) {
    v = vfmaq_f32(acc, load_partial(dst, n), beta);
  } else if (mode == kStoreAccumulate) {
    v = vaddq_f32(load_partial(dst, n), acc);
  }
  if (ep) {
    if (ep->bias) v = vaddq_f32(v, vdupq_n_f32(ep->bias[row]));
    if (ep->residual) v = vaddq_f32(v, load_partial(res, n));
    if (ep->relu) {  // v > 0 ? v : +0, NaN -> 0 (vmaxq_f32 would keep a NaN)
      const uint32x4_t pos = vcgtq_f32(v, vdupq_n_f32(0.0f));
      v = vreinterpretq_f32_u32(vandq_u32(pos, vreinterpretq_u32_f32(v)));
    }
  }
  store_partial(dst, v, n);
}

// Stores a finished rows x (4 * nv) tile, held row by row in vals (nv vectors per row,
// the last with last_cols valid columns), combined with C by mode and then the epilogue
// ep. Out of line and shared by every tile shape: unrolled into each kernel it made the
// head-only program 5 % larger.
__attribute__((noinline)) void store_tile_epilogue(const float32x4_t* vals, int rows, int nv,
                                                   int last_cols, float* c, int64_t ldc, int mode,
                                                   float32x4_t beta, const TileEpilogue* ep) {
  for (int i = 0; i < rows; ++i)
    for (int v = 0; v < nv; ++v) {
      const int64_t at = i * ldc + 4 * v;
      store_vec(c + at, vals[i * nv + v], v == nv - 1 ? last_cols : 4, mode, beta, ep, i,
                ep->residual ? ep->residual + at : nullptr);
    }
}

// One k step of row I of the tile: acc[v] += a[I] * b[v], a[I] taken from a lane.
template <int I, int NV>
inline void fma_row(float32x4_t* acc, const float32x4_t* b, const float32x4_t* a) {
#pragma GCC unroll 4
  for (int v = 0; v < NV; ++v) acc[v] = vfmaq_laneq_f32(acc[v], b[v], a[I / 4], I % 4);
}

// One k step of rows 0..R-1 (the lane index must be a compile-time constant).
template <int NV, size_t... Is>
inline void fma_rows(float32x4_t (*acc)[NV], const float32x4_t* b, const float32x4_t* a,
                     std::index_sequence<Is...>) {
  (fma_row<static_cast<int>(Is), NV>(acc[Is], b, a), ...);
}

// R x (4*NV) micro-kernel: acc = sum_p ap[p*MR + i] * bp[p*ldbp + j] in increasing p with
// one FMA per step, combined with C by mode, then the epilogue ep if set; the last vector
// holds last_cols (1..4) valid columns. With PF it also prefetches the same rows of the
// next tile (bp + NR) for B read in place.
template <int R, int NV, bool PF>
void micro_kernel(int64_t kc, const float* __restrict ap, const float* __restrict bp, int64_t ldbp,
                  float* c, int64_t ldc, int last_cols, int mode, float beta,
                  const TileEpilogue* ep) {
  float32x4_t acc[R][NV];
#pragma GCC unroll 8
  for (int i = 0; i < R; ++i)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[i][v] = vdupq_n_f32(0.0f);
#pragma GCC unroll 2
  for (int64_t p = 0; p < kc; ++p) {
    float32x4_t b[NV], a[2];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) b[v] = vld1q_f32(bp + 4 * v);
    a[0] = vld1q_f32(ap);
    a[1] = R > 4 ? vld1q_f32(ap + 4) : a[0];
    if (PF) __builtin_prefetch(bp + kNR);
    fma_rows<NV>(acc, b, a, std::make_index_sequence<R>{});
    ap += kMR;
    bp += ldbp;
  }
  const float32x4_t vb = vdupq_n_f32(beta);
  if (ep) {
    // A copy, so that acc's address is never taken and it stays in registers above.
    float32x4_t vals[R * NV];
#pragma GCC unroll 8
    for (int i = 0; i < R; ++i)
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) vals[i * NV + v] = acc[i][v];
    store_tile_epilogue(vals, R, NV, last_cols, c, ldc, mode, vb, ep);
    return;
  }
#pragma GCC unroll 8
  for (int i = 0; i < R; ++i) {
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v)
      store_vec(c + i * ldc + 4 * v, acc[i][v], v == NV - 1 ? last_cols : 4, mode, vb, nullptr,
                i, nullptr);
  }
}

using MicroKernel = void (*)(int64_t, const float*, const float*, int64_t, float*, int64_t, int,
                             int, float, const TileEpilogue*);

// Table of micro-kernels indexed by [rows - 1][vectors - 1][prefetch].
template <int... Rs>
constexpr auto make_table(std::integer_sequence<int, Rs...>) {
  struct Table {
    MicroKernel k[sizeof...(Rs)][3][2];
  };
  return Table{{{{&micro_kernel<Rs + 1, 1, false>, &micro_kernel<Rs + 1, 1, true>},
                 {&micro_kernel<Rs + 1, 2, false>, &micro_kernel<Rs + 1, 2, true>},
                 {&micro_kernel<Rs + 1, 3, false>, &micro_kernel<Rs + 1, 3, true>}}...}};
}
constexpr auto kKernels = make_table(std::make_integer_sequence<int, kMR>{});

// Kernel policy plugged into the shared packed driver. KC matches the x86 kernels (same k
// blocks, hence the same sums); an 8 x 256 A panel (8 KiB) and a 256 x 12 B tile (12 KiB)
// share a 32 KiB L1; MC x KC of A (128 KiB) sits in L2.
struct NeonKern {
  static constexpr int64_t MR = kMR, NR = kNR, VL = 4, KC = 256, MC = 128, NC_BIG = 2048,
                           NC_SMALL = 516, NC_DIRECT = 1020;
  // Lanes always lie along N: with 4-lane vectors a transposed orientation would rarely
  // save a lane and would need a transposing store.
  static constexpr bool ALLOW_TRANSPOSED = false;
  static constexpr int64_t TC_DEEP_MAX_KB = 0;  // unused: no transposed tiles
  // Packs a block of A into micro-panels.
  static void pack_a(bool t, const float* s, int64_t ld, int64_t mc, int64_t np, int64_t kc,
                     float* d) {
    pack_a_neon(t, s, ld, mc, np, kc, d);
  }
  // Packs a block of B into micro-panels.
  static void pack_b(bool t, const float* s, int64_t ld, int64_t nc, int64_t kc, float* d) {
    pack_b_neon(t, s, ld, nc, kc, d);
  }
  // Runs the micro-kernel for a rows x cols tile (never transposed: ALLOW_TRANSPOSED is off),
  // then ep.
  static void kernel(int rows, int cols, int64_t kc, const float* ap, const float* bp, int64_t ldbp,
                     bool prefetch, bool /*tc*/, float* c, int64_t ldc, int mode, float beta,
                     const TileEpilogue* ep) {
    const int nv = (cols + 3) / 4;
    kKernels.k[rows - 1][nv - 1][prefetch ? 1 : 0](kc, ap, bp, ldbp, c, ldc, cols - 4 * (nv - 1),
                                                    mode, beta, ep);
  }
  // Unpacked B rows are read in place unless the row stride aliases in L1 (multiple of 4 KiB).
  static bool direct_b_ok(int64_t ldb) { return (ldb * 4) % 4096 != 0; }
};

}  // namespace

// Single-threaded NEON GEMM through the shared packed driver (one-row C included: with
// m <= MR and row-major B the driver reads B in place without packing it).
void gemm_neon(const GemmArgs& args) { gemm_packed<NeonKern>(args); }

const PrepackKernels* prepack_kernels_neon() {
  static const PrepackKernels kernels = gemm_pack::make_prepack_kernels<NeonKern>();
  return &kernels;
}

}  // namespace isplit
