#include "layers/functional.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <string>
#include <type_traits>

#include "engine/gemm.h"
#include "engine/gemm_prepacked.h"
#include "engine/kernels/eltwise.h"
#include "engine/parallel.h"
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace isplit {

namespace {

void require4(const Tensor& x, const char* op) {
  if (x.ndim() != 4)
    throw Error(std::string(op) + ": expected a 4-d NCHW tensor, got " + shape_str(x.shape()));
}

// The output columns [lo, hi) of a row whose tap column j reads inside an input row of
// width w (ix = x0 * stride_w + off in [0, w)), and that offset off.
struct ColSpan {
  int64_t lo, hi, off;
};
// The outputs [lo, hi) of [0, n) whose input column sw * x + off lies in [0, w).
inline ColSpan span_inside(int64_t off, int64_t sw, int64_t w, int64_t n) {
  const int64_t lo = std::clamp<int64_t>(off >= 0 ? 0 : (-off + sw - 1) / sw, 0, n);
  const int64_t hi = std::clamp<int64_t>(w - off <= 0 ? 0 : (w - off + sw - 1) / sw, lo, n);
  return {lo, hi, off};
}
// The ColSpan of tap column j.
inline ColSpan col_span(int64_t j, int64_t w, int64_t ow, const Conv2dSpec& s) {
  return span_inside(j * s.dil_w - s.pad_w, s.stride_w, w, ow);
}

// Writes output row y of tap (i, j) of one channel xc [h, w] into drow [ow], given the
// tap column's span c = col_span(j, ...); taps outside the image are zero.
inline void im2col_row(const float* xc, int64_t h, int64_t w, int64_t y, int64_t i,
                       const ColSpan& c, int64_t ow, const Conv2dSpec& s, float* drow) {
  const int64_t iy = y * s.stride_h - s.pad_h + i * s.dil_h;
  if (iy < 0 || iy >= h) {
    std::fill(drow, drow + ow, 0.0f);
    return;
  }
  const float* src = xc + iy * w;
  std::fill(drow, drow + c.lo, 0.0f);
  if (s.stride_w == 1) {
    std::copy(src + c.lo + c.off, src + c.hi + c.off, drow + c.lo);  // a contiguous run
  } else if (s.stride_w == 2) {  // a constant stride the compiler vectorises (the stem, downsampling)
    for (int64_t x0 = c.lo; x0 < c.hi; ++x0) drow[x0] = src[2 * x0 + c.off];
  } else {
    for (int64_t x0 = c.lo; x0 < c.hi; ++x0) drow[x0] = src[x0 * s.stride_w + c.off];
  }
  std::fill(drow + c.hi, drow + ow, 0.0f);
}

// Adds srow [ow], output row y of tap (i, j), into the rows of gc [h, w] it was read from
// (the adjoint of im2col_row). Each gc element gets its terms in the order of the calls.
inline void col2im_row_add(const float* srow, int64_t h, int64_t w, int64_t y, int64_t i,
                           const ColSpan& c, const Conv2dSpec& s, float* gc) {
  const int64_t iy = y * s.stride_h - s.pad_h + i * s.dil_h;
  if (iy < 0 || iy >= h) return;
  float* g = gc + iy * w;
  if (s.stride_w == 1) {
    for (int64_t x0 = c.lo; x0 < c.hi; ++x0) g[x0 + c.off] += srow[x0];
  } else if (s.stride_w == 2) {
    for (int64_t x0 = c.lo; x0 < c.hi; ++x0) g[2 * x0 + c.off] += srow[x0];
  } else {
    for (int64_t x0 = c.lo; x0 < c.hi; ++x0) g[x0 * s.stride_w + c.off] += srow[x0];
  }
}

// Copies the receptive fields of output rows [y0, y1) of one image and one group into
// col [K, (y1-y0)*OW], K = (Cin/g) * kh * kw; out-of-image taps are zero.
void im2col_rows(const float* x, int64_t channels, int64_t h, int64_t w, int64_t y0, int64_t y1,
                 int64_t ow, const Conv2dSpec& s, float* col) {
  const int64_t taps = s.kh * s.kw, rows = y1 - y0;
  // The spans of the kw tap columns, and (c, i, j) stepped along the rows of col instead
  // of divided out of each: with the stem's one-row bands the divisions cost more than
  // the copies.
  thread_local std::vector<ColSpan> span_buffer;  // no allocation per call in steady state
  span_buffer.resize(static_cast<size_t>(s.kw));
  for (int64_t j = 0; j < s.kw; ++j) span_buffer[static_cast<size_t>(j)] = col_span(j, w, ow, s);
  // A reference, so that the workers read this thread's spans (a lambda does not capture a
  // thread_local: named inside the body it would be the worker's own, empty one).
  const std::vector<ColSpan>& spans = span_buffer;
  parallel_for(channels * taps, [&](int64_t b, int64_t e) {
    int64_t c = b / taps, i = (b % taps) / s.kw, j = b % s.kw;
    for (int64_t r = b; r < e; ++r) {
      const float* xc = x + c * h * w;
      float* dst = col + r * rows * ow;
      for (int64_t y = y0; y < y1; ++y)
        im2col_row(xc, h, w, y, i, spans[static_cast<size_t>(j)], ow, s, dst + (y - y0) * ow);
      if (++j == s.kw) {
        j = 0;
        if (++i == s.kh) {
          i = 0;
          ++c;
        }
      }
    }
  });
}

// Copies the receptive fields of one image and one group into col [K, OH*OW].
void im2col(const float* x, int64_t channels, int64_t h, int64_t w, int64_t oh, int64_t ow,
            const Conv2dSpec& s, float* col) {
  im2col_rows(x, channels, h, w, 0, oh, ow, s, col);
}

// Output rows per im2col band in the forward pass: the column buffer of a large layer
// (VGG16's second convolution at 224x224 would need 116 MB) is filled and multiplied a band
// of rows at a time, bounded by kBandBytes, so an inference head's peak memory stays near
// its activations. The GEMM sums every element in the same order whatever its column
// count, so banding never changes a result.
constexpr int64_t kBandBytes = int64_t{4} << 20;
int64_t band_rows(int64_t k, int64_t oh, int64_t ow) {
  return std::clamp<int64_t>(kBandBytes / (k * ow * int64_t(sizeof(float))), 1, oh);
}

// Weights at most this large take the per-thread bands of conv2d_forward_packed (each
// band re-reads them; small ones stay in cache).
constexpr int64_t kFusedWeightBytes = int64_t{256} << 10;
// Output rows per per-thread band: columns of about 128 KB, which stay in a core's L2
// while its kernels read them.
int64_t fused_band_rows(int64_t k, int64_t oh, int64_t ow) {
  constexpr int64_t kFusedBandBytes = int64_t{128} << 10;
  return std::clamp<int64_t>(kFusedBandBytes / (k * ow * int64_t(sizeof(float))), 1, oh);
}

// The input of a band of output rows as the rows-GEMM reads it (conv2d_forward_packed's
// per-thread bands): per channel and column phase f (0 <= f < stride), the rows the band's
// taps reach, column j holding input column stride * j + f - pad (zero outside the image,
// as the padding). Tap (c, i, j) of output pixel (oy, ox) is then q[offsets[tap] + (oy -
// y0) * stride_h * cols + ox]: for a fixed tap, an output row's pixels are a contiguous run.
struct TapRows {
  bool on = false;
  int64_t rows = 0, cols = 0;     // of each (channel, phase) plane of q
  std::vector<int64_t> offsets;   // per row of B (im2col order: channel, tap row, tap column)
  const Conv2dSpec& s;
  int64_t h, w;

  TapRows(const Conv2dSpec& spec, const PackedMatrix& pw, int64_t in_h, int64_t in_w, int64_t ow,
          int64_t band)
      : s(spec), h(in_h), w(in_w) {
    // Only for a K of one k block (the stem's 147, VGG16's first 27): a tile of B through
    // all of K then stays in L1 beside the panels. VGG16's second layer (K = 576) was 4 %
    // slower this way than with its im2col of contiguous rows.
    const PrepackKernels* kern = prepack_kernels(active_isa());
    on = kern && pw.isa() == active_isa() && pw.k() <= kern->kc;
    if (!on) return;
    rows = (band - 1) * s.stride_h + (s.kh - 1) * s.dil_h + 1;
    cols = ((ow - 1) * s.stride_w + (s.kw - 1) * s.dil_w) / s.stride_w + 1;
    offsets.resize(static_cast<size_t>(s.in_channels * s.kh * s.kw));
    size_t p = 0;
    for (int64_t c = 0; c < s.in_channels; ++c)
      for (int64_t i = 0; i < s.kh; ++i)
        for (int64_t j = 0; j < s.kw; ++j) {
          const int64_t dx = j * s.dil_w;
          offsets[p++] = ((c * s.stride_w + dx % s.stride_w) * rows + i * s.dil_h) * cols + dx / s.stride_w;
        }
  }
  // Floats of q.
  int64_t floats() const { return s.in_channels * s.stride_w * rows * cols; }
  // Writes q for output rows [y0, y1) of image xi [Cin, h, w].
  void fill(const float* xi, int64_t y0, int64_t y1, float* q) const {
    const int64_t used = (y1 - y0 - 1) * s.stride_h + (s.kh - 1) * s.dil_h + 1;
    for (int64_t c = 0; c < s.in_channels; ++c)
      for (int64_t f = 0; f < s.stride_w; ++f)
        for (int64_t r = 0; r < used; ++r) {
          float* d = q + ((c * s.stride_w + f) * rows + r) * cols;
          const int64_t iy = y0 * s.stride_h - s.pad_h + r;
          if (iy < 0 || iy >= h) {
            std::fill(d, d + cols, 0.0f);
            continue;
          }
          const float* src = xi + (c * h + iy) * w;
          // Column j reads input column stride * j + f - pad.
          const int64_t sw = s.stride_w;
          const ColSpan in = span_inside(f - s.pad_w, sw, w, cols);
          std::fill(d, d + in.lo, 0.0f);
          if (sw == 2) {
            for (int64_t j = in.lo; j < in.hi; ++j) d[j] = src[2 * j + in.off];
          } else {
            for (int64_t j = in.lo; j < in.hi; ++j) d[j] = src[j * sw + in.off];
          }
          std::fill(d + in.hi, d + cols, 0.0f);
        }
  }
};

// Adds col [K, OH*OW] back into the image gradient (the adjoint of im2col); zero_first:
// each channel is zeroed first, by the thread that adds into it.
void col2im_add(const float* col, int64_t channels, int64_t h, int64_t w, int64_t oh,
                int64_t ow, const Conv2dSpec& s, float* gx, bool zero_first) {
  const int64_t taps = s.kh * s.kw;
  // One thread per channel: taps of one channel overlap, channels never do.
  parallel_for(channels, [&](int64_t b, int64_t e) {
    for (int64_t c = b; c < e; ++c) {
      float* gc = gx + c * h * w;
      if (zero_first) std::fill(gc, gc + h * w, 0.0f);
      for (int64_t t = 0; t < taps; ++t) {
        const ColSpan span = col_span(t % s.kw, w, ow, s);
        const float* src = col + (c * taps + t) * oh * ow;
        for (int64_t y = 0; y < oh; ++y) col2im_row_add(src + y * ow, h, w, y, t / s.kw, span, s, gc);
      }
    }
  });
}

// The GEMM right-hand side of one image and group: the input itself for a pointwise
// convolution, else its im2col expansion written into col.
const float* conv_columns(const float* xg, int64_t cin_g, int64_t h, int64_t w, int64_t oh,
                          int64_t ow, const Conv2dSpec& s, bool direct, Tensor& col) {
  if (direct) return xg;
  im2col(xg, cin_g, h, w, oh, ow, s, col.data());
  return col.data();
}

bool is_pointwise(const Conv2dSpec& s) {
  return s.kh == 1 && s.kw == 1 && s.stride_h == 1 && s.stride_w == 1 && s.pad_h == 0 &&
         s.pad_w == 0;
}

// Small feature maps: one GEMM per image would have only OH*OW columns and re-read
// the whole weight matrix for every image (at 32x32 inputs ResNet-50's last stages have
// 1-4 output pixels). Below this many output pixels, images are processed in chunks whose
// columns sit side by side in one [K, nb*OH*OW] matrix, so that a GEMM sees at least
// kBatchColumns columns. Chunks depend only on the shapes, so results stay reproducible.
constexpr int64_t kBatchedBelow = 256;
constexpr int64_t kBatchColumns = 512;

// Images per chunk for n images of hw output pixels; 0: the per-image path. The choice
// depends on the layer shape only, never on n, so that an image gets the same bits
// whatever batch it is in (the GEMM sums every element in the same order however many
// columns it has; a per-image path adding into gx with beta = 1 would round differently).
int64_t images_per_chunk(int64_t n, int64_t hw, int64_t groups) {
  if (groups != 1 || hw >= kBatchedBelow) return 0;
  return std::max<int64_t>(1, std::min<int64_t>(n, (kBatchColumns + hw - 1) / hw));
}

// Output rows of `OW` columns from a zero-padded plane, every `SW`-th element of rows
// `src_step` apart. A unit stride is a fixed-size memcpy (one or two vector moves; the
// element loop was compiled to scalar moves). With SSE a stride of 2 picks the even
// elements of vector pairs, reading one float past the last one it keeps (the plane has
// kPlaneSlack floats of room after its end). Small-map 3x3 layers at 4x4 and 8x8 lost
// 7-13 % of their GEMM's time to this expansion before; about half of that is gone.
constexpr int64_t kPlaneSlack = 8;
template <int OW, int SW>
inline void plane_rows(const float* src, int64_t src_step, int64_t rows, float* dst) {
  for (int64_t y = 0; y < rows; ++y, src += src_step, dst += OW) {
    if constexpr (SW == 1) {
      std::memcpy(dst, src, OW * sizeof(float));
    } else {
#if defined(__SSE2__)
      if constexpr (SW == 2 && OW % 4 == 0) {
        for (int q = 0; q < OW; q += 4)
          _mm_storeu_ps(dst + q, _mm_shuffle_ps(_mm_loadu_ps(src + 2 * q), _mm_loadu_ps(src + 2 * q + 4),
                                                _MM_SHUFFLE(2, 0, 2, 0)));
        continue;
      }
#endif
      for (int q = 0; q < OW; ++q) dst[q] = src[q * SW];
    }
  }
}

// Receptive fields of one channel of one image, read from `plane`: the channel copied
// into the middle of a zero border (set once), so that every tap's output row is a fixed
// width copy with no test per element.
struct PaddedPlane {
  int64_t ph, pw;          // plane rows and columns: what the taps read
  int64_t y0, y1, x0, x1;  // the plane rows and columns that hold image rows and columns

  PaddedPlane(int64_t h, int64_t w, int64_t oh, int64_t ow, const Conv2dSpec& s)
      : ph((oh - 1) * s.stride_h + (s.kh - 1) * s.dil_h + 1),
        pw((ow - 1) * s.stride_w + (s.kw - 1) * s.dil_w + 1),
        y0(std::clamp<int64_t>(s.pad_h, 0, ph)),
        y1(std::clamp<int64_t>(s.pad_h + h, y0, ph)),
        x0(std::clamp<int64_t>(s.pad_w, 0, pw)),
        x1(std::clamp<int64_t>(s.pad_w + w, x0, pw)) {}

  // Copies channel xc [h, w] into plane (whose border is already zero).
  void fill(const float* xc, int64_t w, const Conv2dSpec& s, float* plane) const {
    const float* src = xc + (y0 - s.pad_h) * w + (x0 - s.pad_w);
    float* dst = plane + y0 * pw + x0;
    const int64_t n = x1 - x0;
    // Rows of the common widths as fixed-size copies (no library call per short row).
    auto rows = [&](auto width) {
      for (int64_t y = y0; y < y1; ++y, src += w, dst += pw) std::memcpy(dst, src, width * sizeof(float));
    };
    if (n == 4) return rows(std::integral_constant<int64_t, 4>{});
    if (n == 8) return rows(std::integral_constant<int64_t, 8>{});
    if (n == 16) return rows(std::integral_constant<int64_t, 16>{});
    rows(n);
  }

  // Writes the [oh, ow] block of tap (i, j) of the expansion to dst.
  void tap(const float* plane, int64_t i, int64_t j, int64_t oh, int64_t ow, const Conv2dSpec& s,
           float* dst) const {
    const float* base = plane + i * s.dil_h * pw + j * s.dil_w;
    const int64_t sw = s.stride_w, step = s.stride_h * pw;
    if (ow == 8 && sw == 1) return plane_rows<8, 1>(base, step, oh, dst);
    if (ow == 8 && sw == 2) return plane_rows<8, 2>(base, step, oh, dst);
    if (ow == 4 && sw == 1) return plane_rows<4, 1>(base, step, oh, dst);
    if (ow == 4 && sw == 2) return plane_rows<4, 2>(base, step, oh, dst);
    for (int64_t y = 0; y < oh; ++y, dst += ow) {
      const float* src = base + y * step;
      for (int64_t q = 0; q < ow; ++q) dst[q] = src[q * sw];
    }
  }
};

// For each tap t and output pixel q of a [h, w] input, the input pixel the tap reads
// (at t * oh * ow + q), or -1 where it falls on the padding.
std::vector<int32_t> tap_sources(int64_t h, int64_t w, int64_t oh, int64_t ow, const Conv2dSpec& s) {
  const int64_t taps = s.kh * s.kw, hw = oh * ow;
  std::vector<int32_t> src(static_cast<size_t>(taps * hw));
  for (int64_t t = 0; t < taps; ++t)
    for (int64_t y = 0; y < oh; ++y)
      for (int64_t x0 = 0; x0 < ow; ++x0) {
        const int64_t iy = y * s.stride_h - s.pad_h + (t / s.kw) * s.dil_h;
        const int64_t ix = x0 * s.stride_w - s.pad_w + (t % s.kw) * s.dil_w;
        src[static_cast<size_t>(t * hw + y * ow + x0)] =
            iy >= 0 && iy < h && ix >= 0 && ix < w ? static_cast<int32_t>(iy * w + ix) : -1;
      }
  return src;
}

// Output maps at least this wide go through a PaddedPlane; narrower ones (ResNet-50's 2x2
// at 64x64) through a table of source offsets, which was faster there.
constexpr int64_t kPlaneMinWidth = 4;

// The GEMM right-hand side of images [img0, img0+nb): B[K, nb*hw], image j's columns at
// j*hw (its im2col expansion, or its channels for a pointwise convolution). Split by
// channels between the threads, or all on the calling thread when on_this_thread.
void columns_batch(const Tensor& x, int64_t img0, int64_t nb, int64_t oh, int64_t ow,
                   const Conv2dSpec& s, bool direct, float* out, bool on_this_thread = false) {
  const int64_t cin = s.in_channels, h = x.dim(2), w = x.dim(3), hw = oh * ow;
  const int64_t taps = direct ? 1 : s.kh * s.kw, ld = nb * hw;
  auto over_channels = [&](const std::function<void(int64_t, int64_t)>& body) {
    if (on_this_thread)
      body(0, cin);
    else
      parallel_for(cin, body);
  };
  if (!direct && ow >= kPlaneMinWidth) {
    // Same values as the table below (copies and zeros), 1.3-4.7x faster on 4x4 to 16x16
    // maps with stride 1 or 2 (one thread, Zen 3; docs/benchmarks.md).
    const PaddedPlane pp(h, w, oh, ow, s);
    over_channels([&](int64_t b, int64_t e) {
      thread_local std::vector<float> plane;  // no allocation per call in steady state
      plane.assign(static_cast<size_t>(pp.ph * pp.pw + kPlaneSlack), 0.0f);
      for (int64_t c = b; c < e; ++c)
        for (int64_t im = 0; im < nb; ++im) {
          pp.fill(x.data() + ((img0 + im) * cin + c) * h * w, w, s, plane.data());
          // Taps by (row, column), with no division per tap.
          float* dst = out + c * taps * ld + im * hw;
          for (int64_t i = 0; i < s.kh; ++i)
            for (int64_t j = 0; j < s.kw; ++j, dst += ld) pp.tap(plane.data(), i, j, oh, ow, s, dst);
        }
    });
    return;
  }
  // Narrow maps: where each (tap, output pixel) reads from, worked out once for all
  // channels and images, so the copy is one tight loop.
  const std::vector<int32_t> from = direct ? std::vector<int32_t>() : tap_sources(h, w, oh, ow, s);
  over_channels([&](int64_t b, int64_t e) {
    for (int64_t c = b; c < e; ++c)
      for (int64_t im = 0; im < nb; ++im) {
        const float* xc = x.data() + ((img0 + im) * cin + c) * h * w;
        if (direct) {
          std::copy(xc, xc + hw, out + c * ld + im * hw);
          continue;
        }
        for (int64_t t = 0; t < taps; ++t) {
          float* dst = out + (c * taps + t) * ld + im * hw;
          const int32_t* f = from.data() + t * hw;
          for (int64_t q = 0; q < hw; ++q) dst[q] = f[q] >= 0 ? xc[f[q]] : 0.0f;
        }
      }
  });
}

// Gathers rows [C, hw] of images [img0, img0+nb) of t [N, C, hw] into m [C, nb*hw].
void gather_images(const Tensor& t, int64_t img0, int64_t nb, float* m) {
  const int64_t c = t.dim(1), hw = t.dim(2) * t.dim(3);
  parallel_for(c, [&](int64_t b, int64_t e) {
    for (int64_t ch = b; ch < e; ++ch)
      for (int64_t im = 0; im < nb; ++im) {
        const float* src = t.data() + ((img0 + im) * c + ch) * hw;
        std::copy(src, src + hw, m + ch * nb * hw + im * hw);
      }
  });
}

// The inverse of gather_images: t[img0+j, ch, :] = m[ch, j*hw...] (+ bias[ch]), or
// += when accumulate.
void scatter_images(const float* m, int64_t img0, int64_t nb, const Tensor* bias, bool accumulate,
                    Tensor& t) {
  const int64_t c = t.dim(1), hw = t.dim(2) * t.dim(3);
  parallel_for(c, [&](int64_t b, int64_t e) {
    for (int64_t ch = b; ch < e; ++ch) {
      const float bv = bias ? (*bias)[ch] : 0.0f;
      for (int64_t im = 0; im < nb; ++im) {
        const float* src = m + ch * nb * hw + im * hw;
        float* dst = t.data() + ((img0 + im) * c + ch) * hw;
        if (accumulate)
          for (int64_t i = 0; i < hw; ++i) dst[i] += src[i];
        else if (bias)
          for (int64_t i = 0; i < hw; ++i) dst[i] = src[i] + bv;
        else
          std::copy(src, src + hw, dst);
      }
    }
  });
}

// Output maps narrower than this go through col2im_add_batch's table of destinations.
constexpr int64_t kCol2imTableWidth = 8;

// Adds gcol [K, nb*hw] (image j at column j*hw) back into images [img0, img0+nb) of gx;
// zero_first: each of their channels is zeroed first, by the thread that adds into it.
void col2im_add_batch(const float* gcol, int64_t img0, int64_t nb, int64_t oh, int64_t ow,
                      const Conv2dSpec& s, Tensor& gx, bool zero_first) {
  const int64_t cin = s.in_channels, h = gx.dim(2), w = gx.dim(3), hw = oh * ow;
  const int64_t taps = s.kh * s.kw, ld = nb * hw;
  // Narrow maps (ResNet-50's last stages at 64x64): where each (tap, output pixel) adds
  // to, worked out once, so each channel is one tight loop instead of a span computed per
  // tap and row. The terms reach each element in the same order either way.
  const std::vector<int32_t> to =
      ow < kCol2imTableWidth ? tap_sources(h, w, oh, ow, s) : std::vector<int32_t>();
  // One thread per channel: taps of one channel overlap, channels never do.
  parallel_for(cin, [&](int64_t b, int64_t e) {
    for (int64_t c = b; c < e; ++c)
      for (int64_t im = 0; im < nb; ++im) {
        float* gc = gx.data() + ((img0 + im) * cin + c) * h * w;
        if (zero_first) std::fill(gc, gc + h * w, 0.0f);
        for (int64_t t = 0; t < taps; ++t) {
          const float* src = gcol + (c * taps + t) * ld + im * hw;
          if (!to.empty()) {
            const int32_t* f = to.data() + t * hw;
            for (int64_t q = 0; q < hw; ++q)
              if (f[q] >= 0) gc[f[q]] += src[q];
            continue;
          }
          const ColSpan span = col_span(t % s.kw, w, ow, s);
          for (int64_t y = 0; y < oh; ++y) col2im_row_add(src + y * ow, h, w, y, t / s.kw, span, s, gc);
        }
      }
  });
}

void check_conv(const Tensor& x, const Tensor& w, const Tensor* b, const Conv2dSpec& s) {
  require4(x, "conv2d");
  if (s.groups <= 0 || s.in_channels % s.groups || s.out_channels % s.groups)
    throw Error("conv2d: channels " + std::to_string(s.in_channels) + "->" +
                std::to_string(s.out_channels) + " not divisible by groups " +
                std::to_string(s.groups));
  if (x.dim(1) != s.in_channels)
    throw Error("conv2d: input has " + std::to_string(x.dim(1)) + " channels, expected " +
                std::to_string(s.in_channels));
  check_shape(w, {s.out_channels, s.in_channels / s.groups, s.kh, s.kw}, "conv2d weight");
  if (b) check_shape(*b, {s.out_channels}, "conv2d bias");
}

}  // namespace

Shape conv2d_out_shape(const Shape& x, const Conv2dSpec& s) {
  if (x.size() != 4) throw Error("conv2d: expected a 4-d NCHW input, got " + shape_str(x));
  if (s.kh <= 0 || s.kw <= 0 || s.stride_h <= 0 || s.stride_w <= 0 || s.dil_h <= 0 ||
      s.dil_w <= 0 || s.pad_h < 0 || s.pad_w < 0)
    throw Error("conv2d: invalid kernel/stride/padding/dilation");
  const int64_t eh = s.dil_h * (s.kh - 1) + 1, ew = s.dil_w * (s.kw - 1) + 1;
  const int64_t oh = (x[2] + 2 * s.pad_h - eh) / s.stride_h + 1;
  const int64_t ow = (x[3] + 2 * s.pad_w - ew) / s.stride_w + 1;
  if (x[2] + 2 * s.pad_h < eh || x[3] + 2 * s.pad_w < ew || oh <= 0 || ow <= 0)
    throw Error("conv2d: input " + shape_str(x) + " is smaller than the kernel");
  return {x[0], s.out_channels, oh, ow};
}

Tensor conv2d_forward(const Tensor& x, const Tensor& w, const Tensor* b, const Conv2dSpec& s) {
  check_conv(x, w, b, s);
  const Shape os = conv2d_out_shape(x.shape(), s);
  Tensor y = Tensor::empty(os);
  const int64_t n = x.dim(0), h = x.dim(2), wd = x.dim(3), oh = os[2], ow = os[3];
  const int64_t g = s.groups, cin_g = s.in_channels / g, cout_g = s.out_channels / g;
  const int64_t k = cin_g * s.kh * s.kw, hw = oh * ow;
  const bool direct = is_pointwise(s);
  const int64_t nb = images_per_chunk(n, hw, g);
  if (nb > 0) {
    const int64_t k1 = s.in_channels * s.kh * s.kw;
    Tensor cols = Tensor::empty({k1 * nb * hw}), out = Tensor::empty({s.out_channels * nb * hw});
    for (int64_t img0 = 0; img0 < n; img0 += nb) {
      const int64_t m = std::min(nb, n - img0);
      columns_batch(x, img0, m, oh, ow, s, direct, cols.data());
      gemm(false, false, s.out_channels, m * hw, k1, w.data(), k1, cols.data(), m * hw, 0.0f,
           out.data(), m * hw);
      scatter_images(out.data(), img0, m, b, /*accumulate=*/false, y);
    }
    return y;
  }
  const int64_t band = direct ? oh : band_rows(k, oh, ow);
  Tensor col = Tensor::empty({direct ? 0 : k * band * ow});  // scratch, from the block cache
  for (int64_t img = 0; img < n; ++img) {
    for (int64_t gi = 0; gi < g; ++gi) {
      const float* xg = x.data() + (img * s.in_channels + gi * cin_g) * h * wd;
      float* yg = y.data() + (img * s.out_channels + gi * cout_g) * hw;
      for (int64_t y0 = 0; y0 < oh; y0 += band) {
        const int64_t y1 = std::min(oh, y0 + band), cols = (y1 - y0) * ow;
        const float* bmat = direct ? xg : col.data();
        if (!direct) im2col_rows(xg, cin_g, h, wd, y0, y1, ow, s, col.data());
        gemm(false, false, cout_g, cols, k, w.data() + gi * cout_g * k, k, bmat, cols, 0.0f,
             yg + y0 * ow, hw);
      }
    }
    if (b) {
      float* yi = y.data() + img * s.out_channels * hw;
      parallel_for(s.out_channels, [&](int64_t c0, int64_t c1) {
        for (int64_t c = c0; c < c1; ++c) {
          const float bv = (*b)[c];
          float* row = yi + c * hw;
          for (int64_t i = 0; i < hw; ++i) row[i] += bv;
        }
      });
    }
  }
  return y;
}

// Columns (im2col) whose expansion reads and writes at most this many floats are expanded
// by every thread for itself (gemm_prepacked_own_b) rather than once, split by channels
// between the threads: a shared copy is written half by each core and then read whole by
// both, and on small maps those transfers between the cores' caches cost more than the
// expansion. ResNet-50 at 64x64 (every im2col of the pass is 111 k floats or less; layer3's
// 3x3 convolutions, 46 k: the im2col took 22 us of a 98 us convolution): the pass took
// 0.91-0.97 of the time in three runs (13-15 of 16 pairs faster). Doing more work twice
// stops paying: at 224x224, layer4's stride-2 shortcut (223 k floats, mostly its padded
// planes) took layer4 to 1.006-1.014 of its time that way.
constexpr int64_t kOwnColumnsWork = 128 << 10;

// Floats the expansion of columns_batch reads and writes for one image: per channel, its
// padded plane (where it makes one) and every tap's block.
int64_t columns_work(int64_t h, int64_t w, int64_t oh, int64_t ow, const Conv2dSpec& s) {
  const int64_t taps = s.kh * s.kw * oh * ow;
  if (ow < kPlaneMinWidth) return s.in_channels * taps;
  const PaddedPlane pp(h, w, oh, ow, s);
  return s.in_channels * (pp.ph * pp.pw + taps);
}

// Whether conv2d_forward_packed convolves directly (conv_prepacked_direct): stride-2
// layers (ResNet-50's stem and its 3x3 stride-2 layers) of one group and no dilation, on
// an ISA with direct kernels. The im2col of such a layer gathers every other column; the
// direct kernels broadcast each input value from where it is.
bool direct_conv_applies(const Conv2dSpec& s, const PackedMatrix& w, int64_t oh, int64_t ow) {
  // Outputs of at least 14x14 (14 pixels: the AVX-512 tile). On narrower maps a tile has
  // few pixels to share each weight load and every thread reads all the weights for a few
  // rows: the GEMM on the im2col (lanes along M) was faster (ResNet-50's layer4 at
  // 224x224, 7x7: 0.86 against 0.75 ms; its stride-2 layers at 64x64 up to 1.9 times).
  // Stride 1 is left to the other paths: VGG16's first layer (K = 27), where the
  // transposed stores outweigh the FMAs, took 1.28 against 1.05 ms.
  constexpr int64_t kMinSide = 14;
  return s.stride_h == 2 && s.stride_w == 2 && s.kh * s.kw > 1 && s.dil_h == 1 && s.dil_w == 1 &&
         s.groups == 1 && oh >= kMinSide && ow >= kMinSide && w.isa() == active_isa() &&
         conv_direct_unit() > 0;
}

// conv2d_forward_packed through conv_prepacked_direct: each image copied once with its
// padding in place, output rows split between the threads. False when the kernels refuse
// (y untouched).
bool conv2d_forward_direct(const Tensor& x, const PackedMatrix& w, const GemmEpilogue& ep,
                           const Conv2dSpec& s, const Tensor* residual, Tensor& y) {
  const int64_t n = x.dim(0), cin = s.in_channels, h = x.dim(2), wd = x.dim(3);
  const int64_t oh = y.dim(2), ow = y.dim(3), hw = oh * ow, cout = s.out_channels;
  const int64_t hp = h + 2 * s.pad_h, wp = wd + 2 * s.pad_w, plane = hp * wp;
  std::vector<int64_t> koff(static_cast<size_t>(cin * s.kh * s.kw));
  size_t p = 0;
  for (int64_t c = 0; c < cin; ++c)
    for (int64_t i = 0; i < s.kh; ++i)
      for (int64_t j = 0; j < s.kw; ++j) koff[p++] = c * plane + i * wp + j;
  Tensor padded = Tensor::empty({cin * plane});
  float* xp = padded.data();
  for (int64_t img = 0; img < n; ++img) {
    const float* xi = x.data() + img * cin * h * wd;
    parallel_for(cin, [&](int64_t c0, int64_t c1) {
      for (int64_t c = c0; c < c1; ++c) {
        float* d = xp + c * plane;
        std::fill(d, d + s.pad_h * wp, 0.0f);
        for (int64_t r = 0; r < h; ++r) {
          float* row = d + (r + s.pad_h) * wp;
          std::fill(row, row + s.pad_w, 0.0f);
          std::memcpy(row + s.pad_w, xi + (c * h + r) * wd, static_cast<size_t>(wd) * sizeof(float));
          std::fill(row + s.pad_w + wd, row + wp, 0.0f);
        }
        std::fill(d + (h + s.pad_h) * wp, d + plane, 0.0f);
      }
    });
    float* yi = y.data() + img * cout * hw;
    GemmEpilogue e = ep;
    if (residual) e.residual = residual->data() + img * cout * hw;  // laid out like C
    // Bands of output rows: each thread reads the input rows of its band (which the layer
    // before wrote in the same split) and all the weights, a k block of one channel tile
    // at a time from L1. Splitting the channels instead timed the same.
    std::atomic<bool> ok{true};
    parallel_for(oh, [&](int64_t y0, int64_t y1) {
      if (!conv_prepacked_direct(w, xp, koff.data(), s.stride_w, s.stride_h * wp, y0, y1, ow, 0,
                                 cout, yi, hw, e))
        ok = false;
    });
    if (!ok) {
      if (img == 0) return false;
      throw Error("conv2d_forward_packed: the direct kernels went away during the call");
    }
  }
  return true;
}

Tensor conv2d_forward_packed(const Tensor& x, const PackedMatrix& w, const Tensor* b,
                             const Conv2dSpec& s, bool relu, const Tensor* residual) {
  require4(x, "conv2d");
  if (s.groups != 1) throw Error("conv2d_forward_packed: grouped convolutions are not packed");
  if (x.dim(1) != s.in_channels)
    throw Error("conv2d: input has " + std::to_string(x.dim(1)) + " channels, expected " +
                std::to_string(s.in_channels));
  const int64_t k = s.in_channels * s.kh * s.kw;
  if (w.m() != s.out_channels || w.k() != k)
    throw Error("conv2d_forward_packed: packed weights are " + std::to_string(w.m()) + "x" +
                std::to_string(w.k()) + ", the layer needs " + std::to_string(s.out_channels) +
                "x" + std::to_string(k));
  if (b) check_shape(*b, {s.out_channels}, "conv2d bias");
  const Shape os = conv2d_out_shape(x.shape(), s);
  if (residual) check_shape(*residual, os, "conv2d residual");
  Tensor y = Tensor::empty(os);
  const int64_t n = x.dim(0), h = x.dim(2), wd = x.dim(3), oh = os[2], ow = os[3], hw = oh * ow;
  const bool direct = is_pointwise(s);
  GemmEpilogue ep;
  ep.row_bias = b ? b->data() : nullptr;
  ep.relu = relu;
  if (!direct && direct_conv_applies(s, w, oh, ow) && conv2d_forward_direct(x, w, ep, s, residual, y))
    return y;
  const int64_t nb = images_per_chunk(n, hw, 1);
  if (nb > 0 && n != 1 && residual) {
    // Images side by side: the residual is not laid out like that block of C, so it is
    // added (and the ReLU applied) over the whole output afterwards.
    Tensor out = conv2d_forward_packed(x, w, b, s, false, nullptr);
    finish_conv_inplace(out, residual, relu);
    return out;
  }
  if (nb > 0 && n == 1 && !direct && columns_work(h, wd, oh, ow, s) <= kOwnColumnsWork) {
    // One image, small columns: every thread expands them into a buffer of its own and
    // multiplies its rows of the weights by them (see kOwnColumnsWork).
    if (residual) ep.residual = residual->data();  // laid out like y
    gemm_prepacked_own_b(w, hw, hw,
                         [&](float* cols) { columns_batch(x, 0, 1, oh, ow, s, false, cols, true); },
                         y.data(), hw, ep);
    return y;
  }
  if (nb > 0) {
    // Small maps: as conv2d_forward, images side by side; a single image's [Cout, hw]
    // block is the output itself, and a pointwise layer reads its input in place.
    Tensor cols = Tensor::empty({n == 1 && direct ? 0 : k * nb * hw});
    Tensor out = Tensor::empty({n == 1 ? 0 : s.out_channels * nb * hw});
    for (int64_t img0 = 0; img0 < n; img0 += nb) {
      const int64_t m = std::min(nb, n - img0);
      const float* bmat = x.data();
      if (!(n == 1 && direct)) {
        columns_batch(x, img0, m, oh, ow, s, direct, cols.data());
        bmat = cols.data();
      }
      float* c = n == 1 ? y.data() : out.data();
      if (n == 1 && residual) ep.residual = residual->data();  // laid out like y
      gemm_prepacked(w, false, m * hw, bmat, m * hw, 0.0f, c, m * hw, ep);
      if (n != 1) scatter_images(out.data(), img0, m, nullptr, /*accumulate=*/false, y);
    }
    return y;
  }
  if (!direct && w.m() * k * int64_t(sizeof(float)) <= kFusedWeightBytes) {
    // Small weights (VGG16's first layer; the stem where the direct kernels do not take
    // it): each thread expands a few output rows and multiplies them at once, so its
    // columns go from its own cache to the kernels instead of through memory, and the two
    // threads never read each other's columns.
    // Bands of near-equal height (never one short band left over), as many per image as a
    // multiple of the thread count when there is one image, so that every thread gets the
    // same number of rows give or take one per band.
    const int64_t cap = fused_band_rows(k, oh, ow), threads = num_threads();
    int64_t bands = (oh + cap - 1) / cap;
    if (n == 1 && bands % threads != 0) bands = std::min(oh, (bands + threads - 1) / threads * threads);
    const int64_t band = (oh + bands - 1) / bands;  // the tallest band
    // Where the ISA has prepacked kernels, a band's input rows are copied once, split into
    // the stride's column phases with the padding as zeros (q), and every row of B, one
    // tap of one output row, is then a run of q: gemm_prepacked_single_rows reads it
    // there (AVX2, AVX-512) or copies it into the kernels' tiles as it goes, instead of an
    // expansion of the band 49 taps deep.
    const TapRows taps(s, w, h, wd, ow, band);
    parallel_for(n * bands, [&](int64_t t0, int64_t t1) {
      thread_local std::vector<float> tcol;
      if (taps.on) {
        for (int64_t t = t0; t < t1; ++t) {
          const int64_t img = t / bands, b = t % bands;
          const int64_t y0 = oh * b / bands, y1 = oh * (b + 1) / bands;
          tcol.resize(static_cast<size_t>(taps.floats()));
          taps.fill(x.data() + img * s.in_channels * h * wd, y0, y1, tcol.data());
          for (int64_t oy = y0; oy < y1; ++oy) {
            const int64_t at = img * s.out_channels * hw + oy * ow;
            GemmEpilogue e = ep;
            if (residual) e.residual = residual->data() + at;
            if (!gemm_prepacked_single_rows(w, ow, tcol.data() + (oy - y0) * s.stride_h * taps.cols,
                                            taps.offsets.data(), y.data() + at, hw, e))
              throw Error("conv2d_forward_packed: the prepacked kernels went away during the call");
          }
        }
        return;
      }
      tcol.resize(static_cast<size_t>(k * band * ow));
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t img = t / bands, b = t % bands;
        const int64_t y0 = oh * b / bands, y1 = oh * (b + 1) / bands;
        const int64_t cols = (y1 - y0) * ow, at = img * s.out_channels * hw + y0 * ow;
        im2col_rows(x.data() + img * s.in_channels * h * wd, s.in_channels, h, wd, y0, y1, ow, s,
                    tcol.data());  // inside a parallel body: runs on this thread
        GemmEpilogue e = ep;
        if (residual) e.residual = residual->data() + at;
        gemm_prepacked_single(w, false, cols, tcol.data(), cols, 0.0f, y.data() + at, hw, e);
      }
    });
    return y;
  }
  const int64_t band = direct ? oh : band_rows(k, oh, ow);
  Tensor col = Tensor::empty({direct ? 0 : k * band * ow});
  for (int64_t img = 0; img < n; ++img) {
    const float* xi = x.data() + img * s.in_channels * h * wd;
    float* yi = y.data() + img * s.out_channels * hw;
    const float* ri = residual ? residual->data() + img * s.out_channels * hw : nullptr;
    for (int64_t y0 = 0; y0 < oh; y0 += band) {
      const int64_t y1 = std::min(oh, y0 + band), cols = (y1 - y0) * ow;
      if (!direct) im2col_rows(xi, s.in_channels, h, wd, y0, y1, ow, s, col.data());
      if (ri) ep.residual = ri + y0 * ow;  // C's block, row stride hw, like y's
      gemm_prepacked(w, false, cols, direct ? xi : col.data(), cols, 0.0f, yi + y0 * ow, hw, ep);
    }
  }
  return y;
}

