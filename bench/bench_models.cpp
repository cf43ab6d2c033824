// Whole-model benchmarks: forward (BN folded, inference) and the importance step
// (forward + backward to every layer output, no weight gradients), batch 1.
//   build/isplit_bench --benchmark_filter=Model
#include <benchmark/benchmark.h>

#include <memory>
#include <random>

#include "engine/parallel.h"
#include "models/model.h"
#include "train/step.h"

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
  model->pack_for_inference();  // as predict/eval/bench run it: Winograd, prepacked GEMM
  const Tensor x = random_input(size);
  for (auto _ : state) benchmark::DoNotOptimize(model->predict(x).data());
  report(state, *model, size);
}

void BM_ModelImportance(benchmark::State& state, const char* arch) {
  const int64_t size = state.range(0);
  auto model = build_model(arch, 1000, 1);
  model->pack_for_inference();  // as `isplit analyze` runs it
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

// One SGD training step (momentum 0.9, train-mode BatchNorm, dropout on): forward,
// cross-entropy, backward with weight gradients, update. range(0) = input size,
// range(1) = batch; 10 classes (Fashion-MNIST-sized head).
void BM_TrainStep(benchmark::State& state, const char* arch) {
  const int64_t size = state.range(0), batch = state.range(1);
  auto model = build_model(arch, 10, 1);
  model->set_training(true);
  OptimizerConfig oc;
  oc.weight_decay = 5e-4;
  Optimizer opt(model->named_parameters(), oc);
  std::mt19937_64 rng(7);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  Tensor x = Tensor::empty({batch, 3, size, size});
  for (int64_t i = 0; i < x.numel(); ++i) x[i] = dist(rng);
  std::vector<int> labels(static_cast<size_t>(batch));
  for (int64_t i = 0; i < batch; ++i) labels[static_cast<size_t>(i)] = static_cast<int>(i % 10);
  train_step(*model, opt, x, labels, 1e-3);  // warm-up: gradients and state allocated
  for (auto _ : state) benchmark::DoNotOptimize(train_step(*model, opt, x, labels, 1e-3).loss);
  state.counters["images/s"] = benchmark::Counter(double(batch), benchmark::Counter::kIsIterationInvariantRate);
  state.counters["threads"] = num_threads();
}

}  // namespace

BENCHMARK_CAPTURE(BM_TrainStep, resnet50, "resnet50")->Args({32, 32})->Args({32, 64})->Unit(benchmark::kMillisecond)->MinTime(5.0);
BENCHMARK_CAPTURE(BM_TrainStep, vgg16, "vgg16")->Args({32, 32})->Unit(benchmark::kMillisecond)->MinTime(5.0);
BENCHMARK_CAPTURE(BM_ModelForward, resnet50, "resnet50")->Arg(224)->Arg(64)->Unit(benchmark::kMillisecond)->MinTime(2.0);
BENCHMARK_CAPTURE(BM_ModelForward, vgg16, "vgg16")->Arg(224)->Arg(64)->Unit(benchmark::kMillisecond)->MinTime(2.0);
BENCHMARK_CAPTURE(BM_ModelImportance, resnet50, "resnet50")->Arg(224)->Arg(64)->Unit(benchmark::kMillisecond)->MinTime(2.0);
BENCHMARK_CAPTURE(BM_ModelImportance, vgg16, "vgg16")->Arg(224)->Arg(64)->Unit(benchmark::kMillisecond)->MinTime(2.0);
