// Winograd F(4x4, 3x3) convolution against the direct-loop oracle: random shapes with
// partial edge tiles, every padding the layers use, batches that put tiles of several
// images in one block, fused bias and ReLU; its rounding error bounded by the size of
// the sums; the same bits from every thread count and every ISA's transforms.
#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "engine/cpu.h"
#include "engine/gemm_prepacked.h"
#include "engine/kernels/winograd.h"
#include "engine/parallel.h"
#include "layers/winograd.h"
#include "tests/tensor_util.h"

using namespace isplit;

namespace {

Tensor randn(const Shape& shape, std::mt19937_64& rng, double sd = 1.0) {
  std::normal_distribution<double> dist(0.0, sd);
  Tensor t = Tensor::empty(shape);
  for (int64_t i = 0; i < t.numel(); ++i) t[i] = static_cast<float>(dist(rng));
  return t;
}

Conv2dSpec spec3x3(int64_t cin, int64_t cout, int64_t pad) {
  Conv2dSpec s;
  s.in_channels = cin;
  s.out_channels = cout;
  s.kh = s.kw = 3;
  s.pad_h = s.pad_w = pad;
  return s;
}

// Largest |ours - ref| / (terms * 9 * max|a| * max|w|), a being the data the sums read:
// the error in units of the largest sum the layer could form, so one bound holds for every
// shape. (Per output, a sum of |a| |w| over its own taps is no scale for Winograd: a
// tile's result is formed from transformed values of its whole 6x6 patch, so an output
// whose own taps are small still carries the rounding of its neighbours'.)
double error_in_sums(const Tensor& ours, const Tensor& ref, const Tensor& a, const Tensor& w,
                     int64_t terms) {
  double ma = 0.0, mw = 0.0, worst = 0.0;
  for (int64_t i = 0; i < a.numel(); ++i) ma = std::max(ma, double(std::fabs(a[i])));
  for (int64_t i = 0; i < w.numel(); ++i) mw = std::max(mw, double(std::fabs(w[i])));
  const double scale = std::max(double(terms) * 9.0 * ma * mw, 1e-30);
  for (int64_t i = 0; i < ref.numel(); ++i)
    worst = std::max(worst, std::fabs(double(ours[i]) - ref[i]) / scale);
  return worst;
}

// The forward error: Cin * 9 * max|x| * max|w|.
double scaled_error(const Tensor& ours, const Tensor& ref, const Tensor& x, const Tensor& w) {
  return error_in_sums(ours, ref, x, w, x.dim(1));
}

using isplit::testing::same_bits;

// Largest |ours - ref| of a data gradient in units of the largest sum it could form:
// Cout * 9 * max|gy| * max|w| (w [Cout, Cin, 3, 3]).
double scaled_grad_error(const Tensor& ours, const Tensor& ref, const Tensor& gy, const Tensor& w) {
  return error_in_sums(ours, ref, gy, w, w.dim(0));
}

// The bound on scaled_error. F(4x4, 3x3)'s transforms have entries up to 8 and its filter
// transform divides by 6 and 24, so it rounds worse than a direct sum; the worst measured
// on these shapes is 2.6e-7 (float32 epsilon is 1.2e-7). A wrong transform entry gives
// errors of order 1e-2.
constexpr double kScaledTol = 4e-6;

}  // namespace