Tensor conv2d_forward_naive(const Tensor& x, const Tensor& w, const Tensor* b,
                            const Conv2dSpec& s) {
  check_conv(x, w, b, s);
  const Shape os = conv2d_out_shape(x.shape(), s);
  Tensor y = Tensor::zeros(os);
  const int64_t cin_g = s.in_channels / s.groups, cout_g = s.out_channels / s.groups;
  const int64_t h = x.dim(2), wd = x.dim(3);
  for (int64_t n = 0; n < os[0]; ++n)
    for (int64_t co = 0; co < os[1]; ++co) {
      const int64_t gi = co / cout_g;
      for (int64_t oy = 0; oy < os[2]; ++oy)
        for (int64_t ox = 0; ox < os[3]; ++ox) {
          double acc = b ? (*b)[co] : 0.0;
          for (int64_t ci = 0; ci < cin_g; ++ci)
            for (int64_t i = 0; i < s.kh; ++i)
              for (int64_t j = 0; j < s.kw; ++j) {
                const int64_t iy = oy * s.stride_h - s.pad_h + i * s.dil_h;
                const int64_t ix = ox * s.stride_w - s.pad_w + j * s.dil_w;
                if (iy < 0 || iy >= h || ix < 0 || ix >= wd) continue;
                acc += double(x[((n * s.in_channels + gi * cin_g + ci) * h + iy) * wd + ix]) *
                       w[((co * cin_g + ci) * s.kh + i) * s.kw + j];
              }
          y[((n * os[1] + co) * os[2] + oy) * os[3] + ox] = static_cast<float>(acc);
        }
    }
  return y;
}

