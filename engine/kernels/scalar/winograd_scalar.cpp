// Winograd F(4x4, 3x3) transforms with baseline flags (on AArch64 the compiler vectorises
// them with NEON), and the table dispatch.
#include "engine/kernels/winograd_impl.h"

namespace isplit {

const WinogradKernels kWinogradScalar = {winograd_impl::input16, winograd_impl::output16,
                                         winograd_impl::gather16, winograd_impl::interleave16,
                                         winograd_impl::filter_row, winograd_impl::input16_2,
    winograd_impl::output16_2, winograd_impl::gather16_2, winograd_impl::interleave16_2,
    winograd_impl::filter_row_2};

const WinogradKernels& winograd_kernels(Isa isa) {
#if defined(ISPLIT_HAVE_X86_KERNELS)
  if (isa == Isa::Avx512) return kWinogradAvx512;
  if (isa == Isa::Avx2) return kWinogradAvx2;
#endif
  (void)isa;
  return kWinogradScalar;
}

}  // namespace isplit
