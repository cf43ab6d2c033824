// AVX2 packed GEMM: 6x16 register-blocked FMA micro-kernel (12 ymm accumulators),
// 8x8 in-register transposes for the packing of transposed operands, masked N tails.
#include <immintrin.h>

#include <utility>

#include "engine/gemm.h"
#include "engine/kernels/gemm_pack.h"
#include "engine/kernels/gemm_prepack.h"

namespace isplit {

namespace {

using namespace gemm_pack;

constexpr int kMR = 6;
constexpr int kNR = 16;

// Lane mask (all bits set in the low n of 8 lanes) for maskload (B tails of the GEMV).
inline __m256i lane_mask8(int n) {
  alignas(32) static const int kBits[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};
  n = n < 0 ? 0 : (n > 8 ? 8 : n);
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(kBits + 8 - n));
}

// Transposes the 8x8 block held in r[0..7] (row i -> column i) in place.
inline void transpose8(__m256 r[8]) {
  __m256 t[8], s[8];
  for (int i = 0; i < 4; ++i) {
    t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  for (int h = 0; h < 2; ++h) {
    s[4 * h + 0] = _mm256_shuffle_ps(t[4 * h], t[4 * h + 2], 0x44);
    s[4 * h + 1] = _mm256_shuffle_ps(t[4 * h], t[4 * h + 2], 0xEE);
    s[4 * h + 2] = _mm256_shuffle_ps(t[4 * h + 1], t[4 * h + 3], 0x44);
    s[4 * h + 3] = _mm256_shuffle_ps(t[4 * h + 1], t[4 * h + 3], 0xEE);
  }
  for (int c = 0; c < 4; ++c) {
    r[c] = _mm256_permute2f128_ps(s[c], s[4 + c], 0x20);
    r[4 + c] = _mm256_permute2f128_ps(s[c], s[4 + c], 0x31);
  }
}

// Packs op(A) rows [0, mc) x kc into np balanced MR-row panels: panel r at dst + r*MR*kc.
// May write up to 2 floats past a panel (overwritten by the next panel, or buffer slack).
void pack_a_avx2(bool trans, const float* src, int64_t ld, int64_t mc, int64_t np, int64_t kc,
                 float* dst) {
  if (trans) {
    // op(A)[i][p] = src[p * ld + i]: walk k outermost so every source row is read contiguously.
    for (int64_t p = 0; p < kc; ++p) {
      const float* s = src + p * ld;
      for (int64_t r = 0; r < np; ++r) {
        const int64_t r0 = part_begin(mc, np, r), r1 = part_begin(mc, np, r + 1);
        float* d = dst + r * kMR * kc + p * kMR;
        for (int64_t i = r0; i < r1; ++i) d[i - r0] = s[i];
      }
    }
    return;
  }
  // op(A)[i][p] = src[i * ld + p]: transpose 8 k steps of a panel's rows at a time.
  for (int64_t r = 0; r < np; ++r) {
    const int64_t r0 = part_begin(mc, np, r), r1 = part_begin(mc, np, r + 1);
    const int rows = static_cast<int>(r1 - r0);
    const float* s = src + r0 * ld;
    float* d = dst + r * kMR * kc;
    int64_t p0 = 0;
    for (; p0 + 8 <= kc; p0 += 8) {
      __m256 v[8];
      for (int i = 0; i < 8; ++i)
        v[i] = i < rows ? _mm256_loadu_ps(s + i * ld + p0) : _mm256_setzero_ps();
      transpose8(v);
      // Each 8-wide store spills 2 lanes into the next k step, which the next store rewrites.
      for (int q = 0; q < 8; ++q) _mm256_storeu_ps(d + (p0 + q) * kMR, v[q]);
    }
    for (; p0 < kc; ++p0)
      for (int i = 0; i < kMR; ++i) d[p0 * kMR + i] = i < rows ? s[i * ld + p0] : 0.0f;
  }
}

// Packs op(B) kc x nc into NR-wide tiles (tile t at dst + t*NR*kc), zero padding the last.
void pack_b_avx2(bool trans, const float* src, int64_t ld, int64_t nc, int64_t kc, float* dst) {
  const int64_t full = nc / kNR;
  const int tail = static_cast<int>(nc - full * kNR);
  if (!trans) {
    // op(B)[p][j] = src[p * ld + j]: walk k outermost so every source row streams contiguously.
    for (int64_t p = 0; p < kc; ++p) {
      const float* s = src + p * ld;
      float* d = dst + p * kNR;
      for (int64_t t = 0; t < full; ++t) {
        _mm256_store_ps(d + t * kNR * kc, _mm256_loadu_ps(s + t * kNR));
        _mm256_store_ps(d + t * kNR * kc + 8, _mm256_loadu_ps(s + t * kNR + 8));
      }
      if (tail > 0) {
        float* dt = d + full * kNR * kc;
        for (int j = 0; j < kNR; ++j) dt[j] = j < tail ? s[full * kNR + j] : 0.0f;
      }
    }
    return;
  }
  // op(B)[p][j] = src[j * ld + p]: transpose 8 columns x 8 k steps at a time.
  const int64_t ntiles = full + (tail > 0 ? 1 : 0);
  for (int64_t t = 0; t < ntiles; ++t) {
    const int cols = static_cast<int>(std::min<int64_t>(kNR, nc - t * kNR));
    float* d = dst + t * kNR * kc;
    for (int j0 = 0; j0 < kNR; j0 += 8) {
      const int nj = std::max(0, std::min(8, cols - j0));
      const float* s = src + (t * kNR + j0) * ld;
      int64_t p0 = 0;
      for (; p0 + 8 <= kc; p0 += 8) {
        __m256 v[8];
        for (int j = 0; j < 8; ++j) {
          // Fetch the same k steps of the next 8 source rows (packed right after these).
          _mm_prefetch(reinterpret_cast<const char*>(s + (8 + j) * ld + p0), _MM_HINT_T0);
          v[j] = j < nj ? _mm256_loadu_ps(s + j * ld + p0) : _mm256_setzero_ps();
        }
        transpose8(v);
        for (int q = 0; q < 8; ++q) _mm256_store_ps(d + (p0 + q) * kNR + j0, v[q]);
      }
      for (; p0 < kc; ++p0)
        for (int j = 0; j < 8; ++j) d[p0 * kNR + j0 + j] = j < nj ? s[j * ld + p0] : 0.0f;
    }
  }
}

// Partial C vectors (tile tails, the few columns of a transposed tile) are read and written
// with plain narrow moves: AMD's masked stores are slow, and a 4-lane transposed tile (N = 4,
// ResNet-50's layer4 at 64x64) ran 10-13 % faster with 128-bit stores in place of them.

// The first n (1..4) floats at p in the low lanes, zeros above: plain narrow loads.
template <int N>
inline __m128 load_first4(const float* p) {
  if constexpr (N == 4) return _mm_loadu_ps(p);
  if constexpr (N == 1) return _mm_load_ss(p);
  const __m128 lo = _mm_castpd_ps(_mm_load_sd(reinterpret_cast<const double*>(p)));
  if constexpr (N == 2) return lo;
  return _mm_movelh_ps(lo, _mm_load_ss(p + 2));
}
// Stores the low n (1..4) lanes of v at p with plain narrow stores.
template <int N>
inline void store_first4(float* p, __m128 v) {
  if constexpr (N == 4) {
    _mm_storeu_ps(p, v);
  } else if constexpr (N == 1) {
    _mm_store_ss(p, v);
  } else {
    _mm_store_sd(reinterpret_cast<double*>(p), _mm_castps_pd(v));
    if constexpr (N == 3) _mm_store_ss(p + 2, _mm_movehl_ps(v, v));
  }
}
// The first L (1..8) floats at p, zeros in the other lanes, without a masked load.
template <int L>
inline __m256 load_first(const float* p) {
  if constexpr (L == 8) return _mm256_loadu_ps(p);
  if constexpr (L <= 4) return _mm256_zextps128_ps256(load_first4<L>(p));
  if constexpr (L > 4) return _mm256_set_m128(load_first4<L - 4>(p + 4), _mm_loadu_ps(p));
}
// Stores the first L (1..8) lanes of v at p without a masked store (slow on AMD).
template <int L>
inline void store_first(float* p, __m256 v) {
  if constexpr (L == 8) {
    _mm256_storeu_ps(p, v);
  } else if constexpr (L <= 4) {
    store_first4<L>(p, _mm256_castps256_ps128(v));
  } else {
    _mm_storeu_ps(p, _mm256_castps256_ps128(v));
    store_first4<L - 4>(p + 4, _mm256_extractf128_ps(v, 1));
  }
}

// One C vector's value: acc combined with the old C at dst by mode (the first L lanes
// only), then, with ep, the tile epilogue for C row `row` (res: its residual lanes).
template <int L>
inline __m256 result_vec(const float* dst, __m256 acc, int mode, __m256 beta,
                         const TileEpilogue* ep, int64_t row, const float* res) {
  auto load = [&](const float* p) { return load_first<L>(p); };
  __m256 v = acc;
  if (mode == kStoreBeta) {
    v = _mm256_fmadd_ps(load(dst), beta, acc);
  } else if (mode == kStoreAccumulate) {
    v = _mm256_add_ps(load(dst), acc);
  }
  if (ep) {
    if (ep->bias) v = _mm256_add_ps(v, _mm256_set1_ps(ep->bias[row]));
    if (ep->residual) v = _mm256_add_ps(v, load(res));
    if (ep->relu) v = _mm256_max_ps(v, _mm256_setzero_ps());  // v > 0 ? v : +0, NaN -> 0
  }
  return v;
}

// Combines one accumulator vector with C at dst according to mode (its first L lanes; all
// 8 by default), then applies the tile epilogue ep (if any) for C row `row` with residual
// lanes at res, and stores those lanes.
template <int L = 8>
inline void store_vec(float* dst, __m256 acc, int mode, __m256 beta,
                      const TileEpilogue* ep = nullptr, int64_t row = 0,
                      const float* res = nullptr) {
  store_first<L>(dst, result_vec<L>(dst, acc, mode, beta, ep, row, res));
}

// store_vec for the first n (1..8) lanes.
inline void store_vec_first(int n, float* dst, __m256 acc, int mode, __m256 beta,
                            const TileEpilogue* ep = nullptr, int64_t row = 0,
                            const float* res = nullptr) {
  switch (n) {
    case 1: return store_vec<1>(dst, acc, mode, beta, ep, row, res);
    case 2: return store_vec<2>(dst, acc, mode, beta, ep, row, res);
    case 3: return store_vec<3>(dst, acc, mode, beta, ep, row, res);
    case 4: return store_vec<4>(dst, acc, mode, beta, ep, row, res);
    case 5: return store_vec<5>(dst, acc, mode, beta, ep, row, res);
    case 6: return store_vec<6>(dst, acc, mode, beta, ep, row, res);
    case 7: return store_vec<7>(dst, acc, mode, beta, ep, row, res);
    default: return store_vec<8>(dst, acc, mode, beta, ep, row, res);
  }
}

// How far ahead, in k steps, a micro-kernel prefetches the operand that holds the weights
// (about 2 KB). A prepacked layer's weights are read once per pass when the input has few
// columns (ResNet-50's layer3 and layer4 at 64x64, fc-like shapes): they come from memory,
// and the hardware prefetcher alone left each core with too few misses in flight. With
// the prefetch those GEMMs ran 9-15 % faster in isolation; where the weights are in cache
// (large inputs) it costs one instruction per k step and measured the same.
constexpr int64_t kAheadPanels = 96;  // A panels: 6 floats per k step
constexpr int64_t kAheadTiles = 32;   // lanes along M (TC): 16 floats per k step

// R x (8*NV) micro-kernel: acc = sum_p ap[p*MR + i] * bp[p*ldbp + j], combined with C by
// mode, then the epilogue ep if set; the last vector holds last_cols (1..8) valid columns.
// With PF it also prefetches the same rows of the next tile (bp + NR) for B read in place.
// With TC the tile is written transposed (element (i, j) at c[j * ldc + i]) after an 8x8
// in-register transpose; the weights are then in bp, else in ap, and the kernel prefetches
// them ahead (kAheadTiles, kAheadPanels).
//
// A TC call given `next` (the weights a later call reads first) prefetches next_bytes of
// them instead, spread evenly over its k steps, so that a tile's weights arrive while the
// panels of the tile before are computed rather than all during its first panel.
template <int R, int NV, bool PF, bool TC>
void micro_kernel(int64_t kc, const float* __restrict ap, const float* __restrict bp, int64_t ldbp,
                  float* c, int64_t ldc, int last_cols, int mode, float beta,
                  const TileEpilogue* ep, const char* next, int64_t next_bytes) {
  // Offsets into next in 1/256 bytes: one prefetch per k step.
  const int64_t step = TC && next ? (next_bytes << 8) / kc : 0;
  int64_t next_at = 0;
  const float* res = ep ? ep->residual : nullptr;  // the residual, laid out like C
  auto res_at = [res](int64_t at) { return res ? res + at : nullptr; };
  // Loops over i and v are unrolled explicitly: GCC -O3 otherwise peels them before
  // scalarising acc and spills the accumulators to the stack on every k step.
  __m256 acc[R][NV];
#pragma GCC unroll 16
  for (int i = 0; i < R; ++i)
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) acc[i][v] = _mm256_setzero_ps();
#pragma GCC unroll 4
  for (int64_t p = 0; p < kc; ++p) {
    __m256 b[NV];
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) b[v] = _mm256_loadu_ps(bp + 8 * v);
    if (PF) _mm_prefetch(reinterpret_cast<const char*>(bp + kNR), _MM_HINT_T0);
    if (TC && next) {
      _mm_prefetch(next + (next_at >> 8), _MM_HINT_T0);
      next_at += step;
    } else if (TC)
      _mm_prefetch(reinterpret_cast<const char*>(bp + kAheadTiles * ldbp), _MM_HINT_T0);
    else
      _mm_prefetch(reinterpret_cast<const char*>(ap + kAheadPanels * kMR), _MM_HINT_T0);
#pragma GCC unroll 16
    for (int i = 0; i < R; ++i) {
      const __m256 a = _mm256_broadcast_ss(ap + i);
#pragma GCC unroll 16
      for (int v = 0; v < NV; ++v) acc[i][v] = _mm256_fmadd_ps(a, b[v], acc[i][v]);
    }
    ap += kMR;
    bp += ldbp;
  }
  const __m256 vb = _mm256_set1_ps(beta);
  if (TC) {
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) {
      __m256 t[8];
#pragma GCC unroll 16
      for (int i = 0; i < 8; ++i) t[i] = i < R ? acc[i < R ? i : 0][v] : _mm256_setzero_ps();
      transpose8(t);
      const int ncols = v == NV - 1 ? last_cols : 8;
      for (int q = 0; q < ncols; ++q) {
        const int64_t at = (8 * v + q) * ldc;  // C row 8v + q of the tile
        store_vec<R>(c + at, t[q], mode, vb, ep, 8 * v + q, res_at(at));
      }
    }
    return;
  }
  if (last_cols == 8) {
#pragma GCC unroll 16
    for (int i = 0; i < R; ++i)
#pragma GCC unroll 16
      for (int v = 0; v < NV; ++v)
        store_vec(c + i * ldc + 8 * v, acc[i][v], mode, vb, ep, i, res_at(i * ldc + 8 * v));
    return;
  }
