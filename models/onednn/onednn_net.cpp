// OnednnNet: VGG16 and ResNet-50 inference as oneDNN 2.x primitives (see onednn_net.h).
#include "models/onednn/onednn_net.h"

#include <dnnl.hpp>
#if DNNL_VERSION_MAJOR != 2
#error "models/onednn uses the oneDNN 2.x API (operation descriptors)"
#endif
#if DNNL_CPU_RUNTIME == DNNL_RUNTIME_OMP
#include <omp.h>
#endif

#include <cmath>
#include <cstring>
#include <functional>
#include <map>
#include <unordered_map>
#include <utility>
#include <vector>

#include "engine/parallel.h"
#include "layers/functional.h"

namespace isplit {

namespace {

using dnnl::memory;
using dt = memory::data_type;
using tag = memory::format_tag;

// torchvision's BatchNorm2d epsilon, which both models use.
constexpr double kBatchNormEps = 1e-5;

// Lets oneDNN's parallel regions (OpenMP in Debian's build) use the engine's thread
// count; set before every build and pass, as the count is per calling thread.
void use_engine_threads() {
#if DNNL_CPU_RUNTIME == DNNL_RUNTIME_OMP
  omp_set_num_threads(num_threads());
#endif
}

// The dims of a shape, as oneDNN wants them.
memory::dims to_dims(const Shape& s) { return memory::dims(s.begin(), s.end()); }

// The executable network: primitives with their arguments, in order.
struct Pipeline {
  // One step of a pass: a primitive and its arguments, or host code between primitives.
  struct Step {
    dnnl::primitive prim;
    std::unordered_map<int, memory> args;
    std::function<void()> host;
  };
  dnnl::engine eng{dnnl::engine::kind::cpu, 0};
  dnnl::stream strm{eng};
  std::vector<Step> steps;
  memory input;           // plain NCHW, owned; forward copies the caller's tensor here
  memory output;          // the last layer's output, in oneDNN's layout
  memory result;          // the same, plain (NC or NCHW), over the caller's tensor (set per pass)
  dnnl::reorder to_result;
  Shape in_shape, out_shape;
  int reorders = 0;

  // Runs every step once and waits for the results.
  void run() {
    for (Step& s : steps) {
      if (s.host) {
        strm.wait();
        s.host();
      } else {
        s.prim.execute(strm, s.args);
      }
    }
    strm.wait();
  }
};

// Adds the layers of a model to a pipeline, taking weights from its named parameters.
class Builder {
 public:
  // Reads the parameters of `model`; a folded model's convolutions already hold their
  // BatchNorms, an unfolded one's are folded here.
  Builder(Pipeline& net, Model& model) : net_(net), folded_(model.folded()) {
    for (auto& [name, p] : model.named_parameters()) params_.emplace(name, p->value);
  }

  // The layer being built, for error messages.
  const std::string& layer() const { return layer_; }

