// AVX2 element-wise and pooling kernels (engine/kernels/eltwise.h): the portable kernels
// of engine/kernels/eltwise_impl.h built with -mavx2 (no FMA: nothing may be fused), so
// that their loops vectorise eight lanes wide. Also the table of AVX-512 CPUs.
#include "engine/kernels/eltwise_impl.h"

namespace isplit {

const EltwiseKernels kEltwiseAvx2 = eltwise_table();

}  // namespace isplit
