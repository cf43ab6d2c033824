#include "models/memory.h"

#include <algorithm>
#include <map>

namespace isplit {

size_t tensor_storage_bytes(int64_t numel) {
  const size_t bytes = static_cast<size_t>(numel) * sizeof(float);
  return bytes == 0 ? 64 : (bytes + 63) / 64 * 64;
}

namespace {
// Zeros of shape input, allocated after the peak counter was restarted by the caller.
Tensor zeros_input(const Shape& input) { return Tensor(input); }
}  // namespace

std::vector<HeadMemory> measure_cut_memory(Model& model, const Shape& input) {
  const std::vector<CutPoint> cuts = model.cut_points(true);
  std::map<std::string, size_t> position;
  for (size_t i = 0; i < cuts.size(); ++i) position[cuts[i].name] = i;
  // Weights per cut point stage; a parameter belongs to the stage whose name + "." starts it.
  std::vector<size_t> stage_bytes(cuts.size(), 0);
  for (auto& [name, p] : model.named_parameters()) {
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
    Tensor x = zeros_input(input);
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
  const size_t before = tensor_live_bytes();
  auto head = build_model(arch, num_classes, 0, cut);
  head->set_training(false);
  HeadMemory h;
  h.cut = cut;
  h.weight_bytes = tensor_live_bytes() - before;
  const size_t baseline = tensor_live_bytes();
  reset_tensor_peak_bytes();
  {
    Tensor x = zeros_input(input);
    head->forward(nullptr, Var{x});
  }
  h.activation_bytes = tensor_peak_bytes() - baseline;
  return h;
}

}  // namespace isplit
