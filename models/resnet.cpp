// ResNet-50 (torchvision's `resnet50`: v1.5, stride on the 3x3 convolution).
#include <cmath>
#include <random>

#include "models/model.h"

namespace isplit {

namespace {

// The bottleneck block: 1x1 reduce, 3x3 (carries the stride), 1x1 expand (x4), with a
// projection shortcut (downsample.0 conv + downsample.1 bn) when the shape changes.
class Bottleneck : public Module {
 public:
  // rng null: the weights stay zero (they are about to be loaded).
  Bottleneck(int64_t in, int64_t planes, int64_t stride, std::mt19937_64* rng)
      : conv1_(in, planes, 1, 1, 0, false),
        bn1_(planes),
        conv2_(planes, planes, 3, stride, 1, false),
        bn2_(planes),
        conv3_(planes, planes * 4, 1, 1, 0, false),
        bn3_(planes * 4) {
    if (rng) {
      init_conv_kaiming(conv1_, *rng);
      init_conv_kaiming(conv2_, *rng);
      init_conv_kaiming(conv3_, *rng);
    }
    if (stride != 1 || in != planes * 4) {
      ds_conv_ = std::make_unique<Conv2d>(in, planes * 4, 1, stride, 0, false);
      ds_bn_ = std::make_unique<BatchNorm2d>(planes * 4);
      if (rng) init_conv_kaiming(*ds_conv_, *rng);
    }
  }

  Var forward(Tape* tape, const Var& x) override { return forward_pre_relu(tape, x, nullptr); }

  Var forward_pre_relu(Tape* tape, const Var& x, Var* pre_relu) override {
    if (!tape && folded_) {
      // Inference on folded BatchNorms: ReLUs fused into conv1 and conv2, the residual
      // add and the last ReLU into conv3 (in its GEMM's epilogue while each output tile is
      // still in cache). The shortcut's conv runs before conv3, once conv1's output is gone.
      if (pre_relu) *pre_relu = Var();
      const Tensor mid = conv2_.infer(conv1_.infer(x.value, true), true);
      const Tensor identity = ds_conv_ ? ds_conv_->infer(x.value, false) : x.value;
      return Var{conv3_.infer(mid, true, &identity)};
    }
    // While packed (the importance pass), each conv + BN (+ ReLU) runs as one folded layer.
    // conv3 takes the shortcut into its epilogue: the sum is its output, and the block's
    // last ReLU too when nobody asks for the sum (its mask is then taken from the output,
    // which is positive exactly where the sum is: the same gradients).
    Var out = conv1_.forward_bn(tape, x, bn1_, true);
    out = conv2_.forward_bn(tape, out, bn2_, true);
    Var identity = ds_conv_ ? ds_conv_->forward_bn(tape, x, *ds_bn_, false) : x;
    if (!pre_relu) return conv3_.forward_bn(tape, out, bn3_, true, &identity);
    *pre_relu = conv3_.forward_bn(tape, out, bn3_, false, &identity);
    return relu(tape, *pre_relu);
  }

  Shape out_shape(const Shape& in) const override {
    return conv3_.out_shape(conv2_.out_shape(conv1_.out_shape(in)));
  }

  double flops(const Shape& in) const override {
    const Shape a = conv1_.out_shape(in), b = conv2_.out_shape(a), c = conv3_.out_shape(b);
    double f = conv1_.flops(in) + conv2_.flops(a) + conv3_.flops(b);
    f += bn1_.flops(a) + bn2_.flops(b) + bn3_.flops(c);
    f += double(shape_numel(a) + shape_numel(b) + 2 * shape_numel(c));  // ReLUs and add
    if (ds_conv_) f += ds_conv_->flops(in) + ds_bn_->flops(c);
    return f;
  }

  void named_parameters(const std::string& prefix, NamedParams& out) override {
    conv1_.named_parameters(prefix + "conv1.", out);
    bn1_.named_parameters(prefix + "bn1.", out);
    conv2_.named_parameters(prefix + "conv2.", out);
    bn2_.named_parameters(prefix + "bn2.", out);
    conv3_.named_parameters(prefix + "conv3.", out);
    bn3_.named_parameters(prefix + "bn3.", out);
    if (ds_conv_) {
      ds_conv_->named_parameters(prefix + "downsample.0.", out);
      ds_bn_->named_parameters(prefix + "downsample.1.", out);
    }
  }