void conv2d_backward_data(const Tensor& gy, const Tensor& w, const Conv2dSpec& s, Tensor& gx,
                          bool accumulate) {
  require4(gx, "conv2d backward");
  const int64_t n = gx.dim(0), h = gx.dim(2), wd = gx.dim(3);
  const Shape os = conv2d_out_shape(gx.shape(), s);
  check_shape(gy, os, "conv2d output gradient");
  const int64_t oh = os[2], ow = os[3], hw = oh * ow;
  const int64_t g = s.groups, cin_g = s.in_channels / g, cout_g = s.out_channels / g;
  const int64_t k = cin_g * s.kh * s.kw;
  const bool direct = is_pointwise(s);
  const int64_t nb = images_per_chunk(n, hw, g);
  // Overlapping windows add up in col2im: those start from zeros, which col2im writes
  // channel by channel in its threads.
  const bool zero_first = !accumulate && !direct;
  accumulate = accumulate || !direct;
  if (nb > 0) {
    Tensor gys = Tensor::empty({s.out_channels * nb * hw}), gcol = Tensor::empty({k * nb * hw});
    for (int64_t img0 = 0; img0 < n; img0 += nb) {
      const int64_t m = std::min(nb, n - img0);
      gather_images(gy, img0, m, gys.data());
      gemm(true, false, k, m * hw, s.out_channels, w.data(), k, gys.data(), m * hw, 0.0f,
           gcol.data(), m * hw);
      if (direct)
        scatter_images(gcol.data(), img0, m, nullptr, accumulate, gx);
      else
        col2im_add_batch(gcol.data(), img0, m, oh, ow, s, gx, zero_first);
    }
    return;
  }
  Tensor col = Tensor::empty({direct ? 0 : k * hw});  // scratch, from the block cache
  for (int64_t img = 0; img < n; ++img)
    for (int64_t gi = 0; gi < g; ++gi) {
      const float* gyg = gy.data() + (img * s.out_channels + gi * cout_g) * hw;
      float* gxg = gx.data() + (img * s.in_channels + gi * cin_g) * h * wd;
      const float* wg = w.data() + gi * cout_g * k;
      if (direct) {
        gemm(true, false, k, hw, cout_g, wg, k, gyg, hw, accumulate ? 1.0f : 0.0f, gxg, hw);
      } else {
        gemm(true, false, k, hw, cout_g, wg, k, gyg, hw, 0.0f, col.data(), hw);
        col2im_add(col.data(), cin_g, h, wd, oh, ow, s, gxg, zero_first);
      }
    }
}

