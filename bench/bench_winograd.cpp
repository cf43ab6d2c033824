// Winograd F(4x4, 3x3) transform kernels (engine/kernels/winograd.h), per ISA, one thread:
// input16 and output16 on sixteen tiles with the position stride run_winograd uses
// (channels x tile stride plus a pad, "padded") and without the pad ("4k", a multiple of
// 4 KiB, which puts all 36 positions into one L1 set), and filter_row on one panel of
// taps; the F(2x2, 3x3) ones ("f2", padded stride) likewise. Reports ns per call and
// transformed values per second.
#include <benchmark/benchmark.h>

#include <cstdint>
#include <string>

#include "bench/bench_util.h"
#include "engine/cpu.h"
#include "engine/kernels/winograd.h"

namespace {

using isplit::Isa;
using isplit::Tensor;
using isplit::WinogradKernels;
using isplit::bench::filled;

constexpr int64_t kLanes = isplit::kWinogradLanes;
constexpr int64_t kSets = 64;  // distinct blocks of tiles, cycled through (about 2.4 MB)

// Position stride of a 64-channel layer with 64 tiles per block, padded or not.
int64_t position_stride(bool padded) { return 64 * 64 + (padded ? 16 : 0); }

// input16: sixteen 6x6 patches to the 36 positions of the transformed-input buffer.
void bm_input16(benchmark::State& state, Isa isa, bool padded) {
  const WinogradKernels& k = isplit::winograd_kernels(isa);
  const int64_t pos = position_stride(padded);
  const Tensor in = filled({kSets * 36 * kLanes}, 1);
  Tensor v = Tensor::zeros({36 * pos});
  int64_t i = 0;
  for (auto _ : state) {
    const int64_t set = i++ % kSets;
    k.input16(in.data() + set * 36 * kLanes, v.data() + set * kLanes, pos);
    benchmark::ClobberMemory();
  }
  state.counters["values"] = benchmark::Counter(36.0 * kLanes, benchmark::Counter::kIsIterationInvariantRate);
}

// output16: the 36 positions of sixteen tiles' products to their 4x4 outputs (bias, ReLU).
void bm_output16(benchmark::State& state, Isa isa, bool padded) {
  const WinogradKernels& k = isplit::winograd_kernels(isa);
  const int64_t pos = position_stride(padded);
  const Tensor m = filled({36 * pos}, 2);
  Tensor out = Tensor::zeros({kSets * 16 * kLanes});
  int64_t i = 0;
  for (auto _ : state) {
    const int64_t set = i++ % kSets;
    k.output16(m.data() + set * kLanes, pos, 0.25f, true, out.data() + set * 16 * kLanes);
    benchmark::ClobberMemory();
  }
  state.counters["values"] = benchmark::Counter(16.0 * kLanes, benchmark::Counter::kIsIterationInvariantRate);
}

// filter_row: the six rows of the filter transform of 6 x 256 filters (one AVX2 panel of
// ResNet-50 layer3's 3x3 convolution), taps and results in L1 and L2.
void bm_filter_rows(benchmark::State& state, Isa isa) {
  const WinogradKernels& k = isplit::winograd_kernels(isa);
  const int64_t len = 6 * 256, tap_stride = len + 16;
  const Tensor taps = filled({9 * tap_stride}, 3);
  Tensor out = Tensor::zeros({6 * tap_stride});
  float* o[6];
  for (int64_t j = 0; j < 6; ++j) o[j] = out.data() + j * tap_stride;
  for (auto _ : state) {
    for (int row = 0; row < 6; ++row) k.filter_row(taps.data(), tap_stride, len, row, o);
    benchmark::ClobberMemory();
  }
  state.counters["values"] = benchmark::Counter(36.0 * len, benchmark::Counter::kIsIterationInvariantRate);
}

// The F(2x2, 3x3) transforms: input16_2 and output16_2 on sixteen tiles (padded stride),
// the four filter rows of one panel as bm_filter_rows.
void bm_f2(benchmark::State& state, Isa isa, int which) {
  const WinogradKernels& k = isplit::winograd_kernels(isa);
  const int64_t pos = position_stride(true), len = 6 * 256, tap_stride = len + 16;
  const Tensor in = filled({kSets * 16 * kLanes}, 4), m = filled({16 * pos}, 5);
  const Tensor taps = filled({9 * tap_stride}, 6);
  Tensor v = Tensor::zeros({16 * pos}), out = Tensor::zeros({kSets * 4 * kLanes});
  Tensor rows = Tensor::zeros({4 * tap_stride});
  float* o[4];
  for (int64_t j = 0; j < 4; ++j) o[j] = rows.data() + j * tap_stride;
  int64_t i = 0;
  for (auto _ : state) {
    const int64_t set = i++ % kSets;
    if (which == 0)
      k.input16_2(in.data() + set * 16 * kLanes, v.data() + set * kLanes, pos);
    else if (which == 1)
      k.output16_2(m.data() + set * kLanes, pos, 0.25f, true, out.data() + set * 4 * kLanes);
    else
      for (int row = 0; row < 4; ++row) k.filter_row_2(taps.data(), tap_stride, len, row, o);
    benchmark::ClobberMemory();
  }
  const double values = which == 0 ? 16.0 * kLanes : which == 1 ? 4.0 * kLanes : 16.0 * len;
  state.counters["values"] = benchmark::Counter(values, benchmark::Counter::kIsIterationInvariantRate);
}

// Registers the transforms for every ISA this machine runs.
int register_winograd_benchmarks() {
  for (Isa isa : {Isa::Scalar, Isa::Avx2, Isa::Avx512, Isa::Neon}) {
    if (!isplit::isa_supported(isa)) continue;
    const std::string tag = isplit::isa_name(isa);
    for (bool padded : {true, false}) {
      const std::string stride = padded ? "padded" : "4k";
      benchmark::RegisterBenchmark(("WinogradTransform/input16/" + tag + "/" + stride).c_str(),
                                   bm_input16, isa, padded);
      benchmark::RegisterBenchmark(("WinogradTransform/output16/" + tag + "/" + stride).c_str(),
                                   bm_output16, isa, padded);
    }
    benchmark::RegisterBenchmark(("WinogradTransform/filter_rows/" + tag).c_str(), bm_filter_rows,
                                 isa);
    const char* f2_names[] = {"input16_2", "output16_2", "filter_rows_2"};
    for (int which = 0; which < 3; ++which)
      benchmark::RegisterBenchmark(
          ("WinogradTransform/" + std::string(f2_names[which]) + "/" + tag + "/f2").c_str(), bm_f2,
          isa, which);
  }
  return 0;
}

const int kRegistered = register_winograd_benchmarks();

}  // namespace
