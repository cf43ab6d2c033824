#include "layers/winograd.h"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <string>

#include "engine/gemm.h"
#include "engine/kernels/winograd.h"
#include "engine/parallel.h"

namespace isplit {

namespace {
constexpr int64_t L = kWinogradLanes;
constexpr int64_t kPositions = 36;  // 6x6 transform positions

WinogradMode mode_from_env() {
  const char* env = std::getenv("ISPLIT_WINOGRAD");
  if (!env || !*env) return WinogradMode::Auto;
  return parse_winograd_mode(env, "ISPLIT_WINOGRAD");
}

std::atomic<int>& mode_slot() {
  static std::atomic<int> slot{static_cast<int>(mode_from_env())};
  return slot;
}

// Where tile t of the current call sits.
struct TileGeometry {
  int64_t per_image, tiles_w;
  // Image, first output row and column of tile t.
  void locate(int64_t t, int64_t& img, int64_t& oy, int64_t& ox) const {
    img = t / per_image;
    const int64_t r = t % per_image;
    oy = (r / tiles_w) * 4;
    ox = (r % tiles_w) * 4;
  }
};

// Copies the 6x6 input patches of `lanes` tiles starting at t0 (channel c) into
// patch[(r * 6 + col) * 16 + lane]; taps outside the image and unused lanes are zero.
void gather_patches(const float* x, int64_t channels, int64_t c, int64_t h, int64_t w,
                    int64_t ph, int64_t pw, const TileGeometry& geo, int64_t t0, int64_t lanes,
                    float* patch) {
  if (lanes < L) std::fill(patch, patch + kPositions * L, 0.0f);
  for (int64_t l = 0; l < lanes; ++l) {
    int64_t img, oy, ox;
    geo.locate(t0 + l, img, oy, ox);
    const float* plane = x + (img * channels + c) * h * w;
    const int64_t iy0 = oy - ph, ix0 = ox - pw;
    if (iy0 >= 0 && iy0 + 6 <= h && ix0 >= 0 && ix0 + 6 <= w) {
      const float* src = plane + iy0 * w + ix0;
      for (int64_t r = 0; r < 6; ++r)
        for (int64_t col = 0; col < 6; ++col) patch[(r * 6 + col) * L + l] = src[r * w + col];
      continue;
    }
    for (int64_t r = 0; r < 6; ++r) {
      const int64_t iy = iy0 + r;
      for (int64_t col = 0; col < 6; ++col) {
        const int64_t ix = ix0 + col;
        const bool inside = iy >= 0 && iy < h && ix >= 0 && ix < w;
        patch[(r * 6 + col) * L + l] = inside ? plane[iy * w + ix] : 0.0f;
      }
    }
  }
}

// Writes (or, with accumulate, adds) the 4x4 output tiles out[(i * 4 + j) * 16 + lane] of
// `lanes` tiles starting at t0 into channel k of y, dropping what falls outside oh x ow.
void scatter_tiles(const float* out, int64_t lanes, const TileGeometry& geo, int64_t t0,
                   int64_t k, int64_t channels, int64_t oh, int64_t ow, bool accumulate,
                   float* y) {
  for (int64_t l = 0; l < lanes; ++l) {
    int64_t img, oy, ox;
    geo.locate(t0 + l, img, oy, ox);
    float* plane = y + (img * channels + k) * oh * ow;
    const int64_t rows = std::min<int64_t>(4, oh - oy), cols = std::min<int64_t>(4, ow - ox);
    for (int64_t i = 0; i < rows; ++i) {
      float* dst = plane + (oy + i) * ow + ox;
      if (accumulate)
        for (int64_t j = 0; j < cols; ++j) dst[j] += out[(i * 4 + j) * L + l];
      else
        for (int64_t j = 0; j < cols; ++j) dst[j] = out[(i * 4 + j) * L + l];
    }
  }
}

// Tiles per block: the block's transformed inputs and products (36 x (Cin + Cout) floats
// per tile) stay within about 4 MiB, in whole lane groups, at least 64 tiles so the
// filters read once per block are used on enough columns.
int64_t tile_block(int64_t cin, int64_t cout, int64_t tiles) {
  const int64_t per_tile = kPositions * (cin + cout) * static_cast<int64_t>(sizeof(float));
  int64_t tb = (int64_t{4} << 20) / per_tile / L * L;
  tb = std::max<int64_t>(tb, 64);
  return std::min(tb, tiles);
}
}  // namespace

WinogradMode winograd_mode() { return static_cast<WinogradMode>(mode_slot().load()); }

void set_winograd_mode(WinogradMode mode) { mode_slot().store(static_cast<int>(mode)); }

WinogradMode parse_winograd_mode(const std::string& text, const std::string& what) {
  if (text == "0" || text == "off") return WinogradMode::Off;
  if (text == "1" || text == "on") return WinogradMode::On;
  if (text == "auto") return WinogradMode::Auto;
  throw Error(what + ": '" + text + "' is not one of 0/off, 1/on, auto");
}

bool winograd_applies(const Conv2dSpec& s) {
  return s.kh == 3 && s.kw == 3 && s.stride_h == 1 && s.stride_w == 1 && s.dil_h == 1 &&
         s.dil_w == 1 && s.groups == 1;
}

bool winograd_pays(const Shape& x, const Conv2dSpec& s) {
  const WinogradMode mode = winograd_mode();
  if (mode == WinogradMode::Off || !winograd_applies(s) || x.size() != 4) return false;
  if (mode == WinogradMode::On) return true;
  // Decided per image, never by the batch size, so an image's result does not depend on
  // the batch it came in (sharded analyses merge to exactly the single run).
  const Shape o = conv2d_out_shape(x, s);
  const int64_t tiles = ((o[2] + 3) / 4) * ((o[3] + 3) / 4);
  return s.in_channels >= 16 && s.out_channels >= 16 && tiles >= 16;
}

WinogradFilter winograd_filter(const Tensor& w) {
  if (w.ndim() != 4 || w.dim(2) != 3 || w.dim(3) != 3)
    throw Error("winograd: expected a [Cout, Cin, 3, 3] filter, got " + shape_str(w.shape()));
  WinogradFilter f;
  f.out_channels = w.dim(0);
  f.in_channels = w.dim(1);
  const int64_t pairs = f.out_channels * f.in_channels;
  Tensor ut = Tensor::empty({kPositions, f.out_channels, f.in_channels});
  // G of F(4x4, 3x3), rows applied to each column of g, then to each row of G g.
  static const double G[6][3] = {{1.0 / 4, 0, 0},          {-1.0 / 6, -1.0 / 6, -1.0 / 6},
                                 {-1.0 / 6, 1.0 / 6, -1.0 / 6}, {1.0 / 24, 1.0 / 12, 1.0 / 6},
                                 {1.0 / 24, -1.0 / 12, 1.0 / 6}, {0, 0, 1}};
  const float* src = w.data();
  float* u = ut.data();
  parallel_for(pairs, [&](int64_t b, int64_t e) {
    for (int64_t p = b; p < e; ++p) {
      const float* g = src + p * 9;
      double gg[6][3];
      for (int i = 0; i < 6; ++i)
        for (int j = 0; j < 3; ++j)
          gg[i][j] = G[i][0] * g[j] + G[i][1] * g[3 + j] + G[i][2] * g[6 + j];
      for (int i = 0; i < 6; ++i)
        for (int j = 0; j < 6; ++j) {
          const double v = gg[i][0] * G[j][0] + gg[i][1] * G[j][1] + gg[i][2] * G[j][2];
          u[(i * 6 + j) * pairs + p] = static_cast<float>(v);
        }
    }
  });
  // Each position's U packed once: the convolutions multiply by it for every tile block.
  f.isa = active_isa();
  f.positions.resize(kPositions);
  parallel_for(kPositions, [&](int64_t b, int64_t e) {
    for (int64_t xi = b; xi < e; ++xi)
      f.positions[static_cast<size_t>(xi)] = PackedMatrix::pack_owned(
          false, f.out_channels, f.in_channels, u + xi * pairs, f.in_channels);
  });
  return f;
}

namespace {
// The Winograd convolution of x (channels s.in_channels) with f into y (shape os, already
// allocated), written or added (accumulate), plus bias and ReLU when writing.
void run_winograd(const Tensor& x, const WinogradFilter& f, const Tensor* b, const Conv2dSpec& s,
                  bool relu, const Shape& os, bool accumulate, float* yd) {
  const int64_t n = x.dim(0), cin = s.in_channels, h = x.dim(2), w = x.dim(3);
  const int64_t cout = s.out_channels, oh = os[2], ow = os[3];
  const TileGeometry geo{((oh + 3) / 4) * ((ow + 3) / 4), (ow + 3) / 4};
  const int64_t tiles = n * geo.per_image;
  const int64_t tb = tile_block(cin, cout, tiles), stride = (tb + L - 1) / L * L;
  // Scratch from the tensor block cache: transformed inputs [36][Cin][stride] and
  // products [36][Cout][stride] of one block of tiles.
  Tensor vbuf = Tensor::empty({kPositions * cin * stride});
  Tensor mbuf = Tensor::empty({kPositions * cout * stride});
  const Isa isa = active_isa();
  if (f.isa != isa || f.positions.size() != static_cast<size_t>(kPositions))
    throw Error("winograd: filters were packed for " + isa_name(f.isa) +
                " kernels but the active ISA is " + isa_name(isa) + "; transform them again");
  const WinogradKernels& kern = winograd_kernels(isa);
  const float* xd = x.data();
  float* vd = vbuf.data();
  float* md = mbuf.data();
  for (int64_t t0 = 0; t0 < tiles; t0 += tb) {
    const int64_t count = std::min(tb, tiles - t0), groups = (count + L - 1) / L;
    parallel_for(cin * groups, [&](int64_t lo, int64_t hi) {
      alignas(64) float patch[kPositions * L];
      for (int64_t item = lo; item < hi; ++item) {
        const int64_t c = item / groups, g = item % groups;
        const int64_t lanes = std::min(L, count - g * L);
        gather_patches(xd, cin, c, h, w, s.pad_h, s.pad_w, geo, t0 + g * L, lanes, patch);
        kern.input16(patch, vd + c * stride + g * L, cin * stride);
      }
    });
    // One GEMM per transform position: products[xi] = U[xi] (Cout x Cin) * V[xi] (Cin x tiles).
    parallel_for(kPositions, [&](int64_t lo, int64_t hi) {
      for (int64_t xi = lo; xi < hi; ++xi)
        gemm_prepacked_single(*f.positions[static_cast<size_t>(xi)], false, count,
                              vd + xi * cin * stride, stride, 0.0f, md + xi * cout * stride,
                              stride);
    });
    parallel_for(cout * groups, [&](int64_t lo, int64_t hi) {
      alignas(64) float out[16 * L];
      for (int64_t item = lo; item < hi; ++item) {
        const int64_t k = item / groups, g = item % groups;
        const int64_t lanes = std::min(L, count - g * L);
        kern.output16(md + k * stride + g * L, cout * stride, b ? (*b)[k] : 0.0f, relu, out);
        scatter_tiles(out, lanes, geo, t0 + g * L, k, cout, oh, ow, accumulate, yd);
      }
    });
  }
}

// The convolution whose output is the data gradient of s: channels swapped, padding 2 - p.
Conv2dSpec transposed_spec(const Conv2dSpec& s) {
  Conv2dSpec t = s;
  t.in_channels = s.out_channels;
  t.out_channels = s.in_channels;
  t.pad_h = 2 - s.pad_h;
  t.pad_w = 2 - s.pad_w;
  return t;
}
}  // namespace

Tensor conv2d_forward_winograd(const Tensor& x, const WinogradFilter& f, const Tensor* b,
                               const Conv2dSpec& s, bool relu) {
  if (!winograd_applies(s))
    throw Error("winograd: only 3x3 convolutions with stride 1, dilation 1 and one group");
  if (x.ndim() != 4 || x.dim(1) != s.in_channels)
    throw Error("winograd: input " + shape_str(x.shape()) + " does not have " +
                std::to_string(s.in_channels) + " channels");
  if (f.in_channels != s.in_channels || f.out_channels != s.out_channels)
    throw Error("winograd: the filter's channels do not match the convolution");
  if (b && b->numel() != s.out_channels) throw Error("winograd: bias size mismatch");
  const Shape os = conv2d_out_shape(x.shape(), s);
  Tensor y = Tensor::empty(os);
  if (y.numel() > 0) run_winograd(x, f, b, s, relu, os, /*accumulate=*/false, y.data());
  return y;
}

bool winograd_backward_applies(const Conv2dSpec& s) {
  return winograd_applies(s) && s.pad_h >= 0 && s.pad_h <= 2 && s.pad_w >= 0 && s.pad_w <= 2;
}

bool winograd_backward_pays(const Shape& gy, const Conv2dSpec& s) {
  return winograd_backward_applies(s) && winograd_pays(gy, transposed_spec(s));
}

WinogradFilter winograd_filter_transposed(const Tensor& w) {
  if (w.ndim() != 4 || w.dim(2) != 3 || w.dim(3) != 3)
    throw Error("winograd: expected a [Cout, Cin, 3, 3] filter, got " + shape_str(w.shape()));
  const int64_t cout = w.dim(0), cin = w.dim(1);
  Tensor t = Tensor::empty({cin, cout, 3, 3});
  for (int64_t o = 0; o < cout; ++o)
    for (int64_t i = 0; i < cin; ++i)
      for (int64_t k = 0; k < 9; ++k) t[(i * cout + o) * 9 + (8 - k)] = w[(o * cin + i) * 9 + k];
  return winograd_filter(t);
}

void conv2d_backward_data_winograd(const Tensor& gy, const WinogradFilter& ft, const Conv2dSpec& s,
                                   Tensor& gx, bool accumulate) {
  if (!winograd_backward_applies(s))
    throw Error("winograd: data gradient only of 3x3 stride-1 convolutions padded by 0 to 2");
  if (gx.ndim() != 4 || gx.dim(1) != s.in_channels)
    throw Error("winograd: input gradient " + shape_str(gx.shape()) + " does not have " +
                std::to_string(s.in_channels) + " channels");
  const Shape os = conv2d_out_shape(gx.shape(), s);
  if (gy.shape() != os)
    throw Error("winograd: output gradient " + shape_str(gy.shape()) + ", expected " +
                shape_str(os));
  if (ft.in_channels != s.out_channels || ft.out_channels != s.in_channels)
    throw Error("winograd: the transposed filter's channels do not match the convolution");
  if (gx.numel() == 0) return;
  run_winograd(gy, ft, nullptr, transposed_spec(s), false, gx.shape(), accumulate, gx.data());
}

}  // namespace isplit
