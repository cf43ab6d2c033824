// Prepacked GEMM benchmarks with cold weights: the batch-1 convolution shapes whose
// weights stream from memory in a whole-network pass (ResNet-50's layers 3 and 4 at
// 224x224 and 64x64 inputs), through gemm_prepacked as the packed layers call it (the
// orientation rule picks lanes along M for the narrow ones). The weights rotate through
// enough copies (about 100 MB) that each call reads them from memory, not from the L3.
// Reports GFLOP/s and the weights' read rate in GB/s.
//   build/isplit_bench --benchmark_filter=Prepacked/
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "bench/bench_util.h"
#include "engine/cpu.h"
#include "engine/gemm_prepacked.h"
#include "engine/parallel.h"

namespace {

// One weights x activations product: C [m x n] = W [m x k] X [k x n].
struct ColdShape {
  const char* name;
  int64_t m, n, k;
};

const ColdShape kColdShapes[] = {
    // 224x224 input: layer3 (14x14 maps) and layer4 (7x7) 1x1 convolutions, layer4's 3x3
    // as a GEMM on its im2col.
    {"r50_l3_1x1_out_224", 1024, 196, 256},
    {"r50_l3_1x1_red_224", 256, 196, 1024},
    {"r50_l4_1x1_out_224", 2048, 49, 512},
    {"r50_l4_1x1_red_224", 512, 49, 2048},
    {"r50_l4_3x3_224", 512, 49, 4608},
    // 64x64 input: layer3 (4x4 maps) and layer4 (2x2).
    {"r50_l3_1x1_red_64", 256, 16, 1024},
    {"r50_l3_3x3_64", 256, 16, 2304},
    {"r50_l4_1x1_red_64", 512, 4, 2048},
    {"r50_l4_1x1_out_64", 2048, 4, 512},
    {"r50_l4_3x3_64", 512, 4, 4608},
};

// Times gemm_prepacked on one shape, ISA and thread count with the weights cold.
void bm_prepacked_cold(benchmark::State& state, ColdShape s, isplit::Isa isa, int threads) {
  const int saved_threads = isplit::num_threads();
  const isplit::Isa saved_isa = isplit::active_isa();
  isplit::set_active_isa(isa);
  isplit::set_num_threads(threads);
  const double weight_bytes = 4.0 * static_cast<double>(s.m * s.k);
  const int copies = static_cast<int>(std::clamp(100e6 / weight_bytes, 2.0, 64.0));
  const isplit::Tensor x = isplit::bench::filled({s.k, s.n}, 2);
  isplit::Tensor c = isplit::Tensor::empty({s.m, s.n});
  std::vector<std::unique_ptr<isplit::PackedMatrix>> packed;
  {
    const isplit::Tensor w = isplit::bench::filled({s.m, s.k}, 1);
    for (int i = 0; i < copies; ++i) {
      packed.push_back(std::make_unique<isplit::PackedMatrix>(false, s.m, s.k, w.data(), s.k));
      // Makes the layout this shape runs with, then lets the source go, as a packed layer does.
      isplit::gemm_prepacked(*packed.back(), false, s.n, x.data(), s.n, 0.0f, c.data(), s.n);
      if (!packed.back()->release_source()) {
        state.SkipWithError("the packed weights could not let their source go");
        break;
      }
    }
  }
  int it = 0;
  for (auto _ : state) {
    isplit::gemm_prepacked(*packed[static_cast<size_t>(it++ % copies)], false, s.n, x.data(), s.n,
                           0.0f, c.data(), s.n);
    benchmark::DoNotOptimize(c.data());
    benchmark::ClobberMemory();
  }
  state.counters["GFLOPS"] = benchmark::Counter(2e-9 * static_cast<double>(s.m) * s.n * s.k,
                                                benchmark::Counter::kIsIterationInvariantRate,
                                                benchmark::Counter::OneK::kIs1000);
  state.counters["weights_GBps"] = benchmark::Counter(
      1e-9 * weight_bytes, benchmark::Counter::kIsIterationInvariantRate,
      benchmark::Counter::OneK::kIs1000);
  isplit::set_num_threads(saved_threads);
  isplit::set_active_isa(saved_isa);
}

// Registers every shape for the ISAs with prepacked kernels, on one and two threads.
int register_prepacked_benchmarks() {
  for (isplit::Isa isa : {isplit::Isa::Avx2, isplit::Isa::Avx512, isplit::Isa::Neon}) {
    if (!isplit::isa_supported(isa) || !isplit::prepack_kernels(isa)) continue;
    for (int threads : {1, 2})
      for (const ColdShape& s : kColdShapes) {
        const std::string name = "Prepacked/" + isplit::isa_name(isa) + "/t" +
                                 std::to_string(threads) + "/" + s.name + "/" +
                                 std::to_string(s.m) + "x" + std::to_string(s.n) + "x" +
                                 std::to_string(s.k);
        auto* b = benchmark::RegisterBenchmark(name.c_str(), bm_prepacked_cold, s, isa, threads)
                      ->Unit(benchmark::kMicrosecond)
                      ->MinTime(0.2);
        if (threads > 1) b->UseRealTime();  // the work runs on the thread pool
      }
  }
  return 0;
}

const int kRegistered = register_prepacked_benchmarks();

}  // namespace
