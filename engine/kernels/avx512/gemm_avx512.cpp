// AVX-512 packed GEMM: 12x32 register-blocked FMA micro-kernel (24 zmm accumulators),
// 16x16 in-register transposes for the packing of transposed operands, masked N tails.
// GCC 12 reports false (maybe-)uninitialized warnings inside its AVX-512 shuffle intrinsics.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop

#include <utility>

#include "engine/gemm.h"
#include "engine/kernels/gemm_pack.h"
#include "engine/kernels/gemm_prepack.h"

namespace isplit {

namespace {

using namespace gemm_pack;

constexpr int kMR = 12;
constexpr int kNR = 32;

// Mask with the low n (0..16) lanes set.
inline __mmask16 lane_mask(int n) {
  return n >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << n) - 1u);
}

// Transposes the 16x16 block held in r[0..15] (row i -> column i) in place.
inline void transpose16(__m512 r[16]) {
  __m512 t[16], u[16];
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 4; ++i) {
    const __m512d a = _mm512_castps_pd(t[4 * i]), b = _mm512_castps_pd(t[4 * i + 2]);
    const __m512d c = _mm512_castps_pd(t[4 * i + 1]), d = _mm512_castps_pd(t[4 * i + 3]);
    u[4 * i + 0] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, b));
    u[4 * i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, b));
    u[4 * i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(c, d));
    u[4 * i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(c, d));
  }
  for (int c = 0; c < 4; ++c) {
    const __m512 v0 = _mm512_shuffle_f32x4(u[c], u[4 + c], 0x44);
    const __m512 v1 = _mm512_shuffle_f32x4(u[c], u[4 + c], 0xEE);
    const __m512 v2 = _mm512_shuffle_f32x4(u[8 + c], u[12 + c], 0x44);
    const __m512 v3 = _mm512_shuffle_f32x4(u[8 + c], u[12 + c], 0xEE);
    r[c] = _mm512_shuffle_f32x4(v0, v2, 0x88);
    r[4 + c] = _mm512_shuffle_f32x4(v0, v2, 0xDD);
    r[8 + c] = _mm512_shuffle_f32x4(v1, v3, 0x88);
    r[12 + c] = _mm512_shuffle_f32x4(v1, v3, 0xDD);
  }
}

// How many source rows ahead the row-wise packing loops prefetch.
constexpr int64_t kPrefetchRows = 4;

// Prefetches the n floats starting at p (one touch per cache line).
inline void prefetch_row(const float* p, int64_t n) {
  for (int64_t i = 0; i < n; i += 16)
    _mm_prefetch(reinterpret_cast<const char*>(p + i), _MM_HINT_T0);
  _mm_prefetch(reinterpret_cast<const char*>(p + n - 1), _MM_HINT_T0);
}

// Packs op(A) rows [0, mc) x kc into np balanced MR-row panels: panel r at dst + r*MR*kc.
void pack_a_avx512(bool trans, const float* src, int64_t ld, int64_t mc, int64_t np, int64_t kc,
                   float* dst) {
  if (trans) {
    // op(A)[i][p] = src[p * ld + i]: walk k outermost so every source row is read contiguously.
    for (int64_t p = 0; p < kc; ++p) {
      const float* s = src + p * ld;
      prefetch_row(s + kPrefetchRows * ld, mc);
      for (int64_t r = 0; r < np; ++r) {
        const int64_t r0 = part_begin(mc, np, r), r1 = part_begin(mc, np, r + 1);
        const __mmask16 m = lane_mask(static_cast<int>(r1 - r0));
        _mm512_mask_storeu_ps(dst + r * kMR * kc + p * kMR, m, _mm512_maskz_loadu_ps(m, s + r0));
      }
    }
    return;
  }
  // op(A)[i][p] = src[i * ld + p]: transpose 16 k steps of a panel's rows at a time.
  const __mmask16 store_mask = lane_mask(kMR);
  for (int64_t r = 0; r < np; ++r) {
    const int64_t r0 = part_begin(mc, np, r), r1 = part_begin(mc, np, r + 1);
    const int rows = static_cast<int>(r1 - r0);
    const float* s = src + r0 * ld;
    float* d = dst + r * kMR * kc;
    for (int64_t p0 = 0; p0 < kc; p0 += 16) {
      const int nq = static_cast<int>(std::min<int64_t>(16, kc - p0));
      const __mmask16 lm = lane_mask(nq);
      __m512 v[16];
      for (int i = 0; i < rows; ++i)
        _mm_prefetch(reinterpret_cast<const char*>(s + i * ld + p0 + 128), _MM_HINT_T0);
      for (int i = 0; i < 16; ++i)
        v[i] = i < rows ? _mm512_maskz_loadu_ps(lm, s + i * ld + p0) : _mm512_setzero_ps();
      transpose16(v);
      for (int q = 0; q < nq; ++q) _mm512_mask_storeu_ps(d + (p0 + q) * kMR, store_mask, v[q]);
    }
  }
}

