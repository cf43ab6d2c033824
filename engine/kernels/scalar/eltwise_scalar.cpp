// Scalar reference element-wise and pooling kernels (engine/kernels/eltwise.h): the
// portable kernels of engine/kernels/eltwise_impl.h built for the baseline ISA, and the
// dispatch by ISA.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "engine/kernels/eltwise.h"
#include "engine/kernels/eltwise_impl.h"

namespace isplit {

float* pool_scratch(int64_t n) {
  thread_local std::vector<float> buf;
  if (static_cast<int64_t>(buf.size()) < n) buf.resize(static_cast<size_t>(n));
  return buf.data();
}

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

const EltwiseKernels kEltwiseScalar = eltwise_table();

void maxpool_s2_argmax_row_ref(const float* r, int64_t w, int64_t count, int32_t base, float* y,
                               int32_t* arg, int k) {
  maxpool_s2_argmax_row(r, w, count, base, y, arg, k);
}

const EltwiseKernels& eltwise_kernels(Isa isa) {
#if defined(ISPLIT_HAVE_NEON_KERNELS)
  if (isa == Isa::Neon) return kEltwiseNeon;
#endif
#if defined(ISPLIT_HAVE_X86_KERNELS)
  if (isa == Isa::Avx2 || isa == Isa::Avx512) return kEltwiseAvx2;
#endif
  (void)isa;
  return kEltwiseScalar;
}

const EltwiseKernels& eltwise() { return eltwise_kernels(active_isa()); }

}  // namespace isplit
