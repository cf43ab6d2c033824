// Prepacked-operand GEMM: bit for bit equal to gemm_single() on the same ISA followed by
// the epilogue, for both layouts (lanes along N and along M), every thread count, tails,
// multi-block shapes and transposed operands.
#include <doctest/doctest.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <mutex>
#include <numeric>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "engine/cpu.h"
#include "engine/gemm.h"
#include "engine/gemm_prepacked.h"
#include "engine/parallel.h"
#include "engine/tensor.h"

using namespace isplit;

namespace {

// Restores the thread count and ISA when a test case ends.
struct Restore {
  int threads = num_threads();
  Isa isa = active_isa();
  ~Restore() {
    set_num_threads(threads);
    set_active_isa(isa);
  }
};

// One problem: op(A) [m x k] (A stored transposed when ta), op(B) [k x n], C [m x n].
struct Case {
  bool ta, tb;
  int64_t m, n, k;
  float beta;
  bool bias, relu;
  int64_t pad;  // added to every leading dimension
  bool residual = false;  // the epilogue adds a matrix laid out like C
  bool specials = false;  // NaN and infinities in the bias and the residual
};

std::vector<float> random_vector(std::mt19937& rng, size_t n) {
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

std::string describe(Isa isa, const Case& c, int threads) {
  return isa_name(isa) + " m=" + std::to_string(c.m) + " n=" + std::to_string(c.n) +
         " k=" + std::to_string(c.k) + " ta=" + std::to_string(c.ta) +
         " tb=" + std::to_string(c.tb) + " beta=" + std::to_string(c.beta) +
         " bias=" + std::to_string(c.bias) + " relu=" + std::to_string(c.relu) +
         " pad=" + std::to_string(c.pad) + " residual=" + std::to_string(c.residual) +
         " threads=" + std::to_string(threads);
}

// Runs one case on one ISA at several thread counts; returns the failures.
int check_case(std::mt19937& rng, Isa isa, const Case& cs) {
  set_active_isa(isa);
  const int64_t lda = (cs.ta ? cs.m : cs.k) + cs.pad, ldb = (cs.tb ? cs.k : cs.n) + cs.pad;
  const int64_t ldc = cs.n + cs.pad;
  const std::vector<float> a = random_vector(rng, static_cast<size_t>((cs.ta ? cs.k : cs.m) * lda));
  const std::vector<float> b = random_vector(rng, static_cast<size_t>((cs.tb ? cs.n : cs.k) * ldb));
  const std::vector<float> c0 = random_vector(rng, static_cast<size_t>(cs.m * ldc));
  std::vector<float> bias = random_vector(rng, static_cast<size_t>(cs.m));
  std::vector<float> res = random_vector(rng, static_cast<size_t>(cs.m * ldc));
  if (cs.specials) {
    // The ReLU must map NaN to +0 (v > 0 ? v : 0), and infinities must pass through.
    const float inf = std::numeric_limits<float>::infinity();
    const float special[] = {std::numeric_limits<float>::quiet_NaN(), -inf, inf};
    for (int64_t i = 0; i < std::min<int64_t>(3, cs.m); ++i) bias[static_cast<size_t>(i)] = special[i];
    for (int64_t i = 0; i < cs.m; i += 5) res[static_cast<size_t>(i * ldc + (i % cs.n))] = special[i % 3];
  }
  // Expected: the single-threaded kernel, then bias, residual and ReLU element by element.
  std::vector<float> expect = c0;
  gemm_single(isa, GemmArgs{cs.ta, cs.tb, cs.m, cs.n, cs.k, a.data(), lda, b.data(), ldb, cs.beta,
                            expect.data(), ldc});
  for (int64_t i = 0; i < cs.m; ++i)
    for (int64_t j = 0; j < cs.n; ++j) {
      float& v = expect[i * ldc + j];
      if (cs.bias) v = v + bias[i];
      if (cs.residual) v = v + res[i * ldc + j];
      if (cs.relu) v = v > 0.0f ? v : 0.0f;
    }
  GemmEpilogue e;
  e.row_bias = cs.bias ? bias.data() : nullptr;
  e.relu = cs.relu;
  e.residual = cs.residual ? res.data() : nullptr;
  const PackedMatrix packed(cs.ta, cs.m, cs.k, a.data(), lda);
  int failures = 0;
  for (int threads : {1, 2, 3}) {
    set_num_threads(threads);
    std::vector<float> got = c0;
    gemm_prepacked(packed, cs.tb, cs.n, b.data(), ldb, cs.beta, got.data(), ldc, e);
    if (std::memcmp(got.data(), expect.data(), got.size() * sizeof(float)) != 0) {
      ++failures;
      FAIL_CHECK("prepacked GEMM differs from gemm_single: " << describe(isa, cs, threads));
    }
  }
  return failures;
}

std::vector<Isa> supported_isas() {
  std::vector<Isa> out;
  for (Isa isa : {Isa::Scalar, Isa::Avx2, Isa::Avx512, Isa::Neon})
    if (isa_supported(isa)) out.push_back(isa);
  return out;
}

}  // namespace

TEST_SUITE("gemm_prepacked") {
  TEST_CASE("equals gemm_single plus the epilogue on convolution-like shapes") {
    Restore restore;
    std::mt19937 rng(77);
    const Case cases[] = {
        // 1x1 convolutions at batch 1: wide (lanes along N) and narrow (lanes along M).
        {false, false, 64, 3136, 256, 0.0f, true, true, 0},
        {false, false, 512, 196, 256, 0.0f, true, false, 0},
        {false, false, 2048, 4, 512, 0.0f, true, true, 0},
        {false, false, 1024, 16, 256, 0.0f, false, true, 0},
        {false, false, 256, 49, 2304, 0.0f, true, true, 0},
        // Data-gradient shapes (A transposed), accumulating into C.
        {true, false, 576, 3136, 64, 0.0f, false, false, 0},
        {true, false, 4608, 4, 512, 1.0f, false, false, 0},
        {true, false, 300, 70, 257, 1.0f, false, false, 3},
        // Tails everywhere, odd strides, B transposed, beta scaling.
        {false, true, 37, 129, 300, 0.5f, true, true, 5},
        {false, false, 13, 1, 7, 0.0f, true, false, 1},
        {true, true, 250, 33, 520, 0.0f, true, true, 2},
        {false, false, 481, 1100, 33, 0.0f, true, true, 0},
        // B row stride a multiple of 4 KiB (packed rather than read in place).
        {false, false, 100, 1024, 40, 0.0f, true, false, 0},
        // Empty sum: C = beta * C, then the epilogue.
        {false, false, 20, 30, 0, 0.5f, true, true, 1},
        // A residual added in the epilogue (ResNet's last 1x1 of a block), both layouts.
        {false, false, 256, 3136, 64, 0.0f, true, true, 0, true},
        {false, false, 2048, 4, 512, 0.0f, true, true, 0, true},
        {false, false, 1024, 196, 256, 0.0f, false, false, 3, true},
        {false, false, 37, 129, 300, 0.5f, true, true, 5, true},
        {false, false, 20, 30, 0, 0.5f, false, true, 1, true},
        // NaN and infinities through bias, residual and ReLU, both layouts, with and
        // without the ReLU (the bits must still match, NaNs included).
        {false, false, 64, 200, 40, 0.0f, true, true, 0, true, true},
        {false, false, 48, 5, 40, 0.0f, true, true, 0, true, true},
        {false, false, 37, 61, 300, 1.0f, true, false, 2, true, true},
        {false, false, 40, 3, 300, 0.0f, true, false, 0, true, true},
        // Deep and narrow: lanes along M over five k blocks (N = 5 idles most lanes), and
        // ResNet-50's layer4 3x3 at 64x64 (18 k blocks, 4 columns).
        {false, false, 100, 5, 1100, 1.0f, true, true, 0, true},
        {false, false, 512, 4, 4608, 0.0f, true, true, 0},
        // Lanes along M with three panels or more, where each panel prefetches the next
        // tile's weights: the next tile in the group, in the next k block, and (M past 512
        // rows, several tile groups) in the next group; a ragged last tile.
        {false, false, 1100, 40, 600, 0.0f, true, true, 0, true},
    };
    int failures = 0;
    for (Isa isa : supported_isas())
      for (const Case& cs : cases) failures += check_case(rng, isa, cs);
    CHECK(failures == 0);
  }

  TEST_CASE("every partial tile width is stored without touching its neighbours") {
    // The kernels read and write partial C vectors with narrow moves (1, 2, 3, ... lanes).
    // C's rows are padded, and the padding must come back untouched (check_case compares
    // the whole buffer), with one k block (overwrite) and several (accumulate), with and
    // without the epilogue's residual loads.
    Restore restore;
    std::mt19937 rng(4242);
    int failures = 0;
    for (Isa isa : supported_isas())
      for (int64_t k : {40, 600})
        for (bool residual : {false, true}) {
          // Lanes along M: N = 1..7 columns of C are a transposed tile's few rows.
          for (int64_t n = 1; n <= 7; ++n)
            failures += check_case(rng, isa, Case{false, false, 37, n, k, 0.0f, true, true, 1, residual});
          // Lanes along N: every tail of a 16-wide tile (1..15 columns past full tiles).
          for (int64_t n = 17; n <= 31; ++n)
            failures += check_case(rng, isa, Case{false, false, 13, n, k, 1.0f, true, false, 1, residual});
        }
    CHECK(failures == 0);
  }

  TEST_CASE("orientation rule: lanes along M for narrow N, not for deep GEMMs that waste few lanes") {
    // ResNet-50's layer4 at 224x224 (N = 49) with AVX2's 8 lanes: a 3x3 (K = 4608, 18 k
    // blocks) keeps lanes along N where deep transposed tiles cost more; a 1x1 (K = 512,
    // 2 blocks) goes along M; N = 4 (64x64 input) goes along M at any depth.
    CHECK_FALSE(packed_lanes_along_m(512, 49, 4608, 8, 16, 256, 2));
    CHECK(packed_lanes_along_m(512, 49, 4608, 8, 16, 256, 0));  // no depth limit
    CHECK(packed_lanes_along_m(512, 49, 512, 8, 16, 256, 2));
    CHECK(packed_lanes_along_m(512, 4, 4608, 8, 16, 256, 2));
    CHECK_FALSE(packed_lanes_along_m(512, 64, 512, 8, 16, 256, 0));  // N wastes no lane
    CHECK_FALSE(packed_lanes_along_m(50, 49, 512, 8, 16, 256, 0));   // M wastes as many
  }

  TEST_CASE("random shapes, both layouts, every ISA") {
    Restore restore;
    std::mt19937 rng(2024);
    std::uniform_int_distribution<int> coin(0, 1);
    std::uniform_int_distribution<int64_t> small(1, 150), depth(0, 600), wide(1, 700);
    int failures = 0;
    for (Isa isa : supported_isas())
      for (int trial = 0; trial < 40; ++trial) {
        Case cs{coin(rng) == 1, coin(rng) == 1, small(rng) * (coin(rng) ? 1 : 3),
                coin(rng) ? small(rng) : wide(rng), depth(rng), coin(rng) ? 0.0f : 1.0f,
                coin(rng) == 1, coin(rng) == 1, coin(rng) ? 0 : 7, coin(rng) == 1};
        failures += check_case(rng, isa, cs);
      }
    CHECK(failures == 0);
  }

  TEST_CASE("B in the packed-B layout gives the bits of B in place") {
    Restore restore;
    set_num_threads(1);
    std::mt19937 rng(77);
    std::uniform_int_distribution<int64_t> rows(1, 140), cols(1, 300), depth(1, 700);
    int checked = 0;
    for (Isa isa : supported_isas()) {
      set_active_isa(isa);
      if (!prepack_kernels(isa)) {
        CHECK_THROWS_AS(packed_b_layout(10, 10), Error);
        continue;
      }
      for (int trial = 0; trial < 25; ++trial) {
        // Depths past 256 give several k blocks; odd widths give ragged last tiles.
        const int64_t m = rows(rng), n = cols(rng), k = trial == 0 ? 513 : depth(rng);
        const std::vector<float> a = random_vector(rng, static_cast<size_t>(m * k));
        const std::vector<float> b = random_vector(rng, static_cast<size_t>(k * n));
        const auto packed = PackedMatrix::pack_owned(false, m, k, a.data(), k);
        const PackedBLayout lay = packed_b_layout(k, n);
        REQUIRE(lay.ldb % prepack_kernels(isa)->nr == 0);
        REQUIRE(lay.ldb >= n);
        // Columns past n hold NaN: they must never reach C.
        std::vector<float> bp(static_cast<size_t>(lay.floats()),
                              std::numeric_limits<float>::quiet_NaN());
        std::vector<char> seen(bp.size(), 0);
        int64_t misplaced = 0;  // offsets out of range or given twice
        for (int64_t p = 0; p < k; ++p)
          for (int64_t j = 0; j < n; ++j) {
            const int64_t o = lay.offset(p, j);
            if (o < 0 || o >= lay.floats() || seen[static_cast<size_t>(o)]) {
              ++misplaced;
              continue;
            }
            seen[static_cast<size_t>(o)] = 1;
            bp[static_cast<size_t>(o)] = b[static_cast<size_t>(p * n + j)];
          }
        REQUIRE(misplaced == 0);
        std::vector<float> expect(static_cast<size_t>(m * n)), got(expect.size(), -7.0f);
        gemm_prepacked_single(*packed, false, n, b.data(), n, 0.0f, expect.data(), n);
        gemm_prepacked_single_packed_b(*packed, n, bp.data(), lay.ldb, 0.0f, got.data(), n);
        CHECK_MESSAGE(std::memcmp(got.data(), expect.data(), got.size() * sizeof(float)) == 0,
                      isa_name(isa) << " m=" << m << " n=" << n << " k=" << k);
        ++checked;
      }
      // A row that is not whole tiles, or a matrix that is not owned, is refused.
      const std::vector<float> a(64 * 64, 1.0f), b(64 * 64, 1.0f);
      std::vector<float> c(64 * 64);
      const auto owned = PackedMatrix::pack_owned(false, 64, 64, a.data(), 64);
      const PackedMatrix plain(false, 64, 64, a.data(), 64);
      const int64_t ldb = packed_b_layout(64, 64).ldb;
      CHECK_THROWS_AS(gemm_prepacked_single_packed_b(*owned, 64, b.data(), ldb + 1, 0.0f, c.data(), 64),
                      Error);
      CHECK_THROWS_AS(gemm_prepacked_single_packed_b(plain, 64, b.data(), ldb, 0.0f, c.data(), 64),
                      Error);
    }
    CHECK(checked > 0);
  }

  TEST_CASE("B given row by row at any offsets gives the bits of B in place") {
    Restore restore;
    set_num_threads(1);
    std::mt19937 rng(91);
    std::uniform_int_distribution<int64_t> rows(1, 70), cols(1, 130), depth(1, 600);
    int checked = 0;
    for (Isa isa : supported_isas()) {
      set_active_isa(isa);
      for (int trial = 0; trial < 20; ++trial) {
        // Depths past 256 give several k blocks; odd widths give ragged last tiles.
        const int64_t m = rows(rng), n = cols(rng), k = trial == 0 ? 300 : depth(rng);
        const std::vector<float> a = random_vector(rng, static_cast<size_t>(m * k));
        const std::vector<float> b = random_vector(rng, static_cast<size_t>(k * n));
        const std::vector<float> bias = random_vector(rng, static_cast<size_t>(m));
        const std::vector<float> res = random_vector(rng, static_cast<size_t>(m * n));
        // The rows of B scattered through a larger buffer in a shuffled order, NaN between
        // them: nothing outside a row may reach C.
        std::vector<int64_t> order(static_cast<size_t>(k));
        for (int64_t p = 0; p < k; ++p) order[static_cast<size_t>(p)] = p;
        std::shuffle(order.begin(), order.end(), rng);
        const int64_t gap = 3 + trial % 5;
        std::vector<float> store(static_cast<size_t>(k * (n + gap) + gap),
                                 std::numeric_limits<float>::quiet_NaN());
        std::vector<int64_t> at(static_cast<size_t>(k));
        for (int64_t slot = 0; slot < k; ++slot) {
          const int64_t p = order[static_cast<size_t>(slot)];
          at[static_cast<size_t>(p)] = gap + slot * (n + gap);
          std::copy(b.begin() + p * n, b.begin() + (p + 1) * n, store.begin() + at[static_cast<size_t>(p)]);
        }
        const PackedMatrix packed(false, m, k, a.data(), k);
        GemmEpilogue ep;
        ep.row_bias = trial % 2 ? bias.data() : nullptr;
        ep.relu = trial % 3 == 0;
        ep.residual = trial % 4 == 1 ? res.data() : nullptr;
        std::vector<float> expect(static_cast<size_t>(m * n)), got(expect.size(), -7.0f);
        gemm_prepacked_single(packed, false, n, b.data(), n, 0.0f, expect.data(), n, ep);
        const bool ran = gemm_prepacked_single_rows(packed, n, store.data(), at.data(), got.data(), n, ep);
        if (!prepack_kernels(isa)) {
          CHECK_FALSE(ran);
          CHECK(got[0] == -7.0f);  // nothing written
          break;
        }
        REQUIRE(ran);
        CHECK_MESSAGE(std::memcmp(got.data(), expect.data(), got.size() * sizeof(float)) == 0,
                      isa_name(isa) << " m=" << m << " n=" << n << " k=" << k);
        ++checked;
      }
    }
    CHECK(checked > 0);
  }

  TEST_CASE("B made by every thread for itself gives the bits of a shared B") {
    // gemm_prepacked_own_b calls make_b once on each thread that computes parts of C (once
    // in all without threads or packed kernels), into storage of that thread's own; C must
    // equal gemm_prepacked's on the same B, for both layouts, 1-3 threads, several k
    // blocks, a row stride past the width, and the epilogue.
    Restore restore;
    std::mt19937 rng(505);
    struct Shape {
      int64_t m, n, k, ldb;
    };
    const Shape shapes[] = {{256, 16, 2304, 16},   // ResNet-50 layer3 3x3 at 64x64: lanes along N
                            {512, 4, 4608, 4},     // layer4 3x3 at 64x64: lanes along M
                            {300, 49, 700, 53},    // lanes along M, several panels, padded rows
                            {37, 130, 300, 130}};  // lanes along N, ragged tiles
    int checked = 0;
    for (Isa isa : supported_isas()) {
      set_active_isa(isa);
      for (const Shape& sh : shapes) {
        const std::vector<float> a = random_vector(rng, static_cast<size_t>(sh.m * sh.k));
        const std::vector<float> b = random_vector(rng, static_cast<size_t>(sh.k * sh.ldb));
        const std::vector<float> bias = random_vector(rng, static_cast<size_t>(sh.m));
        const PackedMatrix packed(false, sh.m, sh.k, a.data(), sh.k);
        GemmEpilogue ep;
        ep.row_bias = bias.data();
        ep.relu = true;
        for (int threads : {1, 2, 3}) {
          set_num_threads(threads);
          std::vector<float> expect(static_cast<size_t>(sh.m * sh.n)), got(expect.size(), -7.0f);
          gemm_prepacked(packed, false, sh.n, b.data(), sh.ldb, 0.0f, expect.data(), sh.n, ep);
          std::mutex mutex;
          std::vector<std::thread::id> makers;  // the thread of each make_b call
          gemm_prepacked_own_b(
              packed, sh.n, sh.ldb,
              [&](float* dst) {
                {
                  std::lock_guard<std::mutex> lock(mutex);
                  makers.push_back(std::this_thread::get_id());
                }
                std::copy(b.begin(), b.end(), dst);
              },
              got.data(), sh.n, ep);
          CHECK_MESSAGE(std::memcmp(got.data(), expect.data(), got.size() * sizeof(float)) == 0,
                        isa_name(isa) << " m=" << sh.m << " n=" << sh.n << " k=" << sh.k
                                      << " threads=" << threads);
          // Once on each thread that computed parts of C, however many it ran (a thread
          // also runs the parts of a worker that comes late).
          CHECK(makers.size() >= 1);
          CHECK(makers.size() <= static_cast<size_t>(threads));
          std::vector<std::thread::id> distinct = makers;
          std::sort(distinct.begin(), distinct.end());
          CHECK(std::unique(distinct.begin(), distinct.end()) == distinct.end());
          ++checked;
        }
      }
    }
    CHECK(checked > 0);
    const std::vector<float> a(64, 1.0f);
    const PackedMatrix packed(false, 8, 8, a.data(), 8);
    std::vector<float> c(64);
    CHECK_THROWS_AS(gemm_prepacked_own_b(packed, 8, 7, [](float*) {}, c.data(), 8), Error);
  }

  TEST_CASE("a matrix packed under one ISA still computes after the ISA changes") {
    Restore restore;
    const std::vector<Isa> isas = supported_isas();
    if (isas.size() < 2) return;
    std::mt19937 rng(5);
    const int64_t m = 70, n = 90, k = 300;
    const std::vector<float> a = random_vector(rng, m * k), b = random_vector(rng, k * n);
    set_active_isa(isas.back());
    const PackedMatrix packed(false, m, k, a.data(), k);
    for (Isa isa : isas) {
      set_active_isa(isa);
      std::vector<float> expect(m * n), got(m * n);
      gemm(false, false, m, n, k, a.data(), k, b.data(), n, 0.0f, expect.data(), n);
      gemm_prepacked(packed, false, n, b.data(), n, 0.0f, got.data(), n);
      CHECK_MESSAGE(std::memcmp(got.data(), expect.data(), got.size() * sizeof(float)) == 0,
                    isa_name(isa));
    }
  }

  TEST_CASE("layouts are made on first use and their size is reported") {
    Restore restore;
    std::mt19937 rng(6);
    const std::vector<float> a = random_vector(rng, 64 * 32);
    const PackedMatrix packed(false, 64, 32, a.data(), 32);
    CHECK(packed.packed_bytes() == 0);
    std::vector<float> b = random_vector(rng, 32 * 500), c(64 * 500);
    gemm_prepacked(packed, false, 500, b.data(), 500, 0.0f, c.data(), 500);
    if (prepack_kernels(active_isa())) CHECK(packed.packed_bytes() >= 64 * 32 * 4);
    CHECK_THROWS_AS(PackedMatrix(false, -1, 3, a.data(), 3), Error);
  }

  TEST_CASE("a released source is unpacked bit for bit and still feeds the other layout") {
    Restore restore;
    std::mt19937 rng(31);
    struct Shape3 {
      bool ta;
      int64_t m, k, pad, n_first, n_second;  // n picks the layout: wide N, then narrow N
    };
    const Shape3 shapes[] = {{false, 256, 200, 0, 700, 4},   // panels first, tiles later
                             {false, 300, 170, 5, 4, 500},   // tiles first, panels later
                             {true, 1152, 128, 0, 4, 196},   // W^T of a 3x3 convolution
                             {true, 37, 53, 3, 500, 2},
                             {false, 13, 7, 1, 1, 64}};
    for (Isa isa : supported_isas()) {
      set_active_isa(isa);
      for (const Shape3& sh : shapes) {
        const int64_t rows = sh.ta ? sh.k : sh.m, cols = (sh.ta ? sh.m : sh.k);
        const int64_t lda = cols + sh.pad;
        std::vector<float> a = random_vector(rng, static_cast<size_t>(rows * lda));
        for (int64_t r = 0; r < rows; ++r)  // the gaps between rows stay untouched
          for (int64_t q = cols; q < lda; ++q) a[r * lda + q] = -7.0f;
        const std::vector<float> original = a;
        PackedMatrix packed(sh.ta, sh.m, sh.k, a.data(), lda);
        const std::string what = isa_name(isa) + " m=" + std::to_string(sh.m) +
                                 " k=" + std::to_string(sh.k) + " ta=" + std::to_string(sh.ta);
        auto run_and_compare = [&](int64_t n) {
          const std::vector<float> b = random_vector(rng, static_cast<size_t>(sh.k * n));
          std::vector<float> expect(sh.m * n), got(sh.m * n);
          gemm_single(isa, GemmArgs{sh.ta, false, sh.m, n, sh.k, original.data(), lda, b.data(),
                                    n, 0.0f, expect.data(), n});
          gemm_prepacked(packed, false, n, b.data(), n, 0.0f, got.data(), n);
          CHECK_MESSAGE(std::memcmp(got.data(), expect.data(), got.size() * sizeof(float)) == 0,
                        what << " n=" << n);
        };
        run_and_compare(sh.n_first);
        const bool released = packed.release_source();
        CHECK(released == (prepack_kernels(isa) != nullptr));
        CHECK(packed.source_released() == released);
        if (!released) continue;
        std::fill(a.begin(), a.end(), std::numeric_limits<float>::quiet_NaN());  // gone
        run_and_compare(sh.n_second);  // may need the layout not made yet
        run_and_compare(sh.n_first);
        std::vector<float> back(a.size(), -7.0f);
        packed.unpack(back.data());
        CHECK_MESSAGE(std::memcmp(back.data(), original.data(), back.size() * sizeof(float)) == 0,
                      what);
      }
    }
  }

  TEST_CASE("release without any layout makes one; unpack needs one") {
    Restore restore;
    std::mt19937 rng(32);
    const std::vector<float> a = random_vector(rng, 40 * 30);
    const PackedMatrix fresh(false, 40, 30, a.data(), 30);
    std::vector<float> back(a.size());
    CHECK_THROWS_AS(fresh.unpack(back.data()), Error);
    for (Isa isa : supported_isas()) {
      if (!prepack_kernels(isa)) continue;
      set_active_isa(isa);
      PackedMatrix packed(false, 40, 30, a.data(), 30);
      CHECK(packed.packed_bytes() == 0);
      REQUIRE(packed.release_source());
      CHECK(packed.packed_bytes() > 0);
      packed.unpack(back.data());
      CHECK(std::memcmp(back.data(), a.data(), a.size() * sizeof(float)) == 0);
    }
  }
}
