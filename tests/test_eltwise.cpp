// Element-wise and pooling kernels of every supported ISA against the scalar references:
// tails of every length, NaN, signed zeros and infinities, every pooling geometry the
// layers accept.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "engine/cpu.h"
#include "engine/kernels/eltwise.h"

using namespace isplit;

namespace {

// Random values with the awkward ones mixed in.
std::vector<float> awkward(int64_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> dist(0.0f, 2.0f);
  std::uniform_int_distribution<int> pick(0, 15);
  std::vector<float> v(static_cast<size_t>(n));
  for (float& x : v) {
    switch (pick(rng)) {
      case 0: x = std::numeric_limits<float>::quiet_NaN(); break;
      case 1: x = -0.0f; break;
      case 2: x = 0.0f; break;
      case 3: x = -std::numeric_limits<float>::infinity(); break;
      default: x = dist(rng);
    }
  }
  return v;
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

// Equal values, NaN where the other is NaN (signed zeros compare equal).
bool same_values(const std::vector<float>& a, const std::vector<float>& b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i)
    if (!(a[i] == b[i] || (std::isnan(a[i]) && std::isnan(b[i])))) return false;
  return true;
}

// Calls fn(plane, input) for pooling planes of many geometries (kernel, stride, padding,
// sizes, ceil mode) on awkward inputs seeded from seed; returns how many.
template <class Fn>
int for_each_pool_plane(uint64_t seed, Fn fn) {
  struct Geometry {
    int64_t k, s, p;
  };
  int count = 0;
  for (Geometry gm : {Geometry{2, 2, 0}, Geometry{3, 2, 1}, Geometry{3, 2, 0}, Geometry{2, 1, 0},
                      Geometry{3, 1, 1}, Geometry{2, 2, 1}, Geometry{5, 3, 2}}) {
    for (int64_t h : {2, 3, 7, 8, 13, 32}) {
      for (int64_t w : {2, 3, 9, 16, 17, 23, 56}) {
        for (bool ceil : {false, true}) {
          if (h + 2 * gm.p < gm.k || w + 2 * gm.p < gm.k) continue;
          auto out = [&](int64_t in) {
            const int64_t span = in + 2 * gm.p - gm.k;
            int64_t o = (ceil ? (span + gm.s - 1) / gm.s : span / gm.s) + 1;
            if (ceil && (o - 1) * gm.s >= in + gm.p) --o;
            return o;
          };
          const PoolPlane pp{h, w, out(h), out(w), gm.k, gm.k, gm.s, gm.s, gm.p, gm.p};
          CAPTURE(h);
          CAPTURE(w);
          CAPTURE(gm.k);
          CAPTURE(gm.s);
          CAPTURE(gm.p);
          CAPTURE(ceil);
          fn(pp, awkward(h * w, seed + static_cast<uint64_t>(h * 31 + w)));
          ++count;
        }
      }
    }
  }
  return count;
}

std::vector<Isa> vector_isas() {
  std::vector<Isa> out;
  for (Isa isa : {Isa::Avx2, Isa::Avx512, Isa::Neon})
    if (isa_supported(isa) && &eltwise_kernels(isa) != &kEltwiseScalar) out.push_back(isa);
  return out;
}

}  // namespace

