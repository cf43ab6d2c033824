// Layers as modules: parameters plus a forward that records its backward on a tape.
#pragma once
#include <atomic>
#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include <mutex>

#include "engine/tape.h"
#include "layers/functional.h"
#include "layers/winograd.h"

namespace isplit {

// (state-dict name, parameter) pairs, in torchvision's state_dict() order.
using NamedParams = std::vector<std::pair<std::string, Parameter*>>;

class Module {
 public:
  virtual ~Module() = default;
  // Runs the layer on x; with a tape, records the backward.
  virtual Var forward(Tape* tape, const Var& x) = 0;
  // Like forward; when the module's output is a ReLU's output, *pre_relu receives that
  // ReLU's input (what hooks on PyTorch's in-place ReLUs see the gradient of). A null
  // pre_relu says nobody looks at it: the module may then fuse that ReLU away.
  virtual Var forward_pre_relu(Tape* tape, const Var& x, Var* pre_relu) {
    if (pre_relu) *pre_relu = Var();
    return forward(tape, x);
  }
  // Output shape for an input shape (no computation).
  virtual Shape out_shape(const Shape& in) const { return in; }
  // Multiply-add count x2 (FLOPs) of one forward for an input shape.
  virtual double flops(const Shape& in) const { return 0.0; }
  // Appends this module's parameters and buffers with names prefixed by `prefix`.
  virtual void named_parameters(const std::string& prefix, NamedParams& out) {}
  // Folds eval-mode batch norms inside this module into their convolutions.
  virtual void fold_batchnorm() {}
  // Lets the convolutions inside keep weights in the forms their fast inference paths use
  // (on = false drops them). Only for a network whose weights no longer change.
  virtual void pack_for_inference(bool on) {}
  // Gives every parameter its plain values again where a packed form held the only copy
  // (see Conv2d::pack_for_inference).
  virtual void unpack_weights() {}
  // Switches training mode (BatchNorm statistics, Dropout).
  virtual void set_training(bool training) { training_ = training; }
  // True in training mode.
  bool training() const { return training_; }

 protected:
  bool training_ = false;
};

// Free ops on variables (record on the tape when one is given).
// y = max(x, 0).
Var relu(Tape* tape, const Var& x);
// y = a + b.
Var add(Tape* tape, const Var& a, const Var& b);
// [N, ...] -> [N, prod(...)].
Var flatten(Tape* tape, const Var& x);
// Softmax over the last dimension.
Var softmax(Tape* tape, const Var& x);
// Scalar mean cross-entropy loss of logits [N, C] against targets.
Var cross_entropy_loss(Tape* tape, const Var& logits, const std::vector<int>& targets,
                       double label_smoothing = 0.0);

class BatchNorm2d;

class Conv2d : public Module {
 public:
  // A convolution with PyTorch's Conv2d arguments (weight zero until loaded/initialised).
  Conv2d(int64_t in, int64_t out, int64_t kernel, int64_t stride = 1, int64_t padding = 0,
         bool bias = true, int64_t dilation = 1, int64_t groups = 1);
  Var forward(Tape* tape, const Var& x) override;
  Shape out_shape(const Shape& in) const override { return conv2d_out_shape(in, spec_); }
  double flops(const Shape& in) const override;
  void named_parameters(const std::string& prefix, NamedParams& out) override;
  // Folds a following eval-mode batch norm (y = a*x + b per channel) into this conv.
  void fold_scale_shift(const std::vector<float>& scale, const std::vector<float>& shift);
  // While on, a forward in evaluation mode that needs no weight gradient may run Winograd
  // (layers/winograd.h) on filters transformed on first use and kept, and so may its
  // backward's data gradient (the importance pass), and the other forwards use weights
  // packed once for the GEMM kernels. The packed GEMM weights then replace the plain ones
  // (released after the first call that packed them; stored Winograd filters add 4x the
  // weights of the layers they serve, streamed ones replace the plain weights like the
  // packed GEMM weights do): whatever needs the plain weights (a weight gradient, a
  // BatchNorm fold, unpack_weights, on = false, training mode) unpacks them bit for bit. A
  // change of weights through fold_scale_shift re-packs them.
  void pack_for_inference(bool on) override;
  void unpack_weights() override;
  void set_training(bool training) override;
  // Inference: conv(x) + b (+ residual, same shape as the output), then max(., 0) when
  // relu; no tape (when packed: Winograd where it pays, else the prepacked GEMM with bias,
  // residual and ReLU in its epilogue).
  Tensor infer(const Tensor& x, bool relu, const Tensor* residual = nullptr);
  // Inference only: forward also applies the ReLU that follows this layer (the model then
  // skips that ReLU); a forward with a tape throws.
  void set_fused_relu(bool on) { fused_relu_ = on; }
  bool fused_relu() const { return fused_relu_; }
  // bn(conv(x)) (+ residual, same shape as the output), then max(., 0) when relu; bn must
  // follow this layer. While packed, in evaluation mode and without weight gradients (the
  // importance pass), computed as one convolution with bn folded into weights kept for
  // that (made on first use; remade when bn's statistics change) and the residual and
  // ReLU in its epilogue: the backward is a ReLU mask, the folded layer's data gradient
  // and the residual's gradient handed on, with no BatchNorm or add pass either way.
  // Otherwise the separate layers (and add), recorded as usual.
  Var forward_bn(Tape* tape, const Var& x, BatchNorm2d& bn, bool relu,
                 const Var* residual = nullptr);
  const Conv2dSpec& spec() const { return spec_; }
  Parameter weight, bias;
  bool has_bias() const { return has_bias_; }