// Packs op(B) kc x nc into NR-wide tiles (tile t at dst + t*NR*kc), zero padding the last.
void pack_b_avx512(bool trans, const float* src, int64_t ld, int64_t nc, int64_t kc, float* dst) {
  const int64_t ntiles = (nc + kNR - 1) / kNR;
  if (!trans) {
    // op(B)[p][j] = src[p * ld + j]: walk k outermost so every source row streams contiguously.
    const int64_t full = nc / kNR;
    const int tail = static_cast<int>(nc - full * kNR);
    const __mmask16 m0 = lane_mask(tail), m1 = lane_mask(tail > 16 ? tail - 16 : 0);
    for (int64_t p = 0; p < kc; ++p) {
      const float* s = src + p * ld;
      prefetch_row(s + kPrefetchRows * ld, nc);
      float* d = dst + p * kNR;
      for (int64_t t = 0; t < full; ++t) {
        _mm512_store_ps(d + t * kNR * kc, _mm512_loadu_ps(s + t * kNR));
        _mm512_store_ps(d + t * kNR * kc + 16, _mm512_loadu_ps(s + t * kNR + 16));
      }
      if (tail > 0) {
        _mm512_store_ps(d + full * kNR * kc, _mm512_maskz_loadu_ps(m0, s + full * kNR));
        _mm512_store_ps(d + full * kNR * kc + 16, _mm512_maskz_loadu_ps(m1, s + full * kNR + 16));
      }
    }
    return;
  }
  // op(B)[p][j] = src[j * ld + p]: transpose 16 columns x 16 k steps at a time.
  for (int64_t t = 0; t < ntiles; ++t) {
    const int cols = static_cast<int>(std::min<int64_t>(kNR, nc - t * kNR));
    float* d = dst + t * kNR * kc;
    for (int j0 = 0; j0 < kNR; j0 += 16) {
      const int nj = std::max(0, std::min(16, cols - j0));
      const float* s = src + (t * kNR + j0) * ld;
      for (int64_t p0 = 0; p0 < kc; p0 += 16) {
        const int nq = static_cast<int>(std::min<int64_t>(16, kc - p0));
        if (nj == 0) {
          for (int q = 0; q < nq; ++q)
            _mm512_store_ps(d + (p0 + q) * kNR + j0, _mm512_setzero_ps());
          continue;
        }
        const __mmask16 lm = lane_mask(nq);
        __m512 v[16];
        for (int j = 0; j < 16; ++j) {
          // Fetch ahead within these rows and the same k steps of the next 16 source rows
          // (packed right after these): rows are short strided streams.
          _mm_prefetch(reinterpret_cast<const char*>(s + j * ld + p0 + 128), _MM_HINT_T0);
          _mm_prefetch(reinterpret_cast<const char*>(s + (16 + j) * ld + p0), _MM_HINT_T0);
          v[j] = j < nj ? _mm512_maskz_loadu_ps(lm, s + j * ld + p0) : _mm512_setzero_ps();
        }
        transpose16(v);
        for (int q = 0; q < nq; ++q) _mm512_store_ps(d + (p0 + q) * kNR + j0, v[q]);
      }
    }
  }
}

