// Training-loop building blocks: steady-state steps allocate nothing new, dropout masks
// are a function of their seed, frozen batch norms keep their statistics.
#include <doctest/doctest.h>

#include <cmath>
#include <random>

#include "train/step.h"

using namespace isplit;

namespace {

Tensor random_images(int64_t n, int64_t size, uint32_t seed) {
  Tensor x = Tensor::empty({n, 3, size, size});
  std::mt19937 gen(seed);
  std::normal_distribution<float> dist;
  for (int64_t i = 0; i < x.numel(); ++i) x[i] = dist(gen);
  return x;
}

}  // namespace

TEST_SUITE("train") {
  TEST_CASE("train: steady-state steps take no fresh memory and the loss is reproducible") {
    // Start from an empty block cache with room to spare: blocks other tests left behind
    // must not crowd this test's blocks out of the cache.
    set_tensor_cache_limit(0);
    set_tensor_cache_limit(size_t{4} << 30);
    auto model = build_model("resnet50", 10, 3);
    model->set_training(true);
    OptimizerConfig oc;
    oc.weight_decay = 1e-4;
    Optimizer opt(model->named_parameters(), oc);
    const Tensor x = random_images(4, 32, 1);
    const std::vector<int> y{1, 7, 3, 3};
    std::vector<double> losses;
    for (int i = 0; i < 2; ++i) losses.push_back(train_step(*model, opt, x, y, 0.01).loss);
    const size_t fresh = tensor_fresh_bytes();
    for (int i = 0; i < 3; ++i) losses.push_back(train_step(*model, opt, x, y, 0.01).loss);
    CHECK(tensor_fresh_bytes() == fresh);  // activations, gradients, state: all reused
    // The same steps from the same start give the same losses, bit for bit.
    auto again = build_model("resnet50", 10, 3);
    again->set_training(true);
    Optimizer opt2(again->named_parameters(), oc);
    for (size_t i = 0; i < losses.size(); ++i)
      CHECK(train_step(*again, opt2, x, y, 0.01).loss == losses[i]);
    for (double l : losses) CHECK(std::isfinite(l));
  }

  TEST_CASE("train: dropout masks depend only on the seed") {
    auto model = build_model("vgg16", 10, 0);
    model->set_training(true);
    const Tensor x = random_images(2, 32, 2);
    auto run = [&](uint64_t seed) {
      model->seed_dropout(seed);
      return model->forward(nullptr, Var{x}).value;
    };
    const Tensor a = run(5), b = run(5), c = run(6);
    bool same = true, differs = false;
    for (int64_t i = 0; i < a.numel(); ++i) {
      same = same && a[i] == b[i];
      differs = differs || a[i] != c[i];
    }
    CHECK(same);
    CHECK(differs);
    model->set_training(true, /*dropout=*/false);
    const Tensor d = run(5), e = run(6);
    for (int64_t i = 0; i < d.numel(); ++i) REQUIRE(d[i] == e[i]);
  }

  TEST_CASE("train: a frozen batch norm normalises with, and keeps, its running statistics") {
    BatchNorm2d bn(3);
    for (int c = 0; c < 3; ++c) {
      bn.running_mean.value[c] = 0.5f * c;
      bn.running_var.value[c] = 1.0f + c;
    }
    const Tensor x = random_images(4, 5, 3);
    bn.weight.requires_grad = bn.bias.requires_grad = false;
    bn.set_training(true);
    CHECK_FALSE(bn.training());
    const Tensor y = bn.forward(nullptr, Var{x}).value;
    CHECK(bn.running_mean.value[1] == 0.5f);
    CHECK(bn.running_var.value[2] == 3.0f);
    const float expect = (x[0] - 0.0f) / std::sqrt(1.0f + 1e-5f);
    CHECK(y[0] == doctest::Approx(expect).epsilon(1e-6));
    bn.weight.requires_grad = true;  // trainable again: batch statistics, updated running ones
    bn.set_training(true);
    CHECK(bn.training());
    bn.forward(nullptr, Var{x});
    CHECK(bn.running_mean.value[1] != 0.5f);
  }

  TEST_CASE("train: labels must fit the classifier") {
    auto model = build_model("resnet50", 10, 0);
    OptimizerConfig oc;
    Optimizer opt(model->named_parameters(), oc);
    model->set_training(true);
    CHECK_THROWS_AS(train_step(*model, opt, random_images(2, 32, 4), {1, 10}, 0.01), Error);
    CHECK_THROWS_AS(train_step(*model, opt, random_images(2, 32, 4), {1}, 0.01), Error);
  }
}