void conv2d_backward_data_packed(const Tensor& gy, const PackedMatrix& wt, const Conv2dSpec& s,
                                 Tensor& gx, bool accumulate) {
  require4(gx, "conv2d backward");
  if (s.groups != 1) throw Error("conv2d_backward_data_packed: grouped convolutions are not packed");
  const int64_t n = gx.dim(0), h = gx.dim(2), wd = gx.dim(3);
  const Shape os = conv2d_out_shape(gx.shape(), s);
  check_shape(gy, os, "conv2d output gradient");
  const int64_t oh = os[2], ow = os[3], hw = oh * ow;
  const int64_t k = s.in_channels * s.kh * s.kw;
  if (wt.m() != k || wt.k() != s.out_channels)
    throw Error("conv2d_backward_data_packed: packed weights are " + std::to_string(wt.m()) + "x" +
                std::to_string(wt.k()) + ", the layer needs " + std::to_string(k) + "x" +
                std::to_string(s.out_channels));
  const bool direct = is_pointwise(s);
  const int64_t nb = images_per_chunk(n, hw, 1);
  // col2im adds overlapping windows up, into channels it zeroes first where gx is written.
  const bool zero_first = !accumulate && !direct;
  accumulate = accumulate || !direct;
  if (direct && n == 1 && !accumulate) {
    // One image written, not added: the product's rows are gx's channels.
    gemm_prepacked(wt, false, hw, gy.data(), hw, 0.0f, gx.data(), hw);
    return;
  }
  if (nb > 0) {
    // As conv2d_backward_data; a single image's gradient rows are gy itself.
    Tensor gys = Tensor::empty({n == 1 ? 0 : s.out_channels * nb * hw});
    Tensor gcol = Tensor::empty({k * nb * hw});
    for (int64_t img0 = 0; img0 < n; img0 += nb) {
      const int64_t m = std::min(nb, n - img0);
      const float* bmat = gy.data();
      if (n != 1) {
        gather_images(gy, img0, m, gys.data());
        bmat = gys.data();
      }
      gemm_prepacked(wt, false, m * hw, bmat, m * hw, 0.0f, gcol.data(), m * hw);
      if (direct)
        scatter_images(gcol.data(), img0, m, nullptr, accumulate, gx);
      else
        col2im_add_batch(gcol.data(), img0, m, oh, ow, s, gx, zero_first);
    }
    return;
  }
  Tensor col = Tensor::empty({direct ? 0 : k * hw});
  for (int64_t img = 0; img < n; ++img) {
    const float* gyi = gy.data() + img * s.out_channels * hw;
    float* gxi = gx.data() + img * s.in_channels * h * wd;
    if (direct) {
      gemm_prepacked(wt, false, hw, gyi, hw, accumulate ? 1.0f : 0.0f, gxi, hw);
    } else {
      gemm_prepacked(wt, false, hw, gyi, hw, 0.0f, col.data(), hw);
      col2im_add(col.data(), s.in_channels, h, wd, oh, ow, s, gxi, zero_first);
    }
  }
}

