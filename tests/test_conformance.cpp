// Whole-model conformance with PyTorch (fixtures from tools/make_fixtures.py):
// logits, gradients of the target score at every cut point, and the parameter
// gradients and BatchNorm statistics of one cross-entropy training step.
#include <doctest/doctest.h>

#include <algorithm>
#include <map>

#include "conformance_util.h"
#include "engine/safetensors.h"
#include "models/model.h"

using namespace isplit;
using isplit::testing::check_close;
using isplit::testing::check_close_l2;

namespace {

constexpr double kLogitTol = 1e-4;  // DESIGN.md: forward outputs
constexpr double kGradTol = 1e-3;   // DESIGN.md: gradients

// References are float64 (tools/make_fixtures.py), and each gradient comes with
// PyTorch's own float32 error on it (grad_err / pgrad_err). Tolerances, as L2 relative
// errors (see conformance_util.h):
//  - eval-mode cut-point gradients on a "strict" fixture (an input without fragile
//    ReLU / max-pool decisions): DESIGN.md's 1e-3;
//  - the same at 224x224 ("strict" = 0): ~10^7 ReLU decisions, some always within
//    rounding of zero, and one flip moves a gradient by ~1e-3 (PyTorch's own float32 is
//    off by 3.5e-3 on ResNet-50): 1e-2;
//  - train-step parameter gradients: train-mode BatchNorm on a small batch at random
//    init amplifies rounding (activations differ by 1e-4 from float64 at layer4 in
//    PyTorch itself) and flips many decisions, so PyTorch's float32 misses float64 by up
//    to a few percent; we are held to 1e-3 or eight times PyTorch's own error.
//  In all cases the tolerance is at least four times PyTorch's own error. A wrong formula
//  gives errors of order one; test_layers checks every backward by finite differences.
double grad_tolerance(const SafetensorsReader& io, const std::string& err_name, double floor,
                      double factor) {
  return std::max(floor, factor * io.get(err_name)[0]);
}

bool strict(const SafetensorsReader& io) {
  auto it = io.metadata().find("strict");
  return it != io.metadata().end() && it->second == "1";
}

bool has_train(const SafetensorsReader& io) {
  auto it = io.metadata().find("train");
  return it != io.metadata().end() && it->second == "1";
}

std::vector<int> as_ints(const Tensor& t) {
  std::vector<int> v(static_cast<size_t>(t.numel()));
  for (int64_t i = 0; i < t.numel(); ++i) v[i] = static_cast<int>(t[i]);
  return v;
}

void check_eval(Model& model, const SafetensorsReader& io) {
  const Tensor x = io.get("input");
  model.set_training(false);
  Tape tape = Tape::activations_only();
  std::map<std::string, Var> cuts;
  Var out = model.forward(&tape, tape.input(x), [&](const std::string& n, const Var& v) {
    cuts[n] = v;
  });
  check_close(out.value, io.get("logits"), kLogitTol, model.arch() + " logits");
  const std::vector<int> targets = as_ints(io.get("targets"));
  Tensor seed = Tensor::zeros(out.value.shape());
  for (size_t n = 0; n < targets.size(); ++n) seed[n * out.value.dim(1) + targets[n]] = 1.0f;
  tape.backward(out, seed);
  CHECK(cuts.size() == model.cut_points(true).size());
  for (const CutPoint& c : model.cut_points(true)) {
    REQUIRE(cuts.count(c.name));
    check_close_l2(tape.grad(cuts[c.name]), io.get("grad." + c.name),
                   grad_tolerance(io, "grad_err." + c.name, strict(io) ? kGradTol : 1e-2, 4.0),
                   model.arch() + " dScore/d" + c.name);
  }
  // An activations-only pass does no weight-gradient work.
  for (auto& [name, p] : model.named_parameters()) {
    INFO(name);
    CHECK_FALSE(p->grad.defined());
  }
}

void check_train(Model& model, const SafetensorsReader& io) {
  const Tensor x = io.get("input");
  model.set_training(true, /*dropout=*/false);
  model.zero_grad();
  Tape tape(/*param_grads=*/true);
  Var out = model.forward(&tape, tape.input(x));
  check_close(out.value, io.get("logits_train"), kLogitTol, model.arch() + " train logits");
  Var loss = cross_entropy_loss(&tape, out, as_ints(io.get("labels")));
  check_close(loss.value, io.get("loss"), kLogitTol, model.arch() + " loss");
  tape.backward(loss, Tensor::full({}, 1.0f));
  for (auto& [name, p] : model.named_parameters()) {
    if (p->is_buffer) {
      check_close(p->value, io.get("after." + name), kLogitTol, "running statistic " + name);
      continue;
    }
    REQUIRE_MESSAGE(p->grad.defined(), name << " has no gradient");
    check_close_l2(p->grad, io.get("pgrad." + name),
                   grad_tolerance(io, "pgrad_err." + name, kGradTol, 8.0),
                "dLoss/d" + name);
  }
  model.set_training(false);
}

void check_case(const std::string& name, const std::string& arch) {
  if (!isplit::testing::require_fixture(name)) return;
  const std::string dir = isplit::testing::fixture_dir(name);
  auto model = load_model(arch, dir + "/weights.safetensors");
  SafetensorsReader io(dir + "/io.safetensors");
  SUBCASE("eval logits and cut-point gradients") { check_eval(*model, io); }
  if (has_train(io)) {
    SUBCASE("train step gradients and running statistics") { check_train(*model, io); }
  }
  SUBCASE("folded BatchNorm gives the same logits") {
    model->fold_batchnorm();
    check_close(model->predict(io.get("input")), io.get("logits"), kLogitTol,
                arch + " folded logits");
  }
  // Winograd on every 3x3 stride-1 layer, whatever its size: the importance pass (cut
  // gradients; its backward stays direct) and the folded inference path.
  SUBCASE("packed for Winograd: eval logits and cut-point gradients") {
    const WinogradMode saved = winograd_mode();
    set_winograd_mode(WinogradMode::On);
    model->pack_for_inference();
    check_eval(*model, io);
    set_winograd_mode(saved);
  }
  SUBCASE("folded and packed for Winograd gives the same logits") {
    const WinogradMode saved = winograd_mode();
    set_winograd_mode(WinogradMode::On);
    model->fold_batchnorm();
    model->pack_for_inference();
    check_close(model->predict(io.get("input")), io.get("logits"), kLogitTol,
                arch + " folded Winograd logits");
    set_winograd_mode(saved);
  }
}

}  // namespace

TEST_SUITE("conformance") {
  TEST_CASE("resnet50 at 224x224 equals PyTorch") { check_case("resnet50_224", "resnet50"); }
  TEST_CASE("resnet50 at 64x64 equals PyTorch") { check_case("resnet50_64", "resnet50"); }
  TEST_CASE("vgg16 at 64x64 equals PyTorch") { check_case("vgg16_64", "vgg16"); }
  TEST_CASE("vgg16 at 224x224 equals PyTorch") { check_case("vgg16_224", "vgg16"); }
}