// Combines one accumulator vector with C at dst (lanes in mask) according to mode, then
// applies the tile epilogue ep (if any) for C row `row` with residual lanes at res.
inline void store_vec(float* dst, __m512 acc, __mmask16 mask, int mode, __m512 beta,
                      const TileEpilogue* ep = nullptr, int64_t row = 0,
                      const float* res = nullptr) {
  __m512 v = acc;
  if (mode == kStoreBeta) {
    v = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(mask, dst), beta, acc);
  } else if (mode == kStoreAccumulate) {
    v = _mm512_add_ps(_mm512_maskz_loadu_ps(mask, dst), acc);
  }
  if (ep) {
    if (ep->bias) v = _mm512_add_ps(v, _mm512_set1_ps(ep->bias[row]));
    if (ep->residual) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mask, res));
    if (ep->relu) v = _mm512_max_ps(v, _mm512_setzero_ps());  // v > 0 ? v : +0, NaN -> 0
  }
  _mm512_mask_storeu_ps(dst, mask, v);
}

// How far ahead, in k steps, a micro-kernel prefetches the operand that holds the weights.
// On a Zen 5 EPYC (docs/benchmarks.md) 4 KB for both, twice the AVX2 kernels' 2 KB, made the
// 64x64 ResNet-50 pass 2.4 % faster (layer3 5 %, layer4 2 %); 8 KB then gained nothing more.
// Once the transposed tiles with three panels or more prefetched the next tile instead
// (run_prepacked_tiles), 8 KB for the tiles made layer4 at 64x64 (one panel, 4 columns: a
// pure weight stream) 0.946 of the time (13 of 16 pairs); 16 KB was no better, and 224x224
// was even.
constexpr int64_t kAheadPanels = 96;  // A panels: 12 floats (48 B) per k step
constexpr int64_t kAheadTiles = 64;   // lanes along M (TC): 32 floats, two lines, per k step

// Stores an R x (16*NV) accumulator tile transposed (acc[i][v] lane j is C element (16v +
// j, i), at c[(16v + j) * ldc + i]) after a 16x16 in-register transpose, combined with C
// by mode, then the epilogue ep if set (its row is the C row); `last` limits the rows of
// the last vector.
template <int R, int NV>
__attribute__((always_inline)) inline void store_transposed(const __m512 (&acc)[R][NV], float* c,
                                                            int64_t ldc, __mmask16 last, int mode,
                                                            __m512 vb, const TileEpilogue* ep) {
  const float* res = ep ? ep->residual : nullptr;  // the residual, laid out like C
  const __mmask16 row_mask = lane_mask(R);
#pragma GCC unroll 16
  for (int v = 0; v < NV; ++v) {
    __m512 t[16];
#pragma GCC unroll 16
    for (int i = 0; i < 16; ++i) t[i] = i < R ? acc[i < R ? i : 0][v] : _mm512_setzero_ps();
    transpose16(t);
    const int ncols = v == NV - 1 ? __builtin_popcount(last) : 16;
#pragma GCC unroll 16
    for (int q = 0; q < ncols; ++q) {
      const int64_t at = (16 * v + q) * ldc;  // C row 16v + q of the tile
      store_vec(c + at, t[q], row_mask, mode, vb, ep, 16 * v + q, res ? res + at : nullptr);
    }
  }
}