namespace {
// The taps [k0, k1] along one axis that read inside [0, in) for some of the `out` outputs.
bool used_axis(int64_t in, int64_t out, int64_t k, int64_t stride, int64_t pad, int64_t dil,
               int64_t* k0, int64_t* k1) {
  *k0 = k;
  *k1 = -1;
  for (int64_t t = 0; t < k; ++t)
    for (int64_t o = 0; o < out; ++o) {
      const int64_t i = o * stride - pad + t * dil;
      if (i >= 0 && i < in) {
        *k0 = std::min(*k0, t);
        *k1 = std::max(*k1, t);
        break;
      }
    }
  return *k1 >= *k0;
}
}  // namespace

bool taps_crop(const Conv2dSpec& s, int64_t h, int64_t w, TapRange* r, Conv2dSpec* cropped) {
  if (s.kh * s.kw <= 1 || s.groups != 1) return false;
  const Shape os = conv2d_out_shape({1, s.in_channels, h, w}, s);
  TapRange t;
  if (!used_axis(h, os[2], s.kh, s.stride_h, s.pad_h, s.dil_h, &t.ky0, &t.ky1) ||
      !used_axis(w, os[3], s.kw, s.stride_w, s.pad_w, s.dil_w, &t.kx0, &t.kx1))
    return false;
  if (t.ky0 == 0 && t.ky1 == s.kh - 1 && t.kx0 == 0 && t.kx1 == s.kw - 1) return false;
  Conv2dSpec c = s;
  c.kh = t.ky1 - t.ky0 + 1;
  c.kw = t.kx1 - t.kx0 + 1;
  c.pad_h = s.pad_h - t.ky0 * s.dil_h;
  c.pad_w = s.pad_w - t.kx0 * s.dil_w;
  if (c.pad_h < 0 || c.pad_w < 0) return false;
  // Tap ky of the cut kernel reads where tap ky0 + ky did; the padding is the same on both
  // sides, so the output must still come out the same size.
  const Shape cs = conv2d_out_shape({1, s.in_channels, h, w}, c);
  if (cs[2] != os[2] || cs[3] != os[3]) return false;
  *r = t;
  *cropped = c;
  return true;
}

Tensor crop_taps(const Tensor& w, const TapRange& r) {
  if (w.ndim() != 4 || r.ky0 < 0 || r.ky1 >= w.dim(2) || r.kx0 < 0 || r.kx1 >= w.dim(3) ||
      r.ky1 < r.ky0 || r.kx1 < r.kx0)
    throw Error("crop_taps: taps outside the kernel " + shape_str(w.shape()));
  const int64_t planes = w.dim(0) * w.dim(1), kh = w.dim(2), kw = w.dim(3);
  const int64_t ch = r.ky1 - r.ky0 + 1, cw = r.kx1 - r.kx0 + 1;
  Tensor c = Tensor::empty({w.dim(0), w.dim(1), ch, cw});
  for (int64_t p = 0; p < planes; ++p)
    for (int64_t y = 0; y < ch; ++y)
      for (int64_t x = 0; x < cw; ++x)
        c[(p * ch + y) * cw + x] = w[(p * kh + r.ky0 + y) * kw + r.kx0 + x];
  return c;
}

bool flipped_conv_applies(const Conv2dSpec& s) {
  return s.groups == 1 && s.stride_h == 1 && s.stride_w == 1 && s.dil_h == 1 && s.dil_w == 1 &&
         s.kh * s.kw > 1 && s.pad_h >= 0 && s.pad_w >= 0 && s.pad_h <= s.kh - 1 &&
         s.pad_w <= s.kw - 1;
}

Conv2dSpec flipped_conv_spec(const Conv2dSpec& s) {
  Conv2dSpec t = s;
  t.in_channels = s.out_channels;
  t.out_channels = s.in_channels;
  t.pad_h = s.kh - 1 - s.pad_h;
  t.pad_w = s.kw - 1 - s.pad_w;
  return t;
}

Tensor flip_conv_weights(const Tensor& w) {
  if (w.ndim() != 4) throw Error("flip_conv_weights: expected [Cout, Cin, kh, kw], got " + shape_str(w.shape()));
  const int64_t cout = w.dim(0), cin = w.dim(1), taps = w.dim(2) * w.dim(3);
  Tensor t = Tensor::empty({cin, cout, w.dim(2), w.dim(3)});
  const float* src = w.data();
  float* dst = t.data();
  for (int64_t o = 0; o < cout; ++o)
    for (int64_t i = 0; i < cin; ++i)
      for (int64_t k = 0; k < taps; ++k) dst[(i * cout + o) * taps + (taps - 1 - k)] = src[(o * cin + i) * taps + k];
  return t;
}

void conv2d_backward_data_flipped(const Tensor& gy, const PackedMatrix& wf, const Conv2dSpec& s,
                                  Tensor& gx, bool accumulate) {
  require4(gx, "conv2d backward");
  if (!flipped_conv_applies(s))
    throw Error("conv2d_backward_data_flipped: the data gradient of this convolution is not a convolution "
                "(stride, dilation, groups or padding)");
  const Shape os = conv2d_out_shape(gx.shape(), s);
  check_shape(gy, os, "conv2d output gradient");
  const Conv2dSpec t = flipped_conv_spec(s);
  if (conv2d_out_shape(gy.shape(), t) != gx.shape())
    throw Error("conv2d_backward_data_flipped: the flipped convolution does not give the input's shape");
  gx = conv2d_forward_packed(gy, wf, nullptr, t, false, accumulate ? &gx : nullptr);
}

