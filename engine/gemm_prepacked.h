// GEMM with a left operand packed once and reused: convolution weights are packed into
// the micro-kernels' panel layout when a model is prepared for inference, instead of on
// every call (at batch 1 and small feature maps the packing of the weights costs as much
// as the multiply-adds). Results are bit-identical to gemm() on the same operands.
#pragma once
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>

#include "engine/cpu.h"
#include "engine/gemm.h"
#include "engine/tensor.h"

namespace isplit {

// What gemm_prepacked() does to each element of C once its sum is complete:
// c = c + bias[row] (when bias is set), then c = c + residual[i * ldc + j] (when residual
// is set: a matrix laid out like C, a residual connection), then c = max(c, 0) (when relu).
struct GemmEpilogue {
  const float* row_bias = nullptr;
  bool relu = false;
  const float* residual = nullptr;
  // True when there is anything to apply.
  bool any() const { return row_bias || relu || residual; }
};

// Applies e to the rows x cols block of C at c (row stride ldc) whose first row is row
// row0 of C; r: the residual's block at the same place (null when e has none).
inline void epilogue_block(const GemmEpilogue& e, int64_t row0, int64_t rows, int64_t cols,
                           float* c, int64_t ldc, const float* r) {
  for (int64_t i = 0; i < rows; ++i) {
    float* row = c + i * ldc;
    const float* rr = r ? r + i * ldc : nullptr;
    if (e.row_bias && e.relu) {  // the common cases as one pass each, same operations
      const float bv = e.row_bias[row0 + i];
      if (rr) {
        for (int64_t j = 0; j < cols; ++j) {
          const float v = (row[j] + bv) + rr[j];
          row[j] = v > 0.0f ? v : 0.0f;
        }
      } else {
        for (int64_t j = 0; j < cols; ++j) {
          const float v = row[j] + bv;
          row[j] = v > 0.0f ? v : 0.0f;
        }
      }
      continue;
    }
    if (e.row_bias) {
      const float bv = e.row_bias[row0 + i];
      for (int64_t j = 0; j < cols; ++j) row[j] = row[j] + bv;
    }
    if (rr)
      for (int64_t j = 0; j < cols; ++j) row[j] = row[j] + rr[j];
    if (e.relu)
      for (int64_t j = 0; j < cols; ++j) row[j] = row[j] > 0.0f ? row[j] : 0.0f;
  }
}

// op(A) [M x K] packed for the kernels of the ISA active when it was made. Two layouts,
// each made on first use (thread-safe): panels of MR rows for C with vector lanes along N,
// and NR-column tiles of op(A)^T for C with lanes along M (few columns, the batch-1 shape
// of small feature maps). The source matrix must outlive this object and not change, until
// release_source() lets it go.
class PackedMatrix {
 public:
  // Remembers op(A): A is M x K (row stride lda), or with trans K x M.
  PackedMatrix(bool trans, int64_t m, int64_t k, const float* a, int64_t lda);
  // Packs op(A) now into storage of its own (a need not outlive it): the layout for lanes
  // along N of the active ISA, or a plain copy when that ISA has no packed kernels. Such a
  // matrix only computes while that ISA is active.
  static std::unique_ptr<PackedMatrix> pack_owned(bool trans, int64_t m, int64_t k,
                                                  const float* a, int64_t lda);
  // The ISA whose kernels the layouts are for.
  Isa isa() const { return isa_; }
  PackedMatrix(const PackedMatrix&) = delete;
  PackedMatrix& operator=(const PackedMatrix&) = delete;
  // Rows of op(A).
  int64_t m() const { return m_; }
  // Columns of op(A) (the summed dimension).
  int64_t k() const { return k_; }
  // Bytes of the layouts made so far.
  int64_t packed_bytes() const;
  // Stops reading the source matrix, which may then be freed: a layout made later is
  // packed from a copy unpacked from one made before (the lanes-along-N layout is made now
  // when none is). False, and the source is still read, when the ISA has no packed kernels
  // or the matrix is too large to unpack exactly (more than 2^24 elements).
  bool release_source();
  // True once release_source() succeeded.
  bool source_released() const;
  // Writes the source matrix back into a (M x K, or with trans K x M, row stride as given at
  // construction), bit for bit, from a layout already made; throws when none is.
  void unpack(float* a) const;