#pragma GCC unroll 16
  for (int i = 0; i < R; ++i) {
#pragma GCC unroll 16
    for (int v = 0; v < NV - 1; ++v)
      store_vec(c + i * ldc + 8 * v, acc[i][v], mode, vb, ep, i, res_at(i * ldc + 8 * v));
    const int64_t at = i * ldc + 8 * (NV - 1);
    store_vec_first(last_cols, c + at, acc[i][NV - 1], mode, vb, ep, i, res_at(at));
  }
}

using MicroKernel = void (*)(int64_t, const float*, const float*, int64_t, float*, int64_t, int,
                             int, float, const TileEpilogue*, const char*, int64_t);

// R x 16 tile of gemm_prepacked_single_rows over one k block (the whole K), every column
// inside B's rows: row p of B is the 16 floats at b + off[p], read where they are instead
// of copied into a tile first (that copy was a tenth of ResNet-50's stem). The FMAs of
// micro_kernel<R, 2> in its order, C overwritten, then the epilogue: the same bits.
template <int R>
void rows_kernel(int64_t kc, const float* __restrict ap, const float* __restrict b,
                 const int64_t* __restrict off, float* c, int64_t ldc, const TileEpilogue* ep) {
  const float* res = ep ? ep->residual : nullptr;
  __m256 acc[R][2];
#pragma GCC unroll 16
  for (int i = 0; i < R; ++i) acc[i][0] = acc[i][1] = _mm256_setzero_ps();
#pragma GCC unroll 4
  for (int64_t p = 0; p < kc; ++p) {
    const float* bp = b + off[p];
    const __m256 b0 = _mm256_loadu_ps(bp), b1 = _mm256_loadu_ps(bp + 8);
#pragma GCC unroll 16
    for (int i = 0; i < R; ++i) {
      const __m256 a = _mm256_broadcast_ss(ap + i);
      acc[i][0] = _mm256_fmadd_ps(a, b0, acc[i][0]);
      acc[i][1] = _mm256_fmadd_ps(a, b1, acc[i][1]);
    }
    ap += kMR;
  }
  const __m256 vb = _mm256_setzero_ps();
#pragma GCC unroll 16
  for (int i = 0; i < R; ++i)
#pragma GCC unroll 2
    for (int v = 0; v < 2; ++v)
      store_vec(c + i * ldc + 8 * v, acc[i][v], kStoreOverwrite, vb, ep, i,
                res ? res + i * ldc + 8 * v : nullptr);
}

