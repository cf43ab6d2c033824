#include "engine/gemm.h"

#include <algorithm>
#include <atomic>
#include <string>

#include "engine/gemm_prepacked.h"

#include "engine/parallel.h"
#include "engine/tensor.h"

namespace isplit {

namespace {
using Kernel = void (*)(const GemmArgs&);

Kernel kernel_for(Isa isa) {
  switch (isa) {
#if defined(ISPLIT_HAVE_X86_KERNELS)
    case Isa::Avx512: return gemm_avx512;
    case Isa::Avx2: return gemm_avx2;
#endif
#if defined(ISPLIT_HAVE_NEON_KERNELS)
    case Isa::Neon: return gemm_neon;
#endif
    default: return gemm_scalar;
  }
}

// Sub-problem covering rows [r0, r1) and columns [c0, c1) of C.
GemmArgs block(const GemmArgs& g, int64_t r0, int64_t r1, int64_t c0, int64_t c1) {
  GemmArgs s = g;
  s.m = r1 - r0;
  s.n = c1 - c0;
  s.a = g.trans_a ? g.a + r0 : g.a + r0 * g.lda;
  s.b = g.trans_b ? g.b + c0 * g.ldb : g.b + c0;
  s.c = g.c + r0 * g.ldc + c0;
  return s;
}
}  // namespace

void gemm_single(Isa isa, const GemmArgs& g) {
  if (g.m <= 0 || g.n <= 0) return;
  kernel_for(isa)(g);  // every kernel handles k == 0 (C = beta * C)
}

void gemm(const GemmArgs& g) {
  if (g.m <= 0 || g.n <= 0) return;
  const Isa isa = active_isa();
  const int threads = num_threads();
  const double flops = 2.0 * g.m * g.n * g.k;
  if (threads <= 1 || flops < 2e5) {
    gemm_single(isa, g);
    return;
  }
  // Split the longer side of C into one contiguous range of 16-wide units per thread
  // (parallel_for chooses the cut). Each thread packs its own operands once; the kernels
  // sum every element identically however C is cut, so the split never changes a result.
  const bool split_cols = g.n >= g.m;
  const int64_t len = split_cols ? g.n : g.m;
  const int64_t unit = 16;
  const int64_t units = (len + unit - 1) / unit;
  parallel_for(units, [&](int64_t ub, int64_t ue) {
    const int64_t s0 = std::min(len, ub * unit), s1 = std::min(len, ue * unit);
    if (s0 >= s1) return;
    GemmArgs s = split_cols ? block(g, 0, g.m, s0, s1) : block(g, s0, s1, 0, g.n);
    gemm_single(isa, s);
  });
}

// ------------------------------------------------------------------ prepacked left operand

namespace {
std::atomic<bool>& prepack_slot() {
  static std::atomic<bool> slot{env_switch("ISPLIT_PREPACK", true)};
  return slot;
}
}  // namespace

bool gemm_prepack_enabled() { return prepack_slot().load(); }

void set_gemm_prepack(bool on) { prepack_slot().store(on); }

const PrepackKernels* prepack_kernels(Isa isa) {
  switch (isa) {
#if defined(ISPLIT_HAVE_X86_KERNELS)
    case Isa::Avx512: return prepack_kernels_avx512();
    case Isa::Avx2: return prepack_kernels_avx2();
#endif
#if defined(ISPLIT_HAVE_NEON_KERNELS)
    case Isa::Neon: return prepack_kernels_neon();
#endif
    default: return nullptr;
  }
}

PackedMatrix::PackedMatrix(bool trans, int64_t m, int64_t k, const float* a, int64_t lda)
    : trans_(trans), m_(m), k_(k), a_(a), lda_(lda), isa_(active_isa()) {
  if (m < 0 || k < 0 || (m > 0 && k > 0 && !a))
    throw Error("PackedMatrix: invalid operand " + std::to_string(m) + "x" + std::to_string(k));
}

std::unique_ptr<PackedMatrix> PackedMatrix::pack_owned(bool trans, int64_t m, int64_t k,
                                                       const float* a, int64_t lda) {
  std::unique_ptr<PackedMatrix> p(new PackedMatrix(trans, m, k, a, lda));
  p->owned_ = true;
  if (prepack_kernels(p->isa_)) {
    (void)p->layout(false);
  } else {
    // No packed kernels: a plain row-major copy of op(A) for the generic GEMM.
    HugePageScope huge;
    Tensor plain = Tensor::empty({std::max<int64_t>(1, m * k)});
    for (int64_t i = 0; i < m; ++i)
      for (int64_t q = 0; q < k; ++q) plain[i * k + q] = trans ? a[q * lda + i] : a[i * lda + q];
    p->data_[0] = std::move(plain);
    p->trans_ = false;
    p->lda_ = std::max<int64_t>(1, k);
  }
  p->a_ = nullptr;
  return p;
}

int64_t PackedMatrix::packed_bytes() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return (data_[0].numel() + data_[1].numel()) * static_cast<int64_t>(sizeof(float));
}

