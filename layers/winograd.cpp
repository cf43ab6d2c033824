#include "layers/winograd.h"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "engine/gemm.h"
#include "engine/kernels/winograd.h"
#include "engine/parallel.h"

namespace isplit {

namespace {
constexpr int64_t L = kWinogradLanes;
constexpr int64_t kPositions = 36;  // 6x6 transform positions of F(4x4, 3x3), the most

// One of the two algorithms: F(4x4, 3x3) (6x6 patches) or F(2x2, 3x3) (4x4 patches, for
// maps with too few 4x4 tiles), with its transforms.
struct Variant {
  int64_t m, alpha;  // output tile side, input patch side (m + 2)
  void (*input)(const float* in, float* v, int64_t stride);
  void (*output)(const float* m, int64_t stride, float bias, bool relu, float* out);
  void (*gather)(const float* const* rows, float* patch);
  void (*interleave)(const float* out, float* rows);
  void (*filter_row)(const float* taps, int64_t tap_stride, int64_t len, int row,
                     float* const* out);
  int64_t positions() const { return alpha * alpha; }
  // Floats a gather row reads: 16 tiles m apart, alpha wide.
  int64_t band_row() const { return m * L + alpha - m; }
};

Variant variant(const WinogradKernels& k, int64_t m) {
  if (m == 2) return {2, 4, k.input16_2, k.output16_2, k.gather16_2, k.interleave16_2, k.filter_row_2};
  return {4, 6, k.input16, k.output16, k.gather16, k.interleave16, k.filter_row};
}

// The setting named by environment variable `name`, parsed by `parse`, else `fallback`.
template <class Mode>
int setting_from_env(const char* name, Mode fallback,
                     Mode (*parse)(const std::string&, const std::string&)) {
  const char* env = std::getenv(name);
  return static_cast<int>(!env || !*env ? fallback : parse(env, name));
}

std::atomic<int>& mode_slot() {
  static std::atomic<int> slot{
      setting_from_env("ISPLIT_WINOGRAD", WinogradMode::Auto, &parse_winograd_mode)};
  return slot;
}

std::atomic<int>& split_slot() {
  static std::atomic<int> slot{static_cast<int>(WinogradSplit::Auto)};
  return slot;
}

std::atomic<bool>& small_maps_slot() {
  static std::atomic<bool> slot{env_switch("ISPLIT_WINOGRAD_F2", true)};
  return slot;
}

std::atomic<int>& filters_slot() {
  static std::atomic<int> slot{setting_from_env("ISPLIT_WINOGRAD_FILTERS", WinogradFilters::Auto,
                                                &parse_winograd_filters)};
  return slot;
}

// Where tile t of the current call sits.
struct TileGeometry {
  int64_t per_image, tiles_w, m;  // m: the tiles' side
  // Image, first output row and column of tile t.
  void locate(int64_t t, int64_t& img, int64_t& oy, int64_t& ox) const {
    img = t / per_image;
    const int64_t r = t % per_image;
    oy = (r / tiles_w) * m;
    ox = (r % tiles_w) * m;
  }
};

// Sixteen consecutive tiles (one lane group) cross tile rows and images; a piece is a run
// of them in one tile row: lanes [l0, l1) of the group, the first at output pixel
// (oy, ox) of image img.
struct Piece {
  int64_t l0, l1, img, oy, ox;
};

// The lane groups of a block of `count` tiles from t0: group g holds the pieces
// [first[g], first[g + 1]).
struct BlockPieces {
  std::vector<Piece> pieces;
  std::vector<size_t> first;
};

BlockPieces block_pieces(const TileGeometry& geo, int64_t t0, int64_t count) {
  BlockPieces out;
  int64_t img, oy, ox;
  geo.locate(t0, img, oy, ox);
  const int64_t m = geo.m, end_x = geo.tiles_w * m, end_y = geo.per_image / geo.tiles_w * m;
  for (int64_t col = 0; col < count; col += L) {
    out.first.push_back(out.pieces.size());
    const int64_t lanes = std::min(L, count - col);
    for (int64_t l = 0; l < lanes;) {
      const int64_t run = std::min((end_x - ox) / m, lanes - l);
      out.pieces.push_back({l, l + run, img, oy, ox});
      l += run;
      ox += m * run;
      if (ox < end_x) continue;
      ox = 0;
      oy += m;
      if (oy < end_y) continue;
      oy = 0;
      ++img;
    }
  }
  out.first.push_back(out.pieces.size());
  return out;
}

// d[0, n) = s[0, n) for the short runs of a tile row. Fixed-size chunks compile to vector
// moves where a plain loop became a call to memmove.
inline void copy_run(float* d, const float* s, int64_t n) {
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) std::memcpy(d + j, s + j, 8 * sizeof(float));
  for (; j < n; ++j) d[j] = s[j];
}

// d[0, n) = 0, like copy_run.
inline void zero_run(float* d, int64_t n) {
  static const float zeros[8] = {};
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) std::memcpy(d + j, zeros, 8 * sizeof(float));
  for (; j < n; ++j) d[j] = 0.0f;
}