TEST_SUITE("eltwise") {
  TEST_CASE("element-wise kernels equal the scalar references bit for bit") {
    const EltwiseKernels& ref = kEltwiseScalar;
    for (Isa isa : vector_isas()) {
      CAPTURE(isa_name(isa));
      const EltwiseKernels& k = eltwise_kernels(isa);
      for (int64_t n : {0, 1, 3, 4, 5, 7, 8, 9, 16, 17, 1001}) {
        CAPTURE(n);
        const auto a = awkward(n, 1 + n), b = awkward(n, 2 + n), g = awkward(n, 3 + n);
        std::vector<float> want(a.size()), got(a.size());
        ref.relu(a.data(), want.data(), n);
        k.relu(a.data(), got.data(), n);
        CHECK(same_bits(want, got));
        ref.add(a.data(), b.data(), want.data(), n);
        k.add(a.data(), b.data(), got.data(), n);
        CHECK(same_values(want, got));  // NaN + x: payloads may differ
        want = b, got = b;
        ref.add_into(want.data(), a.data(), n);
        k.add_into(got.data(), a.data(), n);
        CHECK(same_values(want, got));
        want = g, got = g;
        ref.relu_backward(b.data(), a.data(), want.data(), n);
        k.relu_backward(b.data(), a.data(), got.data(), n);
        CHECK(same_values(want, got));
        ref.normalize(a.data(), 0.37f, 1.9f, -0.25f, want.data(), n);
        k.normalize(a.data(), 0.37f, 1.9f, -0.25f, got.data(), n);
        CHECK(same_values(want, got));
        want = g, got = g;
        ref.bn_grad_train(b.data(), a.data(), want.data(), n, 0.3, 1.7, -0.8, 0.05, -0.02);
        k.bn_grad_train(b.data(), a.data(), got.data(), n, 0.3, 1.7, -0.8, 0.05, -0.02);
        CHECK(same_values(want, got));
        want = g, got = g;
        ref.bn_grad_eval(b.data(), want.data(), n, 1.3);
        k.bn_grad_eval(b.data(), got.data(), n, 1.3);
        CHECK(same_values(want, got));
      }
      // Finite inputs: every result bit equal.
      std::vector<float> a(257), b(257), want(257), got(257);
      std::mt19937_64 rng(5);
      std::normal_distribution<float> dist;
      for (size_t i = 0; i < a.size(); ++i) a[i] = dist(rng), b[i] = dist(rng);
      ref.add(a.data(), b.data(), want.data(), 257);
      k.add(a.data(), b.data(), got.data(), 257);
      CHECK(same_bits(want, got));
      ref.normalize(a.data(), 0.1f, 3.0f, 0.5f, want.data(), 257);
      k.normalize(a.data(), 0.1f, 3.0f, 0.5f, got.data(), 257);
      CHECK(same_bits(want, got));
      want = b, got = b;
      ref.bn_grad_train(a.data(), b.data(), want.data(), 257, -0.2, 0.9, 1.1, 0.01, 0.3);
      k.bn_grad_train(a.data(), b.data(), got.data(), 257, -0.2, 0.9, 1.1, 0.01, 0.3);
      CHECK(same_bits(want, got));
      want = b, got = b;
      ref.bn_grad_eval(a.data(), want.data(), 257, 0.7);
      k.bn_grad_eval(a.data(), got.data(), 257, 0.7);
      CHECK(same_bits(want, got));
    }
  }

  TEST_CASE("max pooling planes equal the scalar reference") {
    for (Isa isa : vector_isas()) {
      CAPTURE(isa_name(isa));
      const EltwiseKernels& k = eltwise_kernels(isa);
      const int checked = for_each_pool_plane(100, [&](const PoolPlane& pp, const std::vector<float>& x) {
        std::vector<float> want(static_cast<size_t>(pp.oh * pp.ow)), got(want.size());
        kEltwiseScalar.maxpool_plane(x.data(), pp, want.data());
        k.maxpool_plane(x.data(), pp, got.data());
        CHECK(same_values(want, got));
      });
      CHECK(checked > 300);
    }
  }

  TEST_CASE("stride-2 max pooling rows with argmax equal the scalar reference bit for bit") {
    // Few distinct levels make ties common (the first maximum must win); NaNs with
    // different payloads check that the first NaN, itself, comes out.
    auto input = [](int64_t n, uint64_t seed) {
      std::vector<float> v = awkward(n, seed);
      std::mt19937_64 rng(seed ^ 0x5bd1e995u);
      for (size_t i = 0; i < v.size(); ++i) {
        if (rng() % 3 == 0) v[i] = static_cast<float>(static_cast<int>(rng() % 4) - 1);
        if (std::isnan(v[i])) {
          const uint32_t bits = 0x7fc00000u | static_cast<uint32_t>(rng() % 4096);
          std::memcpy(&v[i], &bits, sizeof bits);
        }
      }
      return v;
    };
    int checked = 0;
    for (Isa isa : vector_isas()) {
      const EltwiseKernels& k = eltwise_kernels(isa);
      for (int win : {2, 3})
        for (int64_t count : {1, 2, 7, 8, 9, 15, 16, 17, 28, 55}) {
          const int64_t w = 2 * count + win + 3;  // room on the right: only windows are read
          for (int rows_below : {0, 2}) {
            const int64_t h = win + rows_below;
            const std::vector<float> x = input(h * w, static_cast<uint64_t>(count * 7 + win));
            const int64_t first = 1;  // windows start at column 1
            std::vector<float> want(static_cast<size_t>(count)), got(want.size(), 5.0f);
            std::vector<int32_t> want_at(want.size()), got_at(want.size(), -1);
            kEltwiseScalar.maxpool_s2_argmax_row(x.data() + first, w, count, 1, want.data(),
                                                 want_at.data(), win);
            k.maxpool_s2_argmax_row(x.data() + first, w, count, 1, got.data(), got_at.data(), win);
            CAPTURE(win);
            CAPTURE(count);
            CHECK(same_bits(want, got));
            CHECK(want_at == got_at);
            ++checked;
          }
        }
    }
    // The scalar reference against the rule itself: first maximum, or first NaN.
    const float nan = std::numeric_limits<float>::quiet_NaN();
    const std::vector<float> x = {1.0f, 3.0f, 3.0f, 0.0f,  //
                                  3.0f, 2.0f, nan,  4.0f,  //
                                  nan,  3.0f, 1.0f, 1.0f};
    float y[1];
    int32_t at[1];
    kEltwiseScalar.maxpool_s2_argmax_row(x.data(), 4, 1, 100, y, at, 2);  // 1 3 / 3 2
    CHECK(y[0] == 3.0f);
    CHECK(at[0] == 101);  // the first 3
    kEltwiseScalar.maxpool_s2_argmax_row(x.data() + 1, 4, 1, 1, y, at, 3);  // 3 3 0 / 2 nan 4 / 3 1 1
    CHECK(std::isnan(y[0]));
    CHECK(at[0] == 6);
    kEltwiseScalar.maxpool_s2_argmax_row(x.data(), 4, 1, 0, y, at, 3);  // 1 3 3 / 3 2 nan / nan 3 1
    CHECK(std::isnan(y[0]));
    CHECK(at[0] == 6);  // the first NaN in row-major order, not the one at 8
    if (!vector_isas().empty()) CHECK(checked >= 40);
  }

  TEST_CASE("the scalar max pool equals the window-by-window maximum") {
    const int checked = for_each_pool_plane(500, [&](const PoolPlane& pp, const std::vector<float>& x) {
      std::vector<float> want(static_cast<size_t>(pp.oh * pp.ow)), got(want.size());
      for (int64_t oy = 0; oy < pp.oh; ++oy)
        for (int64_t ox = 0; ox < pp.ow; ++ox)
          want[static_cast<size_t>(oy * pp.ow + ox)] = maxpool_window(x.data(), pp, oy, ox);
      kEltwiseScalar.maxpool_plane(x.data(), pp, got.data());
      CHECK(same_values(want, got));
    });
    CHECK(checked > 300);
  }

  TEST_CASE("the scalar max pool: NaN wins, -inf padding never does") {
    const PoolPlane pp{2, 2, 1, 1, 3, 3, 2, 2, 1, 1};
    std::vector<float> x = {1.0f, -5.0f, std::numeric_limits<float>::quiet_NaN(), 4.0f}, y(1);
    kEltwiseScalar.maxpool_plane(x.data(), pp, y.data());
    CHECK(std::isnan(y[0]));
    x = {-7.0f, -5.0f, -6.0f, -9.0f};
    kEltwiseScalar.maxpool_plane(x.data(), pp, y.data());
    CHECK(y[0] == -5.0f);
  }
}
