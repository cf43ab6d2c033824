// Layer kernels: forward and backward of every op on plain tensors (float32, NCHW).
//
// Convention (as in llm.c): a backward *adds* into the gradient buffers it is given,
// so several consumers of one tensor can accumulate into a single buffer. A null
// gradient pointer means that gradient is not wanted and is not computed.
#pragma once
#include <cstdint>
#include <vector>

#include "engine/tensor.h"

namespace isplit {

class PackedMatrix;

// ------------------------------------------------------------------ convolution
struct Conv2dSpec {
  int64_t in_channels = 0, out_channels = 0;
  int64_t kh = 1, kw = 1;
  int64_t stride_h = 1, stride_w = 1;
  int64_t pad_h = 0, pad_w = 0;
  int64_t dil_h = 1, dil_w = 1;
  int64_t groups = 1;
};
// Output shape [N, Cout, OH, OW] for input shape x; throws Error when they do not fit.
Shape conv2d_out_shape(const Shape& x, const Conv2dSpec& s);
// y = conv(x, w) + b; x [N,Cin,H,W], w [Cout,Cin/g,kh,kw], b [Cout] or null.
Tensor conv2d_forward(const Tensor& x, const Tensor& w, const Tensor* b, const Conv2dSpec& s);
// Direct-loop convolution used as the oracle in tests (slow).
// conv2d_forward with the weights prepacked as op(A) = W [Cout, Cin*kh*kw] (groups 1),
// bias, an optional residual (same shape as the output: a residual connection) and an
// optional ReLU applied as each output tile is finished; same bits as conv2d_forward
// followed by adding the residual and relu_inplace.
Tensor conv2d_forward_packed(const Tensor& x, const PackedMatrix& w, const Tensor* b,
                             const Conv2dSpec& s, bool relu = false,
                             const Tensor* residual = nullptr);
Tensor conv2d_forward_naive(const Tensor& x, const Tensor& w, const Tensor* b,
                            const Conv2dSpec& s);
// gx += dL/dx (accumulate = false: gx = dL/dx, gx's old contents are ignored).
void conv2d_backward_data(const Tensor& gy, const Tensor& w, const Conv2dSpec& s, Tensor& gx,
                          bool accumulate = true);
// conv2d_backward_data with the weights prepacked as op(A) = W^T [Cin*kh*kw, Cout]
// (PackedMatrix(true, K, Cout, w, K); groups 1): the same bits.
void conv2d_backward_data_packed(const Tensor& gy, const PackedMatrix& wt, const Conv2dSpec& s,
                                 Tensor& gx, bool accumulate = true);
// The taps of a kernel that some output pixel reads inside an h x w input (not in the
// padding): rows [ky0, ky1] and columns [kx0, kx1] of the kernel.
struct TapRange {
  int64_t ky0 = 0, ky1 = 0, kx0 = 0, kx1 = 0;
};
// True when, on an h x w input, some taps of s only ever read padding (a 3x3 layer on 1x1
// maps reads its centre alone) and the convolution of the other taps, *cropped (kernel
// cut to *r, padding less the rows and columns cut), gives the same output shape: the
// same sums without the products with zeros. False otherwise (r and cropped untouched).
bool taps_crop(const Conv2dSpec& s, int64_t h, int64_t w, TapRange* r, Conv2dSpec* cropped);
// w [Cout, Cin, kh, kw] cut to the taps r.
Tensor crop_taps(const Tensor& w, const TapRange& r);
// True when the data gradient of s is itself a convolution of the output gradient (the
// flipped convolution): stride 1, dilation 1, one group, a kernel wider than 1x1 and
// padding at most the kernel's size minus one on each axis.
bool flipped_conv_applies(const Conv2dSpec& s);
// The flipped convolution of s: channels swapped, padding kh - 1 - pad_h (and so for w).
Conv2dSpec flipped_conv_spec(const Conv2dSpec& s);
// Its weights: w [Cout, Cin, kh, kw] as [Cin, Cout, kh, kw], each kernel rotated by 180
// degrees.
Tensor flip_conv_weights(const Tensor& w);
// conv2d_backward_data of a layer where flipped_conv_applies, as the flipped convolution
// of gy through its weights prepacked as op(A) = flip_conv_weights(w) [Cin, Cout*kh*kw]
// (conv2d_forward_packed, with the old gx as its residual when accumulating): gx is then
// a new tensor. Other bits than conv2d_backward_data (the sums run in the forward's order).
void conv2d_backward_data_flipped(const Tensor& gy, const PackedMatrix& wf, const Conv2dSpec& s,
                                  Tensor& gx, bool accumulate);
// gw += dL/dw and, when gb is given, gb += dL/db.
void conv2d_backward_weight(const Tensor& gy, const Tensor& x, const Conv2dSpec& s, Tensor* gw,
                            Tensor* gb);
// gb[c] += sum over n, h, w of gy[n, c, h, w] (bias gradient of conv and batch norm).
void channel_sum_add(const Tensor& gy, Tensor& gb);

// ------------------------------------------------------------------ linear
// y = x w^T + b; x [N,in], w [out,in], b [out] or null.
Tensor linear_forward(const Tensor& x, const Tensor& w, const Tensor* b);
// gx += gy w (when gx), gw += gy^T x (when gw), gb += sum_n gy (when gb).
void linear_backward(const Tensor& gy, const Tensor& x, const Tensor& w, Tensor* gx, Tensor* gw,
                     Tensor* gb);
// gx = gy w when gy has at most one nonzero per row (the one-hot seed of a class score)
// and gx holds zeros: only those rows of w are read, not all of it, and the values are the
// GEMM's bit for bit (with finite weights: the GEMM would also carry 0 * inf = NaN from
// the rows skipped here). False, with gx untouched, when gy or gx is not like that.
// linear_backward takes this path by itself.
bool linear_backward_one_hot(const Tensor& gy, const Tensor& w, Tensor& gx);

// ------------------------------------------------------------------ batch norm
// Per-channel statistics of a training-mode batch norm forward, kept for backward.
struct BatchNormSaved {
  std::vector<float> mean;     // batch mean (train) or running mean (eval)
  std::vector<float> inv_std;  // 1/sqrt(var + eps)
};
// Eval mode: normalises with the running statistics.
Tensor batchnorm_forward_eval(const Tensor& x, const Tensor& weight, const Tensor& bias,
                              const Tensor& running_mean, const Tensor& running_var, double eps,
                              BatchNormSaved* saved);
// Train mode: normalises with the batch statistics and updates the running ones as
// PyTorch does (biased variance to normalise, unbiased variance into running_var,
// running = (1 - momentum) * running + momentum * batch).
Tensor batchnorm_forward_train(const Tensor& x, const Tensor& weight, const Tensor& bias,
                               Tensor& running_mean, Tensor& running_var, double eps,
                               double momentum, BatchNormSaved* saved);
// Backward of either mode (train: statistics depend on x; eval: constants).
void batchnorm_backward(const Tensor& gy, const Tensor& x, const Tensor& weight,
                        const BatchNormSaved& saved, bool train, Tensor* gx, Tensor* gw,
                        Tensor* gb);

// ------------------------------------------------------------------ activations
// y = max(x, 0).
Tensor relu_forward(const Tensor& x);
// gx += gy where y > 0.
void relu_backward(const Tensor& gy, const Tensor& y, Tensor& gx);
// gx = gy where y > 0, else 0 (writes gx, which must have gy's shape).
void relu_mask(const Tensor& gy, const Tensor& y, Tensor& gx);
// y = max(y, 0) in place (inference: a ReLU fused into the layer before it).
void relu_inplace(Tensor& y);
// y = max(y + x, 0) in place (inference: a residual block's add and ReLU in one pass).
void add_relu_inplace(Tensor& y, const Tensor& x);
// y += residual (when set), then max(y, 0) when relu, in place: the end of a convolution
// whose epilogue could not take them.
void finish_conv_inplace(Tensor& y, const Tensor* residual, bool relu);

// ------------------------------------------------------------------ pooling
struct Pool2dSpec {
  int64_t kh = 1, kw = 1;
  int64_t stride_h = 1, stride_w = 1;
  int64_t pad_h = 0, pad_w = 0;
  bool ceil_mode = false;
  bool count_include_pad = true;  // AvgPool2d only
};
// Output shape of a max/avg pool, with PyTorch's ceil_mode rule.
Shape pool2d_out_shape(const Shape& x, const Pool2dSpec& s);
// Max pool; argmax (flat index into each input plane) is filled for backward.
Tensor maxpool2d_forward(const Tensor& x, const Pool2dSpec& s, std::vector<int32_t>* argmax);
// gx += gy routed to the argmax positions.
void maxpool2d_backward(const Tensor& gy, const std::vector<int32_t>& argmax, Tensor& gx);
// Average pool with PyTorch's divisor rule (padding counted when count_include_pad).
Tensor avgpool2d_forward(const Tensor& x, const Pool2dSpec& s);
// gx += backward of avgpool2d_forward.
void avgpool2d_backward(const Tensor& gy, const Pool2dSpec& s, Tensor& gx);
// Adaptive average pool to [oh, ow] with PyTorch's bins: [floor(i*H/oh), ceil((i+1)*H/oh)).
// The weight of x -> linear(flatten(adaptive_avgpool2d(x, oh, ow))) as one linear map of
// the flattened x [N, C*h*w]: from w [out, C*oh*ow], W'[o, c*h*w + q] = sum over the pooled
// cells b whose window holds input pixel q of w[o, c*oh*ow + b] / |window b| (in double,
// rounded once). Smaller than w when h*w < oh*ow (a small input upsampled by the pool).
Tensor pool_linear_weight(const Tensor& w, int64_t channels, int64_t h, int64_t wd, int64_t oh,
                          int64_t ow);
Tensor adaptive_avgpool2d_forward(const Tensor& x, int64_t oh, int64_t ow);
// gx += backward of adaptive_avgpool2d_forward.
void adaptive_avgpool2d_backward(const Tensor& gy, Tensor& gx);

// ------------------------------------------------------------------ misc
// y = a + b (same shapes).
Tensor add_forward(const Tensor& a, const Tensor& b);
// dst += src (same element count).
void add_into(Tensor& dst, const Tensor& src);
// Softmax over the last dimension.
Tensor softmax_forward(const Tensor& x);
// gx += y * (gy - sum(gy * y)) per row.
void softmax_backward(const Tensor& gy, const Tensor& y, Tensor& gx);
// Mean cross-entropy of logits [N,C] against class targets, with label smoothing eps
// (PyTorch's definition). Returns the loss; when grad is given, writes dloss/dlogits.
double cross_entropy(const Tensor& logits, const std::vector<int>& targets, double smoothing,
                     Tensor* grad);

}  // namespace isplit