// R x (16*NV) micro-kernel: acc = sum_p ap[p*MR + i] * bp[p*ldbp + j], combined with C by
// mode, then the epilogue ep if set; the last vector's columns are limited by `last`. With
// PF it also prefetches the same rows of the next tile (bp + NR) for B read in place. With
// TC the tile is written transposed (element (i, j) at c[j * ldc + i]) after a 16x16
// in-register transpose; the weights are then in bp, else in ap, and the kernel prefetches
// them ahead (kAheadTiles, kAheadPanels).
//
// A TC call given `next` (the weights a later call reads first) prefetches next_bytes of
// them instead, spread evenly over its k steps, so that a tile's weights arrive while the
// panels of the tile before are computed rather than all during its first panel.
template <int R, int NV, bool PF, bool TC>
void micro_kernel(int64_t kc, const float* __restrict ap, const float* __restrict bp, int64_t ldbp,
                  float* c, int64_t ldc, __mmask16 last, int mode, float beta,
                  const TileEpilogue* ep, const char* next, int64_t next_bytes) {
  // Offsets into next in 1/256 bytes: two prefetches per k step, half a step apart.
  const int64_t half_step = TC && next ? (next_bytes << 8) / (2 * kc) : 0;
  int64_t next_at = 0;
  const float* res = ep ? ep->residual : nullptr;  // the residual, laid out like C
  auto res_at = [res](int64_t at) { return res ? res + at : nullptr; };
  // Loops over i and v are unrolled explicitly: GCC -O3 otherwise peels them before
  // scalarising acc and may spill the accumulators to the stack on every k step.
  __m512 acc[R][NV];
#pragma GCC unroll 16
  for (int i = 0; i < R; ++i)
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) acc[i][v] = _mm512_setzero_ps();
#pragma GCC unroll 4
  for (int64_t p = 0; p < kc; ++p) {
    __m512 b[NV];
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) b[v] = _mm512_loadu_ps(bp + 16 * v);
    if (PF) {
      _mm_prefetch(reinterpret_cast<const char*>(bp + kNR), _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(bp + 2 * kNR - 1), _MM_HINT_T0);
    }
    if (TC && next) {
      _mm_prefetch(next + (next_at >> 8), _MM_HINT_T0);
      _mm_prefetch(next + ((next_at + half_step) >> 8), _MM_HINT_T0);
      next_at += 2 * half_step;
    } else if (TC) {
      _mm_prefetch(reinterpret_cast<const char*>(bp + kAheadTiles * ldbp), _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(bp + kAheadTiles * ldbp + 16), _MM_HINT_T0);
    } else {
      _mm_prefetch(reinterpret_cast<const char*>(ap + kAheadPanels * kMR), _MM_HINT_T0);
    }
#pragma GCC unroll 16
    for (int i = 0; i < R; ++i) {
      const __m512 a = _mm512_set1_ps(ap[i]);
#pragma GCC unroll 16
      for (int v = 0; v < NV; ++v) acc[i][v] = _mm512_fmadd_ps(a, b[v], acc[i][v]);
    }
    ap += kMR;
    bp += ldbp;
  }
  const __m512 vb = _mm512_set1_ps(beta);
  if (TC) {
    store_transposed<R, NV>(acc, c, ldc, last, mode, vb, ep);
    return;
  }
#pragma GCC unroll 16
  for (int i = 0; i < R; ++i) {
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v)
      store_vec(c + i * ldc + 16 * v, acc[i][v],
                v == NV - 1 ? last : static_cast<__mmask16>(0xFFFF), mode, vb, ep, i,
                res_at(i * ldc + 16 * v));
  }
}

using MicroKernel = void (*)(int64_t, const float*, const float*, int64_t, float*, int64_t,
                             __mmask16, int, float, const TileEpilogue*, const char*, int64_t);

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

// A direct convolution tile (run_direct_conv): R output pixels of one row, S input floats
// apart, by 16*NV output channels in the lanes. Per k step the weights of the channels are
// loaded from w (NR floats per step, the lanes-along-M layout) and each pixel's input value
// x[koff[p] + S * i] is broadcast; C is stored transposed (channel rows, ldc apart) as
// micro_kernel<R, NV, false, true> stores it, with the same FMAs in the same order.
template <int R, int S, int NV>
void conv_tile(int64_t kc, const float* __restrict w, const float* __restrict x,
               const int64_t* __restrict koff, float* c, int64_t ldc, __mmask16 last, int mode,
               const TileEpilogue* ep) {
  __m512 acc[R][NV];
#pragma GCC unroll 16
  for (int i = 0; i < R; ++i)
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) acc[i][v] = _mm512_setzero_ps();
#pragma GCC unroll 2
  for (int64_t p = 0; p < kc; ++p) {
    __m512 b[NV];
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) b[v] = _mm512_loadu_ps(w + 16 * v);
    _mm_prefetch(reinterpret_cast<const char*>(w + kAheadTiles * kNR), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(w + kAheadTiles * kNR + 16), _MM_HINT_T0);
    const float* xp = x + koff[p];