void conv2d_backward_weight(const Tensor& gy, const Tensor& x, const Conv2dSpec& s, Tensor* gw,
                            Tensor* gb) {
  require4(x, "conv2d backward");
  const Shape os = conv2d_out_shape(x.shape(), s);
  check_shape(gy, os, "conv2d output gradient");
  const int64_t n = x.dim(0), h = x.dim(2), wd = x.dim(3), oh = os[2], ow = os[3];
  const int64_t hw = oh * ow;
  const int64_t g = s.groups, cin_g = s.in_channels / g, cout_g = s.out_channels / g;
  const int64_t k = cin_g * s.kh * s.kw;
  if (gw) {
    check_shape(*gw, {s.out_channels, cin_g, s.kh, s.kw}, "conv2d weight gradient");
    const bool direct = is_pointwise(s);
    const int64_t nb = images_per_chunk(n, hw, g);
    if (nb > 0) {
      Tensor gys = Tensor::empty({s.out_channels * nb * hw}), cols = Tensor::empty({k * nb * hw});
      for (int64_t img0 = 0; img0 < n; img0 += nb) {
        const int64_t m = std::min(nb, n - img0);
        gather_images(gy, img0, m, gys.data());
        columns_batch(x, img0, m, oh, ow, s, direct, cols.data());
        gemm(false, true, s.out_channels, k, m * hw, gys.data(), m * hw, cols.data(), m * hw, 1.0f,
             gw->data(), k);
      }
    }
    Tensor col = Tensor::empty({direct || nb > 0 ? 0 : k * hw});  // scratch, from the block cache
    for (int64_t img = 0; nb == 0 && img < n; ++img)
      for (int64_t gi = 0; gi < g; ++gi) {
        const float* xg = x.data() + (img * s.in_channels + gi * cin_g) * h * wd;
        const float* bmat = conv_columns(xg, cin_g, h, wd, oh, ow, s, direct, col);
        const float* gyg = gy.data() + (img * s.out_channels + gi * cout_g) * hw;
        gemm(false, true, cout_g, k, hw, gyg, hw, bmat, hw, 1.0f, gw->data() + gi * cout_g * k,
             k);
      }
  }
  if (gb) {
    check_shape(*gb, {s.out_channels}, "conv2d bias gradient");
    channel_sum_add(gy, *gb);
  }
}

void channel_sum_add(const Tensor& gy, Tensor& gb) {
  require4(gy, "channel_sum_add");
  const int64_t n = gy.dim(0), c = gy.dim(1), hw = gy.dim(2) * gy.dim(3);
  check_shape(gb, {c}, "bias gradient");
  parallel_for(c, [&](int64_t c0, int64_t c1) {
    for (int64_t ch = c0; ch < c1; ++ch) {
      double acc = 0.0;
      for (int64_t img = 0; img < n; ++img) {
        const float* row = gy.data() + (img * c + ch) * hw;
        for (int64_t i = 0; i < hw; ++i) acc += row[i];
      }
      gb[ch] += static_cast<float>(acc);
    }
  });
}

// ------------------------------------------------------------------ linear
Tensor linear_forward(const Tensor& x, const Tensor& w, const Tensor* b) {
  if (x.ndim() != 2 || w.ndim() != 2 || x.dim(1) != w.dim(1))
    throw Error("linear: input " + shape_str(x.shape()) + " does not fit weight " +
                shape_str(w.shape()));
  const int64_t n = x.dim(0), in = x.dim(1), out = w.dim(0);
  if (b) check_shape(*b, {out}, "linear bias");
  Tensor y = Tensor::empty({n, out});
  gemm(false, true, n, out, in, x.data(), in, w.data(), in, 0.0f, y.data(), out);
  if (b)
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < out; ++j) y[i * out + j] += (*b)[j];
  return y;
}

bool linear_backward_one_hot(const Tensor& gy, const Tensor& w, Tensor& gx) {
  const int64_t n = gy.dim(0), out = gy.dim(1), in = w.dim(1);
  const float* g = gy.data();
  // Each row of gy: the column of its one nonzero, -1 when it has none.
  std::vector<int64_t> hot(static_cast<size_t>(n), -1);
  for (int64_t b = 0; b < n; ++b)
    for (int64_t j = 0; j < out; ++j)
      if (g[b * out + j] != 0.0f) {
        if (hot[static_cast<size_t>(b)] >= 0) return false;
        hot[static_cast<size_t>(b)] = j;
      }
  float* d = gx.data();
  for (int64_t i = 0; i < gx.numel(); ++i)
    if (d[i] != 0.0f) return false;
  // The GEMM would sum g * w[j][i] and zeros: per k block an FMA chain from +0 (a -0
  // product comes out +0), each block's sum added to C; C is zero, so that is the product
  // rounded once, and every zero added turns a -0 into +0. The same values and signs here.
  const float* wd = w.data();
  for (int64_t b = 0; b < n; ++b) {
    const int64_t j = hot[static_cast<size_t>(b)];
    const float gv = j >= 0 ? g[b * out + j] : 0.0f;
    const float* row = j >= 0 ? wd + j * in : nullptr;
    float* dst = d + b * in;
    for (int64_t i = 0; i < in; ++i) {
      const float v = row ? gv * row[i] + 0.0f : 0.0f;
      dst[i] = (dst[i] + v) + 0.0f;
    }
  }
  return true;
}

void linear_backward(const Tensor& gy, const Tensor& x, const Tensor& w, Tensor* gx, Tensor* gw,
                     Tensor* gb) {
  const int64_t n = x.dim(0), in = x.dim(1), out = w.dim(0);
  check_shape(gy, {n, out}, "linear output gradient");
  if (gx && !linear_backward_one_hot(gy, w, *gx))
    gemm(false, false, n, in, out, gy.data(), out, w.data(), in, 1.0f, gx->data(), in);
  if (gw) gemm(true, false, out, in, n, gy.data(), out, x.data(), in, 1.0f, gw->data(), in);
  if (gb)
    for (int64_t j = 0; j < out; ++j) {
      double acc = 0.0;
      for (int64_t i = 0; i < n; ++i) acc += gy[i * out + j];
      (*gb)[j] += static_cast<float>(acc);
    }
}

// ------------------------------------------------------------------ batch norm
namespace {
void bn_check(const Tensor& x, const Tensor& weight, const Tensor& bias) {
  require4(x, "batch_norm");
  check_shape(weight, {x.dim(1)}, "batch_norm weight");
  check_shape(bias, {x.dim(1)}, "batch_norm bias");
}

Tensor bn_apply(const Tensor& x, const Tensor& weight, const Tensor& bias,
                const BatchNormSaved& st) {
  Tensor y = Tensor::empty(x.shape());
  const EltwiseKernels& k = eltwise();
  const int64_t n = x.dim(0), c = x.dim(1), hw = x.dim(2) * x.dim(3);
  parallel_for(n * c, [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      const int64_t ch = r % c;
      // (x - mean) first: with few values per channel the mean can dwarf the spread, and
      // x * scale + (bias - mean * scale) would cancel away the significant digits.
      const float scale = weight[ch] * st.inv_std[ch];
      const float mean = st.mean[ch], shift = bias[ch];
      k.normalize(x.data() + r * hw, mean, scale, shift, y.data() + r * hw, hw);
    }
  });
  return y;
}
}  // namespace

Tensor batchnorm_forward_eval(const Tensor& x, const Tensor& weight, const Tensor& bias,
                              const Tensor& running_mean, const Tensor& running_var, double eps,
                              BatchNormSaved* saved) {
  bn_check(x, weight, bias);
  const int64_t c = x.dim(1);
  check_shape(running_mean, {c}, "batch_norm running_mean");
  check_shape(running_var, {c}, "batch_norm running_var");
  BatchNormSaved st;
  st.mean.resize(c);
  st.inv_std.resize(c);
  for (int64_t i = 0; i < c; ++i) {
    st.mean[i] = running_mean[i];
    st.inv_std[i] = static_cast<float>(1.0 / std::sqrt(double(running_var[i]) + eps));
  }
  Tensor y = bn_apply(x, weight, bias, st);
  if (saved) *saved = std::move(st);
  return y;
}

Tensor batchnorm_forward_train(const Tensor& x, const Tensor& weight, const Tensor& bias,
                               Tensor& running_mean, Tensor& running_var, double eps,
                               double momentum, BatchNormSaved* saved) {
  bn_check(x, weight, bias);
  const int64_t n = x.dim(0), c = x.dim(1), hw = x.dim(2) * x.dim(3);
  const int64_t count = n * hw;
  if (count <= 1)
    throw Error("batch_norm: training needs more than one value per channel, got input " +
                shape_str(x.shape()));
  BatchNormSaved st;
  st.mean.resize(c);
  st.inv_std.resize(c);
  std::vector<double> var(c);
  parallel_for(c, [&](int64_t c0, int64_t c1) {
    for (int64_t ch = c0; ch < c1; ++ch) {
      double sum = 0.0;
      for (int64_t img = 0; img < n; ++img) {
        const float* p = x.data() + (img * c + ch) * hw;
        for (int64_t i = 0; i < hw; ++i) sum += p[i];
      }
      const double mean = sum / count;
      double sq = 0.0;
      for (int64_t img = 0; img < n; ++img) {
        const float* p = x.data() + (img * c + ch) * hw;
        for (int64_t i = 0; i < hw; ++i) sq += (p[i] - mean) * (p[i] - mean);
      }
      var[ch] = sq / count;
      st.mean[ch] = static_cast<float>(mean);
      st.inv_std[ch] = static_cast<float>(1.0 / std::sqrt(var[ch] + eps));
    }
  });
  for (int64_t ch = 0; ch < c; ++ch) {
    const double unbiased = var[ch] * count / (count - 1);
    running_mean[ch] =
        static_cast<float>((1.0 - momentum) * running_mean[ch] + momentum * st.mean[ch]);
    running_var[ch] = static_cast<float>((1.0 - momentum) * running_var[ch] + momentum * unbiased);
  }
  Tensor y = bn_apply(x, weight, bias, st);
  if (saved) *saved = std::move(st);
  return y;
}

void batchnorm_backward(const Tensor& gy, const Tensor& x, const Tensor& weight,
                        const BatchNormSaved& st, bool train, Tensor* gx, Tensor* gw,
                        Tensor* gb) {
  const int64_t n = x.dim(0), c = x.dim(1), hw = x.dim(2) * x.dim(3);
  check_shape(gy, x.shape(), "batch_norm output gradient");
  const double count = double(n * hw);
  const EltwiseKernels& k = eltwise();
  parallel_for(c, [&](int64_t c0, int64_t c1) {
    for (int64_t ch = c0; ch < c1; ++ch) {
      const double mean = st.mean[ch], istd = st.inv_std[ch];
      double sum_gy = 0.0, sum_gy_xhat = 0.0;
      for (int64_t img = 0; img < n; ++img) {
        const float* g = gy.data() + (img * c + ch) * hw;
        const float* p = x.data() + (img * c + ch) * hw;
        for (int64_t i = 0; i < hw; ++i) {
          sum_gy += g[i];
          sum_gy_xhat += g[i] * (p[i] - mean) * istd;
        }
      }
      if (gw) (*gw)[ch] += static_cast<float>(sum_gy_xhat);
      if (gb) (*gb)[ch] += static_cast<float>(sum_gy);
      if (!gx) continue;
      const double scale = weight[ch] * istd;
      for (int64_t img = 0; img < n; ++img) {
        const float* g = gy.data() + (img * c + ch) * hw;
        const float* p = x.data() + (img * c + ch) * hw;
        float* d = gx->data() + (img * c + ch) * hw;
        if (train)
          k.bn_grad_train(g, p, d, hw, mean, istd, scale, sum_gy / count, sum_gy_xhat / count);
        else
          k.bn_grad_eval(g, d, hw, scale);
      }
    }
  });
}

// ------------------------------------------------------------------ activations
Tensor relu_forward(const Tensor& x) {
  Tensor y = Tensor::empty(x.shape());
  const float* s = x.data();
  float* d = y.data();
  const EltwiseKernels& k = eltwise();
  parallel_for(x.numel(), kEltwiseGrain, [&](int64_t b, int64_t e) { k.relu(s + b, d + b, e - b); });
  return y;
}

