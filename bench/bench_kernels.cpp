// Kernel benchmarks: GEMM on the conv-as-GEMM and linear shapes of ResNet-50 and VGG16
// (batch 1, 224x224), per ISA, on one and two threads. Reports GFLOP/s.
//
// Conv layers map to GEMM as M = Cout, N = OH * OW, K = Cin * kh * kw (forward);
// backward adds dW = dY * col^T (trans_b) and dcol = W^T * dY (trans_a).
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "engine/cpu.h"
#include "engine/gemm.h"
#include "engine/parallel.h"

namespace {

using isplit::Isa;

// One benchmarked GEMM shape.
struct GemmShape {
  const char* name;
  int64_t m, n, k;
  bool ta, tb;
};

const GemmShape kShapes[] = {
    // ResNet-50 forward.
    {"r50_conv1_7x7", 64, 12544, 147, false, false},
    {"r50_l1_1x1_64", 64, 3136, 64, false, false},
    {"r50_l1_3x3_64", 64, 3136, 576, false, false},
    {"r50_l1_1x1_256", 256, 3136, 64, false, false},
    {"r50_l1_1x1_256to64", 64, 3136, 256, false, false},
    {"r50_l2_3x3_128", 128, 784, 1152, false, false},
    {"r50_l2_1x1_512", 512, 784, 128, false, false},
    {"r50_l3_3x3_256", 256, 196, 2304, false, false},
    {"r50_l3_1x1_1024", 1024, 196, 256, false, false},
    {"r50_l4_3x3_512", 512, 49, 4608, false, false},
    {"r50_l4_1x1_2048", 2048, 49, 512, false, false},
    {"r50_l4_1x1_2048to512", 512, 49, 2048, false, false},
    {"r50_fc", 1, 1000, 2048, false, true},
    // ResNet-50 backward (layer1 3x3): weight gradient and input (col) gradient.
    {"r50_l1_3x3_dW", 64, 576, 3136, false, true},
    {"r50_l1_3x3_dX", 576, 3136, 64, true, false},
    {"r50_l3_3x3_dW", 256, 2304, 196, false, true},
    {"r50_l3_3x3_dX", 2304, 196, 256, true, false},
    // VGG16 forward.
    {"vgg_conv1_1", 64, 50176, 27, false, false},
    {"vgg_conv1_2", 64, 50176, 576, false, false},
    {"vgg_conv2_1", 128, 12544, 576, false, false},
    {"vgg_conv3_2", 256, 3136, 2304, false, false},
    {"vgg_conv4_1", 512, 784, 2304, false, false},
    {"vgg_conv5_1", 512, 196, 4608, false, false},
    {"vgg_fc6", 1, 4096, 25088, false, true},
    {"vgg_fc7", 1, 4096, 4096, false, true},
    {"vgg_fc6_dX", 1, 25088, 4096, false, false},
    // Square reference sizes.
    {"square_1024", 1024, 1024, 1024, false, false},
    {"square_2048", 2048, 2048, 2048, false, false},
};

// Fills v with cheap pseudo-random values in [-1, 1).
void fill(std::vector<float>& v, uint32_t seed) {
  uint32_t s = seed * 2654435761u + 1u;
  for (float& x : v) {
    s = s * 1664525u + 1013904223u;
    x = static_cast<float>(s >> 8) * (2.0f / 16777216.0f) - 1.0f;
  }
}

// Times C = op(A) op(B) on one ISA and thread count, rotating through copies of the
// operands so that the working set exceeds the caches (as between real layers).
void bm_gemm(benchmark::State& state, GemmShape s, Isa isa, int threads) {
  const int saved_threads = isplit::num_threads();
  const Isa saved_isa = isplit::active_isa();
  isplit::set_active_isa(isa);
  isplit::set_num_threads(threads);
  const int64_t a_size = s.m * s.k, b_size = s.k * s.n, c_size = s.m * s.n;
  const double set_bytes = 4.0 * static_cast<double>(a_size + b_size + c_size);
  const int copies = static_cast<int>(std::clamp(64e6 / set_bytes, 1.0, 8.0));
  std::vector<std::vector<float>> as(copies), bs(copies), cs(copies);
  for (int i = 0; i < copies; ++i) {
    as[i].resize(static_cast<size_t>(a_size));
    bs[i].resize(static_cast<size_t>(b_size));
    cs[i].assign(static_cast<size_t>(c_size), 0.0f);
    fill(as[i], 3 * i + 1);
    fill(bs[i], 3 * i + 2);
  }
  const int64_t lda = s.ta ? s.m : s.k, ldb = s.tb ? s.k : s.n;
  int it = 0;
  for (auto _ : state) {
    const int i = it++ % copies;
    isplit::gemm(isplit::GemmArgs{s.ta, s.tb, s.m, s.n, s.k, as[i].data(), lda, bs[i].data(), ldb,
                                  0.0f, cs[i].data(), s.n});
    benchmark::DoNotOptimize(cs[i].data());
    benchmark::ClobberMemory();
  }
  state.counters["GFLOPS"] = benchmark::Counter(2e-9 * static_cast<double>(s.m) * s.n * s.k,
                                                benchmark::Counter::kIsIterationInvariantRate,
                                                benchmark::Counter::OneK::kIs1000);
  isplit::set_num_threads(saved_threads);
  isplit::set_active_isa(saved_isa);
}

// Registers every shape for every supported ISA (one thread) and the SIMD ISAs on two threads.
int register_gemm_benchmarks() {
  for (Isa isa : {Isa::Scalar, Isa::Avx2, Isa::Avx512}) {
    if (!isplit::isa_supported(isa)) continue;
    for (int threads : {1, 2}) {
      if (isa == Isa::Scalar && threads > 1) continue;
      for (const GemmShape& s : kShapes) {
        // The scalar reference is only timed on shapes it finishes in reasonable time.
        if (isa == Isa::Scalar && 2.0 * s.m * s.n * s.k > 2.5e9) continue;
        const std::string name = "Gemm/" + isplit::isa_name(isa) + "/t" + std::to_string(threads) +
                                 "/" + s.name + "/" + std::to_string(s.m) + "x" +
                                 std::to_string(s.n) + "x" + std::to_string(s.k);
        auto* b = benchmark::RegisterBenchmark(name.c_str(), bm_gemm, s, isa, threads)
                      ->Unit(benchmark::kMillisecond)
                      ->MinTime(0.2);
        // One thread: CPU time of the calling thread (robust on a busy machine); two
        // threads: wall time, since the work runs on the OpenMP team.
        if (threads > 1) b->UseRealTime();
      }
    }
  }
  return 0;
}

const int kRegistered = register_gemm_benchmarks();

}  // namespace
