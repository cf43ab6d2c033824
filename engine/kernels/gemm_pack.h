// Blocking and loop structure shared by the packed SIMD GEMM kernels (BLIS/GotoBLAS style).
//
// Each ISA translation unit includes this header and instantiates gemm_packed<Kern>() with
// its own micro-kernel and packing routines, so everything here is compiled with that TU's
// ISA flags. The contents sit in an anonymous namespace: every TU gets a private copy and
// no AVX code can ever be reached from generic code through a shared inline symbol.
//
// Summation order contract: the k range is cut into blocks that depend only on k (never on
// m, n or the M/N tiling). Within a block each C element is accumulated from zero in
// increasing k with one FMA per step, then combined with C: the first block writes
// acc (beta == 0) or fma(c, beta, acc), later blocks write c + acc. Every tile shape and
// orientation follows this (as do the ISA files' single-row GEMV paths), so splitting C
// between threads never changes a result.
#pragma once
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <new>

#include "engine/gemm.h"
#include "engine/tensor.h"

namespace isplit {
namespace {
namespace gemm_pack {

// How a micro-kernel combines its accumulators with C.
enum StoreMode : int {
  kStoreOverwrite = 0,  // first k block, beta == 0: C = acc (old C never read)
  kStoreBeta = 1,       // first k block, beta != 0: C = fma(C, beta, acc)
  kStoreAccumulate = 2  // later k blocks: C = C + acc
};

// A grow-only 64-byte aligned float buffer (one per thread and role, reused across calls).
class AlignedBuffer {
 public:
  AlignedBuffer() = default;
  AlignedBuffer(const AlignedBuffer&) = delete;
  AlignedBuffer& operator=(const AlignedBuffer&) = delete;
  // Frees the storage.
  ~AlignedBuffer() { release(); }
  // Returns storage for at least n floats; contents are unspecified after growth.
  float* get(size_t n) {
    if (n > size_) {
      release();
      const size_t bytes = ((n * sizeof(float)) + 63) / 64 * 64;
      data_ = static_cast<float*>(std::aligned_alloc(64, bytes));
      if (!data_) throw std::bad_alloc();
      size_ = bytes / sizeof(float);
      track_scratch_bytes(static_cast<std::ptrdiff_t>(bytes));  // counted with tensor memory
    }
    return data_;
  }