 private:
  // One set of weights (and bias) in the forms the fast paths use, each made on first use
  // (thread-safe): Winograd filters for the forward and, transposed, the data gradient,
  // and GEMM weights packed as W or W^T. Once the forms made so far can stand alone
  // (settle: GEMM forms, and Winograd filters in the streamed form), they hold the only
  // copy: the plain weights are released and unpacked again, bit for bit, when a new form
  // or a caller needs them.
  struct FastForms {
    Tensor weight, bias;  // bias undefined: none; weight: shape only while released
    Tensor* mirror = nullptr;  // the layer's own weight.value (own forms): released with weight
    std::vector<float> bn_params;  // the BatchNorm folded in: weight, bias, mean, variance
    std::mutex mutex;
    std::atomic<bool> released{false};
    std::atomic<bool> keep_plain{false};  // no release: a form cannot, or a caller holds them
    std::shared_ptr<const WinogradFilter> winograd[2][2];  // [transposed][streamed]
    std::shared_ptr<PackedMatrix> gemm[2];
    // The data gradient as the flipped convolution (flipped_weights), and the flipped
    // weights it reads until settle() lets them go.
    std::shared_ptr<PackedMatrix> flipped;
    Tensor flipped_source;
    std::atomic<bool> flipped_pending{false};  // flipped_source still held
    // Forms of these weights cut to the taps some map size reads (crop_for).
    std::vector<std::pair<TapRange, std::shared_ptr<FastForms>>> crops;
    // The forms of these weights (and bias) cut to the taps r (crop_taps), made on first use.
    std::shared_ptr<FastForms> crop_for(const TapRange& r);
    // The Winograd filter (transposed: of the data gradient) in the form asked for maps of
    // `tiles` 4x4 output tiles per image (winograd_filters_for), or null when Winograd does
    // not apply to the layer.
    const WinogradFilter* winograd_filter(const Conv2dSpec& s, bool transposed, int64_t tiles);
    // A streamed Winograd filter made so far, or null.
    const WinogradFilter* any_streamed() const;
    // The packed GEMM weights (transposed: W^T), or null for grouped layers or when
    // prepacking is off.
    const PackedMatrix* gemm_weights(const Conv2dSpec& s, bool transposed);
    // The weights of the flipped convolution (flip_conv_weights) packed as a forward
    // convolution's, or null when flipped_conv_applies(s) is false or prepacking is off.
    const PackedMatrix* flipped_weights(const Conv2dSpec& s);
    // Releases the plain weights when every GEMM form made so far can do without them and
    // some form (GEMM, or streamed Winograd filters) can give them back (cheap once
    // released or when they must stay: call it after every GEMM or Winograd use).
    void settle();
    // The plain weights (unpacked into weight, and mirror, when released); mutex held.
    const Tensor& plain_locked();
    // plain_locked() under the mutex, as a handle sharing the storage.
    Tensor plain();
  };
  // This layer's own forms (made on first use); null when not packed.
  std::shared_ptr<FastForms> own_forms();
  // The forms of this layer with bn folded in, remade when bn's affine map changed.
  std::shared_ptr<FastForms> bn_forms(const BatchNorm2d& bn);
  // conv(x) + bias (+ residual), then max(., 0) when relu, with the fastest path f allows.
  Tensor forward_with(FastForms& f, const Tensor& x, bool relu,
                      const Tensor* residual = nullptr) const;
  // The data gradient of gy through f's weights, added into gx (add = false: written).
  void backward_data_with(FastForms& f, const Tensor& gy, Tensor& gx, bool add) const;
  // forward_with and backward_data_with for f's weights taken as the convolution spec (the
  // layer's own, or one cut to fewer taps, whose forms f then are).
  Tensor forward_spec(FastForms& f, const Conv2dSpec& spec, const Tensor& x, bool relu,
                      const Tensor* residual) const;
  void backward_spec(FastForms& f, const Conv2dSpec& spec, const Tensor& gy, Tensor& gx,
                     bool add) const;
  // Drops every cached form (weights changed, or packing turned off), with the plain
  // weights restored first; pack_mutex_ held.
  void drop_forms_locked();
  // The plain weights, unpacked first when only a packed form holds them.
  Tensor plain_weight();
  Conv2dSpec spec_;
  bool has_bias_;
  bool packed_ = false;
  bool fused_relu_ = false;
  std::mutex pack_mutex_;  // guards forms_ and bn_forms_ (forwards may run concurrently)
  std::shared_ptr<FastForms> forms_, bn_forms_;
};

class BatchNorm2d : public Module {
 public:
  // Batch norm over C channels; PyTorch defaults eps 1e-5, momentum 0.1.
  explicit BatchNorm2d(int64_t channels, double eps = 1e-5, double momentum = 0.1);
  Var forward(Tape* tape, const Var& x) override;
  double flops(const Shape& in) const override;
  void named_parameters(const std::string& prefix, NamedParams& out) override;
  // Eval-mode per-channel affine form: y = scale * x + shift.
  void affine(std::vector<float>& scale, std::vector<float>& shift) const;
  // After folding into a conv, forward passes its input through unchanged.
  void set_folded(bool folded) { folded_ = folded; }
  bool folded() const { return folded_; }
  // Training mode uses batch statistics and updates the running ones, except when both
  // affine parameters are frozen: a frozen batch norm keeps normalising with its running
  // statistics and leaves them unchanged (so a frozen backbone really stays fixed).
  void set_training(bool training) override {
    training_ = training && (weight.requires_grad || bias.requires_grad);
  }
  Parameter weight, bias, running_mean, running_var;
  double eps, momentum;

