#include "engine/cpu.h"

#include <cstdlib>

#include "engine/tensor.h"

namespace isplit {

namespace {
bool g_forced = false;
Isa g_active = Isa::Scalar;
}  // namespace

bool isa_supported(Isa isa) {
  switch (isa) {
    case Isa::Scalar:
      return true;
#if defined(ISPLIT_HAVE_X86_KERNELS)
    case Isa::Avx2:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case Isa::Avx512:
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
             __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq");
#endif
#if defined(ISPLIT_HAVE_NEON_KERNELS)
    case Isa::Neon:
      return true;
#endif
    default:
      return false;
  }
}

Isa best_isa() {
  for (Isa isa : {Isa::Avx512, Isa::Avx2, Isa::Neon})
    if (isa_supported(isa)) return isa;
  return Isa::Scalar;
}

Isa active_isa() {
  if (g_forced) return g_active;
  // ISPLIT_ISA=scalar|avx2|avx512|neon caps the dispatch (tests, benchmarks, debugging).
  static const Isa chosen = [] {
    const char* env = std::getenv("ISPLIT_ISA");
    if (env && *env) {
      for (Isa isa : {Isa::Scalar, Isa::Avx2, Isa::Avx512, Isa::Neon})
        if (isa_name(isa) == env && isa_supported(isa)) return isa;
    }
    return best_isa();
  }();
  return chosen;
}

void set_active_isa(Isa isa) {
  if (!isa_supported(isa)) throw Error("ISA " + isa_name(isa) + " is not supported here");
  g_forced = true;
  g_active = isa;
}

std::string isa_name(Isa isa) {
  switch (isa) {
    case Isa::Scalar: return "scalar";
    case Isa::Avx2: return "avx2";
    case Isa::Avx512: return "avx512";
    case Isa::Neon: return "neon";
  }
  return "unknown";
}

bool env_switch(const char* name, bool fallback) {
  const char* env = std::getenv(name);
  if (!env || !*env) return fallback;
  const std::string v(env);
  if (v == "1" || v == "on") return true;
  if (v == "0" || v == "off") return false;
  throw Error(std::string(name) + ": expected 0, 1, on or off, got '" + v + "'");
}

}  // namespace isplit
