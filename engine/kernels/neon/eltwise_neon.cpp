// NEON element-wise and pooling kernels (engine/kernels/eltwise.h). Each does the scalar
// reference's operations in the same order, four lanes at a time, so results are equal
// bit for bit; the tails go through the same scalar expressions.
#include <arm_neon.h>

#include <algorithm>
#include <limits>

#include "engine/kernels/eltwise.h"

namespace isplit {

namespace {

void relu(const float* x, float* y, int64_t n) {
  const float32x4_t zero = vdupq_n_f32(0.0f);
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    const float32x4_t v = vld1q_f32(x + i);
    // x > 0 ? x : 0 by comparison and select: vmaxq_f32 would let NaN through.
    vst1q_f32(y + i, vbslq_f32(vcgtq_f32(v, zero), v, zero));
  }
  for (; i < n; ++i) y[i] = x[i] > 0.0f ? x[i] : 0.0f;
}

void relu_backward(const float* gy, const float* y, float* gx, int64_t n) {
  const float32x4_t zero = vdupq_n_f32(0.0f);
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    const float32x4_t d = vld1q_f32(gx + i);
    const uint32x4_t on = vcgtq_f32(vld1q_f32(y + i), zero);
    // Lanes that are off keep gx untouched (adding 0 would turn -0 into +0).
    vst1q_f32(gx + i, vbslq_f32(on, vaddq_f32(d, vld1q_f32(gy + i)), d));
  }
  for (; i < n; ++i)
    if (y[i] > 0.0f) gx[i] += gy[i];
}

void add(const float* a, const float* b, float* y, int64_t n) {
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) vst1q_f32(y + i, vaddq_f32(vld1q_f32(a + i), vld1q_f32(b + i)));
  for (; i < n; ++i) y[i] = a[i] + b[i];
}

void add_into(float* y, const float* x, int64_t n) {
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) vst1q_f32(y + i, vaddq_f32(vld1q_f32(y + i), vld1q_f32(x + i)));
  for (; i < n; ++i) y[i] += x[i];
}

void normalize(const float* x, float mean, float scale, float shift, float* y, int64_t n) {
  const float32x4_t m = vdupq_n_f32(mean), s = vdupq_n_f32(scale), t = vdupq_n_f32(shift);
  int64_t i = 0;
  for (; i + 4 <= n; i += 4)
    vst1q_f32(y + i, vaddq_f32(vmulq_f32(vsubq_f32(vld1q_f32(x + i), m), s), t));
  for (; i < n; ++i) y[i] = (x[i] - mean) * scale + shift;
}

// Max pooling. Stride-2 windows of width 2 or 3 (VGG16's 2x2 pools, ResNet-50's 3x3 stem
// pool) take four outputs at a time from de-interleaving loads: vld2q_f32 at column c
// gives columns c, c+2, ... in one register and c+1, c+3, ... in the other, the window's
// first two columns of four outputs; a second load at c+2 gives the third. Rows are
// clipped to the input like the reference; outputs whose window leaves the row, and every
// other shape, use the scalar reference. vmaxq_f32 returns NaN when either input is NaN,
// so NaN wins as in the reference.
void maxpool_plane(const float* x, const PoolPlane& p, float* y) {
  const bool vector = p.sw == 2 && (p.kw == 2 || p.kw == 3);
  // Outputs [ox_lo, ox_hi) have whole windows inside the row, with room for the loads.
  int64_t ox_lo = p.ow, ox_hi = p.ow;
  if (vector) {
    ox_lo = (p.pw + 1) / 2;  // first ox with ox*2 - pw >= 0
    const int64_t reach = p.kw == 3 ? 10 : 8;  // floats read from the window start per 4 outputs
    ox_hi = ox_lo;
    while (ox_hi + 4 <= p.ow && (ox_hi + 3) * 2 - p.pw + reach - 6 <= p.w) ox_hi += 4;
  }
  const float32x4_t lowest = vdupq_n_f32(-std::numeric_limits<float>::infinity());
  for (int64_t oy = 0; oy < p.oh; ++oy) {
    float* yrow = y + oy * p.ow;
    const int64_t y0 = std::max<int64_t>(oy * p.sh - p.ph, 0);
    const int64_t y1 = std::min(oy * p.sh - p.ph + p.kh, p.h);
    for (int64_t ox = 0; ox < ox_lo; ++ox) yrow[ox] = maxpool_window(x, p, oy, ox);
    for (int64_t ox = ox_lo; ox < ox_hi; ox += 4) {
      float32x4_t best = lowest;
      const int64_t c = ox * 2 - p.pw;
      for (int64_t iy = y0; iy < y1; ++iy) {
        const float* row = x + iy * p.w + c;
        const float32x4x2_t a = vld2q_f32(row);
        best = vmaxq_f32(best, vmaxq_f32(a.val[0], a.val[1]));
        if (p.kw == 3) best = vmaxq_f32(best, vld2q_f32(row + 2).val[0]);
      }
      vst1q_f32(yrow + ox, best);
    }
    for (int64_t ox = ox_hi; ox < p.ow; ++ox) yrow[ox] = maxpool_window(x, p, oy, ox);
  }
}

