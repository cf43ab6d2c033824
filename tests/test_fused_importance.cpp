// The importance pass's fast paths: a convolution with its BatchNorm (and ReLU) run as one
// folded layer while packed (Conv2d::forward_bn) against the separate layers (whose
// backward test_layers checks by finite differences); data gradients written instead of
// added (conv backward with accumulate = false, relu_mask); and tape nodes that write
// their input gradients on first arrival instead of adding into zeroed buffers.
#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <map>
#include <random>
#include <string>

#include "engine/gemm_prepacked.h"
#include "engine/parallel.h"
#include "engine/tape.h"
#include "layers/functional.h"
#include "layers/modules.h"
#include "layers/winograd.h"
#include "models/model.h"
#include "tests/tensor_util.h"

using namespace isplit;

namespace {

using isplit::testing::same_bits;

Tensor uniform(std::mt19937& rng, const Shape& shape, float lo = -1.0f, float hi = 1.0f) {
  return isplit::testing::uniform_tensor(rng, shape, lo, hi);
}

// max |a - b| / max(1, max |b|).
double rel_diff(const Tensor& a, const Tensor& b) {
  REQUIRE(a.shape() == b.shape());
  double d = 0.0, m = 1.0;
  for (int64_t i = 0; i < a.numel(); ++i) {
    d = std::max(d, std::fabs(double(a[i]) - double(b[i])));
    m = std::max(m, std::fabs(double(b[i])));
  }
  return d / m;
}

// A conv + BatchNorm pair with random weights and statistics, evaluation mode.
struct ConvBn {
  Conv2d conv;
  BatchNorm2d bn;
  ConvBn(std::mt19937& rng, int64_t cin, int64_t cout, int64_t k, int64_t stride, int64_t pad,
         bool bias)
      : conv(cin, cout, k, stride, pad, bias), bn(cout) {
    const float s = 1.0f / std::sqrt(float(cin * k * k));
    conv.weight.value = uniform(rng, conv.weight.value.shape(), -s, s);
    if (bias) conv.bias.value = uniform(rng, {cout}, -0.2f, 0.2f);
    bn.weight.value = uniform(rng, {cout}, 0.5f, 1.5f);
    bn.bias.value = uniform(rng, {cout}, -0.3f, 0.3f);
    bn.running_mean.value = uniform(rng, {cout}, -0.2f, 0.2f);
    bn.running_var.value = uniform(rng, {cout}, 0.5f, 2.0f);
    conv.set_training(false);
    bn.set_training(false);
  }
};

// y = forward_bn(x, residual) and dL/dx (and dL/dresidual) for L = sum(r * y), on an
// activations-only tape.
struct Pass {
  Tensor y, gx, gres;
  size_t nodes = 0;  // recorded on the tape: 1 when folded, conv + bn (+ add, relu) when not
};
Pass run(ConvBn& m, const Tensor& x, bool relu, const Tensor* r, const Tensor* res = nullptr) {
  Tape tape = Tape::activations_only();
  const Var xin = tape.input(x, true);
  const Var rin = res ? tape.input(*res, true) : Var();
  const Var y = m.conv.forward_bn(&tape, xin, m.bn, relu, res ? &rin : nullptr);
  Pass p{y.value.clone(), Tensor(), Tensor(), tape.size()};
  if (r) {
    tape.backward(y, *r);
    p.gx = tape.grad(xin).clone();
    if (res) p.gres = tape.grad(rin).clone();
  }
  return p;
}

}  // namespace