  // Convolution k x k (stride, pad) with the BatchNorm `bn` folded in ("" for none), then
  // the residual added (when given) and a ReLU (when relu; a residual add always has one).
  memory conv(const memory& src, const std::string& name, const std::string& bn, int64_t oc,
              int64_t k, int64_t stride, int64_t pad, bool relu, const memory* residual = nullptr) {
    layer_ = name;
    const memory::dims sd = src.get_desc().dims();
    const int64_t ic = sd[1];
    const memory::dims wd{oc, ic, k, k}, bd{oc},
        dd{sd[0], oc, out_size(sd[2], k, stride, pad), out_size(sd[3], k, stride, pad)};
    const Tensor& weight = param(name + ".weight", {oc, ic, k, k});
    std::vector<float> b(static_cast<size_t>(oc), 0.0f);
    if (params_.count(name + ".bias")) b = values(name + ".bias", {oc});
    std::vector<float> folded;  // the weights with a BatchNorm folded in (else unused)
    const bool fold = !bn.empty() && !folded_;
    if (fold) {
      folded = values(name + ".weight", {oc, ic, k, k});
      fold_batchnorm(bn, folded, b);
    }

    dnnl::post_ops po;
    if (residual) po.append_sum(1.0f);
    if (relu || residual) po.append_eltwise(1.0f, dnnl::algorithm::eltwise_relu, 0.0f, 0.0f);
    dnnl::primitive_attr attr;
    attr.set_post_ops(po);
    const dnnl::convolution_forward::desc d(
        dnnl::prop_kind::forward_inference, dnnl::algorithm::convolution_direct,
        memory::desc(sd, dt::f32, tag::any), memory::desc(wd, dt::f32, tag::any),
        memory::desc(bd, dt::f32, tag::x), memory::desc(dd, dt::f32, tag::any), {stride, stride},
        {pad, pad}, {pad, pad});
    const dnnl::convolution_forward::primitive_desc pd(d, attr, net_.eng);

    const memory in = in_layout(src, pd.src_desc());
    const memory wm = constant(memory::desc(wd, dt::f32, tag::oihw), fold ? folded.data() : weight.data(),
                               pd.weights_desc());
    const memory bm = constant(memory::desc(bd, dt::f32, tag::x), b.data(), memory::desc(bd, dt::f32, tag::x));
    // The sum post-op accumulates into dst, so the shortcut itself becomes the output (its
    // value is not needed after this layer).
    const memory out = residual ? in_layout(*residual, pd.dst_desc()) : memory(pd.dst_desc(), net_.eng);
    add(dnnl::convolution_forward(pd),
        {{DNNL_ARG_SRC, in}, {DNNL_ARG_WEIGHTS, wm}, {DNNL_ARG_BIAS, bm}, {DNNL_ARG_DST, out}});
    return out;
  }

  // Max pooling (or average pooling, which here never covers padding) kh x kw.
  memory pool(const memory& src, const std::string& name, bool max, int64_t kh, int64_t kw,
              int64_t stride, int64_t pad) {
    layer_ = name;
    const memory::dims sd = src.get_desc().dims();
    const memory::dims dd{sd[0], sd[1], out_size(sd[2], kh, stride, pad), out_size(sd[3], kw, stride, pad)};
    const dnnl::pooling_forward::desc d(
        dnnl::prop_kind::forward_inference,
        max ? dnnl::algorithm::pooling_max : dnnl::algorithm::pooling_avg_exclude_padding,
        src.get_desc(), memory::desc(dd, dt::f32, tag::any), {stride, stride}, {kh, kw}, {pad, pad},
        {pad, pad});
    const dnnl::pooling_forward::primitive_desc pd(d, net_.eng);
    memory out(pd.dst_desc(), net_.eng);
    add(dnnl::pooling_forward(pd), {{DNNL_ARG_SRC, src}, {DNNL_ARG_DST, out}});
    return out;
  }

  // AdaptiveAvgPool2d((o, o)), by the engine's own kernel on the host (plain NCHW data
  // copied in and out; the maps are small by then); the identity when the input is o x o.
  memory adaptive_avg_pool(const memory& src, const std::string& name, int64_t o) {
    layer_ = name;
    const memory::dims sd = src.get_desc().dims();
    if (sd[2] == o && sd[3] == o) return src;
    const memory plain = in_layout(src, memory::desc(sd, dt::f32, tag::nchw));
    memory out(memory::desc({sd[0], sd[1], o, o}, dt::f32, tag::nchw), net_.eng);
    Pipeline::Step step;
    step.host = [plain, out, o, staged = Tensor::empty(Shape(sd.begin(), sd.end()))]() mutable {
      std::memcpy(staged.data(), plain.get_data_handle(), staged.bytes());
      const Tensor y = adaptive_avgpool2d_forward(staged, o, o);
      std::memcpy(out.get_data_handle(), y.data(), y.bytes());
    };
    net_.steps.push_back(std::move(step));
    return out;
  }

