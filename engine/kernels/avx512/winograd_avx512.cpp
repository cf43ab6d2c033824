// Winograd F(4x4, 3x3) transforms for AVX-512 (compiled with -mavx512f and friends).
#include "engine/kernels/winograd_impl.h"

namespace isplit {

const WinogradKernels kWinogradAvx512 = {winograd_impl::input16, winograd_impl::output16,
                                         winograd_impl::gather16, winograd_impl::interleave16,
                                         winograd_impl::filter_row, winograd_impl::input16_2,
    winograd_impl::output16_2, winograd_impl::gather16_2, winograd_impl::interleave16_2,
    winograd_impl::filter_row_2};

}  // namespace isplit
