// Optimizer updates written after PyTorch's torch.optim.SGD and AdamW (single-tensor
// code path), element-wise and threaded; patterns and schedules.
#include "train/optimizer.h"

#include <algorithm>
#include <cmath>

#include "engine/parallel.h"
#include "engine/safetensors.h"

namespace isplit {

OptimizerKind parse_optimizer(const std::string& name) {
  if (name == "sgd") return OptimizerKind::sgd;
  if (name == "adamw") return OptimizerKind::adamw;
  throw Error("--optimizer: unknown optimizer '" + name + "' (sgd or adamw)");
}

std::string optimizer_name(OptimizerKind kind) {
  return kind == OptimizerKind::sgd ? "sgd" : "adamw";
}

Optimizer::Optimizer(const NamedParams& params, const OptimizerConfig& config) : config_(config) {
  if (config.momentum < 0 || config.weight_decay < 0 || config.beta1 < 0 || config.beta1 >= 1 ||
      config.beta2 < 0 || config.beta2 >= 1 || config.eps <= 0)
    throw Error("optimizer: bad hyper-parameters (momentum, weight decay >= 0; betas in [0,1); eps > 0)");
  if (config.nesterov && (config.momentum <= 0 || config.dampening != 0))
    throw Error("optimizer: Nesterov momentum needs a positive momentum and zero dampening");
  for (const auto& [name, p] : params) {
    if (p->is_buffer || !p->requires_grad) continue;
    Slot s{name, p, Tensor(), Tensor(), 0};
    if (config.kind == OptimizerKind::adamw) {
      s.buf1 = Tensor::zeros(p->value.shape());
      s.buf2 = Tensor::zeros(p->value.shape());
    } else if (config.momentum != 0.0) {
      s.buf1 = Tensor::zeros(p->value.shape());
    }
    slots_.push_back(std::move(s));
  }
}

std::vector<std::string> Optimizer::param_names() const {
  std::vector<std::string> out;
  for (const Slot& s : slots_) out.push_back(s.name);
  return out;
}

void Optimizer::zero_grad() {
  for (Slot& s : slots_) s.param->zero_grad();
}

void Optimizer::step(double lr) {
  const OptimizerConfig& c = config_;
  for (Slot& s : slots_) {
    Parameter& p = *s.param;
    if (!p.grad.defined()) continue;
    ++s.step;
    float* w = p.value.data();
    const float* g = p.grad.data();
    const int64_t n = p.value.numel();
    if (c.kind == OptimizerKind::sgd) {
      const float wd = static_cast<float>(c.weight_decay);
      const float mom = static_cast<float>(c.momentum);
      const float damp = static_cast<float>(1.0 - c.dampening);
      const float step = static_cast<float>(-lr);
      const bool first = s.step == 1;
      float* buf = s.buf1.defined() ? s.buf1.data() : nullptr;
      const bool nesterov = c.nesterov;
      parallel_for(n, [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) {
          float d = wd != 0.0f ? g[i] + wd * w[i] : g[i];
          if (buf) {
            // PyTorch starts the buffer as a copy of the first (decayed) gradient.
            buf[i] = first ? d : mom * buf[i] + damp * d;
            d = nesterov ? d + mom * buf[i] : buf[i];
          }
          w[i] += step * d;
        }
      });
    } else {
      const float decay = static_cast<float>(1.0 - lr * c.weight_decay);
      const float b1 = static_cast<float>(c.beta1), b2 = static_cast<float>(c.beta2);
      const float ob1 = static_cast<float>(1.0 - c.beta1), ob2 = static_cast<float>(1.0 - c.beta2);
      const double bc1 = 1.0 - std::pow(c.beta1, double(s.step));
      const double bc2 = 1.0 - std::pow(c.beta2, double(s.step));
      const float step_size = static_cast<float>(lr / bc1);
      const float inv_bc2_sqrt = static_cast<float>(1.0 / std::sqrt(bc2));
      const float eps = static_cast<float>(c.eps);
      float* m = s.buf1.data();
      float* v = s.buf2.data();
      parallel_for(n, [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) {
          w[i] *= decay;
          m[i] = b1 * m[i] + ob1 * g[i];
          v[i] = b2 * v[i] + ob2 * g[i] * g[i];
          const float denom = std::sqrt(v[i]) * inv_bc2_sqrt + eps;
          w[i] -= step_size * (m[i] / denom);
        }
      });
    }
  }
  ++steps_;
}

std::vector<std::pair<std::string, Tensor>> Optimizer::state() const {
  std::vector<std::pair<std::string, Tensor>> out;
  for (const Slot& s : slots_) {
    if (config_.kind == OptimizerKind::adamw) {
      out.emplace_back("exp_avg." + s.name, s.buf1);
      out.emplace_back("exp_avg_sq." + s.name, s.buf2);
    } else if (s.buf1.defined()) {
      out.emplace_back("momentum_buffer." + s.name, s.buf1);
    }
    // Step counts are exact in float32 up to 2^24 steps, far beyond any run here.
    out.emplace_back("step." + s.name, Tensor::full({1}, static_cast<float>(s.step)));
  }
  return out;
}

