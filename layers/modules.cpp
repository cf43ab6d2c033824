#include "layers/modules.h"

#include <cmath>
#include <cstring>

#include "engine/cpu.h"
#include "engine/gemm.h"
#include "engine/gemm_prepacked.h"
#include "engine/parallel.h"

namespace isplit {

namespace {
// The gradient buffer of a parameter, allocated zeroed on first use.
Tensor& grad_of(Parameter& p) {
  if (!p.grad.defined()) p.grad = Tensor::zeros(p.value.shape());
  return p.grad;
}

// Folds y = scale * conv(x) + shift into a conv's weights w [out, ...] and bias b [out]:
// w[c] *= scale[c], b[c] = b[c] * scale[c] + shift[c].
void scale_shift_in_place(const std::vector<float>& scale, const std::vector<float>& shift,
                          Tensor& w, Tensor& b) {
  const int64_t out = b.numel(), per = w.numel() / out;
  for (int64_t c = 0; c < out; ++c) {
    for (int64_t i = 0; i < per; ++i) w[c * per + i] *= scale[c];
    b[c] = b[c] * scale[c] + shift[c];
  }
}

// Passes gy on as one input's share of a sum's gradient g: written fresh (shared with gy;
// the tape copies it before another gradient adds in) when unset, else added.
void hand_on(Tensor& g, const Tensor& gy) {
  if (!g.defined())
    g = gy;
  else if (g.shares_storage(gy))
    g = add_forward(gy, gy);  // add(x, x): x's gradient was just set to gy itself
  else
    add_into(g, gy);
}

Parameter make_param(const Shape& shape, bool buffer = false) {
  Parameter p;
  HugePageScope huge;  // weights are streamed from memory on every pass
  p.value = Tensor::zeros(shape);
  p.is_buffer = buffer;
  p.requires_grad = !buffer;
  return p;
}
}  // namespace

// ------------------------------------------------------------------ free ops
Var relu(Tape* tape, const Var& x) {
  Tensor y = relu_forward(x.value);
  if (!tape) return Var{y};
  return tape->record(
      y, {&x},
      [y](const Tensor& gy, std::vector<Tensor*>& gin) {
        if (!gin[0]) return;
        if (claim_fresh(*gin[0], y.shape()))
          relu_mask(gy, y, *gin[0]);
        else
          relu_backward(gy, y, *gin[0]);
      },
      false, /*writes_fresh=*/true);
}

Var add(Tape* tape, const Var& a, const Var& b) {
  Tensor y = add_forward(a.value, b.value);
  if (!tape) return Var{y};
  return tape->record(
      y, {&a, &b},
      [](const Tensor& gy, std::vector<Tensor*>& gin) {
        for (Tensor* g : gin) {
          if (g) hand_on(*g, gy);
        }
      },
      false, /*writes_fresh=*/true);
}

Var flatten(Tape* tape, const Var& x) {
  if (x.value.ndim() < 1) throw Error("flatten: scalar input");
  const int64_t n = x.value.dim(0);
  Tensor y = x.value.reshape({n, n ? x.value.numel() / n : 0});
  if (!tape) return Var{y};
  return tape->record(y, {&x}, [](const Tensor& gy, std::vector<Tensor*>& gin) {
    if (gin[0]) add_into(*gin[0], gy);
  });
}

Var softmax(Tape* tape, const Var& x) {
  Tensor y = softmax_forward(x.value);
  if (!tape) return Var{y};
  return tape->record(y, {&x}, [y](const Tensor& gy, std::vector<Tensor*>& gin) {
    if (gin[0]) softmax_backward(gy, y, *gin[0]);
  });
}

Var cross_entropy_loss(Tape* tape, const Var& logits, const std::vector<int>& targets,
                       double label_smoothing) {
  Tensor grad = Tensor::empty(logits.value.shape());
  const double loss = cross_entropy(logits.value, targets, label_smoothing, tape ? &grad : nullptr);
  Tensor y = Tensor::full({}, static_cast<float>(loss));
  if (!tape) return Var{y};
  return tape->record(y, {&logits}, [grad](const Tensor& gy, std::vector<Tensor*>& gin) {
    if (!gin[0]) return;
    const float s = gy[0];
    float* d = gin[0]->data();
    for (int64_t i = 0; i < grad.numel(); ++i) d[i] += s * grad[i];
  });
}

// ------------------------------------------------------------------ Conv2d
Conv2d::Conv2d(int64_t in, int64_t out, int64_t kernel, int64_t stride, int64_t padding,
               bool bias, int64_t dilation, int64_t groups)
    : has_bias_(bias) {
  spec_.in_channels = in;
  spec_.out_channels = out;
  spec_.kh = spec_.kw = kernel;
  spec_.stride_h = spec_.stride_w = stride;
  spec_.pad_h = spec_.pad_w = padding;
  spec_.dil_h = spec_.dil_w = dilation;
  spec_.groups = groups;
  if (groups <= 0 || in % groups || out % groups)
    throw Error("Conv2d: channels not divisible by groups");
  weight = make_param({out, in / groups, kernel, kernel});
  if (bias) this->bias = make_param({out});
}

double Conv2d::flops(const Shape& in) const {
  const Shape o = out_shape(in);
  return 2.0 * shape_numel(o) * (spec_.in_channels / spec_.groups) * spec_.kh * spec_.kw;
}

void Conv2d::named_parameters(const std::string& prefix, NamedParams& out) {
  out.emplace_back(prefix + "weight", &weight);
  if (has_bias_) out.emplace_back(prefix + "bias", &bias);
}

void Conv2d::drop_forms_locked() {
  if (forms_) {
    std::lock_guard<std::mutex> lock(forms_->mutex);
    (void)forms_->plain_locked();  // the packed forms may hold the only copy
  }
  forms_.reset();  // made again from the current weights on next use
  bn_forms_.reset();
}

void Conv2d::pack_for_inference(bool on) {
  std::lock_guard<std::mutex> lock(pack_mutex_);
  drop_forms_locked();
  packed_ = on;
}

void Conv2d::unpack_weights() {
  std::lock_guard<std::mutex> lock(pack_mutex_);
  if (!forms_) return;
  std::lock_guard<std::mutex> flock(forms_->mutex);
  (void)forms_->plain_locked();
  forms_->keep_plain.store(true);  // a caller holds the values: no release until the next pack
}

Tensor Conv2d::plain_weight() {
  std::lock_guard<std::mutex> lock(pack_mutex_);
  if (!forms_) return weight.value;
  std::lock_guard<std::mutex> flock(forms_->mutex);
  return forms_->plain_locked();
}

void Conv2d::set_training(bool training) {
  Module::set_training(training);
  if (training) pack_for_inference(false);
}

const WinogradFilter* Conv2d::FastForms::winograd_filter(const Conv2dSpec& s, bool transposed,
                                                         int64_t tiles) {
  if (!winograd_applies(s)) return nullptr;
  std::lock_guard<std::mutex> lock(mutex);
  const WinogradFilters form = winograd_filters_for(s.out_channels, s.in_channels, tiles);
  auto& slot = winograd[transposed ? 1 : 0][form == WinogradFilters::Streamed ? 1 : 0];
  // Filters are made for the kernels of one ISA, and remade when the form they came out in
  // differs from their slot's (an ISA that cannot stream them stores them).
  const bool other_form = slot && slot->streamed() != (form == WinogradFilters::Streamed) &&
                          prepack_kernels(active_isa()) != nullptr;
  if (!slot || slot->isa != active_isa() || other_form) {
    const Tensor& w = plain_locked();
    HugePageScope huge;  // filters are streamed from memory on every pass, like weights
    slot = std::make_shared<const WinogradFilter>(
        transposed ? isplit::winograd_filter_transposed(w, form) : isplit::winograd_filter(w, form));
  }
  return slot.get();
}

const PackedMatrix* Conv2d::FastForms::gemm_weights(const Conv2dSpec& s, bool transposed) {
  if (s.groups != 1 || !gemm_prepack_enabled()) return nullptr;
  std::lock_guard<std::mutex> lock(mutex);
  auto& slot = gemm[transposed ? 1 : 0];
  if (!slot) {
    const Tensor& w = plain_locked();  // stays until settle(), which packs before releasing
    const int64_t cout = s.out_channels, k = w.numel() / cout;
    slot = transposed ? std::make_shared<PackedMatrix>(true, k, cout, w.data(), k)
                      : std::make_shared<PackedMatrix>(false, cout, k, w.data(), k);
  }
  return slot.get();
}

const PackedMatrix* Conv2d::FastForms::flipped_weights(const Conv2dSpec& s) {
  if (!flipped_conv_applies(s) || !gemm_prepack_enabled()) return nullptr;
  std::lock_guard<std::mutex> lock(mutex);
  if (!flipped) {
    flipped_source = flip_conv_weights(plain_locked());
    const int64_t k = flipped_source.numel() / s.in_channels;
    flipped = std::make_shared<PackedMatrix>(false, s.in_channels, k, flipped_source.data(), k);
    flipped_pending.store(true, std::memory_order_release);
  }
  return flipped.get();
}

std::shared_ptr<Conv2d::FastForms> Conv2d::FastForms::crop_for(const TapRange& r) {
  std::lock_guard<std::mutex> lock(mutex);
  for (const auto& c : crops)
    if (c.first.ky0 == r.ky0 && c.first.ky1 == r.ky1 && c.first.kx0 == r.kx0 && c.first.kx1 == r.kx1)
      return c.second;
  auto f = std::make_shared<FastForms>();
  f->weight = crop_taps(plain_locked(), r);
  f->bias = bias;  // never released: shared
  crops.emplace_back(r, f);
  return f;
}

const WinogradFilter* Conv2d::FastForms::any_streamed() const {
  for (const auto& direction : winograd)
    for (const auto& f : direction)
      if (f && f->streamed()) return f.get();
  return nullptr;
}

void Conv2d::FastForms::settle() {
  if (flipped_pending.load(std::memory_order_acquire)) {
    // The flipped weights' layout is made by now (settle follows a use): their source goes.
    std::lock_guard<std::mutex> lock(mutex);
    if (flipped && flipped_source.defined() && flipped->release_source()) flipped_source = Tensor();
    flipped_pending.store(false, std::memory_order_release);
  }
  if (released.load(std::memory_order_acquire) || keep_plain.load(std::memory_order_relaxed))
    return;  // the common case, without the lock
  std::lock_guard<std::mutex> lock(mutex);
  if (released.load(std::memory_order_relaxed) || keep_plain.load(std::memory_order_relaxed))
    return;
  // Some form must be able to give the weights back: GEMM weights, or Winograd filters in
  // the streamed form (stored ones compute without the weights but cannot restore them).
  const bool streamed = any_streamed() != nullptr;
  if (!gemm[0] && !gemm[1] && !streamed) return;
  for (auto& g : gemm)
    if (g && !g->release_source()) {
      keep_plain.store(true);  // this ISA or size cannot unpack: the plain weights stay
      return;
    }
  weight.release_storage();
  if (mirror) mirror->release_storage();
  released.store(true, std::memory_order_release);
}

const Tensor& Conv2d::FastForms::plain_locked() {
  if (!released.load(std::memory_order_relaxed)) return weight;
  Tensor w;
  if (gemm[0] || gemm[1]) {
    const PackedMatrix* from = gemm[0] ? gemm[0].get() : gemm[1].get();
    w = Tensor::empty(weight.shape());
    from->unpack(w.data());  // W [cout, k], or as W^T's source: the same storage
  } else {
    // Released with streamed Winograd filters as the only copy (settle).
    w = winograd_filter_weights(*any_streamed());
  }
  weight = w;
  if (mirror) *mirror = w;  // shares the storage
  released.store(false, std::memory_order_release);
  return weight;
}

Tensor Conv2d::FastForms::plain() {
  std::lock_guard<std::mutex> lock(mutex);
  return plain_locked();
}

std::shared_ptr<Conv2d::FastForms> Conv2d::own_forms() {
  std::lock_guard<std::mutex> lock(pack_mutex_);
  if (!packed_) return nullptr;
  if (!forms_) {
    forms_ = std::make_shared<FastForms>();
    forms_->weight = weight.value;  // shares the storage: no copy
    forms_->mirror = &weight.value;
    if (has_bias_) forms_->bias = bias.value;
  }
  return forms_;
}

std::shared_ptr<Conv2d::FastForms> Conv2d::bn_forms(const BatchNorm2d& bn) {
  const int64_t out = spec_.out_channels;
  if (bn.weight.value.numel() != out)
    throw Error("Conv2d::forward_bn: the BatchNorm has " + std::to_string(bn.weight.value.numel()) +
                " channels, the convolution " + std::to_string(out));
  // The BatchNorm's parameters as they are now (eps is fixed at construction), compared
  // with those the kept forms were folded from.
  const Tensor* parts[] = {&bn.weight.value, &bn.bias.value, &bn.running_mean.value,
                           &bn.running_var.value};
  const size_t bytes = static_cast<size_t>(out) * sizeof(float);
  std::lock_guard<std::mutex> lock(pack_mutex_);
  if (!packed_) return nullptr;
  if (bn_forms_) {
    bool same = true;
    for (int i = 0; i < 4 && same; ++i)
      same = std::memcmp(bn_forms_->bn_params.data() + i * out, parts[i]->data(), bytes) == 0;
    if (same) return bn_forms_;
  }
  std::vector<float> scale, shift;
  bn.affine(scale, shift);
  auto f = std::make_shared<FastForms>();
  if (forms_) {
    std::lock_guard<std::mutex> flock(forms_->mutex);
    f->weight = forms_->plain_locked().clone();
  } else {
    f->weight = weight.value.clone();
  }
  f->bias = has_bias_ ? bias.value.clone() : Tensor::zeros({out});
  scale_shift_in_place(scale, shift, f->weight, f->bias);
  f->bn_params.resize(static_cast<size_t>(4 * out));
  for (int i = 0; i < 4; ++i) std::memcpy(f->bn_params.data() + i * out, parts[i]->data(), bytes);
  bn_forms_ = f;
  return f;
}

Tensor Conv2d::forward_with(FastForms& f, const Tensor& x, bool relu, const Tensor* residual) const {
  // Taps that only ever read padding (3x3 layers on 1x1 maps) are left out: weights cut to
  // the others, fewer bytes to stream and no products with zeros. Decided per image.
  TapRange taps;
  Conv2dSpec cropped;
  if (x.ndim() == 4 && taps_crop(spec_, x.dim(2), x.dim(3), &taps, &cropped))
    return forward_spec(*f.crop_for(taps), cropped, x, relu, residual);
  return forward_spec(f, spec_, x, relu, residual);
}

void Conv2d::backward_data_with(FastForms& f, const Tensor& gy, Tensor& gx, bool add) const {
  TapRange taps;
  Conv2dSpec cropped;
  if (gx.ndim() == 4 && taps_crop(spec_, gx.dim(2), gx.dim(3), &taps, &cropped)) {
    backward_spec(*f.crop_for(taps), cropped, gy, gx, add);
    return;
  }
  backward_spec(f, spec_, gy, gx, add);
}

Tensor Conv2d::forward_spec(FastForms& f, const Conv2dSpec& spec, const Tensor& x, bool relu,
                            const Tensor* residual) const {
  const Tensor* b = f.bias.defined() ? &f.bias : nullptr;
  const Shape os = conv2d_out_shape(x.shape(), spec);
  if (winograd_pays(x.shape(), spec))
    if (const WinogradFilter* wf = f.winograd_filter(spec, false, winograd_tiles4(os[2], os[3]))) {
      Tensor y = conv2d_forward_winograd(x, *wf, b, spec, relu && !residual);
      if (residual) finish_conv_inplace(y, residual, relu);
      f.settle();
      return y;
    }
  if (const PackedMatrix* pw = f.gemm_weights(spec, false)) {
    Tensor y = conv2d_forward_packed(x, *pw, b, spec, relu, residual);
    f.settle();
    return y;
  }
  Tensor y = conv2d_forward(x, f.plain(), b, spec);
  finish_conv_inplace(y, residual, relu);
  return y;
}

void Conv2d::backward_spec(FastForms& f, const Conv2dSpec& spec, const Tensor& gy, Tensor& gx,
                           bool add) const {
  if (winograd_backward_pays(gy.shape(), spec))
    if (const WinogradFilter* wt = f.winograd_filter(spec, true, winograd_tiles4(gx.dim(2), gx.dim(3)))) {
      conv2d_backward_data_winograd(gy, *wt, spec, gx, add);
      f.settle();
      return;
    }
  // Stride 1 without Winograd: the flipped convolution, which runs as the forward does
  // (each thread's own columns on small maps) instead of a GEMM into columns and col2im.
  static const bool flipped_on = env_switch("ISPLIT_BACKWARD_FLIPPED", true);
  if (flipped_on && flipped_conv_applies(spec))
    if (const PackedMatrix* pf = f.flipped_weights(spec)) {
      conv2d_backward_data_flipped(gy, *pf, spec, gx, add);
      f.settle();
      return;
    }
  if (const PackedMatrix* pt = f.gemm_weights(spec, true)) {
    conv2d_backward_data_packed(gy, *pt, spec, gx, add);
    f.settle();
    return;
  }
  conv2d_backward_data(gy, f.plain(), spec, gx, add);
}

Tensor Conv2d::infer(const Tensor& x, bool relu, const Tensor* residual) {
  if (!training_)
    if (std::shared_ptr<FastForms> f = own_forms()) return forward_with(*f, x, relu, residual);
  Tensor y = conv2d_forward(x, plain_weight(), has_bias_ ? &bias.value : nullptr, spec_);
  finish_conv_inplace(y, residual, relu);
  return y;
}

Var Conv2d::forward(Tape* tape, const Var& x) {
  if (fused_relu_) {
    if (tape) throw Error("Conv2d: its ReLU is fused for inference; cannot record a backward");
    return Var{infer(x.value, true)};
  }
  // A weight gradient needs the direct path's exact forward; otherwise infer() picks.
  const bool want_w = tape && tape->wants(weight);
  Tensor wv = want_w ? plain_weight() : Tensor();  // the plain weights, unpacked if need be
  Tensor y = want_w ? conv2d_forward(x.value, wv, has_bias_ ? &bias.value : nullptr, spec_)
                    : infer(x.value, false);
  if (!tape) return Var{y};
  const bool want_b = has_bias_ && tape->wants(bias);
  Tensor xv = want_w ? x.value : Tensor();  // kept only for the weight gradient
  // The data gradient through the fast forms when the weights need no gradient.
  std::shared_ptr<FastForms> forms = !want_w && !training_ ? own_forms() : nullptr;
  if (!forms && !want_w) wv = plain_weight();
  const Shape xs = x.value.shape();
  return tape->record(
      y, {&x},
      [this, xv, wv, xs, want_w, want_b, forms](const Tensor& gy, std::vector<Tensor*>& gin) {
        if (gin[0]) {
          const bool add = !claim_fresh(*gin[0], xs);
          if (forms)
            backward_data_with(*forms, gy, *gin[0], add);
          else
            conv2d_backward_data(gy, wv, spec_, *gin[0], add);
        }
        if (want_w) conv2d_backward_weight(gy, xv, spec_, &grad_of(weight), nullptr);
        if (want_b) channel_sum_add(gy, grad_of(bias));
      },
      want_w || want_b, /*writes_fresh=*/true);
}

Var Conv2d::forward_bn(Tape* tape, const Var& x, BatchNorm2d& bn, bool relu_after,
                       const Var* residual) {
  const bool no_grads = !tape || (!tape->wants(weight) && !(has_bias_ && tape->wants(bias)) &&
                                  !tape->wants(bn.weight) && !tape->wants(bn.bias));
  std::shared_ptr<FastForms> f;
  if (packed_ && !training_ && !bn.training() && !bn.folded() && !fused_relu_ && no_grads)
    f = bn_forms(bn);
  if (!f) {
    Var y = bn.forward(tape, forward(tape, x));
    if (residual) y = add(tape, y, *residual);
    return relu_after ? relu(tape, y) : y;
  }
  Tensor y = forward_with(*f, x.value, relu_after, residual ? &residual->value : nullptr);
  if (!tape) return Var{y};
  const Shape xs = x.value.shape();
  std::vector<const Var*> inputs{&x};
  if (residual) inputs.push_back(residual);
  return tape->record(
      y, inputs,
      [this, f, y, xs, relu_after](const Tensor& gy, std::vector<Tensor*>& gin) {
        Tensor g = gy;  // the gradient of the sum before the ReLU
        if (relu_after && (gin[0] || (gin.size() > 1 && gin[1]))) {
          g = Tensor::empty(gy.shape());
          relu_mask(gy, y, g);
        }
        if (gin[0]) backward_data_with(*f, g, *gin[0], !claim_fresh(*gin[0], xs));
        if (gin.size() > 1 && gin[1]) hand_on(*gin[1], g);  // the residual's, as add's
      },
      false, /*writes_fresh=*/true);
}

void Conv2d::fold_scale_shift(const std::vector<float>& scale, const std::vector<float>& shift) {
  const int64_t out = spec_.out_channels;
  if (static_cast<int64_t>(scale.size()) != out || static_cast<int64_t>(shift.size()) != out)
    throw Error("Conv2d::fold_scale_shift: channel count mismatch");
  if (!has_bias_) {
    bias = make_param({out});
    has_bias_ = true;
  }
  std::lock_guard<std::mutex> lock(pack_mutex_);
  drop_forms_locked();  // restores the plain weights first
  scale_shift_in_place(scale, shift, weight.value, bias.value);
}

// ------------------------------------------------------------------ ReLU
Var ReLU::forward(Tape* tape, const Var& x) {
  if (!fused_) return relu(tape, x);
  if (tape) throw Error("ReLU: fused into the layer before for inference; cannot record a backward");
  return x;
}

Var ReLU::forward_pre_relu(Tape* tape, const Var& x, Var* pre_relu) {
  if (pre_relu) *pre_relu = fused_ ? Var() : x;  // a fused ReLU's input is gone
  return forward(tape, x);
}

// ------------------------------------------------------------------ BatchNorm2d
BatchNorm2d::BatchNorm2d(int64_t channels, double eps_, double momentum_)
    : eps(eps_), momentum(momentum_) {
  weight = make_param({channels});
  weight.value.fill(1.0f);
  bias = make_param({channels});
  running_mean = make_param({channels}, true);
  running_var = make_param({channels}, true);
  running_var.value.fill(1.0f);
}

double BatchNorm2d::flops(const Shape& in) const { return 2.0 * shape_numel(in); }

void BatchNorm2d::named_parameters(const std::string& prefix, NamedParams& out) {
  out.emplace_back(prefix + "weight", &weight);
  out.emplace_back(prefix + "bias", &bias);
  out.emplace_back(prefix + "running_mean", &running_mean);
  out.emplace_back(prefix + "running_var", &running_var);
}

void BatchNorm2d::affine(std::vector<float>& scale, std::vector<float>& shift) const {
  const int64_t c = weight.value.numel();
  scale.resize(c);
  shift.resize(c);
  for (int64_t i = 0; i < c; ++i) {
    const double s = weight.value[i] / std::sqrt(double(running_var.value[i]) + eps);
    scale[i] = static_cast<float>(s);
    shift[i] = static_cast<float>(bias.value[i] - running_mean.value[i] * s);
  }
}

Var BatchNorm2d::forward(Tape* tape, const Var& x) {
  if (folded_) {
    if (training_) throw Error("BatchNorm2d: folded into its convolution; cannot train");
    return x;
  }
  auto saved = std::make_shared<BatchNormSaved>();
  Tensor y = training_ ? batchnorm_forward_train(x.value, weight.value, bias.value,
                                                 running_mean.value, running_var.value, eps,
                                                 momentum, saved.get())
                       : batchnorm_forward_eval(x.value, weight.value, bias.value,
                                                running_mean.value, running_var.value, eps,
                                                saved.get());
  if (!tape) return Var{y};
  const bool want_w = tape->wants(weight), want_b = tape->wants(bias);
  const bool train = training_;
  const bool need_x = want_w || (train && tape->needs_grad(x));
  Tensor xv = need_x ? x.value : Tensor();
  return tape->record(
      y, {&x},
      [this, xv, saved, train, want_w, want_b](const Tensor& gy, std::vector<Tensor*>& gin) {
        if (!gin[0] && !want_w && !want_b) return;
        const bool fresh = gin[0] && claim_fresh(*gin[0], gy.shape());
        if (fresh && xv.defined()) gin[0]->zero();  // batchnorm_backward adds
        if (!xv.defined()) {
          // Eval mode without a weight gradient: dx is a per-channel scale of dy.
          if (gin[0]) {
            const int64_t c = gy.dim(1), hw = gy.dim(2) * gy.dim(3);
            float* d = gin[0]->data();
            const float* g = gy.data();
            parallel_for(gy.dim(0) * c, [&](int64_t r0, int64_t r1) {
              for (int64_t r = r0; r < r1; ++r) {
                const float s = weight.value[r % c] * saved->inv_std[r % c];
                float* dr = d + r * hw;
                const float* gr = g + r * hw;
                if (fresh)
                  for (int64_t i = 0; i < hw; ++i) dr[i] = s * gr[i];
                else
                  for (int64_t i = 0; i < hw; ++i) dr[i] += s * gr[i];
              }
            });
          }
          if (want_b) channel_sum_add(gy, grad_of(bias));
          return;
        }
        batchnorm_backward(gy, xv, weight.value, *saved, train, gin[0],
                           want_w ? &grad_of(weight) : nullptr, want_b ? &grad_of(bias) : nullptr);
      },
      want_w || want_b, /*writes_fresh=*/true);
}

void fold_conv_bn(Conv2d& conv, BatchNorm2d& bn) {
  std::vector<float> scale, shift;
  bn.affine(scale, shift);
  conv.fold_scale_shift(scale, shift);
  bn.set_folded(true);
}

// ------------------------------------------------------------------ pools
MaxPool2d::MaxPool2d(int64_t kernel, int64_t stride, int64_t padding, bool ceil_mode) {
  spec_.kh = spec_.kw = kernel;
  spec_.stride_h = spec_.stride_w = stride;
  spec_.pad_h = spec_.pad_w = padding;
  spec_.ceil_mode = ceil_mode;
}

double MaxPool2d::flops(const Shape& in) const {
  return double(shape_numel(out_shape(in))) * spec_.kh * spec_.kw;
}

Var MaxPool2d::forward(Tape* tape, const Var& x) {
  if (!tape) return Var{maxpool2d_forward(x.value, spec_, nullptr)};
  auto argmax = std::make_shared<std::vector<int32_t>>();
  Tensor y = maxpool2d_forward(x.value, spec_, argmax.get());
  return tape->record(y, {&x}, [argmax](const Tensor& gy, std::vector<Tensor*>& gin) {
    if (gin[0]) maxpool2d_backward(gy, *argmax, *gin[0]);
  });
}

AvgPool2d::AvgPool2d(int64_t kernel, int64_t stride, int64_t padding, bool ceil_mode,
                     bool count_include_pad) {
  spec_.kh = spec_.kw = kernel;
  spec_.stride_h = spec_.stride_w = stride;
  spec_.pad_h = spec_.pad_w = padding;
  spec_.ceil_mode = ceil_mode;
  spec_.count_include_pad = count_include_pad;
}

double AvgPool2d::flops(const Shape& in) const {
  return double(shape_numel(out_shape(in))) * spec_.kh * spec_.kw;
}

Var AvgPool2d::forward(Tape* tape, const Var& x) {
  Tensor y = avgpool2d_forward(x.value, spec_);
  if (!tape) return Var{y};
  const Pool2dSpec s = spec_;
  return tape->record(y, {&x}, [s](const Tensor& gy, std::vector<Tensor*>& gin) {
    if (gin[0]) avgpool2d_backward(gy, s, *gin[0]);
  });
}

Shape AdaptiveAvgPool2d::out_shape(const Shape& in) const {
  if (in.size() != 4) throw Error("AdaptiveAvgPool2d: expected a 4-d input");
  return {in[0], in[1], oh_, ow_};
}

double AdaptiveAvgPool2d::flops(const Shape& in) const { return double(shape_numel(in)); }

Var AdaptiveAvgPool2d::forward(Tape* tape, const Var& x) {
  Tensor y = adaptive_avgpool2d_forward(x.value, oh_, ow_);
  if (!tape) return Var{y};
  return tape->record(y, {&x}, [](const Tensor& gy, std::vector<Tensor*>& gin) {
    if (gin[0]) adaptive_avgpool2d_backward(gy, *gin[0]);
  });
}

Shape Flatten::out_shape(const Shape& in) const {
  if (in.empty()) throw Error("Flatten: scalar input");
  return {in[0], in[0] ? shape_numel(in) / in[0] : 0};
}

// ------------------------------------------------------------------ Linear
Linear::Linear(int64_t in, int64_t out, bool bias) : in_(in), out_(out), has_bias_(bias) {
  weight = make_param({out, in});
  if (bias) this->bias = make_param({out});
}

Shape Linear::out_shape(const Shape& in) const {
  if (in.size() != 2 || in[1] != in_)
    throw Error("Linear: input " + shape_str(in) + " does not have " + std::to_string(in_) +
                " features");
  return {in[0], out_};
}

double Linear::flops(const Shape& in) const { return 2.0 * in[0] * in_ * out_; }

void Linear::named_parameters(const std::string& prefix, NamedParams& out) {
  out.emplace_back(prefix + "weight", &weight);
  if (has_bias_) out.emplace_back(prefix + "bias", &bias);
}

void Linear::pack_for_inference(bool on) {
  std::lock_guard<std::mutex> lock(pack_mutex_);
  packed_ = on;
  folded_ = Tensor();
  folded_for_.clear();
}

void Linear::set_training(bool training) {
  Module::set_training(training);
  if (training) pack_for_inference(false);
}

Tensor Linear::folded_weight(const Tensor& x, int64_t oh, int64_t ow) {
  if (x.ndim() != 4 || x.dim(1) * oh * ow != in_ || x.dim(2) * x.dim(3) >= oh * ow) return Tensor();
  const Shape key{x.dim(1), x.dim(2), x.dim(3), oh, ow};
  std::lock_guard<std::mutex> lock(pack_mutex_);
  if (!packed_ || training_) return Tensor();
  if (folded_for_ != key) {
    HugePageScope huge;  // a weight, streamed from memory on every pass
    folded_ = pool_linear_weight(weight.value, x.dim(1), x.dim(2), x.dim(3), oh, ow);
    folded_for_ = key;
  }
  return folded_;  // shared storage: stays valid if another size replaces it
}

Tensor Linear::infer_after_pool(const Tensor& x, int64_t oh, int64_t ow) {
  const Tensor folded = folded_weight(x, oh, ow);
  if (!folded.defined()) return Tensor();
  const Tensor flat = x.reshape({x.dim(0), x.dim(1) * x.dim(2) * x.dim(3)});
  return linear_forward(flat, folded, has_bias_ ? &bias.value : nullptr);
}

Var Linear::forward_after_pool(Tape* tape, const Var& x, int64_t oh, int64_t ow) {
  if (tape && (tape->wants(weight) || (has_bias_ && tape->wants(bias)))) return Var();
  const Tensor folded = folded_weight(x.value, oh, ow);
  if (!folded.defined()) return Var();
  const int64_t n = x.value.dim(0), k = folded.dim(1);
  const Tensor y = linear_forward(x.value.reshape({n, k}), folded, has_bias_ ? &bias.value : nullptr);
  if (!tape) return Var{y};
  return tape->record(y, {&x}, [folded, n, k, out = out_](const Tensor& gy, std::vector<Tensor*>& gin) {
    // d/dx of y = x W'^T + b: gx [N, C*H*W] += gy [N, out] W' [out, C*H*W].
    if (gin[0]) gemm(false, false, n, k, out, gy.data(), out, folded.data(), k, 1.0f, gin[0]->data(), k);
  });
}

Var Linear::forward(Tape* tape, const Var& x) {
  Tensor y = linear_forward(x.value, weight.value, has_bias_ ? &bias.value : nullptr);
  if (!tape) return Var{y};
  const bool want_w = tape->wants(weight), want_b = has_bias_ && tape->wants(bias);
  Tensor xv = x.value;
  return tape->record(
      y, {&x},
      [this, xv, want_w, want_b](const Tensor& gy, std::vector<Tensor*>& gin) {
        linear_backward(gy, xv, weight.value, gin[0], want_w ? &grad_of(weight) : nullptr,
                        want_b ? &grad_of(bias) : nullptr);
      },
      want_w || want_b);
}

// ------------------------------------------------------------------ Dropout
Var Dropout::forward(Tape* tape, const Var& x) {
  if (!training_ || p_ <= 0.0) return x;
  if (p_ >= 1.0) {
    Tensor y = Tensor::zeros(x.value.shape());
    if (!tape) return Var{y};
    return tape->record(y, {&x}, [](const Tensor&, std::vector<Tensor*>&) {});
  }
  Tensor mask = Tensor::empty(x.value.shape());
  std::bernoulli_distribution keep(1.0 - p_);
  const float scale = static_cast<float>(1.0 / (1.0 - p_));
  for (int64_t i = 0; i < mask.numel(); ++i) mask[i] = keep(rng_) ? scale : 0.0f;
  Tensor y = Tensor::empty(x.value.shape());
  for (int64_t i = 0; i < y.numel(); ++i) y[i] = x.value[i] * mask[i];
  if (!tape) return Var{y};
  return tape->record(y, {&x}, [mask](const Tensor& gy, std::vector<Tensor*>& gin) {
    if (!gin[0]) return;
    float* d = gin[0]->data();
    for (int64_t i = 0; i < gy.numel(); ++i) d[i] += gy[i] * mask[i];
  });
}

// ------------------------------------------------------------------ init
void init_conv_kaiming(Conv2d& conv, std::mt19937_64& rng) {
  const Conv2dSpec& s = conv.spec();
  const double fan_out = double(s.out_channels) * s.kh * s.kw / s.groups;
  std::normal_distribution<double> dist(0.0, std::sqrt(2.0 / fan_out));
  for (int64_t i = 0; i < conv.weight.value.numel(); ++i)
    conv.weight.value[i] = static_cast<float>(dist(rng));
  if (conv.has_bias()) conv.bias.value.zero();
}

void init_linear_normal(Linear& linear, double stddev, std::mt19937_64& rng) {
  std::normal_distribution<double> dist(0.0, stddev);
  for (int64_t i = 0; i < linear.weight.value.numel(); ++i)
    linear.weight.value[i] = static_cast<float>(dist(rng));
  if (linear.bias.value.defined()) linear.bias.value.zero();
}

}  // namespace isplit
