// Reverse-mode autograd tape.
//
// Ops run eagerly. When a Tape is passed to an op, the op records a node: its output
// variable, its input variables and a backward function. Tape::backward(root, seed)
// then walks the nodes in reverse, giving the gradient of the scalar sum(seed * root)
// with respect to every recorded variable (Tape::grad) and, when the tape was made
// with param_grads = true, accumulating parameter gradients into Parameter::grad.
// With param_grads = false no weight-gradient work is done at all. A releasing backward
// frees what it has passed (the importance pass keeps only the cut points' gradients).
#pragma once
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "engine/tensor.h"

namespace isplit {

class Tape;

// A value flowing through the network, optionally recorded on a tape.
struct Var {
  Tensor value;
  int id = -1;  // index on the tape; -1: not recorded (a constant)
};

// A learnable tensor (or a buffer such as BatchNorm running statistics).
struct Parameter {
  Tensor value;
  Tensor grad;                // allocated on first accumulation; same shape as value
  bool requires_grad = true;  // false: frozen (no gradient computed)
  bool is_buffer = false;     // true: state, never a gradient (running_mean, ...)
  // Adds g into grad, allocating it on first use.
  void accumulate(const Tensor& g);
  // Zeroes the gradient if it exists.
  void zero_grad();
};

// Backward of one node: given dL/dout, add dL/dinput_i into *gin[i] for every non-null
// gin[i] (null when that input needs no gradient). Buffers arrive zeroed, except for a
// node recorded with writes_fresh: there *gin[i] is still unset when no gradient has
// reached that input yet, and the node claims it (see claim_fresh) and writes, or sets it
// to gout itself (shared: the tape copies it before anything adds into it).
using BackwardFn = std::function<void(const Tensor& gout, std::vector<Tensor*>& gin)>;

// In a writes_fresh backward: when g is still unset, makes it an uninitialised tensor of
// the given shape and returns true (write the gradient); false: g holds gradient already
// (add to it).
bool claim_fresh(Tensor& g, const Shape& shape);

class Tape {
 public:
  // A tape; param_grads: backward accumulates parameter gradients; all_activations:
  // every recorded op output gets a gradient even when nothing before it is trainable
  // (what the importance pass needs: dScore/dA at every layer, no weight gradients).
  explicit Tape(bool param_grads = true, bool all_activations = false)
      : param_grads_(param_grads), all_activations_(all_activations) {}
  // The tape of an importance pass: activation gradients only, no weight-gradient work.
  static Tape activations_only() { return Tape(false, true); }

  // True when backward must accumulate parameter gradients.
  bool param_grads() const { return param_grads_; }
  // True when a parameter's gradient is wanted on this tape.
  bool wants(const Parameter& p) const { return param_grads_ && p.requires_grad && !p.is_buffer; }

  // Registers an input; requires_grad says whether its gradient is wanted.
  Var input(const Tensor& value, bool requires_grad = false);
  // Records an op's output. Its output needs a gradient when an input does, when the
  // op has parameters whose gradient is wanted (trainable), or on an all_activations
  // tape; otherwise the output is returned unrecorded and fn is dropped. writes_fresh: fn
  // handles unset input gradients (see BackwardFn), saving the zero fill.
  Var record(const Tensor& out, const std::vector<const Var*>& inputs, BackwardFn fn,
             bool trainable = false, bool writes_fresh = false);
  // True when v is recorded and will receive a gradient.
  bool needs_grad(const Var& v) const;

  // Runs the backward pass from root with the given seed (same shape as root.value). With
  // release, memory goes back as the walk goes: each node's backward function, and the
  // forward values it holds, once it ran, and each recorded variable's gradient once its
  // producer ran, except the root's, the inputs' and those of variables given to
  // retain_grad(). The tape then cannot run backward again (that throws), and grad() of a
  // released variable throws.
  void backward(const Var& root, const Tensor& seed, bool release = false);
  // Keeps v's gradient through a releasing backward (see backward).
  void retain_grad(const Var& v);
  // Gradient of the last backward with respect to v (zeros when unreached).
  Tensor grad(const Var& v) const;
  // Number of recorded nodes.
  size_t size() const { return nodes_.size(); }
  // Drops every node and gradient (keeps the param_grads setting and the section timer).
  void clear();
  // Starts a named section: the nodes recorded from now on belong to it (a model names its
  // stages so). A name given before any node was recorded under the previous one renames it.
  void begin_section(const std::string& name);
  // What backward() reports for each section it walks through: the section's name and the
  // wall time, in seconds, from its last node's backward to its first one's end.
  using SectionTimer = std::function<void(const std::string&, double)>;
  // Installs (or, with nullptr, removes) the per-section backward timer used for profiling.
  void set_section_timer(SectionTimer timer) { section_timer_ = std::move(timer); }

 private:
  struct Node {
    std::vector<int> inputs;
    int output;
    BackwardFn fn;
    bool writes_fresh;
  };
  bool param_grads_;
  bool all_activations_;
  std::vector<Shape> shapes_;       // per variable
  std::vector<char> requires_;      // per variable
  std::vector<int> producer_;       // node index per variable, -1 for inputs
  std::vector<Tensor> grads_;       // per variable, after backward
  std::vector<char> shared_;        // per variable: its gradient is another's storage
  std::vector<char> retained_;      // per variable: kept by a releasing backward
  std::vector<char> released_;      // per variable: its gradient was released
  bool spent_ = false;              // a releasing backward ran: the nodes are gone
  std::vector<Node> nodes_;
  // Sections in recording order: (index of the first node, name).
  std::vector<std::pair<int, std::string>> sections_;
  SectionTimer section_timer_;
  int new_var(const Shape& shape, bool requires_grad, int producer);
};

}  // namespace isplit
