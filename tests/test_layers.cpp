// Tests for layers/functional.{h,cpp} and layers/modules.{h,cpp} together with the
// autograd tape (engine/tape.{h,cpp}):
//   * finite-difference gradient checks of every layer, through the modules and the tape;
//   * tape semantics (param_grads = false, activations_only, accumulation, frozen params);
//   * the fast convolution (im2col + GEMM) against direct loops, forward and backward;
//   * output-shape rules (PyTorch's ceil_mode rule) and shape errors;
//   * bitwise determinism of the convolution across thread counts.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <numeric>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "engine/cpu.h"
#include "engine/gemm.h"
#include "engine/parallel.h"
#include "engine/tape.h"
#include "layers/functional.h"
#include "layers/modules.h"

using namespace isplit;

namespace {

// ------------------------------------------------------------------ helpers
Tensor randn(const Shape& shape, std::mt19937_64& rng, double stddev = 1.0, double mean = 0.0) {
  std::normal_distribution<double> d(mean, stddev);
  Tensor t = Tensor::empty(shape);
  for (int64_t i = 0; i < t.numel(); ++i) t[i] = static_cast<float>(d(rng));
  return t;
}

// Pairwise-distinct values, at least `gap` apart and at least gap/2 away from zero, in
// random order. With gap >> the finite-difference step, max-pool argmaxes and ReLU
// signs cannot change under perturbation.
Tensor distinct(const Shape& shape, std::mt19937_64& rng, double gap = 0.02) {
  Tensor t = Tensor::empty(shape);
  const int64_t n = t.numel();
  std::vector<int64_t> idx(static_cast<size_t>(n));
  std::iota(idx.begin(), idx.end(), int64_t{0});
  std::shuffle(idx.begin(), idx.end(), rng);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t k = idx[static_cast<size_t>(i)] - n / 2;
    t[i] = static_cast<float>((k >= 0 ? k + 0.5 : k - 0.5) * gap);
  }
  return t;
}

// sum(r * y) accumulated in double.
double dot(const Tensor& r, const Tensor& y) {
  REQUIRE(r.numel() == y.numel());
  double s = 0.0;
  for (int64_t i = 0; i < r.numel(); ++i) s += double(r[i]) * double(y[i]);
  return s;
}

double max_abs(const Tensor& t) {
  double m = 0.0;
  for (int64_t i = 0; i < t.numel(); ++i) m = std::max(m, std::fabs(double(t[i])));
  return m;
}

bool bitwise_equal(const Tensor& a, const Tensor& b) {
  return a.shape() == b.shape() && std::memcmp(a.data(), b.data(), a.bytes()) == 0;
}

// Gradient tolerance: |analytic - numeric| <= kGradTol * max(1, |numeric|)
// (absolute for small gradients, relative for large ones).
constexpr double kGradTol = 2e-3;

// How to take central differences.
struct NumOpts {
  int max_checks = 30;  // entries checked per tensor (all when the tensor is smaller)
  float h = 1e-3f;      // step
  // Networks with ReLU / max pool: a perturbation that moves a whole channel (any
  // parameter, or any input of a train-mode batch norm) may cross a kink. An entry
  // where the two one-sided differences disagree by more than the tolerance (a kink
  // inside [x-h, x+h]) and the analytic value lies between them (the derivative on one
  // side of the kink) is counted as a kink instead of a failure; at most a quarter of
  // the entries (or one) may be.
  bool allow_kinks = false;
  // Tolerance factor (see kGradTol); whole networks use a looser one, their numeric
  // estimates carry the float rounding of every layer.
  double tol = kGradTol;
};

// Central-difference check of dL/dt, L = sum(r * fwd()) in double, against `analytic`.
// t is perturbed in place (it shares storage with whatever fwd() reads) by h, using the
// step actually representable in float.
void check_numeric(const std::string& what, Tensor t, const Tensor& analytic,
                   const std::function<Tensor()>& fwd, const Tensor& r, std::mt19937_64& rng,
                   const NumOpts& opt = {}) {
  INFO(what);
  REQUIRE(t.defined());
  REQUIRE(analytic.defined());
  REQUIRE(analytic.shape() == t.shape());
  std::vector<int64_t> idx(static_cast<size_t>(t.numel()));
  std::iota(idx.begin(), idx.end(), int64_t{0});
  if (t.numel() > opt.max_checks) {
    std::shuffle(idx.begin(), idx.end(), rng);
    idx.resize(static_cast<size_t>(opt.max_checks));
  }
  const double l0 = opt.allow_kinks ? dot(r, fwd()) : 0.0;
  int bad = 0, kinks = 0;
  for (int64_t i : idx) {
    const float v = t[i];
    t[i] = v + opt.h;
    const float up = t[i];
    const double lp = dot(r, fwd());
    t[i] = v - opt.h;
    const float dn = t[i];
    const double lm = dot(r, fwd());
    t[i] = v;
    const double num = (lp - lm) / (double(up) - double(dn));
    const double a = analytic[i];
    const double tol = opt.tol * std::max(1.0, std::fabs(num));
    bool ok = std::fabs(a - num) <= tol;
    if (!ok && opt.allow_kinks) {
      const double dp = (lp - l0) / (double(up) - v), dm = (l0 - lm) / (double(v) - dn);
      if (std::fabs(dp - dm) > tol && a >= std::min(dp, dm) - tol &&
          a <= std::max(dp, dm) + tol) {
        ++kinks;
        continue;
      }
    }
    if (!ok && bad++ < 5) {
      INFO("index " << i << ": analytic " << a << ", numeric " << num);
      CHECK(ok);
    }
  }
  CHECK(bad == 0);
  CHECK(kinks <= std::max<int>(1, static_cast<int>(idx.size()) / 4));
}

// For whole networks: h = 1e-2 (rounding noise of L is ~1e-6, i.e. 1e-3 in the
// derivative at h = 1e-3 once a batch norm spreads each perturbation over a channel),
// kinks tolerated, |analytic - numeric| <= 5e-3 * max(1, |numeric|).
const NumOpts kNetOpts = {30, 1e-2f, true, 5e-3};

using Fwd = std::function<Var(Tape*, const Var&)>;
using ParamList = std::vector<std::pair<std::string, Parameter*>>;

// Gradient check of f through the tape: analytic dx (Tape::grad) and parameter grads
// (Parameter::grad) of L = sum(R * f(x)), with R a seeded random tensor, against
// central differences of the untaped forward.
void grad_check(const std::string& name, const Fwd& f, Tensor x, const ParamList& params,
                uint64_t seed, int max_checks = 30, NumOpts opt = {}) {
  opt.max_checks = max_checks;
  INFO(name);
  std::mt19937_64 rng(seed);
  for (auto& p : params) p.second->grad = Tensor();
  Tape tape;
  const Var xin = tape.input(x, true);
  const Var y = f(&tape, xin);
  REQUIRE(tape.needs_grad(y));
  const Tensor r = randn(y.value.shape(), rng);
  tape.backward(y, r);
  const Tensor gx = tape.grad(xin).clone();
  auto fwd = [&] { return f(nullptr, Var{x}).value; };
  check_numeric(name + ": dx", x, gx, fwd, r, rng, opt);
  for (auto& [pn, p] : params) {
    INFO(pn);
    REQUIRE(p->grad.defined());
    check_numeric(name + ": d" + pn, p->value, p->grad.clone(), fwd, r, rng, opt);
  }
}

Fwd module_fwd(Module& m) {
  return [&m](Tape* t, const Var& v) { return m.forward(t, v); };
}

void fill_randn(Parameter& p, std::mt19937_64& rng, double stddev = 0.5, double mean = 0.0) {
  p.value.copy_from(randn(p.value.shape(), rng, stddev, mean));
}

Conv2dSpec conv_spec(int64_t cin, int64_t cout, int64_t kh, int64_t kw, int64_t sh = 1,
                     int64_t sw = 1, int64_t ph = 0, int64_t pw = 0, int64_t dh = 1,
                     int64_t dw = 1, int64_t groups = 1) {
  Conv2dSpec s;
  s.in_channels = cin;
  s.out_channels = cout;
  s.kh = kh;
  s.kw = kw;
  s.stride_h = sh;
  s.stride_w = sw;
  s.pad_h = ph;
  s.pad_w = pw;
  s.dil_h = dh;
  s.dil_w = dw;
  s.groups = groups;
  return s;
}

Pool2dSpec pool_spec(int64_t k, int64_t s, int64_t p = 0, bool ceil_mode = false,
                     bool include_pad = true) {
  Pool2dSpec ps;
  ps.kh = ps.kw = k;
  ps.stride_h = ps.stride_w = s;
  ps.pad_h = ps.pad_w = p;
  ps.ceil_mode = ceil_mode;
  ps.count_include_pad = include_pad;
  return ps;
}

// Direct double-precision convolution backward: gx, gw, gb of L = sum(gy * (conv(x, w) + b)).
void naive_conv_backward(const Tensor& gy, const Tensor& x, const Tensor& w, const Conv2dSpec& s,
                         std::vector<double>& gx, std::vector<double>& gw,
                         std::vector<double>& gb) {
  const Shape os = gy.shape();
  const int64_t cin_g = s.in_channels / s.groups, cout_g = s.out_channels / s.groups;
  const int64_t h = x.dim(2), wd = x.dim(3);
  gx.assign(static_cast<size_t>(x.numel()), 0.0);
  gw.assign(static_cast<size_t>(w.numel()), 0.0);
  gb.assign(static_cast<size_t>(s.out_channels), 0.0);
  for (int64_t n = 0; n < os[0]; ++n)
    for (int64_t co = 0; co < os[1]; ++co) {
      const int64_t gi = co / cout_g;
      for (int64_t oy = 0; oy < os[2]; ++oy)
        for (int64_t ox = 0; ox < os[3]; ++ox) {
          const double g = gy[((n * os[1] + co) * os[2] + oy) * os[3] + ox];
          gb[co] += g;
          for (int64_t ci = 0; ci < cin_g; ++ci)
            for (int64_t i = 0; i < s.kh; ++i)
              for (int64_t j = 0; j < s.kw; ++j) {
                const int64_t iy = oy * s.stride_h - s.pad_h + i * s.dil_h;
                const int64_t ix = ox * s.stride_w - s.pad_w + j * s.dil_w;
                if (iy < 0 || iy >= h || ix < 0 || ix >= wd) continue;
                const int64_t xi = ((n * s.in_channels + gi * cin_g + ci) * h + iy) * wd + ix;
                const int64_t wi = ((co * cin_g + ci) * s.kh + i) * s.kw + j;
                gx[xi] += g * w[wi];
                gw[wi] += g * x[xi];
              }
        }
    }
}

