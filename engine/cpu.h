// Which SIMD instruction sets this CPU offers, and which kernel family is in use.
#pragma once
#include <string>

namespace isplit {

enum class Isa { Scalar, Avx2, Avx512, Neon };

// The best ISA both compiled in and supported by this CPU: on x86-64 chosen at run time
// (cpuid) among AVX-512 and AVX2; on AArch64 NEON, chosen at build time (Advanced SIMD is
// part of the base ISA).
Isa best_isa();
// The ISA the kernels dispatch to: best_isa(), or the ISPLIT_ISA environment variable
// (scalar, avx2, avx512, neon) when it names a supported one, or set_active_isa().
Isa active_isa();
// Forces the kernels onto one ISA (must be supported); used by tests and benchmarks.
void set_active_isa(Isa isa);
// True when this build has kernels for the ISA and the CPU runs them.
bool isa_supported(Isa isa);
// Lower-case name of an ISA ("scalar", "avx2", "avx512", "neon").
std::string isa_name(Isa isa);

// An on/off switch from the environment variable `name`: 1 or on, 0 or off, fallback when
// unset or empty; throws Error naming the variable for anything else.
bool env_switch(const char* name, bool fallback);

}  // namespace isplit