// The BatchNorm gradients widen four floats into two pairs of doubles and do the
// reference's double operations in its order, then round to float and add.
void bn_grad_train(const float* gy, const float* x, float* gx, int64_t n, double mean,
                   double istd, double scale, double mg, double mgx) {
  const float64x2_t vmean = vdupq_n_f64(mean), vistd = vdupq_n_f64(istd);
  const float64x2_t vscale = vdupq_n_f64(scale), vmg = vdupq_n_f64(mg), vmgx = vdupq_n_f64(mgx);
  auto half = [&](float64x2_t g, float64x2_t p) {
    const float64x2_t xhat = vmulq_f64(vsubq_f64(p, vmean), vistd);
    return vmulq_f64(vscale, vsubq_f64(vsubq_f64(g, vmg), vmulq_f64(xhat, vmgx)));
  };
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    const float32x4_t g = vld1q_f32(gy + i), p = vld1q_f32(x + i);
    const float64x2_t lo = half(vcvt_f64_f32(vget_low_f32(g)), vcvt_f64_f32(vget_low_f32(p)));
    const float64x2_t hi = half(vcvt_high_f64_f32(g), vcvt_high_f64_f32(p));
    const float32x4_t r = vcvt_high_f32_f64(vcvt_f32_f64(lo), hi);
    vst1q_f32(gx + i, vaddq_f32(vld1q_f32(gx + i), r));
  }
  for (; i < n; ++i) {
    const double xhat = (x[i] - mean) * istd;
    gx[i] += static_cast<float>(scale * (gy[i] - mg - xhat * mgx));
  }
}

void bn_grad_eval(const float* gy, float* gx, int64_t n, double scale) {
  const float64x2_t vscale = vdupq_n_f64(scale);
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    const float32x4_t g = vld1q_f32(gy + i);
    const float64x2_t lo = vmulq_f64(vscale, vcvt_f64_f32(vget_low_f32(g)));
    const float64x2_t hi = vmulq_f64(vscale, vcvt_high_f64_f32(g));
    vst1q_f32(gx + i, vaddq_f32(vld1q_f32(gx + i), vcvt_high_f32_f64(vcvt_f32_f64(lo), hi)));
  }
  for (; i < n; ++i) gx[i] += static_cast<float>(scale * gy[i]);
}

}  // namespace

const EltwiseKernels kEltwiseNeon = {relu,          relu_backward, add,
                                     add_into,      normalize,     maxpool_plane,
                                     maxpool_s2_argmax_row_ref, bn_grad_train, bn_grad_eval};

}  // namespace isplit
