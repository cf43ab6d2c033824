// Winograd F(4x4, 3x3) convolution for inference (engine/kernels/winograd.h has the
// transforms). A 3x3 stride-1 convolution is computed per 4x4 output tile from a 6x6
// input patch with 36 multiplications per channel pair instead of 144 (on 7x7 to 12x12
// maps, F(2x2, 3x3): 2x2 tiles from 4x4 patches, 16 instead of 36): the filters are
// transformed once (WinogradFilter, kept by the Conv2d module after
// Model::prepare_inference), the input tiles per call, and the 36 (16) transform positions
// become as many independent GEMMs over channels. Results differ from the direct path by
// rounding only (tests/test_winograd.cpp bounds the error).
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "engine/cpu.h"
#include "engine/gemm_prepacked.h"
#include "layers/functional.h"

namespace isplit {

// Filters of a 3x3 convolution for the Winograd domain, for the kernels of the ISA active
// when they were made (only that ISA can use them). Two forms:
// - streamed (ISAs with packed GEMM kernels, WinogradFilters::Streamed): the 3x3 taps laid out in the GEMM kernels'
//   panel order, transformed to U = G g G^T a few panels at a time inside each
//   convolution, while they sit in L2. They take the weights' own memory (the padding of
//   the last panel aside), and whole layers read a quarter of the bytes U would take.
// - stored (the scalar kernels): U [out_channels, in_channels] at each of the 36
//   positions, transformed once in double and packed (4x the weights' memory).
struct WinogradFilter {
  int64_t out_channels = 0, in_channels = 0;
  Isa isa = Isa::Scalar;
  bool transposed = false;  // made by winograd_filter_transposed
  // Stored form: one packed U per position.
  std::vector<std::shared_ptr<const PackedMatrix>> positions;
  // Streamed form: for each k block of the GEMM kernels (start p0, depth kc, of
  // in_channels) and each panel r of mr output channels (the last zero padded), a chunk
  // of the 9 taps, each mr * kc values [p * mr + i] = g[r * mr + i][p0 + p][tap] and a
  // few floats of padding (layers/winograd.cpp, TapLayout).
  Tensor taps;
  int64_t mr = 0, kc = 0;  // the kernels' panel rows and largest k block
  // True for the streamed form.
  bool streamed() const { return taps.defined(); }
  // Bytes the filters hold.
  int64_t bytes() const;
};

// Which form new Winograd filters take (ISPLIT_WINOGRAD_FILTERS=stored / streamed / auto
// sets the default): streamed holds a quarter of the memory; stored can be faster where U
// is used on few tiles (VGG16's 512-channel layers), where the transform inside every call
// is not spread over many; auto (the default) stores the filters of small layers (at most
// kStoredFiltersMaxPairs channel pairs) on small maps (at most kStoredFiltersMaxTiles 4x4
// tiles an image: ResNet-50's layer1 up to 128x128 inputs, 1.8 MB for its three layers) and
// streams the others. Where the active ISA has no packed GEMM kernels filters are stored
// whatever the mode.
enum class WinogradFilters { Stored, Streamed, Auto };
// The most input x output channel pairs whose filters auto stores.
constexpr int64_t kStoredFiltersMaxPairs = 64 * 64;
// The most 4x4 output tiles per image on which auto stores them.
constexpr int64_t kStoredFiltersMaxTiles = 64;
// The current form (default: the ISPLIT_WINOGRAD_FILTERS variable, else Auto).
WinogradFilters winograd_filters_mode();
// The form a layer with these channel counts gets under `form` on maps of `tiles` 4x4
// output tiles per image (Auto resolved to Stored or Streamed; the others as they are).
WinogradFilters winograd_filters_for(int64_t out_channels, int64_t in_channels, int64_t tiles,
                                     WinogradFilters form = winograd_filters_mode());
// 4x4 output tiles of one image of an oh x ow map.
int64_t winograd_tiles4(int64_t oh, int64_t ow);
// Overrides the form for filters made from now on (tests, benchmarks, --winograd-filters).
void set_winograd_filters_mode(WinogradFilters form);
// Parses "stored", "streamed" or "auto"; throws Error naming `what` otherwise.
WinogradFilters parse_winograd_filters(const std::string& text, const std::string& what);

// The [Cout, Cin, 3, 3] weights a streamed filter was made from, bit for bit (for one made
// by winograd_filter_transposed(w): w itself); throws for a stored filter.
Tensor winograd_filter_weights(const WinogradFilter& f);

// When conv2d layers use Winograd (ISPLIT_WINOGRAD=0 / 1 / auto sets the default).
enum class WinogradMode { Off, On, Auto };
// The current mode (default: the ISPLIT_WINOGRAD variable, else Auto).
WinogradMode winograd_mode();
// Overrides the mode for this process (tests, benchmarks, --winograd).
void set_winograd_mode(WinogradMode mode);
// Parses "0"/"off", "1"/"on", "auto"; throws Error naming `what` otherwise.
WinogradMode parse_winograd_mode(const std::string& text, const std::string& what);

// Whether maps too small for sixteen 4x4 output tiles but with sixteen 2x2 ones (7x7 to
// 12x12: ResNet-50's last stage at 224x224, its second at 64x64) use Winograd F(2x2, 3x3)
// in layers of at least 256 x 256 channel pairs (default on; ISPLIT_WINOGRAD_F2=0 turns it
// off). Only streamed filters on ISAs with packed GEMM kernels take that path; elsewhere
// such maps stay with F(4x4, 3x3) when forced on and with the direct convolution under Auto.
bool winograd_small_maps();
// Overrides that for this process (tests, benchmarks).
void set_winograd_small_maps(bool on);

// How the threads share a Winograd convolution's products with streamed filters: by output
// channels, by tiles (each thread takes its tiles through all three steps; every thread
// transforms all the filters), or Auto: by tiles where the transformed filters, times the
// thread count, are no larger than a block's transformed inputs and products. The bits
// are the same either way.
enum class WinogradSplit { Auto, Channels, Tiles };
// The current split rule (default Auto).
WinogradSplit winograd_split();
// Sets the split rule (tests and experiments).
void set_winograd_split(WinogradSplit split);

// True when Winograd F(4x4, 3x3) can compute s: 3x3 kernel, stride 1, dilation 1, one group.
bool winograd_applies(const Conv2dSpec& s);
// Whether a packed layer should use Winograd for input shape x under the current mode
// (Auto: enough channels, and enough tiles per image that the 36 GEMMs outrun the direct
// one; never decided by the batch size, so a batch's images get the bits they get alone).
bool winograd_pays(const Shape& x, const Conv2dSpec& s);
// The Winograd filters of w [Cout, Cin, 3, 3] for the active ISA, in the given form (see
// WinogradFilter; stored where the ISA has no packed GEMM kernels).
WinogradFilter winograd_filter(const Tensor& w, WinogradFilters form = winograd_filters_mode());
// y = conv(x, w) + b, then max(y, 0) when relu, with f = winograd_filter(w); s must
// satisfy winograd_applies. Deterministic: the thread count never changes a result.
Tensor conv2d_forward_winograd(const Tensor& x, const WinogradFilter& f, const Tensor* b,
                               const Conv2dSpec& s, bool relu = false);

// The data gradient of a 3x3 stride-1 convolution is itself one (channels swapped, filter
// rotated by 180 degrees, padding 2 - p), so Winograd computes it too.
// True when s's data gradient can be computed so (winograd_applies and padding 0..2).
bool winograd_backward_applies(const Conv2dSpec& s);
// Whether that pays for an output gradient of shape gy under the current mode.
bool winograd_backward_pays(const Shape& gy, const Conv2dSpec& s);
// The Winograd filters of that convolution, from w [Cout, Cin, 3, 3].
WinogradFilter winograd_filter_transposed(const Tensor& w,
                                          WinogradFilters form = winograd_filters_mode());
// gx += dL/dx for dL/dy = gy, with ft = winograd_filter_transposed(w) (accumulate =
// false: gx = dL/dx).
void conv2d_backward_data_winograd(const Tensor& gy, const WinogradFilter& ft, const Conv2dSpec& s,
                                   Tensor& gx, bool accumulate = true);

}  // namespace isplit
