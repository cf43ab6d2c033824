// The element-wise and pooling kernels behind the EltwiseKernels tables of
// engine/kernels/eltwise.h, written once in portable C++ (plus the relu_backward selects)
// and compiled into each x86 table with that table's flags: the scalar reference for
// baseline x86-64 (and every other CPU), the AVX2 table with -mavx2 (the compiler then
// vectorises the same loops eight lanes wide). Every kernel does the same operations in
// the same order, element by element, so both tables give the same bits; the one exception
// is the AVX2 build's stride-2 max pooling (maxpool_plane_s2), which gives the same values
// but may differ in the sign of a zero or in which NaN comes out.
//
// Include only from a kernel table's source file: everything here has internal linkage,
// so each includer gets its own copy built with its own flags. Nothing here may
// instantiate an out-of-line library template (std::vector, ...): the linker keeps one
// copy of those for the whole program, which could then be the AVX2 build's.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#include "engine/kernels/eltwise.h"

#if defined(__AVX2__) || defined(__SSE2__)
#include <immintrin.h>
#endif

namespace isplit {
namespace {

void relu(const float* x, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = x[i] > 0.0f ? x[i] : 0.0f;
}

void relu_backward(const float* gy, const float* y, float* gx, int64_t n) {
  int64_t i = 0;
#if defined(__AVX2__)
  // Eight lanes at a time in the AVX2 build, the same selection as below.
  const __m256 zero8 = _mm256_setzero_ps();
  for (; i + 8 <= n; i += 8) {
    const __m256 d = _mm256_loadu_ps(gx + i);
    const __m256 on = _mm256_cmp_ps(_mm256_loadu_ps(y + i), zero8, _CMP_GT_OQ);
    const __m256 sum = _mm256_add_ps(d, _mm256_loadu_ps(gy + i));
    _mm256_storeu_ps(gx + i, _mm256_blendv_ps(d, sum, on));
  }
#endif
#if defined(__SSE2__)
  // SSE2 is part of x86-64: four lanes at a time, the sum selected where y > 0; lanes that
  // are off keep gx untouched (adding 0 would turn -0 into +0).
  const __m128 zero = _mm_setzero_ps();
  for (; i + 4 <= n; i += 4) {
    const __m128 d = _mm_loadu_ps(gx + i);
    const __m128 on = _mm_cmpgt_ps(_mm_loadu_ps(y + i), zero);
    const __m128 sum = _mm_add_ps(d, _mm_loadu_ps(gy + i));
    _mm_storeu_ps(gx + i, _mm_or_ps(_mm_and_ps(on, sum), _mm_andnot_ps(on, d)));
  }
#endif
  for (; i < n; ++i)
    if (y[i] > 0.0f) gx[i] += gy[i];
}

void add(const float* a, const float* b, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = a[i] + b[i];
}

void add_into(float* y, const float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += x[i];
}

void normalize(const float* x, float mean, float scale, float shift, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = (x[i] - mean) * scale + shift;
}

void bn_grad_train(const float* gy, const float* x, float* gx, int64_t n, double mean,
                   double istd, double scale, double mg, double mgx) {
  for (int64_t i = 0; i < n; ++i) {
    const double xhat = (x[i] - mean) * istd;
    gx[i] += static_cast<float>(scale * (gy[i] - mg - xhat * mgx));
  }
}

void bn_grad_eval(const float* gy, float* gx, int64_t n, double scale) {
  for (int64_t i = 0; i < n; ++i) gx[i] += static_cast<float>(scale * gy[i]);
}

// max(m, v) where a NaN wins (either one), written so that compilers vectorise it.
inline float max_nan(float m, float v) { return (v > m || v != v) ? v : m; }

// Row maxima of one output row: y[ox] = max of c over the window of ox, in passes over
// the outputs (one per window column) that vectorise; S is the stride when known (2).
template <int S>
void pool_row(const float* c, const PoolPlane& p, float* y) {
  const int64_t s = S > 0 ? S : p.sw;
  const float lowest = -std::numeric_limits<float>::infinity();
  // Outputs [lo, hi) have their whole window inside the row.
  const int64_t lo = std::min(p.ow, (p.pw + s - 1) / s);
  int64_t hi = p.w - p.kw + p.pw >= 0 ? (p.w - p.kw + p.pw) / s + 1 : 0;
  hi = std::max(lo, std::min(hi, p.ow));
  auto clipped = [&](int64_t ox) {
    const int64_t x0 = ox * s - p.pw;
    const int64_t xa = std::max<int64_t>(x0, 0), xb = std::min(x0 + p.kw, p.w);
    float best = lowest;
    for (int64_t ix = xa; ix < xb; ++ix) best = max_nan(best, c[ix]);
    y[ox] = best;
  };
  for (int64_t ox = 0; ox < lo; ++ox) clipped(ox);
  if (hi > lo) {
    const float* base = c - p.pw;
    for (int64_t ox = lo; ox < hi; ++ox) y[ox] = base[ox * s];
    for (int64_t t = 1; t < p.kw; ++t)
      for (int64_t ox = lo; ox < hi; ++ox) y[ox] = max_nan(y[ox], base[ox * s + t]);
  }
  for (int64_t ox = hi; ox < p.ow; ++ox) clipped(ox);
}

#if defined(__AVX2__)
// max_nan eight lanes wide: v where v > m or v is NaN, else m.
inline __m256 max_nan8(__m256 m, __m256 v) {
  const __m256 take = _mm256_or_ps(_mm256_cmp_ps(v, m, _CMP_GT_OQ), _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
  return _mm256_blendv_ps(m, v, take);
}

// Floats 0, 2, ..., 6 of a then 1, 3, ..., 7 of b when Sel is (3,1,2,0); 0, 2, ... of both
// with (2,0,2,0); 1, 3, ... of both with (3,1,3,1): shuffle_ps picks within 128-bit halves,
// the 64-bit permute puts the halves in order.
template <int Sel>
inline __m256 pick_pairs(__m256 a, __m256 b) {
  const __m256 s = _mm256_shuffle_ps(a, b, Sel);
  return _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(s), _MM_SHUFFLE(3, 1, 2, 0)));
}

// Stride-2 pooling with windows 2 or 3 wide (VGG16's 2x2 pools, ResNet-50's 3x3 stem pool),
// eight outputs at a time, all in registers: for the outputs whose window starts at input
// column c, the window's rows are reduced first (columns c..c+15, and c+2..c+9 and
// c+9..c+16 for a third column), then even and odd columns are split by shuffles. The
// separable loop below goes through a scratch row that it reads back at an odd offset
// right after writing it, which stalls every load on the store buffer. Outputs whose
// window leaves the row, and those right of the last group that fits, take the scalar
// maxpool_window. NaN wins in
// both, so the values are those of the reference (only the sign of a zero or which NaN
// may differ).
void maxpool_plane_s2(const float* x, const PoolPlane& p, float* y) {
  const bool three = p.kw == 3;
  const int64_t reach = three ? 17 : 16;  // floats read from the first window's column
  const int64_t ox_lo = std::min(p.ow, (p.pw + 1) / 2);  // first ox with 2 ox - pw >= 0
  auto fits = [&](int64_t ox) { return ox + 8 <= p.ow && 2 * ox - p.pw + reach <= p.w; };
  int64_t ox_hi = ox_lo;
  while (fits(ox_hi)) ox_hi += 8;
  // One more group that overlaps the last one, as far right as the row allows, so that
  // few outputs are left to the scalar loop (ResNet-50's 112 -> 56: none but the first).
  int64_t extra = -1;
  if (ox_hi > ox_lo && ox_hi < p.ow) {
    const int64_t last = std::min(p.ow - 8, (p.w - reach + p.pw) / 2);
    if (last > ox_hi - 8 && fits(last)) extra = last;
  }
  const int64_t ox_tail = extra >= 0 ? extra + 8 : ox_hi;
  const __m256 lowest = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
  for (int64_t oy = 0; oy < p.oh; ++oy) {
    float* yrow = y + oy * p.ow;
    const int64_t y0 = std::max<int64_t>(oy * p.sh - p.ph, 0);
    const int64_t y1 = std::min(oy * p.sh - p.ph + p.kh, p.h);
    for (int64_t ox = 0; ox < ox_lo; ++ox) yrow[ox] = maxpool_window(x, p, oy, ox);
    for (int64_t g = ox_lo; g <= ox_hi; g += 8) {
      const int64_t ox = g < ox_hi ? g : extra;
      if (ox < 0) break;
      const float* col = x + 2 * ox - p.pw;
      __m256 lo = lowest, hi = lowest, t2lo = lowest, t2hi = lowest;
      for (int64_t iy = y0; iy < y1; ++iy) {
        const float* r = col + iy * p.w;
        lo = max_nan8(lo, _mm256_loadu_ps(r));
        hi = max_nan8(hi, _mm256_loadu_ps(r + 8));
        if (three) {
          t2lo = max_nan8(t2lo, _mm256_loadu_ps(r + 2));
          t2hi = max_nan8(t2hi, _mm256_loadu_ps(r + 9));
        }
      }
      __m256 best = max_nan8(pick_pairs<_MM_SHUFFLE(2, 0, 2, 0)>(lo, hi),
                             pick_pairs<_MM_SHUFFLE(3, 1, 3, 1)>(lo, hi));
      // Columns c+2, c+4, ..., c+16: the even ones of c+2..c+9, the odd ones of c+9..c+16.
      if (three) best = max_nan8(best, pick_pairs<_MM_SHUFFLE(3, 1, 2, 0)>(t2lo, t2hi));
      _mm256_storeu_ps(yrow + ox, best);
    }
    for (int64_t ox = ox_tail; ox < p.ow; ++ox) yrow[ox] = maxpool_window(x, p, oy, ox);
  }
}
#endif

// One k x k stride-2 window at r (rows w apart) and its winner's offset from r: the first
// maximum in row-major order, or the first NaN (see maxpool_s2_argmax_row in eltwise.h).
template <int K>
inline void argmax_window(const float* r, int64_t w, float* y, int32_t* at) {
  float best = r[0];
  int32_t off = 0;
  for (int a = 0; a < K; ++a)
    for (int b = 0; b < K; ++b) {
      const float v = r[a * w + b];
      // A larger value, or the first NaN (best is NaN once one was taken).
      const bool take = v > best || (v != v && best == best);
      best = take ? v : best;
      off = take ? static_cast<int32_t>(a * w + b) : off;
    }
  *y = best;
  *at = off;
}

#if defined(__AVX2__)
// argmax_window for eight neighbouring outputs of a row at once: each window element
// (a, b) in row-major order is compared across the eight windows (their columns b split
// out of the rows by shuffles as in maxpool_plane_s2), with the same rule, so the values
// and indices are those of argmax_window bit for bit (NaN payloads included: the winner
// itself is stored). Reads columns 2j to 2j+15 of each row (2j+16 when K = 3): the eighth
// window's right end, so nothing outside the windows.
template <int K>
inline void argmax_group8(const float* r, int64_t w, float* y, int32_t* at) {
  __m256 best = _mm256_setzero_ps();
  __m256i off = _mm256_setzero_si256();
  for (int a = 0; a < K; ++a) {
    const float* row = r + a * w;
    const __m256 lo = _mm256_loadu_ps(row), hi = _mm256_loadu_ps(row + 8);
    __m256 v[K];
    v[0] = pick_pairs<_MM_SHUFFLE(2, 0, 2, 0)>(lo, hi);  // columns 2j
    v[1] = pick_pairs<_MM_SHUFFLE(3, 1, 3, 1)>(lo, hi);  // 2j + 1
    if constexpr (K == 3)  // 2j + 2: the even ones of row[2..9], the odd ones of row[9..16]
      v[K - 1] = pick_pairs<_MM_SHUFFLE(3, 1, 2, 0)>(_mm256_loadu_ps(row + 2), _mm256_loadu_ps(row + 9));
    for (int b = 0; b < K; ++b) {
      if (a == 0 && b == 0) {
        best = v[0];
        continue;
      }
      const __m256i o = _mm256_set1_epi32(static_cast<int32_t>(a * w + b));
      const __m256 more = _mm256_cmp_ps(v[b], best, _CMP_GT_OQ);
      const __m256 first_nan = _mm256_andnot_ps(_mm256_cmp_ps(best, best, _CMP_UNORD_Q),
                                                _mm256_cmp_ps(v[b], v[b], _CMP_UNORD_Q));
      const __m256 take = _mm256_or_ps(more, first_nan);
      best = _mm256_blendv_ps(best, v[b], take);
      off = _mm256_blendv_epi8(off, o, _mm256_castps_si256(take));
    }
  }
  _mm256_storeu_ps(y, best);
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(at), off);
}
#endif