// Floats a gather16 row reads: 16 tiles 4 apart, 6 wide (the larger variant's).
constexpr int64_t kBandRow = 4 * L + 2;

// Input value (iy, ix) of a plane, zero outside it.
inline float tap(const float* plane, int64_t h, int64_t w, int64_t iy, int64_t ix) {
  return iy >= 0 && iy < h && ix >= 0 && ix < w ? plane[iy * w + ix] : 0.0f;
}

// The alpha x alpha input patches of one lane group in channel c into
// patch[(r * alpha + col) * 16 + l]. The gather reads alpha rows with tile l at m l:
// straight from x when the group is one piece whose rows lie inside the image (the read
// may run on past the piece into data no lane keeps), else from copies in band with zeros
// outside the image. The last two columns of a piece's last tile are not its neighbour's
// first two, so they are set afterwards.
void gather_group(const float* x, int64_t channels, int64_t c, int64_t h, int64_t w, int64_t ph,
                  int64_t pw, const Piece* pieces, const Piece* pieces_end, int64_t lanes,
                  const Variant& var, float* band, float* patch) {
  const int64_t m = var.m, alpha = var.alpha, brow = var.band_row();
  const float* rows[6];
  const Piece& p0 = *pieces;
  const float* x_end = x + (p0.img + 1) * channels * h * w;  // in bounds to read
  const int64_t ix0 = p0.ox - pw;
  bool direct = pieces_end - pieces == 1 && p0.oy - ph >= 0 && p0.oy - ph + alpha <= h &&
                ix0 >= 0 && ix0 + m * lanes + 2 <= w;
  const float* src = direct ? x + (p0.img * channels + c) * h * w + (p0.oy - ph) * w + ix0 : x;
  direct = direct && src + (alpha - 1) * w + brow <= x_end;
  if (direct) {
    for (int64_t r = 0; r < alpha; ++r) rows[r] = src + r * w;
  } else {
    // Only the columns [m l0, m l1) of each piece are ever kept; past the group, band holds
    // zeros or an earlier group's values, which only unused lanes read.
    for (const Piece* p = pieces; p != pieces_end; ++p) {
      const float* plane = x + (p->img * channels + c) * h * w;
      const int64_t px0 = p->ox - pw, width = m * (p->l1 - p->l0);
      const int64_t c0 = std::min(width, std::max<int64_t>(0, -px0));
      const int64_t c1 = std::max(c0, std::min(width, w - px0));
      for (int64_t r = 0; r < alpha; ++r) {
        float* d = band + r * brow + m * p->l0;
        const int64_t iy = p->oy - ph + r;
        if (iy < 0 || iy >= h) {
          zero_run(d, width);
          continue;
        }
        zero_run(d, c0);
        copy_run(d + c0, plane + iy * w + px0 + c0, c1 - c0);
        zero_run(d + c1, width - c1);
      }
    }
    for (int64_t r = 0; r < alpha; ++r) rows[r] = band + r * brow;
  }
  var.gather(rows, patch);
  for (const Piece* p = pieces; p != pieces_end; ++p) {
    const float* plane = x + (p->img * channels + c) * h * w;
    const int64_t l = p->l1 - 1, ix = p->ox + m * (p->l1 - 1 - p->l0) - pw + m;
    for (int64_t r = 0; r < alpha; ++r) {
      const int64_t iy = p->oy - ph + r;
      patch[(r * alpha + m) * L + l] = tap(plane, h, w, iy, ix);
      patch[(r * alpha + m + 1) * L + l] = tap(plane, h, w, iy, ix + 1);
    }
  }
}

