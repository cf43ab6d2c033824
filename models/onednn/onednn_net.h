// The optional oneDNN inference backend (built when ISPLIT_HAVE_ONEDNN is defined): a
// VGG16 or ResNet-50 (whole, or a head up to a cut point) as a chain of oneDNN primitives,
// for x86 servers and as a reference for the native engine. BatchNorm is folded into the convolutions, ReLU and the
// residual add run as post-ops, oneDNN chooses the activation and weight layouts, and the
// weights are reordered into those layouts once, when the network is built.
// Only the `isplit` program and the tests link this; device-side code never does.
#pragma once
#include <memory>
#include <string>

#include "models/model.h"

namespace isplit {

class OnednnNet {
 public:
  // Builds the network of a vgg16 or resnet50 model (folded or not; whole or a head) for
  // inputs of exactly `input` = [N, 3, H, W]; copies the weights, so the model may change
  // or go away afterwards. Throws Error for another architecture, a head whose cut point
  // folding hid, a bad or too small shape, or a missing or misshapen parameter.
  OnednnNet(Model& model, const Shape& input);
  ~OnednnNet();
  OnednnNet(OnednnNet&&) noexcept;
  OnednnNet& operator=(OnednnNet&&) noexcept;
  OnednnNet(const OnednnNet&) = delete;
  OnednnNet& operator=(const OnednnNet&) = delete;

  // Runs the network on x (shape equal to input_shape()) on num_threads() threads and
  // returns the logits [N, classes] (a head: its cut point's output [N, C, H, W]). Throws
  // Error on another shape. One pass at a time per object (buffers are shared).
  Tensor forward(const Tensor& x);
  // The input shape the network was built for.
  const Shape& input_shape() const;
  // The output's shape: [N, classes], or a head's [N, C, H, W].
  const Shape& output_shape() const;
  // Activation reorders oneDNN's layout choices put into a forward pass (for reports).
  int activation_reorders() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// The oneDNN library version this program runs with, e.g. "2.6.3".
std::string onednn_version();

}  // namespace isplit
