// Placeholder until the packed avx2 kernel lands: forwards to the reference.
#include "engine/gemm.h"
namespace isplit {
void gemm_avx2(const GemmArgs& args) { gemm_scalar(args); }
}  // namespace isplit