// Lane groups of F(2x2, 3x3) made of at least this many pieces (an 8x8 map's 16 tiles in
// four tile rows) gather through a table of sources instead of copies into a band and
// fixes of each piece's last columns. Alone, with warm caches, two threads: 128 channels
// at 8x8 129 against 139 us per convolution; at 12x12 (three pieces) 1067 against 1050,
// and F(4x4, 3x3)'s 36-value patches were slower this way (64 channels at 16x16 104
// against 98 us, 128 at 28x28 950 against 854), so they keep the band.
constexpr int64_t kTablePieces = 4;

// Where each value of the patches of a block's lane groups comes from: for group g,
// src[(g * positions + r * alpha + col) * L + l] is the offset in x of that value in
// channel 0 of its image (add c * h * w for channel c), or -1 for a zero (padding, a lane
// past the block). The same for every channel, so worked out once per block; empty for
// F(4x4, 3x3) and groups of fewer than kTablePieces pieces, which take gather_group.
std::vector<int64_t> patch_sources(const BlockPieces& bp, int64_t groups, int64_t channels,
                                   int64_t h, int64_t w, int64_t ph, int64_t pw, const Variant& var) {
  const int64_t alpha = var.alpha, m = var.m, positions = var.positions();
  std::vector<int64_t> src;
  if (alpha != 4) return src;
  for (int64_t g = 0; g < groups; ++g) {
    const size_t p0 = bp.first[static_cast<size_t>(g)], p1 = bp.first[static_cast<size_t>(g + 1)];
    if (static_cast<int64_t>(p1 - p0) < kTablePieces) continue;
    if (src.empty()) src.assign(static_cast<size_t>(groups * positions * L), -1);
    int64_t* t = src.data() + g * positions * L;
    for (size_t i = p0; i < p1; ++i) {
      const Piece& p = bp.pieces[i];
      for (int64_t l = p.l0; l < p.l1; ++l) {
        const int64_t iy0 = p.oy - ph, ix0 = p.ox + m * (l - p.l0) - pw;
        for (int64_t r = 0; r < alpha; ++r)
          for (int64_t col = 0; col < alpha; ++col) {
            const int64_t iy = iy0 + r, ix = ix0 + col;
            if (iy >= 0 && iy < h && ix >= 0 && ix < w)
              t[(r * alpha + col) * L + l] = (p.img * channels * h + iy) * w + ix;
          }
      }
    }
  }
  return src;
}

// Writes (or, with accumulate, adds) the interleaved m output rows `tile_rows` of one lane
// group into channel k of y, dropping what falls outside oh x ow.
void store_group(const float* tile_rows, int64_t m, const Piece* pieces, const Piece* pieces_end,
                 int64_t k, int64_t channels, int64_t oh, int64_t ow, bool accumulate, float* y) {
  for (const Piece* p = pieces; p != pieces_end; ++p) {
    float* plane = y + (p->img * channels + k) * oh * ow;
    const int64_t rows = std::min<int64_t>(m, oh - p->oy);
    const int64_t cols = std::min<int64_t>(m * (p->l1 - p->l0), ow - p->ox);
    for (int64_t i = 0; i < rows; ++i) {
      float* dst = plane + (p->oy + i) * ow + p->ox;
      const float* src = tile_rows + i * m * L + m * p->l0;
      if (accumulate)
        for (int64_t j = 0; j < cols; ++j) dst[j] += src[j];
      else
        copy_run(dst, src, cols);
    }
  }
}

// Tiles per block: the block's transformed inputs and products (positions x (Cin + Cout)
// floats per tile) stay within about 4 MiB, in whole lane groups, at least 64 tiles so the
// filters read once per block are used on enough columns.
int64_t tile_block(int64_t positions, int64_t cin, int64_t cout, int64_t tiles) {
  const int64_t per_tile = positions * (cin + cout) * static_cast<int64_t>(sizeof(float));
  int64_t tb = (int64_t{4} << 20) / per_tile / L * L;
  tb = std::max<int64_t>(tb, 64);
  return std::min(tb, tiles);
}
}  // namespace

WinogradSplit winograd_split() { return static_cast<WinogradSplit>(split_slot().load()); }

void set_winograd_split(WinogradSplit split) { split_slot().store(static_cast<int>(split)); }