#pragma GCC unroll 16
    for (int i = 0; i < R; ++i) {
      const __m512 a = _mm512_set1_ps(xp[i * S]);
#pragma GCC unroll 16
      for (int v = 0; v < NV; ++v) acc[i][v] = _mm512_fmadd_ps(a, b[v], acc[i][v]);
    }
    w += kNR;
  }
  store_transposed<R, NV>(acc, c, ldc, last, mode, _mm512_setzero_ps(), ep);
}

using ConvTile = void (*)(int64_t, const float*, const float*, const int64_t*, float*, int64_t,
                          __mmask16, int, const TileEpilogue*);
constexpr int kConvR = 14;  // pixels per tile at most: 28 accumulators and 2 weight vectors

// Table of conv_tile indexed by [pixels - 1][stride - 1][vectors - 1].
template <int... Rs>
constexpr auto make_conv_table(std::integer_sequence<int, Rs...>) {
  struct Table {
    ConvTile k[sizeof...(Rs)][2][2];
  };
  return Table{{{{&conv_tile<Rs + 1, 1, 1>, &conv_tile<Rs + 1, 1, 2>},
                 {&conv_tile<Rs + 1, 2, 1>, &conv_tile<Rs + 1, 2, 2>}}...}};
}
constexpr auto kConvTiles = make_conv_table(std::make_integer_sequence<int, kConvR>{});

// R x (16*NV) tile of gemm_prepacked_single_rows over one k block (the whole K): row p of
// B is the floats at b + off[p], read where they are instead of copied into a tile first.
// With TAIL the columns of the last vector are limited by `last` (masked loads: nothing
// past a row is touched), else every lane is used. The FMAs of micro_kernel<R, NV> in its
// order, C overwritten, then the epilogue: the same bits.
template <int R, int NV, bool TAIL>
void rows_kernel(int64_t kc, const float* __restrict ap, const float* __restrict b,
                 const int64_t* __restrict off, float* c, int64_t ldc, __mmask16 last,
                 const TileEpilogue* ep) {
  const float* res = ep ? ep->residual : nullptr;
  __m512 acc[R][NV];
#pragma GCC unroll 16
  for (int i = 0; i < R; ++i)
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) acc[i][v] = _mm512_setzero_ps();
#pragma GCC unroll 4
  for (int64_t p = 0; p < kc; ++p) {
    const float* bp = b + off[p];
    __m512 bv[NV];
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v)
      bv[v] = TAIL && v == NV - 1 ? _mm512_maskz_loadu_ps(last, bp + 16 * v)
                                  : _mm512_loadu_ps(bp + 16 * v);
#pragma GCC unroll 16
    for (int i = 0; i < R; ++i) {
      const __m512 a = _mm512_set1_ps(ap[i]);
#pragma GCC unroll 2
      for (int v = 0; v < NV; ++v) acc[i][v] = _mm512_fmadd_ps(a, bv[v], acc[i][v]);
    }
    ap += kMR;
  }
  const __m512 vb = _mm512_setzero_ps();
#pragma GCC unroll 16
  for (int i = 0; i < R; ++i)
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v)
      store_vec(c + i * ldc + 16 * v, acc[i][v],
                TAIL && v == NV - 1 ? last : static_cast<__mmask16>(0xFFFF), kStoreOverwrite, vb,
                ep, i, res ? res + i * ldc + 16 * v : nullptr);
}

using RowsKernel = void (*)(int64_t, const float*, const float*, const int64_t*, float*, int64_t,
                            __mmask16, const TileEpilogue*);