using RowsKernel = void (*)(int64_t, const float*, const float*, const int64_t*, float*, int64_t,
                            const TileEpilogue*);
template <int... Rs>
constexpr auto make_rows_table(std::integer_sequence<int, Rs...>) {
  struct Table {
    RowsKernel k[sizeof...(Rs)];
  };
  return Table{{&rows_kernel<Rs + 1>...}};
}
constexpr auto kRowsKernels = make_rows_table(std::make_integer_sequence<int, kMR>{});

// Table of micro-kernels indexed by [rows - 1][vectors - 1][prefetch][transposed C].
template <int... Rs>
constexpr auto make_table(std::integer_sequence<int, Rs...>) {
  struct Table {
    MicroKernel k[sizeof...(Rs)][2][2][2];
  };
  return Table{
      {{{{&micro_kernel<Rs + 1, 1, false, false>, &micro_kernel<Rs + 1, 1, false, true>},
         {&micro_kernel<Rs + 1, 1, true, false>, &micro_kernel<Rs + 1, 1, true, true>}},
        {{&micro_kernel<Rs + 1, 2, false, false>, &micro_kernel<Rs + 1, 2, false, true>},
         {&micro_kernel<Rs + 1, 2, true, false>, &micro_kernel<Rs + 1, 2, true, true>}}}...}};
}
constexpr auto kKernels = make_table(std::make_integer_sequence<int, kMR>{});

