// Packed weights replace the plain ones: once a packed convolution has run on its GEMM
// weights, its plain weights are released, and everything that needs them again (another
// layout, Winograd, a weight gradient, a BatchNorm fold, named_parameters, save, training)
// gets them back bit for bit. Results never change: every output is compared bit for bit
// with a convolution that never released anything.
#include <doctest/doctest.h>

#include <cstdint>
#include <cstdio>
#include <random>
#include <string>
#include <unistd.h>
#include <vector>

#include "engine/cpu.h"
#include "engine/gemm_prepacked.h"
#include "engine/safetensors.h"
#include "engine/tape.h"
#include "layers/modules.h"
#include "layers/winograd.h"
#include "models/model.h"
#include "tests/tensor_util.h"

using namespace isplit;
using isplit::testing::same_bits;
using isplit::testing::uniform_tensor;

namespace {

// Restores the ISA and the Winograd mode when a test case ends.
struct Restore {
  Isa isa = active_isa();
  WinogradMode mode = winograd_mode();
  WinogradFilters filters = winograd_filters_mode();
  bool prepack = gemm_prepack_enabled();
  ~Restore() {
    set_active_isa(isa);
    set_winograd_mode(mode);
    set_winograd_filters_mode(filters);
    set_gemm_prepack(prepack);
  }
};

// A convolution with random weights and bias (same seed: same values).
void randomise(Conv2d& conv, uint64_t seed) {
  std::mt19937 rng(static_cast<std::mt19937::result_type>(seed));
  conv.weight.value.copy_from(uniform_tensor(rng, conv.weight.value.shape()));
  if (conv.has_bias()) conv.bias.value.copy_from(uniform_tensor(rng, conv.bias.value.shape()));
}

// Whether the active ISA has packed GEMM kernels (only then can weights be released).
bool can_release() { return prepack_kernels(active_isa()) != nullptr && gemm_prepack_enabled(); }

// The reference: a convolution that is never packed (direct path; the same sums in the
// same order as the packed GEMM, so the same bits).
Tensor reference(const Conv2d& conv, const Tensor& w, const Tensor& x, bool relu) {
  Tensor y = conv2d_forward(x, w, conv.has_bias() ? &conv.bias.value : nullptr, conv.spec());
  if (relu) relu_inplace(y);
  return y;
}

}  // namespace