void Optimizer::load_state(const SafetensorsReader& file, const std::string& prefix) {
  auto fetch = [&](const std::string& short_name, Tensor& dst) {
    const std::string name = prefix + short_name;
    if (!file.has(name)) throw Error(file.path() + ": optimizer state '" + name + "' missing");
    Tensor t = file.get(name);
    if (t.shape() != dst.shape())
      throw Error(file.path() + ": optimizer state '" + name + "': shape " + shape_str(t.shape()) +
                  ", expected " + shape_str(dst.shape()));
    dst.copy_from(t);
  };
  for (Slot& s : slots_) {
    if (config_.kind == OptimizerKind::adamw) {
      fetch("exp_avg." + s.name, s.buf1);
      fetch("exp_avg_sq." + s.name, s.buf2);
    } else if (s.buf1.defined()) {
      fetch("momentum_buffer." + s.name, s.buf1);
    }
    Tensor step = Tensor::zeros({1});
    fetch("step." + s.name, step);
    if (!(step[0] >= 0) || step[0] > 1e9f || step[0] != std::floor(step[0]))
      throw Error(file.path() + ": optimizer state 'step." + s.name + "': bad value");
    s.step = static_cast<int64_t>(step[0]);
  }
}

// ------------------------------------------------------------------ patterns
namespace {

bool glob_match(const char* p, const char* s) {
  // Iterative '*' matching with one backtrack point (linear for a single star run).
  const char* star = nullptr;
  const char* resume = nullptr;
  while (*s) {
    if (*p == '?' || (*p && *p != '*' && *p == *s)) {
      ++p;
      ++s;
    } else if (*p == '*') {
      star = p++;
      resume = s;
    } else if (star) {
      p = star + 1;
      s = ++resume;
    } else {
      return false;
    }
  }
  while (*p == '*') ++p;
  return *p == '\0';
}

}  // namespace

bool name_matches(const std::string& pattern, const std::string& name) {
  if (pattern.find_first_of("*?") != std::string::npos)
    return glob_match(pattern.c_str(), name.c_str());
  if (name == pattern) return true;
  return name.size() > pattern.size() && name.compare(0, pattern.size(), pattern) == 0 &&
         name[pattern.size()] == '.';
}

int64_t apply_freeze(const NamedParams& params, const std::vector<std::string>& freeze,
                     const std::vector<std::string>& train_only) {
  auto check_used = [&](const std::vector<std::string>& patterns, const char* option) {
    for (const std::string& pat : patterns) {
      if (pat.empty()) throw Error(std::string(option) + ": empty pattern");
      bool any = false;
      for (const auto& kv : params)
        if (!kv.second->is_buffer && name_matches(pat, kv.first)) any = true;
      if (!any) throw Error(std::string(option) + ": pattern '" + pat + "' matches no parameter");
    }
  };
  check_used(freeze, "--freeze");
  check_used(train_only, "--train-only");
  int64_t trainable = 0;
  for (const auto& [name, p] : params) {
    if (p->is_buffer) continue;
    bool train = true;
    if (!train_only.empty())
      train = std::any_of(train_only.begin(), train_only.end(),
                          [&](const std::string& pat) { return name_matches(pat, name); });
    if (std::any_of(freeze.begin(), freeze.end(),
                    [&](const std::string& pat) { return name_matches(pat, name); }))
      train = false;
    p->requires_grad = train;
    if (train) trainable += p->value.numel();
  }
  return trainable;
}

// ------------------------------------------------------------------ schedules
ScheduleKind parse_schedule(const std::string& name) {
  if (name == "cosine") return ScheduleKind::cosine;
  if (name == "step") return ScheduleKind::step;
  if (name == "const") return ScheduleKind::constant;
  throw Error("--schedule: unknown schedule '" + name + "' (cosine, step or const)");
}

double schedule_lr(const ScheduleConfig& c, int64_t step, int64_t total_steps) {
  if (c.warmup_steps > 0 && step < c.warmup_steps)
    return c.base_lr * double(step + 1) / double(c.warmup_steps);
  switch (c.kind) {
    case ScheduleKind::constant:
      return c.base_lr;
    case ScheduleKind::step: {
      double lr = c.base_lr;
      for (int64_t m : c.milestones)
        if (step >= m) lr *= c.gamma;
      return lr;
    }
    case ScheduleKind::cosine: {
      const int64_t span = total_steps - c.warmup_steps;
      if (span <= 0) return c.base_lr;
      const double t = std::min(1.0, double(step - c.warmup_steps) / double(span));
      return c.min_lr + (c.base_lr - c.min_lr) * 0.5 * (1.0 + std::cos(M_PI * t));
    }
  }
  return c.base_lr;
}

}  // namespace isplit