  // Fully connected layer on [N, C, H, W] (flattened in NCHW order, as PyTorch does) or
  // [N, F], with an optional ReLU.
  memory linear(const memory& src, const std::string& name, int64_t out_features, bool relu) {
    layer_ = name;
    const memory::desc smd = src.get_desc();
    const memory::dims sd = smd.dims();
    int64_t in_features = 1;
    for (size_t i = 1; i < sd.size(); ++i) in_features *= sd[i];
    memory::dims wd = sd;
    wd[0] = out_features;
    const memory::dims bd{out_features}, dd{sd[0], out_features};
    const Tensor& w = param(name + ".weight", {out_features, in_features});
    const Tensor& b = param(name + ".bias", {out_features});
    dnnl::post_ops po;
    if (relu) po.append_eltwise(1.0f, dnnl::algorithm::eltwise_relu, 0.0f, 0.0f);
    dnnl::primitive_attr attr;
    attr.set_post_ops(po);
    const dnnl::inner_product_forward::desc d(
        dnnl::prop_kind::forward_inference, smd, memory::desc(wd, dt::f32, tag::any),
        memory::desc(bd, dt::f32, tag::x), memory::desc(dd, dt::f32, tag::any));
    const dnnl::inner_product_forward::primitive_desc pd(d, attr, net_.eng);
    const memory in = in_layout(src, pd.src_desc());
    const memory wm = constant(memory::desc(wd, dt::f32, sd.size() == 4 ? tag::oihw : tag::oi), w.data(),
                               pd.weights_desc());
    const memory bm = constant(memory::desc(bd, dt::f32, tag::x), b.data(), memory::desc(bd, dt::f32, tag::x));
    memory out(pd.dst_desc(), net_.eng);
    add(dnnl::inner_product_forward(pd),
        {{DNNL_ARG_SRC, in}, {DNNL_ARG_WEIGHTS, wm}, {DNNL_ARG_BIAS, bm}, {DNNL_ARG_DST, out}});
    return out;
  }

 private:
  // Output size of a window k (stride, pad) over n; throws Error when it would be empty.
  int64_t out_size(int64_t n, int64_t k, int64_t stride, int64_t pad) const {
    if (n + 2 * pad < k)
      throw Error("OnednnNet: the input is too small for " + layer_ + " (" + std::to_string(n) +
                  " pixels, window " + std::to_string(k) + ")");
    return (n + 2 * pad - k) / stride + 1;
  }

  // The named parameter; throws Error when it is missing or misshapen.
  const Tensor& param(const std::string& name, const Shape& shape) const {
    auto it = params_.find(name);
    if (it == params_.end()) throw Error("OnednnNet: the model has no parameter " + name);
    if (it->second.shape() != shape)
      throw Error("OnednnNet: " + name + " has shape " + shape_str(it->second.shape()) +
                  ", expected " + shape_str(shape));
    return it->second;
  }

  // A copy of the named parameter's values (see param).
  std::vector<float> values(const std::string& name, const Shape& shape) const {
    const Tensor& t = param(name, shape);
    return std::vector<float>(t.data(), t.data() + t.numel());
  }

  // Folds the eval-mode BatchNorm `bn` into convolution weights w [oc, ...] and bias b, with
  // the same arithmetic as the native fold (per-channel scale in double, rounded to float).
  void fold_batchnorm(const std::string& bn, std::vector<float>& w, std::vector<float>& b) const {
    const Shape c{static_cast<int64_t>(b.size())};
    const std::vector<float> gamma = values(bn + ".weight", c), beta = values(bn + ".bias", c),
                             mean = values(bn + ".running_mean", c), var = values(bn + ".running_var", c);
    const size_t per = w.size() / b.size();
    for (size_t o = 0; o < b.size(); ++o) {
      const double s = gamma[o] / std::sqrt(double(var[o]) + kBatchNormEps);
      const float scale = static_cast<float>(s), shift = static_cast<float>(beta[o] - mean[o] * s);
      for (size_t j = 0; j < per; ++j) w[o * per + j] *= scale;
      b[o] = b[o] * scale + shift;
    }
  }

