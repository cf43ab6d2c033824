// Winograd F(4x4, 3x3) and F(2x2, 3x3) tile transforms, one table per ISA (engine/kernels/winograd_impl.h
// holds the one source every table is compiled from, each with its own ISA flags).
//
// Sixteen tiles travel side by side, one per lane: a transform reads and writes arrays of
// 16 floats, so every arithmetic step is one vector operation on AVX-512, two on AVX2 or
// four on NEON. Each lane rounds exactly as the scalar table does (no fused multiply-add,
// no reassociation), so all tables give the same bits.
//
// With d a 6x6 input patch, g a 3x3 filter and m the element-wise product of their
// transforms summed over input channels, one output tile is
//   Y = A^T [ (G g G^T) . (B^T d B) ] A        (Lavin and Gray's points 0, +-1, +-2, inf)
#pragma once
#include <cstdint>

#include "engine/cpu.h"

namespace isplit {

// Lanes (tiles) handled by one call of a transform.
constexpr int64_t kWinogradLanes = 16;

struct WinogradKernels {
  // in[(r * 6 + c) * 16 + lane]: sixteen 6x6 input patches. Writes B^T d B of each to
  // v[xi * stride + lane] for xi = 0..35 (xi = row * 6 + column of the 6x6 transform).
  void (*input16)(const float* in, float* v, int64_t stride);
  // m[xi * stride + lane] for xi = 0..35: sixteen 6x6 transformed products. Writes
  // A^T m A + bias (then max(., 0) when relu) to out[(i * 4 + j) * 16 + lane].
  void (*output16)(const float* m, int64_t stride, float bias, bool relu, float* out);
  // patch[(r * 6 + col) * 16 + l] = rows[r][4 * l + col] for r, col < 6: the input patches
  // of sixteen tiles side by side in one band of six image rows (66 floats read per row).
  void (*gather16)(const float* const* rows, float* patch);
  // rows[i * 64 + 4 * l + j] = out[(i * 4 + j) * 16 + l]: output16's tiles laid back out
  // as four image rows of 64 values.
  void (*interleave16)(const float* out, float* rows);
  // One row of the filter transform, element by element: taps[t * tap_stride + e] (t = 0..8,
  // e < len) is tap t (row t / 3, column t % 3) of filter e's 3x3 g; writes
  // (G g G^T)[row][j] of each filter to out[j][e], j = 0..5. Rounds the same way on every ISA.
  void (*filter_row)(const float* taps, int64_t tap_stride, int64_t len, int row,
                     float* const* out);
  // The same five for F(2x2, 3x3) (maps too small for sixteen 4x4 tiles: 7x7 to 12x12):
  // 4x4 patches and 16 positions (xi = row * 4 + column), 2x2 output tiles.
  // in[(r * 4 + c) * 16 + lane] -> v[xi * stride + lane].
  void (*input16_2)(const float* in, float* v, int64_t stride);
  // m[xi * stride + lane] -> out[(i * 2 + j) * 16 + lane] (+ bias, then ReLU).
  void (*output16_2)(const float* m, int64_t stride, float bias, bool relu, float* out);
  // patch[(r * 4 + col) * 16 + l] = rows[r][2 * l + col] for r, col < 4 (34 floats per row).
  void (*gather16_2)(const float* const* rows, float* patch);
  // rows[i * 32 + 2 * l + j] = out[(i * 2 + j) * 16 + l].
  void (*interleave16_2)(const float* out, float* rows);
  // (G g G^T)[row][j] for j = 0..3, row = 0..3, as filter_row.
  void (*filter_row_2)(const float* taps, int64_t tap_stride, int64_t len, int row,
                       float* const* out);
};

// The transforms of one ISA (unsupported ones give the scalar table).
const WinogradKernels& winograd_kernels(Isa isa);

// Tables behind winograd_kernels().
extern const WinogradKernels kWinogradScalar;
#if defined(ISPLIT_HAVE_X86_KERNELS)
extern const WinogradKernels kWinogradAvx2;
extern const WinogradKernels kWinogradAvx512;
#endif

}  // namespace isplit
