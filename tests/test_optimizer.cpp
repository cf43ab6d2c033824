// Optimizer updates against closed forms and torch.optim's numbers, parameter freezing by
// name pattern, and learning-rate schedules.
#include <doctest/doctest.h>

#include <cmath>
#include <string>
#include <vector>

#include "train/optimizer.h"

using namespace isplit;

namespace {

// Runs `steps` updates of one parameter [n] from w0, the gradient of step t being
// grad(t, i), and returns the weights after each step.
template <class GradFn>
std::vector<std::vector<float>> run(const OptimizerConfig& cfg, double lr,
                                    const std::vector<float>& w0, int steps, GradFn grad) {
  Parameter p;
  p.value = Tensor::from({static_cast<int64_t>(w0.size())}, w0);
  Optimizer opt({{"w", &p}}, cfg);
  std::vector<std::vector<float>> out;
  for (int t = 0; t < steps; ++t) {
    if (!p.grad.defined()) p.grad = Tensor::zeros(p.value.shape());  // as a backward would
    for (int64_t i = 0; i < p.value.numel(); ++i) p.grad[i] = grad(t, i);
    opt.step(lr);
    out.emplace_back(p.value.data(), p.value.data() + p.value.numel());
    opt.zero_grad();
  }
  CHECK(opt.steps() == steps);
  return out;
}

// One weight, gradients gs[t]: the weight after each step.
std::vector<float> run1(const OptimizerConfig& cfg, double lr, float w0,
                        const std::vector<float>& gs) {
  std::vector<float> out;
  for (const auto& w : run(cfg, lr, {w0}, static_cast<int>(gs.size()),
                           [&](int t, int64_t) { return gs[t]; }))
    out.push_back(w[0]);
  return out;
}

void check_trajectory(const std::vector<float>& got, const std::vector<double>& want) {
  REQUIRE(got.size() == want.size());
  for (size_t t = 0; t < want.size(); ++t) {
    INFO("step " << t + 1);
    CHECK(got[t] == doctest::Approx(want[t]).epsilon(1e-6));
  }
}

OptimizerConfig sgd(double momentum, double dampening = 0, bool nesterov = false,
                    double weight_decay = 0) {
  OptimizerConfig c;
  c.kind = OptimizerKind::sgd;
  c.momentum = momentum;
  c.dampening = dampening;
  c.nesterov = nesterov;
  c.weight_decay = weight_decay;
  return c;
}

OptimizerConfig adamw(double beta1, double beta2, double eps, double weight_decay) {
  OptimizerConfig c;
  c.kind = OptimizerKind::adamw;
  c.beta1 = beta1;
  c.beta2 = beta2;
  c.eps = eps;
  c.weight_decay = weight_decay;
  return c;
}

// torch.optim.SGD's documented update, in double.
struct SgdReference {
  OptimizerConfig c;
  std::vector<double> buf;
  void step(std::vector<double>& w, const std::vector<double>& g, double lr) {
    const bool first = buf.empty();
    if (first) buf.resize(w.size());
    for (size_t i = 0; i < w.size(); ++i) {
      double d = g[i] + c.weight_decay * w[i];
      if (c.momentum != 0) {
        buf[i] = first ? d : c.momentum * buf[i] + (1 - c.dampening) * d;
        d = c.nesterov ? d + c.momentum * buf[i] : buf[i];
      }
      w[i] -= lr * d;
    }
  }
};

// torch.optim.AdamW's documented update, in double.
struct AdamwReference {
  OptimizerConfig c;
  std::vector<double> m, v;
  int t = 0;
  void step(std::vector<double>& w, const std::vector<double>& g, double lr) {
    if (m.empty()) m.assign(w.size(), 0), v.assign(w.size(), 0);
    ++t;
    for (size_t i = 0; i < w.size(); ++i) {
      w[i] *= 1 - lr * c.weight_decay;
      m[i] = c.beta1 * m[i] + (1 - c.beta1) * g[i];
      v[i] = c.beta2 * v[i] + (1 - c.beta2) * g[i] * g[i];
      const double mhat = m[i] / (1 - std::pow(c.beta1, t));
      const double vhat = v[i] / (1 - std::pow(c.beta2, t));
      w[i] -= lr * mhat / (std::sqrt(vhat) + c.eps);
    }
  }
};

// A deterministic gradient of either sign and varied magnitude (exactly representable
// in float, so the double reference sees the same value).
float test_grad(int t, int64_t i) {
  const int64_t k = (i * 7919 + t * 104729) % 2001 - 1000;
  return static_cast<float>(k) / 512.0f;
}

// Many elements (so the update runs on several threads) against a double reference.
template <class Reference>
void check_against_reference(const OptimizerConfig& cfg, double lr) {
  const int64_t n = 10007;
  std::vector<float> w0(n);
  std::vector<double> w(n), g(n);
  for (int64_t i = 0; i < n; ++i) w[i] = w0[i] = static_cast<float>((i % 97) - 48) / 64.0f;
  const auto got = run(cfg, lr, w0, 3, test_grad);
  Reference ref;
  ref.c = cfg;
  for (int t = 0; t < 3; ++t) {
    for (int64_t i = 0; i < n; ++i) g[i] = test_grad(t, i);
    ref.step(w, g, lr);
    double worst = 0;
    for (int64_t i = 0; i < n; ++i) worst = std::max(worst, std::fabs(got[t][i] - w[i]));
    INFO("step " << t + 1);
    CHECK(worst < 2e-6);
  }
}

}  // namespace

