// Placeholder until the packed avx512 kernel lands: forwards to the reference.
#include "engine/gemm.h"
namespace isplit {
void gemm_avx512(const GemmArgs& args) { gemm_scalar(args); }
}  // namespace isplit