 private:
  bool folded_ = false;
};

class ReLU : public Module {
 public:
  Var forward(Tape* tape, const Var& x) override;
  Var forward_pre_relu(Tape* tape, const Var& x, Var* pre_relu) override;
  double flops(const Shape& in) const override { return double(shape_numel(in)); }
  // Inference only: the layer before already applied this ReLU, so forward passes its
  // input through (and throws with a tape).
  void set_fused(bool on) { fused_ = on; }
  bool fused() const { return fused_; }

 private:
  bool fused_ = false;
};

class MaxPool2d : public Module {
 public:
  // Max pool with PyTorch's arguments (stride defaults to the kernel).
  MaxPool2d(int64_t kernel, int64_t stride, int64_t padding = 0, bool ceil_mode = false);
  Var forward(Tape* tape, const Var& x) override;
  Shape out_shape(const Shape& in) const override { return pool2d_out_shape(in, spec_); }
  double flops(const Shape& in) const override;

 private:
  Pool2dSpec spec_;
};

class AvgPool2d : public Module {
 public:
  // Average pool with PyTorch's arguments.
  AvgPool2d(int64_t kernel, int64_t stride, int64_t padding = 0, bool ceil_mode = false,
            bool count_include_pad = true);
  Var forward(Tape* tape, const Var& x) override;
  Shape out_shape(const Shape& in) const override { return pool2d_out_shape(in, spec_); }
  double flops(const Shape& in) const override;