bool winograd_small_maps() { return small_maps_slot().load(std::memory_order_relaxed); }

void set_winograd_small_maps(bool on) { small_maps_slot().store(on, std::memory_order_relaxed); }

WinogradMode winograd_mode() { return static_cast<WinogradMode>(mode_slot().load()); }

void set_winograd_mode(WinogradMode mode) { mode_slot().store(static_cast<int>(mode)); }

WinogradMode parse_winograd_mode(const std::string& text, const std::string& what) {
  if (text == "0" || text == "off") return WinogradMode::Off;
  if (text == "1" || text == "on") return WinogradMode::On;
  if (text == "auto") return WinogradMode::Auto;
  throw Error(what + ": '" + text + "' is not one of 0/off, 1/on, auto");
}

WinogradFilters winograd_filters_mode() {
  return static_cast<WinogradFilters>(filters_slot().load());
}

void set_winograd_filters_mode(WinogradFilters form) {
  filters_slot().store(static_cast<int>(form));
}

WinogradFilters winograd_filters_for(int64_t out_channels, int64_t in_channels, int64_t tiles,
                                     WinogradFilters form) {
  if (form != WinogradFilters::Auto) return form;
  return out_channels * in_channels <= kStoredFiltersMaxPairs && tiles <= kStoredFiltersMaxTiles
             ? WinogradFilters::Stored
             : WinogradFilters::Streamed;
}


WinogradFilters parse_winograd_filters(const std::string& text, const std::string& what) {
  if (text == "stored") return WinogradFilters::Stored;
  if (text == "streamed") return WinogradFilters::Streamed;
  if (text == "auto") return WinogradFilters::Auto;
  throw Error(what + ": '" + text + "' is not one of stored, streamed, auto");
}

namespace {
// Whether F(2x2, 3x3) may be used now: switched on, and streamed filters on an ISA with
// packed GEMM kernels (where F(2x2, 3x3) transforms the taps as it goes).
bool f2_available() {
  return small_maps_slot().load(std::memory_order_relaxed) &&
         prepack_kernels(active_isa()) != nullptr &&
         winograd_filters_mode() != WinogradFilters::Stored;  // auto streams these layers
}

// 4x4 and 2x2 tiles covering an oh x ow output.
int64_t tiles_of(int64_t oh, int64_t ow, int64_t m) { return ((oh + m - 1) / m) * ((ow + m - 1) / m); }
}  // namespace

int64_t winograd_tiles4(int64_t oh, int64_t ow) { return tiles_of(oh, ow, 4); }

namespace {

// Lane groups' worth of tiles below which a map counts as small.
constexpr int64_t kMinTiles = 16;

// Channel pairs from which F(2x2, 3x3) beats the direct convolution on an 8x8 map (two
// threads, this repository's kernels): since the direct path makes its own columns per
// thread, F(2x2, 3x3) takes 1.2-1.35 times as long at 128 x 128 (ResNet-50's layer2 at
// 64x64 input, forward and importance), while the forward passes of 256 x 512 and
// 512 x 512 stay 5-15 % faster through it (docs/benchmarks.md).
constexpr int64_t kMinPairsF2 = 256 * 256;

// The side of the output tiles for an oh x ow output of cin -> cout channels: 4
// (F(4x4, 3x3)), or 2 where that leaves fewer than a lane group of tiles but 2x2 tiles
// fill one (7x7 to 12x12 maps), the layer is wide enough, and the filters are streamed
// (F(2x2, 3x3) transforms them as it goes).
int64_t winograd_tile_side(int64_t oh, int64_t ow, int64_t cin, int64_t cout, bool streamed) {
  const bool small = tiles_of(oh, ow, 4) < kMinTiles && tiles_of(oh, ow, 2) >= kMinTiles;
  return small && cin * cout >= kMinPairsF2 && streamed && f2_available() ? 2 : 4;
}
}  // namespace

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
  // Filters made now are streamed when f2_available() (it checks the form).
  const int64_t tiles = winograd_tile_side(o[2], o[3], s.in_channels, s.out_channels, true) == 2
                            ? tiles_of(o[2], o[3], 2)
                            : tiles_of(o[2], o[3], 4);
  return s.in_channels >= 16 && s.out_channels >= 16 && tiles >= kMinTiles;
}

