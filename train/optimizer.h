// Optimizers (SGD with momentum, AdamW) with PyTorch's update rules, parameter freezing
// by name pattern, and learning-rate schedules as pure functions of the step.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "layers/modules.h"

namespace isplit {

class SafetensorsReader;

enum class OptimizerKind { sgd, adamw };

struct OptimizerConfig {
  OptimizerKind kind = OptimizerKind::sgd;
  double momentum = 0.9;      // SGD
  bool nesterov = false;      // SGD
  double dampening = 0.0;     // SGD
  double weight_decay = 0.0;  // SGD: L2 added to the gradient; AdamW: decoupled decay
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8;  // AdamW
};

// Parses "sgd" or "adamw"; throws Error otherwise.
OptimizerKind parse_optimizer(const std::string& name);
// "sgd" or "adamw".
std::string optimizer_name(OptimizerKind kind);

// Applies updates to a fixed set of trainable parameters. State (momentum buffers, Adam
// moments) is allocated once, at construction, and updated in place; gradient buffers are
// allocated by the first backward that reaches them and then only zeroed, so steady-state
// steps allocate nothing. Parameters no backward has reached yet (grad undefined) are left
// unchanged and their state is not advanced, as PyTorch skips parameters whose .grad is None.
class Optimizer {
 public:
  // An optimizer over `params` (buffers and frozen parameters are ignored).
  Optimizer(const NamedParams& params, const OptimizerConfig& config);
  // One update with learning rate lr, from each parameter's accumulated gradient.
  void step(double lr);
  // Zeroes every gradient (buffers kept allocated).
  void zero_grad();
  // Number of steps taken so far.
  int64_t steps() const { return steps_; }
  // Names of the parameters this optimizer updates.
  std::vector<std::string> param_names() const;
  // The state as named tensors ("momentum_buffer.<param>", "exp_avg.<param>",
  // "exp_avg_sq.<param>", plus per-parameter step counts in "step.<param>").
  std::vector<std::pair<std::string, Tensor>> state() const;
  // Restores state() from a file whose tensor names carry `prefix` before state()'s
  // names; every tensor must be present with the right shape.
  void load_state(const SafetensorsReader& file, const std::string& prefix = "");
  // Sets the number of steps taken (restored from a checkpoint).
  void set_steps(int64_t steps) { steps_ = steps; }
  const OptimizerConfig& config() const { return config_; }

 private:
  struct Slot {
    std::string name;
    Parameter* param;
    Tensor buf1;  // momentum buffer (SGD) or exp_avg (AdamW)
    Tensor buf2;  // exp_avg_sq (AdamW)
    int64_t step = 0;
  };
  OptimizerConfig config_;
  std::vector<Slot> slots_;
  int64_t steps_ = 0;
};

// Marks parameters frozen (requires_grad = false) or trainable by name pattern.
// Patterns are comma-separated globs over torchvision names ('*' any run of characters,
// '?' one character); a pattern without a glob character also matches a name prefix at a
// '.' boundary ("layer1" matches "layer1.0.conv1.weight"). freeze: those matching any
// freeze pattern become frozen; train_only (when non-empty): everything not matching is
// frozen. Throws Error naming the pattern when a pattern matches no parameter. Returns
// the number of trainable parameters (elements).
int64_t apply_freeze(const NamedParams& params, const std::vector<std::string>& freeze,
                     const std::vector<std::string>& train_only);
// True when name matches the pattern (rules above).
bool name_matches(const std::string& pattern, const std::string& name);

enum class ScheduleKind { constant, cosine, step };

struct ScheduleConfig {
  ScheduleKind kind = ScheduleKind::cosine;
  double base_lr = 0.1;
  int64_t warmup_steps = 0;         // linear ramp from base_lr/warmup_steps to base_lr
  std::vector<int64_t> milestones;  // step schedule: steps at which lr *= gamma
  double gamma = 0.1;
  double min_lr = 0.0;              // cosine floor
};

// Parses "cosine", "step" or "const"; throws Error otherwise.
ScheduleKind parse_schedule(const std::string& name);
// Learning rate for 0-based step `step` of `total_steps` (a pure function: resuming
// needs no schedule state).
double schedule_lr(const ScheduleConfig& config, int64_t step, int64_t total_steps);

}  // namespace isplit
