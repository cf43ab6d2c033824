// Inference backends of the `isplit` program: the native engine, and oneDNN when the
// build has it (ISPLIT_HAVE_ONEDNN, models/onednn/).
#pragma once
#include <CLI/CLI.hpp>

#include <memory>
#include <string>

#include "models/model.h"

namespace isplit {

class OnednnNet;

// True when this program was built with the oneDNN backend.
bool onednn_built();
// The oneDNN version this program runs with ("2.6.3"), or "" in a build without it.
std::string onednn_version_text();
// Adds --backend native|onednn to cmd, bound to backend; choosing onednn in a build without
// it is a usage error (exit 2).
CLI::Option* add_backend_option(CLI::App* cmd, std::string& backend);

// Logits of batches from a whole model on one backend.
class InferenceRunner {
 public:
  // backend "native" runs model.predict (the caller prepares the model: folding, packing);
  // "onednn" builds a oneDNN network from the model's weights on the first batch.
  InferenceRunner(Model& model, const std::string& backend);
  ~InferenceRunner();
  // Logits [N, classes] of x [N, 3, H, W]. oneDNN keeps the network of the first shape; a
  // smaller batch of the same image size is padded to it (images do not interact in
  // inference), another shape builds a new network.
  Tensor operator()(const Tensor& x);
  // Builds the oneDNN network for inputs of this shape now (nothing for native), so that
  // the first batch is not slower than the others.
  void prepare(const Shape& input);
  // "native" or "onednn".
  const std::string& backend() const { return backend_; }

 private:
  Model& model_;
  std::string backend_;
  std::shared_ptr<OnednnNet> net_;  // shared_ptr: destructible without OnednnNet's definition
};

}  // namespace isplit