TEST_SUITE("packed_weights") {
  TEST_CASE("a packed convolution releases its plain weights and keeps its results") {
    Restore restore;
    set_winograd_mode(WinogradMode::Off);
    for (Isa isa : {Isa::Scalar, Isa::Avx2, Isa::Avx512, Isa::Neon}) {
      if (!isa_supported(isa)) continue;
      set_active_isa(isa);
      CAPTURE(isa_name(isa));
      // 3x3 (im2col path) and 1x1 (pointwise path).
      for (int64_t kernel : {int64_t{3}, int64_t{1}}) {
        Conv2d conv(24, 40, kernel, 1, kernel / 2, true);
        randomise(conv, 7 + kernel);
        const Tensor w0 = conv.weight.value.clone();
        std::mt19937 rng(3);
        const Tensor big = uniform_tensor(rng, {1, 24, 20, 20});  // lanes along N
        const Tensor small = uniform_tensor(rng, {1, 24, 2, 2});  // lanes along M
        const Tensor expect_big = reference(conv, w0, big, true);
        const Tensor expect_small = reference(conv, w0, small, true);
        conv.pack_for_inference(true);
        CHECK(same_bits(conv.infer(big, true), expect_big));
        CHECK(conv.weight.value.defined() == !can_release());
        CHECK(conv.weight.value.shape() == w0.shape());  // the shape stays
        CHECK(same_bits(conv.infer(small, true), expect_small));  // a layout made later
        CHECK(same_bits(conv.infer(big, true), expect_big));
        CHECK(conv.weight.value.defined() == !can_release());
        if (!conv.weight.value.defined())
          CHECK_THROWS_WITH_AS(conv.weight.value.clone(), doctest::Contains("released"), Error);
        conv.unpack_weights();
        REQUIRE(conv.weight.value.defined());
        CHECK(same_bits(conv.weight.value, w0));
        CHECK(same_bits(conv.infer(small, true), expect_small));
        CHECK(conv.weight.value.defined());  // unpack_weights holds them until the next pack
        conv.pack_for_inference(true);
        (void)conv.infer(big, false);
        conv.pack_for_inference(false);  // unpacks
        REQUIRE(conv.weight.value.defined());
        CHECK(same_bits(conv.weight.value, w0));
      }
    }
  }

  TEST_CASE("released weights feed Winograd, the data gradient and the weight gradient") {
    Restore restore;
    set_winograd_mode(WinogradMode::Auto);
    Conv2d conv(64, 64, 3, 1, 1, false);
    randomise(conv, 21);
    const Tensor w0 = conv.weight.value.clone();
    std::mt19937 rng(4);
    const Tensor small = uniform_tensor(rng, {1, 64, 4, 4});
    const Tensor large = uniform_tensor(rng, {1, 64, 40, 40});
    REQUIRE(!winograd_pays(small.shape(), conv.spec()));
    REQUIRE(winograd_pays(large.shape(), conv.spec()));
    // The same layer, never released: its plain weights stay (unpack_weights holds them).
    Conv2d twin(64, 64, 3, 1, 1, false);
    twin.weight.value.copy_from(w0);
    twin.pack_for_inference(true);
    const Tensor twin_small = twin.infer(small, false);
    const Tensor twin_large = twin.infer(large, false);
    twin.unpack_weights();
    REQUIRE(twin.weight.value.defined());
    REQUIRE(same_bits(twin.weight.value, w0));

    conv.pack_for_inference(true);
    CHECK(same_bits(conv.infer(small, false), twin_small));
    CHECK(conv.weight.value.defined() == !can_release());
    CHECK(same_bits(conv.infer(large, false), twin_large));  // filters from unpacked weights

    // The importance pass's data gradient (W^T packed from unpacked weights).
    auto data_grad = [&](Conv2d& c, const Tensor& x) {
      Tape tape = Tape::activations_only();
      Var in = tape.input(x, true);
      const Var y = c.forward(&tape, in);
      Tensor gy = Tensor::full(y.value.shape(), 0.5f);
      tape.backward(y, gy);
      return tape.grad(in).clone();
    };
    CHECK(same_bits(data_grad(conv, small), data_grad(twin, small)));
    CHECK(conv.weight.value.defined() == !can_release());

    // A tape that wants the weight gradient: the direct path on the unpacked weights.
    auto weight_grad = [&](Conv2d& c) {
      c.weight.grad = Tensor();
      Tape tape;
      const Var y = c.forward(&tape, tape.input(small));
      tape.backward(y, Tensor::full(y.value.shape(), 1.0f));
      return c.weight.grad.clone();
    };
    const Tensor g_conv = weight_grad(conv);
    const Tensor g_twin = weight_grad(twin);
    CHECK(same_bits(g_conv, g_twin));
  }

  TEST_CASE("streamed Winograd filters stand in for the plain weights") {
    Restore restore;
    set_winograd_mode(WinogradMode::Auto);
    set_winograd_filters_mode(WinogradFilters::Streamed);
    Conv2d conv(64, 48, 3, 1, 1, true);
    randomise(conv, 23);
    const Tensor w0 = conv.weight.value.clone();
    std::mt19937 rng(6);
    const Tensor small = uniform_tensor(rng, {1, 64, 4, 4});
    const Tensor large = uniform_tensor(rng, {1, 64, 24, 20});
    REQUIRE(winograd_pays(large.shape(), conv.spec()));
    REQUIRE(!winograd_pays(small.shape(), conv.spec()));
    Conv2d twin(64, 48, 3, 1, 1, true);  // the same layer, never released
    twin.weight.value.copy_from(w0);
    twin.bias.value.copy_from(conv.bias.value);
    twin.pack_for_inference(true);
    twin.unpack_weights();
    const Tensor twin_large = twin.infer(large, true);
    const Tensor twin_small = twin.infer(small, true);
    auto data_grad = [&](Conv2d& c, const Tensor& x) {
      Tape tape = Tape::activations_only();
      Var in = tape.input(x, true);
      const Var y = c.forward(&tape, in);
      tape.backward(y, Tensor::full(y.value.shape(), 0.25f));
      return tape.grad(in).clone();
    };
    const Tensor twin_grad = data_grad(twin, large);

    conv.pack_for_inference(true);
    // Winograd only: the streamed filters are the one copy of the weights.
    CHECK(same_bits(conv.infer(large, true), twin_large));
    CHECK(conv.weight.value.defined() == !can_release());
    CHECK(same_bits(data_grad(conv, large), twin_grad));  // transposed filters, from the taps
    CHECK(conv.weight.value.defined() == !can_release());
    // A GEMM form made from weights given back by the taps, then both stand alone.
    CHECK(same_bits(conv.infer(small, true), twin_small));
    CHECK(conv.weight.value.defined() == !can_release());
    CHECK(same_bits(conv.infer(large, true), twin_large));
    conv.unpack_weights();
    CHECK(same_bits(conv.weight.value, w0));
    // Asking for stored filters remakes them from the plain weights, which then stay.
    set_winograd_filters_mode(WinogradFilters::Stored);
    Conv2d again(64, 48, 3, 1, 1, true);
    again.weight.value.copy_from(w0);
    again.bias.value.copy_from(conv.bias.value);
    again.pack_for_inference(true);
    const Tensor stored_large = again.infer(large, true);
    CHECK(again.weight.value.defined());
    // Two roundings of one transform: within twice the Winograd bound of tests/test_winograd.cpp
    // (4e-6 of the largest sum the layer could form).
    double mx = 0.0, mw = 0.0, worst = 0.0;
    for (int64_t i = 0; i < large.numel(); ++i) mx = std::max(mx, double(std::fabs(large[i])));
    for (int64_t i = 0; i < w0.numel(); ++i) mw = std::max(mw, double(std::fabs(w0[i])));
    for (int64_t i = 0; i < stored_large.numel(); ++i)
      worst = std::max(worst, double(std::fabs(stored_large[i] - twin_large[i])));
    if (can_release()) CHECK(worst > 0.0);  // the two forms do round differently
    CHECK(worst <= 8e-6 * 64 * 9 * mx * mw);
  }

  TEST_CASE("auto filters: stored on small maps, streamed on large ones, each form kept") {
    Restore restore;
    set_winograd_mode(WinogradMode::Auto);
    Conv2d conv(64, 64, 3, 1, 1, true);
    randomise(conv, 29);
    const Tensor w0 = conv.weight.value.clone();
    std::mt19937 rng(8);
    const Tensor small = uniform_tensor(rng, {1, 64, 16, 16});  // 16 tiles: stored
    const Tensor large = uniform_tensor(rng, {1, 64, 40, 40});  // 100 tiles: streamed
    REQUIRE(winograd_pays(small.shape(), conv.spec()));
    REQUIRE(winograd_pays(large.shape(), conv.spec()));
    // The same layer with one form forced, as references.
    auto forced = [&](WinogradFilters form, const Tensor& x) {
      set_winograd_filters_mode(form);
      Conv2d c(64, 64, 3, 1, 1, true);
      c.weight.value.copy_from(w0);
      c.bias.value.copy_from(conv.bias.value);
      c.pack_for_inference(true);
      return c.infer(x, true);
    };
    const Tensor stored_small = forced(WinogradFilters::Stored, small);
    const Tensor streamed_small = forced(WinogradFilters::Streamed, small);
    const Tensor streamed_large = forced(WinogradFilters::Streamed, large);
    const Tensor stored_large = forced(WinogradFilters::Stored, large);
    set_winograd_filters_mode(WinogradFilters::Auto);
    conv.pack_for_inference(true);
    CHECK(same_bits(conv.infer(small, true), stored_small));
    CHECK(same_bits(conv.infer(large, true), streamed_large));
    CHECK(same_bits(conv.infer(small, true), stored_small));  // both forms kept
    if (can_release()) {
      CHECK_FALSE(same_bits(stored_small, streamed_small));  // so the checks above can fail
      CHECK_FALSE(same_bits(stored_large, streamed_large));
    }
    conv.unpack_weights();
    CHECK(same_bits(conv.weight.value, w0));
  }

  TEST_CASE("a BatchNorm folded into a released convolution uses its exact weights") {
    Restore restore;
    set_winograd_mode(WinogradMode::Off);
    Conv2d conv(16, 32, 1, 1, 0, false), plain(16, 32, 1, 1, 0, false);
    randomise(conv, 5);
    plain.weight.value.copy_from(conv.weight.value);
    std::mt19937 rng(9);
    const Tensor x = uniform_tensor(rng, {1, 16, 6, 6});
    conv.pack_for_inference(true);
    (void)conv.infer(x, false);
    CHECK(conv.weight.value.defined() == !can_release());
    std::vector<float> scale(32), shift(32);
    for (int i = 0; i < 32; ++i) {
      scale[static_cast<size_t>(i)] = 0.5f + 0.03f * static_cast<float>(i);
      shift[static_cast<size_t>(i)] = -0.2f + 0.01f * static_cast<float>(i);
    }
    conv.fold_scale_shift(scale, shift);
    plain.fold_scale_shift(scale, shift);
    REQUIRE(conv.weight.value.defined());
    CHECK(same_bits(conv.weight.value, plain.weight.value));
    CHECK(same_bits(conv.bias.value, plain.bias.value));
    CHECK(same_bits(conv.infer(x, true), reference(plain, plain.weight.value, x, true)));
  }

  TEST_CASE("a packed ResNet-50 head keeps only packed weights; save and training unpack") {
    Restore restore;
    set_winograd_mode(WinogradMode::Off);
    // Prepared as `isplit bench --mode forward` and predict prepare a model: BatchNorm
    // folded, packed. The twin computes without prepacked weights (the plain GEMM: the same
    // bits) and so never releases anything.
    auto model = build_model("resnet50", 10, 3, "layer1.0");
    auto twin = build_model("resnet50", 10, 3, "layer1.0");
    for (Model* m : {model.get(), twin.get()}) {
      m->set_training(false);
      m->fold_batchnorm();
      m->pack_for_inference();
    }
    std::mt19937 rng(12);
    const Tensor x = uniform_tensor(rng, {1, 3, 32, 32});
    const bool prepack = gemm_prepack_enabled();
    set_gemm_prepack(false);
    const Tensor expect = twin->forward(nullptr, Var{x}, nullptr, "layer1.0").value;
    set_gemm_prepack(prepack);
    const size_t before = tensor_live_bytes();
    CHECK(same_bits(model->forward(nullptr, Var{x}, nullptr, "layer1.0").value, expect));
    CHECK(same_bits(model->forward(nullptr, Var{x}, nullptr, "layer1.0").value, expect));
    if (can_release()) {
      // Packing added no second copy: the live bytes after packing (packed forms in place
      // of the plain weights, padded to whole panels) stay within 5 % of those before.
      const size_t after = tensor_live_bytes();
      CHECK(static_cast<double>(after) < 1.05 * static_cast<double>(before));
      size_t released = 0;
      for (auto& [name, p] : model->named_parameters(false)) released += !p->value.defined();
      CHECK(released > 0);
    }
    // named_parameters() unpacks: every value equals the twin's, bit for bit.
    NamedParams mine = model->named_parameters(), theirs = twin->named_parameters();
    REQUIRE(mine.size() == theirs.size());
    for (size_t i = 0; i < mine.size(); ++i) {
      CAPTURE(mine[i].first);
      REQUIRE(mine[i].second->value.defined());
      CHECK(same_bits(mine[i].second->value, theirs[i].second->value));
    }
    // Saved after packing and running: the same tensors as the twin's file.
    char dir[] = "/tmp/isplit_packed_XXXXXX";
    REQUIRE(mkdtemp(dir) != nullptr);
    const std::string a = std::string(dir) + "/a.safetensors", b = std::string(dir) + "/b.safetensors";
    model->pack_for_inference();
    (void)model->forward(nullptr, Var{x}, nullptr, "layer1.0");
    model->save(a);
    twin->save(b);
    SafetensorsReader ra(a), rb(b);
    REQUIRE(ra.names() == rb.names());
    for (const std::string& name : ra.names()) CHECK(same_bits(ra.get(name), rb.get(name)));
    std::remove(a.c_str());
    std::remove(b.c_str());
    rmdir(dir);
    // Training mode unpacks too.
    model->pack_for_inference();
    (void)model->forward(nullptr, Var{x}, nullptr, "layer1.0");
    model->set_training(true);
    for (auto& [name, p] : model->named_parameters(false)) {
      CAPTURE(name);
      CHECK(p->value.defined());
    }
  }
}
