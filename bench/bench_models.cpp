// Whole-model benchmarks: forward (BN folded, inference) and the importance step
// (forward + backward to every layer output, no weight gradients), batch 1.
//   build/isplit_bench --benchmark_filter=Model
#include <benchmark/benchmark.h>

#include <memory>
#include <random>

#include "engine/parallel.h"
#include "models/model.h"

using namespace isplit;

namespace {

Tensor random_input(int64_t size) {
  std::mt19937_64 rng(7);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  Tensor x = Tensor::empty({1, 3, size, size});
  for (int64_t i = 0; i < x.numel(); ++i) x[i] = dist(rng);
  return x;
}

void report(benchmark::State& state, Model& model, int64_t size) {
  double flops = 0;
  for (const auto& s : model.stage_info({1, 3, size, size})) flops += s.flops;
  state.counters["GFLOP/s"] = benchmark::Counter(flops * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["threads"] = num_threads();
}

void BM_ModelForward(benchmark::State& state, const char* arch) {
  const int64_t size = state.range(0);
  auto model = build_model(arch, 1000, 1);
  model->fold_batchnorm();
  const Tensor x = random_input(size);
  for (auto _ : state) benchmark::DoNotOptimize(model->predict(x).data());
  report(state, *model, size);
}

void BM_ModelImportance(benchmark::State& state, const char* arch) {
  const int64_t size = state.range(0);
  auto model = build_model(arch, 1000, 1);
  const Tensor x = random_input(size);
  for (auto _ : state) {
    Tape tape = Tape::activations_only();
    Var out = model->forward(&tape, tape.input(x));
    Tensor seed = Tensor::zeros(out.value.shape());
    seed[0] = 1.0f;
    tape.backward(out, seed);
    benchmark::DoNotOptimize(tape.size());
  }
  report(state, *model, size);
}

}  // namespace

BENCHMARK_CAPTURE(BM_ModelForward, resnet50, "resnet50")->Arg(224)->Arg(64)->Unit(benchmark::kMillisecond)->MinTime(2.0);
BENCHMARK_CAPTURE(BM_ModelForward, vgg16, "vgg16")->Arg(224)->Arg(64)->Unit(benchmark::kMillisecond)->MinTime(2.0);
BENCHMARK_CAPTURE(BM_ModelImportance, resnet50, "resnet50")->Arg(224)->Arg(64)->Unit(benchmark::kMillisecond)->MinTime(2.0);
BENCHMARK_CAPTURE(BM_ModelImportance, vgg16, "vgg16")->Arg(224)->Arg(64)->Unit(benchmark::kMillisecond)->MinTime(2.0);