// Table of rows_kernel indexed by [rows - 1][0: a ragged tile of one vector, 1: of two
// vectors, 2: a whole tile].
template <int... Rs>
constexpr auto make_rows_table(std::integer_sequence<int, Rs...>) {
  struct Table {
    RowsKernel k[sizeof...(Rs)][3];
  };
  return Table{{{&rows_kernel<Rs + 1, 1, true>, &rows_kernel<Rs + 1, 2, true>,
                 &rows_kernel<Rs + 1, 2, false>}...}};
}
constexpr auto kRowsKernels = make_rows_table(std::make_integer_sequence<int, kMR>{});

// Kernel policy plugged into the shared packed driver.
struct Avx512Kern {
  static constexpr int64_t MR = kMR, NR = kNR, VL = 16, KC = 256, MC = 240, NC_BIG = 2048,
                           NC_SMALL = 512, NC_DIRECT = 1024;
  static constexpr bool ALLOW_TRANSPOSED = true;
  static constexpr int64_t TC_DEEP_MAX_KB = 0;  // mask registers make transposed tiles cheap at any depth
  // Packs a block of A into micro-panels.
  static void pack_a(bool t, const float* s, int64_t ld, int64_t mc, int64_t np, int64_t kc,
                     float* d) {
    pack_a_avx512(t, s, ld, mc, np, kc, d);
  }
  // Packs a block of B into micro-panels.
  static void pack_b(bool t, const float* s, int64_t ld, int64_t nc, int64_t kc, float* d) {
    pack_b_avx512(t, s, ld, nc, kc, d);
  }
  // Runs the micro-kernel for a rows x cols tile (stored transposed when tc), then ep.
  static void kernel(int rows, int cols, int64_t kc, const float* ap, const float* bp, int64_t ldbp,
                     bool prefetch, bool tc, float* c, int64_t ldc, int mode, float beta,
                     const TileEpilogue* ep) {
    const int nv = cols > 16 ? 2 : 1;
    kKernels.k[rows - 1][nv - 1][prefetch ? 1 : 0][tc ? 1 : 0](
        kc, ap, bp, ldbp, c, ldc, lane_mask(cols - 16 * (nv - 1)), mode, beta, ep, nullptr, 0);
  }
  // kernel() with tc, prefetching next_bytes from next over its k steps instead of its own
  // weights ahead (see micro_kernel).
  static void tc_kernel(int rows, int cols, int64_t kc, const float* ap, const float* bp,
                        float* c, int64_t ldc, int mode, float beta, const TileEpilogue* ep,
                        const char* next, int64_t next_bytes) {
    const int nv = cols > 16 ? 2 : 1;
    kKernels.k[rows - 1][nv - 1][0][1](kc, ap, bp, kNR, c, ldc, lane_mask(cols - 16 * (nv - 1)),
                                       mode, beta, ep, next, next_bytes);
  }
  static constexpr int64_t CONV_R = kConvR;
  // A direct convolution tile of `pixels` outputs (stride 1 or 2) by `cols` channels.
  static void conv_kernel(int pixels, int cols, int64_t kc, const float* w, const float* x,
                          const int64_t* koff, int64_t stride, float* c, int64_t ldc, int mode,
                          const TileEpilogue* ep) {
    const int nv = cols > 16 ? 2 : 1;
    kConvTiles.k[pixels - 1][stride - 1][nv - 1](kc, w, x, koff, c, ldc,
                                                 lane_mask(cols - 16 * (nv - 1)), mode, ep);
  }
  // Unpacked B rows are read in place unless the row stride aliases in L1 (multiple of 4 KiB).
  static bool direct_b_ok(int64_t ldb) { return (ldb * 4) % 4096 != 0; }
  // rows_kernel<rows, 2, false> for a whole NR-column tile whose B rows are at b + off[p].
  static void rows_kernel(int rows, int64_t kc, const float* ap, const float* b, const int64_t* off,
                          float* c, int64_t ldc, const TileEpilogue* ep) {
    kRowsKernels.k[rows - 1][2](kc, ap, b, off, c, ldc, static_cast<__mmask16>(0xFFFF), ep);
  }
  // The same for a ragged last tile of cols < NR columns (masked loads and stores).
  static void rows_tail_kernel(int rows, int cols, int64_t kc, const float* ap, const float* b,
                               const int64_t* off, float* c, int64_t ldc, const TileEpilogue* ep) {
    const int nv = cols > 16 ? 2 : 1;
    kRowsKernels.k[rows - 1][nv - 1](kc, ap, b, off, c, ldc, lane_mask(cols - 16 * (nv - 1)), ep);
  }
};

