// Per-layer benchmarks: every distinct convolution of ResNet-50 and VGG16 (batch 1, at
// 224x224 and 64x64 network input) through the path the models take at inference
// (Conv2d packed: Winograd where it pays, else the GEMM on prepacked weights, bias and
// ReLU in the epilogue), and the same layer's importance step (forward + data gradient,
// no weight gradient), two threads. "GFLOPS" counts the direct convolution's multiply-adds
// (2 * Cout * Cin * kh * kw * OH * OW, twice that for the importance step); the label
// says which path ran. Inputs rotate through copies so that each call starts from memory,
// as between layers of a network.
//   build/isplit_bench --benchmark_filter=Layer/
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "bench/bench_util.h"
#include "engine/parallel.h"
#include "engine/tape.h"
#include "layers/modules.h"
#include "layers/winograd.h"

namespace {

using isplit::Tensor;

// One convolution: channels, kernel, stride, and its input's spatial size.
struct LayerShape {
  const char* name;
  int64_t cin, cout, kernel, stride, hw;
};

// The distinct convolutions of ResNet-50 (padding kernel / 2) at a 224x224 input; the
// 64x64 set divides every spatial size by 3.5.
const LayerShape kResNet224[] = {
    {"r50_stem_7x7s2", 3, 64, 7, 2, 224},
    {"r50_l1_1x1_in", 64, 64, 1, 1, 56},      {"r50_l1_3x3", 64, 64, 3, 1, 56},
    {"r50_l1_1x1_out", 64, 256, 1, 1, 56},    {"r50_l1_1x1_red", 256, 64, 1, 1, 56},
    {"r50_l2_1x1_in0", 256, 128, 1, 1, 56},   {"r50_l2_3x3s2", 128, 128, 3, 2, 56},
    {"r50_l2_ds_s2", 256, 512, 1, 2, 56},     {"r50_l2_1x1_out", 128, 512, 1, 1, 28},
    {"r50_l2_1x1_red", 512, 128, 1, 1, 28},   {"r50_l2_3x3", 128, 128, 3, 1, 28},
    {"r50_l3_1x1_in0", 512, 256, 1, 1, 28},   {"r50_l3_3x3s2", 256, 256, 3, 2, 28},
    {"r50_l3_ds_s2", 512, 1024, 1, 2, 28},    {"r50_l3_1x1_out", 256, 1024, 1, 1, 14},
    {"r50_l3_1x1_red", 1024, 256, 1, 1, 14},  {"r50_l3_3x3", 256, 256, 3, 1, 14},
    {"r50_l4_1x1_in0", 1024, 512, 1, 1, 14},  {"r50_l4_3x3s2", 512, 512, 3, 2, 14},
    {"r50_l4_ds_s2", 1024, 2048, 1, 2, 14},   {"r50_l4_1x1_out", 512, 2048, 1, 1, 7},
    {"r50_l4_1x1_red", 2048, 512, 1, 1, 7},   {"r50_l4_3x3", 512, 512, 3, 1, 7},
};

// The distinct convolutions of VGG16 (3x3, stride 1, padding 1) at 224x224.
const LayerShape kVgg224[] = {
    {"vgg_conv1_1", 3, 64, 3, 1, 224},     {"vgg_conv1_2", 64, 64, 3, 1, 224},
    {"vgg_conv2_1", 64, 128, 3, 1, 112},   {"vgg_conv2_2", 128, 128, 3, 1, 112},
    {"vgg_conv3_1", 128, 256, 3, 1, 56},   {"vgg_conv3_2", 256, 256, 3, 1, 56},
    {"vgg_conv4_1", 256, 512, 3, 1, 28},   {"vgg_conv4_2", 512, 512, 3, 1, 28},
    {"vgg_conv5_1", 512, 512, 3, 1, 14},
};

using isplit::bench::filled;

enum class Step { Forward, Importance };

// Times one layer at input size hw, forward or importance step.
void bm_layer(benchmark::State& state, LayerShape c, int64_t hw, Step step) {
  const int saved = isplit::num_threads();
  isplit::set_num_threads(2);
  isplit::Conv2d conv(c.cin, c.cout, c.kernel, c.stride, c.kernel / 2, true);
  conv.weight.value = filled(conv.weight.value.shape(), 1);
  conv.bias.value = filled({c.cout}, 2);
  conv.set_training(false);
  conv.pack_for_inference(true);
  const double bytes = 4.0 * c.cin * hw * hw;
  const int copies = static_cast<int>(std::clamp(64e6 / bytes, 1.0, 8.0));
  std::vector<Tensor> xs;
  for (int i = 0; i < copies; ++i) xs.push_back(filled({1, c.cin, hw, hw}, 3 + i));
  const isplit::Shape ys = conv.out_shape(xs[0].shape());
  const Tensor gy = filled(ys, 20);
  (void)conv.infer(xs[0], true);  // packs the weights (once per layer, not timed)
  int it = 0;
  for (auto _ : state) {
    const Tensor& x = xs[static_cast<size_t>(it++ % copies)];
    if (step == Step::Forward) {
      Tensor y = conv.infer(x, true);
      benchmark::DoNotOptimize(y.data());
    } else {
      isplit::Tape tape = isplit::Tape::activations_only();
      // The input wants its gradient, as every layer's input but the image's does in the
      // importance pass; without it the backward would skip the data gradient.
      isplit::Var y = conv.forward(&tape, tape.input(x, /*requires_grad=*/true));
      tape.backward(y, gy);
    }
    benchmark::ClobberMemory();
  }
  const bool winograd = step == Step::Forward ? isplit::winograd_pays(xs[0].shape(), conv.spec())
                                              : isplit::winograd_backward_pays(gy.shape(), conv.spec());
  state.SetLabel(winograd ? "winograd" : "gemm");
  const double flops = 2.0 * c.cout * c.cin * c.kernel * c.kernel * ys[2] * ys[3] *
                       (step == Step::Forward ? 1.0 : 2.0);
  state.counters["GFLOPS"] = benchmark::Counter(flops * 1e-9, benchmark::Counter::kIsIterationInvariantRate,
                                                benchmark::Counter::OneK::kIs1000);
  isplit::set_num_threads(saved);
}

// Registers one model's layers at both input sizes and both steps.
void register_model(const LayerShape* shapes, size_t count) {
  for (int64_t input : {224, 64})
    for (size_t i = 0; i < count; ++i) {
      const LayerShape& c = shapes[i];
      // Spatial sizes scale with the network input (224 -> 64 divides by 3.5).
      const int64_t hw = input == 224 ? c.hw : std::max<int64_t>(1, c.hw * 2 / 7);
      if (c.kernel > hw + 2 * (c.kernel / 2)) continue;
      for (Step step : {Step::Forward, Step::Importance}) {
        const std::string name = std::string("Layer/") + (step == Step::Forward ? "fwd/" : "imp/") +
                                 c.name + "/" + std::to_string(c.cin) + "to" +
                                 std::to_string(c.cout) + "@" + std::to_string(hw) + "/in" +
                                 std::to_string(input);
        benchmark::RegisterBenchmark(name.c_str(), bm_layer, c, hw, step)
            ->Unit(benchmark::kMillisecond)
            ->MinTime(0.1)
            ->UseRealTime();
      }
    }
}

int register_layer_benchmarks() {
  register_model(kResNet224, sizeof(kResNet224) / sizeof(kResNet224[0]));
  register_model(kVgg224, sizeof(kVgg224) / sizeof(kVgg224[0]));
  return 0;
}

const int kRegistered = register_layer_benchmarks();

}  // namespace
