// Scalar reference element-wise and pooling kernels (engine/kernels/eltwise.h).
#include <algorithm>
#include <cmath>
#include <limits>

#include "engine/kernels/eltwise.h"

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace isplit {

namespace {

void relu(const float* x, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = x[i] > 0.0f ? x[i] : 0.0f;
}

void relu_backward(const float* gy, const float* y, float* gx, int64_t n) {
  int64_t i = 0;
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

}  // namespace

// The maximum of one output position's clipped window (shared with the NEON edges).
float maxpool_window(const float* x, const PoolPlane& p, int64_t oy, int64_t ox) {
  const int64_t y0 = oy * p.sh - p.ph, x0 = ox * p.sw - p.pw;
  const int64_t y1 = std::min(y0 + p.kh, p.h), x1 = std::min(x0 + p.kw, p.w);
  float best = -std::numeric_limits<float>::infinity();
  for (int64_t iy = std::max<int64_t>(y0, 0); iy < y1; ++iy)
    for (int64_t ix = std::max<int64_t>(x0, 0); ix < x1; ++ix) {
      const float v = x[iy * p.w + ix];
      if (std::isnan(v)) return v;
      if (v > best) best = v;
    }
  return best;
}

namespace {
void maxpool_plane(const float* x, const PoolPlane& p, float* y) {
  for (int64_t oy = 0; oy < p.oh; ++oy)
    for (int64_t ox = 0; ox < p.ow; ++ox) y[oy * p.ow + ox] = maxpool_window(x, p, oy, ox);
}
}  // namespace

const EltwiseKernels kEltwiseScalar = {relu,      relu_backward, add,          add_into,
                                       normalize, maxpool_plane, bn_grad_train, bn_grad_eval};

const EltwiseKernels& eltwise_kernels(Isa isa) {
#if defined(ISPLIT_HAVE_NEON_KERNELS)
  if (isa == Isa::Neon) return kEltwiseNeon;
#endif
  (void)isa;
  return kEltwiseScalar;
}

const EltwiseKernels& eltwise() { return eltwise_kernels(active_isa()); }

}  // namespace isplit