  void set_training(bool training) override {
    Module::set_training(training);
    for (Module* m : members()) m->set_training(training);
  }

  void pack_for_inference(bool on) override {
    for (Module* m : members()) m->pack_for_inference(on);
  }

  void unpack_weights() override {
    for (Module* m : members()) m->unpack_weights();
  }

  void fold_batchnorm() override {
    fold_conv_bn(conv1_, bn1_);
    fold_conv_bn(conv2_, bn2_);
    fold_conv_bn(conv3_, bn3_);
    if (ds_conv_) fold_conv_bn(*ds_conv_, *ds_bn_);
    folded_ = true;
  }

 private:
  std::vector<Module*> members() {
    std::vector<Module*> m = {&conv1_, &bn1_, &conv2_, &bn2_, &conv3_, &bn3_};
    if (ds_conv_) {
      m.push_back(ds_conv_.get());
      m.push_back(ds_bn_.get());
    }
    return m;
  }
  Conv2d conv1_;
  BatchNorm2d bn1_;
  Conv2d conv2_;
  BatchNorm2d bn2_;
  Conv2d conv3_;
  BatchNorm2d bn3_;
  std::unique_ptr<Conv2d> ds_conv_;
  std::unique_ptr<BatchNorm2d> ds_bn_;
  bool folded_ = false;  // BatchNorms folded: inference takes the fused path
};

class ResNet50 : public Model {
 public:
  ResNet50(int64_t num_classes, uint64_t seed, const std::string& head, bool names_only,
           bool random_init)
      : Model("resnet50", num_classes, head, names_only) {
    std::mt19937_64 rng(seed);
    std::mt19937_64* init = random_init ? &rng : nullptr;
    add("conv1", [&] {
      auto conv1 = std::make_unique<Conv2d>(3, 64, 7, 2, 3, false);
      if (init) init_conv_kaiming(*conv1, rng);
      return conv1;
    }, true, false);
    add("bn1", [] { return std::make_unique<BatchNorm2d>(64); }, true, false);
    add("relu", [] { return std::make_unique<ReLU>(); }, true, true);
    add("maxpool", [] { return std::make_unique<MaxPool2d>(3, 2, 1); }, true, true);
    const int64_t blocks[] = {3, 4, 6, 3};
    int64_t in = 64;
    for (int layer = 0; layer < 4; ++layer) {
      const int64_t planes = 64 << layer;
      for (int64_t b = 0; b < blocks[layer]; ++b) {
        const int64_t stride = (layer > 0 && b == 0) ? 2 : 1;
        add("layer" + std::to_string(layer + 1) + "." + std::to_string(b),
            [&] { return std::make_unique<Bottleneck>(in, planes, stride, init); }, true, true);
        in = planes * 4;
      }
    }
    add("avgpool", [] { return std::make_unique<AdaptiveAvgPool2d>(1, 1); });
    add("flatten", [] { return std::make_unique<Flatten>(); });
    add("fc", [&] {
      // PyTorch's default Linear init: U(-1/sqrt(in), 1/sqrt(in)) for weight and bias.
      auto fc = std::make_unique<Linear>(in, num_classes);
      if (!init) return fc;
      const double bound = 1.0 / std::sqrt(double(in));
      std::uniform_real_distribution<double> dist(-bound, bound);
      for (int64_t i = 0; i < fc->weight.value.numel(); ++i)
        fc->weight.value[i] = static_cast<float>(dist(rng));
      for (int64_t i = 0; i < fc->bias.value.numel(); ++i)
        fc->bias.value[i] = static_cast<float>(dist(rng));
      return fc;
    });
  }
};

}  // namespace

std::unique_ptr<Model> make_resnet50(int64_t num_classes, uint64_t seed, const std::string& head,
                                     bool names_only, bool random_init) {
  return std::make_unique<ResNet50>(num_classes, seed, head, names_only, random_init);
}

}  // namespace isplit
