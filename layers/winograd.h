// Winograd F(4x4, 3x3) convolution for inference (engine/kernels/winograd.h has the
// transforms). A 3x3 stride-1 convolution is computed per 4x4 output tile from a 6x6
// input patch with 36 multiplications per channel pair instead of 144: the filters are
// transformed once (WinogradFilter, kept by the Conv2d module after
// Model::prepare_inference), the input tiles per call, and the 36 transform positions
// become 36 independent GEMMs over channels. Results differ from the direct path by
// rounding only (tests/test_winograd.cpp bounds the error).
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "engine/cpu.h"
#include "engine/gemm_prepacked.h"
#include "layers/functional.h"

namespace isplit {

// Filters of a 3x3 convolution in the Winograd domain: at each of the 36 positions the
// matrix U = (G g G^T) [out_channels, in_channels], packed once for the GEMM kernels of
// the ISA active when it was made (only that ISA can use it).
struct WinogradFilter {
  int64_t out_channels = 0, in_channels = 0;
  Isa isa = Isa::Scalar;
  std::vector<std::shared_ptr<const PackedMatrix>> positions;
};

// When conv2d layers use Winograd (ISPLIT_WINOGRAD=0 / 1 / auto sets the default).
enum class WinogradMode { Off, On, Auto };
// The current mode (default: the ISPLIT_WINOGRAD variable, else Auto).
WinogradMode winograd_mode();
// Overrides the mode for this process (tests, benchmarks, --winograd).
void set_winograd_mode(WinogradMode mode);
// Parses "0"/"off", "1"/"on", "auto"; throws Error naming `what` otherwise.
WinogradMode parse_winograd_mode(const std::string& text, const std::string& what);

// True when Winograd F(4x4, 3x3) can compute s: 3x3 kernel, stride 1, dilation 1, one group.
bool winograd_applies(const Conv2dSpec& s);
// Whether a packed layer should use Winograd for input shape x under the current mode
// (Auto: enough channels, and enough tiles per image that the 36 GEMMs outrun the direct
// one; never decided by the batch size, so a batch's images get the bits they get alone).
bool winograd_pays(const Shape& x, const Conv2dSpec& s);
// Transforms w [Cout, Cin, 3, 3] to the Winograd domain (in double, rounded once) and
// packs it for the active ISA.
WinogradFilter winograd_filter(const Tensor& w);
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
WinogradFilter winograd_filter_transposed(const Tensor& w);
// gx += dL/dx for dL/dy = gy, with ft = winograd_filter_transposed(w) (accumulate =
// false: gx = dL/dx).
void conv2d_backward_data_winograd(const Tensor& gy, const WinogradFilter& ft, const Conv2dSpec& s,
                                   Tensor& gx, bool accumulate = true);

}  // namespace isplit