 private:
  Pool2dSpec spec_;
};

class AdaptiveAvgPool2d : public Module {
 public:
  // Adaptive average pool to oh x ow.
  AdaptiveAvgPool2d(int64_t oh, int64_t ow) : oh_(oh), ow_(ow) {}
  Var forward(Tape* tape, const Var& x) override;
  // Output height and width.
  int64_t out_h() const { return oh_; }
  int64_t out_w() const { return ow_; }
  Shape out_shape(const Shape& in) const override;
  double flops(const Shape& in) const override;

 private:
  int64_t oh_, ow_;
};

class Flatten : public Module {
 public:
  Var forward(Tape* tape, const Var& x) override { return flatten(tape, x); }
  Shape out_shape(const Shape& in) const override;
};

class Linear : public Module {
 public:
  // y = x W^T + b with W [out, in].
  Linear(int64_t in, int64_t out, bool bias = true);
  Var forward(Tape* tape, const Var& x) override;
  Shape out_shape(const Shape& in) const override;
  double flops(const Shape& in) const override;
  void named_parameters(const std::string& prefix, NamedParams& out) override;
  // While on, infer_after_pool() keeps the folded weights it makes (one set per input
  // size); off, training mode or new weights (a later pack) drop them.
  void pack_for_inference(bool on) override;
  void set_training(bool training) override;
  // Inference of this(flatten(adaptive_avgpool2d(x, oh, ow))) for x [N, C, H, W] as one
  // linear map of x when that is smaller (H*W < oh*ow: a small input that the pool
  // upsamples; see pool_linear_weight); returns an undefined Tensor when it is not, or
  // when the layer is not packed. Equal to the unfused path up to rounding.
  Tensor infer_after_pool(const Tensor& x, int64_t oh, int64_t ow);
  // infer_after_pool on a tape that wants no gradient of this layer's parameters (the
  // importance pass): the backward gives x the folded map's transpose applied to the
  // output gradient. An undefined Var when the fold does not apply.
  Var forward_after_pool(Tape* tape, const Var& x, int64_t oh, int64_t ow);
  Parameter weight, bias;

 private:
  int64_t in_, out_;
  bool has_bias_;
  bool packed_ = false;
  std::mutex pack_mutex_;  // guards the folded weights (forwards may run concurrently)
  Shape folded_for_;       // [C, H, W, oh, ow] the folded weight was made for
  Tensor folded_;
  // The folded weight for x's shape (made on first use), or undefined when not packed.
  Tensor folded_weight(const Tensor& x, int64_t oh, int64_t ow);
};

class Dropout : public Module {
 public:
  // Drops with probability p in training mode (survivors scaled by 1/(1-p)); identity in eval.
  explicit Dropout(double p = 0.5, uint64_t seed = 0x15b1u) : p_(p), rng_(seed) {}
  Var forward(Tape* tape, const Var& x) override;
  // Reseeds the mask generator.
  void seed(uint64_t s) { rng_.seed(s); }
  double p() const { return p_; }

 private:
  double p_;
  std::mt19937_64 rng_;
};

// Folds bn (eval mode) into conv: conv' = bn(conv); bn then passes its input through.
void fold_conv_bn(Conv2d& conv, BatchNorm2d& bn);

// Initialises parameters as torchvision does for its models (kaiming-normal fan_out for
// conv, N(0, 0.01) for linear, BN weight 1 / bias 0), from a seeded generator.
void init_conv_kaiming(Conv2d& conv, std::mt19937_64& rng);
// Linear weights ~ N(0, std), bias 0.
void init_linear_normal(Linear& linear, double stddev, std::mt19937_64& rng);

}  // namespace isplit