// max |a - b| / max(1, max |b|) for a float tensor against double values.
double rel_err(const Tensor& a, const std::vector<double>& b) {
  double m = 1.0, e = 0.0;
  for (size_t i = 0; i < b.size(); ++i) {
    m = std::max(m, std::fabs(b[i]));
    e = std::max(e, std::fabs(double(a[static_cast<int64_t>(i)]) - b[i]));
  }
  return e / m;
}

}  // namespace

TEST_SUITE("layers") {

// ================================================================== gradient checks
TEST_CASE("grad: Conv2d (kernel/stride/padding/dilation/groups, with and without bias)") {
  struct Case {
    const char* name;
    int64_t in, out, k, stride, pad, dil, groups;
    bool bias;
    Shape x;
  };
  const Case cases[] = {
      {"3x3 s1 p1 bias", 3, 4, 3, 1, 1, 1, 1, true, {2, 3, 5, 6}},
      {"3x3 s2 p0 nobias", 4, 6, 3, 2, 0, 1, 1, false, {2, 4, 7, 7}},
      {"3x3 dil2 p2 bias", 4, 4, 3, 1, 2, 2, 1, true, {1, 4, 6, 5}},
      {"3x3 s2 p1 groups2", 4, 6, 3, 2, 1, 1, 2, true, {2, 4, 7, 6}},
      {"3x3 depthwise", 4, 4, 3, 1, 1, 1, 4, true, {2, 4, 5, 5}},
      {"5x5 s3 p2 depthwise x2", 3, 6, 5, 3, 2, 1, 3, false, {2, 3, 8, 7}},
      {"1x1 direct", 5, 3, 1, 1, 0, 1, 1, true, {2, 5, 4, 3}},
      {"1x1 s2 (im2col)", 4, 3, 1, 2, 0, 1, 1, true, {2, 4, 5, 5}},
      {"1x1 groups2 direct", 4, 6, 1, 1, 0, 1, 2, false, {2, 4, 3, 3}},
      {"7x7 s2 p3 stem", 3, 4, 7, 2, 3, 1, 1, false, {1, 3, 9, 8}},
  };
  uint64_t seed = 100;
  for (const Case& c : cases) {
    CAPTURE(c.name);
    std::mt19937_64 rng(++seed);
    Conv2d conv(c.in, c.out, c.k, c.stride, c.pad, c.bias, c.dil, c.groups);
    // Weights ~ 1/sqrt(fan_in) keep outputs O(1), so float rounding of the outputs stays
    // well below the tolerance (matters for the 147-tap stem).
    fill_randn(conv.weight, rng, 1.0 / std::sqrt(double(c.in / c.groups * c.k * c.k)));
    ParamList params = {{"weight", &conv.weight}};
    if (c.bias) {
      fill_randn(conv.bias, rng);
      params.push_back({"bias", &conv.bias});
    }
    Tensor x = randn(c.x, rng);
    CHECK(conv.forward(nullptr, Var{x}).value.shape() == conv.out_shape(c.x));
    grad_check(c.name, module_fwd(conv), x, params, seed * 7);
    if (!c.bias) CHECK_FALSE(conv.bias.grad.defined());
  }
}

TEST_CASE("grad: conv2d functional API with rectangular kernel/stride/padding/dilation") {
  std::mt19937_64 rng(7);
  const Conv2dSpec s = conv_spec(4, 6, 2, 3, 2, 1, 1, 0, 1, 2, 2);
  Tensor x = randn({2, 4, 7, 9}, rng);
  Tensor w = randn({6, 2, 2, 3}, rng, 0.5);
  Tensor b = randn({6}, rng);
  const Tensor y = conv2d_forward(x, w, &b, s);
  const Tensor r = randn(y.shape(), rng);
  Tensor gx = Tensor::zeros(x.shape()), gw = Tensor::zeros(w.shape()), gb = Tensor::zeros({6});
  conv2d_backward_data(r, w, s, gx);
  conv2d_backward_weight(r, x, s, &gw, &gb);
  auto fwd = [&] { return conv2d_forward(x, w, &b, s); };
  check_numeric("dx", x, gx, fwd, r, rng);
  check_numeric("dw", w, gw, fwd, r, rng);
  check_numeric("db", b, gb, fwd, r, rng);
}

TEST_CASE("grad: BatchNorm2d train mode (input, weight, bias)") {
  std::mt19937_64 rng(11);
  BatchNorm2d bn(3);
  bn.set_training(true);
  fill_randn(bn.weight, rng, 0.5, 1.0);
  fill_randn(bn.bias, rng, 0.5);
  Tensor x = randn({3, 3, 3, 2}, rng, 2.0, 0.5);
  grad_check("bn train", module_fwd(bn), x, {{"weight", &bn.weight}, {"bias", &bn.bias}}, 12,
             60);
  CHECK_FALSE(bn.running_mean.grad.defined());
  CHECK_FALSE(bn.running_var.grad.defined());
  // Batch of one image with several pixels is valid in training.
  Tensor x1 = randn({1, 2, 3, 3}, rng);
  BatchNorm2d bn1(2);
  bn1.set_training(true);
  fill_randn(bn1.weight, rng, 0.5, 1.0);
  grad_check("bn train N=1", module_fwd(bn1), x1, {{"weight", &bn1.weight}, {"bias", &bn1.bias}},
             13, 60);
}

TEST_CASE("grad: BatchNorm2d eval mode (input, weight, bias)") {
  std::mt19937_64 rng(21);
  BatchNorm2d bn(4);
  bn.set_training(false);
  fill_randn(bn.weight, rng, 0.5, 1.0);
  fill_randn(bn.bias, rng, 0.5);
  fill_randn(bn.running_mean, rng, 0.5);
  for (int64_t i = 0; i < 4; ++i) bn.running_var.value[i] = 0.3f + 0.4f * float(i);
  const Tensor rm = bn.running_mean.value.clone(), rv = bn.running_var.value.clone();
  Tensor x = randn({2, 4, 3, 3}, rng, 1.5, 0.3);
  grad_check("bn eval", module_fwd(bn), x, {{"weight", &bn.weight}, {"bias", &bn.bias}}, 22);
  // Eval mode never touches the running statistics.
  CHECK(bitwise_equal(bn.running_mean.value, rm));
  CHECK(bitwise_equal(bn.running_var.value, rv));
  // Eval-mode input gradient without weight gradient (the module's per-channel shortcut).
  bn.weight.requires_grad = false;
  bn.weight.grad = Tensor();
  grad_check("bn eval frozen weight", module_fwd(bn), x, {{"bias", &bn.bias}}, 23);
  CHECK_FALSE(bn.weight.grad.defined());
  bn.bias.requires_grad = false;
  grad_check("bn eval frozen", module_fwd(bn), x, {}, 24);
}

TEST_CASE("BatchNorm2d train: output and running statistics match PyTorch's definition") {
  std::mt19937_64 rng(31);
  const int64_t n = 3, c = 2, h = 2, w = 3, count = n * h * w;
  BatchNorm2d bn(c);  // eps 1e-5, momentum 0.1
  CHECK(bn.momentum == doctest::Approx(0.1));
  bn.set_training(true);
  fill_randn(bn.weight, rng, 0.5, 1.0);
  fill_randn(bn.bias, rng, 0.5);
  fill_randn(bn.running_mean, rng);
  for (int64_t i = 0; i < c; ++i) bn.running_var.value[i] = 0.5f + float(i);
  const Tensor rm0 = bn.running_mean.value.clone(), rv0 = bn.running_var.value.clone();
  Tensor x = randn({n, c, h, w}, rng, 2.0, 1.0);
  const Tensor y = bn.forward(nullptr, Var{x}).value;
  std::vector<double> means(static_cast<size_t>(c));
  for (int64_t ch = 0; ch < c; ++ch) {
    double sum = 0.0, sq = 0.0;
    for (int64_t i = 0; i < n; ++i)
      for (int64_t p = 0; p < h * w; ++p) sum += x[(i * c + ch) * h * w + p];
    const double mean = sum / count;
    means[static_cast<size_t>(ch)] = mean;
    for (int64_t i = 0; i < n; ++i)
      for (int64_t p = 0; p < h * w; ++p) {
        const double d = x[(i * c + ch) * h * w + p] - mean;
        sq += d * d;
      }
    const double var_biased = sq / count, var_unbiased = sq / (count - 1);
    const double exp_rm = 0.9 * rm0[ch] + 0.1 * mean;
    const double exp_rv = 0.9 * rv0[ch] + 0.1 * var_unbiased;
    CHECK(bn.running_mean.value[ch] == doctest::Approx(exp_rm).epsilon(1e-6));
    CHECK(bn.running_var.value[ch] == doctest::Approx(exp_rv).epsilon(1e-6));
    for (int64_t i = 0; i < n; ++i)
      for (int64_t p = 0; p < h * w; ++p) {
        const int64_t k = (i * c + ch) * h * w + p;
        const double e = bn.weight.value[ch] * (x[k] - mean) / std::sqrt(var_biased + 1e-5) +
                         bn.bias.value[ch];
        CHECK(y[k] == doctest::Approx(e).epsilon(1e-5));
      }
  }
  // A second step compounds: running = 0.9 * running + 0.1 * batch.
  const Tensor rm1 = bn.running_mean.value.clone();
  bn.forward(nullptr, Var{x});
  for (int64_t ch = 0; ch < c; ++ch) {
    const double mean = means[static_cast<size_t>(ch)];
    CHECK(bn.running_mean.value[ch] == doctest::Approx(0.9 * rm1[ch] + 0.1 * mean).epsilon(1e-6));
  }
}

TEST_CASE("grad: ReLU") {
  std::mt19937_64 rng(41);
  Tensor x = distinct({2, 3, 4, 5}, rng, 0.05);
  ReLU relu_m;
  grad_check("relu", module_fwd(relu_m), x, {}, 42, 120);
  // The gradient passes exactly where x > 0.
  Tape tape;
  const Var xin = tape.input(x, true);
  const Var y = relu_m.forward(&tape, xin);
  const Tensor r = randn(y.value.shape(), rng);
  tape.backward(y, r);
  const Tensor g = tape.grad(xin);
  for (int64_t i = 0; i < x.numel(); ++i) CHECK(g[i] == (x[i] > 0 ? r[i] : 0.0f));
}

TEST_CASE("grad: MaxPool2d (floor/ceil mode, padding)") {
  struct Case {
    const char* name;
    int64_t k, s, p;
    bool ceil_mode;
    Shape x, out;
  };
  const Case cases[] = {
      {"2x2 s2", 2, 2, 0, false, {2, 3, 6, 6}, {2, 3, 3, 3}},
      {"2x2 s2 ceil 7x5", 2, 2, 0, true, {2, 2, 7, 5}, {2, 2, 4, 3}},
      {"3x3 s2 p1", 3, 2, 1, false, {2, 2, 7, 8}, {2, 2, 4, 4}},
      {"3x3 s2 p1 ceil", 3, 2, 1, true, {2, 2, 7, 8}, {2, 2, 4, 5}},
      {"3x3 s3 p1 ceil (last window dropped)", 3, 3, 1, true, {1, 2, 5, 5}, {1, 2, 2, 2}},
      {"3x3 s1 p1", 3, 1, 1, false, {1, 2, 4, 5}, {1, 2, 4, 5}},
  };
  uint64_t seed = 50;
  for (const Case& c : cases) {
    CAPTURE(c.name);
    std::mt19937_64 rng(++seed);
    MaxPool2d pool(c.k, c.s, c.p, c.ceil_mode);
    CHECK(pool.out_shape(c.x) == c.out);
    Tensor x = distinct(c.x, rng);
    CHECK(pool.forward(nullptr, Var{x}).value.shape() == c.out);
    grad_check(c.name, module_fwd(pool), x, {}, seed * 3, 80);
  }
}

TEST_CASE("a one-hot output gradient through Linear reads one row of W per image, same bits") {
  // The importance pass seeds one class score: gx = gy W is then one row of W per image.
  // It must give the GEMM's bits on every ISA, signs of zero included, and leave anything
  // else (two nonzeros in a row, a gradient already there) to the GEMM.
  const Isa saved = active_isa();
  for (Isa isa : {Isa::Scalar, Isa::Avx2, Isa::Avx512, Isa::Neon}) {
    if (!isa_supported(isa)) continue;
    set_active_isa(isa);
    for (int64_t out : {1000, 200}) {  // several k blocks, and one
      CAPTURE(isa_name(isa));
      CAPTURE(out);
      std::mt19937_64 rng(static_cast<uint64_t>(out));
      const int64_t n = 4, in = 37;
      Tensor w = randn({out, in}, rng);
      for (int64_t i = 0; i < w.numel(); i += 7) w[i] = -0.0f;  // -0 products
      Tensor gy = Tensor::zeros({n, out});
      gy[0 * out + 3] = 1.0f;         // the seed
      gy[1 * out + out - 1] = -2.5f;  // a negative one in the last k block
      gy[3 * out + out / 2] = 0.75f;  // row 2 has none
      Tensor x = randn({n, in}, rng);
      Tensor want = Tensor::zeros({n, in});
      for (int64_t i = 0; i < want.numel(); i += 5) want[i] = -0.0f;
      Tensor got = want.clone();
      gemm(false, false, n, in, out, gy.data(), out, w.data(), in, 1.0f, want.data(), in);
      linear_backward(gy, x, w, &got, nullptr, nullptr);
      CHECK(std::memcmp(got.data(), want.data(), static_cast<size_t>(got.numel()) * sizeof(float)) == 0);
      Tensor again = Tensor::zeros({n, in});
      CHECK(linear_backward_one_hot(gy, w, again));
      CHECK(std::memcmp(again.data(), want.data(), static_cast<size_t>(got.numel()) * sizeof(float)) == 0);
      // Not one-hot, or not starting from zeros: the GEMM's job, gx untouched here.
      Tensor two = gy.clone();
      two[0 * out + 4] = 0.5f;
      Tensor busy = Tensor::zeros({n, in});
      busy[1] = 1.0f;
      const Tensor busy0 = busy.clone();
      CHECK_FALSE(linear_backward_one_hot(two, w, again));
      CHECK_FALSE(linear_backward_one_hot(gy, w, busy));
      CHECK(std::memcmp(busy.data(), busy0.data(), static_cast<size_t>(busy.numel()) * sizeof(float)) == 0);
    }
  }
  set_active_isa(saved);
}

TEST_CASE("MaxPool2d / AvgPool2d forward values (ceil mode, padding, divisor)") {
  const Tensor x = Tensor::from({1, 1, 3, 3}, {1, 2, 3, 4, 5, 6, 7, 8, 9});
  const Tensor m = maxpool2d_forward(x, pool_spec(2, 2, 0, true), nullptr);
  CHECK(m.shape() == Shape{1, 1, 2, 2});
  CHECK(m[0] == 5);
  CHECK(m[1] == 6);
  CHECK(m[2] == 8);
  CHECK(m[3] == 9);
  // PyTorch: F.avg_pool2d(arange(1,10).view(1,1,3,3), 2, 2, ceil_mode=True)
  //          = [[3, 4.5], [7.5, 9]] (windows past the input are clipped for the divisor).
  for (bool inc : {true, false}) {
    const Tensor a = avgpool2d_forward(x, pool_spec(2, 2, 0, true, inc));
    CHECK(a[0] == doctest::Approx(3.0));
    CHECK(a[1] == doctest::Approx(4.5));
    CHECK(a[2] == doctest::Approx(7.5));
    CHECK(a[3] == doctest::Approx(9.0));
  }
  // F.avg_pool2d([[1,2],[3,4]], 2, 2, padding=1) = [[0.25, 0.5], [0.75, 1]];
  // with count_include_pad=False = [[1, 2], [3, 4]].
  const Tensor x2 = Tensor::from({1, 1, 2, 2}, {1, 2, 3, 4});
  const Tensor a1 = avgpool2d_forward(x2, pool_spec(2, 2, 1, false, true));
  const Tensor a2 = avgpool2d_forward(x2, pool_spec(2, 2, 1, false, false));
  const float e1[] = {0.25f, 0.5f, 0.75f, 1.0f}, e2[] = {1, 2, 3, 4};
  for (int i = 0; i < 4; ++i) {
    CHECK(a1[i] == doctest::Approx(e1[i]));
    CHECK(a2[i] == doctest::Approx(e2[i]));
  }
  // Ties: like PyTorch (strict >), the first maximum in row-major window order wins and
  // receives the whole gradient.
  {
    const Tensor t = Tensor::from({1, 1, 2, 4}, {3, 3, 1, 5, 3, 0, 5, 5});
    std::vector<int32_t> am;
    const Tensor y = maxpool2d_forward(t, pool_spec(2, 2), &am);
    CHECK(y[0] == 3);
    CHECK(y[1] == 5);
    CHECK(am[0] == 0);
    CHECK(am[1] == 3);
    Tensor g = Tensor::zeros(t.shape());
    maxpool2d_backward(Tensor::from({1, 1, 1, 2}, {1.0f, 2.0f}), am, g);
    const float eg[] = {1, 0, 0, 2, 0, 0, 0, 0};
    for (int i = 0; i < 8; ++i) CHECK(g[i] == eg[i]);
  }
  // Max pool with padding never picks the (implicit -inf) padding.
  const Tensor neg = Tensor::from({1, 1, 2, 2}, {-4, -3, -2, -1});
  const Tensor mp = maxpool2d_forward(neg, pool_spec(2, 2, 1), nullptr);
  CHECK(mp[0] == -4);
  CHECK(mp[1] == -3);
  CHECK(mp[2] == -2);
  CHECK(mp[3] == -1);
}

TEST_CASE("grad: AvgPool2d (padding, ceil mode, count_include_pad)") {
  struct Case {
    const char* name;
    int64_t k, s, p;
    bool ceil_mode, include_pad;
    Shape x, out;
  };
  const Case cases[] = {
      {"2x2 s2", 2, 2, 0, false, true, {2, 3, 6, 5}, {2, 3, 3, 2}},
      {"3x3 s2 p1 include", 3, 2, 1, false, true, {1, 2, 7, 8}, {1, 2, 4, 4}},
      {"3x3 s2 p1 exclude", 3, 2, 1, false, false, {1, 2, 7, 8}, {1, 2, 4, 4}},
      {"3x3 s2 p1 ceil include", 3, 2, 1, true, true, {1, 2, 7, 8}, {1, 2, 4, 5}},
      {"3x3 s2 p1 ceil exclude", 3, 2, 1, true, false, {1, 2, 7, 8}, {1, 2, 4, 5}},
      {"3x3 s3 p1 ceil exclude", 3, 3, 1, true, false, {2, 1, 5, 5}, {2, 1, 2, 2}},
      {"2x2 s2 ceil", 2, 2, 0, true, true, {1, 2, 5, 7}, {1, 2, 3, 4}},
  };
  uint64_t seed = 60;
  for (const Case& c : cases) {
    CAPTURE(c.name);
    std::mt19937_64 rng(++seed);
    AvgPool2d pool(c.k, c.s, c.p, c.ceil_mode, c.include_pad);
    CHECK(pool.out_shape(c.x) == c.out);
    Tensor x = randn(c.x, rng);
    CHECK(pool.forward(nullptr, Var{x}).value.shape() == c.out);
    grad_check(c.name, module_fwd(pool), x, {}, seed * 3, 80);
  }
}

TEST_CASE("grad: AdaptiveAvgPool2d (downsampling and upsampling)") {
  struct Case {
    Shape x;
    int64_t oh, ow;
  };
  const Case cases[] = {
      {{2, 3, 5, 7}, 3, 2}, {{1, 2, 2, 2}, 7, 7}, {{2, 2, 4, 4}, 1, 1}, {{1, 2, 3, 5}, 4, 3},
      {{3, 4, 1, 1}, 1, 1}, {{1, 2, 3, 5}, 3, 5},  // windows of one pixel: passed through
  };
  uint64_t seed = 70;
  for (const Case& c : cases) {
    CAPTURE(shape_str(c.x));
    CAPTURE(c.oh);
    CAPTURE(c.ow);
    std::mt19937_64 rng(++seed);
    AdaptiveAvgPool2d pool(c.oh, c.ow);
    const Shape out = {c.x[0], c.x[1], c.oh, c.ow};
    CHECK(pool.out_shape(c.x) == out);
    Tensor x = randn(c.x, rng);
    CHECK(pool.forward(nullptr, Var{x}).value.shape() == out);
    grad_check("adaptive avg pool", module_fwd(pool), x, {}, seed * 3, 60);
  }
  {
    // Same size out as in: the input's bits, and the gradient added as it is.
    std::mt19937_64 rng(71);
    const Tensor x = randn({2, 5, 3, 2}, rng), g = randn({2, 5, 3, 2}, rng);
    CHECK(std::memcmp(adaptive_avgpool2d_forward(x, 3, 2).data(), x.data(), x.numel() * sizeof(float)) == 0);
    Tensor gx = Tensor::full(x.shape(), 0.5f);
    adaptive_avgpool2d_backward(g, gx);
    for (int64_t i = 0; i < gx.numel(); ++i) CHECK(gx[i] == 0.5f + g[i]);
  }
  // PyTorch bins for 2 -> 7: [0,1) [0,1) [0,1) [0,2) [1,2) [1,2) [1,2).
  const Tensor x = Tensor::from({1, 1, 2, 2}, {1, 2, 3, 4});
  const Tensor y = adaptive_avgpool2d_forward(x, 7, 7);
  const double a[2][2] = {{1, 2}, {3, 4}};
  auto bins = [](int64_t i, int64_t& b, int64_t& e) {
    const int64_t lo[7] = {0, 0, 0, 0, 1, 1, 1}, hi[7] = {1, 1, 1, 2, 2, 2, 2};
    b = lo[i];
    e = hi[i];
  };
  for (int64_t i = 0; i < 7; ++i)
    for (int64_t j = 0; j < 7; ++j) {
      int64_t y0, y1, x0, x1;
      bins(i, y0, y1);
      bins(j, x0, x1);
      double s = 0;
      for (int64_t u = y0; u < y1; ++u)
        for (int64_t v = x0; v < x1; ++v) s += a[u][v];
      CHECK(y[i * 7 + j] == doctest::Approx(s / double((y1 - y0) * (x1 - x0))));
    }
  // 5x7 -> 3x2 spot values: bin rows [0,2) [1,4) [3,5), cols [0,4) [3,7).
  std::vector<float> v(35);
  for (int i = 0; i < 35; ++i) v[i] = float(i);
  const Tensor z = adaptive_avgpool2d_forward(Tensor::from({1, 1, 5, 7}, v), 3, 2);
  auto mean = [&](int r0, int r1, int c0, int c1) {
    double s = 0;
    for (int r = r0; r < r1; ++r)
      for (int c = c0; c < c1; ++c) s += r * 7 + c;
    return s / ((r1 - r0) * (c1 - c0));
  };
  CHECK(z[0] == doctest::Approx(mean(0, 2, 0, 4)));
  CHECK(z[1] == doctest::Approx(mean(0, 2, 3, 7)));
  CHECK(z[2] == doctest::Approx(mean(1, 4, 0, 4)));
  CHECK(z[5] == doctest::Approx(mean(3, 5, 3, 7)));
}

TEST_CASE("grad: Linear (with and without bias)") {
  for (bool bias : {true, false}) {
    CAPTURE(bias);
    std::mt19937_64 rng(bias ? 81 : 82);
    Linear fc(7, 5, bias);
    fill_randn(fc.weight, rng);
    ParamList params = {{"weight", &fc.weight}};
    if (bias) {
      fill_randn(fc.bias, rng);
      params.push_back({"bias", &fc.bias});
    }
    Tensor x = randn({3, 7}, rng);
    CHECK(fc.out_shape({3, 7}) == Shape{3, 5});
    grad_check("linear", module_fwd(fc), x, params, 83, 40);
  }
}

TEST_CASE("grad: Dropout (train: fixed mask; eval: identity)") {
  std::mt19937_64 rng(91);
  const double p = 0.3;
  Dropout drop(p);
  drop.set_training(true);
  Tensor x = distinct({4, 250}, rng, 0.01);  // no zeros: the mask is y / x
  // Reseeding before every forward fixes the mask, so the layer is linear in x.
  auto f = [&](Tape* t, const Var& v) {
    drop.seed(1234);
    return drop.forward(t, v);
  };
  Tape tape;
  const Var xin = tape.input(x, true);
  const Var y = f(&tape, xin);
  const Tensor r = randn(y.value.shape(), rng);
  tape.backward(y, r);
  const Tensor g = tape.grad(xin);
  const float scale = static_cast<float>(1.0 / (1.0 - p));
  int64_t dropped = 0;
  for (int64_t i = 0; i < x.numel(); ++i) {
    const float mask = y.value[i] / x[i];
    const bool zero = y.value[i] == 0.0f;
    const bool kept = std::fabs(mask - scale) <= 1e-6f * scale;
    CHECK((zero || kept));
    dropped += zero;
    CHECK(g[i] == doctest::Approx(r[i] * (zero ? 0.0f : scale)).epsilon(1e-6));
  }
  CHECK(dropped > 0.2 * x.numel());
  CHECK(dropped < 0.4 * x.numel());
  // Same seed, same mask.
  CHECK(bitwise_equal(f(nullptr, Var{x}).value, y.value));
  grad_check("dropout train", f, x, {}, 92, 60);

  // Eval mode: the identity, gradient passes unchanged.
  drop.set_training(false);
  Tape t2;
  const Var x2 = t2.input(x, true);
  const Var y2 = drop.forward(&t2, x2);
  CHECK(bitwise_equal(y2.value, x));
  t2.backward(y2, r);
  CHECK(bitwise_equal(t2.grad(x2), r));
  // p = 1 drops everything (zero gradient); p = 0 is the identity even in training.
  Dropout all(1.0);
  all.set_training(true);
  Tape t3;
  const Var x3 = t3.input(x, true);
  const Var y3 = all.forward(&t3, x3);
  CHECK(max_abs(y3.value) == 0.0);
  t3.backward(y3, r);
  CHECK(max_abs(t3.grad(x3)) == 0.0);
  Dropout none(0.0);
  none.set_training(true);
  CHECK(bitwise_equal(none.forward(nullptr, Var{x}).value, x));
}

TEST_CASE("grad: Add (two inputs, and one input reaching the sum twice)") {
  std::mt19937_64 rng(101);
  Tensor a = randn({2, 3, 4, 4}, rng), b = randn({2, 3, 4, 4}, rng);
  Tape tape;
  const Var va = tape.input(a, true), vb = tape.input(b, true);
  const Var y = add(&tape, va, vb);
  const Tensor r = randn(y.value.shape(), rng);
  tape.backward(y, r);
  CHECK(bitwise_equal(tape.grad(va), r));
  CHECK(bitwise_equal(tape.grad(vb), r));
  // A residual-style fan-out: y = x + relu(x); dx accumulates from both consumers.
  Tensor x = distinct({2, 3, 4, 4}, rng, 0.05);
  grad_check("add(x, relu(x))",
             [](Tape* t, const Var& v) { return add(t, v, relu(t, v)); }, x, {}, 102, 96);
  grad_check("add(x, x)", [](Tape* t, const Var& v) { return add(t, v, v); }, x, {}, 103, 96);
  // Only one side requiring a gradient.
  Tape t2;
  const Var ca = t2.input(a, false), cb = t2.input(b, true);
  const Var y2 = add(&t2, ca, cb);
  t2.backward(y2, r);
  CHECK(bitwise_equal(t2.grad(cb), r));
  CHECK(max_abs(t2.grad(ca)) == 0.0);
}

TEST_CASE("grad: Flatten") {
  std::mt19937_64 rng(111);
  Flatten fl;
  CHECK(fl.out_shape({2, 3, 2, 5}) == Shape{2, 30});
  Tensor x = randn({2, 3, 2, 5}, rng);
  CHECK(fl.forward(nullptr, Var{x}).value.shape() == Shape{2, 30});
  grad_check("flatten", module_fwd(fl), x, {}, 112, 60);
  Tape tape;
  const Var xin = tape.input(x, true);
  const Var y = fl.forward(&tape, xin);
  const Tensor r = randn(y.value.shape(), rng);
  tape.backward(y, r);
  const Tensor g = tape.grad(xin);
  CHECK(g.shape() == x.shape());
  CHECK(std::memcmp(g.data(), r.data(), r.bytes()) == 0);
}

TEST_CASE("grad: Softmax (last dimension)") {
  std::mt19937_64 rng(121);
  for (const Shape& s : {Shape{3, 5}, Shape{2, 2, 4}}) {
    CAPTURE(shape_str(s));
    Tensor x = randn(s, rng, 2.0);
    const Tensor y = softmax_forward(x);
    const int64_t c = s.back();
    for (int64_t row = 0; row < x.numel() / c; ++row) {
      double sum = 0.0;
      for (int64_t j = 0; j < c; ++j) sum += y[row * c + j];
      CHECK(sum == doctest::Approx(1.0).epsilon(1e-6));
    }
    grad_check("softmax", [](Tape* t, const Var& v) { return softmax(t, v); }, x, {}, 122, 40);
  }
  // Large logits do not overflow.
  const Tensor big = softmax_forward(Tensor::from({1, 3}, {1000.0f, 1000.0f, -1000.0f}));
  CHECK(big[0] == doctest::Approx(0.5));
  CHECK(big[2] == 0.0f);
}

TEST_CASE("grad: cross_entropy_loss (label smoothing 0 and 0.1)") {
  const std::vector<int> targets = {0, 5, 2, 2};
  for (double eps : {0.0, 0.1}) {
    CAPTURE(eps);
    std::mt19937_64 rng(131);
    Tensor logits = randn({4, 6}, rng, 1.5);
    // Value against PyTorch's definition: mean_n [(1-eps) * nll(t) + eps * mean_j nll(j)].
    const double loss = cross_entropy(logits, targets, eps, nullptr);
    double expect = 0.0;
    for (int n = 0; n < 4; ++n) {
      double se = 0.0;
      for (int j = 0; j < 6; ++j) se += std::exp(double(logits[n * 6 + j]));
      const double lse = std::log(se);
      double mean_nll = 0.0;
      for (int j = 0; j < 6; ++j) mean_nll += (lse - logits[n * 6 + j]) / 6.0;
      expect += ((1.0 - eps) * (lse - logits[n * 6 + targets[n]]) + eps * mean_nll) / 4.0;
    }
    CHECK(loss == doctest::Approx(expect).epsilon(1e-9));
    auto f = [&](Tape* t, const Var& v) { return cross_entropy_loss(t, v, targets, eps); };
    CHECK(f(nullptr, Var{logits}).value.shape() == Shape{});
    CHECK(f(nullptr, Var{logits}).value[0] == doctest::Approx(expect).epsilon(1e-6));
    grad_check("cross entropy", f, logits, {}, 132);
  }
  // Hand value: logits [1,2,3], target 0, eps 0.1 -> 2.30760596.
  const Tensor l = Tensor::from({1, 3}, {1, 2, 3});
  CHECK(cross_entropy(l, {0}, 0.1, nullptr) == doctest::Approx(2.30760596).epsilon(1e-6));
  CHECK(cross_entropy(Tensor::zeros({1, 2}), {1}, 0.0, nullptr) ==
        doctest::Approx(std::log(2.0)));
}

TEST_CASE("grad: a small network end to end through the tape (eval-mode batch norm)") {
  std::mt19937_64 rng(141);
  Conv2d c1(3, 4, 3, 1, 1, true);
  BatchNorm2d bn(4);
  MaxPool2d mp(2, 2);
  Conv2d c2(4, 6, 3, 1, 1, false, 1, 2);
  AvgPool2d ap(2, 2, 0, true);
  AdaptiveAvgPool2d aap(3, 3);
  Flatten fl;
  Linear fc(54, 5);
  Dropout drop(0.25);
  for (Module* m : std::vector<Module*>{&c1, &mp, &c2, &ap, &aap, &fl, &fc, &drop})
    m->set_training(true);
  bn.set_training(false);
  fill_randn(c1.weight, rng);
  fill_randn(c1.bias, rng);
  fill_randn(bn.weight, rng, 0.3, 1.0);
  fill_randn(bn.bias, rng, 0.3);
  fill_randn(bn.running_mean, rng, 0.3);
  bn.running_var.value.fill(2.0f);
  fill_randn(c2.weight, rng);
  fill_randn(fc.weight, rng, 0.3);
  fill_randn(fc.bias, rng);
  const std::vector<int> targets = {1, 4};
  auto f = [&](Tape* t, const Var& x) {
    Var h = c1.forward(t, x);
    h = bn.forward(t, h);
    h = relu(t, h);
    h = mp.forward(t, h);
    h = c2.forward(t, h);
    h = add(t, h, relu(t, h));
    h = ap.forward(t, h);
    h = aap.forward(t, h);
    h = fl.forward(t, h);
    drop.seed(5);
    h = drop.forward(t, h);
    h = fc.forward(t, h);
    return cross_entropy_loss(t, h, targets, 0.1);
  };
  Tensor x = randn({2, 3, 8, 8}, rng);
  // A parameter perturbation moves a whole channel, so a ReLU / max-pool kink may be
  // crossed now and then: tolerated (see NumOpts::allow_kinks); network tolerance 5e-3.
  NumOpts opt;
  opt.allow_kinks = true;
  opt.tol = 5e-3;
  grad_check("network", f, x,
             {{"c1.weight", &c1.weight},
              {"c1.bias", &c1.bias},
              {"bn.weight", &bn.weight},
              {"bn.bias", &bn.bias},
              {"c2.weight", &c2.weight},
              {"fc.weight", &fc.weight},
              {"fc.bias", &fc.bias}},
             142, 20, opt);
}

TEST_CASE("grad: a smooth network with train-mode batch norms through the tape") {
  // No kinks, so every entry must match; h = 1e-2 because of batch-norm rounding noise.
  std::mt19937_64 rng(145);
  Conv2d c1(3, 4, 3, 2, 1, true);
  BatchNorm2d bn1(4);
  Conv2d c2(4, 4, 1, 1, 0, false);
  BatchNorm2d bn2(4);
  AvgPool2d ap(3, 2, 1, true, false);
  AdaptiveAvgPool2d aap(2, 2);
  Linear fc(16, 3);
  bn1.set_training(true);
  bn2.set_training(true);
  fill_randn(c1.weight, rng);
  fill_randn(c1.bias, rng);
  fill_randn(bn1.weight, rng, 0.3, 1.0);
  fill_randn(bn1.bias, rng, 0.3);
  fill_randn(c2.weight, rng);
  fill_randn(bn2.weight, rng, 0.3, 1.0);
  fill_randn(bn2.bias, rng, 0.3);
  fill_randn(fc.weight, rng, 0.5);
  fill_randn(fc.bias, rng);
  const std::vector<int> targets = {2, 0, 1};
  auto f = [&](Tape* t, const Var& x) {
    Var h = c1.forward(t, x);
    h = bn1.forward(t, h);
    Var g = c2.forward(t, h);
    g = bn2.forward(t, g);
    h = add(t, h, g);
    h = ap.forward(t, h);
    h = aap.forward(t, h);
    h = flatten(t, h);
    h = fc.forward(t, h);
    h = softmax(t, h);
    return cross_entropy_loss(t, h, targets, 0.0);
  };
  Tensor x = randn({3, 3, 7, 6}, rng);
  NumOpts opt;
  opt.h = 1e-2f;
  grad_check("smooth network", f, x,
             {{"c1.weight", &c1.weight},
              {"c1.bias", &c1.bias},
              {"bn1.weight", &bn1.weight},
              {"bn1.bias", &bn1.bias},
              {"c2.weight", &c2.weight},
              {"bn2.weight", &bn2.weight},
              {"bn2.bias", &bn2.bias},
              {"fc.weight", &fc.weight},
              {"fc.bias", &fc.bias}},
             146, 20, opt);
}

// ================================================================== tape semantics
namespace {
struct Net {
  Conv2d c1{3, 4, 3, 1, 1, true};
  BatchNorm2d bn{4};
  Conv2d c2{4, 6, 3, 2, 1, false};
  Linear fc{54, 5};
  explicit Net(uint64_t seed) {
    std::mt19937_64 rng(seed);
    fill_randn(c1.weight, rng);
    fill_randn(c1.bias, rng);
    fill_randn(bn.weight, rng, 0.3, 1.0);
    fill_randn(bn.bias, rng, 0.3);
    fill_randn(c2.weight, rng);
    fill_randn(fc.weight, rng, 0.3);
    fill_randn(fc.bias, rng);
    bn.set_training(true);
  }
  ParamList params() {
    return {{"c1.weight", &c1.weight}, {"c1.bias", &c1.bias}, {"bn.weight", &bn.weight},
            {"bn.bias", &bn.bias},     {"c2.weight", &c2.weight}, {"fc.weight", &fc.weight},
            {"fc.bias", &fc.bias}};
  }
  void reset_grads() {
    for (auto& p : params()) p.second->grad = Tensor();
  }
  // Every op output, in order; the last one is the network output.
  std::vector<Var> run(Tape* t, const Var& x) {
    std::vector<Var> v;
    v.push_back(c1.forward(t, x));
    v.push_back(bn.forward(t, v.back()));
    v.push_back(relu(t, v.back()));
    v.push_back(c2.forward(t, v.back()));
    v.push_back(flatten(t, v.back()));
    v.push_back(fc.forward(t, v.back()));
    return v;
  }
};

struct Reference {
  std::vector<Tensor> act_grads;    // per op output
  std::vector<Tensor> param_grads;  // per Net::params()
  Tensor input_grad;
  Tensor seed;
};

// Full-gradient run (Tape(true), input requiring grad) as the reference.
Reference reference_run(Net& net, const Tensor& x) {
  Reference ref;
  net.reset_grads();
  Tape tape(true);
  const Var xin = tape.input(x, true);
  const std::vector<Var> v = net.run(&tape, xin);
  std::mt19937_64 rng(999);
  ref.seed = randn(v.back().value.shape(), rng);
  tape.backward(v.back(), ref.seed);
  for (const Var& a : v) ref.act_grads.push_back(tape.grad(a).clone());
  for (auto& p : net.params()) {
    REQUIRE(p.second->grad.defined());
    ref.param_grads.push_back(p.second->grad.clone());
  }
  ref.input_grad = tape.grad(xin).clone();
  net.reset_grads();
  return ref;
}

void check_close(const Tensor& a, const Tensor& b, double tol = 1e-5) {
  REQUIRE(a.shape() == b.shape());
  const double scale = std::max(1.0, max_abs(b));
  double e = 0.0;
  for (int64_t i = 0; i < a.numel(); ++i) e = std::max(e, std::fabs(double(a[i]) - b[i]));
  CHECK(e <= tol * scale);
}
}  // namespace

TEST_CASE("tape: param_grads=false computes activation gradients but no parameter gradient") {
  std::mt19937_64 rng(151);
  Net net(152);
  const Tensor x = randn({2, 3, 6, 6}, rng);
  const Reference ref = reference_run(net, x);
  // The reference input gradient is itself checked numerically.
  {
    std::mt19937_64 r2(153);
    auto fwd = [&] { return net.run(nullptr, Var{x}).back().value; };
    check_numeric("net dx", x, ref.input_grad, fwd, ref.seed, r2, kNetOpts);
    net.reset_grads();
  }
  Tape tape(false);
  CHECK_FALSE(tape.param_grads());
  const Var xin = tape.input(x, true);
  const std::vector<Var> v = net.run(&tape, xin);
  tape.backward(v.back(), ref.seed);
  for (size_t i = 0; i < v.size(); ++i) {
    CAPTURE(i);
    CHECK(tape.needs_grad(v[i]));
    check_close(tape.grad(v[i]), ref.act_grads[i]);
  }
  check_close(tape.grad(xin), ref.input_grad);
  for (auto& p : net.params()) {
    CAPTURE(p.first);
    CHECK_FALSE(p.second->grad.defined());
  }
  // With nothing requiring a gradient, nothing is recorded and backward refuses.
  Tape t2(false);
  const Var x2 = t2.input(x, false);
  const std::vector<Var> v2 = net.run(&t2, x2);
  CHECK(t2.size() == 0);
  CHECK(v2.back().id == -1);
  CHECK_THROWS_AS(t2.backward(v2.back(), ref.seed), Error);
}

TEST_CASE("tape: activations_only gives every op output a gradient, no input/weight work") {
  std::mt19937_64 rng(161);
  Net net(162);
  const Tensor x = randn({2, 3, 6, 6}, rng);
  const Reference ref = reference_run(net, x);
  Tape tape = Tape::activations_only();
  CHECK_FALSE(tape.param_grads());
  const Var xin = tape.input(x, false);
  CHECK_FALSE(tape.needs_grad(xin));
  const std::vector<Var> v = net.run(&tape, xin);
  CHECK(tape.size() == v.size());  // every op recorded
  tape.backward(v.back(), ref.seed);
  for (size_t i = 0; i < v.size(); ++i) {
    CAPTURE(i);
    CHECK(v[i].id >= 0);
    CHECK(tape.needs_grad(v[i]));
    check_close(tape.grad(v[i]), ref.act_grads[i]);
  }
  const Tensor gin = tape.grad(xin);
  CHECK(gin.shape() == x.shape());
  CHECK(max_abs(gin) == 0.0);
  for (auto& p : net.params()) {
    CAPTURE(p.first);
    CHECK_FALSE(p.second->grad.defined());
  }
  // Also in eval mode (batch norm uses its per-channel shortcut).
  net.bn.set_training(false);
  const Reference ref_eval = reference_run(net, x);
  Tape t2 = Tape::activations_only();
  const Var x2 = t2.input(x, false);
  const std::vector<Var> v2 = net.run(&t2, x2);
  t2.backward(v2.back(), ref_eval.seed);
  for (size_t i = 0; i < v2.size(); ++i) check_close(t2.grad(v2[i]), ref_eval.act_grads[i]);
  for (auto& p : net.params()) CHECK_FALSE(p.second->grad.defined());
}

TEST_CASE("tape: parameter gradients accumulate across backward passes; zero_grad clears") {
  std::mt19937_64 rng(171);
  Net net(172);
  const Tensor x = randn({2, 3, 6, 6}, rng);
  const Reference ref = reference_run(net, x);
  auto params = net.params();
  // Two backward passes over one tape.
  {
    Tape tape;
    const Var xin = tape.input(x, true);
    const std::vector<Var> v = net.run(&tape, xin);
    tape.backward(v.back(), ref.seed);
    for (size_t i = 0; i < params.size(); ++i)
      check_close(params[i].second->grad, ref.param_grads[i]);
    tape.backward(v.back(), ref.seed);
    for (size_t i = 0; i < params.size(); ++i) {
      CAPTURE(params[i].first);
      Tensor twice = ref.param_grads[i].clone();
      for (int64_t j = 0; j < twice.numel(); ++j) twice[j] *= 2.0f;
      check_close(params[i].second->grad, twice);
    }
    // Activation gradients do not accumulate: each backward starts afresh.
    check_close(tape.grad(xin), ref.input_grad);
  }
  // A second forward/backward on a new tape keeps accumulating.
  {
    Tape tape;
    const Var xin = tape.input(x, true);
    const std::vector<Var> v = net.run(&tape, xin);
    tape.backward(v.back(), ref.seed);
    for (size_t i = 0; i < params.size(); ++i) {
      Tensor thrice = ref.param_grads[i].clone();
      for (int64_t j = 0; j < thrice.numel(); ++j) thrice[j] *= 3.0f;
      check_close(params[i].second->grad, thrice);
    }
  }
  for (auto& p : params) p.second->zero_grad();
  for (auto& p : params) {
    REQUIRE(p.second->grad.defined());
    CHECK(max_abs(p.second->grad) == 0.0);
  }
  {
    Tape tape;
    const Var xin = tape.input(x, true);
    const std::vector<Var> v = net.run(&tape, xin);
    tape.backward(v.back(), ref.seed);
    for (size_t i = 0; i < params.size(); ++i)
      check_close(params[i].second->grad, ref.param_grads[i]);
  }
  // zero_grad on a parameter without a gradient keeps it undefined.
  Parameter p;
  p.value = Tensor::zeros({3});
  p.zero_grad();
  CHECK_FALSE(p.grad.defined());
  // Parameter::accumulate allocates then adds.
  p.accumulate(Tensor::full({3}, 1.5f));
  p.accumulate(Tensor::full({3}, 1.0f));
  CHECK(p.grad[2] == 2.5f);
  CHECK_THROWS_AS(p.accumulate(Tensor::zeros({4})), Error);
  // Tape::clear drops nodes and gradients.
  Tape tape;
  const Var xin = tape.input(x, true);
  const std::vector<Var> v = net.run(&tape, xin);
  CHECK(tape.size() > 0);
  tape.clear();
  CHECK(tape.size() == 0);
}

TEST_CASE("tape: frozen parameters get no gradient; the rest are unaffected") {
  std::mt19937_64 rng(181);
  Net net(182);
  const Tensor x = randn({2, 3, 6, 6}, rng);
  const Reference ref = reference_run(net, x);
  net.c1.weight.requires_grad = false;
  net.bn.weight.requires_grad = false;
  net.fc.bias.requires_grad = false;
  Tape tape;
  CHECK_FALSE(tape.wants(net.c1.weight));
  CHECK_FALSE(tape.wants(net.bn.running_mean));
  CHECK(tape.wants(net.c1.bias));
  const Var xin = tape.input(x, true);
  const std::vector<Var> v = net.run(&tape, xin);
  tape.backward(v.back(), ref.seed);
  auto params = net.params();
  for (size_t i = 0; i < params.size(); ++i) {
    CAPTURE(params[i].first);
    if (!params[i].second->requires_grad)
      CHECK_FALSE(params[i].second->grad.defined());
    else
      check_close(params[i].second->grad, ref.param_grads[i]);
  }
  CHECK_FALSE(net.bn.running_mean.grad.defined());
  CHECK_FALSE(net.bn.running_var.grad.defined());
  check_close(tape.grad(xin), ref.input_grad);
  for (size_t i = 0; i < v.size(); ++i) check_close(tape.grad(v[i]), ref.act_grads[i]);

  // Everything frozen and the input constant: nothing to record.
  for (auto& p : params) p.second->requires_grad = false;
  net.reset_grads();
  Tape t2;
  const Var x2 = t2.input(x, false);
  const std::vector<Var> v2 = net.run(&t2, x2);
  CHECK(t2.size() == 0);
  CHECK(v2.back().id == -1);
  // Everything frozen but the input trainable: input gradient still exact.
  Tape t3;
  const Var x3 = t3.input(x, true);
  const std::vector<Var> v3 = net.run(&t3, x3);
  t3.backward(v3.back(), ref.seed);
  check_close(t3.grad(x3), ref.input_grad);
  for (auto& p : params) CHECK_FALSE(p.second->grad.defined());
  // A frozen first layer: only the layers after it are recorded.
  for (auto& p : params) p.second->requires_grad = true;
  net.c1.weight.requires_grad = net.c1.bias.requires_grad = false;
  Tape t4;
  const Var x4 = t4.input(x, false);
  const std::vector<Var> v4 = net.run(&t4, x4);
  CHECK(v4[0].id == -1);
  CHECK(v4[1].id >= 0);
  t4.backward(v4.back(), ref.seed);
  CHECK_FALSE(net.c1.weight.grad.defined());
  CHECK_FALSE(net.c1.bias.grad.defined());
  for (size_t i = 2; i < params.size(); ++i)
    check_close(params[i].second->grad, ref.param_grads[i]);
}

// ================================================================== conv fast vs reference
namespace {
struct ConvCase {
  const char* name;
  Shape x;
  Conv2dSpec s;
  bool bias;
};
std::vector<ConvCase> conv_cases() {
  return {
      {"3x3 p1 odd sizes batch 3", {3, 3, 13, 11}, conv_spec(3, 8, 3, 3, 1, 1, 1, 1), true},
      {"1x1 direct", {2, 16, 9, 7}, conv_spec(16, 12, 1, 1), true},
      {"1x1 stride 2", {1, 6, 10, 9}, conv_spec(6, 5, 1, 1, 2, 2), false},
      {"3x3 s2 p1", {2, 4, 15, 17}, conv_spec(4, 6, 3, 3, 2, 2, 1, 1), true},
      {"3x3 dil2 p2", {2, 5, 12, 9}, conv_spec(5, 7, 3, 3, 1, 1, 2, 2, 2, 2), true},
      {"3x3 groups2", {3, 8, 9, 9}, conv_spec(8, 6, 3, 3, 1, 1, 1, 1, 1, 1, 2), false},
      {"depthwise 3x3", {2, 6, 11, 8}, conv_spec(6, 6, 3, 3, 1, 1, 1, 1, 1, 1, 6), true},
      {"depthwise x2 5x5 s2 p2", {2, 4, 13, 10}, conv_spec(4, 8, 5, 5, 2, 2, 2, 2, 1, 1, 4), true},
      {"rect 2x3 s(2,1) p(1,0) d(1,2)", {2, 3, 8, 9}, conv_spec(3, 4, 2, 3, 2, 1, 1, 0, 1, 2),
       true},
      {"7x7 s2 p3", {1, 3, 23, 19}, conv_spec(3, 8, 7, 7, 2, 2, 3, 3), false},
      {"1x1 groups2 direct", {2, 8, 5, 5}, conv_spec(8, 4, 1, 1, 1, 1, 0, 0, 1, 1, 2), true},
      {"3x3 larger (threaded GEMM)", {2, 32, 20, 20}, conv_spec(32, 64, 3, 3, 1, 1, 1, 1), true},
      {"1x1 larger (threaded GEMM)", {2, 64, 14, 14}, conv_spec(64, 96, 1, 1), false},
      // Small feature maps: images side by side in one GEMM, in chunks (6 + 1 here).
      {"3x3 p1 batch 7, chunked images", {7, 5, 10, 10}, conv_spec(5, 6, 3, 3, 1, 1, 1, 1), true},
      {"1x1 direct batch 5, 2x2 maps", {5, 12, 2, 2}, conv_spec(12, 10, 1, 1), false},
      {"1x1 s2 batch 4, 1x1 output", {4, 8, 2, 2}, conv_spec(8, 16, 1, 1, 2, 2), true},
      {"3x3 s2 p1 batch 3, 2x2 output", {3, 16, 4, 4}, conv_spec(16, 8, 3, 3, 2, 2, 1, 1), true},
      // Maps 4 or more wide read a zero-padded plane: the fixed widths 8 and 4 at strides 1
      // and 2 (ResNet-50's layer2 and layer3 at 64x64), padding wider than the kernel
      // reaches, and padding on one axis only.
      {"3x3 p1 8x8 output", {1, 9, 8, 8}, conv_spec(9, 5, 3, 3, 1, 1, 1, 1), true},
      {"3x3 s2 p1 8x8 output, batch 2", {2, 6, 16, 16}, conv_spec(6, 4, 3, 3, 2, 2, 1, 1), false},
      {"3x3 p1 4x4 output, batch 3", {3, 7, 4, 4}, conv_spec(7, 6, 3, 3, 1, 1, 1, 1), true},
      {"3x3 s2 p1 4x4 output", {1, 5, 8, 8}, conv_spec(5, 3, 3, 3, 2, 2, 1, 1), true},
      {"3x3 p3 on 2x2: rows and columns of padding only", {2, 3, 2, 2},
       conv_spec(3, 4, 3, 3, 1, 1, 3, 3), true},
      {"1x3 p(0,1) 6x4 output", {1, 4, 6, 4}, conv_spec(4, 5, 1, 3, 1, 1, 0, 1), false},
  };
}
}  // namespace

TEST_CASE("conv2d_forward (im2col + GEMM) matches conv2d_forward_naive") {
  uint64_t seed = 200;
  for (const ConvCase& c : conv_cases()) {
    CAPTURE(c.name);
    std::mt19937_64 rng(++seed);
    const Tensor x = randn(c.x, rng);
    const Tensor w = randn({c.s.out_channels, c.s.in_channels / c.s.groups, c.s.kh, c.s.kw}, rng,
                           0.5);
    const Tensor b = randn({c.s.out_channels}, rng);
    const Tensor* bp = c.bias ? &b : nullptr;
    const Tensor fast = conv2d_forward(x, w, bp, c.s);
    const Tensor ref = conv2d_forward_naive(x, w, bp, c.s);
    REQUIRE(fast.shape() == ref.shape());
    REQUIRE(fast.shape() == conv2d_out_shape(c.x, c.s));
    const double scale = max_abs(ref);
    double err = 0.0;
    for (int64_t i = 0; i < ref.numel(); ++i)
      err = std::max(err, std::fabs(double(fast[i]) - ref[i]));
    CHECK(scale > 0.0);
    CHECK(err <= 1e-4 * scale);
  }
}

TEST_CASE("conv2d backward (data, weight, bias) matches double-precision loops, and adds") {
  uint64_t seed = 300;
  for (const ConvCase& c : conv_cases()) {
    CAPTURE(c.name);
    std::mt19937_64 rng(++seed);
    const Tensor x = randn(c.x, rng);
    const Tensor w = randn({c.s.out_channels, c.s.in_channels / c.s.groups, c.s.kh, c.s.kw}, rng,
                           0.5);
    const Shape os = conv2d_out_shape(c.x, c.s);
    const Tensor gy = randn(os, rng);
    std::vector<double> ngx, ngw, ngb;
    naive_conv_backward(gy, x, w, c.s, ngx, ngw, ngb);
    // Buffers start at a known non-zero value: backward must add, not overwrite.
    const float base = 0.75f;
    Tensor gx = Tensor::full(x.shape(), base), gw = Tensor::full(w.shape(), base),
           gb = Tensor::full({c.s.out_channels}, base);
    conv2d_backward_data(gy, w, c.s, gx);
    conv2d_backward_weight(gy, x, c.s, &gw, &gb);
    for (double& v : ngx) v += base;
    for (double& v : ngw) v += base;
    for (double& v : ngb) v += base;
    CHECK(rel_err(gx, ngx) <= 1e-4);
    CHECK(rel_err(gw, ngw) <= 1e-4);
    CHECK(rel_err(gb, ngb) <= 1e-4);
    // Weight gradient alone (no bias buffer) is the same.
    Tensor gw2 = Tensor::full(w.shape(), base);
    conv2d_backward_weight(gy, x, c.s, &gw2, nullptr);
    CHECK(bitwise_equal(gw2, gw));
    Tensor gb2 = Tensor::full({c.s.out_channels}, base);
    channel_sum_add(gy, gb2);
    CHECK(bitwise_equal(gb2, gb));
  }
}

TEST_CASE("backward functions add into their gradient buffers") {
  std::mt19937_64 rng(400);
  const float base = -0.5f;
  // Runs fn on a zeroed buffer and on a base-filled one; the difference must be fn's result.
  auto check_adds = [&](const char* what, const Shape& shape,
                        const std::function<void(Tensor&)>& fn) {
    CAPTURE(what);
    Tensor z = Tensor::zeros(shape), p = Tensor::full(shape, base);
    fn(z);
    fn(p);
    CHECK(max_abs(z) > 0.0);
    double e = 0.0;
    for (int64_t i = 0; i < z.numel(); ++i)
      e = std::max(e, std::fabs(double(p[i]) - base - z[i]));
    CHECK(e <= 1e-6 * std::max(1.0, max_abs(z)));
  };
  const Tensor x = distinct({2, 3, 6, 6}, rng);
  const Tensor y = relu_forward(x);
  const Tensor gy = randn(x.shape(), rng);
  check_adds("relu", x.shape(), [&](Tensor& g) { relu_backward(gy, y, g); });
  std::vector<int32_t> am;
  const Pool2dSpec ps = pool_spec(3, 2, 1, true);
  const Tensor mp = maxpool2d_forward(x, ps, &am);
  const Tensor gmp = randn(mp.shape(), rng);
  check_adds("maxpool", x.shape(), [&](Tensor& g) { maxpool2d_backward(gmp, am, g); });
  const Tensor gap = randn(avgpool2d_forward(x, ps).shape(), rng);
  check_adds("avgpool", x.shape(), [&](Tensor& g) { avgpool2d_backward(gap, ps, g); });
  const Tensor gaa = randn({2, 3, 4, 5}, rng);
  check_adds("adaptive avgpool", x.shape(),
             [&](Tensor& g) { adaptive_avgpool2d_backward(gaa, g); });
  const Tensor sx = randn({4, 5}, rng), sy = softmax_forward(sx), sg = randn({4, 5}, rng);
  check_adds("softmax", sx.shape(), [&](Tensor& g) { softmax_backward(sg, sy, g); });
  const Tensor lx = randn({3, 4}, rng), lw = randn({5, 4}, rng), lg = randn({3, 5}, rng);
  check_adds("linear dx", lx.shape(),
             [&](Tensor& g) { linear_backward(lg, lx, lw, &g, nullptr, nullptr); });
  check_adds("linear dw", lw.shape(),
             [&](Tensor& g) { linear_backward(lg, lx, lw, nullptr, &g, nullptr); });
  check_adds("linear db", {5},
             [&](Tensor& g) { linear_backward(lg, lx, lw, nullptr, nullptr, &g); });
  Tensor bw = randn({3}, rng, 0.3, 1.0), bb = randn({3}, rng);
  Tensor rm = Tensor::zeros({3}), rv = Tensor::full({3}, 1.0f);
  BatchNormSaved st;
  batchnorm_forward_train(x, bw, bb, rm, rv, 1e-5, 0.1, &st);
  for (bool train : {true, false}) {
    CAPTURE(train);
    check_adds("bn dx", x.shape(), [&](Tensor& g) {
      batchnorm_backward(gy, x, bw, st, train, &g, nullptr, nullptr);
    });
    check_adds("bn dw", {3}, [&](Tensor& g) {
      batchnorm_backward(gy, x, bw, st, train, nullptr, &g, nullptr);
    });
    check_adds("bn db", {3}, [&](Tensor& g) {
      batchnorm_backward(gy, x, bw, st, train, nullptr, nullptr, &g);
    });
  }
  check_adds("add_into", x.shape(), [&](Tensor& g) { add_into(g, gy); });
}

// ================================================================== shape rules
TEST_CASE("pool2d_out_shape follows PyTorch (floor and ceil mode)") {
  // PyTorch: out = floor_or_ceil((H + 2p - k) / s) + 1; in ceil mode the last window must
  // start inside the input or the left padding: if (out - 1) * s >= H + p, out -= 1.
  struct Case {
    int64_t h, k, s, p;
    bool ceil_mode;
    int64_t out;
  };
  const Case cases[] = {
      {7, 3, 2, 1, true, 4},     {7, 3, 2, 1, false, 4},   // ceil(6/2)+1 = 4
      {6, 2, 2, 0, true, 3},     {6, 2, 2, 0, false, 3},   // exact division
      {7, 2, 2, 0, true, 4},     {7, 2, 2, 0, false, 3},   // ceil adds a partial window
      {6, 3, 2, 1, true, 4},     {6, 3, 2, 1, false, 3},   // last window starts at input 5
      {5, 3, 3, 1, true, 2},     {5, 3, 3, 1, false, 2},   // ceil gives 3, dropped: 6 >= 5+1
      {5, 2, 2, 1, true, 3},     {5, 2, 2, 1, false, 3},   // ceil 4 dropped: 6 >= 5+1
      {112, 3, 2, 1, false, 56}, {224, 2, 2, 0, false, 112},  // ResNet stem, VGG
      {55, 3, 2, 0, true, 27},   {13, 3, 2, 0, false, 6},  // ceil == floor here
      {14, 3, 2, 0, true, 7},    {14, 3, 2, 0, false, 6},
      {1, 1, 1, 0, false, 1},    {3, 3, 1, 1, true, 3},
  };
  for (const Case& c : cases) {
    CAPTURE(c.h);
    CAPTURE(c.k);
    CAPTURE(c.s);
    CAPTURE(c.p);
    CAPTURE(c.ceil_mode);
    // Independent statement of the rule.
    const int64_t span = c.h + 2 * c.p - c.k;
    int64_t rule = (c.ceil_mode ? (span + c.s - 1) / c.s : span / c.s) + 1;
    if (c.ceil_mode && (rule - 1) * c.s >= c.h + c.p) --rule;
    CHECK(rule == c.out);
    Pool2dSpec ps = pool_spec(c.k, c.s, c.p, c.ceil_mode);
    CHECK(pool2d_out_shape({2, 3, c.h, c.h}, ps) == Shape{2, 3, c.out, c.out});
    // Rectangular: only W follows the rule, H fixed by a 1-high kernel.
    Pool2dSpec pr = ps;
    pr.kh = 1;
    pr.stride_h = 1;
    pr.pad_h = 0;
    CHECK(pool2d_out_shape({1, 1, 4, c.h}, pr) == Shape{1, 1, 4, c.out});
  }
  // MaxPool2d / AvgPool2d modules use the same rule.
  CHECK(MaxPool2d(3, 2, 1, true).out_shape({1, 4, 7, 6}) == Shape{1, 4, 4, 4});
  CHECK(AvgPool2d(2, 2, 0, true).out_shape({1, 4, 7, 6}) == Shape{1, 4, 4, 3});
}

TEST_CASE("conv2d_out_shape") {
  CHECK(conv2d_out_shape({1, 3, 224, 224}, conv_spec(3, 64, 7, 7, 2, 2, 3, 3)) ==
        Shape{1, 64, 112, 112});
  CHECK(conv2d_out_shape({2, 64, 56, 56}, conv_spec(64, 64, 3, 3, 1, 1, 1, 1)) ==
        Shape{2, 64, 56, 56});
  CHECK(conv2d_out_shape({2, 64, 56, 56}, conv_spec(64, 128, 1, 1, 2, 2)) ==
        Shape{2, 128, 28, 28});
  CHECK(conv2d_out_shape({1, 4, 10, 10}, conv_spec(4, 4, 3, 3, 1, 1, 0, 0, 2, 2)) ==
        Shape{1, 4, 6, 6});  // effective kernel 5
  CHECK(conv2d_out_shape({1, 4, 10, 9}, conv_spec(4, 4, 3, 2, 2, 3, 1, 0, 1, 2)) ==
        Shape{1, 4, 5, 3});  // H: (10+2-3)/2+1 = 5; W: (9-3)/3+1 = 3
  CHECK(conv2d_out_shape({1, 3, 3, 3}, conv_spec(3, 3, 3, 3)) == Shape{1, 3, 1, 1});
  CHECK(conv2d_out_shape({1, 3, 1, 1}, conv_spec(3, 3, 3, 3, 1, 1, 1, 1)) == Shape{1, 3, 1, 1});
  CHECK(Conv2d(3, 8, 3, 2, 1).out_shape({1, 3, 7, 8}) == Shape{1, 8, 4, 4});
}

TEST_CASE("bad shapes and arguments throw isplit::Error") {
  std::mt19937_64 rng(500);
  // Convolution.
  CHECK_THROWS_AS(conv2d_out_shape({1, 3, 2, 2}, conv_spec(3, 4, 3, 3)), Error);
  CHECK_THROWS_AS(conv2d_out_shape({1, 3, 4, 4}, conv_spec(3, 4, 3, 3, 1, 1, 0, 0, 2, 2)), Error);
  CHECK_THROWS_AS(conv2d_out_shape({1, 3, 4}, conv_spec(3, 4, 1, 1)), Error);
  CHECK_THROWS_AS(conv2d_out_shape({1, 3, 4, 4}, conv_spec(3, 4, 1, 1, 0, 1)), Error);
  CHECK_THROWS_AS(conv2d_out_shape({1, 3, 4, 4}, conv_spec(3, 4, 3, 3, 1, 1, -1, 0)), Error);
  const Tensor x = randn({1, 3, 5, 5}, rng);
  const Conv2dSpec s = conv_spec(3, 4, 3, 3);
  CHECK_THROWS_AS(conv2d_forward(x, randn({4, 3, 3, 3}, rng), nullptr, conv_spec(4, 4, 3, 3)),
                  Error);  // channel mismatch
  CHECK_THROWS_AS(conv2d_forward(x, randn({4, 3, 2, 3}, rng), nullptr, s), Error);  // weight
  CHECK_THROWS_AS(conv2d_forward(x, randn({4, 2, 3, 3}, rng), nullptr, s), Error);
  const Tensor b5 = randn({5}, rng);
  CHECK_THROWS_AS(conv2d_forward(x, randn({4, 3, 3, 3}, rng), &b5, s), Error);  // bias
  CHECK_THROWS_AS(conv2d_forward(randn({3, 5, 5}, rng), randn({4, 3, 3, 3}, rng), nullptr, s),
                  Error);  // not 4-d
  CHECK_THROWS_AS(conv2d_forward(randn({1, 3, 2, 2}, rng), randn({4, 3, 3, 3}, rng), nullptr, s),
                  Error);  // kernel larger than input
  CHECK_THROWS_AS(conv2d_forward(x, randn({4, 1, 3, 3}, rng), nullptr,
                                 conv_spec(3, 4, 3, 3, 1, 1, 0, 0, 1, 1, 2)),
                  Error);  // groups do not divide
  CHECK_THROWS_AS(conv2d_forward_naive(x, randn({4, 3, 2, 3}, rng), nullptr, s), Error);
  CHECK_THROWS_AS(Conv2d(3, 4, 3, 1, 0, true, 1, 2), Error);
  {
    Conv2d conv(4, 4, 3);
    CHECK_THROWS_AS(conv.forward(nullptr, Var{x}), Error);
    CHECK_THROWS_AS(conv.out_shape({1, 4, 2, 2}), Error);
  }
  Tensor gx = Tensor::zeros({1, 3, 5, 5});
  CHECK_THROWS_AS(conv2d_backward_data(randn({1, 4, 2, 2}, rng), randn({4, 3, 3, 3}, rng), s, gx),
                  Error);  // gy shape
  Tensor gw = Tensor::zeros({4, 3, 2, 2});
  CHECK_THROWS_AS(conv2d_backward_weight(randn({1, 4, 3, 3}, rng), x, s, &gw, nullptr), Error);
  // Pooling.
  CHECK_THROWS_AS(pool2d_out_shape({1, 1, 2, 2}, pool_spec(3, 1)), Error);
  CHECK_THROWS_AS(pool2d_out_shape({1, 1, 8, 8}, pool_spec(3, 1, 2)), Error);  // pad > k/2
  CHECK_THROWS_AS(pool2d_out_shape({1, 1, 8, 8}, pool_spec(2, 0)), Error);
  CHECK_THROWS_AS(pool2d_out_shape({1, 8, 8}, pool_spec(2, 2)), Error);
  CHECK_NOTHROW(pool2d_out_shape({1, 1, 8, 8}, pool_spec(2, 2, 1)));  // pad == k/2 is fine
  CHECK_THROWS_AS(MaxPool2d(3, 2).forward(nullptr, Var{randn({1, 1, 2, 2}, rng)}), Error);
  CHECK_THROWS_AS(AvgPool2d(3, 2).forward(nullptr, Var{randn({1, 1, 2, 2}, rng)}), Error);
  CHECK_THROWS_AS(adaptive_avgpool2d_forward(x, 0, 2), Error);
  CHECK_THROWS_AS(AdaptiveAvgPool2d(2, 2).out_shape({2, 2}), Error);
  // Batch norm.
  BatchNorm2d bn(4);
  CHECK_THROWS_AS(bn.forward(nullptr, Var{x}), Error);  // 3 channels, expected 4
  BatchNorm2d bn3(3);
  bn3.set_training(true);
  CHECK_THROWS_AS(bn3.forward(nullptr, Var{randn({1, 3, 1, 1}, rng)}), Error);  // one value
  // Linear.
  Linear fc(6, 2);
  CHECK_THROWS_AS(fc.forward(nullptr, Var{randn({2, 5}, rng)}), Error);
  CHECK_THROWS_AS(fc.out_shape({2, 5}), Error);
  // Add, cross entropy, tape.
  CHECK_THROWS_AS(add(nullptr, Var{randn({2, 3}, rng)}, Var{randn({3, 2}, rng)}), Error);
  CHECK_THROWS_AS(cross_entropy(randn({2, 3}, rng), {0, 3}, 0.0, nullptr), Error);
  CHECK_THROWS_AS(cross_entropy(randn({2, 3}, rng), {0, -1}, 0.0, nullptr), Error);
  CHECK_THROWS_AS(cross_entropy(randn({2, 3}, rng), {0}, 0.0, nullptr), Error);
  CHECK_THROWS_AS(cross_entropy(randn({2, 3}, rng), {0, 1}, 1.5, nullptr), Error);
  CHECK_THROWS_AS(cross_entropy(randn({2, 3, 1}, rng), {0, 1}, 0.0, nullptr), Error);
  Tape tape;
  const Var v = tape.input(randn({2, 3}, rng), true);
  const Var r = relu(&tape, v);
  CHECK_THROWS_AS(tape.backward(r, Tensor::zeros({3, 2})), Error);
  CHECK_THROWS_AS(tape.backward(Var{randn({2, 3}, rng)}, Tensor::zeros({2, 3})), Error);
}

// ================================================================== determinism
TEST_CASE("conv forward/backward are bitwise identical with 1 and 2 threads") {
  struct Out {
    Tensor y, gx, gw, gb;
  };
  auto run = [](const ConvCase& c, uint64_t seed) {
    std::mt19937_64 rng(seed);
    const Tensor x = randn(c.x, rng);
    const Tensor w = randn({c.s.out_channels, c.s.in_channels / c.s.groups, c.s.kh, c.s.kw}, rng,
                           0.5);
    const Tensor b = randn({c.s.out_channels}, rng);
    Out o;
    o.y = conv2d_forward(x, w, &b, c.s);
    const Tensor gy = randn(o.y.shape(), rng);
    o.gx = Tensor::zeros(x.shape());
    o.gw = Tensor::zeros(w.shape());
    o.gb = Tensor::zeros(b.shape());
    conv2d_backward_data(gy, w, c.s, o.gx);
    conv2d_backward_weight(gy, x, c.s, &o.gw, &o.gb);
    return o;
  };
  uint64_t seed = 600;
  for (const ConvCase& c : conv_cases()) {
    CAPTURE(c.name);
    ++seed;
    set_num_threads(1);
    const Out a = run(c, seed);
    set_num_threads(2);
    const Out b = run(c, seed);
    set_num_threads(0);
    CHECK(bitwise_equal(a.y, b.y));
    CHECK(bitwise_equal(a.gx, b.gx));
    CHECK(bitwise_equal(a.gw, b.gw));
    CHECK(bitwise_equal(a.gb, b.gb));
  }
  // A whole network forward/backward (batch norm, pools, linear) as well.
  auto net_run = [](std::vector<Tensor>& out) {
    Net net(700);
    std::mt19937_64 rng(701);
    const Tensor x = randn({2, 3, 6, 6}, rng);
    Tape tape;
    const Var xin = tape.input(x, true);
    const std::vector<Var> v = net.run(&tape, xin);
    tape.backward(v.back(), randn(v.back().value.shape(), rng));
    out.push_back(v.back().value.clone());
    out.push_back(tape.grad(xin).clone());
    for (auto& p : net.params()) out.push_back(p.second->grad.clone());
  };
  std::vector<Tensor> a, b;
  set_num_threads(1);
  net_run(a);
  set_num_threads(2);
  net_run(b);
  set_num_threads(0);
  REQUIRE(a.size() == b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    CAPTURE(i);
    CHECK(bitwise_equal(a[i], b[i]));
  }
}

}  // TEST_SUITE("layers")