// Kernel policy plugged into the shared packed driver.
struct Avx2Kern {
  static constexpr int64_t MR = kMR, NR = kNR, VL = 8, KC = 256, MC = 120, NC_BIG = 2048,
                           NC_SMALL = 512, NC_DIRECT = 1024;
  static constexpr bool ALLOW_TRANSPOSED = true;
  static constexpr int64_t TC_DEEP_MAX_KB = 2;  // masked transposing stores are slow on AMD: deep GEMMs keep lanes along N
  // Packs a block of A into micro-panels.
  static void pack_a(bool t, const float* s, int64_t ld, int64_t mc, int64_t np, int64_t kc,
                     float* d) {
    pack_a_avx2(t, s, ld, mc, np, kc, d);
  }
  // Packs a block of B into micro-panels.
  static void pack_b(bool t, const float* s, int64_t ld, int64_t nc, int64_t kc, float* d) {
    pack_b_avx2(t, s, ld, nc, kc, d);
  }
  // Runs the micro-kernel for a rows x cols tile (stored transposed when tc), then ep.
  static void kernel(int rows, int cols, int64_t kc, const float* ap, const float* bp, int64_t ldbp,
                     bool prefetch, bool tc, float* c, int64_t ldc, int mode, float beta,
                     const TileEpilogue* ep) {
    const int nv = cols > 8 ? 2 : 1;
    kKernels.k[rows - 1][nv - 1][prefetch ? 1 : 0][tc ? 1 : 0](
        kc, ap, bp, ldbp, c, ldc, cols - 8 * (nv - 1), mode, beta, ep, nullptr, 0);
  }
  // kernel() with tc, prefetching next_bytes from next over its k steps instead of its own
  // weights ahead (see micro_kernel).
  static void tc_kernel(int rows, int cols, int64_t kc, const float* ap, const float* bp,
                        float* c, int64_t ldc, int mode, float beta, const TileEpilogue* ep,
                        const char* next, int64_t next_bytes) {
    const int nv = cols > 8 ? 2 : 1;
    kKernels.k[rows - 1][nv - 1][0][1](kc, ap, bp, kNR, c, ldc, cols - 8 * (nv - 1), mode, beta,
                                       ep, next, next_bytes);
  }
  // Unpacked B rows are read in place unless the row stride aliases in L1 (multiple of 4 KiB).
  static bool direct_b_ok(int64_t ldb) { return (ldb * 4) % 4096 != 0; }
  // rows_kernel<rows> for a whole NR-column tile whose B rows are at b + off[p].
  static void rows_kernel(int rows, int64_t kc, const float* ap, const float* b, const int64_t* off,
                          float* c, int64_t ldc, const TileEpilogue* ep) {
    kRowsKernels.k[rows - 1](kc, ap, b, off, c, ldc, ep);
  }
};

