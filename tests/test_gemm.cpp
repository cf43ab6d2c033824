// GEMM kernels: every supported ISA against a double-precision reference, and the
// multi-threaded dispatcher against the single-threaded kernel (bit for bit).
#include <doctest/doctest.h>

#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "engine/cpu.h"
#include "engine/gemm.h"
#include "engine/parallel.h"

using namespace isplit;

namespace {

const float kNaN = std::numeric_limits<float>::quiet_NaN();

// One GEMM problem with its own storage; padding beyond the logical matrices is NaN so
// that any read of it would poison the result.
struct Problem {
  bool ta = false, tb = false;
  int64_t m = 0, n = 0, k = 0, lda = 0, ldb = 0, ldc = 0;
  float beta = 0.0f;
  std::vector<float> a, b, c0;  // c0: C before the call
  // Rows of the stored (untransposed) A.
  int64_t a_rows() const { return ta ? k : m; }
  // Columns of the stored A.
  int64_t a_cols() const { return ta ? m : k; }
  // Rows of the stored B.
  int64_t b_rows() const { return tb ? n : k; }
  // Columns of the stored B.
  int64_t b_cols() const { return tb ? k : n; }
  // GemmArgs for this problem writing into c.
  GemmArgs args(float* c) const {
    return GemmArgs{ta, tb, m, n, k, a.data(), lda, b.data(), ldb, beta, c, ldc};
  }
};

// Fills a rows x cols matrix with leading dimension ld: values uniform in [-1, 1], padding NaN.
std::vector<float> random_matrix(std::mt19937& rng, int64_t rows, int64_t cols, int64_t ld) {
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  std::vector<float> v(static_cast<size_t>(rows * ld), kNaN);
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < cols; ++j) v[i * ld + j] = dist(rng);
  return v;
}

// Builds a random problem; pad adds to every leading dimension; nan_c fills C with NaN.
Problem make_problem(std::mt19937& rng, bool ta, bool tb, int64_t m, int64_t n, int64_t k,
                     int64_t pad, float beta, bool nan_c) {
  Problem p;
  p.ta = ta;
  p.tb = tb;
  p.m = m;
  p.n = n;
  p.k = k;
  p.beta = beta;
  p.lda = p.a_cols() + pad;
  p.ldb = p.b_cols() + pad;
  p.ldc = n + pad;
  p.a = random_matrix(rng, p.a_rows(), p.a_cols(), p.lda);
  p.b = random_matrix(rng, p.b_rows(), p.b_cols(), p.ldb);
  p.c0 = random_matrix(rng, m, n, p.ldc);
  if (nan_c)
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j) p.c0[i * p.ldc + j] = kNaN;
  // Mark C padding with a sentinel so writes outside the tile are detected.
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = n; j < p.ldc; ++j) p.c0[i * p.ldc + j] = 12345.0f;
  return p;
}

// Checks c (result of one kernel) against a double-precision reference; returns failures.
int check_against_reference(const Problem& p, const std::vector<float>& c,
                            const std::string& what) {
  int failures = 0;
  for (int64_t i = 0; i < p.m; ++i) {
    for (int64_t j = 0; j < p.ldc; ++j) {
      const float got = c[i * p.ldc + j];
      if (j >= p.n) {
        if (!(got == 12345.0f)) {
          if (++failures <= 3) FAIL_CHECK(what << " wrote C padding at " << i << "," << j);
        }
        continue;
      }
      double sum = 0.0, mag = 0.0;
      for (int64_t q = 0; q < p.k; ++q) {
        const double av = p.ta ? p.a[q * p.lda + i] : p.a[i * p.lda + q];
        const double bv = p.tb ? p.b[j * p.ldb + q] : p.b[q * p.ldb + j];
        sum += av * bv;
        mag += std::fabs(av * bv);
      }
      if (p.beta != 0.0f) {
        const double old = p.c0[i * p.ldc + j];
        sum += static_cast<double>(p.beta) * old;
        mag += std::fabs(static_cast<double>(p.beta) * old);
      }
      const double tol = 1e-5 * mag + 1e-6;
      if (!(std::fabs(got - sum) <= tol)) {
        if (++failures <= 3)
          FAIL_CHECK(what << " C[" << i << "," << j << "] = " << got << " expected " << sum);
      }
    }
  }
  return failures;
}