// maxpool_s2_argmax_row for K x K windows: eight outputs at a time in the AVX2 build.
template <int K>
void maxpool_s2_argmax_row_k(const float* r, int64_t w, int64_t count, int32_t base, float* y,
                             int32_t* arg) {
  int64_t j = 0;
#if defined(__AVX2__)
  if (count >= 8) {
    const __m256i lane2 = _mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14);
    auto group = [&](int64_t g) {
      argmax_group8<K>(r + 2 * g, w, y + g, arg + g);
      const __m256i at = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(arg + g));
      const __m256i idx = _mm256_add_epi32(_mm256_add_epi32(at, lane2),
                                           _mm256_set1_epi32(base + static_cast<int32_t>(2 * g)));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(arg + g), idx);
    };
    for (; j + 8 <= count; j += 8) group(j);
    // The last few outputs: one more group that overlaps the one before (same results).
    if (j < count) group(count - 8);
    return;
  }
#endif
  for (; j < count; ++j) {
    int32_t at = 0;
    argmax_window<K>(r + 2 * j, w, y + j, &at);
    arg[j] = base + static_cast<int32_t>(2 * j) + at;
  }
}

void maxpool_s2_argmax_row(const float* r, int64_t w, int64_t count, int32_t base, float* y,
                           int32_t* arg, int k) {
  if (k == 2)
    maxpool_s2_argmax_row_k<2>(r, w, count, base, y, arg);
  else
    maxpool_s2_argmax_row_k<3>(r, w, count, base, y, arg);
}

