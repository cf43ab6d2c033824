#include "models/memory.h"

#include <algorithm>
#include <map>

#include "engine/parallel.h"

namespace isplit {

size_t tensor_storage_bytes(int64_t numel) {
  const size_t bytes = static_cast<size_t>(numel) * sizeof(float);
  return bytes == 0 ? 64 : (bytes + 63) / 64 * 64;
}

namespace {
// Runs measurements on one thread: which pool thread runs which part of a loop varies from
// run to run, and each thread grows its own GEMM packing buffers, so a two-thread peak
// would differ between runs by a few tens of kilobytes.
class OneThread {
 public:
  OneThread() : saved_(num_threads()) { set_num_threads(1); }
  ~OneThread() { set_num_threads(saved_); }

 private:
  int saved_;
};
}  // namespace

std::vector<HeadMemory> measure_cut_memory(Model& model, const Shape& input) {
  OneThread one;
  const std::vector<CutPoint> cuts = model.cut_points(true);
  std::map<std::string, size_t> position;
  for (size_t i = 0; i < cuts.size(); ++i) position[cuts[i].name] = i;
  // Weights per cut point stage; a parameter belongs to the stage whose name + "." starts it.
  std::vector<size_t> stage_bytes(cuts.size(), 0);
  for (auto& [name, p] : model.named_parameters(false)) {  // sizes only
    for (size_t dot = name.find('.'); dot != std::string::npos; dot = name.find('.', dot + 1)) {
      auto it = position.find(name.substr(0, dot));
      if (it != position.end()) {
        stage_bytes[it->second] += tensor_storage_bytes(p->value.numel());
        break;
      }
    }
  }
  model.set_training(false);
  const size_t baseline = tensor_live_bytes();  // every weight of the whole network
  reset_tensor_peak_bytes();
  std::vector<HeadMemory> out;
  {
    Tensor x(input);  // zeros, counted in the peak
    size_t weights = 0;
    model.forward(nullptr, Var{x}, [&](const std::string& name, const Var&) {
      auto it = position.find(name);
      if (it == position.end()) return;
      for (size_t i = out.size(); i <= it->second; ++i) weights += stage_bytes[i];
      HeadMemory h;
      h.cut = name;
      h.weight_bytes = weights;
      h.activation_bytes = tensor_peak_bytes() - baseline;
      out.resize(it->second);  // keep the vector indexed like cuts (hidden stages stay empty)
      out.push_back(h);
    });
  }
  out.erase(std::remove_if(out.begin(), out.end(), [](const HeadMemory& h) { return h.cut.empty(); }),
            out.end());
  return out;
}

HeadMemory measure_head(const std::string& arch, int64_t num_classes, const std::string& cut,
                        const Shape& input) {
  OneThread one;
  const size_t before = tensor_live_bytes();
  auto head = build_model(arch, num_classes, 0, cut, false);  // zero weights: only sizes count
  head->set_training(false);
  HeadMemory h;
  h.cut = cut;
  h.weight_bytes = tensor_live_bytes() - before;
  const size_t baseline = tensor_live_bytes();
  reset_tensor_peak_bytes();
  {
    Tensor x(input);  // zeros, counted in the peak
    head->forward(nullptr, Var{x});
  }
  h.activation_bytes = tensor_peak_bytes() - baseline;
  return h;
}

}  // namespace isplit
