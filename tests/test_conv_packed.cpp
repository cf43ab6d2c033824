// Inference packing: convolutions on prepacked weights (conv2d_forward_packed and
// Conv2d::infer when packed) give the same bits as conv2d_forward followed by
// relu_inplace, on every path (pointwise read in place, images batched for small maps,
// im2col bands for large ones); adaptive pool -> flatten -> linear folded into one linear
// map agrees with the unfused layers up to rounding.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <random>
#include <string>

#include "engine/cpu.h"
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

Tensor random_tensor(std::mt19937& rng, const Shape& shape) {
  return isplit::testing::uniform_tensor(rng, shape);
}

struct ConvCase {
  int64_t cin, cout, kernel, stride, pad, batch, size;
  int64_t dilation = 1;
};

// The convolution a case describes.
Conv2dSpec spec_of(const ConvCase& c) {
  Conv2dSpec s;
  s.in_channels = c.cin;
  s.out_channels = c.cout;
  s.kh = s.kw = c.kernel;
  s.stride_h = s.stride_w = c.stride;
  s.pad_h = s.pad_w = c.pad;
  s.dil_h = s.dil_w = c.dilation;
  return s;
}

}  // namespace

TEST_SUITE("conv_packed") {
  TEST_CASE("conv2d_forward_packed equals conv2d_forward (+ ReLU) bit for bit") {
    const int saved = num_threads();
    std::mt19937 rng(31);
    const ConvCase cases[] = {
        {64, 256, 1, 1, 0, 1, 14},    // pointwise, small map, batch 1: input read in place
        {64, 256, 1, 1, 0, 3, 14},    // pointwise, images batched
        {256, 512, 1, 2, 0, 2, 14},   // strided pointwise (downsample): gathered columns
        {32, 48, 1, 1, 0, 2, 20},     // pointwise, large map: per-image GEMM on the input
        {16, 40, 3, 1, 1, 1, 9},      // 3x3, small map, batch 1
        {16, 40, 3, 2, 1, 3, 9},      // 3x3 stride 2, batched
        {8, 24, 3, 1, 1, 2, 40},      // 3x3, large map: im2col bands
        {3, 64, 7, 2, 3, 1, 32},      // the ResNet stem
        // Small weights in per-thread bands, B's rows read from the band's input split
        // into column phases: output widths off the tile width, a stride of 3, dilation.
        {3, 64, 7, 2, 3, 2, 45},      // the stem, 23x23 output: partial tiles, two images
        {3, 20, 3, 1, 1, 1, 37},      // VGG16's first layer shape, 37 wide
        {2, 13, 5, 3, 2, 2, 50},      // three column phases, 17x17 output
        {4, 9, 3, 2, 2, 1, 41, 2},    // dilation 2 with stride 2
        {512, 2048, 1, 1, 0, 1, 2},   // layer4 at 64x64 input: few columns (lanes along M)
        // One image with small columns, which every thread expands for itself: ResNet-50's
        // layer3 3x3 at 64x64 input (padded planes), a 2x2 map (a table of sources), a
        // strided 1x1 (the shortcut of layer4 at 64x64).
        {256, 256, 3, 1, 1, 1, 4},
        {96, 80, 3, 1, 1, 1, 2},
        {256, 192, 1, 2, 0, 1, 4},
        // Stride 2 with weights past the bands' budget and outputs of 14x14 or more: the
        // direct kernels (AVX-512), which broadcast each tap from a padded copy of the input
        // (several k blocks, rows of 1 to 3 pixel tiles, a partial tile of channels, two
        // images).
        {64, 128, 3, 2, 1, 1, 40},    // ResNet-50's 3x3 stride-2 shape, 20x20 output
        {48, 160, 3, 2, 1, 2, 33},    // 17x17 output, two images
        {128, 72, 3, 2, 1, 1, 29},    // 15x15 output, 72 channels: 32 + 32 + 8
        {32, 96, 5, 2, 2, 1, 31},     // 5x5, padding 2
        {40, 200, 3, 2, 1, 1, 70},    // 35 pixels a row: three tiles
    };
    for (int threads : {1, 2, 3}) {
      set_num_threads(threads);
      for (const ConvCase& c : cases) {
        const Conv2dSpec s = spec_of(c);
        const Tensor x = random_tensor(rng, {c.batch, c.cin, c.size, c.size});
        const Tensor w = random_tensor(rng, {c.cout, c.cin, c.kernel, c.kernel});
        const Tensor b = random_tensor(rng, {c.cout});
        const int64_t k = c.cin * c.kernel * c.kernel;
        const PackedMatrix pw(false, c.cout, k, w.data(), k);
        const Tensor res = random_tensor(rng, conv2d_out_shape(x.shape(), s));
        for (bool bias : {false, true})
          for (bool relu : {false, true})
            for (bool with_res : {false, true}) {
              // conv, bias, residual and ReLU, each as its own pass.
              Tensor expect = conv2d_forward(x, w, bias ? &b : nullptr, s);
              if (with_res) add_into(expect, res);
              if (relu) relu_inplace(expect);
              const Tensor got = conv2d_forward_packed(x, pw, bias ? &b : nullptr, s, relu,
                                                       with_res ? &res : nullptr);
              CHECK_MESSAGE(same_bits(got, expect),
                            "cin " << c.cin << " cout " << c.cout << " k " << c.kernel
                                   << " stride " << c.stride << " batch " << c.batch << " size "
                                   << c.size << " bias " << bias << " relu " << relu
                                   << " residual " << with_res << " threads " << threads);
            }
      }
    }
    set_num_threads(saved);
  }

  TEST_CASE("conv_prepacked_direct: any split of rows and channel tiles gives the same bits") {
    if (conv_direct_unit() == 0) return;  // no direct kernels on this ISA (AVX2, NEON)
    std::mt19937 rng(67);
    const ConvCase c{24, 72, 3, 2, 1, 1, 33};  // 17x17 output, channel tiles 32 + 32 + 8
    const Conv2dSpec s = spec_of(c);
    const Tensor x = random_tensor(rng, {1, c.cin, c.size, c.size});
    const Tensor w = random_tensor(rng, {c.cout, c.cin, 3, 3});
    const int64_t k = c.cin * 9;
    const PackedMatrix pw(false, c.cout, k, w.data(), k);
    const Tensor expect = conv2d_forward_packed(x, pw, nullptr, s);  // the GEMM (small weights)
    // The padded input and tap offsets as the layer makes them.
    const int64_t hp = c.size + 2, wp = c.size + 2, oh = 17, ow = 17;
    std::vector<float> xp(static_cast<size_t>(c.cin * hp * wp), 0.0f);
    for (int64_t ch = 0; ch < c.cin; ++ch)
      for (int64_t r = 0; r < c.size; ++r)
        for (int64_t q = 0; q < c.size; ++q)
          xp[static_cast<size_t>((ch * hp + r + 1) * wp + q + 1)] = x[(ch * c.size + r) * c.size + q];
    std::vector<int64_t> koff;
    for (int64_t ch = 0; ch < c.cin; ++ch)
      for (int64_t i = 0; i < 3; ++i)
        for (int64_t j = 0; j < 3; ++j) koff.push_back(ch * hp * wp + i * wp + j);
    Tensor got = Tensor::full({1, c.cout, oh, ow}, -5.0f);
    // Rows [0, 5) and [5, 17) for channels [0, 64), then [64, 72) for all rows.
    REQUIRE(conv_prepacked_direct(pw, xp.data(), koff.data(), 2, 2 * wp, 0, 5, ow, 0, 64,
                                  got.data(), oh * ow, GemmEpilogue{}));
    REQUIRE(conv_prepacked_direct(pw, xp.data(), koff.data(), 2, 2 * wp, 5, oh, ow, 0, 64,
                                  got.data(), oh * ow, GemmEpilogue{}));
    REQUIRE(conv_prepacked_direct(pw, xp.data(), koff.data(), 2, 2 * wp, 0, oh, ow, 64, 1000,
                                  got.data(), oh * ow, GemmEpilogue{}));
    CHECK(same_bits(got, expect));
    // A channel range that does not start on a tile, or a stride the kernels lack: refused,
    // nothing written.
    Tensor untouched = Tensor::full({1, c.cout, oh, ow}, -5.0f);
    CHECK_FALSE(conv_prepacked_direct(pw, xp.data(), koff.data(), 2, 2 * wp, 0, oh, ow, 8, 72,
                                      untouched.data(), oh * ow, GemmEpilogue{}));
    CHECK_FALSE(conv_prepacked_direct(pw, xp.data(), koff.data(), 3, 2 * wp, 0, oh, ow, 0, 72,
                                      untouched.data(), oh * ow, GemmEpilogue{}));
    CHECK(untouched[0] == -5.0f);
    // Stride 1 (the kernels' other stride; no layer takes it, tested here): the same
    // padded input read one float apart, the 33x33 output of a stride-1 convolution.
    Conv2dSpec s1 = s;
    s1.stride_h = s1.stride_w = 1;
    const Tensor expect1 = conv2d_forward_packed(x, pw, nullptr, s1);
    Tensor got1 = Tensor::full(expect1.shape(), -5.0f);
    REQUIRE(conv_prepacked_direct(pw, xp.data(), koff.data(), 1, wp, 0, c.size, c.size, 0, c.cout,
                                  got1.data(), c.size * c.size, GemmEpilogue{}));
    CHECK(same_bits(got1, expect1));
  }

  TEST_CASE("conv2d_backward_data_packed equals conv2d_backward_data bit for bit") {
    const int saved = num_threads();
    std::mt19937 rng(41);
    const ConvCase cases[] = {
        {64, 256, 1, 1, 0, 1, 14}, {64, 256, 1, 1, 0, 3, 14}, {256, 512, 1, 2, 0, 2, 14},
        {32, 48, 1, 1, 0, 2, 20},  {16, 40, 3, 1, 1, 1, 9},   {16, 40, 3, 2, 1, 3, 9},
        {8, 24, 3, 1, 1, 2, 40},   {3, 64, 7, 2, 3, 1, 32},   {512, 2048, 1, 1, 0, 1, 2},
        // Output maps narrower than 8 (col2im by a table of destinations): 4x4, 2x2, and
        // a 7x7 stride-2 window whose taps fall off every side.
        {64, 32, 3, 1, 1, 1, 4},   {32, 64, 3, 2, 1, 2, 4},   {8, 16, 7, 2, 3, 2, 8},
    };
    for (int threads : {1, 2}) {
      set_num_threads(threads);
      for (const ConvCase& c : cases) {
        const Conv2dSpec s = spec_of(c);
        const Shape xs{c.batch, c.cin, c.size, c.size};
        const Tensor gy = random_tensor(rng, conv2d_out_shape(xs, s));
        const Tensor w = random_tensor(rng, {c.cout, c.cin, c.kernel, c.kernel});
        const int64_t k = c.cin * c.kernel * c.kernel;
        const PackedMatrix pt(true, k, c.cout, w.data(), k);
        // Gradients accumulate: start both from the same non-zero values.
        const Tensor start = random_tensor(rng, xs);
        Tensor expect = start.clone(), got = start.clone();
        conv2d_backward_data(gy, w, s, expect);
        conv2d_backward_data_packed(gy, pt, s, got);
        CHECK_MESSAGE(same_bits(got, expect), "cin " << c.cin << " cout " << c.cout << " k "
                                                      << c.kernel << " stride " << c.stride
                                                      << " batch " << c.batch << " size " << c.size
                                                      << " threads " << threads);
      }
    }
    set_num_threads(saved);
  }

  TEST_CASE("the data gradient as the flipped convolution: close to exact sums, the same bits in any batch") {
    const int saved = num_threads();
    std::mt19937 rng(43);
    struct Flip {
      int64_t cin, cout, kh, kw, pad_h, pad_w, batch, h, w;
    };
    const Flip cases[] = {
        {128, 128, 3, 3, 1, 1, 2, 8, 8},  // ResNet-50's layer2 3x3 at 64x64
        {256, 64, 3, 3, 1, 1, 3, 4, 4},   {64, 96, 3, 3, 1, 1, 2, 2, 2},  {16, 8, 3, 3, 1, 1, 1, 1, 1},
        {8, 24, 5, 5, 2, 2, 2, 9, 7},     {12, 20, 3, 3, 0, 0, 2, 6, 5},  // valid: padded by 2
        {10, 6, 3, 1, 1, 0, 2, 5, 6},     {6, 10, 2, 2, 1, 0, 2, 5, 4},   {40, 33, 3, 3, 2, 2, 2, 3, 3},
    };
    for (int threads : {1, 2}) {
      set_num_threads(threads);
      for (const Flip& c : cases) {
        CAPTURE(c.cin);
        CAPTURE(c.cout);
        CAPTURE(c.kh);
        CAPTURE(c.kw);
        CAPTURE(c.h);
        CAPTURE(threads);
        Conv2dSpec s;
        s.in_channels = c.cin;
        s.out_channels = c.cout;
        s.kh = c.kh;
        s.kw = c.kw;
        s.pad_h = c.pad_h;
        s.pad_w = c.pad_w;
        REQUIRE(flipped_conv_applies(s));
        const Shape xs{c.batch, c.cin, c.h, c.w};
        const Shape ys = conv2d_out_shape(xs, s);
        const Tensor gy = random_tensor(rng, ys);
        const Tensor w = random_tensor(rng, {c.cout, c.cin, c.kh, c.kw});
        const Tensor wf = flip_conv_weights(w);
        const int64_t k = c.cout * c.kh * c.kw;
        const PackedMatrix pf(false, c.cin, k, wf.data(), k);
        const Tensor start = random_tensor(rng, xs);
        Tensor added = start.clone(), written = Tensor::full(xs, 7.0f);
        conv2d_backward_data_flipped(gy, pf, s, added, /*accumulate=*/true);
        conv2d_backward_data_flipped(gy, pf, s, written, /*accumulate=*/false);
        REQUIRE(added.shape() == xs);
        REQUIRE(written.shape() == xs);
        // Exact sums in double, and the sum of the terms' sizes for the tolerance.
        double worst = 0.0;
        for (int64_t n = 0; n < c.batch; ++n)
          for (int64_t ci = 0; ci < c.cin; ++ci)
            for (int64_t iy = 0; iy < c.h; ++iy)
              for (int64_t ix = 0; ix < c.w; ++ix) {
                double sum = 0.0, size = 0.0;
                for (int64_t co = 0; co < c.cout; ++co)
                  for (int64_t ky = 0; ky < c.kh; ++ky)
                    for (int64_t kx = 0; kx < c.kw; ++kx) {
                      const int64_t oy = iy + c.pad_h - ky, ox = ix + c.pad_w - kx;
                      if (oy < 0 || oy >= ys[2] || ox < 0 || ox >= ys[3]) continue;
                      const double t = double(w[((co * c.cin + ci) * c.kh + ky) * c.kw + kx]) *
                                       gy[((n * c.cout + co) * ys[2] + oy) * ys[3] + ox];
                      sum += t;
                      size += std::fabs(t);
                    }
                const int64_t at = ((n * c.cin + ci) * c.h + iy) * c.w + ix;
                const double tol = 1e-6 * (size + 1.0);
                worst = std::max(worst, std::fabs(written[at] - sum) / tol);
                worst = std::max(worst, std::fabs(added[at] - (sum + start[at])) / (tol + 1e-6));
              }
        CHECK(worst <= 1.0);
        // An image alone gives the bits it gets in the batch.
        if (c.batch > 1) {
          Tensor one_gy = Tensor::empty({1, ys[1], ys[2], ys[3]});
          const int64_t per = ys[1] * ys[2] * ys[3];
          std::copy(gy.data() + per, gy.data() + 2 * per, one_gy.data());
          Tensor one = Tensor::empty({1, c.cin, c.h, c.w});
          conv2d_backward_data_flipped(one_gy, pf, s, one, false);
          const int64_t in_per = c.cin * c.h * c.w;
          CHECK(std::memcmp(one.data(), written.data() + in_per, in_per * sizeof(float)) == 0);
        }
      }
    }
    set_num_threads(saved);
    // Which layers it takes, and a wrong one is an error.
    Conv2dSpec s;
    s.in_channels = s.out_channels = 4;
    s.kh = s.kw = 3;
    s.pad_h = s.pad_w = 1;
    CHECK(flipped_conv_applies(s));
    // s changed by `change` is not taken.
    auto rejected = [&](const std::function<void(Conv2dSpec&)>& change) {
      Conv2dSpec t = s;
      change(t);
      return !flipped_conv_applies(t);
    };
    CHECK(rejected([](Conv2dSpec& t) { t.stride_h = 2; }));
    CHECK(rejected([](Conv2dSpec& t) { t.dil_w = 2; }));
    CHECK(rejected([](Conv2dSpec& t) { t.groups = 2; }));
    CHECK(rejected([](Conv2dSpec& t) { t.pad_h = 3; }));
    // pointwise: the GEMM reads gy in place
    CHECK(rejected([](Conv2dSpec& t) { t.kh = t.kw = 1, t.pad_h = t.pad_w = 0; }));
    Tensor gx = Tensor::zeros({1, 4, 5, 5});
    const Tensor w = Tensor::zeros({4, 4, 3, 3});
    const PackedMatrix p(false, 4, 36, w.data(), 36);
    Conv2dSpec s2 = s;
    s2.stride_h = s2.stride_w = 2;
    CHECK_THROWS_WITH_AS(conv2d_backward_data_flipped(Tensor::zeros({1, 4, 3, 3}), p, s2, gx, false),
                         doctest::Contains("not a convolution"), Error);
    CHECK_THROWS_WITH_AS(conv2d_backward_data_flipped(Tensor::zeros({1, 4, 4, 4}), p, s, gx, false),
                         doctest::Contains("output gradient"), Error);
  }

  TEST_CASE("taps that only read padding are left out, with the same results") {
    Conv2dSpec s;
    s.in_channels = s.out_channels = 8;
    s.kh = s.kw = 3;
    s.pad_h = s.pad_w = 1;
    TapRange r;
    Conv2dSpec c;
    REQUIRE(taps_crop(s, 1, 1, &r, &c));  // a 3x3 layer on 1x1 maps reads its centre only
    CHECK((r.ky0 == 1 && r.ky1 == 1 && r.kx0 == 1 && r.kx1 == 1));
    CHECK((c.kh == 1 && c.kw == 1 && c.pad_h == 0 && c.pad_w == 0));
    CHECK_FALSE(taps_crop(s, 2, 2, &r, &c));  // 2x2 maps read every tap
    CHECK_FALSE(taps_crop(s, 7, 7, &r, &c));
    REQUIRE(taps_crop(s, 1, 5, &r, &c));  // one row: the kernel's middle row
    CHECK((c.kh == 1 && c.kw == 3 && c.pad_h == 0 && c.pad_w == 1));
    Conv2dSpec s2 = s;
    s2.stride_h = s2.stride_w = 2;
    REQUIRE(taps_crop(s2, 2, 2, &r, &c));  // ResNet-50's layer4.0 at 32x32: 2x2 -> 1x1
    CHECK((r.ky0 == 1 && r.ky1 == 2 && r.kx0 == 1 && r.kx1 == 2));
    CHECK((c.kh == 2 && c.kw == 2 && c.pad_h == 0 && c.stride_h == 2));
    Conv2dSpec p = s;
    p.kh = p.kw = 1;
    p.pad_h = p.pad_w = 0;
    CHECK_FALSE(taps_crop(p, 1, 1, &r, &c));
    // crop_taps keeps exactly the taps asked for.
    std::mt19937 rng(47);
    const Tensor w = random_tensor(rng, {3, 2, 3, 3});
    const Tensor cut = crop_taps(w, TapRange{1, 2, 0, 1});
    REQUIRE(cut.shape() == Shape{3, 2, 2, 2});
    for (int64_t o = 0; o < 6; ++o)
      for (int64_t y = 0; y < 2; ++y)
        for (int64_t x = 0; x < 2; ++x) CHECK(cut[(o * 2 + y) * 2 + x] == w[(o * 3 + 1 + y) * 3 + x]);
    CHECK_THROWS_WITH_AS(crop_taps(w, TapRange{1, 3, 0, 0}), doctest::Contains("outside the kernel"), Error);

    // A packed layer on such maps: inference and the importance pass's data gradient
    // against the direct sums of the whole kernel.
    struct Case {
      int64_t cin, cout, kernel, stride, pad, batch, h, w;
    };
    const Case cases[] = {{64, 48, 3, 1, 1, 2, 1, 1}, {40, 56, 3, 2, 1, 2, 2, 2}, {16, 24, 5, 1, 2, 1, 1, 3}};
    for (const Case& k : cases) {
      CAPTURE(k.kernel);
      CAPTURE(k.stride);
      CAPTURE(k.h);
      Conv2d conv(k.cin, k.cout, k.kernel, k.stride, k.pad, true);
      conv.weight.value = random_tensor(rng, conv.weight.value.shape());
      conv.bias.value = random_tensor(rng, {k.cout});
      conv.set_training(false);
      const Tensor x = random_tensor(rng, {k.batch, k.cin, k.h, k.w});
      const Tensor want = conv2d_forward_naive(x, conv.weight.value, &conv.bias.value, conv.spec());
      const Tensor wplain = conv.weight.value.clone();
      conv.pack_for_inference(true);
      REQUIRE(taps_crop(conv.spec(), k.h, k.w, &r, &c));
      const Tensor got = conv.infer(x, false);
      REQUIRE(got.shape() == want.shape());
      for (int64_t i = 0; i < got.numel(); ++i) CHECK(got[i] == doctest::Approx(want[i]).epsilon(1e-5));
      // The importance pass's backward through the same forms.
      const Tensor gy = random_tensor(rng, want.shape());
      Tape tape = Tape::activations_only();
      const Var xin = tape.input(x, true);
      const Var y = conv.forward(&tape, xin);
      tape.backward(y, gy);
      const Tensor gx = tape.grad(xin);
      Tensor gref = Tensor::zeros(x.shape());
      conv2d_backward_data(gy, wplain, conv.spec(), gref);
      REQUIRE(gx.shape() == gref.shape());
      for (int64_t i = 0; i < gx.numel(); ++i) CHECK(gx[i] == doctest::Approx(gref[i]).epsilon(1e-5));
      // The layer's own weights come back whole.
      conv.unpack_weights();
      CHECK(same_bits(conv.weight.value, wplain));
    }
  }

  TEST_CASE("packed weights that do not fit the layer are an error") {
    std::mt19937 rng(3);
    Conv2dSpec s;
    s.in_channels = 4;
    s.out_channels = 6;
    s.kh = s.kw = 3;
    s.pad_h = s.pad_w = 1;
    const Tensor w = random_tensor(rng, {6, 4, 3, 3});
    const PackedMatrix wrong(false, 6, 4, w.data(), 4);  // K should be 36
    const Tensor x = random_tensor(rng, {1, 4, 5, 5});
    CHECK_THROWS_WITH_AS(conv2d_forward_packed(x, wrong, nullptr, s, false),
                         doctest::Contains("packed weights"), Error);
    Conv2dSpec grouped = s;
    grouped.groups = 2;
    CHECK_THROWS_AS(conv2d_forward_packed(x, wrong, nullptr, grouped, false), Error);
    Tensor gx = Tensor::zeros({1, 4, 5, 5});
    const Tensor gy = random_tensor(rng, {1, 6, 5, 5});
    CHECK_THROWS_WITH_AS(conv2d_backward_data_packed(gy, wrong, s, gx),
                         doctest::Contains("packed weights"), Error);
    const PackedMatrix right(false, 6, 36, w.data(), 36);
    const Tensor bad_residual = random_tensor(rng, {1, 6, 4, 5});
    CHECK_THROWS_WITH_AS(conv2d_forward_packed(x, right, nullptr, s, true, &bad_residual),
                         doctest::Contains("residual"), Error);
  }

  TEST_CASE("Conv2d::infer gives the same bits packed or not, and after new weights") {
    std::mt19937 rng(8);
    Conv2d conv(16, 32, 3, 1, 1, true);
    conv.weight.value = random_tensor(rng, {32, 16, 3, 3});
    conv.bias.value = random_tensor(rng, {32});
    conv.set_training(false);
    const Tensor x = random_tensor(rng, {2, 16, 6, 6});  // too small for Winograd: GEMM path
    const Tensor plain = conv.infer(x, true);
    conv.pack_for_inference(true);
    CHECK(same_bits(conv.infer(x, true), plain));
    // Folding new scale/shift re-packs from the new weights.
    std::vector<float> scale(32, 0.5f), shift(32, 0.25f);
    conv.fold_scale_shift(scale, shift);
    const Tensor packed_after = conv.infer(x, false);
    conv.pack_for_inference(false);
    CHECK(same_bits(packed_after, conv.infer(x, false)));
    set_gemm_prepack(false);
    conv.pack_for_inference(true);
    CHECK(same_bits(packed_after, conv.infer(x, false)));
    set_gemm_prepack(true);
  }

  TEST_CASE("adaptive pool + flatten + linear folded into one map") {
    std::mt19937 rng(12);
    struct PoolCase {
      int64_t n, c, h, w, oh, ow;
    };
    const PoolCase cases[] = {{1, 5, 1, 1, 7, 7}, {3, 5, 2, 2, 7, 7}, {2, 4, 3, 2, 7, 7},
                              {1, 3, 2, 5, 7, 7}, {2, 6, 6, 6, 7, 7}, {1, 4, 2, 3, 3, 4}};
    for (const PoolCase& pc : cases) {
      Linear fc(pc.c * pc.oh * pc.ow, 11);
      fc.weight.value = random_tensor(rng, fc.weight.value.shape());
      fc.bias.value = random_tensor(rng, {11});
      fc.set_training(false);
      const Tensor x = random_tensor(rng, {pc.n, pc.c, pc.h, pc.w});
      const Tensor pooled = adaptive_avgpool2d_forward(x, pc.oh, pc.ow);
      const Tensor expect =
          linear_forward(pooled.reshape({pc.n, pc.c * pc.oh * pc.ow}), fc.weight.value, &fc.bias.value);
      CHECK_FALSE(fc.infer_after_pool(x, pc.oh, pc.ow).defined());  // not packed
      fc.pack_for_inference(true);
      const Tensor got = fc.infer_after_pool(x, pc.oh, pc.ow);
      REQUIRE(got.defined());
      REQUIRE(got.shape() == expect.shape());
      double worst = 0.0, scale = 0.0;
      for (int64_t i = 0; i < got.numel(); ++i) {
        worst = std::max(worst, std::fabs(double(got[i]) - double(expect[i])));
        scale = std::max(scale, std::fabs(double(expect[i])));
      }
      CHECK_MESSAGE(worst <= 1e-5 * scale, "c " << pc.c << " " << pc.h << "x" << pc.w << " error " << worst);
      // Its backward (no parameter gradients wanted) equals the unfused layers' backward.
      {
        const Tensor gy = random_tensor(rng, {pc.n, 11});
        Tape fused_tape = Tape::activations_only();
        Var xin = fused_tape.input(x, true);
        Var yf = fc.forward_after_pool(&fused_tape, xin, pc.oh, pc.ow);
        REQUIRE(yf.value.defined());
        fused_tape.backward(yf, gy);
        const Tensor gx_fused = fused_tape.grad(xin);
        Tensor gpooled = Tensor::zeros({pc.n, pc.c * pc.oh * pc.ow});
        linear_backward(gy, pooled.reshape({pc.n, pc.c * pc.oh * pc.ow}), fc.weight.value, &gpooled,
                        nullptr, nullptr);
        Tensor gx = Tensor::zeros(x.shape());
        adaptive_avgpool2d_backward(gpooled.reshape({pc.n, pc.c, pc.oh, pc.ow}), gx);
        double gworst = 0.0, gscale = 0.0;
        for (int64_t i = 0; i < gx.numel(); ++i) {
          gworst = std::max(gworst, std::fabs(double(gx_fused[i]) - double(gx[i])));
          gscale = std::max(gscale, std::fabs(double(gx[i])));
        }
        CHECK_MESSAGE(gworst <= 1e-5 * gscale, "backward c " << pc.c << " " << pc.h << "x" << pc.w
                                                             << " error " << gworst << " of " << gscale);
      }
      // New weights: a later pack forgets the folded ones.
      fc.weight.value = random_tensor(rng, fc.weight.value.shape());
      fc.pack_for_inference(true);
      const Tensor again = fc.infer_after_pool(x, pc.oh, pc.ow);
      const Tensor expect2 =
          linear_forward(pooled.reshape({pc.n, pc.c * pc.oh * pc.ow}), fc.weight.value, &fc.bias.value);
      for (int64_t i = 0; i < again.numel(); ++i)
        CHECK(std::fabs(double(again[i]) - double(expect2[i])) <= 1e-5 * (1.0 + std::fabs(double(expect2[i]))));
    }
    // Not smaller than the pooled features: no fold.
    Linear fc(4 * 49, 3);
    fc.pack_for_inference(true);
    CHECK_FALSE(fc.infer_after_pool(Tensor::zeros({1, 4, 7, 7}), 7, 7).defined());
    CHECK_FALSE(fc.infer_after_pool(Tensor::zeros({1, 4, 9, 9}), 7, 7).defined());
    CHECK_THROWS_AS(pool_linear_weight(Tensor::zeros({3, 10}), 4, 2, 2, 7, 7), Error);
  }

  TEST_CASE("VGG16 packed for inference predicts what the unpacked network does") {
    for (int64_t size : {32, 64}) {
      auto model = build_model("vgg16", 10, 3);
      std::mt19937 rng(static_cast<uint32_t>(size) + 1);
      const Tensor x = random_tensor(rng, {2, 3, size, size});
      const Tensor plain = model->predict(x);
      std::vector<std::string> seen;
      model->pack_for_inference();
      Var out = model->forward(nullptr, Var{x}, [&](const std::string& name, const Var&) { seen.push_back(name); });
      double worst = 0.0, scale = 0.0;
      for (int64_t i = 0; i < plain.numel(); ++i) {
        worst = std::max(worst, std::fabs(double(out.value[i]) - double(plain[i])));
        scale = std::max(scale, std::fabs(double(plain[i])));
      }
      CHECK_MESSAGE(worst <= 1e-4 * scale, "input " << size << " error " << worst << " of " << scale);
      // The importance pass (a tape without weight gradients) folds too: the gradients
      // at the last cut point agree with the unpacked network's.
      auto gradient_at_last_cut = [&](Model& m) {
        Tape tape = Tape::activations_only();
        Var cut;
        Var logits = m.forward(&tape, tape.input(x), [&](const std::string& name, const Var& v) {
          if (name == "features.30") cut = v;
        });
        Tensor seed = Tensor::zeros(logits.value.shape());
        seed[3] = 1.0f;
        seed[10 + 7] = 1.0f;
        tape.backward(logits, seed);
        return tape.grad(cut);
      };
      // Winograd off: it rounds the features differently, which can flip a ReLU in the
      // classifier and so change a gradient for a reason other than the fold.
      const WinogradMode saved_mode = winograd_mode();
      set_winograd_mode(WinogradMode::Off);
      model->pack_for_inference(false);
      const Tensor g_plain = gradient_at_last_cut(*model);
      model->pack_for_inference(true);
      const Tensor g_packed = gradient_at_last_cut(*model);
      set_winograd_mode(saved_mode);
      // Weights and inputs are fixed, so this is deterministic. The fold rounds fc6's
      // pre-activations differently (by ~1e-7 of them), and a unit sitting on the edge
      // could flip its ReLU and legitimately change the gradients; these seeds have none
      // (the layer-level test above checks the fold's backward on its own).
      double gworst = 0.0, gscale = 0.0;
      for (int64_t i = 0; i < g_plain.numel(); ++i) {
        gworst = std::max(gworst, std::fabs(double(g_packed[i]) - double(g_plain[i])));
        gscale = std::max(gscale, std::fabs(double(g_plain[i])));
      }
      CHECK(gscale > 0.0);
      CHECK_MESSAGE(gworst <= 1e-4 * gscale, "input " << size << " gradient error " << gworst);
      // Every cut point is still observed, and a head still stops where it should.
      CHECK(seen.size() == model->cut_points().size());
      CHECK(model->forward(nullptr, Var{x}, nullptr, "features.30").value.shape() ==
            Shape{2, 512, size / 32, size / 32});
    }
  }
}