int64_t PackedMatrix::source_extent() const {
  if (m_ <= 0 || k_ <= 0) return 0;
  return trans_ ? (k_ - 1) * lda_ + m_ : (m_ - 1) * lda_ + k_;
}

const float* PackedMatrix::layout(bool lanes_m) const {
  const int slot = lanes_m ? 1 : 0;
  if (const float* p = ready_[slot].load(std::memory_order_acquire)) return p;
  std::lock_guard<std::mutex> lock(mutex_);
  if (const float* p = ready_[slot].load(std::memory_order_relaxed)) return p;
  const PrepackKernels* kern = prepack_kernels(isa_);
  const float* src = nullptr;
  Tensor keep = source_locked(&src);  // an unpacked copy once the source is released
  HugePageScope huge;  // the layout is streamed from memory on every pass
  Tensor t = Tensor::zeros({kern->floats(lanes_m, m_, k_)});
  kern->pack(lanes_m, trans_, src, lda_, m_, k_, t.data());
  data_[slot] = std::move(t);
  ready_[slot].store(data_[slot].data(), std::memory_order_release);
  return data_[slot].data();
}

Tensor PackedMatrix::source_locked(const float** src) const {
  if (!released_) {
    *src = a_;
    return Tensor();
  }
  Tensor copy = Tensor::zeros({std::max<int64_t>(1, source_extent())});
  unpack_locked(copy.data());
  *src = copy.data();
  return copy;
}

bool PackedMatrix::release_source() {
  if (owned_) return true;  // pack_owned never reads a_ after packing
  const PrepackKernels* kern = prepack_kernels(isa_);
  // Unpacking packs the source offsets + 1 as floats, exact up to 2^24.
  if (!kern || source_extent() >= (int64_t{1} << 24)) return false;
  if (!ready_[0].load(std::memory_order_acquire) && !ready_[1].load(std::memory_order_acquire))
    (void)layout(false);
  std::lock_guard<std::mutex> lock(mutex_);
  released_ = true;
  return true;
}

bool PackedMatrix::source_released() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return released_ || owned_;
}

void PackedMatrix::unpack(float* a) const {
  std::lock_guard<std::mutex> lock(mutex_);
  unpack_locked(a);
}

void PackedMatrix::unpack_locked(float* a) const {
  const PrepackKernels* kern = prepack_kernels(isa_);
  const int slot = data_[0].defined() ? 0 : data_[1].defined() ? 1 : -1;
  if (!kern || slot < 0) throw Error("PackedMatrix::unpack: no layout has been made");
  const int64_t extent = source_extent();
  if (extent >= (int64_t{1} << 24))
    throw Error("PackedMatrix::unpack: " + std::to_string(extent) + " elements, more than 2^24");
  // Where each element of the layout came from: pack the offsets (+ 1, 0 is padding).
  Tensor offsets = Tensor::empty({std::max<int64_t>(1, extent)});
  for (int64_t i = 0; i < extent; ++i) offsets.data()[i] = static_cast<float>(i + 1);
  const Tensor& packed = data_[slot];
  Tensor where = Tensor::zeros({packed.numel()});
  kern->pack(slot == 1, trans_, offsets.data(), lda_, m_, k_, where.data());
  const float* w = where.data();
  const float* v = packed.data();
  for (int64_t p = 0; p < packed.numel(); ++p)
    if (w[p] > 0.0f) a[static_cast<int64_t>(w[p]) - 1] = v[p];
}

namespace {
// The epilogue on rows [r0, r1) of C.
void epilogue_rows(const GemmEpilogue& e, int64_t r0, int64_t r1, int64_t n, float* c,
                   int64_t ldc) {
  epilogue_block(e, r0, r1 - r0, n, c + r0 * ldc, ldc, e.residual ? e.residual + r0 * ldc : nullptr);
}

// The epilogue on the calling thread.
void gemm_pack_epilogue(const GemmEpilogue& e, int64_t m, int64_t n, float* c, int64_t ldc) {
  if (e.any()) epilogue_rows(e, 0, m, n, c, ldc);
}
}  // namespace