// Address of op(A)[0][p] for a single-row op(A) is a + p * a_stride.
inline int64_t row_a_stride(const GemmArgs& g) { return g.trans_a ? g.lda : 1; }

// Single-row GEMM with op(B) = B^T (m == 1, trans_b: C[j] = sum_p a[p] * B[j][p], the
// batch-1 Linear layer). Bandwidth bound: B is streamed once, kGroups x 8 rows at a time
// along k, transposed in registers right before the FMAs; while one k block is consumed the
// next one is prefetched row by row. Same k blocks, FMA order and store rule as the packed
// kernels, so results are identical to theirs.
void gemv_trans_b(const GemmArgs& g) {
  const int64_t n = g.n, k = g.k, nkb = k_block_count(k, Avx2Kern::KC);
  const int64_t as = row_a_stride(g);
  const __m256 vb = _mm256_set1_ps(g.beta);
  // Groups of 8 rows streamed together. One group (8 row streams) moved 24-30 GB/s on a
  // Zen 3 with two threads, two groups (16 streams) 16-17 GB/s: more concurrent streams
  // defeat the prefetchers.
  constexpr int kGroups = 1;
  alignas(32) float tile[8][8];
  for (int64_t j0 = 0; j0 < n; j0 += 8 * kGroups) {
    for (int64_t kb = 0; kb < nkb; ++kb) {
      const int64_t p0 = part_begin(k, nkb, kb), p1 = part_begin(k, nkb, kb + 1);
      const int64_t pf_row0 = kb + 1 < nkb ? j0 : j0 + 8 * kGroups;
      const int64_t pf_p0 = kb + 1 < nkb ? p1 : 0;
      const int mode = kb > 0 ? kStoreAccumulate : (g.beta == 0.0f ? kStoreOverwrite : kStoreBeta);
      __m256 acc[kGroups];
      for (int gi = 0; gi < kGroups; ++gi) acc[gi] = _mm256_setzero_ps();
      for (int64_t pc = p0; pc < p1; pc += 8) {
        const int nq = static_cast<int>(std::min<int64_t>(8, p1 - pc));
        const int64_t chunk = (pc - p0) / 8;
        for (int gi = 0; gi < kGroups; ++gi) {
          const int64_t jg = j0 + 8 * gi;
          const int nj = static_cast<int>(std::max<int64_t>(0, std::min<int64_t>(8, n - jg)));
          if (nj == 0) break;
          const float* src = g.b + jg * g.ldb + pc;
          // A quarter (4 lines) of row `chunk / 4` of the prefetch target per chunk: the 8
          // rows x 16 lines of the next block are requested row by row over its 32 chunks.
          const int64_t pf_row = pf_row0 + 8 * gi + chunk / 4;
          if (chunk < 32 && pf_row < n)
            for (int l = 0; l < 4; ++l)
              _mm_prefetch(reinterpret_cast<const char*>(g.b + pf_row * g.ldb + pf_p0 +
                                                         64 * (chunk % 4) + 16 * l),
                           _MM_HINT_T0);
          __m256 v[8];
          if (nq == 8) {
            for (int j = 0; j < 8; ++j)
              v[j] = j < nj ? _mm256_loadu_ps(src + j * g.ldb) : _mm256_setzero_ps();
          } else {
            for (int j = 0; j < 8; ++j)
              for (int q = 0; q < 8; ++q) tile[j][q] = j < nj && q < nq ? src[j * g.ldb + q] : 0.0f;
            for (int j = 0; j < 8; ++j) v[j] = _mm256_load_ps(tile[j]);
          }
          transpose8(v);
          for (int q = 0; q < nq; ++q)
            acc[gi] = _mm256_fmadd_ps(_mm256_broadcast_ss(g.a + (pc + q) * as), v[q], acc[gi]);
        }
      }
      for (int gi = 0; gi < kGroups; ++gi) {
        const int64_t jg = j0 + 8 * gi;
        if (jg >= n) break;
        const int cols = static_cast<int>(std::min<int64_t>(8, n - jg));
        if (cols == 8) {
          store_vec(g.c + jg, acc[gi], mode, vb);
        } else {
          store_vec_first(cols, g.c + jg, acc[gi], mode, vb);
        }
      }
    }
  }
}