// Separable: for each output row, the maximum of every input column over the window's
// rows (a contiguous pass that vectorises), then each output's maximum over its columns.
// The same values as maxpool_window per output (the maximum of the same set, NaN when any
// is NaN); only which of -0 and +0, or which NaN, comes out may differ. The AVX2 build
// sends stride-2 windows 2 or 3 wide to maxpool_plane_s2 instead.
void maxpool_plane(const float* x, const PoolPlane& p, float* y) {
#if defined(__AVX2__)
  if (p.sw == 2 && (p.kw == 2 || p.kw == 3)) return maxpool_plane_s2(x, p, y);
#endif
  float* c = pool_scratch(std::max<int64_t>(p.w, 1));
  const float lowest = -std::numeric_limits<float>::infinity();
  for (int64_t oy = 0; oy < p.oh; ++oy) {
    const int64_t y0 = oy * p.sh - p.ph;
    const int64_t ya = std::max<int64_t>(y0, 0), yb = std::min(y0 + p.kh, p.h);
    if (ya >= yb) {
      std::fill(c, c + p.w, lowest);
    } else {
      std::copy(x + ya * p.w, x + (ya + 1) * p.w, c);
      for (int64_t iy = ya + 1; iy < yb; ++iy) {
        const float* row = x + iy * p.w;
        for (int64_t ix = 0; ix < p.w; ++ix) c[ix] = max_nan(c[ix], row[ix]);
      }
    }
    if (p.sw == 2)
      pool_row<2>(c, p, y + oy * p.ow);
    else
      pool_row<0>(c, p, y + oy * p.ow);
  }
}
// The table of the kernels above.
constexpr EltwiseKernels eltwise_table() {
  return EltwiseKernels{relu,          relu_backward, add,
                        add_into,      normalize,     maxpool_plane,
                        maxpool_s2_argmax_row, bn_grad_train, bn_grad_eval};
}

}  // namespace
}  // namespace isplit