namespace {
// The k blocks of the GEMM kernels over k (depth at most kc): block kb is [start(kb), start(kb + 1)).
struct KBlocks {
  int64_t k, count;
  int64_t start(int64_t kb) const { return k * kb / count; }
};
KBlocks k_blocks(int64_t k, int64_t kc) { return {k, (k + kc - 1) / kc}; }

// Floats after each tap's values in a streamed filter's chunk, and after each position in
// a transformed block: the 9 taps read and the 6 positions written side by side would
// otherwise sit a multiple of 4 KiB apart and fight for one L1 set.
constexpr int64_t kTapPad = 16;

// Where a streamed filter's chunk for k block b (start p0, depth) and panel r starts:
// 9 taps of mr * depth values, each followed by kTapPad floats, chunk after chunk.
struct TapLayout {
  int64_t panels, mr;
  int64_t chunk(int64_t b, int64_t p0, int64_t depth, int64_t r) const {
    return 9 * (p0 * panels * mr + (b * panels + r) * kTapPad) + r * 9 * mr * depth;
  }
  int64_t tap_stride(int64_t depth) const { return mr * depth + kTapPad; }
  int64_t floats(int64_t cin, int64_t kblocks) const {
    return 9 * (cin * panels * mr + kblocks * panels * kTapPad);
  }
};

// Calls fn(tap_index, weight_index) for every element of a streamed filter's taps that
// holds a weight: the two sides of the layout (padding rows are skipped).
template <class Fn>
void for_each_tap(int64_t cout, int64_t cin, int64_t mr, int64_t kc, Fn fn) {
  const TapLayout lay{(cout + mr - 1) / mr, mr};
  const KBlocks kb = k_blocks(cin, kc);
  parallel_for(lay.panels, [&](int64_t lo, int64_t hi) {
    for (int64_t b = 0; b < kb.count; ++b) {
      const int64_t p0 = kb.start(b), depth = kb.start(b + 1) - p0;
      for (int64_t r = lo; r < hi; ++r) {
        const int64_t base = lay.chunk(b, p0, depth, r), ts = lay.tap_stride(depth);
        const int64_t rows = std::min(mr, cout - r * mr);
        for (int64_t t = 0; t < 9; ++t)
          for (int64_t p = 0; p < depth; ++p)
            for (int64_t i = 0; i < rows; ++i)
              fn(base + t * ts + p * mr + i, ((r * mr + i) * cin + p0 + p) * 9 + t);
      }
    }
  });
}

// Filters in the stored form: U transformed in double and packed per position.
WinogradFilter stored_filter(const Tensor& w) {
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


// Filters in the streamed form for kernels with panels of mr rows and k blocks up to kc.
WinogradFilter streamed_filter(const Tensor& w, int64_t mr, int64_t kc) {
  WinogradFilter f;
  f.out_channels = w.dim(0);
  f.in_channels = w.dim(1);
  f.isa = active_isa();
  f.mr = mr;
  f.kc = kc;
  const TapLayout lay{(f.out_channels + mr - 1) / mr, mr};
  f.taps = Tensor::zeros({lay.floats(f.in_channels, k_blocks(f.in_channels, kc).count)});
  const float* src = w.data();
  float* dst = f.taps.data();
  for_each_tap(f.out_channels, f.in_channels, mr, kc,
               [&](int64_t ti, int64_t wi) { dst[ti] = src[wi]; });
  return f;
}
}  // namespace

int64_t WinogradFilter::bytes() const {
  int64_t total = streamed() ? taps.numel() * static_cast<int64_t>(sizeof(float)) : 0;
  for (const auto& p : positions) total += p ? p->packed_bytes() : 0;
  return total;
}

WinogradFilter winograd_filter(const Tensor& w, WinogradFilters form) {
  if (w.ndim() != 4 || w.dim(2) != 3 || w.dim(3) != 3)
    throw Error("winograd: expected a [Cout, Cin, 3, 3] filter, got " + shape_str(w.shape()));
  // Auto without a map: as on a small one.
  const PrepackKernels* pk = winograd_filters_for(w.dim(0), w.dim(1), 1, form) == WinogradFilters::Streamed
                                 ? prepack_kernels(active_isa())
                                 : nullptr;
  if (pk)
    return streamed_filter(w, pk->mr, pk->kc);
  return stored_filter(w);
}

Tensor winograd_filter_weights(const WinogradFilter& f) {
  if (!f.streamed()) throw Error("winograd: only streamed filters hold their weights");
  Tensor g = Tensor::empty({f.out_channels, f.in_channels, 3, 3});
  const float* src = f.taps.data();
  float* dst = g.data();
  for_each_tap(f.out_channels, f.in_channels, f.mr, f.kc,
               [&](int64_t ti, int64_t wi) { dst[wi] = src[ti]; });
  if (!f.transposed) return g;
  // g is the rotated, transposed filter of winograd_filter_transposed: turn it back.
  Tensor w = Tensor::empty({f.in_channels, f.out_channels, 3, 3});
  for (int64_t i = 0; i < f.out_channels; ++i)
    for (int64_t o = 0; o < f.in_channels; ++o)
      for (int64_t k = 0; k < 9; ++k) w[(o * f.out_channels + i) * 9 + k] = g[(i * f.in_channels + o) * 9 + (8 - k)];
  return w;
}

namespace {
// Bytes of transformed filters one thread makes at a time (six positions of a few
// panels): they stay in L2 beside the transformed inputs the GEMMs read.
constexpr int64_t kFilterChunkBytes = 192 << 10;

// Floats between the transform positions of the input and product buffers (run_winograd).
constexpr int64_t kPositionPad = 16;

// products[xi] = U[xi] V[xi] for the 36 positions, with U made from f's taps as it goes:
// the output channels are cut into blocks of a few panels, and per block each row of six
// positions is transformed (filter_row) and multiplied while it is in L2. Each product
// element gets the FMAs, in the order, of a GEMM with the whole U (the k blocks are the
// same), so the cut never changes a bit. V is [Cin][stride] per position, or in the
// packed-B layout when packed_v.
void streamed_products(const WinogradFilter& f, const Variant& var,
                       const PrepackKernels& pk, int64_t count, const float* vd, int64_t stride,
                       bool packed_v, int64_t vpos, float* md, int64_t mpos, bool by_tiles) {
  const int64_t cout = f.out_channels, cin = f.in_channels, mr = f.mr, alpha = var.alpha;
  const TapLayout lay{(cout + mr - 1) / mr, mr};
  const int64_t panels = lay.panels;
  const KBlocks kb = k_blocks(cin, f.kc);
  const int64_t row_floats = alpha * (mr * cin + kTapPad);  // one panel's row of positions
  const int64_t per_block = std::max<int64_t>(
      1, kFilterChunkBytes / (row_floats * static_cast<int64_t>(sizeof(float))));
  // Split by channel blocks: at least one block per thread, and a whole number of blocks
  // per thread when possible. Split by tiles: every thread runs every block.
  const int64_t threads = num_threads();
  int64_t blocks = (panels + per_block - 1) / per_block;
  if (!by_tiles) blocks = std::min(panels, (blocks + threads - 1) / threads * threads);
  const int64_t cap = (panels + blocks - 1) / blocks;
  const float* taps = f.taps.data();
  // Channel blocks [b0, b1) over the product columns [n0, n1) on the calling thread.
  auto run_blocks = [&](int64_t b0, int64_t b1, int64_t n0, int64_t n1) {
    Tensor ubuf = Tensor::empty({cap * row_floats});
    float* u = ubuf.data();
    for (int64_t blk = b0; blk < b1; ++blk) {
      const int64_t q0 = panels * blk / blocks, q1 = panels * (blk + 1) / blocks;
      const int64_t np = q1 - q0, rows = std::min(q1 * mr, cout) - q0 * mr;
      const int64_t one = np * mr * cin + kTapPad;  // floats of one position's panels, padded
      for (int ri = 0; ri < alpha; ++ri) {
        for (int64_t b = 0; b < kb.count; ++b) {
          const int64_t p0 = kb.start(b), depth = kb.start(b + 1) - p0;
          for (int64_t r = q0; r < q1; ++r) {
            float* outs[6];
            for (int64_t j = 0; j < alpha; ++j) outs[j] = u + j * one + p0 * np * mr + (r - q0) * mr * depth;
            var.filter_row(taps + lay.chunk(b, p0, depth, r), lay.tap_stride(depth), mr * depth,
                           ri, outs);
          }
        }
        for (int64_t j = 0; j < alpha; ++j) {
          const int64_t xi = ri * alpha + j;
          PrepackedJob job{false, u + j * one, rows, cin, 0, rows, n0, n1, false,
                           vd + xi * vpos, stride, 0.0f, md + xi * mpos + q0 * mr * stride,
                           stride, GemmEpilogue{}, packed_v};
          pk.run(job);
        }
      }
    }
  };
  if (!by_tiles) {
    parallel_for(blocks, [&](int64_t lo, int64_t hi) { run_blocks(lo, hi, 0, count); });
    return;
  }
  // Each thread's columns in whole tiles of the packed-B layout, as even as those allow.
  // The last tile is often short (196 tiles: six of 32 columns and one of 4), so halving
  // the tile count would give one thread 128 columns and the other 68.
  const int64_t units = (count + pk.nr - 1) / pk.nr;
  const int64_t parts = std::min<int64_t>(num_threads(), units);
  auto cut = [&](int64_t i) {
    return i >= parts ? count : std::min(count, (count * i / parts + pk.nr / 2) / pk.nr * pk.nr);
  };
  parallel_for(parts, [&](int64_t lo, int64_t hi) {
    if (cut(hi) > cut(lo)) run_blocks(0, blocks, cut(lo), cut(hi));
  });
}

// The Winograd convolution of x (channels s.in_channels) with f into y (shape os, already
// allocated), written or added (accumulate), plus bias and ReLU when writing.
void run_winograd(const Tensor& x, const WinogradFilter& f, const Tensor* b, const Conv2dSpec& s,
                  bool relu, const Shape& os, bool accumulate, float* yd) {
  const int64_t n = x.dim(0), cin = s.in_channels, h = x.dim(2), w = x.dim(3);
  const int64_t cout = s.out_channels, oh = os[2], ow = os[3];
  const Isa isa = active_isa();
  const WinogradKernels& kern = winograd_kernels(isa);
  const Variant var = variant(kern, winograd_tile_side(oh, ow, cin, cout, f.streamed()));
  const int64_t m = var.m, positions = var.positions();
  const TileGeometry geo{((oh + m - 1) / m) * ((ow + m - 1) / m), (ow + m - 1) / m, m};
  const int64_t tiles = n * geo.per_image;
  // The transformed inputs are written straight into the layout the GEMM kernels read B
  // in (packed B), when their tiles hold whole lane groups: no copy of B per GEMM call.
  const PrepackKernels* pk = prepack_kernels(isa);
  const bool packed_v = pk && pk->nr % L == 0;
  const int64_t unit = packed_v ? pk->nr : L;
  const int64_t tb = tile_block(positions, cin, cout, tiles);
  const int64_t stride = (tb + unit - 1) / unit * unit;
  const PackedBLayout vlay = packed_v ? packed_b_layout(cin, stride) : PackedBLayout{};
  // Scratch from the tensor block cache: transformed inputs [positions][Cin][stride] (each
  // position's Cin x stride in the packed-B layout when packed_v) and
  // products [positions][Cout][stride] of one block of tiles, position xi at xi * vpos and
  // xi * mpos. Without the pad those were multiples of 4 KiB (channel counts are multiples
  // of 64), so the 36 vectors a transform reads or writes fell into one L1 set, and
  // input16 and output16 took 2.5 to 3 times as long.
  const int64_t vpos = cin * stride + kPositionPad, mpos = cout * stride + kPositionPad;
  Tensor vbuf = Tensor::empty({positions * vpos});
  Tensor mbuf = Tensor::empty({positions * mpos});
  // Threads split the channels of the products, or, where the transformed filters are
  // small beside a block's inputs and products (layer1 of ResNet-50, VGG16's first block
  // at 224x224), the tiles: then each thread transforms its tiles' inputs, multiplies them
  // by all the filters and transforms their products back, and its data stay in its own
  // cache from one step to the next. The other split sends every transformed input to
  // both threads through the shared L3.
  const int64_t filter_bytes = positions * cin * cout * static_cast<int64_t>(sizeof(float));
  const WinogradSplit split = winograd_split();
  const bool by_tiles = f.streamed() && packed_v && split != WinogradSplit::Channels &&
                        (split == WinogradSplit::Tiles ||
                         filter_bytes * num_threads() <=
                             positions * (vpos + mpos) * static_cast<int64_t>(sizeof(float)));
  if (f.isa != isa || (!f.streamed() && f.positions.size() != static_cast<size_t>(kPositions)))
    throw Error("winograd: filters were packed for " + isa_name(f.isa) +
                " kernels but the active ISA is " + isa_name(isa) + "; transform them again");
  const float* xd = x.data();
  float* vd = vbuf.data();
  float* md = mbuf.data();
  for (int64_t t0 = 0; t0 < tiles; t0 += tb) {
    const int64_t count = std::min(tb, tiles - t0), groups = (count + L - 1) / L;
    const BlockPieces bp = block_pieces(geo, t0, count);
    const Piece* pieces = bp.pieces.data();
    const std::vector<int64_t> sources = patch_sources(bp, groups, cin, h, w, s.pad_h, s.pad_w, var);
    parallel_for(cin * groups, [&](int64_t lo, int64_t hi) {
      alignas(64) float patch[kPositions * L];
      alignas(64) float band[6 * kBandRow] = {};  // lanes past a group read what is left
      for (int64_t item = lo; item < hi; ++item) {
        // Split by tiles: items in lane-group order, so a thread's share is whole groups.
        const int64_t c = by_tiles ? item % cin : item / groups;
        const int64_t g = by_tiles ? item / cin : item % groups;
        const int64_t* from = sources.empty() ? nullptr : sources.data() + g * positions * L;
        if (from && static_cast<int64_t>(bp.first[g + 1] - bp.first[g]) >= kTablePieces) {
          const float* xc = xd + c * h * w;
          for (int64_t e = 0; e < positions * L; ++e) patch[e] = from[e] >= 0 ? xc[from[e]] : 0.0f;
        } else {
          gather_group(xd, cin, c, h, w, s.pad_h, s.pad_w, pieces + bp.first[g],
                       pieces + bp.first[g + 1], std::min(L, count - g * L), var, band, patch);
        }
        var.input(patch, vd + (packed_v ? vlay.offset(c, g * L) : c * stride + g * L), vpos);
      }
    });
    if (f.streamed())
      streamed_products(f, var, *pk, count, vd, stride, packed_v, vpos, md, mpos, by_tiles);
    else
      // One GEMM per transform position: products[xi] = U[xi] (Cout x Cin) * V[xi] (Cin x tiles).
      parallel_for(kPositions, [&](int64_t lo, int64_t hi) {
        for (int64_t xi = lo; xi < hi; ++xi) {
          const PackedMatrix& u = *f.positions[static_cast<size_t>(xi)];
          if (packed_v)
            gemm_prepacked_single_packed_b(u, count, vd + xi * vpos, stride, 0.0f,
                                           md + xi * mpos, stride);
          else
            gemm_prepacked_single(u, false, count, vd + xi * vpos, stride, 0.0f, md + xi * mpos,
                                  stride);
        }
      });
    parallel_for(cout * groups, [&](int64_t lo, int64_t hi) {
      alignas(64) float out[16 * L];
      alignas(64) float tile_rows[16 * L];
      alignas(64) float last[kPositions * L];
      for (int64_t item = lo; item < hi; ++item) {
        const int64_t k = by_tiles ? item % cout : item / groups;
        const int64_t g = by_tiles ? item / cout : item % groups;
        const int64_t lanes = std::min(L, count - g * L);
        const float* mv = md + k * stride + g * L;
        int64_t m_stride = mpos;
        if (lanes < L) {
          // A partial last group: the GEMM left the columns past `count` unwritten.
          std::fill(last, last + positions * L, 0.0f);
          for (int64_t xi = 0; xi < positions; ++xi)
            std::copy(mv + xi * m_stride, mv + xi * m_stride + lanes, last + xi * L);
          mv = last;
          m_stride = L;
        }
        var.output(mv, m_stride, b ? (*b)[k] : 0.0f, relu, out);
        var.interleave(out, tile_rows);
        store_group(tile_rows, m, pieces + bp.first[g], pieces + bp.first[g + 1], k, cout, oh, ow,
                    accumulate, yd);
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

WinogradFilter winograd_filter_transposed(const Tensor& w, WinogradFilters form) {
  if (w.ndim() != 4 || w.dim(2) != 3 || w.dim(3) != 3)
    throw Error("winograd: expected a [Cout, Cin, 3, 3] filter, got " + shape_str(w.shape()));
  WinogradFilter f = winograd_filter(flip_conv_weights(w), form);
  f.transposed = true;
  return f;
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