// Columns [j0, j0 + 8*NV) of a single-row GEMM with row-major op(B) (m == 1, !trans_b):
// NV accumulators, B rows read in place; the last vector holds last_cols valid columns.
template <int NV>
void gemv_block(const GemmArgs& g, int64_t j0, int last_cols) {
  const int64_t k = g.k, nkb = k_block_count(k, Avx2Kern::KC), as = row_a_stride(g);
  const __m256 vb = _mm256_set1_ps(g.beta);
  const __m256i last = lane_mask8(last_cols);
  for (int64_t kb = 0; kb < nkb; ++kb) {
    const int64_t p0 = part_begin(k, nkb, kb), p1 = part_begin(k, nkb, kb + 1);
    const int mode = kb > 0 ? kStoreAccumulate : (g.beta == 0.0f ? kStoreOverwrite : kStoreBeta);
    __m256 acc[NV];
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) acc[v] = _mm256_setzero_ps();
    for (int64_t p = p0; p < p1; ++p) {
      const float* row = g.b + p * g.ldb + j0;
      const __m256 a = _mm256_broadcast_ss(g.a + p * as);
#pragma GCC unroll 16
      for (int v = 0; v < NV; ++v) {
        if (v % 2 == 0)
          _mm_prefetch(reinterpret_cast<const char*>(row + 8 * g.ldb + 8 * v), _MM_HINT_T0);
        const __m256 b = v == NV - 1 && last_cols < 8 ? _mm256_maskload_ps(row + 8 * v, last)
                                                      : _mm256_loadu_ps(row + 8 * v);
        acc[v] = _mm256_fmadd_ps(a, b, acc[v]);
      }
    }
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) {
      if (v == NV - 1 && last_cols < 8) {
        store_vec_first(last_cols, g.c + j0 + 8 * v, acc[v], mode, vb);
      } else {
        store_vec(g.c + j0 + 8 * v, acc[v], mode, vb);
      }
    }
  }
}