TEST_SUITE("importance_fast") {
  TEST_CASE("Conv2d::forward_bn packed equals the separate conv, BatchNorm and ReLU") {
    const int saved_threads = num_threads();
    const WinogradMode saved_mode = winograd_mode();
    std::mt19937 rng(5);
    struct Case {
      int64_t cin, cout, k, stride, pad, batch, size;
      bool bias;
      WinogradMode mode;
    };
    const Case cases[] = {
        {64, 96, 1, 1, 0, 1, 14, false, WinogradMode::Auto},   // pointwise, batch 1
        {32, 64, 1, 2, 0, 2, 14, false, WinogradMode::Auto},   // strided pointwise (downsample)
        {16, 24, 3, 1, 1, 1, 20, true, WinogradMode::On},      // 3x3 through Winograd
        {16, 24, 3, 1, 1, 2, 9, false, WinogradMode::Off},     // 3x3 through the packed GEMM
        {16, 32, 3, 2, 1, 1, 15, false, WinogradMode::Auto},   // 3x3 stride 2 (col2im)
        {3, 16, 7, 2, 3, 1, 23, false, WinogradMode::Auto},    // a stem
        {128, 256, 1, 1, 0, 1, 2, false, WinogradMode::Auto},  // few columns (lanes along M)
    };
    for (int threads : {1, 2}) {
      set_num_threads(threads);
      for (const Case& c : cases) {
        for (bool relu : {true, false})
          for (bool with_res : {false, true}) {
            CAPTURE(threads);
            CAPTURE(c.cin);
            CAPTURE(c.k);
            CAPTURE(c.stride);
            CAPTURE(c.size);
            CAPTURE(relu);
            CAPTURE(with_res);
            set_winograd_mode(c.mode);
            ConvBn m(rng, c.cin, c.cout, c.k, c.stride, c.pad, c.bias);
            const Tensor x = uniform(rng, {c.batch, c.cin, c.size, c.size});
            const Shape ys = conv2d_out_shape(x.shape(), m.conv.spec());
            const Tensor r = uniform(rng, ys);
            const Tensor res = uniform(rng, ys);
            const Tensor* resp = with_res ? &res : nullptr;
            const Pass ref = run(m, x, relu, &r, resp);  // not packed: the separate layers
            m.conv.pack_for_inference(true);
            const Pass fast = run(m, x, relu, &r, resp);
            CHECK(ref.nodes == (relu ? 3u : 2u) + (with_res ? 1u : 0u));
            CHECK(fast.nodes == 1u);
            CHECK(rel_diff(fast.y, ref.y) < 1e-5);
            CHECK(rel_diff(fast.gx, ref.gx) < 1e-5);
            if (with_res) CHECK(rel_diff(fast.gres, ref.gres) < 1e-5);  // dL/d(sum), masked
            // Without a tape the same folded forward.
            const Var resv{res};
            CHECK(same_bits(
                m.conv.forward_bn(nullptr, Var{x}, m.bn, relu, with_res ? &resv : nullptr).value,
                fast.y));
          }
      }
    }
    set_num_threads(saved_threads);
    set_winograd_mode(saved_mode);
  }

  TEST_CASE("Conv2d::forward_bn follows new BatchNorm statistics and falls back when it must") {
    std::mt19937 rng(6);
    ConvBn m(rng, 8, 12, 3, 1, 1, false);
    const Tensor x = uniform(rng, {1, 8, 6, 6});
    const Tensor r = uniform(rng, {1, 12, 6, 6});
    m.conv.pack_for_inference(true);
    const Pass before = run(m, x, true, &r);
    // New statistics after packing: the folded weights are made again.
    m.bn.running_mean.value[3] += 0.5f;
    m.bn.weight.value[7] *= -2.0f;
    const Pass after = run(m, x, true, &r);
    CHECK(after.nodes == 1u);
    m.conv.pack_for_inference(false);
    const Pass ref = run(m, x, true, &r);
    CHECK(rel_diff(after.y, ref.y) < 1e-5);
    CHECK(rel_diff(after.gx, ref.gx) < 1e-5);
    CHECK(rel_diff(before.y, ref.y) > 1e-3);  // the change did matter
    // A tape that wants weight gradients takes the separate layers (and gets them).
    m.conv.pack_for_inference(true);
    Tape tape;
    const Var xin = tape.input(x, true);
    const Var y = m.conv.forward_bn(&tape, xin, m.bn, true);
    tape.backward(y, r);
    CHECK(m.conv.weight.grad.defined());
    CHECK(m.bn.weight.grad.defined());
    CHECK(rel_diff(tape.grad(xin), ref.gx) < 1e-5);
    // A BatchNorm of another width is refused with both counts named.
    BatchNorm2d wrong(5);
    CHECK_THROWS_WITH_AS(m.conv.forward_bn(nullptr, Var{x}, wrong, true),
                         doctest::Contains("5 channels, the convolution 12"), Error);
  }

  TEST_CASE("conv data gradients written (accumulate = false) equal zeros plus the gradient") {
    const WinogradMode saved_mode = winograd_mode();
    std::mt19937 rng(7);
    struct Case {
      int64_t cin, cout, k, stride, pad, batch, size;
    };
    const Case cases[] = {{32, 48, 1, 1, 0, 1, 7},  {32, 48, 1, 1, 0, 2, 7},
                          {24, 40, 1, 1, 0, 1, 30}, {16, 32, 1, 2, 0, 1, 14},
                          {8, 16, 3, 1, 1, 1, 12},  {8, 16, 3, 2, 1, 2, 11},
                          {3, 8, 7, 2, 3, 1, 19},   {64, 128, 1, 1, 0, 1, 2}};
    for (const Case& c : cases) {
      CAPTURE(c.cin);
      CAPTURE(c.k);
      CAPTURE(c.stride);
      CAPTURE(c.batch);
      CAPTURE(c.size);
      Conv2dSpec s;
      s.in_channels = c.cin;
      s.out_channels = c.cout;
      s.kh = s.kw = c.k;
      s.stride_h = s.stride_w = c.stride;
      s.pad_h = s.pad_w = c.pad;
      const Shape xs{c.batch, c.cin, c.size, c.size};
      const Tensor w = uniform(rng, {c.cout, c.cin, c.k, c.k});
      const Tensor gy = uniform(rng, conv2d_out_shape(xs, s));
      const Tensor garbage = Tensor::full(xs, std::nanf(""));
      const int64_t k = c.cin * c.k * c.k;
      const PackedMatrix pt(true, k, c.cout, w.data(), k);
      Tensor expect = Tensor::zeros(xs), got = garbage.clone();
      conv2d_backward_data(gy, w, s, expect);
      conv2d_backward_data(gy, w, s, got, /*accumulate=*/false);
      CHECK(same_bits(got, expect));
      Tensor expect_p = Tensor::zeros(xs), got_p = garbage.clone();
      conv2d_backward_data_packed(gy, pt, s, expect_p);
      conv2d_backward_data_packed(gy, pt, s, got_p, false);
      CHECK(same_bits(got_p, expect_p));
      if (winograd_backward_applies(s)) {
        set_winograd_mode(WinogradMode::On);
        const WinogradFilter ft = winograd_filter_transposed(w);
        Tensor expect_w = Tensor::zeros(xs), got_w = garbage.clone();
        conv2d_backward_data_winograd(gy, ft, s, expect_w);
        conv2d_backward_data_winograd(gy, ft, s, got_w, false);
        CHECK(same_bits(got_w, expect_w));
        set_winograd_mode(saved_mode);
      }
    }
  }

  TEST_CASE("relu_mask writes the ReLU's backward and checks shapes") {
    std::mt19937 rng(8);
    const Tensor x = uniform(rng, {2, 3, 5, 7});
    const Tensor y = relu_forward(x);
    const Tensor gy = uniform(rng, x.shape());
    Tensor got = Tensor::full(x.shape(), 123.0f), expect = Tensor::zeros(x.shape());
    relu_mask(gy, y, got);
    relu_backward(gy, y, expect);
    CHECK(same_bits(got, expect));
    Tensor small = Tensor::empty({2, 3, 5, 6});
    CHECK_THROWS_WITH_AS(relu_mask(gy, y, small), doctest::Contains("relu_mask"), Error);
  }

  TEST_CASE("tape: nodes that write fresh gradients add when a gradient is already there") {
    std::mt19937 rng(9);
    const Tensor x = uniform(rng, {1, 4, 3, 3});
    const Tensor r = uniform(rng, x.shape());
    // y = relu(x) + x + x: x's gradient arrives three times, first written, then added.
    Tape tape = Tape::activations_only();
    const Var xin = tape.input(x, true);
    const Var s = add(&tape, add(&tape, relu(&tape, xin), xin), xin);
    tape.backward(s, r);
    const Tensor g = tape.grad(xin);
    for (int64_t i = 0; i < x.numel(); ++i) {
      const float want = (x[i] > 0.0f ? r[i] : 0.0f) + r[i] + r[i];
      CHECK(g[i] == doctest::Approx(want).epsilon(1e-6));
    }
  }

  TEST_CASE("tape: add(x, x) gives x twice the gradient and leaves the sum's own intact") {
    std::mt19937 rng(12);
    const Tensor x = uniform(rng, {2, 3, 4});
    const Tensor r = uniform(rng, x.shape());
    Tape tape = Tape::activations_only();
    const Var xin = tape.input(x, true);
    const Var s = add(&tape, xin, xin);
    const Var y = relu(&tape, s);
    tape.backward(y, r);
    const Tensor gs = tape.grad(s), gx = tape.grad(xin);
    for (int64_t i = 0; i < x.numel(); ++i) {
      const float want = s.value[i] > 0.0f ? r[i] : 0.0f;
      CHECK(gs[i] == want);
      CHECK(gx[i] == 2.0f * want);
    }
  }

  TEST_CASE("tape: a fresh-writing node that writes nothing leaves zeros; a wrong claim throws") {
    const Tensor x = Tensor::full({2, 3}, 1.0f);
    {
      Tape tape = Tape::activations_only();
      const Var xin = tape.input(x, true);
      const Var y = tape.record(x.clone(), {&xin}, [](const Tensor&, std::vector<Tensor*>&) {},
                                false, /*writes_fresh=*/true);
      tape.backward(y, x);
      const Tensor g = tape.grad(xin);
      REQUIRE(g.shape() == x.shape());
      for (int64_t i = 0; i < g.numel(); ++i) CHECK(g[i] == 0.0f);
    }
    {
      Tape tape = Tape::activations_only();
      const Var xin = tape.input(x, true);
      const Var y = tape.record(
          x.clone(), {&xin},
          [](const Tensor&, std::vector<Tensor*>& gin) {
            if (claim_fresh(*gin[0], {3, 2})) gin[0]->zero();
          },
          false, true);
      CHECK_THROWS_WITH_AS(tape.backward(y, x), doctest::Contains("claimed a gradient"), Error);
    }
  }

  TEST_CASE("tape: sections report once each, in backward order, after their own nodes") {
    const Tensor x = Tensor::full({2, 3}, 1.0f);
    std::vector<std::string> log;
    Tape tape = Tape::activations_only();
    const Var xin = tape.input(x, true);
    // A node that logs its label and passes the gradient on.
    auto node = [&](const Var& in, const std::string& label) {
      return tape.record(x.clone(), {&in}, [&log, label](const Tensor& g, std::vector<Tensor*>& gin) {
        log.push_back(label);
        if (gin[0]) gin[0]->copy_from(g);
      });
    };
    tape.begin_section("a");
    const Var a1 = node(xin, "a1");
    const Var a2 = node(a1, "a2");
    tape.begin_section("b");  // renamed before any node: no section "b"
    tape.begin_section("c");
    const Var c1 = node(a2, "c1");
    tape.begin_section("empty");  // a section without nodes is never reported
    tape.begin_section("d");
    const Var d1 = node(c1, "d1");
    const Var d2 = node(d1, "d2");
    tape.set_section_timer([&](const std::string& name, double seconds) {
      CHECK(seconds >= 0.0);
      log.push_back("section " + name);
    });
    tape.backward(d2, x);
    const std::vector<std::string> want = {"d2", "d1", "section d", "c1", "section c",
                                           "a2", "a1", "section a"};
    CHECK(log == want);
    // Without a timer nothing is reported; clear() drops the sections with the nodes.
    log.clear();
    tape.set_section_timer(nullptr);
    tape.backward(d2, x);
    CHECK(log == std::vector<std::string>{"d2", "d1", "c1", "a2", "a1"});
    tape.clear();
    tape.set_section_timer([&](const std::string& name, double) { log.push_back("section " + name); });
    log.clear();
    const Var y = tape.input(x, true);
    const Var z = node(y, "z");
    tape.backward(z, x);
    CHECK(log == std::vector<std::string>{"z"});
  }

  TEST_CASE("tape: a releasing backward keeps the retained gradients, bit for bit, and frees the rest") {
    std::mt19937 rng(31);
    const Tensor x = uniform(rng, {1, 8, 32, 32});
    const Tensor r = uniform(rng, x.shape());
    // y = relu(relu(x) + x) through a chain whose middle variables are not retained.
    auto run = [&](Tape& tape, Var* mid, Var* out) {
      const Var xin = tape.input(x, true);
      const Var a = relu(&tape, xin);
      *mid = add(&tape, a, xin);
      *out = relu(&tape, add(&tape, relu(&tape, *mid), a));
      return xin;
    };
    Tape keep = Tape::activations_only();
    Var mid0, out0;
    const Var x0 = run(keep, &mid0, &out0);
    keep.backward(out0, r);

    Tape tape = Tape::activations_only();
    Var mid, out;
    const Var xin = run(tape, &mid, &out);
    tape.retain_grad(mid);
    const size_t before = tensor_live_bytes();
    tape.backward(out, r, /*release=*/true);
    // The nodes' saved values and the unretained gradients went back: less is live than
    // after a keeping backward, which holds every gradient (seven of 32 KB here).
    CHECK(tensor_live_bytes() < before + 3 * x.numel() * sizeof(float));
    CHECK(same_bits(tape.grad(mid), keep.grad(mid0)));
    CHECK(same_bits(tape.grad(xin), keep.grad(x0)));  // an input's gradient stays
    CHECK(same_bits(tape.grad(out), keep.grad(out0)));  // and the root's
    CHECK_THROWS_WITH_AS(tape.grad(Var{x, mid.id - 1}), doctest::Contains("released"), Error);
    CHECK_THROWS_WITH_AS(tape.backward(out, r), doctest::Contains("released this tape's nodes"), Error);
    CHECK_THROWS_WITH_AS(tape.retain_grad(Var{x, 1000}), doctest::Contains("not recorded"), Error);
    // clear() makes the tape usable again.
    tape.clear();
    Var mid2, out2;
    const Var x2 = run(tape, &mid2, &out2);
    tape.backward(out2, r);
    CHECK(same_bits(tape.grad(x2), keep.grad(x0)));
  }

  TEST_CASE("maxpool2d_forward with argmax: the first maximum, NaN wins, values as inference") {
    // ResNet-50's 3x3 and VGG16's 2x2 stride-2 pools, with and without padding, in floor
    // and ceil mode, on odd and even sizes: windows inside the plane take a loop of their
    // own, the rest the general loop.
    struct Case {
      int64_t k, pad;
      bool ceil;
      int64_t h, w;
    };
    const Case cases[] = {{3, 1, false, 9, 8},   {3, 1, false, 20, 23}, {3, 1, true, 21, 22},
                          {3, 0, false, 13, 17}, {2, 0, false, 9, 8},   {2, 0, true, 9, 7},
                          {2, 0, false, 12, 40}, {2, 0, true, 11, 41}};
    for (const Case& cs : cases) {
      std::mt19937 rng(10);
      Pool2dSpec ps;
      ps.kh = ps.kw = cs.k;
      ps.stride_h = ps.stride_w = 2;
      ps.pad_h = ps.pad_w = cs.pad;
      ps.ceil_mode = cs.ceil;
      const int64_t h = cs.h, w = cs.w, plane = h * w;
      // Few distinct values (ties, +0 and -0 among them), NaNs and -inf in places.
      Tensor x = Tensor::empty({2, 3, h, w});
      std::uniform_int_distribution<int> pick(0, 4);
      for (int64_t i = 0; i < x.numel(); ++i) {
        const int v = pick(rng);
        x[i] = v == 4 ? -0.0f : float(v);
      }
      x[5] = std::nanf("");
      x[7] = std::nanf("");
      x[w + 2] = std::nanf("");
      x[w + 3] = std::nanf("");
      for (int64_t i = plane; i < 2 * plane; ++i) x[i] = -std::numeric_limits<float>::infinity();
      // Plane 2: NaNs everywhere, so windows hold two or more and the first must win.
      std::bernoulli_distribution nan_here(0.3);
      for (int64_t i = 2 * plane; i < 3 * plane; ++i)
        if (nan_here(rng)) x[i] = std::nanf("");
      std::vector<int32_t> am;
      const Tensor y = maxpool2d_forward(x, ps, &am);
      const Tensor yi = maxpool2d_forward(x, ps, nullptr);
      const int64_t oh = y.dim(2), ow = y.dim(3);
      for (int64_t p = 0; p < 6; ++p)
        for (int64_t oy = 0; oy < oh; ++oy)
          for (int64_t ox = 0; ox < ow; ++ox) {
            // Brute force: the first NaN, else the first maximum, in row-major window order.
            int64_t want = -1;
            const int64_t y0 = oy * 2 - cs.pad, x0 = ox * 2 - cs.pad;
            for (int64_t iy = std::max<int64_t>(0, y0); iy < std::min(h, y0 + cs.k); ++iy)
              for (int64_t ix = std::max<int64_t>(0, x0); ix < std::min(w, x0 + cs.k); ++ix) {
                const float v = x[p * plane + iy * w + ix];
                if (want < 0) {
                  want = iy * w + ix;
                  continue;
                }
                const float b = x[p * plane + want];
                if (!std::isnan(b) && (std::isnan(v) || v > b)) want = iy * w + ix;
              }
            const int64_t o = p * oh * ow + oy * ow + ox;
            CAPTURE(cs.k);
            CAPTURE(cs.ceil);
            CAPTURE(o);
            CHECK(am[static_cast<size_t>(o)] == want);
            const float b = x[p * plane + want], got = y[o];
            CHECK((std::isnan(b) ? std::isnan(got) : std::memcmp(&got, &b, 4) == 0));
            CHECK((std::isnan(yi[o]) ? std::isnan(y[o]) : y[o] == yi[o]));
          }
    }
  }

  TEST_CASE("a bottleneck's last ReLU fused when nobody observes its input: the same bits") {
    // Without an observer of the ReLU inputs, each packed block's conv3 applies the final
    // ReLU in its epilogue and takes the backward mask from its output; observed, the sum
    // and the ReLU stay separate nodes. Outputs, cut-point gradients and the input
    // gradient must not differ in a bit.
    auto model = build_model("resnet50", 10, 4, "layer3.1");
    model->set_training(false);
    model->pack_for_inference();
    std::mt19937 rng(23);
    const Tensor x = uniform(rng, {2, 3, 32, 32});
    struct Result {
      Tensor out, gx;
      std::map<std::string, Tensor> acts, grads;
      size_t nodes = 0;
    };
    auto pass = [&](bool observe_pre) {
      Tape tape = Tape::activations_only();
      const Var xin = tape.input(x, true);
      std::map<std::string, Var> outs;
      const Model::Observer pre = [](const std::string&, const Var&) {};
      const Var out = model->forward(
          &tape, xin, [&](const std::string& n, const Var& v) { outs[n] = v; }, "layer3.1",
          observe_pre ? pre : Model::Observer());
      Tensor seed = uniform(rng, out.value.shape());
      tape.backward(out, seed);
      Result r{out.value.clone(), tape.grad(xin).clone(), {}, {}, tape.size()};
      for (const auto& [n, v] : outs) {
        r.acts[n] = v.value.clone();
        r.grads[n] = tape.grad(v).clone();
      }
      return r;
    };
    const std::mt19937 start = rng;
    const Result separate = pass(true);
    rng = start;  // the same seed for the backward
    const Result fused = pass(false);
    CHECK(fused.nodes < separate.nodes);
    CHECK(same_bits(fused.out, separate.out));
    CHECK(same_bits(fused.gx, separate.gx));
    REQUIRE(fused.acts.size() == separate.acts.size());
    CHECK(fused.acts.count("layer2.3") == 1);
    for (const auto& [n, a] : separate.acts) {
      INFO(n);
      CHECK(same_bits(fused.acts.at(n), a));
      CHECK(same_bits(fused.grads.at(n), separate.grads.at(n)));
    }
  }

  TEST_CASE("a packed ResNet-50 importance pass reuses every block after the first passes") {
    // A head up to layer2.0 at 16x16: maps of 8x8 down to 2x2, blocks of 4-64 KiB.
    auto model = build_model("resnet50", 10, 4, "layer2.0");
    model->set_training(false);
    model->pack_for_inference();
    std::mt19937 rng(11);
    const Tensor x = uniform(rng, {1, 3, 16, 16});
    auto pass = [&] {
      Tape tape = Tape::activations_only();
      const Var out = model->forward(&tape, tape.input(x), nullptr, "layer2.0");
      tape.backward(out, Tensor::full(out.value.shape(), 1.0f));
      return tape.size();
    };
    const size_t nodes = pass();
    // One node per bottleneck conv (BatchNorm and ReLU folded in) plus add and ReLU per
    // block: far fewer than conv, BatchNorm and ReLU recorded separately.
    CHECK(nodes < 40u);
    pass();
    const size_t fresh = tensor_fresh_bytes();
    for (int i = 0; i < 3; ++i) pass();
    CHECK(tensor_fresh_bytes() == fresh);  // folded weights, activations, gradients: reused
  }
}