void relu_inplace(Tensor& y) {
  float* d = y.data();
  const EltwiseKernels& k = eltwise();
  parallel_for(y.numel(), kEltwiseGrain, [&](int64_t b, int64_t e) { k.relu(d + b, d + b, e - b); });
}

void add_relu_inplace(Tensor& y, const Tensor& x) {
  if (y.shape() != x.shape())
    throw Error("add: shapes " + shape_str(y.shape()) + " and " + shape_str(x.shape()) + " differ");
  float* d = y.data();
  const float* s = x.data();
  const EltwiseKernels& k = eltwise();
  parallel_for(y.numel(), kEltwiseGrain, [&](int64_t b, int64_t e) {
    // In cache-sized pieces, so the ReLU reads what the add just wrote from L1.
    for (int64_t p = b; p < e; p += 2048) {
      const int64_t q = std::min(e, p + 2048);
      k.add_into(d + p, s + p, q - p);
      k.relu(d + p, d + p, q - p);
    }
  });
}

void finish_conv_inplace(Tensor& y, const Tensor* residual, bool relu) {
  if (residual && relu)
    add_relu_inplace(y, *residual);
  else if (residual)
    add_into(y, *residual);
  else if (relu)
    relu_inplace(y);
}

void relu_backward(const Tensor& gy, const Tensor& y, Tensor& gx) {
  const float* g = gy.data();
  const float* v = y.data();
  float* d = gx.data();
  const EltwiseKernels& k = eltwise();
  parallel_for(y.numel(), kEltwiseGrain,
               [&](int64_t b, int64_t e) { k.relu_backward(g + b, v + b, d + b, e - b); });
}

void relu_mask(const Tensor& gy, const Tensor& y, Tensor& gx) {
  if (gy.shape() != y.shape() || gx.shape() != y.shape())
    throw Error("relu_mask: shapes " + shape_str(gy.shape()) + ", " + shape_str(y.shape()) +
                " and " + shape_str(gx.shape()) + " differ");
  const float* g = gy.data();
  const float* v = y.data();
  float* d = gx.data();
  parallel_for(y.numel(), kEltwiseGrain, [&](int64_t b, int64_t e) {
    // Both operands loaded unconditionally, so the select vectorises (no branch on signs).
    for (int64_t i = b; i < e; ++i) {
      const float gi = g[i], vi = v[i];
      d[i] = vi > 0.0f ? gi : 0.0f;
    }
  });
}

// ------------------------------------------------------------------ pooling
namespace {
int64_t pool_out(int64_t in, int64_t k, int64_t s, int64_t p, bool ceil_mode) {
  const int64_t span = in + 2 * p - k;
  int64_t out = (ceil_mode ? (span + s - 1) / s : span / s) + 1;
  // PyTorch: the last window must start inside the input or the left padding.
  if (ceil_mode && (out - 1) * s >= in + p) --out;
  return out;
}
}  // namespace

Shape pool2d_out_shape(const Shape& x, const Pool2dSpec& s) {
  if (x.size() != 4) throw Error("pool2d: expected a 4-d NCHW input, got " + shape_str(x));
  if (s.kh <= 0 || s.kw <= 0 || s.stride_h <= 0 || s.stride_w <= 0 || s.pad_h < 0 ||
      s.pad_w < 0 || 2 * s.pad_h > s.kh || 2 * s.pad_w > s.kw)
    throw Error("pool2d: invalid kernel/stride/padding (padding must be at most half the kernel)");
  if (x[2] + 2 * s.pad_h < s.kh || x[3] + 2 * s.pad_w < s.kw)
    throw Error("pool2d: input " + shape_str(x) + " is smaller than the kernel");
  return {x[0], x[1], pool_out(x[2], s.kh, s.stride_h, s.pad_h, s.ceil_mode),
          pool_out(x[3], s.kw, s.stride_w, s.pad_w, s.ceil_mode)};
}

Tensor maxpool2d_forward(const Tensor& x, const Pool2dSpec& s, std::vector<int32_t>* argmax) {
  const Shape os = pool2d_out_shape(x.shape(), s);
  Tensor y = Tensor::empty(os);
  const int64_t h = x.dim(2), w = x.dim(3), oh = os[2], ow = os[3];
  if (!argmax) {  // inference: the ISA's plane kernel
    const EltwiseKernels& k = eltwise();
    const PoolPlane pp{h, w, oh, ow, s.kh, s.kw, s.stride_h, s.stride_w, s.pad_h, s.pad_w};
    parallel_for(os[0] * os[1], [&](int64_t b, int64_t e) {
      for (int64_t plane = b; plane < e; ++plane)
        k.maxpool_plane(x.data() + plane * h * w, pp, y.data() + plane * oh * ow);
    });
    return y;
  }
  argmax->resize(static_cast<size_t>(y.numel()));
  // 2x2 (VGG16) and 3x3 (ResNet-50) windows of stride 2: the windows that lie inside the
  // plane go through the ISA's row kernel (the same first maximum and first NaN as the
  // general loop below, which takes the rest).
  const EltwiseKernels& k = eltwise();
  const int kwin = s.kh == s.kw && s.stride_h == 2 && s.stride_w == 2 &&
                           (s.kh == 2 || s.kh == 3) ? static_cast<int>(s.kh) : 0;
  // Outputs whose windows start at or after 0 and end inside: [lo, hi) along each axis.
  auto inside = [&](int64_t pad, int64_t in, int64_t out, int64_t& lo, int64_t& hi) {
    lo = std::min(out, (pad + 1) / 2);
    hi = std::max(lo, std::min(out, in - kwin + pad >= 0 ? (in - kwin + pad) / 2 + 1 : 0));
  };
  int64_t ylo = 0, yhi = 0, xlo = 0, xhi = 0;
  if (kwin) {
    inside(s.pad_h, h, oh, ylo, yhi);
    inside(s.pad_w, w, ow, xlo, xhi);
  }
  parallel_for(os[0] * os[1], [&](int64_t b, int64_t e) {
    for (int64_t plane = b; plane < e; ++plane) {
      const float* xp = x.data() + plane * h * w;
      float* yp = y.data() + plane * oh * ow;
      int32_t* ap = argmax->data() + plane * oh * ow;
      for (int64_t oy = 0; oy < oh; ++oy) {
        const bool fast = oy >= ylo && oy < yhi && xhi > xlo;
        if (fast) {
          const int64_t at = (2 * oy - s.pad_h) * w + 2 * xlo - s.pad_w;
          k.maxpool_s2_argmax_row(xp + at, w, xhi - xlo, static_cast<int32_t>(at), yp + oy * ow + xlo,
                                  ap + oy * ow + xlo, kwin);
        }
        const int64_t y0 = oy * s.stride_h - s.pad_h;
        const int64_t ya = std::max<int64_t>(y0, 0), yb = std::min(y0 + s.kh, h);
        // Output ox the general way: the first maximum, without branches on the data
        // (PyTorch's choice); a NaN wins, the first one, which a second look finds.
        auto window = [&](int64_t ox) {
          const int64_t x0 = ox * s.stride_w - s.pad_w;
          const int64_t xa = std::max<int64_t>(x0, 0), xb = std::min(x0 + s.kw, w);
          float best = -std::numeric_limits<float>::infinity();
          int64_t best_i = ya * w + xa;
          bool nan = false;
          for (int64_t iy = ya; iy < yb; ++iy)
            for (int64_t ix = xa; ix < xb; ++ix) {
              const float v = xp[iy * w + ix];
              const bool more = v > best;
              best = more ? v : best;
              best_i = more ? iy * w + ix : best_i;
              nan |= v != v;
            }
          if (nan)
            for (int64_t iy = ya; iy < yb && !std::isnan(best); ++iy)
              for (int64_t ix = xa; ix < xb; ++ix)
                if (std::isnan(xp[iy * w + ix])) {
                  best = xp[iy * w + ix];
                  best_i = iy * w + ix;
                  break;
                }
          yp[oy * ow + ox] = best;
          ap[oy * ow + ox] = static_cast<int32_t>(best_i);
        };
        // The columns the loop above did not take.
        const int64_t skip_lo = fast ? xlo : ow, skip_hi = fast ? xhi : ow;
        for (int64_t ox = 0; ox < skip_lo; ++ox) window(ox);
        for (int64_t ox = skip_hi; ox < ow; ++ox) window(ox);
      }
    }
  });
  return y;
}

void maxpool2d_backward(const Tensor& gy, const std::vector<int32_t>& argmax, Tensor& gx) {
  const int64_t planes = gx.dim(0) * gx.dim(1), hw = gx.dim(2) * gx.dim(3);
  const int64_t ohw = gy.dim(2) * gy.dim(3);
  parallel_for(planes, [&](int64_t b, int64_t e) {
    for (int64_t plane = b; plane < e; ++plane)
      for (int64_t o = 0; o < ohw; ++o)
        gx[plane * hw + argmax[plane * ohw + o]] += gy[plane * ohw + o];
  });
}

namespace {
// Calls fn(y0, y1, x0, x1, divisor) for each avg-pool window of output (oy, ox).
template <typename Fn>
void avg_window(const Pool2dSpec& s, int64_t h, int64_t w, int64_t oy, int64_t ox, Fn fn) {
  int64_t y0 = oy * s.stride_h - s.pad_h, x0 = ox * s.stride_w - s.pad_w;
  int64_t y1 = std::min(y0 + s.kh, h + s.pad_h), x1 = std::min(x0 + s.kw, w + s.pad_w);
  const int64_t padded = (y1 - y0) * (x1 - x0);
  y0 = std::max<int64_t>(y0, 0);
  x0 = std::max<int64_t>(x0, 0);
  y1 = std::min(y1, h);
  x1 = std::min(x1, w);
  const int64_t div = s.count_include_pad ? padded : (y1 - y0) * (x1 - x0);
  fn(y0, y1, x0, x1, div);
}
}  // namespace

Tensor avgpool2d_forward(const Tensor& x, const Pool2dSpec& s) {
  const Shape os = pool2d_out_shape(x.shape(), s);
  Tensor y = Tensor::empty(os);
  const int64_t h = x.dim(2), w = x.dim(3), oh = os[2], ow = os[3];
  parallel_for(os[0] * os[1], [&](int64_t b, int64_t e) {
    for (int64_t plane = b; plane < e; ++plane) {
      const float* xp = x.data() + plane * h * w;
      for (int64_t oy = 0; oy < oh; ++oy)
        for (int64_t ox = 0; ox < ow; ++ox)
          avg_window(s, h, w, oy, ox, [&](int64_t y0, int64_t y1, int64_t x0, int64_t x1,
                                          int64_t div) {
            double acc = 0.0;
            for (int64_t iy = y0; iy < y1; ++iy)
              for (int64_t ix = x0; ix < x1; ++ix) acc += xp[iy * w + ix];
            y[plane * oh * ow + oy * ow + ox] = div > 0 ? static_cast<float>(acc / div) : 0.0f;
          });
    }
  });
  return y;
}