  // A memory in layout `want` holding host values given in layout `user` (only read),
  // reordered now, once (weights and biases).
  memory constant(const memory::desc& user, const float* values, const memory::desc& want) {
    memory from(user, net_.eng, const_cast<float*>(values));
    memory to(want, net_.eng);
    dnnl::reorder(from, to).execute(net_.strm, from, to);
    net_.strm.wait();
    return to;
  }

  // src itself when it already has layout `want`, else a new memory filled by a reorder step
  // in every pass.
  memory in_layout(const memory& src, const memory::desc& want) {
    if (src.get_desc() == want) return src;
    memory dst(want, net_.eng);
    add(dnnl::reorder(src, dst), {{DNNL_ARG_FROM, src}, {DNNL_ARG_TO, dst}});
    ++net_.reorders;
    return dst;
  }

  // Appends a primitive step.
  void add(const dnnl::primitive& prim, std::unordered_map<int, memory> args) {
    Pipeline::Step step;
    step.prim = prim;
    step.args = std::move(args);
    net_.steps.push_back(std::move(step));
  }

  Pipeline& net_;
  bool folded_;
  std::map<std::string, Tensor> params_;
  std::string layer_ = "the input";
};

// torchvision's vgg16(): 13 convolutions with ReLU, 5 max pools, AdaptiveAvgPool2d(7) and
// three fully connected layers (the Dropouts are identities in inference); with a cut point
// `stop`, only the head up to its output.
memory build_vgg16(Builder& b, memory y, int64_t classes, const std::string& stop) {
  const int64_t cfg[] = {64, 64, 0, 128, 128, 0, 256, 256, 256, 0, 512, 512, 512, 0, 512, 512, 512, 0};
  int index = 0;
  for (int64_t c : cfg) {
    const std::string name = "features." + std::to_string(index);
    if (c == 0) {
      y = b.pool(y, name, true, 2, 2, 2, 0);
      if (name == stop) return y;
      index += 1;
    } else {
      // The ReLU after the convolution is a post-op, except when the cut is the
      // convolution's own output.
      y = b.conv(y, name, "", c, 3, 1, 1, name != stop);
      if (name == stop || "features." + std::to_string(index + 1) == stop) return y;
      index += 2;
    }
  }
  y = b.adaptive_avg_pool(y, "avgpool", 7);
  y = b.linear(y, "classifier.0", 4096, true);
  y = b.linear(y, "classifier.3", 4096, true);
  return b.linear(y, "classifier.6", classes, false);
}

// torchvision's resnet50() (v1.5: the stride sits on the 3x3 convolution of a bottleneck);
// with a cut point `stop`, only the head up to its output.
memory build_resnet50(Builder& b, memory y, int64_t classes, const std::string& stop) {
  // A cut at conv1 sees the bare convolution, at bn1 the normalised values before the ReLU.
  y = b.conv(y, "conv1", stop == "conv1" ? "" : "bn1", 64, 7, 2, 3, stop != "conv1" && stop != "bn1");
  if (stop == "conv1" || stop == "bn1" || stop == "relu") return y;
  y = b.pool(y, "maxpool", true, 3, 3, 2, 1);
  if (stop == "maxpool") return y;
  const int blocks[] = {3, 4, 6, 3};
  for (int stage = 0; stage < 4; ++stage) {
    const int64_t width = int64_t(64) << stage;
    for (int i = 0; i < blocks[stage]; ++i) {
      const std::string p = "layer" + std::to_string(stage + 1) + "." + std::to_string(i);
      const int64_t stride = stage > 0 && i == 0 ? 2 : 1;
      memory shortcut = y;
      if (i == 0) shortcut = b.conv(y, p + ".downsample.0", p + ".downsample.1", width * 4, 1, stride, 0, false);
      memory t = b.conv(y, p + ".conv1", p + ".bn1", width, 1, 1, 0, true);
      t = b.conv(t, p + ".conv2", p + ".bn2", width, 3, stride, 1, true);
      y = b.conv(t, p + ".conv3", p + ".bn3", width * 4, 1, 1, 0, true, &shortcut);
      if (p == stop) return y;
    }
  }
  const memory::dims d = y.get_desc().dims();
  y = b.pool(y, "avgpool", false, d[2], d[3], 1, 0);  // global average
  return b.linear(y, "fc", classes, false);
}

// "oneDNN: <message> (status N)" for an exception from the library.
std::string describe(const dnnl::error& e) {
  return std::string("oneDNN: ") + e.what() + " (status " + std::to_string(int(e.status)) + ")";
}

}  // namespace

struct OnednnNet::Impl : Pipeline {};

OnednnNet::OnednnNet(Model& model, const Shape& input) : impl_(std::make_unique<Impl>()) {
  const std::string& arch = model.arch();
  if (arch != "vgg16" && arch != "resnet50")
    throw Error("OnednnNet: architecture '" + arch + "' is not supported (vgg16 or resnet50)");
  const std::string& cut = model.head_cut();
  if (!cut.empty() && !model.has_cut_point(cut))
    throw Error("OnednnNet: the head's cut point '" + cut + "' was folded away (fold_batchnorm)");
  if (input.size() != 4 || input[0] < 1 || input[1] != 3 || input[2] < 1 || input[3] < 1)
    throw Error("OnednnNet: input shape " + shape_str(input) + " is not [N, 3, H, W]");
  Impl& net = *impl_;
  net.in_shape = input;
  use_engine_threads();
  Builder builder(net, model);
  try {
    net.input = memory(memory::desc(to_dims(input), dt::f32, tag::nchw), net.eng);
    net.output = arch == "vgg16" ? build_vgg16(builder, net.input, model.num_classes(), cut)
                                 : build_resnet50(builder, net.input, model.num_classes(), cut);
    const memory::dims od = net.output.get_desc().dims();
    net.out_shape.assign(od.begin(), od.end());
    net.result = memory(memory::desc(od, dt::f32, od.size() == 4 ? tag::nchw : tag::nc), net.eng, DNNL_MEMORY_NONE);
    net.to_result = dnnl::reorder(net.output, net.result);
  } catch (const dnnl::error& e) {
    throw Error("OnednnNet: " + describe(e) + " while building " + builder.layer());
  }
}

OnednnNet::~OnednnNet() = default;
OnednnNet::OnednnNet(OnednnNet&&) noexcept = default;
OnednnNet& OnednnNet::operator=(OnednnNet&&) noexcept = default;

Tensor OnednnNet::forward(const Tensor& x) {
  Impl& net = *impl_;
  if (x.shape() != net.in_shape)
    throw Error("OnednnNet::forward: input " + shape_str(x.shape()) + ", but the network was built for " +
                shape_str(net.in_shape));
  use_engine_threads();
  Tensor y = Tensor::empty(net.out_shape);
  try {
    std::memcpy(net.input.get_data_handle(), x.data(), x.bytes());
    net.run();
    net.result.set_data_handle(y.data());
    net.to_result.execute(net.strm, net.output, net.result);
    net.strm.wait();
    net.result.set_data_handle(DNNL_MEMORY_NONE);
  } catch (const dnnl::error& e) {
    throw Error("OnednnNet::forward: " + describe(e));
  }
  return y;
}

const Shape& OnednnNet::input_shape() const { return impl_->in_shape; }

const Shape& OnednnNet::output_shape() const { return impl_->out_shape; }

int OnednnNet::activation_reorders() const { return impl_->reorders; }

std::string onednn_version() {
  const dnnl_version_t* v = dnnl::version();
  return std::to_string(v->major) + "." + std::to_string(v->minor) + "." + std::to_string(v->patch);
}

}  // namespace isplit
