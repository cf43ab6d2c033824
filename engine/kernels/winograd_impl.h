// The Winograd F(4x4, 3x3) transforms behind engine/kernels/winograd.h. Each ISA's
// translation unit includes this file and builds its table from these functions, so the
// same loops are compiled once per instruction set (with that TU's flags). Everything sits
// in an anonymous namespace: no TU can reach another's code through a shared symbol.
//
// The loops run over 16 lanes with a constant trip count and round after every operation
// (the build uses -ffp-contract=off), so the compiler turns each line into vector
// instructions and every ISA gives the scalar table's bits.
#pragma once
#include <cstddef>
#include <cstdint>
#include <utility>

#if defined(__AVX512F__) || defined(__SSE2__)
#include <immintrin.h>
#elif defined(__ARM_NEON)
#include <arm_neon.h>
#endif

#include "engine/kernels/winograd.h"

namespace isplit {
namespace {
namespace winograd_impl {

constexpr int64_t L = kWinogradLanes;

// o[k * os] = (B^T s)[k] for the 6-vector s[k * ss], lane by lane (B^T of F(4x4, 3x3)).
// The results go to a local block first and are then stored row by row: with a run-time
// os the six output rows might overlap as far as the compiler knows, and storing them
// straight from the loop left it scalar.
inline void apply_bt(const float* s, int64_t ss, float* o, int64_t os) {
  alignas(64) float r[6][L];
  for (int64_t l = 0; l < L; ++l) {
    const float d0 = s[l], d1 = s[ss + l], d2 = s[2 * ss + l], d3 = s[3 * ss + l],
                d4 = s[4 * ss + l], d5 = s[5 * ss + l];
    r[0][l] = (4.0f * d0 - 5.0f * d2) + d4;
    r[1][l] = (d4 + d3) - 4.0f * (d1 + d2);
    r[2][l] = (d4 - d3) + 4.0f * (d1 - d2);
    r[3][l] = (d4 - d2) + 2.0f * (d3 - d1);
    r[4][l] = (d4 - d2) - 2.0f * (d3 - d1);
    r[5][l] = (4.0f * d1 - 5.0f * d3) + d5;
  }
  for (int64_t k = 0; k < 6; ++k)
    for (int64_t l = 0; l < L; ++l) o[k * os + l] = r[k][l];
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

// Columns 0..3 of gather16 for one row: p[c * 16 + l] = s[4 * l + c].
inline void deinterleave4(const float* s, float* p) {
#if defined(__AVX512F__)
  // Lanes 0..7 come from s[0..32), lanes 8..15 from s[32..64): one two-source permute
  // each, then a blend.
  const __m512 a0 = _mm512_loadu_ps(s), a1 = _mm512_loadu_ps(s + 16);
  const __m512 a2 = _mm512_loadu_ps(s + 32), a3 = _mm512_loadu_ps(s + 48);
  for (int c = 0; c < 4; ++c) {
    const __m512i idx = _mm512_setr_epi32(c, 4 + c, 8 + c, 12 + c, 16 + c, 20 + c, 24 + c, 28 + c,
                                          c, 4 + c, 8 + c, 12 + c, 16 + c, 20 + c, 24 + c, 28 + c);
    const __m512 lo = _mm512_permutex2var_ps(a0, idx, a1);
    const __m512 hi = _mm512_permutex2var_ps(a2, idx, a3);
    _mm512_storeu_ps(p + c * L, _mm512_mask_blend_ps(0xff00, lo, hi));
  }
#elif defined(__SSE2__)
  // Four tiles at a time: a 4x4 transpose of s[16 g .. 16 g + 16).
  for (int64_t g = 0; g < L / 4; ++g) {
    __m128 r0 = _mm_loadu_ps(s + 16 * g), r1 = _mm_loadu_ps(s + 16 * g + 4);
    __m128 r2 = _mm_loadu_ps(s + 16 * g + 8), r3 = _mm_loadu_ps(s + 16 * g + 12);
    _MM_TRANSPOSE4_PS(r0, r1, r2, r3);
    _mm_storeu_ps(p + 4 * g, r0);
    _mm_storeu_ps(p + L + 4 * g, r1);
    _mm_storeu_ps(p + 2 * L + 4 * g, r2);
    _mm_storeu_ps(p + 3 * L + 4 * g, r3);
  }
#elif defined(__ARM_NEON)
  for (int64_t g = 0; g < L / 4; ++g) {
    const float32x4x4_t q = vld4q_f32(s + 16 * g);
    vst1q_f32(p + 4 * g, q.val[0]);
    vst1q_f32(p + L + 4 * g, q.val[1]);
    vst1q_f32(p + 2 * L + 4 * g, q.val[2]);
    vst1q_f32(p + 3 * L + 4 * g, q.val[3]);
  }
#else
  for (int64_t l = 0; l < L; ++l)
    for (int64_t c = 0; c < 4; ++c) p[c * L + l] = s[4 * l + c];
#endif
}

// The last two patch columns, m and m + 1, of one patch row p of sixteen side-by-side tiles
// of side m, read from row s: they are columns 0 and 1 of the next tile, so those columns
// moved one lane down, and for the last tile the two values after the sixteenth tile.
inline void neighbour_columns(const float* s, int64_t m, float* p) {
  for (int64_t l = 0; l + 1 < L; ++l) {
    p[m * L + l] = p[l + 1];
    p[(m + 1) * L + l] = p[L + l + 1];
  }
  p[(m + 1) * L - 1] = s[m * L];
  p[(m + 2) * L - 1] = s[m * L + 1];
}

// WinogradKernels::gather16: patch[(r * 6 + col) * 16 + l] = rows[r][4 * l + col], the 6x6
// input patches of sixteen side-by-side tiles.
void gather16(const float* const* rows, float* patch) {
  for (int64_t r = 0; r < 6; ++r) {
    float* p = patch + r * 6 * L;
    deinterleave4(rows[r], p);
    neighbour_columns(rows[r], 4, p);
  }
}

// WinogradKernels::interleave16: rows[i * 64 + 4 * l + j] = out[(i * 4 + j) * 16 + l], the
// four output rows of sixteen side-by-side 4x4 tiles.
void interleave16(const float* out, float* rows) {
  for (int64_t i = 0; i < 4; ++i) {
    const float* o = out + i * 4 * L;
    float* d = rows + i * 4 * L;
#if defined(__AVX512F__)
    // Two rounds of two-source permutes: o0 with o1 and o2 with o3 pairwise, then the
    // pairs two by two.
    const __m512i pair_lo = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
    const __m512i pair_hi = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30,
                                              15, 31);
    const __m512i quad_lo = _mm512_setr_epi32(0, 1, 16, 17, 2, 3, 18, 19, 4, 5, 20, 21, 6, 7, 22, 23);
    const __m512i quad_hi = _mm512_setr_epi32(8, 9, 24, 25, 10, 11, 26, 27, 12, 13, 28, 29, 14, 15,
                                              30, 31);
    const __m512 o0 = _mm512_loadu_ps(o), o1 = _mm512_loadu_ps(o + L);
    const __m512 o2 = _mm512_loadu_ps(o + 2 * L), o3 = _mm512_loadu_ps(o + 3 * L);
    const __m512 a_lo = _mm512_permutex2var_ps(o0, pair_lo, o1);
    const __m512 a_hi = _mm512_permutex2var_ps(o0, pair_hi, o1);
    const __m512 c_lo = _mm512_permutex2var_ps(o2, pair_lo, o3);
    const __m512 c_hi = _mm512_permutex2var_ps(o2, pair_hi, o3);
    _mm512_storeu_ps(d, _mm512_permutex2var_ps(a_lo, quad_lo, c_lo));
    _mm512_storeu_ps(d + 16, _mm512_permutex2var_ps(a_lo, quad_hi, c_lo));
    _mm512_storeu_ps(d + 32, _mm512_permutex2var_ps(a_hi, quad_lo, c_hi));
    _mm512_storeu_ps(d + 48, _mm512_permutex2var_ps(a_hi, quad_hi, c_hi));
#elif defined(__SSE2__)
    for (int64_t g = 0; g < L / 4; ++g) {
      __m128 r0 = _mm_loadu_ps(o + 4 * g), r1 = _mm_loadu_ps(o + L + 4 * g);
      __m128 r2 = _mm_loadu_ps(o + 2 * L + 4 * g), r3 = _mm_loadu_ps(o + 3 * L + 4 * g);
      _MM_TRANSPOSE4_PS(r0, r1, r2, r3);
      _mm_storeu_ps(d + 16 * g, r0);
      _mm_storeu_ps(d + 16 * g + 4, r1);
      _mm_storeu_ps(d + 16 * g + 8, r2);
      _mm_storeu_ps(d + 16 * g + 12, r3);
    }
#elif defined(__ARM_NEON)
    for (int64_t g = 0; g < L / 4; ++g) {
      float32x4x4_t q;
      q.val[0] = vld1q_f32(o + 4 * g);
      q.val[1] = vld1q_f32(o + L + 4 * g);
      q.val[2] = vld1q_f32(o + 2 * L + 4 * g);
      q.val[3] = vld1q_f32(o + 3 * L + 4 * g);
      vst4q_f32(d + 16 * g, q);
    }
#else
    for (int64_t l = 0; l < L; ++l)
      for (int64_t j = 0; j < 4; ++j) d[4 * l + j] = o[j * L + l];
#endif
  }
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

// ---- F(2x2, 3x3): 4x4 input patches, 2x2 output tiles, 16 transform positions.
// B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1], G = [1 0 0; 1/2 1/2 1/2; 1/2 -1/2 1/2;
// 0 0 1], A^T = [1 1 1 0; 0 1 -1 -1] (Lavin and Gray's points 0, +-1, inf).

// o[k * os] = (B^T s)[k] for the 4-vector s[k * ss], lane by lane; through a local block
// as apply_bt does.
inline void apply_bt2(const float* s, int64_t ss, float* o, int64_t os) {
  alignas(64) float r[4][L];
  for (int64_t l = 0; l < L; ++l) {
    const float d0 = s[l], d1 = s[ss + l], d2 = s[2 * ss + l], d3 = s[3 * ss + l];
    r[0][l] = d0 - d2;
    r[1][l] = d1 + d2;
    r[2][l] = d2 - d1;
    r[3][l] = d1 - d3;
  }
  for (int64_t k = 0; k < 4; ++k)
    for (int64_t l = 0; l < L; ++l) o[k * os + l] = r[k][l];
}

// WinogradKernels::input16_2: v = B^T d B for sixteen 4x4 patches.
void input16_2(const float* in, float* v, int64_t stride) {
  alignas(64) float t[16 * L];
  for (int64_t c = 0; c < 4; ++c) apply_bt2(in + c * L, 4 * L, t + c * L, 4 * L);
  for (int64_t r = 0; r < 4; ++r) apply_bt2(t + r * 4 * L, L, v + r * 4 * stride, stride);
}

// WinogradKernels::output16_2: out = A^T m A + bias (then ReLU) for sixteen tiles.
void output16_2(const float* m, int64_t stride, float bias, bool relu, float* out) {
  alignas(64) float t[8 * L];  // A^T applied down each column: t[(i * 4 + c) * L + l]
  for (int64_t c = 0; c < 4; ++c)
    for (int64_t l = 0; l < L; ++l) {
      const float m0 = m[c * stride + l], m1 = m[(4 + c) * stride + l];
      const float m2 = m[(8 + c) * stride + l], m3 = m[(12 + c) * stride + l];
      t[c * L + l] = (m0 + m1) + m2;
      t[(4 + c) * L + l] = (m1 - m2) - m3;
    }
  for (int64_t i = 0; i < 2; ++i)
    for (int64_t l = 0; l < L; ++l) {
      const float* r = t + i * 4 * L;
      out[(i * 2) * L + l] = ((r[l] + r[L + l]) + r[2 * L + l]) + bias;
      out[(i * 2 + 1) * L + l] = ((r[L + l] - r[2 * L + l]) - r[3 * L + l]) + bias;
    }
  if (relu)
    for (int64_t i = 0; i < 4 * L; ++i) out[i] = out[i] > 0.0f ? out[i] : 0.0f;
}

// WinogradKernels::gather16_2: patch[(r * 4 + col) * 16 + l] = rows[r][2 * l + col] for
// r, col < 4.
void gather16_2(const float* const* rows, float* patch) {
  for (int64_t r = 0; r < 4; ++r) {
    const float* s = rows[r];
    float* p = patch + r * 4 * L;
    for (int64_t l = 0; l < L; ++l) {
      p[l] = s[2 * l];
      p[L + l] = s[2 * l + 1];
    }
    neighbour_columns(s, 2, p);
  }
}

// WinogradKernels::interleave16_2: rows[i * 32 + 2 * l + j] = out[(i * 2 + j) * 16 + l].
void interleave16_2(const float* out, float* rows) {
  for (int64_t i = 0; i < 2; ++i)
    for (int64_t l = 0; l < L; ++l) {
      rows[i * 2 * L + 2 * l] = out[(i * 2) * L + l];
      rows[i * 2 * L + 2 * l + 1] = out[(i * 2 + 1) * L + l];
    }
}

// The widest vector of this translation unit's ISA, as a value: each lane rounds on its own.
#if defined(__AVX512F__)
constexpr int kVecLanes = 16;
#elif defined(__AVX__)
constexpr int kVecLanes = 8;
#else
constexpr int kVecLanes = 4;  // SSE2, NEON, or four scalars
#endif
typedef float Vec __attribute__((vector_size(kVecLanes * sizeof(float))));

inline Vec load_lanes(const float* p) {
  Vec v;
  __builtin_memcpy(&v, p, sizeof v);
  return v;
}

inline void store_lanes(float* p, Vec v) { __builtin_memcpy(p, &v, sizeof v); }

// Row R of G (F(4x4, 3x3)) applied to the 3-vector (x0, x1, x2): the sixths and
// twenty-fourths are gathered into one multiplication by 1/6 after exact scalings by
// powers of two, so each value is rounded at most four times.
template <int R, class T>
inline T g_row(T x0, T x1, T x2) {
  if constexpr (R == 0) return 0.25f * x0;
  if constexpr (R == 1) return -((x0 + x1) + x2) * (1.0f / 6.0f);
  if constexpr (R == 2) return -((x0 - x1) + x2) * (1.0f / 6.0f);
  if constexpr (R == 3) return ((0.25f * x0 + 0.5f * x1) + x2) * (1.0f / 6.0f);
  if constexpr (R == 4) return ((0.25f * x0 - 0.5f * x1) + x2) * (1.0f / 6.0f);
  return x2;
}

// Row R of G (F(2x2, 3x3)) applied to the 3-vector (x0, x1, x2); the halvings are exact.
template <int R, class T>
inline T g2_row(T x0, T x1, T x2) {
  if constexpr (R == 0) return x0;
  if constexpr (R == 1) return ((x0 + x1) + x2) * 0.5f;
  if constexpr (R == 2) return ((x0 - x1) + x2) * 0.5f;
  return x2;
}

// The two filter transforms: J rows of G, and row R applied to a 3-vector.
struct GF4 {
  static constexpr int J = 6;
  template <int R, class T>
  static T row(T x0, T x1, T x2) { return g_row<R>(x0, x1, x2); }
};
struct GF2 {
  static constexpr int J = 4;
  template <int R, class T>
  static T row(T x0, T x1, T x2) { return g2_row<R>(x0, x1, x2); }
};

// Row R of the filter transform G for sixteen filters: g[t][l] is tap t of filter l, and
// o[j][l] gets (G g G^T)[R][j], j < G::J. The taps are loaded into registers and each
// result is stored once (a local block in between cost three stores per result).
template <class G, int R, size_t... J>
inline void filter16(const float* const* g, float* const* o, std::index_sequence<J...>) {
  for (int64_t l = 0; l < L; l += kVecLanes) {
    Vec x[9];
    for (int t = 0; t < 9; ++t) x[t] = load_lanes(g[t] + l);
    const Vec t0 = G::template row<R>(x[0], x[3], x[6]);
    const Vec t1 = G::template row<R>(x[1], x[4], x[7]);
    const Vec t2 = G::template row<R>(x[2], x[5], x[8]);
    (store_lanes(o[J] + l, G::template row<static_cast<int>(J)>(t0, t1, t2)), ...);
  }
}

// One row R of filter transform G over len filters: whole blocks of sixteen in place, a
// short last one through zero-padded copies.
template <class G, int R>
void filter_row_of(const float* taps, int64_t tap_stride, int64_t len, float* const* out) {
  constexpr int J = G::J;
  const auto rows = std::make_index_sequence<J>{};
  const float* g[9];
  float* o[J];
  int64_t e = 0;
  for (; e + L <= len; e += L) {
    for (int64_t t = 0; t < 9; ++t) g[t] = taps + t * tap_stride + e;
    for (int64_t j = 0; j < J; ++j) o[j] = out[j] + e;
    filter16<G, R>(g, o, rows);
  }
  if (e == len) return;
  const int64_t n = len - e;
  alignas(64) float gin[9][L] = {};
  alignas(64) float gout[J][L];
  for (int64_t t = 0; t < 9; ++t) {
    for (int64_t l = 0; l < n; ++l) gin[t][l] = taps[t * tap_stride + e + l];
    g[t] = gin[t];
  }
  for (int64_t j = 0; j < J; ++j) o[j] = gout[j];
  filter16<G, R>(g, o, rows);
  for (int64_t j = 0; j < J; ++j)
    for (int64_t l = 0; l < n; ++l) out[j][e + l] = gout[j][l];
}

// WinogradKernels::filter_row_2.
void filter_row_2(const float* taps, int64_t tap_stride, int64_t len, int row, float* const* out) {
  switch (row) {
    case 0: return filter_row_of<GF2, 0>(taps, tap_stride, len, out);
    case 1: return filter_row_of<GF2, 1>(taps, tap_stride, len, out);
    case 2: return filter_row_of<GF2, 2>(taps, tap_stride, len, out);
    default: return filter_row_of<GF2, 3>(taps, tap_stride, len, out);
  }
}

// WinogradKernels::filter_row.
void filter_row(const float* taps, int64_t tap_stride, int64_t len, int row, float* const* out) {
  switch (row) {
    case 0: return filter_row_of<GF4, 0>(taps, tap_stride, len, out);
    case 1: return filter_row_of<GF4, 1>(taps, tap_stride, len, out);
    case 2: return filter_row_of<GF4, 2>(taps, tap_stride, len, out);
    case 3: return filter_row_of<GF4, 3>(taps, tap_stride, len, out);
    case 4: return filter_row_of<GF4, 4>(taps, tap_stride, len, out);
    default: return filter_row_of<GF4, 5>(taps, tap_stride, len, out);
  }
}

}  // namespace winograd_impl
}  // namespace
}  // namespace isplit