 private:
  void release() {
    if (data_) track_scratch_bytes(-static_cast<std::ptrdiff_t>(size_ * sizeof(float)));
    std::free(data_);
    data_ = nullptr;
    size_ = 0;
  }
  float* data_ = nullptr;
  size_t size_ = 0;
};

// The epilogue of one micro-tile (see GemmEpilogue), applied by the micro-kernel to each C
// value it stores after the last k block: c = (c + bias) + residual, then max(c, 0), the
// operations and order of epilogue_block(), so the results are the same bits. Done in
// registers, it spares a second pass that would reload C right after the kernel's stores.
struct TileEpilogue {
  const float* bias = nullptr;      // bias of the tile's first C row, then one per C row
  const float* residual = nullptr;  // element of the tile's first C element, row stride ldc
  bool relu = false;
};

// Number of k blocks for depth k with at most kc_max per block (depends on k only).
inline int64_t k_block_count(int64_t k, int64_t kc_max) { return (k + kc_max - 1) / kc_max; }

// Start of part b when [0, total) is cut into `parts` near-equal contiguous parts.
inline int64_t part_begin(int64_t total, int64_t parts, int64_t b) { return total * b / parts; }

// Pointer to op(A)[i][p] for a row-major GEMM.
inline const float* op_a_at(const GemmArgs& g, int64_t i, int64_t p) {
  return g.trans_a ? g.a + p * g.lda + i : g.a + i * g.lda + p;
}

// Pointer to op(B)[p][j] for a row-major GEMM.
inline const float* op_b_at(const GemmArgs& g, int64_t p, int64_t j) {
  return g.trans_b ? g.b + j * g.ldb + p : g.b + p * g.ldb + j;
}

// Packed GEMM driver for one orientation. Kern supplies:
//   MR, NR, VL        micro-tile rows / columns (NR a multiple of the vector width VL)
//   ALLOW_TRANSPOSED  whether kernel() supports tc (and gemm_packed may transpose the problem)
//   TC_DEEP_MAX_KB    k blocks beyond which transposed tiles cost more than they save
//                     (0: never; see packed_lanes_along_m)
//   KC, MC            k block and rows of A per L2 block (MC a multiple of MR)
//   NC_BIG, NC_SMALL  columns of B per packed block when A has several / one row block
//   NC_DIRECT         columns per block when B is read in place
//   pack_a(trans, src, ld, mc, np, kc, dst)  op(A) mc x kc -> np balanced panels,
//                     panel r (rows part_begin(mc, np, r)...) at dst + r * MR * kc, [p * MR + i]
//   pack_b(trans, src, ld, nc, kc, dst)  op(B) kc x nc -> NR-wide tiles, tile t at
//                     dst + t * NR * kc, [p * NR + j], the last one zero padded
//   kernel(rows, cols, kc, ap, bp, ldbp, prefetch, tc, c, ldc, mode, beta, ep)  one
//                     micro-tile; B row p at bp + p * ldbp; prefetch: touch the next tile
//                     (bp + NR) too; tc: the tile is stored transposed, element (i, j) at
//                     c[j * ldc + i]; ep (or null): the TileEpilogue applied before storing
//                     (its C rows are the tile's rows, or with tc its columns)
//   direct_b_ok(ldb)  whether an untransposed B read in place by many panels stays in L1
// With TC the problem handed in is the transposed one (C^T = op(B)^T op(A)^T) and C is
// written transposed, which lays the vector lanes along the original M.
template <class Kern, bool TC>
void gemm_packed_oriented(const GemmArgs& g) {
  constexpr int64_t MR = Kern::MR, NR = Kern::NR, KC = Kern::KC, MC = Kern::MC;
  const int64_t m = g.m, n = g.n, k = g.k;
  thread_local AlignedBuffer abuf, bbuf;

  const int64_t nkb = k_block_count(k, KC);
  const int64_t kc_cap = (k + nkb - 1) / nkb;  // largest block of the balanced k partition
  const int64_t nmb = (m + MC - 1) / MC;       // row blocks of A (balanced)
  const int64_t mc_cap = (m + nmb - 1) / nmb;
  const int64_t panels_cap = (mc_cap + MR - 1) / MR;
  float* ap_all = abuf.get(static_cast<size_t>(panels_cap * MR * kc_cap + 64));
  // Store mode of k block kb (see the summation order contract above).
  auto mode_of = [&](int64_t kb) {
    return kb > 0 ? kStoreAccumulate : (g.beta == 0.0f ? kStoreOverwrite : kStoreBeta);
  };
  // Address of C element (i, j) of the problem being solved.
  auto c_at = [&](int64_t i, int64_t j) { return TC ? g.c + j * g.ldc + i : g.c + i * g.ldc + j; };
  // Prefetches the C lines of the rows x cols tile at (i, j) for writing.
  auto prefetch_c = [&](int64_t i, int64_t j, int64_t rows, int64_t cols) {
    if (TC) {
      for (int64_t q = 0; q < cols; ++q) __builtin_prefetch(c_at(i, j + q), 1, 3);
    } else {
      for (int64_t q = 0; q < rows; ++q) {
        __builtin_prefetch(c_at(i + q, j), 1, 3);
        __builtin_prefetch(c_at(i + q, j + cols - 1), 1, 3);
      }
    }
  };
  // Runs every micro-tile of rows [i0, i0 + mc) x columns [j0, j0 + nc) for one k block.
  // Tile t of B starts at bp + t * tile_stride with row stride ldbp.
  auto compute = [&](int64_t i0, int64_t mc, int64_t np, int64_t j0, int64_t nc, int64_t kc,
                     const float* bp, int64_t tile_stride, int64_t ldbp, bool prefetch, int mode) {
    for (int64_t t = 0; t * NR < nc; ++t) {
      const int cols = static_cast<int>(std::min<int64_t>(NR, nc - t * NR));
      for (int64_t r = 0; r < np; ++r) {
        const int64_t r0 = part_begin(mc, np, r), r1 = part_begin(mc, np, r + 1);
        // Start fetching the C lines of the next micro-tile (matters when kc is small).
        if (r + 1 < np) {
          prefetch_c(i0 + r1, j0 + t * NR, part_begin(mc, np, r + 2) - r1, cols);
        } else if ((t + 1) * NR < nc) {
          prefetch_c(i0, j0 + (t + 1) * NR, part_begin(mc, np, 1),
                     std::min<int64_t>(NR, nc - (t + 1) * NR));
        }
        Kern::kernel(static_cast<int>(r1 - r0), cols, kc, ap_all + r * MR * kc,
                     bp + t * tile_stride, ldbp, prefetch && r == 0, TC, c_at(i0 + r0, j0 + t * NR),
                     g.ldc, mode, g.beta, nullptr);
      }
    }
  };

  if (nmb == 1 && !g.trans_b && (m <= MR || Kern::direct_b_ok(g.ldb))) {
    // A fits one L2 block and B is row-major: the kernel reads B in place (each B row
    // segment is used by every A panel while it sits in L1), and the first panel of each
    // tile prefetches the next tile. Only a ragged last tile is copied.
    const int64_t np = (m + MR - 1) / MR;
    float* tail = bbuf.get(static_cast<size_t>(NR * kc_cap + 64));
    // Column blocks keep the C block in L2 across k blocks; A is repacked per block (cheap).
    const int64_t nnb = (n + Kern::NC_DIRECT - 1) / Kern::NC_DIRECT;
    for (int64_t jb = 0; jb < nnb; ++jb) {
      const int64_t j0 = part_begin(n, nnb, jb), j1 = part_begin(n, nnb, jb + 1);
      const int64_t n_full = j0 + (j1 - j0) / NR * NR;
      for (int64_t kb = 0; kb < nkb; ++kb) {
        const int64_t p0 = part_begin(k, nkb, kb), kc = part_begin(k, nkb, kb + 1) - p0;
        Kern::pack_a(g.trans_a, op_a_at(g, 0, p0), g.lda, m, np, kc, ap_all);
        if (n_full > j0)
          compute(0, m, np, j0, n_full - j0, kc, op_b_at(g, p0, j0), NR, g.ldb, true, mode_of(kb));
        if (n_full < j1) {
          Kern::pack_b(false, op_b_at(g, p0, n_full), g.ldb, j1 - n_full, kc, tail);
          compute(0, m, np, n_full, j1 - n_full, kc, tail, NR * kc, NR, false, mode_of(kb));
        }
      }
    }
    return;
  }

  // Blocked path: a kc x nc block of B is packed once per k block and reused by every row
  // block of A; each A block is packed once per (column block, k block).
  const int64_t nc_max = nmb == 1 ? Kern::NC_SMALL : Kern::NC_BIG;
  const int64_t nnb = (n + nc_max - 1) / nc_max;
  const int64_t nc_cap = (n + nnb - 1) / nnb;
  const int64_t ntile_cap = (nc_cap + NR - 1) / NR;
  float* bp_all = bbuf.get(static_cast<size_t>(ntile_cap * NR * kc_cap + 64));
  for (int64_t jb = 0; jb < nnb; ++jb) {
    const int64_t j0 = part_begin(n, nnb, jb), nc = part_begin(n, nnb, jb + 1) - j0;
    for (int64_t kb = 0; kb < nkb; ++kb) {
      const int64_t p0 = part_begin(k, nkb, kb), kc = part_begin(k, nkb, kb + 1) - p0;
      Kern::pack_b(g.trans_b, op_b_at(g, p0, j0), g.ldb, nc, kc, bp_all);
      for (int64_t ib = 0; ib < nmb; ++ib) {
        const int64_t i0 = part_begin(m, nmb, ib), mc = part_begin(m, nmb, ib + 1) - i0;
        const int64_t np = (mc + MR - 1) / MR;
        Kern::pack_a(g.trans_a, op_a_at(g, i0, p0), g.lda, mc, np, kc, ap_all);
        compute(i0, mc, np, j0, nc, kc, bp_all, NR * kc, NR, false, mode_of(kb));
      }
    }
  }
}

// Packed GEMM: picks the orientation that wastes fewer vector lanes. C = op(A) op(B) is
// solved either directly (lanes along N) or as C^T = op(B)^T op(A)^T written back
// transposed (lanes along M). Both orientations perform, for every C element, exactly the
// same FMAs in the same order (a*b and b*a round identically), so the choice - which
// depends on the block shape - never changes a result.
template <class Kern>
void gemm_packed(const GemmArgs& g) {
  if (g.m <= 0 || g.n <= 0) return;
  if (g.k <= 0) {
    // Empty sum: C = beta * C (beta == 0 writes zeros without reading C).
    for (int64_t i = 0; i < g.m; ++i)
      for (int64_t j = 0; j < g.n; ++j)
        g.c[i * g.ldc + j] = g.beta == 0.0f ? 0.0f : g.beta * g.c[i * g.ldc + j];
    return;
  }
  if constexpr (Kern::ALLOW_TRANSPOSED) {
    if (packed_lanes_along_m(g.m, g.n, g.k, Kern::VL, Kern::NR, Kern::KC, Kern::TC_DEEP_MAX_KB)) {
      GemmArgs t = g;
      t.m = g.n;
      t.n = g.m;
      t.trans_a = !g.trans_b;
      t.a = g.b;
      t.lda = g.ldb;
      t.trans_b = !g.trans_a;
      t.b = g.a;
      t.ldb = g.lda;
      gemm_packed_oriented<Kern, true>(t);
      return;
    }
  }
  gemm_packed_oriented<Kern, false>(g);
}

}  // namespace gemm_pack
}  // namespace
}  // namespace isplit