void apply_epilogue(const GemmEpilogue& e, int64_t m, int64_t n, float* c, int64_t ldc) {
  if (!e.any()) return;
  parallel_for(m, [&](int64_t r0, int64_t r1) { epilogue_rows(e, r0, r1, n, c, ldc); });
}

void run_prepacked_gemm(const PackedMatrix& a, bool trans_b, int64_t n, const float* b,
                        int64_t ldb, float beta, float* c, int64_t ldc,
                        const GemmEpilogue& epilogue, bool threaded, bool b_packed,
                        const std::function<void(float*)>* prepare) {
  const int64_t m = a.m_, k = a.k_;
  if (m <= 0 || n <= 0) return;
  // With prepare, B made once on the calling thread, for the paths that do not split the
  // work between threads below.
  Tensor shared;
  auto b_once = [&]() {
    if (!prepare) return b;
    shared = Tensor::empty({k * ldb});
    (*prepare)(shared.data());
    return static_cast<const float*>(shared.data());
  };
  const Isa isa = active_isa();
  if (a.owned_ && isa != a.isa_)
    throw Error("gemm_prepacked: matrix packed for " + isa_name(a.isa_) + " kernels, active ISA is " +
                isa_name(isa));
  const PrepackKernels* kern = prepack_kernels(isa);
  if (b_packed && (!kern || !a.owned_ || trans_b || ldb % kern->nr != 0 || ldb < n))
    throw Error("gemm_prepacked: a packed B needs an owned matrix, the active ISA's prepacked "
                "kernels and a row of whole tiles");
  if (!kern || isa != a.isa_) {
    // No layout for this ISA (scalar kernels, or the ISA was switched since packing).
    Tensor copy;  // the source unpacked, once released
    const float* src = a.owned_ ? a.data_[0].data() : a.a_;
    if (!a.owned_) {
      std::lock_guard<std::mutex> lock(a.mutex_);
      copy = a.source_locked(&src);  // a_ itself until released
    }
    const GemmArgs g{a.trans_, trans_b, m, n, k, src, a.lda_, b_once(), ldb, beta, c, ldc};
    if (threaded) {
      gemm(g);
      apply_epilogue(epilogue, m, n, c, ldc);
    } else {
      gemm_single(isa, g);
      gemm_pack_epilogue(epilogue, m, n, c, ldc);
    }
    return;
  }
  // The orientation rule of gemm_packed() (never lanes along M for an owned matrix, which
  // has only the other layout).
  const bool lanes_m = !a.owned_ && !b_packed && kern->lanes_m_ok &&
                       packed_lanes_along_m(m, n, k, kern->vl, kern->nr, kern->kc, kern->tc_deep_max_kb);
  PrepackedJob job{lanes_m, a.layout(lanes_m), m, k, 0, m, 0, n, trans_b, b, ldb, beta, c, ldc,
                   epilogue, b_packed};
  const int threads = threaded ? num_threads() : 1;
  if (threads <= 1 || 2.0 * m * n * k < 2e5) {
    job.b = b_once();
    kern->run(job);
    return;
  }
  // Threads take whole row units of the layout (tiles or panels), or column ranges in
  // multiples of NR when C is wider than tall; the sums never depend on the cut.
  const int64_t row_unit = lanes_m ? kern->nr : kern->mr;
  const bool split_cols = !lanes_m && n >= m;
  const int64_t unit = split_cols ? kern->nr : row_unit;
  const int64_t len = split_cols ? n : m;
  // parallel_for gives each thread one contiguous range of units (where it cuts is its
  // choice: see engine/parallel.cpp).
  const int64_t units = (len + unit - 1) / unit;
  // Tells this call's B, made per thread, from the one a thread made for an earlier call.
  static std::atomic<uint64_t> calls{0};
  const uint64_t call = prepare ? ++calls : 0;
  auto body = [&](int64_t ub, int64_t ue) {
    const int64_t s0 = std::min(len, ub * unit), s1 = std::min(len, ue * unit);
    if (s0 >= s1) return;
    PrepackedJob part = job;
    if (prepare) {
      // This thread's own B, made in its own cache and read from there, once per call
      // however many parts the thread runs.
      thread_local Tensor own;
      thread_local uint64_t made = 0;
      if (own.numel() < k * ldb) {
        own = Tensor::empty({k * ldb});
        made = 0;
      }
      if (made != call) {
        made = 0;  // not valid until made (prepare may throw)
        (*prepare)(own.data());
        made = call;
      }
      part.b = own.data();
    }
    if (split_cols) {
      part.n0 = s0;
      part.n1 = s1;
    } else {
      part.r0 = s0;
      part.r1 = s1;
    }
    kern->run(part);
  };
  parallel_for(units, body);
}