TEST_SUITE("winograd") {
  TEST_CASE("matches the direct convolution on random shapes, paddings and batches") {
    std::mt19937_64 rng(42);
    const int64_t sizes[] = {1, 2, 3, 4, 5, 6, 7, 9, 13, 14, 17};
    const int64_t chans[] = {1, 3, 16, 17, 33};
    std::uniform_int_distribution<int> pick_size(0, 10), pick_chan(0, 4), pick_pad(0, 2),
        pick_n(1, 3);
    double worst = 0.0;
    for (int trial = 0; trial < 60; ++trial) {
      const int64_t n = pick_n(rng), h = sizes[pick_size(rng)], w = sizes[pick_size(rng)];
      const int64_t cin = chans[pick_chan(rng)], cout = chans[pick_chan(rng)];
      const int64_t pad = pick_pad(rng);
      if (h + 2 * pad < 3 || w + 2 * pad < 3) continue;
      const Conv2dSpec s = spec3x3(cin, cout, pad);
      const Tensor x = randn({n, cin, h, w}, rng), wt = randn({cout, cin, 3, 3}, rng, 0.3);
      const Tensor b = randn({cout}, rng);
      const bool relu = trial % 2 == 1;
      Tensor ref = conv2d_forward_naive(x, wt, &b, s);
      if (relu)
        for (int64_t i = 0; i < ref.numel(); ++i) ref[i] = std::max(ref[i], 0.0f);
      const Tensor ours = conv2d_forward_winograd(x, winograd_filter(wt), &b, s, relu);
      REQUIRE(ours.shape() == ref.shape());
      const double err = scaled_error(ours, ref, x, wt);
      CHECK_MESSAGE(err <= kScaledTol, "n " << n << " cin " << cin << " cout " << cout << " "
                                            << h << "x" << w << " pad " << pad << ": " << err);
      worst = std::max(worst, err);
    }
    MESSAGE("worst scaled Winograd error: " << worst);
  }

  TEST_CASE("the data gradient matches the direct backward and accumulates") {
    std::mt19937_64 rng(5);
    const int64_t sizes[] = {2, 3, 5, 8, 11, 14};
    const int64_t chans[] = {1, 7, 16, 33};
    std::uniform_int_distribution<int> pick_size(0, 5), pick_chan(0, 3), pick_pad(0, 2);
    for (int trial = 0; trial < 30; ++trial) {
      const int64_t h = sizes[pick_size(rng)], w = sizes[pick_size(rng)], pad = pick_pad(rng);
      const int64_t cin = chans[pick_chan(rng)], cout = chans[pick_chan(rng)], n = 1 + trial % 2;
      if (h + 2 * pad < 3 || w + 2 * pad < 3) continue;
      const Conv2dSpec s = spec3x3(cin, cout, pad);
      const Tensor wt = randn({cout, cin, 3, 3}, rng, 0.3);
      const Tensor gy = randn(conv2d_out_shape({n, cin, h, w}, s), rng);
      const Tensor start = randn({n, cin, h, w}, rng);  // gradients add to what is there
      Tensor ref = start.clone(), ours = start.clone();
      conv2d_backward_data(gy, wt, s, ref);
      conv2d_backward_data_winograd(gy, winograd_filter_transposed(wt), s, ours);
      // The start values are of order one and add exactly one rounding.
      const double worst = scaled_grad_error(ours, ref, gy, wt);
      CHECK_MESSAGE(worst <= kScaledTol, "cin " << cin << " cout " << cout << " " << h << "x"
                                                << w << " pad " << pad << ": " << worst);
    }
    Conv2dSpec wide = spec3x3(4, 4, 3);
    CHECK_FALSE(winograd_backward_applies(wide));
    Tensor gx = Tensor::zeros({1, 4, 6, 6});
    CHECK_THROWS_AS(conv2d_backward_data_winograd(Tensor::zeros({1, 4, 10, 10}),
                                                  winograd_filter_transposed(Tensor::zeros({4, 4, 3, 3})),
                                                  wide, gx),
                    Error);
  }

  TEST_CASE("many tiles: several tile blocks, the last one partial") {
    std::mt19937_64 rng(7);
    const Conv2dSpec s = spec3x3(64, 64, 1);
    // 2 x (15 x 15) tiles of a 57 x 59 output: more than one block, ragged edges.
    const Tensor x = randn({2, 64, 57, 59}, rng), wt = randn({64, 64, 3, 3}, rng, 0.1);
    const Tensor ref = conv2d_forward_naive(x, wt, nullptr, s);
    const Tensor ours = conv2d_forward_winograd(x, winograd_filter(wt), nullptr, s);
    CHECK(scaled_error(ours, ref, x, wt) <= kScaledTol);
  }

  TEST_CASE("wide rows: lane groups read straight from the image, and near its end") {
    // Rows of 66 and more floats let a group of sixteen tiles in one tile row be read in
    // place; the last rows of the tensor, the left and right padding and partial groups
    // take the copied band instead.
    std::mt19937_64 rng(19);
    const int64_t widths[] = {66, 67, 70, 81, 133};
    for (int trial = 0; trial < 15; ++trial) {
      const int64_t w = widths[trial % 5], h = 3 + trial % 7, pad = trial % 3;
      const int64_t n = 1 + trial % 2, cin = 16 + trial % 3, cout = 16;
      const Conv2dSpec s = spec3x3(cin, cout, pad);
      const Tensor x = randn({n, cin, h, w}, rng), wt = randn({cout, cin, 3, 3}, rng, 0.3);
      const Tensor b = randn({cout}, rng);
      const Tensor ref = conv2d_forward_naive(x, wt, &b, s);
      const Tensor ours = conv2d_forward_winograd(x, winograd_filter(wt), &b, s);
      REQUIRE(ours.shape() == ref.shape());
      CHECK_MESSAGE(scaled_error(ours, ref, x, wt) <= kScaledTol,
                    "n " << n << " cin " << cin << " " << h << "x" << w << " pad " << pad);
    }
  }

  TEST_CASE("the gather and interleave steps move every value to its place on every ISA") {
    std::vector<float> rows_data(6 * 66), out(16 * kWinogradLanes);
    for (size_t i = 0; i < rows_data.size(); ++i) rows_data[i] = static_cast<float>(i);
    for (size_t i = 0; i < out.size(); ++i) out[i] = static_cast<float>(i) + 0.5f;
    const float* rows[6];
    for (int r = 0; r < 6; ++r) rows[r] = rows_data.data() + r * 66;
    for (Isa isa : {Isa::Scalar, Isa::Avx2, Isa::Avx512, Isa::Neon}) {
      if (!isa_supported(isa)) continue;
      std::vector<float> patch(36 * kWinogradLanes, -1.0f), lines(4 * 4 * kWinogradLanes, -1.0f);
      winograd_kernels(isa).gather16(rows, patch.data());
      winograd_kernels(isa).interleave16(out.data(), lines.data());
      int wrong = 0;
      for (int r = 0; r < 6; ++r)
        for (int col = 0; col < 6; ++col)
          for (int l = 0; l < kWinogradLanes; ++l)
            wrong += patch[(r * 6 + col) * kWinogradLanes + l] != rows[r][4 * l + col];
      for (int i = 0; i < 4; ++i)
        for (int j = 0; j < 4; ++j)
          for (int l = 0; l < kWinogradLanes; ++l)
            wrong += lines[i * 64 + 4 * l + j] != out[(i * 4 + j) * kWinogradLanes + l];
      CHECK_MESSAGE(wrong == 0, isa_name(isa));
    }
  }

  TEST_CASE("splitting the threads by tiles or by channels gives the same bits") {
    std::mt19937_64 rng(43);
    struct Case {
      int64_t n, cin, cout, h, w, pad;
    };
    // F(4x4, 3x3) with partial lane groups and tiles, two images, two k blocks (cin 300);
    // F(2x2, 3x3) on an 8x8 map.
    const Case cases[] = {{1, 64, 64, 56, 56, 1}, {2, 16, 30, 23, 18, 1}, {1, 300, 40, 20, 20, 1},
                          {1, 256, 256, 8, 8, 1}};
    const WinogradSplit saved_split = winograd_split();
    const int saved_threads = num_threads();
    for (int threads : {2, 3}) {
      set_num_threads(threads);
      for (const Case& c : cases) {
        const Conv2dSpec s = spec3x3(c.cin, c.cout, c.pad);
        const Tensor x = randn({c.n, c.cin, c.h, c.w}, rng), wt = randn({c.cout, c.cin, 3, 3}, rng, 0.2);
        const Tensor b = randn({c.cout}, rng);
        const WinogradFilter f = winograd_filter(wt, WinogradFilters::Streamed);
        const WinogradFilter ft = winograd_filter_transposed(wt, WinogradFilters::Streamed);
        const Tensor gy = randn(conv2d_out_shape(x.shape(), s), rng);
        Tensor out[2], grad[2];
        for (int i = 0; i < 2; ++i) {
          set_winograd_split(i == 0 ? WinogradSplit::Channels : WinogradSplit::Tiles);
          out[i] = conv2d_forward_winograd(x, f, &b, s, true);
          grad[i] = randn(x.shape(), rng);  // replaced: the gradient is written, not added
          conv2d_backward_data_winograd(gy, ft, s, grad[i], false);
        }
        CHECK_MESSAGE(same_bits(out[0], out[1]), "cin " << c.cin << " cout " << c.cout << " map "
                                                         << c.h << "x" << c.w << " threads " << threads);
        CHECK_MESSAGE(same_bits(grad[0], grad[1]), "gradient, cin " << c.cin << " cout " << c.cout
                                                                    << " threads " << threads);
      }
    }
    set_winograd_split(saved_split);
    set_num_threads(saved_threads);
  }

  TEST_CASE("the thread count and the ISA never change a bit of the transforms") {
    std::mt19937_64 rng(3);
    const Conv2dSpec s = spec3x3(24, 40, 1);
    const Tensor x = randn({3, 24, 23, 18}, rng), wt = randn({40, 24, 3, 3}, rng, 0.2);
    const Tensor b = randn({40}, rng);
    const WinogradFilter f = winograd_filter(wt);
    const int saved = num_threads();
    set_num_threads(1);
    const Tensor one = conv2d_forward_winograd(x, f, &b, s, true);
    set_num_threads(2);
    const Tensor two = conv2d_forward_winograd(x, f, &b, s, true);
    set_num_threads(saved);
    CHECK(same_bits(one, two));

    // Transforms alone (the GEMMs of different ISAs may fuse differently).
    std::vector<float> in(36 * kWinogradLanes), m(36 * kWinogradLanes);
    std::normal_distribution<float> dist(0.0f, 3.0f);
    for (float& v : in) v = dist(rng);
    for (float& v : m) v = dist(rng);
    in[5] = std::numeric_limits<float>::infinity();
    const WinogradKernels& ref = winograd_kernels(Isa::Scalar);
    std::vector<float> v_ref(36 * kWinogradLanes), o_ref(16 * kWinogradLanes);
    ref.input16(in.data(), v_ref.data(), kWinogradLanes);
    ref.output16(m.data(), kWinogradLanes, 0.25f, true, o_ref.data());
    for (Isa isa : {Isa::Avx2, Isa::Avx512, Isa::Neon}) {
      if (!isa_supported(isa)) continue;
      std::vector<float> v(36 * kWinogradLanes), o(16 * kWinogradLanes);
      winograd_kernels(isa).input16(in.data(), v.data(), kWinogradLanes);
      winograd_kernels(isa).output16(m.data(), kWinogradLanes, 0.25f, true, o.data());
      CHECK_MESSAGE(std::memcmp(v.data(), v_ref.data(), v.size() * 4) == 0, isa_name(isa));
      CHECK_MESSAGE(std::memcmp(o.data(), o_ref.data(), o.size() * 4) == 0, isa_name(isa));
    }
  }

  TEST_CASE("F(2x2, 3x3) on 7x7 and 8x8 maps: forward and data gradient within the bound") {
    std::mt19937_64 rng(23);
    const Isa saved = active_isa();
    const bool saved_small = winograd_small_maps();
    // {n, cin, cout, h, w, pad}: outputs of 7x7 and 8x8 (and 8x7), channel counts off the
    // panel heights, two images (32 tiles: two lane groups); at least 256 x 256 channel
    // pairs, where F(2x2, 3x3) is chosen. Lane groups of four tile rows or more gather
    // through a table of sources; at 10x10 (25 tiles an image) the second group holds
    // rows of both images.
    const int64_t shapes[][6] = {{2, 257, 258, 7, 7, 1}, {1, 256, 256, 8, 8, 1},
                                 {1, 264, 249, 9, 9, 0}, {2, 259, 256, 6, 6, 2},
                                 {1, 288, 256, 8, 7, 1}, {2, 256, 258, 10, 10, 1}};
    for (Isa isa : {Isa::Avx2, Isa::Avx512, Isa::Neon}) {
      if (!isa_supported(isa) || !prepack_kernels(isa)) continue;
      set_active_isa(isa);
      for (const auto& sh : shapes) {
        const Conv2dSpec s = spec3x3(sh[1], sh[2], sh[5]);
        const Tensor x = randn({sh[0], sh[1], sh[3], sh[4]}, rng);
        const Tensor wt = randn({sh[2], sh[1], 3, 3}, rng, 0.3), b = randn({sh[2]}, rng);
        const WinogradFilter f = winograd_filter(wt, WinogradFilters::Streamed);
        Tensor ref = conv2d_forward_naive(x, wt, &b, s);
        for (int64_t i = 0; i < ref.numel(); ++i) ref[i] = std::max(ref[i], 0.0f);
        set_winograd_small_maps(true);
        const Tensor two = conv2d_forward_winograd(x, f, &b, s, true);
        set_winograd_small_maps(false);
        const Tensor four = conv2d_forward_winograd(x, f, &b, s, true);
        REQUIRE(two.shape() == ref.shape());
        CHECK_MESSAGE(scaled_error(two, ref, x, wt) <= kScaledTol, isa_name(isa) << " " << sh[3]);
        CHECK(scaled_error(four, ref, x, wt) <= kScaledTol);
        CHECK_FALSE(same_bits(two, four));  // the switch picks another algorithm

        // The data gradient of the same convolution: the gradient map is the input's.
        const WinogradFilter ft = winograd_filter_transposed(wt, WinogradFilters::Streamed);
        const Tensor gy = randn(ref.shape(), rng), start = randn(x.shape(), rng);
        Tensor want = start.clone(), got = start.clone();
        conv2d_backward_data(gy, wt, s, want);
        set_winograd_small_maps(true);
        conv2d_backward_data_winograd(gy, ft, s, got);
        CHECK_MESSAGE(scaled_grad_error(got, want, gy, wt) <= kScaledTol, isa_name(isa));
      }
    }
    set_winograd_small_maps(saved_small);
    set_active_isa(saved);
  }

  TEST_CASE("F(2x2, 3x3): the transforms give the same bits and move every value on every ISA") {
    std::mt19937_64 rng(29);
    std::vector<float> in(16 * kWinogradLanes), m(16 * kWinogradLanes);
    std::normal_distribution<float> dist(0.0f, 3.0f);
    for (float& v : in) v = dist(rng);
    for (float& v : m) v = dist(rng);
    const WinogradKernels& ref = winograd_kernels(Isa::Scalar);
    std::vector<float> v_ref(16 * kWinogradLanes), o_ref(4 * kWinogradLanes);
    ref.input16_2(in.data(), v_ref.data(), kWinogradLanes);
    ref.output16_2(m.data(), kWinogradLanes, 0.25f, true, o_ref.data());
    // One patch by hand: B^T d B at position (1, 2) is (d1 + d2) down, (d2 - d1) across.
    auto d = [&](int r, int c) { return in[(r * 4 + c) * kWinogradLanes]; };
    auto col = [&](int r) { return d(r, 2) - d(r, 1); };
    CHECK(v_ref[(1 * 4 + 2) * kWinogradLanes] == doctest::Approx(col(1) + col(2)).epsilon(1e-5));
    // rows[r][i] = 100 r + i: the gather and interleave placements.
    std::vector<float> rows_data(4 * 34), out(4 * kWinogradLanes);
    for (int r = 0; r < 4; ++r)
      for (int i = 0; i < 34; ++i) rows_data[r * 34 + i] = static_cast<float>(100 * r + i);
    for (size_t i = 0; i < out.size(); ++i) out[i] = static_cast<float>(i) + 0.5f;
    const float* rows[4];
    for (int r = 0; r < 4; ++r) rows[r] = rows_data.data() + r * 34;
    for (Isa isa : {Isa::Scalar, Isa::Avx2, Isa::Avx512, Isa::Neon}) {
      if (!isa_supported(isa)) continue;
      const WinogradKernels& k = winograd_kernels(isa);
      std::vector<float> v(16 * kWinogradLanes), o(4 * kWinogradLanes);
      k.input16_2(in.data(), v.data(), kWinogradLanes);
      k.output16_2(m.data(), kWinogradLanes, 0.25f, true, o.data());
      CHECK_MESSAGE(std::memcmp(v.data(), v_ref.data(), v.size() * 4) == 0, isa_name(isa));
      CHECK_MESSAGE(std::memcmp(o.data(), o_ref.data(), o.size() * 4) == 0, isa_name(isa));
      std::vector<float> patch(16 * kWinogradLanes, -1.0f), lines(2 * 32, -1.0f);
      k.gather16_2(rows, patch.data());
      k.interleave16_2(out.data(), lines.data());
      int wrong = 0;
      for (int r = 0; r < 4; ++r)
        for (int c = 0; c < 4; ++c)
          for (int l = 0; l < kWinogradLanes; ++l)
            wrong += patch[(r * 4 + c) * kWinogradLanes + l] != rows[r][2 * l + c];
      for (int i = 0; i < 2; ++i)
        for (int j = 0; j < 2; ++j)
          for (int l = 0; l < kWinogradLanes; ++l)
            wrong += lines[i * 32 + 2 * l + j] != out[(i * 2 + j) * kWinogradLanes + l];
      CHECK_MESSAGE(wrong == 0, isa_name(isa));
    }
  }

  TEST_CASE("every ISA's whole convolution is within the bound") {
    std::mt19937_64 rng(11);
    const Conv2dSpec s = spec3x3(32, 16, 1);
    const Tensor x = randn({1, 32, 12, 12}, rng), wt = randn({16, 32, 3, 3}, rng, 0.2);
    const Tensor ref = conv2d_forward_naive(x, wt, nullptr, s);
    const Isa saved = active_isa();
    for (Isa isa : {Isa::Scalar, Isa::Avx2, Isa::Avx512, Isa::Neon}) {
      if (!isa_supported(isa)) continue;
      set_active_isa(isa);
      const WinogradFilter f = winograd_filter(wt);  // packed for this ISA's kernels
      CHECK_MESSAGE(scaled_error(conv2d_forward_winograd(x, f, nullptr, s), ref, x, wt) <= kScaledTol,
                    isa_name(isa));
    }
    set_active_isa(saved);
  }

  TEST_CASE("filters packed for one ISA are refused under another") {
    const Isa saved = active_isa();
    if (isa_supported(Isa::Avx2) && isa_supported(Isa::Avx512)) {
      std::mt19937_64 rng(12);
      const Conv2dSpec s = spec3x3(8, 8, 1);
      const Tensor x = randn({1, 8, 8, 8}, rng), wt = randn({8, 8, 3, 3}, rng, 0.2);
      set_active_isa(Isa::Avx512);
      const WinogradFilter f = winograd_filter(wt);
      set_active_isa(Isa::Avx2);
      CHECK_THROWS_WITH_AS(conv2d_forward_winograd(x, f, nullptr, s),
                           doctest::Contains("packed for avx512"), Error);
    }
    set_active_isa(saved);
  }

  TEST_CASE("modes, applicability and bad arguments") {
    CHECK(winograd_applies(spec3x3(8, 8, 1)));
    Conv2dSpec strided = spec3x3(8, 8, 1);
    strided.stride_h = strided.stride_w = 2;
    CHECK_FALSE(winograd_applies(strided));
    Conv2dSpec grouped = spec3x3(8, 8, 1);
    grouped.groups = 2;
    CHECK_FALSE(winograd_applies(grouped));
    Conv2dSpec five = spec3x3(8, 8, 2);
    five.kh = five.kw = 5;
    CHECK_FALSE(winograd_applies(five));
    CHECK_THROWS_AS(conv2d_forward_winograd(Tensor::zeros({1, 8, 8, 8}),
                                            winograd_filter(Tensor::zeros({8, 8, 3, 3})),
                                            nullptr, strided),
                    Error);
    CHECK_THROWS_AS(conv2d_forward_winograd(Tensor::zeros({1, 4, 8, 8}),
                                            winograd_filter(Tensor::zeros({8, 8, 3, 3})),
                                            nullptr, spec3x3(8, 8, 1)),
                    Error);
    CHECK_THROWS_AS(winograd_filter(Tensor::zeros({8, 8, 5, 5})), Error);
    CHECK(parse_winograd_mode("off", "x") == WinogradMode::Off);
    CHECK(parse_winograd_mode("1", "x") == WinogradMode::On);
    CHECK(parse_winograd_mode("auto", "x") == WinogradMode::Auto);
    CHECK_THROWS_WITH_AS(parse_winograd_mode("fast", "--winograd"),
                         doctest::Contains("--winograd"), Error);

    const WinogradMode saved = winograd_mode();
    set_winograd_mode(WinogradMode::Auto);
    CHECK(winograd_pays({1, 64, 56, 56}, spec3x3(64, 64, 1)));
    CHECK_FALSE(winograd_pays({1, 3, 224, 224}, spec3x3(3, 64, 1)));  // too few channels
    // 7x7 has four 4x4 tiles, too few; sixteen 2x2 ones where F(2x2, 3x3) may run.
    const bool saved_small = winograd_small_maps();
    set_winograd_small_maps(false);
    CHECK_FALSE(winograd_pays({1, 512, 7, 7}, spec3x3(512, 512, 1)));
    set_winograd_small_maps(true);
    CHECK(winograd_pays({1, 512, 7, 7}, spec3x3(512, 512, 1)) ==
          (prepack_kernels(active_isa()) != nullptr &&
           winograd_filters_mode() != WinogradFilters::Stored));
    CHECK_FALSE(winograd_pays({1, 512, 5, 5}, spec3x3(512, 512, 1)));  // nine 2x2 tiles
    CHECK_FALSE(winograd_pays({1, 64, 8, 8}, spec3x3(64, 64, 1)));     // too narrow for it
    CHECK_FALSE(winograd_pays({1, 128, 8, 8}, spec3x3(128, 128, 1)));  // direct is faster
    CHECK(winograd_pays({1, 256, 8, 8}, spec3x3(256, 256, 1)) ==
          winograd_pays({1, 512, 7, 7}, spec3x3(512, 512, 1)));
    set_winograd_small_maps(saved_small);
    set_winograd_mode(WinogradMode::Off);
    CHECK_FALSE(winograd_pays({1, 64, 56, 56}, spec3x3(64, 64, 1)));
    set_winograd_mode(WinogradMode::On);
    CHECK(winograd_pays({1, 512, 7, 7}, spec3x3(512, 512, 1)));
    CHECK_FALSE(winograd_pays({1, 8, 8, 8}, strided));
    set_winograd_mode(saved);
  }

  TEST_CASE("streamed filters give their weights back bit for bit and hold no more than them") {
    std::mt19937_64 rng(31);
    const Isa saved = active_isa();
    // Channel counts off the panel heights, one and two k blocks (the kernels' KC is 256).
    const int64_t shapes[][2] = {{13, 7}, {5, 1}, {30, 300}, {64, 64}, {256, 256}};
    for (Isa isa : {Isa::Scalar, Isa::Avx2, Isa::Avx512, Isa::Neon}) {
      if (!isa_supported(isa)) continue;
      set_active_isa(isa);
      for (const auto& sh : shapes) {
        const Tensor w = randn({sh[0], sh[1], 3, 3}, rng);
        const WinogradFilter f = winograd_filter(w, WinogradFilters::Streamed);
        const WinogradFilter ft = winograd_filter_transposed(w, WinogradFilters::Streamed);
        const WinogradFilter stored = winograd_filter(w, WinogradFilters::Stored);
        CHECK_FALSE(stored.streamed());
        CHECK_THROWS_AS(winograd_filter_weights(stored), Error);
        if (!prepack_kernels(isa)) {  // no panels to stream into: stored whatever is asked
          CHECK_FALSE(f.streamed());
          continue;
        }
        REQUIRE(f.streamed());
        REQUIRE(ft.streamed());
        CHECK(same_bits(winograd_filter_weights(f), w));
        CHECK(same_bits(winograd_filter_weights(ft), w));
        const double weight_bytes = 4.0 * static_cast<double>(w.numel());
        if (sh[0] >= 64) {
          CHECK_MESSAGE(f.bytes() <= 1.15 * weight_bytes, isa_name(isa) << " " << sh[0]);
          CHECK(stored.bytes() >= 3.9 * weight_bytes);
        }
      }
    }
    set_active_isa(saved);
  }

  TEST_CASE("streamed filters: forward and data gradient within the bound on every ISA") {
    std::mt19937_64 rng(37);
    const Isa saved = active_isa();
    struct Case {
      int64_t n, cin, cout, h, w, pad;
    };
    // Partial panels and tiles, two k blocks (cin or cout 300), batches.
    const Case cases[] = {{1, 7, 13, 9, 11, 1},  {2, 16, 30, 14, 6, 0}, {1, 300, 20, 6, 7, 1},
                          {1, 24, 300, 8, 8, 2}, {3, 33, 17, 5, 13, 1}, {1, 64, 64, 18, 18, 1}};
    for (Isa isa : {Isa::Avx2, Isa::Avx512, Isa::Neon}) {
      if (!isa_supported(isa) || !prepack_kernels(isa)) continue;
      set_active_isa(isa);
      for (const Case& c : cases) {
        const Conv2dSpec s = spec3x3(c.cin, c.cout, c.pad);
        const Tensor x = randn({c.n, c.cin, c.h, c.w}, rng), wt = randn({c.cout, c.cin, 3, 3}, rng, 0.2);
        const Tensor b = randn({c.cout}, rng);
        const WinogradFilter f = winograd_filter(wt, WinogradFilters::Streamed);
        REQUIRE(f.streamed());
        const Tensor ref = conv2d_forward_naive(x, wt, &b, s);
        const Tensor ours = conv2d_forward_winograd(x, f, &b, s);
        CHECK_MESSAGE(scaled_error(ours, ref, x, wt) <= kScaledTol,
                      isa_name(isa) << " cin " << c.cin << " cout " << c.cout);
        // The thread count never changes a bit.
        const int threads = num_threads();
        set_num_threads(1);
        const Tensor one = conv2d_forward_winograd(x, f, &b, s);
        set_num_threads(threads);
        CHECK(same_bits(one, ours));

        if (c.pad > 2) continue;
        const Tensor gy = randn(ref.shape(), rng);
        Tensor gref = Tensor::zeros(x.shape()), gours = Tensor::zeros(x.shape());
        conv2d_backward_data(gy, wt, s, gref);
        conv2d_backward_data_winograd(gy, winograd_filter_transposed(wt, WinogradFilters::Streamed),
                                      s, gours);
        const double worst = scaled_grad_error(gours, gref, gy, wt);
        CHECK_MESSAGE(worst <= kScaledTol, isa_name(isa) << " data gradient, cin " << c.cin
                                                         << " cout " << c.cout << ": " << worst);
      }
    }
    set_active_isa(saved);
  }

  TEST_CASE("the filter transform kernel: its definition, and the same bits on every ISA") {
    std::mt19937_64 rng(41);
    std::normal_distribution<float> dist(0.0f, 1.0f);
    for (int64_t len : {int64_t{48}, int64_t{37}, int64_t{5}}) {
      const int64_t tap_stride = len + 3;
      std::vector<float> taps(static_cast<size_t>(9 * tap_stride));
      for (float& v : taps) v = dist(rng);
      // (G g G^T) in double, G of F(4x4, 3x3).
      const double G[6][3] = {{1.0 / 4, 0, 0},          {-1.0 / 6, -1.0 / 6, -1.0 / 6},
                              {-1.0 / 6, 1.0 / 6, -1.0 / 6}, {1.0 / 24, 1.0 / 12, 1.0 / 6},
                              {1.0 / 24, -1.0 / 12, 1.0 / 6}, {0, 0, 1}};
      std::vector<float> ref_bits(static_cast<size_t>(36 * len));
      for (int row = 0; row < 6; ++row) {
        std::vector<float> out(static_cast<size_t>(6 * len + 1), -7.0f);  // one guard value
        float* outs[6];
        for (int j = 0; j < 6; ++j) outs[j] = out.data() + j * len;
        winograd_kernels(Isa::Scalar).filter_row(taps.data(), tap_stride, len, row, outs);
        CHECK(out[static_cast<size_t>(6 * len)] == -7.0f);
        for (int64_t e = 0; e < len; ++e)
          for (int j = 0; j < 6; ++j) {
            double u = 0.0;
            for (int a = 0; a < 3; ++a)
              for (int c = 0; c < 3; ++c) u += G[row][a] * taps[(a * 3 + c) * tap_stride + e] * G[j][c];
            CHECK(std::fabs(outs[j][e] - u) <= 1e-6 * (1.0 + std::fabs(u)));
            ref_bits[static_cast<size_t>((row * 6 + j) * len + e)] = outs[j][e];
          }
        for (Isa isa : {Isa::Avx2, Isa::Avx512, Isa::Neon}) {
          if (!isa_supported(isa)) continue;
          std::vector<float> o2(static_cast<size_t>(6 * len));
          float* outs2[6];
          for (int j = 0; j < 6; ++j) outs2[j] = o2.data() + j * len;
          winograd_kernels(isa).filter_row(taps.data(), tap_stride, len, row, outs2);
          CHECK_MESSAGE(std::memcmp(o2.data(), ref_bits.data() + row * 6 * len, o2.size() * 4) == 0,
                        isa_name(isa) << " row " << row << " len " << len);
        }
      }
    }
  }

  TEST_CASE("the filter form: parsing and the mode") {
    CHECK(parse_winograd_filters("stored", "x") == WinogradFilters::Stored);
    CHECK(parse_winograd_filters("streamed", "x") == WinogradFilters::Streamed);
    CHECK_THROWS_WITH_AS(parse_winograd_filters("packed", "--winograd-filters"),
                         doctest::Contains("--winograd-filters"), Error);
    const WinogradFilters saved = winograd_filters_mode();
    set_winograd_filters_mode(WinogradFilters::Streamed);
    const bool can = prepack_kernels(active_isa()) != nullptr;
    CHECK(winograd_filter(Tensor::zeros({8, 8, 3, 3})).streamed() == can);
    set_winograd_filters_mode(WinogradFilters::Stored);
    CHECK_FALSE(winograd_filter(Tensor::zeros({8, 8, 3, 3})).streamed());
    // Auto: stored up to 64 x 64 channel pairs on up to 64 tiles (a 32x32 map), streamed
    // otherwise (where the ISA can).
    CHECK(parse_winograd_filters("auto", "x") == WinogradFilters::Auto);
    set_winograd_filters_mode(WinogradFilters::Auto);
    CHECK(winograd_tiles4(16, 16) == 16);
    CHECK(winograd_tiles4(32, 32) == 64);
    CHECK(winograd_tiles4(56, 56) == 196);
    CHECK(winograd_tiles4(5, 9) == 6);
    CHECK(winograd_filters_for(64, 64, 16) == WinogradFilters::Stored);
    CHECK(winograd_filters_for(64, 64, 64) == WinogradFilters::Stored);
    CHECK(winograd_filters_for(64, 64, 65) == WinogradFilters::Streamed);
    CHECK(winograd_filters_for(64, 65, 16) == WinogradFilters::Streamed);
    CHECK(winograd_filters_for(128, 32, 4) == WinogradFilters::Stored);
    CHECK(winograd_filters_for(64, 65, 16, WinogradFilters::Stored) == WinogradFilters::Stored);
    CHECK(winograd_filters_for(8, 8, 1, WinogradFilters::Streamed) == WinogradFilters::Streamed);
    CHECK_FALSE(winograd_filter(Tensor::zeros({64, 64, 3, 3})).streamed());
    CHECK(winograd_filter(Tensor::zeros({64, 65, 3, 3})).streamed() == can);
    CHECK_FALSE(winograd_filter_transposed(Tensor::zeros({64, 64, 3, 3})).streamed());
    CHECK(winograd_filter_transposed(Tensor::zeros({65, 64, 3, 3})).streamed() == can);
    set_winograd_filters_mode(saved);
  }
}
