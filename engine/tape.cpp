#include "engine/tape.h"

#include <chrono>
#include <cstring>

#include "engine/parallel.h"

namespace isplit {

void Parameter::accumulate(const Tensor& g) {
  if (!grad.defined()) {
    grad = Tensor::zeros(value.shape());
  }
  check_shape(g, value.shape(), "parameter gradient");
  float* d = grad.data();
  const float* s = g.data();
  for (int64_t i = 0; i < grad.numel(); ++i) d[i] += s[i];
}

void Parameter::zero_grad() {
  if (grad.defined()) grad.zero();
}

int Tape::new_var(const Shape& shape, bool requires_grad, int producer) {
  shapes_.push_back(shape);
  requires_.push_back(requires_grad ? 1 : 0);
  retained_.push_back(0);
  producer_.push_back(producer);
  return static_cast<int>(shapes_.size()) - 1;
}

Var Tape::input(const Tensor& value, bool requires_grad) {
  return Var{value, new_var(value.shape(), requires_grad, -1)};
}

bool Tape::needs_grad(const Var& v) const {
  return v.id >= 0 && v.id < static_cast<int>(requires_.size()) && requires_[v.id];
}

bool claim_fresh(Tensor& g, const Shape& shape) {
  if (g.defined()) return false;
  g = Tensor::empty(shape);
  return true;
}

Var Tape::record(const Tensor& out, const std::vector<const Var*>& inputs, BackwardFn fn,
                 bool trainable, bool writes_fresh) {
  bool req = all_activations_ || (trainable && param_grads_);
  for (const Var* in : inputs) req = req || needs_grad(*in);
  if (!req) return Var{out, -1};
  Node node;
  for (const Var* in : inputs) node.inputs.push_back(in->id);
  node.fn = std::move(fn);
  node.writes_fresh = writes_fresh;
  node.output = new_var(out.shape(), true, static_cast<int>(nodes_.size()));
  nodes_.push_back(std::move(node));
  return Var{out, nodes_.back().output};
}

void Tape::retain_grad(const Var& v) {
  if (v.id < 0 || v.id >= static_cast<int>(retained_.size()))
    throw Error("retain_grad: the variable was not recorded on this tape");
  retained_[static_cast<size_t>(v.id)] = 1;
}

void Tape::backward(const Var& root, const Tensor& seed, bool release) {
  if (spent_)
    throw Error("backward: an earlier backward released this tape's nodes; record the forward again");
  if (!needs_grad(root)) throw Error("backward: the root was not recorded on this tape");
  check_shape(seed, shapes_[root.id], "backward seed");
  grads_.assign(shapes_.size(), Tensor());
  shared_.assign(shapes_.size(), 0);
  released_.assign(shapes_.size(), 0);
  spent_ = release;
  grads_[root.id] = seed.clone();
  const int last = producer_[root.id];
  std::vector<Tensor*> gin;
  // Per-section timing: the section of the node being run, from the last one down.
  using Clock = std::chrono::steady_clock;
  int section = -1;
  Clock::time_point section_start;
  auto enter_section = [&](int n) {
    if (!section_timer_) return;
    int s = section < 0 ? static_cast<int>(sections_.size()) - 1 : section;
    while (s >= 0 && sections_[static_cast<size_t>(s)].first > n) --s;
    if (s == section) return;
    const Clock::time_point now = Clock::now();
    if (section >= 0)
      section_timer_(sections_[static_cast<size_t>(section)].second,
                     std::chrono::duration<double>(now - section_start).count());
    section = s;
    section_start = now;
  };
  for (int n = last; n >= 0; --n) {
    enter_section(n);
    Node& node = nodes_[n];
    const Tensor& gout = grads_[node.output];
    if (!gout.defined()) {  // not on a path from the root
      if (release) node.fn = nullptr;
      continue;
    }
    gin.assign(node.inputs.size(), nullptr);
    for (size_t i = 0; i < node.inputs.size(); ++i) {
      int id = node.inputs[i];
      if (id < 0 || !requires_[id]) continue;
      if (!grads_[id].defined() && !node.writes_fresh) grads_[id] = Tensor::zeros(shapes_[id]);
      if (shared_[id]) {
        // Copy on write: this gradient is another variable's; add into a copy of it.
        Tensor own = Tensor::empty(shapes_[id]);
        const float* s = grads_[id].data();
        float* d = own.data();
        parallel_for(own.numel(), kEltwiseGrain, [&](int64_t b, int64_t e) {
          std::memcpy(d + b, s + b, static_cast<size_t>(e - b) * sizeof(float));
        });
        grads_[id] = std::move(own);
        shared_[id] = 0;
      }
      gin[i] = &grads_[id];
    }
    node.fn(gout, gin);
    if (node.writes_fresh)
      for (size_t i = 0; i < node.inputs.size(); ++i) {
        if (!gin[i]) continue;
        const Shape& want = shapes_[node.inputs[i]];
        if (!gin[i]->defined())
          *gin[i] = Tensor::zeros(want);  // a node that wrote nothing left zeros
        else if (gin[i]->shape() != want)
          throw Error("backward: a node claimed a gradient of shape " +
                      shape_str(gin[i]->shape()) + " for an input of shape " + shape_str(want));
        if (gin[i]->shares_storage(gout)) shared_[node.inputs[i]] = 1;
      }
    if (release) {
      // Nothing reads this node or its output's gradient again.
      node.fn = nullptr;
      const int out = node.output;
      if (out != root.id && !retained_[static_cast<size_t>(out)]) {
        grads_[static_cast<size_t>(out)] = Tensor();
        released_[static_cast<size_t>(out)] = 1;
      }
    }
  }
  if (section >= 0)
    section_timer_(sections_[static_cast<size_t>(section)].second,
                   std::chrono::duration<double>(Clock::now() - section_start).count());
}

void Tape::begin_section(const std::string& name) {
  const int next = static_cast<int>(nodes_.size());
  if (!sections_.empty() && sections_.back().first == next)
    sections_.back().second = name;
  else
    sections_.emplace_back(next, name);
}

Tensor Tape::grad(const Var& v) const {
  if (v.id >= 0 && v.id < static_cast<int>(released_.size()) && released_[static_cast<size_t>(v.id)])
    throw Error("grad: this variable's gradient was released by backward (retain_grad keeps it)");
  if (v.id < 0 || v.id >= static_cast<int>(grads_.size()) || !grads_[v.id].defined())
    return Tensor::zeros(v.value.shape());
  return grads_[v.id];
}

void Tape::clear() {
  shapes_.clear();
  requires_.clear();
  producer_.clear();
  grads_.clear();
  nodes_.clear();
  sections_.clear();
  retained_.clear();
  released_.clear();
  shared_.clear();
  spent_ = false;
}

}  // namespace isplit