// Human-readable description of a problem for failure messages.
std::string describe(Isa isa, const Problem& p) {
  return isa_name(isa) + " m=" + std::to_string(p.m) + " n=" + std::to_string(p.n) +
         " k=" + std::to_string(p.k) + " ta=" + std::to_string(p.ta) +
         " tb=" + std::to_string(p.tb) + " lda=" + std::to_string(p.lda) +
         " ldb=" + std::to_string(p.ldb) + " ldc=" + std::to_string(p.ldc) +
         " beta=" + std::to_string(p.beta);
}

// Runs one problem on one ISA and compares it with the reference.
void run_and_check(Isa isa, const Problem& p) {
  std::vector<float> c = p.c0;
  gemm_single(isa, p.args(c.data()));
  check_against_reference(p, c, describe(isa, p));
}

// The ISAs this build and CPU can run (Neon on AArch64 builds, the x86 ones by cpuid).
std::vector<Isa> supported_isas() {
  std::vector<Isa> out;
  for (Isa isa : {Isa::Scalar, Isa::Avx2, Isa::Avx512, Isa::Neon})
    if (isa_supported(isa)) out.push_back(isa);
  return out;
}

const int64_t kDims[] = {1,  2,  3,  4,  5,  6,  7,  8,  11, 12, 13, 15,  16,  17,  23,  24,  25,
                         31, 32, 33, 37, 47, 48, 49, 63, 64, 65, 97, 127, 128, 129, 191, 255, 300};

}  // namespace