void gemm_prepacked(const PackedMatrix& a, bool trans_b, int64_t n, const float* b, int64_t ldb,
                    float beta, float* c, int64_t ldc, const GemmEpilogue& epilogue) {
  run_prepacked_gemm(a, trans_b, n, b, ldb, beta, c, ldc, epilogue, true, false, nullptr);
}

void gemm_prepacked_own_b(const PackedMatrix& a, int64_t n, int64_t ldb,
                          const std::function<void(float*)>& make_b, float* c, int64_t ldc,
                          const GemmEpilogue& epilogue) {
  if (ldb < n) throw Error("gemm_prepacked_own_b: B's row stride is less than its width");
  run_prepacked_gemm(a, false, n, nullptr, ldb, 0.0f, c, ldc, epilogue, true, false, &make_b);
}

void gemm_prepacked_single(const PackedMatrix& a, bool trans_b, int64_t n, const float* b,
                           int64_t ldb, float beta, float* c, int64_t ldc,
                           const GemmEpilogue& epilogue) {
  run_prepacked_gemm(a, trans_b, n, b, ldb, beta, c, ldc, epilogue, false, false, nullptr);
}

int64_t conv_direct_unit() {
  const PrepackKernels* kern = prepack_kernels(active_isa());
  return kern && kern->run_conv ? kern->nr : 0;
}

bool conv_prepacked_direct(const PackedMatrix& a, const float* x, const int64_t* koff,
                           int64_t stride, int64_t row_step, int64_t oh0, int64_t oh1, int64_t ow,
                           int64_t r0, int64_t r1, float* c, int64_t ldc,
                           const GemmEpilogue& epilogue) {
  const Isa isa = active_isa();
  const PrepackKernels* kern = prepack_kernels(isa);
  if (!kern || !kern->run_conv || isa != a.isa_ || a.owned_ || stride < 1 ||
      stride > kDirectConvMaxStride || r0 % kern->nr != 0)
    return false;
  r1 = std::min(r1, a.m_);
  if (r1 <= r0 || oh1 <= oh0 || ow <= 0) return true;
  const DirectConvJob job{a.layout(true), a.m_, a.k_, x, koff, stride, row_step, oh0, oh1, ow,
                          r0, r1, c, ldc, epilogue};
  kern->run_conv(job);
  return true;
}

bool gemm_prepacked_single_rows(const PackedMatrix& a, int64_t n, const float* b,
                                const int64_t* b_rows, float* c, int64_t ldc,
                                const GemmEpilogue& epilogue) {
  const Isa isa = active_isa();
  const PrepackKernels* kern = prepack_kernels(isa);
  if (!kern || isa != a.isa_) return false;
  if (a.m_ <= 0 || n <= 0) return true;
  const PrepackedJob job{false, a.layout(false), a.m_, a.k_, 0, a.m_, 0, n, false, b, 0, 0.0f,
                         c, ldc, epilogue, false, b_rows};
  kern->run(job);
  return true;
}

PackedBLayout packed_b_layout(int64_t k, int64_t n) {
  const PrepackKernels* kern = prepack_kernels(active_isa());
  if (!kern) throw Error("packed_b_layout: " + isa_name(active_isa()) + " has no prepacked kernels");
  const int64_t nr = kern->nr;
  return PackedBLayout{k, std::max<int64_t>(1, (k + kern->kc - 1) / kern->kc), nr,
                       std::max<int64_t>(nr, (n + nr - 1) / nr * nr)};
}

void gemm_prepacked_single_packed_b(const PackedMatrix& a, int64_t n, const float* b, int64_t ldb,
                                    float beta, float* c, int64_t ldc) {
  run_prepacked_gemm(a, false, n, b, ldb, beta, c, ldc, GemmEpilogue{}, false, true, nullptr);
}

}  // namespace isplit
