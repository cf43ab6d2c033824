// Convolution layer benchmarks: every distinct 3x3 stride-1 convolution of ResNet-50 and
// VGG16 (batch 1, at 224x224 and 64x64 network input), forward by the direct path
// (im2col + GEMM) and by Winograd F(4x4, 3x3), and the data gradient both ways, on two
// threads. "GFLOPS" counts the direct convolution's multiply-adds (2 * Cout * Cin * 9 *
// OH * OW), so the two paths compare on the same scale (Winograd can exceed the peak).
// Inputs rotate through copies so that each call starts from memory, as between layers.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "bench/bench_util.h"
#include "engine/parallel.h"
#include "layers/functional.h"
#include "layers/winograd.h"

namespace {

using isplit::Conv2dSpec;
using isplit::Tensor;

// One benchmarked layer: channels and the input's spatial size.
struct ConvShape {
  const char* name;
  int64_t cin, cout, hw;
};

const ConvShape kConvShapes[] = {
    // ResNet-50 conv2 of the stride-1 blocks, 224x224 input.
    {"r50_l1_3x3", 64, 64, 56},
    {"r50_l2_3x3", 128, 128, 28},
    {"r50_l3_3x3", 256, 256, 14},
    {"r50_l4_3x3", 512, 512, 7},
    // The same at 64x64 input.
    {"r50_l1_3x3_s64", 64, 64, 16},
    {"r50_l2_3x3_s64", 128, 128, 8},
    // VGG16, 224x224 input (conv1_1 has 3 input channels: direct only in practice).
    {"vgg_conv1_2", 64, 64, 224},
    {"vgg_conv2_1", 64, 128, 112},
    {"vgg_conv2_2", 128, 128, 112},
    {"vgg_conv3_1", 128, 256, 56},
    {"vgg_conv3_2", 256, 256, 56},
    {"vgg_conv4_1", 256, 512, 28},
    {"vgg_conv4_2", 512, 512, 28},
    {"vgg_conv5_1", 512, 512, 14},
    // VGG16 at 64x64 input.
    {"vgg_conv1_2_s64", 64, 64, 64},
    {"vgg_conv2_2_s64", 128, 128, 32},
    {"vgg_conv3_2_s64", 256, 256, 16},
    {"vgg_conv4_2_s64", 512, 512, 8},
};

using isplit::bench::filled;

enum class Pass { Forward, DataGradient };

// Times one layer, one pass, direct or Winograd, on two threads.
void bm_conv(benchmark::State& state, ConvShape c, Pass pass, bool winograd) {
  const int saved = isplit::num_threads();
  isplit::set_num_threads(2);
  Conv2dSpec s;
  s.in_channels = c.cin;
  s.out_channels = c.cout;
  s.kh = s.kw = 3;
  s.pad_h = s.pad_w = 1;
  const Tensor w = filled({c.cout, c.cin, 3, 3}, 1);
  const isplit::WinogradFilter f =
      pass == Pass::Forward ? isplit::winograd_filter(w) : isplit::winograd_filter_transposed(w);
  const int64_t in_c = pass == Pass::Forward ? c.cin : c.cout;
  const double bytes = 4.0 * in_c * c.hw * c.hw;
  const int copies = static_cast<int>(std::clamp(64e6 / bytes, 1.0, 8.0));
  std::vector<Tensor> xs;
  for (int i = 0; i < copies; ++i) xs.push_back(filled({1, in_c, c.hw, c.hw}, 2 + i));
  Tensor gx = Tensor::zeros({1, c.cin, c.hw, c.hw});
  int it = 0;
  for (auto _ : state) {
    const Tensor& x = xs[static_cast<size_t>(it++ % copies)];
    if (pass == Pass::Forward) {
      Tensor y = winograd ? isplit::conv2d_forward_winograd(x, f, nullptr, s)
                          : isplit::conv2d_forward(x, w, nullptr, s);
      benchmark::DoNotOptimize(y.data());
    } else if (winograd) {
      isplit::conv2d_backward_data_winograd(x, f, s, gx);
    } else {
      isplit::conv2d_backward_data(x, w, s, gx);
    }
    benchmark::ClobberMemory();
  }
  state.counters["GFLOPS"] =
      benchmark::Counter(2e-9 * c.cout * c.cin * 9.0 * c.hw * c.hw,
                         benchmark::Counter::kIsIterationInvariantRate, benchmark::Counter::OneK::kIs1000);
  isplit::set_num_threads(saved);
}

// Registers every layer for both passes and both algorithms.
int register_conv_benchmarks() {
  for (const ConvShape& c : kConvShapes)
    for (Pass pass : {Pass::Forward, Pass::DataGradient})
      for (bool winograd : {false, true}) {
        const std::string name = std::string("Conv3x3/") +
                                 (pass == Pass::Forward ? "fwd/" : "dX/") +
                                 (winograd ? "winograd/" : "direct/") + c.name + "/" +
                                 std::to_string(c.cin) + "to" + std::to_string(c.cout) + "@" +
                                 std::to_string(c.hw);
        benchmark::RegisterBenchmark(name.c_str(), bm_conv, c, pass, winograd)
            ->Unit(benchmark::kMillisecond)
            ->MinTime(0.2)
            ->UseRealTime();
      }
  return 0;
}

const int kRegistered = register_conv_benchmarks();

}  // namespace