void avgpool2d_backward(const Tensor& gy, const Pool2dSpec& s, Tensor& gx) {
  const int64_t h = gx.dim(2), w = gx.dim(3), oh = gy.dim(2), ow = gy.dim(3);
  parallel_for(gx.dim(0) * gx.dim(1), [&](int64_t b, int64_t e) {
    for (int64_t plane = b; plane < e; ++plane) {
      float* gp = gx.data() + plane * h * w;
      for (int64_t oy = 0; oy < oh; ++oy)
        for (int64_t ox = 0; ox < ow; ++ox)
          avg_window(s, h, w, oy, ox, [&](int64_t y0, int64_t y1, int64_t x0, int64_t x1,
                                          int64_t div) {
            if (div <= 0) return;
            const float g = gy[plane * oh * ow + oy * ow + ox] / static_cast<float>(div);
            for (int64_t iy = y0; iy < y1; ++iy)
              for (int64_t ix = x0; ix < x1; ++ix) gp[iy * w + ix] += g;
          });
    }
  });
}

Tensor pool_linear_weight(const Tensor& w, int64_t channels, int64_t h, int64_t wd, int64_t oh,
                          int64_t ow) {
  if (w.ndim() != 2 || channels <= 0 || h <= 0 || wd <= 0 || oh <= 0 || ow <= 0 ||
      w.dim(1) != channels * oh * ow)
    throw Error("pool_linear_weight: weight " + shape_str(w.shape()) + " does not take " +
                std::to_string(channels) + "x" + std::to_string(oh) + "x" + std::to_string(ow) +
                " pooled features");
  const int64_t out = w.dim(0), cells = oh * ow, pixels = h * wd;
  Tensor folded = Tensor::empty({out, channels * pixels});
  parallel_for(out * channels, [&](int64_t b, int64_t e) {
    std::vector<double> acc(static_cast<size_t>(pixels));
    for (int64_t r = b; r < e; ++r) {
      const int64_t o = r / channels, c = r % channels;
      const float* src = w.data() + o * w.dim(1) + c * cells;
      std::fill(acc.begin(), acc.end(), 0.0);
      // The windows of adaptive_avgpool2d_forward.
      for (int64_t py = 0; py < oh; ++py) {
        const int64_t y0 = py * h / oh, y1 = ((py + 1) * h + oh - 1) / oh;
        for (int64_t px = 0; px < ow; ++px) {
          const int64_t x0 = px * wd / ow, x1 = ((px + 1) * wd + ow - 1) / ow;
          const double share = double(src[py * ow + px]) / double((y1 - y0) * (x1 - x0));
          for (int64_t iy = y0; iy < y1; ++iy)
            for (int64_t ix = x0; ix < x1; ++ix) acc[static_cast<size_t>(iy * wd + ix)] += share;
        }
      }
      float* dst = folded.data() + o * channels * pixels + c * pixels;
      for (int64_t q = 0; q < pixels; ++q) dst[q] = static_cast<float>(acc[static_cast<size_t>(q)]);
    }
  });
  return folded;
}

Tensor adaptive_avgpool2d_forward(const Tensor& x, int64_t oh, int64_t ow) {
  require4(x, "adaptive_avg_pool2d");
  if (oh <= 0 || ow <= 0 || x.dim(2) <= 0 || x.dim(3) <= 0)
    throw Error("adaptive_avg_pool2d: empty input or output size");
  const int64_t h = x.dim(2), w = x.dim(3);
  // Windows of one pixel (ResNet-50 at 32x32 input pools 1x1 maps, VGG16 at 224x224 7x7
  // ones): the input itself, which the loop below gives too (one term, divided by 1),
  // plane by plane and slowly.
  if (oh == h && ow == w) return x.clone();
  Tensor y = Tensor::empty({x.dim(0), x.dim(1), oh, ow});
  // The windows once for all planes: [start, end) of each output row and column (worked
  // out per plane, their divisions took a fifth of the pool's time on ResNet-50's 2x2 maps).
  std::vector<int64_t> ry(static_cast<size_t>(2 * oh)), rx(static_cast<size_t>(2 * ow));
  for (int64_t oy = 0; oy < oh; ++oy) {
    ry[static_cast<size_t>(2 * oy)] = oy * h / oh;
    ry[static_cast<size_t>(2 * oy + 1)] = ((oy + 1) * h + oh - 1) / oh;
  }
  for (int64_t ox = 0; ox < ow; ++ox) {
    rx[static_cast<size_t>(2 * ox)] = ox * w / ow;
    rx[static_cast<size_t>(2 * ox + 1)] = ((ox + 1) * w + ow - 1) / ow;
  }
  parallel_for(x.dim(0) * x.dim(1), [&](int64_t b, int64_t e) {
    for (int64_t plane = b; plane < e; ++plane) {
      const float* xp = x.data() + plane * h * w;
      float* yp = y.data() + plane * oh * ow;
      for (int64_t oy = 0; oy < oh; ++oy) {
        const int64_t y0 = ry[static_cast<size_t>(2 * oy)], y1 = ry[static_cast<size_t>(2 * oy + 1)];
        for (int64_t ox = 0; ox < ow; ++ox) {
          const int64_t x0 = rx[static_cast<size_t>(2 * ox)], x1 = rx[static_cast<size_t>(2 * ox + 1)];
          double acc = 0.0;
          for (int64_t iy = y0; iy < y1; ++iy)
            for (int64_t ix = x0; ix < x1; ++ix) acc += xp[iy * w + ix];
          yp[oy * ow + ox] = static_cast<float>(acc / ((y1 - y0) * (x1 - x0)));
        }
      }
    }
  });
  return y;
}

void adaptive_avgpool2d_backward(const Tensor& gy, Tensor& gx) {
  const int64_t h = gx.dim(2), w = gx.dim(3), oh = gy.dim(2), ow = gy.dim(3);
  if (oh == h && ow == w && gy.numel() == gx.numel()) {
    add_into(gx, gy);  // windows of one pixel: the gradient passes through (divided by 1)
    return;
  }
  parallel_for(gx.dim(0) * gx.dim(1), [&](int64_t b, int64_t e) {
    for (int64_t plane = b; plane < e; ++plane) {
      float* gp = gx.data() + plane * h * w;
      for (int64_t oy = 0; oy < oh; ++oy) {
        const int64_t y0 = oy * h / oh, y1 = ((oy + 1) * h + oh - 1) / oh;
        for (int64_t ox = 0; ox < ow; ++ox) {
          const int64_t x0 = ox * w / ow, x1 = ((ox + 1) * w + ow - 1) / ow;
          const float g =
              gy[plane * oh * ow + oy * ow + ox] / static_cast<float>((y1 - y0) * (x1 - x0));
          for (int64_t iy = y0; iy < y1; ++iy)
            for (int64_t ix = x0; ix < x1; ++ix) gp[iy * w + ix] += g;
        }
      }
    }
  });
}

// ------------------------------------------------------------------ misc
Tensor add_forward(const Tensor& a, const Tensor& b) {
  if (a.shape() != b.shape())
    throw Error("add: shapes " + shape_str(a.shape()) + " and " + shape_str(b.shape()) + " differ");
  Tensor y = Tensor::empty(a.shape());
  const float *pa = a.data(), *pb = b.data();
  float* d = y.data();
  const EltwiseKernels& k = eltwise();
  parallel_for(a.numel(), kEltwiseGrain, [&](int64_t s, int64_t e) { k.add(pa + s, pb + s, d + s, e - s); });
  return y;
}

void add_into(Tensor& dst, const Tensor& src) {
  if (dst.numel() != src.numel())
    throw Error("add_into: " + shape_str(src.shape()) + " into " + shape_str(dst.shape()));
  float* d = dst.data();
  const float* s = src.data();
  const EltwiseKernels& k = eltwise();
  parallel_for(dst.numel(), kEltwiseGrain, [&](int64_t b, int64_t e) { k.add_into(d + b, s + b, e - b); });
}

Tensor softmax_forward(const Tensor& x) {
  if (x.ndim() < 1) throw Error("softmax: scalar input");
  const int64_t c = x.dim(-1), rows = c ? x.numel() / c : 0;
  Tensor y = Tensor::empty(x.shape());
  for (int64_t r = 0; r < rows; ++r) {
    const float* s = x.data() + r * c;
    float* d = y.data() + r * c;
    float mx = -std::numeric_limits<float>::infinity();
    for (int64_t j = 0; j < c; ++j) mx = std::max(mx, s[j]);
    double sum = 0.0;
    for (int64_t j = 0; j < c; ++j) sum += std::exp(double(s[j]) - mx);
    for (int64_t j = 0; j < c; ++j) d[j] = static_cast<float>(std::exp(double(s[j]) - mx) / sum);
  }
  return y;
}

void softmax_backward(const Tensor& gy, const Tensor& y, Tensor& gx) {
  const int64_t c = y.dim(-1), rows = c ? y.numel() / c : 0;
  for (int64_t r = 0; r < rows; ++r) {
    const float* g = gy.data() + r * c;
    const float* v = y.data() + r * c;
    float* d = gx.data() + r * c;
    double dot = 0.0;
    for (int64_t j = 0; j < c; ++j) dot += double(g[j]) * v[j];
    for (int64_t j = 0; j < c; ++j) d[j] += static_cast<float>(v[j] * (g[j] - dot));
  }
}

double cross_entropy(const Tensor& logits, const std::vector<int>& targets, double smoothing,
                     Tensor* grad) {
  if (logits.ndim() != 2) throw Error("cross_entropy: logits must be [N, C]");
  const int64_t n = logits.dim(0), c = logits.dim(1);
  if (static_cast<int64_t>(targets.size()) != n)
    throw Error("cross_entropy: " + std::to_string(targets.size()) + " targets for " +
                std::to_string(n) + " rows");
  if (smoothing < 0.0 || smoothing > 1.0) throw Error("cross_entropy: smoothing outside [0, 1]");
  if (grad) check_shape(*grad, logits.shape(), "cross_entropy gradient");
  double total = 0.0;
  for (int64_t r = 0; r < n; ++r) {
    const int t = targets[r];
    if (t < 0 || t >= c)
      throw Error("cross_entropy: target " + std::to_string(t) + " outside [0, " +
                  std::to_string(c) + ")");
    const float* s = logits.data() + r * c;
    double mx = -std::numeric_limits<double>::infinity();
    for (int64_t j = 0; j < c; ++j) mx = std::max(mx, double(s[j]));
    double sum = 0.0;
    for (int64_t j = 0; j < c; ++j) sum += std::exp(s[j] - mx);
    const double lse = mx + std::log(sum);
    // PyTorch: (1 - eps) * nll(target) + eps * mean_j(-log p_j).
    double mean_nll = 0.0;
    for (int64_t j = 0; j < c; ++j) mean_nll += lse - s[j];
    mean_nll /= c;
    total += (1.0 - smoothing) * (lse - s[t]) + smoothing * mean_nll;
    if (grad) {
      float* g = grad->data() + r * c;
      for (int64_t j = 0; j < c; ++j) {
        const double p = std::exp(s[j] - lse);
        const double q = (j == t ? 1.0 - smoothing : 0.0) + smoothing / c;
        g[j] = static_cast<float>((p - q) / n);
      }
    }
  }
  return total / n;
}

}  // namespace isplit
