#include "apps/backend.h"

#include <cstring>

#ifdef ISPLIT_HAVE_ONEDNN
#include "models/onednn/onednn_net.h"
#endif

namespace isplit {

#ifdef ISPLIT_HAVE_ONEDNN
bool onednn_built() { return true; }
std::string onednn_version_text() { return onednn_version(); }
#else
bool onednn_built() { return false; }
std::string onednn_version_text() { return ""; }
#endif

CLI::Option* add_backend_option(CLI::App* cmd, std::string& backend) {
  const CLI::Validator available(
      [](std::string& value) -> std::string {
        if (value == "onednn" && !onednn_built())
          return "this isplit was built without oneDNN (configure with -DISPLIT_ONEDNN=ON and "
                 "libdnnl-dev installed)";
        return "";
      },
      "", "BACKEND");
  return cmd
      ->add_option("--backend", backend,
                   "inference backend: native (default) or onednn (x86 builds with oneDNN)")
      ->check(CLI::IsMember({"native", "onednn"}))
      ->check(available);
}

InferenceRunner::InferenceRunner(Model& model, const std::string& backend)
    : model_(model), backend_(backend) {
  if (backend_ != "native" && backend_ != "onednn") throw Error("unknown backend '" + backend_ + "'");
  if (backend_ == "onednn" && !onednn_built()) throw Error("this isplit was built without oneDNN");
}

InferenceRunner::~InferenceRunner() = default;

Tensor InferenceRunner::operator()(const Tensor& x) {
  if (backend_ == "native") return model_.predict(x);
#ifdef ISPLIT_HAVE_ONEDNN
  const Shape& s = x.shape();
  if (net_ && s.size() == 4 && s[0] < net_->input_shape()[0] &&
      Shape(s.begin() + 1, s.end()) == Shape(net_->input_shape().begin() + 1, net_->input_shape().end())) {
    Tensor padded = Tensor::zeros(net_->input_shape());
    std::memcpy(padded.data(), x.data(), x.bytes());
    return net_->forward(padded).slice0(0, s[0]).clone();
  }
  prepare(s);
  return net_->forward(x);
#else
  throw Error("this isplit was built without oneDNN");
#endif
}

void InferenceRunner::prepare(const Shape& input) {
#ifdef ISPLIT_HAVE_ONEDNN
  if (backend_ != "onednn" || (net_ && net_->input_shape() == input)) return;
  net_.reset();  // free the old network's memory before building the next
  net_ = std::make_shared<OnednnNet>(model_, input);
#endif
}

}  // namespace isplit
