#include "models/model.h"

#include <chrono>
#include <set>

#include "engine/safetensors.h"

namespace isplit {

void Model::add(std::string name, const std::function<std::unique_ptr<Module>()>& make,
                bool cut, bool dflt) {
  if (complete_) return;
  if (!stop_after_.empty() && name == stop_after_) {
    if (!cut) throw CutPointError(arch_ + ": '" + name + "' is not a cut point");
    complete_ = true;
  }
  Stage s;
  s.name = std::move(name);
  if (!names_only_) s.module = make();
  s.cut = cut;
  s.is_default = dflt;
  stages_.push_back(std::move(s));
}

void Model::check_head_built() const {
  if (!stop_after_.empty() && !complete_) {
    std::string names;
    for (const CutPoint& c : cut_points(true)) names += (names.empty() ? "" : ", ") + c.name;
    throw CutPointError(arch_ + ": unknown cut point '" + stop_after_ + "' (valid: " + names +
                        ")");
  }
}

Var Model::forward(Tape* tape, const Var& x, const Observer& observe,
                   const std::string& stop_after) {
  return forward(tape, x, observe, stop_after, nullptr);
}

Var Model::forward(Tape* tape, const Var& x, const Observer& observe,
                   const std::string& stop_after, const Observer& observe_pre_relu) {
  if (x.value.ndim() != 4 || x.value.dim(1) != 3)
    throw Error(arch_ + ": expected input [N, 3, H, W], got " + shape_str(x.value.shape()));
  if (!stop_after.empty() && !has_cut_point(stop_after))
    throw Error(arch_ + ": unknown cut point '" + stop_after + "'");
  Var v = x;
  using Clock = std::chrono::steady_clock;
  Clock::time_point t0;
  // Reports the stage(s) just run to the timer, if any.
  auto timed = [&](const std::string& name) {
    if (!stage_timer_) return;
    const Clock::time_point t1 = Clock::now();
    stage_timer_(name, std::chrono::duration<double>(t1 - t0).count());
    t0 = t1;
  };
  if (stage_timer_) t0 = Clock::now();
  for (size_t i = 0; i < stages_.size(); ++i) {
    Stage& s = stages_[i];
    if (tape) tape->begin_section(s.name);  // the backward's nodes named by stage
    Var pre;
    if (packed_ && i + 2 < stages_.size() && !(stages_[i].cut && !stages_[i].hidden) &&
        !(stages_[i + 1].cut && !stages_[i + 1].hidden)) {
      // Adaptive pool -> flatten -> linear as one linear map when the pool upsamples a
      // small input (VGG16 below 224x224), whose folded weight is far smaller; with a tape
      // only when it wants no gradient of the linear layer's parameters (importance).
      auto* pool = dynamic_cast<AdaptiveAvgPool2d*>(s.module.get());
      auto* fc = dynamic_cast<Linear*>(stages_[i + 2].module.get());
      if (pool && fc && dynamic_cast<Flatten*>(stages_[i + 1].module.get())) {
        const std::string joined = s.name + "+" + stages_[i + 1].name + "+" + stages_[i + 2].name;
        if (tape) tape->begin_section(joined);
        Var y = fc->forward_after_pool(tape, v, pool->out_h(), pool->out_w());
        if (!y.value.defined() && tape) tape->begin_section(s.name);
        if (y.value.defined()) {
          v = y;
          i += 2;
          Stage& last = stages_[i];
          timed(joined);
          if (last.cut && !last.hidden) {
            if (observe) observe(last.name, v);
            if (last.name == stop_after) return v;
          }
          continue;
        }
      }
    }
    // The ReLU's input only where an observer will look at it (else it may be fused away).
    const bool want_pre = observe_pre_relu && s.cut && !s.hidden;
    v = s.module->forward_pre_relu(tape, v, want_pre ? &pre : nullptr);
    timed(s.name);
    if (s.cut && !s.hidden) {
      if (observe_pre_relu && pre.value.defined()) observe_pre_relu(s.name, pre);
      if (observe) observe(s.name, v);
      if (s.name == stop_after) return v;
    }
  }
  return v;
}

Tensor Model::predict(const Tensor& x) { return forward(nullptr, Var{x}).value; }

std::vector<CutPoint> Model::cut_points(bool all) const {
  std::vector<CutPoint> out;
  for (const Stage& s : stages_)
    if (s.cut && !s.hidden && (all || s.is_default)) out.push_back({s.name, s.is_default});
  return out;
}

bool Model::has_cut_point(const std::string& name) const {
  for (const Stage& s : stages_)
    if (s.cut && !s.hidden && s.name == name) return true;
  return false;
}

std::vector<StageInfo> Model::stage_info(const Shape& input) const {
  std::vector<StageInfo> out;
  Shape shape = input;
  for (const Stage& s : stages_) {
    StageInfo info;
    info.name = s.name;
    info.flops = s.module->flops(shape);
    shape = s.module->out_shape(shape);
    info.out_shape = shape;
    NamedParams ps;
    s.module->named_parameters("", ps);
    for (auto& p : ps)
      if (!p.second->is_buffer) info.params += p.second->value.numel();
    info.cut = s.cut && !s.hidden;
    info.is_default = s.is_default;
    out.push_back(info);
  }
  return out;
}

NamedParams Model::named_parameters(bool plain) {
  if (plain)
    for (Stage& s : stages_) s.module->unpack_weights();
  NamedParams out;
  for (Stage& s : stages_) s.module->named_parameters(s.name + ".", out);
  return out;
}

int64_t Model::parameter_count() {
  int64_t n = 0;
  for (auto& p : named_parameters(false))
    if (!p.second->is_buffer) n += p.second->value.numel();
  return n;
}

void Model::pack_for_inference(bool on) {
  for (Stage& s : stages_) s.module->pack_for_inference(on);
  packed_ = on;
}

void Model::set_training(bool training, bool dropout) {
  if (training) packed_ = false;  // the modules drop their packed weights themselves
  for (Stage& s : stages_) {
    const bool is_dropout = dynamic_cast<Dropout*>(s.module.get()) != nullptr;
    s.module->set_training(training && (dropout || !is_dropout));
  }
}

void Model::seed_dropout(uint64_t seed) {
  uint64_t k = 0;
  for (Stage& s : stages_) {
    ++k;
    if (auto* d = dynamic_cast<Dropout*>(s.module.get()))
      d->seed(seed ^ (k * 0x9E3779B97F4A7C15ull));
  }
}

void Model::zero_grad() {
  for (auto& p : named_parameters(false)) p.second->zero_grad();
}

void Model::load(const SafetensorsReader& file) {
  NamedParams params = named_parameters();
  std::set<std::string> expected;
  for (auto& [name, p] : params) {
    expected.insert(name);
    if (!file.has(name)) throw Error(file.path() + ": tensor '" + name + "': missing");
    const SafetensorsInfo& info = file.info(name);
    if (info.shape != p->value.shape())
      throw Error(file.path() + ": tensor '" + name + "': shape " + shape_str(info.shape) +
                  ", expected " + shape_str(p->value.shape()) + " for " + arch_);
  }
  for (const std::string& name : file.names()) {
    const std::string suffix = "num_batches_tracked";
    const bool ignored = name.size() >= suffix.size() &&
                         name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0;
    if (!ignored && !expected.count(name) && stop_after_.empty())
      throw Error(file.path() + ": tensor '" + name + "': unexpected for " + arch_);
  }
  for (auto& [name, p] : params) file.read_into(name, p->value);  // shapes checked above
  if (packed_) pack_for_inference(true);  // forget filters transformed from the old weights
}

void Model::load(const std::string& path) { load(SafetensorsReader(path)); }

void Model::save(const std::string& path) {
  std::vector<std::pair<std::string, Tensor>> tensors;
  for (auto& [name, p] : named_parameters()) tensors.emplace_back(name, p->value);
  save_safetensors(path, tensors, {{"arch", arch_}, {"format", "pt"}});
}

void Model::fold_batchnorm() {
  if (folded_) return;
  for (size_t i = 0; i < stages_.size(); ++i) {
    stages_[i].module->fold_batchnorm();
    if (i + 1 == stages_.size()) break;
    auto* conv = dynamic_cast<Conv2d*>(stages_[i].module.get());
    auto* bn = dynamic_cast<BatchNorm2d*>(stages_[i + 1].module.get());
    if (conv && bn) {
      fold_conv_bn(*conv, *bn);
      stages_[i].hidden = true;
    }
  }
  // A convolution followed (through folded BatchNorms) by a ReLU applies it itself; the
  // stages in between would show post-ReLU values, so they are no longer observable.
  for (size_t i = 0; i < stages_.size(); ++i) {
    auto* conv = dynamic_cast<Conv2d*>(stages_[i].module.get());
    if (!conv) continue;
    size_t j = i + 1;
    while (j < stages_.size()) {
      auto* bn = dynamic_cast<BatchNorm2d*>(stages_[j].module.get());
      if (!bn || !bn->folded()) break;
      ++j;
    }
    auto* relu = j < stages_.size() ? dynamic_cast<ReLU*>(stages_[j].module.get()) : nullptr;
    if (!relu) continue;
    conv->set_fused_relu(true);
    relu->set_fused(true);
    for (size_t k = i; k < j; ++k) stages_[k].hidden = true;
  }
  folded_ = true;
}

std::vector<std::string> model_names() { return {"vgg16", "resnet50"}; }

namespace {
std::unique_ptr<Model> make_model(const std::string& name, int64_t num_classes, uint64_t seed,
                                  const std::string& head, bool names_only, bool random_init = true) {
  if (num_classes <= 0) throw Error("num_classes must be positive");
  if (name == "vgg16") return make_vgg16(num_classes, seed, head, names_only, random_init);
  if (name == "resnet50") return make_resnet50(num_classes, seed, head, names_only, random_init);
  throw Error("unknown model '" + name + "' (expected vgg16 or resnet50)");
}
}  // namespace

std::vector<CutPoint> cut_point_names(const std::string& name, bool all) {
  return make_model(name, 1, 0, "", true)->cut_points(all);
}

std::unique_ptr<Model> build_model(const std::string& name, int64_t num_classes, uint64_t seed,
                                   const std::string& head, bool random_init) {
  if (!head.empty()) make_model(name, 1, 0, head, true)->check_head_built();  // fail cheaply
  auto m = make_model(name, num_classes, seed, head, false, random_init);
  m->check_head_built();
  return m;
}

std::unique_ptr<Model> load_model(const std::string& name, const std::string& weights_path,
                                  int64_t num_classes, const std::string& head) {
  SafetensorsReader file(weights_path);
  const std::string classifier = name == "vgg16" ? "classifier.6.weight" : "fc.weight";
  if (num_classes <= 0) {
    if (name != "vgg16" && name != "resnet50")
      throw Error("unknown model '" + name + "' (expected vgg16 or resnet50)");
    if (!file.has(classifier) && !head.empty()) {
      num_classes = 1000;  // a head file without the classifier: the width does not matter
    } else {
      if (!file.has(classifier))
        throw Error(weights_path + ": tensor '" + classifier + "': missing");
      const SafetensorsInfo& info = file.info(classifier);
      if (info.shape.size() != 2 || info.shape[0] <= 0)
        throw Error(weights_path + ": tensor '" + classifier + "': shape " +
                    shape_str(info.shape) + ", expected [classes, features]");
      num_classes = info.shape[0];
    }
  }
  auto model = build_model(name, num_classes, 0, head, false);  // load() sets every parameter
  model->load(file);
  return model;
}

}  // namespace isplit