// Address of op(A)[0][p] for a single-row op(A) is a + p * a_stride.
inline int64_t row_a_stride(const GemmArgs& g) { return g.trans_a ? g.lda : 1; }

// Single-row GEMM with op(B) = B^T (m == 1, trans_b: C[j] = sum_p a[p] * B[j][p], the
// batch-1 Linear layer). Bandwidth bound: B is streamed once, kGroups x 16 rows at a time
// along k, transposed in registers right before the FMAs; while one k block is consumed the
// next one is prefetched row by row (DRAM-friendly order). Same k blocks, FMA order and
// store rule as the packed kernels, so results are identical to theirs.
void gemv_trans_b(const GemmArgs& g) {
  const int64_t n = g.n, k = g.k, nkb = k_block_count(k, Avx512Kern::KC);
  const int64_t as = row_a_stride(g);
  const __m512 vb = _mm512_set1_ps(g.beta);
  constexpr int kGroups = 1;  // groups of 16 rows: more concurrent row streams defeat the prefetchers
  for (int64_t j0 = 0; j0 < n; j0 += 16 * kGroups) {
    for (int64_t kb = 0; kb < nkb; ++kb) {
      const int64_t p0 = part_begin(k, nkb, kb), p1 = part_begin(k, nkb, kb + 1);
      // Prefetch target: the next k block of these rows, or the next rows' first block.
      const int64_t pf_row0 = kb + 1 < nkb ? j0 : j0 + 16 * kGroups;
      const int64_t pf_p0 = kb + 1 < nkb ? p1 : 0;
      const int mode = kb > 0 ? kStoreAccumulate : (g.beta == 0.0f ? kStoreOverwrite : kStoreBeta);
      __m512 acc[kGroups];
      for (int gi = 0; gi < kGroups; ++gi) acc[gi] = _mm512_setzero_ps();
      for (int64_t pc = p0; pc < p1; pc += 16) {
        const int nq = static_cast<int>(std::min<int64_t>(16, p1 - pc));
        const int64_t chunk = (pc - p0) / 16;
        const __mmask16 lm = lane_mask(nq);
        for (int gi = 0; gi < kGroups; ++gi) {
          const int64_t jg = j0 + 16 * gi;
          const int nj = static_cast<int>(std::max<int64_t>(0, std::min<int64_t>(16, n - jg)));
          if (nj == 0) break;
          const float* src = g.b + jg * g.ldb + pc;
          __m512 v[16];
          for (int j = 0; j < 16; ++j) {
            // Line `chunk` of row j of the prefetch target (row-major over the next block).
            const int64_t pf_row = pf_row0 + 16 * gi + chunk, pf_line = j;
            if (pf_row < n)
              _mm_prefetch(
                  reinterpret_cast<const char*>(g.b + pf_row * g.ldb + pf_p0 + 16 * pf_line),
                  _MM_HINT_T0);
            v[j] = j < nj ? _mm512_maskz_loadu_ps(lm, src + j * g.ldb) : _mm512_setzero_ps();
          }
          transpose16(v);
          for (int q = 0; q < nq; ++q)
            acc[gi] = _mm512_fmadd_ps(_mm512_set1_ps(g.a[(pc + q) * as]), v[q], acc[gi]);
        }
      }
      for (int gi = 0; gi < kGroups; ++gi) {
        const int64_t jg = j0 + 16 * gi;
        if (jg >= n) break;
        store_vec(g.c + jg, acc[gi], lane_mask(static_cast<int>(std::min<int64_t>(16, n - jg))),
                  mode, vb);
      }
    }
  }
}