TEST_SUITE("optimizer") {
  // Trajectories below are torch.optim's, computed in float64 (torch 1.13).
  TEST_CASE("optimizer: SGD without momentum is w -= lr * (g + wd * w)") {
    check_trajectory(run1(sgd(0), 0.1, 1.0f, {1, 2, 3}), {0.9, 0.7, 0.4});
    check_trajectory(run1(sgd(0, 0, false, 0.1), 0.1, 1.0f, {0, 0, 0}),
                     {0.99, 0.9801, 0.970299});
  }

  TEST_CASE("optimizer: SGD momentum buffer starts as the first gradient") {
    // Dampening applies from the second step only (PyTorch copies the first gradient).
    check_trajectory(run1(sgd(0.9, 0.5), 0.1, 1.0f, {1, 2, 3}), {0.9, 0.71, 0.389});
    check_trajectory(run1(sgd(0.9), 0.1, 1.0f, {1, 2, 3}), {0.9, 0.61, 0.049});
    check_trajectory(run1(sgd(0.9, 0, /*nesterov=*/true), 0.1, 1.0f, {1, 2, 3}),
                     {0.81, 0.349, -0.4559});
    // Weight decay enters the gradient before the momentum buffer.
    check_trajectory(run1(sgd(0.9, 0, false, 0.1), 0.1, 1.0f, {1, 1, 1}),
                     {0.89, 0.6821, 0.388169});
  }

  TEST_CASE("optimizer: AdamW with bias correction and decoupled decay") {
    // Constant gradient: m_hat = g and v_hat = g^2 exactly, so each step is
    // w <- w * (1 - lr * wd) - lr * g / (|g| + eps); eps = 0.1 pins where eps is added
    // (after the bias correction of sqrt(v)).
    check_trajectory(run1(adamw(0.9, 0.999, 0.1, 0.5), 0.1, 1.0f, {0.2f, 0.2f, 0.2f}),
                     {0.8833333333, 0.7725, 0.6672083333});
    check_trajectory(run1(adamw(0.9, 0.999, 1e-8, 0), 0.1, 0.0f, {1, -1, 2}),
                     {-0.099999999, -0.0947368412, -0.1445610552});
    check_trajectory(run1(adamw(0.8, 0.99, 1e-3, 0.2), 0.1, 2.0f, {0.5f, -0.25f, 1e-4f}),
                     {1.8601996008, 1.8019352634, 1.7506317513});
  }

  TEST_CASE("optimizer: many elements match the reference formulas over 3 steps") {
    SUBCASE("sgd") { check_against_reference<SgdReference>(sgd(0), 0.05); }
    SUBCASE("sgd momentum, weight decay") {
      check_against_reference<SgdReference>(sgd(0.9, 0, false, 5e-4), 0.05);
    }
    SUBCASE("sgd momentum, dampening") {
      check_against_reference<SgdReference>(sgd(0.8, 0.3, false, 1e-2), 0.05);
    }
    SUBCASE("sgd nesterov, weight decay") {
      check_against_reference<SgdReference>(sgd(0.9, 0, true, 1e-3), 0.05);
    }
    SUBCASE("adamw") {
      check_against_reference<AdamwReference>(adamw(0.9, 0.999, 1e-8, 0.05), 1e-3);
    }
    SUBCASE("adamw, large eps") {
      check_against_reference<AdamwReference>(adamw(0.85, 0.99, 0.5, 0.1), 1e-2);
    }
  }

  TEST_CASE("optimizer: buffers and frozen parameters are not updated") {
    Parameter w, frozen, buffer;
    w.value = Tensor::full({3}, 1.0f);
    frozen.value = Tensor::full({3}, 1.0f);
    frozen.requires_grad = false;
    buffer.value = Tensor::full({3}, 1.0f);
    buffer.is_buffer = true;
    Optimizer opt({{"a.weight", &w}, {"b.weight", &frozen}, {"b.running_mean", &buffer}},
                  sgd(0.9, 0, false, 0.1));
    CHECK(opt.param_names() == std::vector<std::string>{"a.weight"});
    opt.step(0.1);  // no backward has reached w yet: left alone, as PyTorch skips grad None
    CHECK(w.value[0] == 1.0f);
    w.accumulate(Tensor::full({3}, 1.0f));
    opt.step(0.1);
    CHECK(w.value[0] == doctest::Approx(0.89));
    CHECK(frozen.value[0] == 1.0f);
    CHECK(buffer.value[0] == 1.0f);
    opt.zero_grad();
    CHECK(w.grad[0] == 0.0f);
  }

  TEST_CASE("optimizer: Nesterov needs momentum and no dampening") {
    Parameter p;
    p.value = Tensor::zeros({1});
    CHECK_THROWS_AS(Optimizer({{"w", &p}}, sgd(0.0, 0, true, 0)), Error);
    CHECK_THROWS_AS(Optimizer({{"w", &p}}, sgd(0.9, 0.1, true, 0)), Error);
  }

  TEST_CASE("optimizer: names, bad hyper-parameters") {
    CHECK(parse_optimizer("sgd") == OptimizerKind::sgd);
    CHECK(parse_optimizer("adamw") == OptimizerKind::adamw);
    CHECK(optimizer_name(OptimizerKind::adamw) == "adamw");
    CHECK_THROWS_AS(parse_optimizer("adam"), Error);
    Parameter p;
    p.value = Tensor::zeros({1});
    CHECK_THROWS_AS(Optimizer({{"w", &p}}, adamw(1.0, 0.999, 1e-8, 0)), Error);
    CHECK_THROWS_AS(Optimizer({{"w", &p}}, adamw(0.9, 0.999, 0, 0)), Error);
    CHECK_THROWS_AS(Optimizer({{"w", &p}}, sgd(-0.1)), Error);
  }

  TEST_CASE("optimizer: name patterns") {
    // No glob character: the name itself or a prefix ending at a '.'.
    CHECK(name_matches("layer1", "layer1.0.conv1.weight"));
    CHECK(name_matches("layer1.0", "layer1.0.conv1.weight"));
    CHECK(name_matches("fc.weight", "fc.weight"));
    CHECK_FALSE(name_matches("layer1", "layer10.0.conv1.weight"));
    CHECK_FALSE(name_matches("layer1.0.conv", "layer1.0.conv1.weight"));
    CHECK_FALSE(name_matches("conv1", "layer1.0.conv1.weight"));
    CHECK_FALSE(name_matches("fc.weight", "fc"));
    // Globs match the whole name.
    CHECK(name_matches("*", "features.0.weight"));
    CHECK(name_matches("*.bias", "features.0.bias"));
    CHECK_FALSE(name_matches("*.bias", "features.0.bias.x"));
    CHECK(name_matches("layer?.*.bn1.*", "layer3.5.bn1.running_var"));
    CHECK_FALSE(name_matches("layer?.*.bn1.*", "layer10.5.bn1.weight"));
    CHECK(name_matches("layer1*", "layer10.0.conv1.weight"));
    CHECK(name_matches("*a*b", "xaxxab"));  // needs backtracking past the first 'b'
    CHECK(name_matches("a*b*c", "abxbxc"));
    CHECK_FALSE(name_matches("a*b*c", "abxbxcx"));
    CHECK_FALSE(name_matches("?", ""));
  }

  TEST_CASE("optimizer: freezing by pattern") {
    std::vector<Parameter> ps(6);
    const std::vector<std::string> names = {"conv1.weight", "bn1.weight", "bn1.running_mean",
                                            "layer1.0.conv1.weight", "fc.weight", "fc.bias"};
    const std::vector<int64_t> sizes = {10, 2, 2, 100, 1000, 4};
    NamedParams params;
    for (size_t i = 0; i < ps.size(); ++i) {
      ps[i].value = Tensor::zeros({sizes[i]});
      ps[i].is_buffer = names[i] == "bn1.running_mean";
      params.emplace_back(names[i], &ps[i]);
    }
    auto trainable = [&] {
      std::vector<std::string> out;
      for (const auto& [n, p] : params)
        if (!p->is_buffer && p->requires_grad) out.push_back(n);
      return out;
    };
    CHECK(apply_freeze(params, {"layer1", "bn1"}, {}) == 10 + 1000 + 4);
    CHECK(trainable() == std::vector<std::string>{"conv1.weight", "fc.weight", "fc.bias"});
    CHECK(apply_freeze(params, {}, {"fc"}) == 1004);  // earlier freezing is undone
    CHECK(trainable() == std::vector<std::string>{"fc.weight", "fc.bias"});
    CHECK(apply_freeze(params, {"*.bias"}, {"fc", "layer1"}) == 1100);
    CHECK(trainable() == std::vector<std::string>{"layer1.0.conv1.weight", "fc.weight"});
    CHECK(apply_freeze(params, {}, {}) == 1116);
    // A pattern that matches nothing (buffers do not count) is an error naming it.
    CHECK_THROWS_WITH_AS(apply_freeze(params, {"layer2"}, {}),
                         doctest::Contains("'layer2'"), Error);
    CHECK_THROWS_WITH_AS(apply_freeze(params, {}, {"bn1.running_mean"}),
                         doctest::Contains("'bn1.running_mean'"), Error);
    CHECK_THROWS_AS(apply_freeze(params, {""}, {}), Error);
  }

  TEST_CASE("optimizer: learning-rate schedules") {
    ScheduleConfig c;
    c.base_lr = 0.1;
    c.min_lr = 0.001;
    c.warmup_steps = 4;
    c.kind = ScheduleKind::cosine;
    const int64_t total = 104;
    // Linear warmup ending at base_lr on its last step.
    CHECK(schedule_lr(c, 0, total) == doctest::Approx(0.025));
    CHECK(schedule_lr(c, 1, total) == doctest::Approx(0.05));
    CHECK(schedule_lr(c, 3, total) == doctest::Approx(0.1));
    // Cosine from base_lr right after warmup to min_lr at the end, halfway in between.
    CHECK(schedule_lr(c, 4, total) == doctest::Approx(0.1));
    CHECK(schedule_lr(c, 54, total) == doctest::Approx(0.0505));
    CHECK(schedule_lr(c, total, total) == doctest::Approx(0.001));
    CHECK(schedule_lr(c, total - 1, total) > 0.001);
    CHECK(schedule_lr(c, total + 10, total) == doctest::Approx(0.001));
    for (int64_t s = 5; s < total; ++s)
      CHECK(schedule_lr(c, s, total) <= schedule_lr(c, s - 1, total));

    c.kind = ScheduleKind::step;
    c.warmup_steps = 0;
    c.milestones = {3, 6};
    c.gamma = 0.5;
    CHECK(schedule_lr(c, 0, total) == doctest::Approx(0.1));
    CHECK(schedule_lr(c, 2, total) == doctest::Approx(0.1));
    CHECK(schedule_lr(c, 3, total) == doctest::Approx(0.05));
    CHECK(schedule_lr(c, 5, total) == doctest::Approx(0.05));
    CHECK(schedule_lr(c, 6, total) == doctest::Approx(0.025));
    CHECK(schedule_lr(c, 100, total) == doctest::Approx(0.025));

    c.kind = ScheduleKind::constant;
    CHECK(schedule_lr(c, 0, total) == 0.1);
    CHECK(schedule_lr(c, 99, total) == 0.1);

    CHECK(parse_schedule("cosine") == ScheduleKind::cosine);
    CHECK(parse_schedule("step") == ScheduleKind::step);
    CHECK(parse_schedule("const") == ScheduleKind::constant);
    CHECK_THROWS_AS(parse_schedule("linear"), Error);
  }
}
