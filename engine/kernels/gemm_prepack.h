// Prepacked-operand GEMM drivers shared by the SIMD kernels (see engine/gemm_prepacked.h).
//
// Included by each ISA translation unit after gemm_pack.h and instantiated with its Kern
// policy, like gemm_packed(). The layouts hold every k block of op(A) once:
//   lanes along N: for each k block (start p0, depth kc), ceil(M/MR) panels of MR rows,
//                  panel r at p0 * P * MR + r * MR * kc (P panels), [p * MR + i];
//   lanes along M: for each k block, ceil(M/NR) tiles of op(A)^T, tile t at
//                  p0 * T * NR + t * NR * kc (T tiles), [p * NR + j], zero padded.
// The k blocks are the ones gemm_packed() uses (a function of K only) and every C element
// gets the same FMAs in the same order and the same store rule, so the results equal
// gemm()'s bit for bit. The epilogue is applied by the micro-kernel itself to the values of
// the last k block before it stores them (see TileEpilogue).
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "engine/gemm_prepacked.h"
#include "engine/kernels/gemm_pack.h"

namespace isplit {
namespace {
namespace gemm_pack {

// Floats of the prepacked layout of op(A) [m x k] (plus slack for vector over-reads).
template <class Kern>
int64_t prepacked_floats(bool lanes_m, int64_t m, int64_t k) {
  const int64_t unit = lanes_m ? Kern::NR : Kern::MR;
  return (m + unit - 1) / unit * unit * k + 64;
}

// Packs op(A) [m x k] (A m x k with row stride lda, or with trans_a k x m) into dst.
template <class Kern>
void prepack_matrix(bool lanes_m, bool trans_a, const float* a, int64_t lda, int64_t m, int64_t k,
                    float* dst) {
  constexpr int64_t MR = Kern::MR, NR = Kern::NR;
  const int64_t nkb = k_block_count(k, Kern::KC);
  // op(A)[i][p]
  auto at = [&](int64_t i, int64_t p) { return trans_a ? a + p * lda + i : a + i * lda + p; };
  for (int64_t kb = 0; kb < nkb; ++kb) {
    const int64_t p0 = part_begin(k, nkb, kb), kc = part_begin(k, nkb, kb + 1) - p0;
    if (lanes_m) {
      // Tiles of B' = op(A)^T: B'[p][j] = op(A)[j][p], i.e. "transposed B" when A is
      // row-major and plain row-major B when trans_a.
      const int64_t tiles = (m + NR - 1) / NR;
      Kern::pack_b(!trans_a, at(0, p0), lda, m, kc, dst + p0 * tiles * NR);
    } else {
      const int64_t panels = (m + MR - 1) / MR;
      float* d = dst + p0 * panels * MR;
      for (int64_t r = 0; r < panels; ++r) {
        const int64_t i0 = r * MR, rows = std::min(MR, m - i0);
        Kern::pack_a(trans_a, at(i0, p0), lda, rows, 1, kc, d + r * MR * kc);
      }
    }
  }
}

// The epilogue on the block of C at c (inside job g's C).
inline void epilogue_at(const PrepackedJob& g, int64_t row0, int64_t rows, int64_t cols, float* c) {
  const float* r = g.epilogue.residual ? g.epilogue.residual + (c - g.c) : nullptr;
  epilogue_block(g.epilogue, row0, rows, cols, c, g.ldc, r);
}

// The micro-kernel epilogue of the tile of C at c whose first C row is row0.
inline TileEpilogue tile_epilogue_at(const PrepackedJob& g, int64_t row0, const float* c) {
  TileEpilogue t;
  t.bias = g.epilogue.row_bias ? g.epilogue.row_bias + row0 : nullptr;
  t.residual = g.epilogue.residual ? g.epilogue.residual + (c - g.c) : nullptr;
  t.relu = g.epilogue.relu;
  return t;
}

// Rows [r0, r1) x columns [n0, n1) of C with op(A) in MR-row panels (lanes along N).
template <class Kern>
void run_prepacked_panels(const PrepackedJob& g) {
  constexpr int64_t MR = Kern::MR, NR = Kern::NR, KC = Kern::KC, MC = Kern::MC;
  const int64_t k = g.k, nkb = k_block_count(k, KC), kc_cap = (k + nkb - 1) / nkb;
  const int64_t all_panels = (g.m + MR - 1) / MR;
  const int64_t pa = g.r0 / MR, pb = (g.r1 + MR - 1) / MR;  // panels of this job
  const bool has_epilogue = g.epilogue.any();
  thread_local AlignedBuffer bbuf;
  auto mode_of = [&](int64_t kb) {
    return kb > 0 ? kStoreAccumulate : (g.beta == 0.0f ? kStoreOverwrite : kStoreBeta);
  };
  // op(B)[p][j]
  auto b_at = [&](int64_t p, int64_t j) {
    return g.trans_b ? g.b + j * g.ldb + p : g.b + p * g.ldb + j;
  };
  // Every micro-tile of panels [q0, q1) x columns [j0, j0 + nc) for k block kb, tile t of
  // B at bp + t * tile_stride with row stride ldbp.
  auto compute = [&](int64_t q0, int64_t q1, int64_t j0, int64_t nc, int64_t kb, const float* bp,
                     int64_t tile_stride, int64_t ldbp, bool prefetch) {
    const int64_t p0 = part_begin(k, nkb, kb), kc = part_begin(k, nkb, kb + 1) - p0;
    const float* ap0 = g.packed + p0 * all_panels * MR;
    const int mode = mode_of(kb);
    const bool last = kb == nkb - 1 && has_epilogue;
    for (int64_t t = 0; t * NR < nc; ++t) {
      const int cols = static_cast<int>(std::min<int64_t>(NR, nc - t * NR));
      for (int64_t q = q0; q < q1; ++q) {
        const int64_t i0 = q * MR;
        const int rows = static_cast<int>(std::min<int64_t>(MR, g.r1 - i0));
        float* c = g.c + i0 * g.ldc + j0 + t * NR;
        if (q + 1 < q1) __builtin_prefetch(c + MR * g.ldc, 1, 3);
        const TileEpilogue ep = last ? tile_epilogue_at(g, i0, c) : TileEpilogue{};
        Kern::kernel(rows, cols, kc, ap0 + q * MR * kc, bp + t * tile_stride, ldbp,
                     prefetch && q == q0, false, c, g.ldc, mode, g.beta, last ? &ep : nullptr);
      }
    }
  };
  // Panels per L2 block: as many as fill the MC x KC budget of gemm_packed() at this
  // depth (a shallow k leaves room for more rows, and B can then be read in place).
  const int64_t block_panels = std::max<int64_t>(MC / MR, MC * KC / (MR * kc_cap));
  if (g.b_packed) {
    // B is already in the packed-B layout: every tile is read where it is, in blocks of
    // columns that keep C in L2 across the k blocks.
    const int64_t t0 = g.n0 / NR, nt = (g.n1 - t0 * NR + NR - 1) / NR;
    const int64_t nc_max = pb - pa <= block_panels ? Kern::NC_SMALL : Kern::NC_BIG;
    const int64_t ntb = (nt * NR + nc_max - 1) / nc_max;
    for (int64_t jb = 0; jb < ntb; ++jb) {
      const int64_t ta = t0 + part_begin(nt, ntb, jb), tz = t0 + part_begin(nt, ntb, jb + 1);
      const int64_t j0 = ta * NR, nc = std::min(g.n1, tz * NR) - j0;
      for (int64_t kb = 0; kb < nkb; ++kb) {
        const int64_t p0 = part_begin(k, nkb, kb), kc = part_begin(k, nkb, kb + 1) - p0;
        const float* bp = g.b + p0 * g.ldb + ta * NR * kc;
        for (int64_t q0 = pa; q0 < pb; q0 += block_panels)
          compute(q0, std::min(pb, q0 + block_panels), j0, nc, kb, bp, NR * kc, NR, false);
      }
    }
    return;
  }
  if (pb - pa <= block_panels && !g.trans_b && (g.r1 - g.r0 <= MR || Kern::direct_b_ok(g.ldb))) {
    // The job's panels fit one L2 block: B is read in place (see gemm_packed_oriented);
    // only a ragged last tile is copied.
    float* tail = bbuf.get(static_cast<size_t>(NR * kc_cap + 64));
    const int64_t n = g.n1 - g.n0, nnb = (n + Kern::NC_DIRECT - 1) / Kern::NC_DIRECT;
    for (int64_t jb = 0; jb < nnb; ++jb) {
      const int64_t j0 = g.n0 + part_begin(n, nnb, jb), j1 = g.n0 + part_begin(n, nnb, jb + 1);
      const int64_t n_full = j0 + (j1 - j0) / NR * NR;
      for (int64_t kb = 0; kb < nkb; ++kb) {
        const int64_t p0 = part_begin(k, nkb, kb), kc = part_begin(k, nkb, kb + 1) - p0;
        if (n_full > j0) compute(pa, pb, j0, n_full - j0, kb, b_at(p0, j0), NR, g.ldb, true);
        if (n_full < j1) {
          Kern::pack_b(false, b_at(p0, n_full), g.ldb, j1 - n_full, kc, tail);
          compute(pa, pb, n_full, j1 - n_full, kb, tail, NR * kc, NR, false);
        }
      }
    }
    return;
  }
  // Blocked: a kc x nc block of B is packed once per k block and used by every panel.
  const int64_t n = g.n1 - g.n0;
  const int64_t nc_max = pb - pa <= block_panels ? Kern::NC_SMALL : Kern::NC_BIG;
  const int64_t nnb = (n + nc_max - 1) / nc_max, nc_cap = (n + nnb - 1) / nnb;
  float* bp_all = bbuf.get(static_cast<size_t>((nc_cap + NR - 1) / NR * NR * kc_cap + 64));
  for (int64_t jb = 0; jb < nnb; ++jb) {
    const int64_t j0 = g.n0 + part_begin(n, nnb, jb), nc = g.n0 + part_begin(n, nnb, jb + 1) - j0;
    for (int64_t kb = 0; kb < nkb; ++kb) {
      const int64_t p0 = part_begin(k, nkb, kb), kc = part_begin(k, nkb, kb + 1) - p0;
      Kern::pack_b(g.trans_b, b_at(p0, j0), g.ldb, nc, kc, bp_all);
      for (int64_t q0 = pa; q0 < pb; q0 += block_panels)
        compute(q0, std::min(pb, q0 + block_panels), j0, nc, kb, bp_all, NR * kc, NR, false);
    }
  }
}

// Whether Kern has a tc_kernel (a transposed tile that prefetches given weights).
template <class K, class = void>
struct HasTcKernel : std::false_type {};
template <class K>
struct HasTcKernel<K, std::void_t<decltype(&K::tc_kernel)>> : std::true_type {};

// Rows [r0, r1) x columns [n0, n1) of C with op(A)^T in NR-column tiles (lanes along M):
// solves C^T = op(B)^T op(A)^T, packing the few rows of op(B)^T per k block.
template <class Kern>
void run_prepacked_tiles(const PrepackedJob& g) {
  constexpr int64_t MR = Kern::MR, NR = Kern::NR, KC = Kern::KC, MC = Kern::MC;
  const int64_t k = g.k, nkb = k_block_count(k, KC), kc_cap = (k + nkb - 1) / nkb;
  const int64_t all_tiles = (g.m + NR - 1) / NR;
  const int64_t ta = g.r0 / NR, tb = (g.r1 + NR - 1) / NR;  // tiles of this job
  const int64_t n = g.n1 - g.n0, nmb = (n + MC - 1) / MC, mc_cap = (n + nmb - 1) / nmb;
  const int64_t np_cap = (mc_cap + MR - 1) / MR;
  const bool has_epilogue = g.epilogue.any();
  thread_local AlignedBuffer abuf;
  float* ap = abuf.get(static_cast<size_t>(np_cap * MR * kc_cap + 64));
  // Tile groups keep a C block in L2 across the k blocks.
  const int64_t group = (nmb == 1 ? Kern::NC_SMALL : Kern::NC_BIG) / NR;
  for (int64_t tg = ta; tg < tb; tg += group) {
    const int64_t tg1 = std::min(tb, tg + group);
    for (int64_t kb = 0; kb < nkb; ++kb) {
      const int64_t p0 = part_begin(k, nkb, kb), kc = part_begin(k, nkb, kb + 1) - p0;
      const float* tiles = g.packed + p0 * all_tiles * NR;
      const int mode = kb > 0 ? kStoreAccumulate : (g.beta == 0.0f ? kStoreOverwrite : kStoreBeta);
      const bool last = kb == nkb - 1 && has_epilogue;
      for (int64_t ib = 0; ib < nmb; ++ib) {
        const int64_t i0 = g.n0 + part_begin(n, nmb, ib), mc = g.n0 + part_begin(n, nmb, ib + 1) - i0;
        const int64_t np = (mc + MR - 1) / MR;
        // op(B)^T rows i0.. : element (i, p) = op(B)[p][i].
        if (g.trans_b)
          Kern::pack_a(false, g.b + i0 * g.ldb + p0, g.ldb, mc, np, kc, ap);
        else
          Kern::pack_a(true, g.b + p0 * g.ldb + i0, g.ldb, mc, np, kc, ap);
        // A tile is read from memory by its first panel and from cache by the others, so
        // with many panels its first one waits on memory while the bus idles for the rest.
        // Where the ISA has a tc_kernel and there are three panels or more, each panel
        // prefetches instead a slice of the weights the next tile reads: ResNet-50's layer4
        // at 224x224 (49 columns, 5 panels) took 0.91 of the time. With one panel that
        // prefetch runs a whole tile ahead and was 15 % slower than the kernel's own
        // look-ahead of a few KB; with two it timed the same (docs/benchmarks.md).
        const bool spread = np >= 3;
        for (int64_t t = tg; t < tg1; ++t) {
          const int64_t j0 = t * NR;  // first row of C in this tile
          const int cols = static_cast<int>(std::min<int64_t>(NR, g.r1 - j0));
          // The weights the loop nest reads next (none after its last tile).
          const float* next = nullptr;
          int64_t next_floats = 0;
          if (t + 1 < tg1) {
            next = tiles + (t + 1) * NR * kc;
            next_floats = NR * kc;
          } else if (kb + 1 < nkb) {
            const int64_t q0 = part_begin(k, nkb, kb + 1), qc = part_begin(k, nkb, kb + 2) - q0;
            next = g.packed + q0 * all_tiles * NR + tg * NR * qc;
            next_floats = NR * qc;
          } else if (tg1 < tb) {
            next = g.packed + tg1 * NR * part_begin(k, nkb, 1);
            next_floats = NR * part_begin(k, nkb, 1);
          }
          const bool first = t == ta && kb == 0 && ib == 0;  // nothing prefetched its weights
          for (int64_t r = 0; r < np; ++r) {
            const int64_t s0 = part_begin(mc, np, r), s1 = part_begin(mc, np, r + 1);
            float* c = g.c + j0 * g.ldc + i0 + s0;
            const TileEpilogue ep = last ? tile_epilogue_at(g, j0, c) : TileEpilogue{};
            if constexpr (HasTcKernel<Kern>::value) {
              if (spread && next && !(first && r == 0)) {
                const int64_t f0 = next_floats * r / np, f1 = next_floats * (r + 1) / np;
                Kern::tc_kernel(static_cast<int>(s1 - s0), cols, kc, ap + r * MR * kc,
                                tiles + t * NR * kc, c, g.ldc, mode, g.beta, last ? &ep : nullptr,
                                reinterpret_cast<const char*>(next + f0), (f1 - f0) * 4);
                continue;
              }
            }
            Kern::kernel(static_cast<int>(s1 - s0), cols, kc, ap + r * MR * kc,
                         tiles + t * NR * kc, NR, false, true, c, g.ldc, mode, g.beta,
                         last ? &ep : nullptr);
          }
        }
      }
    }
  }
}

// Whether Kern has a rows_kernel (B rows read where they are, one k block).
template <class K, class = void>
struct HasRowsKernel : std::false_type {};
template <class K>
struct HasRowsKernel<K, std::void_t<decltype(&K::rows_kernel)>> : std::true_type {};
// Whether Kern also has a rows_tail_kernel (the same for a ragged last tile).
template <class K, class = void>
struct HasRowsTailKernel : std::false_type {};
template <class K>
struct HasRowsTailKernel<K, std::void_t<decltype(&K::rows_tail_kernel)>> : std::true_type {};

// Columns [n0, n1) of C with op(A) in MR-row panels and row p of B at b + b_rows[p]: each
// NR-column tile of B is copied, through all of K, into a buffer that stays in L1 while
// every panel is multiplied by it, or, where the ISA has a rows_kernel and K is one k
// block, read in place for whole tiles (and, with a rows_tail_kernel, for the ragged last
// one too). The k blocks, FMAs and stores of each C element
// are those of run_prepacked_panels, so the bits are too.
template <class Kern>
void run_prepacked_rows(const PrepackedJob& g) {
  constexpr int64_t MR = Kern::MR, NR = Kern::NR, KC = Kern::KC;
  const int64_t k = g.k, nkb = k_block_count(k, KC);
  const int64_t all_panels = (g.m + MR - 1) / MR;
  const int64_t pa = g.r0 / MR, pb = (g.r1 + MR - 1) / MR;
  const bool has_epilogue = g.epilogue.any();
  thread_local AlignedBuffer tbuf;
  float* bt = tbuf.get(static_cast<size_t>(NR * k + 64));
  for (int64_t j0 = g.n0; j0 < g.n1; j0 += NR) {
    const int cols = static_cast<int>(std::min<int64_t>(NR, g.n1 - j0));
    const float* src = g.b + j0;
    if constexpr (HasRowsKernel<Kern>::value) {
      constexpr bool tails = HasRowsTailKernel<Kern>::value;
      if (nkb == 1 && (cols == NR || tails)) {
        for (int64_t q = pa; q < pb; ++q) {
          const int64_t i0 = q * MR;
          const int rows = static_cast<int>(std::min<int64_t>(MR, g.r1 - i0));
          const float* ap = g.packed + q * MR * k;
          float* c = g.c + i0 * g.ldc + j0;
          const TileEpilogue ep = has_epilogue ? tile_epilogue_at(g, i0, c) : TileEpilogue{};
          const TileEpilogue* e = has_epilogue ? &ep : nullptr;
          if constexpr (tails) {
            if (cols < NR) {
              Kern::rows_tail_kernel(rows, cols, k, ap, src, g.b_rows, c, g.ldc, e);
              continue;
            }
          }
          Kern::rows_kernel(rows, k, ap, src, g.b_rows, c, g.ldc, e);
        }
        continue;
      }
    }
    if (cols == NR) {
      for (int64_t p = 0; p < k; ++p) std::memcpy(bt + p * NR, src + g.b_rows[p], NR * sizeof(float));
    } else {  // the lanes past cols are multiplied (zeros) but never stored
      for (int64_t p = 0; p < k; ++p) {
        std::memcpy(bt + p * NR, src + g.b_rows[p], static_cast<size_t>(cols) * sizeof(float));
        std::memset(bt + p * NR + cols, 0, static_cast<size_t>(NR - cols) * sizeof(float));
      }
    }
    for (int64_t kb = 0; kb < nkb; ++kb) {
      const int64_t p0 = part_begin(k, nkb, kb), kc = part_begin(k, nkb, kb + 1) - p0;
      const float* ap0 = g.packed + p0 * all_panels * MR;
      const int mode = kb > 0 ? kStoreAccumulate : kStoreOverwrite;
      const bool last = kb == nkb - 1 && has_epilogue;
      for (int64_t q = pa; q < pb; ++q) {
        const int64_t i0 = q * MR;
        const int rows = static_cast<int>(std::min<int64_t>(MR, g.r1 - i0));
        float* c = g.c + i0 * g.ldc + j0;
        const TileEpilogue ep = last ? tile_epilogue_at(g, i0, c) : TileEpilogue{};
        Kern::kernel(rows, cols, kc, ap0 + q * MR * kc, bt + p0 * NR, NR, false, false, c, g.ldc,
                     mode, 0.0f, last ? &ep : nullptr);
      }
    }
  }
}

// Whether Kern has a conv_kernel (direct convolution tiles, lanes along M).
template <class K, class = void>
struct HasConvKernel : std::false_type {};
template <class K>
struct HasConvKernel<K, std::void_t<decltype(&K::conv_kernel)>> : std::true_type {};

// Computes a direct convolution job: for each tile of NR output channels and each k block,
// the tile's weights for the block (kc x NR floats) stay in L1 while every pixel tile of
// the rows is multiplied by them; a row is cut into near-equal tiles of at most
// Kern::CONV_R pixels. The k blocks, FMA order and store rule per element are those of the
// GEMM kernels (see the top of this file).
template <class Kern>
void run_direct_conv(const DirectConvJob& g) {
  constexpr int64_t NR = Kern::NR, KC = Kern::KC, R = Kern::CONV_R;
  const int64_t k = g.k, nkb = k_block_count(k, KC), all_tiles = (g.m + NR - 1) / NR;
  const int64_t row_tiles = (g.ow + R - 1) / R;
  const bool has_epilogue = g.epilogue.any();
  for (int64_t t = g.r0 / NR; t * NR < g.r1; ++t) {
    const int64_t i0 = t * NR;
    const int cols = static_cast<int>(std::min<int64_t>(NR, g.r1 - i0));
    for (int64_t kb = 0; kb < nkb; ++kb) {
      const int64_t p0 = part_begin(k, nkb, kb), kc = part_begin(k, nkb, kb + 1) - p0;
      const float* w = g.packed + p0 * all_tiles * NR + t * NR * kc;
      const int mode = kb > 0 ? kStoreAccumulate : kStoreOverwrite;
      const bool last = kb == nkb - 1 && has_epilogue;
      for (int64_t oy = g.oh0; oy < g.oh1; ++oy)
        for (int64_t rt = 0; rt < row_tiles; ++rt) {
          const int64_t ox0 = g.ow * rt / row_tiles, ox1 = g.ow * (rt + 1) / row_tiles;
          float* c = g.c + i0 * g.ldc + oy * g.ow + ox0;
          TileEpilogue ep;
          if (last) {
            ep.bias = g.epilogue.row_bias ? g.epilogue.row_bias + i0 : nullptr;
            ep.residual = g.epilogue.residual ? g.epilogue.residual + (c - g.c) : nullptr;
            ep.relu = g.epilogue.relu;
          }
          Kern::conv_kernel(static_cast<int>(ox1 - ox0), cols, kc, w,
                            g.x + oy * g.row_step + ox0 * g.stride, g.koff + p0, g.stride, c,
                            g.ldc, mode, last ? &ep : nullptr);
        }
    }
  }
}

// run_direct_conv<Kern> where Kern has a conv_kernel, else null.
template <class Kern>
constexpr auto conv_runner() {
  using Fn = void (*)(const DirectConvJob&);
  if constexpr (HasConvKernel<Kern>::value)
    return static_cast<Fn>(&run_direct_conv<Kern>);
  else
    return static_cast<Fn>(nullptr);
}

// Runs one prepacked job in its layout's orientation.
template <class Kern>
void run_prepacked(const PrepackedJob& g) {
  if (g.r1 <= g.r0 || g.n1 <= g.n0) return;
  if (g.k <= 0) {
    for (int64_t i = g.r0; i < g.r1; ++i)
      for (int64_t j = g.n0; j < g.n1; ++j)
        g.c[i * g.ldc + j] = g.beta == 0.0f ? 0.0f : g.beta * g.c[i * g.ldc + j];
    epilogue_at(g, g.r0, g.r1 - g.r0, g.n1 - g.n0, g.c + g.r0 * g.ldc + g.n0);
    return;
  }
  if (g.b_rows) {
    run_prepacked_rows<Kern>(g);
  } else if (g.lanes_m) {
    if constexpr (Kern::ALLOW_TRANSPOSED) run_prepacked_tiles<Kern>(g);
  } else {
    run_prepacked_panels<Kern>(g);
  }
}

// The PrepackKernels table of one Kern.
template <class Kern>
PrepackKernels make_prepack_kernels() {
  return PrepackKernels{Kern::MR,
                        Kern::NR,
                        Kern::VL,
                        Kern::KC,
                        Kern::ALLOW_TRANSPOSED,
                        Kern::TC_DEEP_MAX_KB,
                        &prepacked_floats<Kern>,
                        &prepack_matrix<Kern>,
                        &run_prepacked<Kern>,
                        conv_runner<Kern>()};
}

}  // namespace gemm_pack
}  // namespace
}  // namespace isplit