TEST_SUITE("gemm") {
  TEST_CASE("every ISA matches the double reference on random shapes") {
    std::mt19937 rng(1234);
    std::uniform_int_distribution<size_t> pick(0, sizeof(kDims) / sizeof(kDims[0]) - 1);
    const float betas[] = {0.0f, 1.0f, 0.5f};
    for (Isa isa : supported_isas()) {
      for (int combo = 0; combo < 4; ++combo) {
        const bool ta = combo & 1, tb = combo & 2;
        for (int trial = 0; trial < 60; ++trial) {
          const int64_t m = kDims[pick(rng)], n = kDims[pick(rng)], k = kDims[pick(rng)];
          const float beta = betas[trial % 3];
          const int64_t pad = trial % 4 == 0 ? 0 : 1 + trial % 7;
          run_and_check(isa, make_problem(rng, ta, tb, m, n, k, pad, beta, false));
        }
      }
    }
  }

  TEST_CASE("edge shapes: k = 1, vectors (GEMV paths), single elements, micro-tile tails") {
    std::mt19937 rng(99);
    const int64_t shapes[][3] = {
        {1, 1, 1},   {1, 1, 300},  {1, 300, 1},   {300, 1, 1},   {1, 257, 33}, {257, 1, 33},
        {13, 33, 1}, {12, 32, 16}, {24, 64, 17},  {11, 31, 7},   {6, 16, 8},   {7, 17, 9},
        {5, 15, 3},  {2, 500, 40}, {3, 200, 513}, {1, 529, 600}, {1, 70, 1100}};
    for (Isa isa : supported_isas())
      for (int combo = 0; combo < 4; ++combo)
        for (const auto& s : shapes)
          for (float beta : {0.0f, 1.0f, 0.5f})
            run_and_check(
                isa, make_problem(rng, combo & 1, combo & 2, s[0], s[1], s[2], 3, beta, false));
  }

  TEST_CASE("beta = 0 ignores NaN in C") {
    std::mt19937 rng(7);
    for (Isa isa : supported_isas())
      for (int combo = 0; combo < 4; ++combo)
        for (const auto& s :
             {std::array<int64_t, 3>{1, 1, 1}, std::array<int64_t, 3>{37, 49, 65},
              std::array<int64_t, 3>{13, 100, 300}, std::array<int64_t, 3>{250, 40, 20}})
          run_and_check(isa,
                        make_problem(rng, combo & 1, combo & 2, s[0], s[1], s[2], 2, 0.0f, true));
  }

  TEST_CASE("large shapes cross every cache block (k blocks, row blocks, column blocks)") {
    std::mt19937 rng(5);
    struct Case {
      int64_t m, n, k, pad;
    };
    // m > 240 and n > 3072 exercise the row/column-blocked path; k > 256 several k blocks;
    // pad = 1024 - n makes the B row stride a multiple of 4 KiB (packed instead of read in place).
    const Case cases[] = {{300, 300, 600, 5},
                          {257, 3100, 20, 1},
                          {64, 1024 - 40, 70, 40},
                          {100, 40, 1100, 0},
                          {500, 33, 300, 3}};
    for (Isa isa : supported_isas())
      for (int combo = 0; combo < 4; ++combo)
        for (const Case& cs : cases)
          run_and_check(isa, make_problem(rng, combo & 1, combo & 2, cs.m, cs.n, cs.k, cs.pad,
                                          combo == 3 ? 0.5f : 0.0f, false));
  }

  TEST_CASE("results do not depend on how C is cut into blocks (bit for bit)") {
    // Sub-blocks of C take other kernel paths (row-major B read in place or packed, one or
    // several row blocks, lanes along N or along M) yet must sum every element identically.
    std::mt19937 rng(21);
    struct Case {
      int64_t m, n, k, row_cut, col_cut;
    };
    const Case cases[] = {{300, 49, 300, 17, 16},
                          {64, 3136, 300, 5, 1000},
                          {250, 100, 40, 241, 33},
                          {13, 40, 600, 1, 7},
                          {2048, 49, 64, 1000, 48},
                          // a one-row block (the GEMV kernels) 2500 columns wide, 3 k blocks
                          {3, 5000, 600, 1, 2500}};
    for (Isa isa : supported_isas()) {
      for (int combo = 0; combo < 4; ++combo) {
        for (const Case& cs : cases) {
          const Problem p = make_problem(rng, combo & 1, combo & 2, cs.m, cs.n, cs.k, 1,
                                         combo == 2 ? 0.5f : 0.0f, false);
          std::vector<float> whole = p.c0, parts = p.c0;
          gemm_single(isa, p.args(whole.data()));
          const int64_t rows[] = {0, cs.row_cut, cs.m}, cols[] = {0, cs.col_cut, cs.n};
          for (int bi = 0; bi < 2; ++bi) {
            for (int bj = 0; bj < 2; ++bj) {
              GemmArgs s = p.args(parts.data());
              const int64_t r0 = rows[bi], c0 = cols[bj];
              s.m = rows[bi + 1] - r0;
              s.n = cols[bj + 1] - c0;
              s.a = p.ta ? p.a.data() + r0 : p.a.data() + r0 * p.lda;
              s.b = p.tb ? p.b.data() + c0 * p.ldb : p.b.data() + c0;
              s.c = parts.data() + r0 * p.ldc + c0;
              gemm_single(isa, s);
            }
          }
          CHECK_MESSAGE(std::memcmp(whole.data(), parts.data(), whole.size() * sizeof(float)) == 0,
                        describe(isa, p));
        }
      }
    }
  }

  TEST_CASE("threaded gemm equals gemm_single bit for bit") {
    std::mt19937 rng(11);
    const int saved = num_threads();
    struct Case {
      bool ta, tb;
      int64_t m, n, k;
      float beta;
    };
    const Case cases[] = {{false, false, 64, 3136, 576, 0.0f}, {false, false, 2048, 49, 512, 0.0f},
                          {false, true, 1, 4096, 700, 0.0f},   {true, false, 130, 300, 257, 1.0f},
                          {true, true, 300, 130, 300, 0.5f},   {false, false, 65, 70, 600, 0.0f},
                          {false, false, 700, 45, 33, 1.0f},   {false, true, 257, 3200, 20, 0.0f}};
    for (const Case& cs : cases) {
      const Problem p = make_problem(rng, cs.ta, cs.tb, cs.m, cs.n, cs.k, 3, cs.beta, false);
      std::vector<float> expect = p.c0;
      gemm_single(active_isa(), p.args(expect.data()));
      for (int threads : {1, 2}) {
        set_num_threads(threads);
        std::vector<float> got = p.c0;
        gemm(p.args(got.data()));
        CHECK_MESSAGE(std::memcmp(got.data(), expect.data(), got.size() * sizeof(float)) == 0,
                      describe(active_isa(), p) << " threads=" << threads);
      }
    }
    set_num_threads(saved);
  }
}
