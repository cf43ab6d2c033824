// Element-wise and pooling kernels of the layers, one table per ISA: the scalar references
// (engine/kernels/scalar/eltwise_scalar.cpp), on x86 the same source built for AVX2
// (engine/kernels/avx2/eltwise_avx2.cpp, also used on AVX-512 CPUs) and, on AArch64, NEON
// versions (engine/kernels/neon/eltwise_neon.cpp). Every NEON kernel computes exactly what its
// reference does, operation for operation (no reassociated sums), so the two give the same
// bits - except that max pooling may return +0 where the reference keeps a -0 that came
// first in the window, and NaN payloads may differ (the same holds for the AVX2 table's
// stride-2 max pooling); tests/test_eltwise.cpp checks this on every supported ISA.
#pragma once
#include <cstdint>

#include "engine/cpu.h"

namespace isplit {

// One max-pooling plane: y[oy][ox] = max over the window at (oy*sh - ph, ox*sw - pw) of
// kh x kw clipped to the h x w input; NaN wins.
struct PoolPlane {
  int64_t h, w, oh, ow, kh, kw, sh, sw, ph, pw;
};

struct EltwiseKernels {
  // y[i] = x[i] > 0 ? x[i] : 0 (NaN gives 0).
  void (*relu)(const float* x, float* y, int64_t n);
  // gx[i] += gy[i] where y[i] > 0.
  void (*relu_backward)(const float* gy, const float* y, float* gx, int64_t n);
  // y[i] = a[i] + b[i].
  void (*add)(const float* a, const float* b, float* y, int64_t n);
  // y[i] += x[i].
  void (*add_into)(float* y, const float* x, int64_t n);
  // y[i] = (x[i] - mean) * scale + shift, rounded after each operation.
  void (*normalize)(const float* x, float mean, float scale, float shift, float* y, int64_t n);
  // Max pooling of one plane (no argmax: inference).
  void (*maxpool_plane)(const float* x, const PoolPlane& p, float* y);
  // Outputs [0, count) of one row of k x k (k = 2 or 3) stride-2 max pooling and their
  // argmax, every window inside the plane: output j's window has its top-left at r[2 j],
  // rows w apart, taken in row-major order; the first maximum wins, and the first NaN wins
  // over everything. arg[j] is the flat index of the winner in its plane, base being that
  // of r[0]. Every table gives the same bits.
  void (*maxpool_s2_argmax_row)(const float* r, int64_t w, int64_t count, int32_t base, float* y,
                                int32_t* arg, int k);
  // BatchNorm input gradient, training mode, in double precision per element:
  // gx[i] += float(scale * (gy[i] - mg - ((x[i] - mean) * istd) * mgx)).
  void (*bn_grad_train)(const float* gy, const float* x, float* gx, int64_t n, double mean,
                        double istd, double scale, double mg, double mgx);
  // BatchNorm input gradient, evaluation mode: gx[i] += float(scale * gy[i]).
  void (*bn_grad_eval)(const float* gy, float* gx, int64_t n, double scale);
};

// The kernels of one ISA (must be supported; unsupported ones give the scalar table).
const EltwiseKernels& eltwise_kernels(Isa isa);
// The kernels of active_isa().
const EltwiseKernels& eltwise();

// A per-thread scratch buffer of at least n floats, valid until the thread's next call
// (the max pools' column maxima).
float* pool_scratch(int64_t n);

// The scalar maximum of one output position's window (the NEON kernel's edges use it).
float maxpool_window(const float* x, const PoolPlane& p, int64_t oy, int64_t ox);
// The scalar table's maxpool_s2_argmax_row (also the NEON table's).
void maxpool_s2_argmax_row_ref(const float* r, int64_t w, int64_t count, int32_t base, float* y,
                               int32_t* arg, int k);

// Tables behind eltwise_kernels().
extern const EltwiseKernels kEltwiseScalar;
#if defined(ISPLIT_HAVE_NEON_KERNELS)
extern const EltwiseKernels kEltwiseNeon;
#endif
#if defined(ISPLIT_HAVE_X86_KERNELS)
extern const EltwiseKernels kEltwiseAvx2;
#endif

}  // namespace isplit