// Columns [j0, j0 + 16*NV) of a single-row GEMM with row-major op(B) (m == 1, !trans_b):
// NV accumulators, B rows read in place 16*NV floats at a time; the last vector masked.
template <int NV>
void gemv_block(const GemmArgs& g, int64_t j0, __mmask16 last) {
  const int64_t k = g.k, nkb = k_block_count(k, Avx512Kern::KC), as = row_a_stride(g);
  const __m512 vb = _mm512_set1_ps(g.beta);
  for (int64_t kb = 0; kb < nkb; ++kb) {
    const int64_t p0 = part_begin(k, nkb, kb), p1 = part_begin(k, nkb, kb + 1);
    const int mode = kb > 0 ? kStoreAccumulate : (g.beta == 0.0f ? kStoreOverwrite : kStoreBeta);
    __m512 acc[NV];
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) acc[v] = _mm512_setzero_ps();
    for (int64_t p = p0; p < p1; ++p) {
      const float* row = g.b + p * g.ldb + j0;
      const __m512 a = _mm512_set1_ps(g.a[p * as]);
#pragma GCC unroll 16
      for (int v = 0; v < NV; ++v) {
        if (v % 4 == 0)
          _mm_prefetch(reinterpret_cast<const char*>(row + 8 * g.ldb + 16 * v), _MM_HINT_T0);
        const __m512 b =
            v == NV - 1 ? _mm512_maskz_loadu_ps(last, row + 16 * v) : _mm512_loadu_ps(row + 16 * v);
        acc[v] = _mm512_fmadd_ps(a, b, acc[v]);
      }
    }
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v)
      store_vec(g.c + j0 + 16 * v, acc[v], v == NV - 1 ? last : static_cast<__mmask16>(0xFFFF),
                mode, vb);
  }
}

// Single-row GEMM with row-major op(B) (m == 1, !trans_b): 256-column blocks, each B row
// segment (1 KiB) read once; same k blocks, FMA order and store rule as the packed kernels.
void gemv_no_trans(const GemmArgs& g) {
  constexpr int64_t kWidth = 256;
  int64_t j0 = 0;
  for (; j0 + kWidth <= g.n; j0 += kWidth) gemv_block<16>(g, j0, 0xFFFF);
  if (j0 == g.n) return;
  const int64_t rest = g.n - j0;
  const int nv = static_cast<int>((rest + 15) / 16);
  const __mmask16 last = lane_mask(static_cast<int>(rest - 16 * (nv - 1)));
  using Block = void (*)(const GemmArgs&, int64_t, __mmask16);
  static constexpr Block kBlocks[16] = {
      gemv_block<1>,  gemv_block<2>,  gemv_block<3>,  gemv_block<4>,
      gemv_block<5>,  gemv_block<6>,  gemv_block<7>,  gemv_block<8>,
      gemv_block<9>,  gemv_block<10>, gemv_block<11>, gemv_block<12>,
      gemv_block<13>, gemv_block<14>, gemv_block<15>, gemv_block<16>};
  kBlocks[nv - 1](g, j0, last);
}

}  // namespace

// Single-threaded AVX-512 GEMM: GEMV loops for one-row C, the packed driver otherwise.
void gemm_avx512(const GemmArgs& args) {
  if (args.m == 1 && args.k > 0) {
    // Batch-1 GEMV shapes are bandwidth bound: skip packing and stream B once.
    if (args.trans_b) {
      gemv_trans_b(args);
    } else {
      gemv_no_trans(args);
    }
    return;
  }
  gemm_packed<Avx512Kern>(args);
}

const PrepackKernels* prepack_kernels_avx512() {
  static const PrepackKernels kernels = gemm_pack::make_prepack_kernels<Avx512Kern>();
  return &kernels;
}

}  // namespace isplit