 private:
  friend void run_prepacked_gemm(const PackedMatrix&, bool, int64_t, const float*, int64_t, float,
                                 float*, int64_t, const GemmEpilogue&, bool, bool,
                                 const std::function<void(float*)>*);
  friend bool gemm_prepacked_single_rows(const PackedMatrix&, int64_t, const float*,
                                         const int64_t*, float*, int64_t, const GemmEpilogue&);
  friend bool conv_prepacked_direct(const PackedMatrix&, const float*, const int64_t*, int64_t,
                                    int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, float*,
                                    int64_t, const GemmEpilogue&);
  // The layout for lanes along M (lanes_m) or along N, packed on first use.
  const float* layout(bool lanes_m) const;
  // Floats spanned by the source matrix (its last element's offset + 1).
  int64_t source_extent() const;
  // unpack() with mutex_ held.
  void unpack_locked(float* a) const;
  // The source matrix as a tensor: a_ itself (not owned) or, once released, an unpacked copy.
  Tensor source_locked(const float** src) const;
  bool trans_;
  int64_t m_, k_;
  const float* a_;
  int64_t lda_;
  Isa isa_;
  bool owned_ = false;     // made by pack_owned: a_ is unused, data_[0] holds everything
  bool released_ = false;  // release_source() succeeded: a_ is no longer read
  mutable std::mutex mutex_;  // guards making layouts, data_ and released_
  mutable std::atomic<const float*> ready_[2] = {{nullptr}, {nullptr}};
  mutable Tensor data_[2];
};

// C[M x N] = op(A) op(B) + beta * C, then the epilogue, with op(A) prepacked; op(B) is B
// (K x N, ldb) or with trans_b B^T (B N x K). Multi-threaded; same bits as gemm() followed
// by the epilogue, whatever the thread count.
void gemm_prepacked(const PackedMatrix& a, bool trans_b, int64_t n, const float* b, int64_t ldb,
                    float beta, float* c, int64_t ldc, const GemmEpilogue& epilogue = {});
// gemm_prepacked (beta 0, B not transposed) where B (K x N, row stride ldb) is made by
// make_b(dst) on every thread that computes a part of C, into storage of that thread's own,
// instead of once and shared: for a B that is cheap to make, such as the im2col of a small
// map, whose shared copy would cross between the cores' caches twice per call (written by
// both, read whole by both). make_b must write the same values on every call. Same bits as
// gemm_prepacked on that B.
void gemm_prepacked_own_b(const PackedMatrix& a, int64_t n, int64_t ldb,
                          const std::function<void(float*)>& make_b, float* c, int64_t ldc,
                          const GemmEpilogue& epilogue = {});
// gemm_prepacked on the calling thread only (for callers that split work themselves).
void gemm_prepacked_single(const PackedMatrix& a, bool trans_b, int64_t n, const float* b,
                           int64_t ldb, float beta, float* c, int64_t ldc,
                           const GemmEpilogue& epilogue = {});

// gemm_prepacked_single (beta 0) with row p of B (K x N) the N floats at b + b_rows[p]:
// rows anywhere, such as the taps of a convolution read from a prepared copy of its input,
// copied into the kernels' layout one tile of columns at a time instead of expanded whole.
// Same bits as gemm_prepacked_single on the expanded B. False, with nothing written, when
// the active ISA has no prepacked kernels or a is packed for another ISA.
bool gemm_prepacked_single_rows(const PackedMatrix& a, int64_t n, const float* b,
                                const int64_t* b_rows, float* c, int64_t ldc,
                                const GemmEpilogue& epilogue = {});

// The strides of conv_prepacked_direct's kernels: 1 or 2 pixels along a row.
constexpr int64_t kDirectConvMaxStride = 2;
// Convolves output rows [oh0, oh1) and channels [r0, r1) of one image on the calling
// thread with a's lanes-along-M layout (made now if need be): C[i][oy * ow + ox] = sum_p
// a[i][p] x[koff[p] + oy * row_step + ox * stride], then the epilogue (see DirectConvJob);
// x holds the padded input, so koff and the strides reach every tap. Same bits as
// gemm_prepacked on the im2col of x. False, with nothing written, when the active ISA has
// no direct kernels, a is packed for another ISA or by pack_owned, stride is not 1 or 2,
// or r0 is not a multiple of conv_direct_unit().
bool conv_prepacked_direct(const PackedMatrix& a, const float* x, const int64_t* koff,
                           int64_t stride, int64_t row_step, int64_t oh0, int64_t oh1, int64_t ow,
                           int64_t r0, int64_t r1, float* c, int64_t ldc,
                           const GemmEpilogue& epilogue);
// The channel unit of conv_prepacked_direct's r0 (the kernels' NR) on the active ISA; 0
// when it has no direct kernels.
int64_t conv_direct_unit();

// The "packed B" layout of a K x N right operand: the layout the panel kernels of an ISA
// read in place, with no copy per call. K is cut into the kernels' k blocks; block
// [p0, p0 + kc) starts at p0 * ldb and holds the NR-column tiles one after another, each
// kc rows of NR floats. ldb is N rounded up to NR; the columns past N are never stored
// from, so they may hold anything.
struct PackedBLayout {
  int64_t k, blocks, nr, ldb;
  // Offset of element (p, j).
  int64_t offset(int64_t p, int64_t j) const {
    // Block b starts at k * b / blocks; p's block is the last b with k * b < (p + 1) * blocks.
    const int64_t b = ((p + 1) * blocks - 1) / k;
    const int64_t p0 = k * b / blocks, kc = k * (b + 1) / blocks - p0;
    return p0 * ldb + j / nr * nr * kc + (p - p0) * nr + j % nr;
  }
  // Floats of the whole layout.
  int64_t floats() const { return k * ldb; }
};
// The packed-B layout of a K x N operand for the active ISA's prepacked kernels; throws
// when that ISA has none (scalar).
PackedBLayout packed_b_layout(int64_t k, int64_t n);
// gemm_prepacked_single with B (K x N) already in the packed-B layout of packed_b_layout
// (ldb as given there), for a matrix made by pack_owned for the active ISA.
void gemm_prepacked_single_packed_b(const PackedMatrix& a, int64_t n, const float* b, int64_t ldb,
                                    float beta, float* c, int64_t ldc);

// Whether layers prepared for inference pack their GEMM weights (default on;
// ISPLIT_PREPACK=0 in the environment turns it off, e.g. to save the memory).
bool gemm_prepack_enabled();
// Turns weight prepacking on or off for layers packed from now on.
void set_gemm_prepack(bool on);

// Applies the epilogue to rows [0, m) x columns [0, n) of C (the unpacked fallback).
void apply_epilogue(const GemmEpilogue& e, int64_t m, int64_t n, float* c, int64_t ldc);

// One ISA's prepacked kernels (engine internals; see engine/kernels/gemm_prepack.h).
struct PrepackedJob {
  bool lanes_m;           // layout and orientation: lanes along M (tiles) or N (panels)
  const float* packed;    // the layout
  int64_t m, k;           // op(A)
  int64_t r0, r1;         // rows of C to compute (r0 a multiple of the layout's row unit)
  int64_t n0, n1;         // columns of C to compute
  bool trans_b;
  const float* b;
  int64_t ldb;
  float beta;
  float* c;
  int64_t ldc;
  GemmEpilogue epilogue;
  bool b_packed = false;  // B in the packed-B layout (PackedBLayout; ldb its row floats,
                          // n0 a multiple of NR, lanes along N only)
  const int64_t* b_rows = nullptr;  // row p of B is at b + b_rows[p] (ldb unused; lanes
                                    // along N, beta 0; see gemm_prepacked_single_rows)
};
// A direct convolution of one image on weights W [M x K] in their lanes-along-M layout, for
// output rows [oh0, oh1) of ow pixels: C[i][oy * ow + ox] = sum_p W[i][p] x[koff[p] + oy *
// row_step + ox * stride], then the epilogue (bias, residual laid out like C, ReLU). x is
// the input with its padding already in place, so every tap is a plain load; the k blocks
// and the FMA order per element are those of the GEMM on the im2col of x, so the bits are
// too. See conv_prepacked_direct.
struct DirectConvJob {
  const float* packed;    // W's lanes-along-M layout
  int64_t m, k;
  const float* x;
  const int64_t* koff;    // per k, the offset of tap k for output pixel (0, 0)
  int64_t stride;         // floats of x between neighbouring output pixels of a row
  int64_t row_step;       // floats of x between output rows
  int64_t oh0, oh1, ow;
  int64_t r0, r1;         // output channels [r0, r1) (r0 a multiple of the kernels' NR)
  float* c;
  int64_t ldc;            // floats of C between output channels
  GemmEpilogue epilogue;
};
struct PrepackKernels {
  int64_t mr, nr, vl;        // micro-tile rows and columns, vector lanes
  int64_t kc;                // the k blocks' largest depth (K is cut into ceil(K / kc) near-equal blocks)
  bool lanes_m_ok;           // the kernels can write C transposed (lanes along M)
  int64_t tc_deep_max_kb;    // see packed_lanes_along_m (engine/gemm.h)
  // Floats of the layout for op(A) [m x k].
  int64_t (*floats)(bool lanes_m, int64_t m, int64_t k);
  // Writes the layout of op(A) into dst (64-byte aligned, floats() long).
  void (*pack)(bool lanes_m, bool trans_a, const float* a, int64_t lda, int64_t m, int64_t k,
               float* dst);
  // Computes one job on the calling thread.
  void (*run)(const PrepackedJob& job);
  // Computes one direct convolution job on the calling thread; null when the ISA's kernels
  // have no direct convolution (conv_prepacked_direct then says no).
  void (*run_conv)(const DirectConvJob& job);
};
// The prepacked kernels of an ISA, or null when it has none (scalar).
const PrepackKernels* prepack_kernels(Isa isa);
const PrepackKernels* prepack_kernels_avx2();
const PrepackKernels* prepack_kernels_avx512();
const PrepackKernels* prepack_kernels_neon();

}  // namespace isplit