// Single-row GEMM with row-major op(B) (m == 1, !trans_b): 96-column blocks (12
// accumulators), each B row segment read once; same k blocks, FMA order and store rule as
// the packed kernels.
void gemv_no_trans(const GemmArgs& g) {
  constexpr int64_t kWidth = 96;
  int64_t j0 = 0;
  for (; j0 + kWidth <= g.n; j0 += kWidth) gemv_block<12>(g, j0, 8);
  if (j0 == g.n) return;
  const int64_t rest = g.n - j0;
  const int nv = static_cast<int>((rest + 7) / 8);
  const int last_cols = static_cast<int>(rest - 8 * (nv - 1));
  using Block = void (*)(const GemmArgs&, int64_t, int);
  static constexpr Block kBlocks[12] = {
      gemv_block<1>, gemv_block<2>, gemv_block<3>, gemv_block<4>,  gemv_block<5>,  gemv_block<6>,
      gemv_block<7>, gemv_block<8>, gemv_block<9>, gemv_block<10>, gemv_block<11>, gemv_block<12>};
  kBlocks[nv - 1](g, j0, last_cols);
}

}  // namespace

// Single-threaded AVX2 GEMM: GEMV loops for one-row C, the packed driver otherwise.
void gemm_avx2(const GemmArgs& args) {
  if (args.m == 1 && args.k > 0) {
    // Batch-1 GEMV shapes are bandwidth bound: skip packing and stream B once.
    if (args.trans_b) {
      gemv_trans_b(args);
    } else {
      gemv_no_trans(args);
    }
    return;
  }
  gemm_packed<Avx2Kern>(args);
}

const PrepackKernels* prepack_kernels_avx2() {
  static const PrepackKernels kernels = gemm_pack::make_prepack_kernels<Avx2Kern>();
  return &kernels;
}

}  // namespace isplit
