// The training run: set-up, epochs, validation, log and checkpoints.
//
// Reproducibility: every random draw of a run is a pure function of the run's seed and
// where the run is (epoch, step): the epoch's sample order is shuffled(indices,
// mix_seed(seed, epoch)), augmentation draws from (seed, epoch, sample index), dropout
// masks from (seed, global step), and the engine's kernels give the same bits for any
// thread count. A checkpoint therefore only needs the weights, the BatchNorm statistics,
// the optimizer state and the position (epoch, step) to continue bit for bit.
#include "train/trainer.h"

#include <signal.h>
#include <sys/stat.h>

#include <cerrno>
#include <filesystem>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>

#include "data/loader.h"
#include "engine/safetensors.h"

namespace isplit {

namespace {

using Json = nlohmann::ordered_json;

constexpr const char* kStateFormat = "isplit-train-state-1";

// Removes "<path>.tmp.<pid>" files that killed runs left behind (their pid is gone).
void remove_stale_temps(const std::string& path) {
  namespace fs = std::filesystem;
  const fs::path p(path);
  const fs::path dir = p.has_parent_path() ? p.parent_path() : fs::path(".");
  const std::string prefix = p.filename().string() + ".tmp.";
  std::error_code ec;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (name.size() <= prefix.size() || name.compare(0, prefix.size(), prefix) != 0) continue;
    const std::string pid = name.substr(prefix.size());
    if (pid.size() > 9 || pid.find_first_not_of("0123456789") != std::string::npos) continue;
    if (::kill(static_cast<pid_t>(std::stol(pid)), 0) != 0 && errno == ESRCH) {
      std::error_code rm;
      fs::remove(it->path(), rm);
    }
  }
}

bool file_exists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0;
}

std::string strip_ext(const std::string& path) {
  const std::string ext = ".safetensors";
  if (path.size() > ext.size() && path.compare(path.size() - ext.size(), ext.size(), ext) == 0)
    return path.substr(0, path.size() - ext.size());
  return path;
}

// Doubles as exact hexadecimal text (round-trips bit for bit).
std::string hex_double(double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%a", v);
  return buf;
}

double parse_double(const std::string& text, const std::string& what) {
  char* end = nullptr;
  const double v = std::strtod(text.c_str(), &end);
  if (text.empty() || *end != '\0') throw Error(what + ": '" + text + "' is not a number");
  return v;
}

int64_t parse_int(const std::string& text, const std::string& what) {
  char* end = nullptr;
  const long long v = std::strtoll(text.c_str(), &end, 10);
  if (text.empty() || *end != '\0' || v < 0) throw Error(what + ": '" + text + "' is not a count");
  return v;
}

// Everything that determines the run's numbers; a resumed run must match it.
Json fingerprint(const TrainConfig& c, int64_t classes, size_t train_size, size_t val_size) {
  Json j;
  j["model"] = c.model;
  j["num_classes"] = classes;
  j["data"] = c.data;
  j["train_samples"] = train_size;
  j["val"] = c.val;
  j["val_samples"] = val_size;
  j["init_weights"] = c.init_weights;
  j["input_size"] = c.input_size;
  j["epochs"] = c.epochs;
  j["batch_size"] = c.batch_size;
  j["optimizer"] = optimizer_name(c.optimizer.kind);
  j["lr"] = hex_double(c.schedule.base_lr);
  j["momentum"] = hex_double(c.optimizer.momentum);
  j["nesterov"] = c.optimizer.nesterov;
  j["weight_decay"] = hex_double(c.optimizer.weight_decay);
  j["betas"] = {hex_double(c.optimizer.beta1), hex_double(c.optimizer.beta2)};
  j["eps"] = hex_double(c.optimizer.eps);
  j["schedule"] = c.schedule.kind == ScheduleKind::cosine ? "cosine"
                  : c.schedule.kind == ScheduleKind::step ? "step"
                                                           : "const";
  j["warmup_epochs"] = hex_double(c.warmup_epochs);
  Json steps = Json::array();
  for (double e : c.step_epochs) steps.push_back(hex_double(e));
  j["step_epochs"] = steps;
  j["gamma"] = hex_double(c.schedule.gamma);
  j["label_smoothing"] = hex_double(c.label_smoothing);
  j["freeze"] = c.freeze;
  j["train_only"] = c.train_only;
  j["seed"] = std::to_string(c.seed);
  j["limit"] = c.limit;
  j["pad"] = c.augment.pad;
  j["hflip"] = c.augment.hflip;
  j["mean"] = {c.norm.mean[0], c.norm.mean[1], c.norm.mean[2]};
  j["std"] = {c.norm.std[0], c.norm.std[1], c.norm.std[2]};
  return j;
}

// Running sums of an epoch's training loss and accuracy (kept in checkpoints so that a
// resumed epoch logs the same figures).
struct EpochSums {
  double loss = 0;
  int64_t correct = 0, count = 0;
};

struct Position {
  int epoch = 0;       // completed epochs
  int64_t step = 0;    // completed steps of the current epoch
  EpochSums sums;
};

void save_checkpoint(const std::string& out, Model& model, const Optimizer& opt, const Json& fp,
                     const Position& pos) {
  // The state file is self-contained (weights included), so one atomic rename makes a
  // consistent checkpoint; the weights file is then refreshed for users.
  std::vector<std::pair<std::string, Tensor>> tensors;
  for (auto& [name, p] : model.named_parameters()) tensors.emplace_back("model." + name, p->value);
  for (auto& kv : opt.state()) tensors.emplace_back("optim." + kv.first, kv.second);
  std::map<std::string, std::string> meta{
      {"format", kStateFormat},
      {"config", fp.dump()},
      {"epoch", std::to_string(pos.epoch)},
      {"step", std::to_string(pos.step)},
      {"optimizer_steps", std::to_string(opt.steps())},
      {"loss_sum", hex_double(pos.sums.loss)},
      {"correct", std::to_string(pos.sums.correct)},
      {"count", std::to_string(pos.sums.count)}};
  save_safetensors(train_state_path(out), tensors, meta);
  model.save(out);
}

// Reads a checkpoint into model and optimizer; returns the position.
Position load_checkpoint(const std::string& out, Model& model, Optimizer& opt, const Json& fp) {
  const std::string path = train_state_path(out);
  SafetensorsReader file(path);
  const auto& meta = file.metadata();
  auto field = [&](const std::string& key) -> const std::string& {
    auto it = meta.find(key);
    if (it == meta.end()) throw Error(path + ": not a training state file (no '" + key + "')");
    return it->second;
  };
  if (field("format") != kStateFormat)
    throw Error(path + ": unsupported training state format '" + field("format") + "'");
  Json saved;
  try {
    saved = Json::parse(field("config"));
  } catch (const std::exception&) {
    throw Error(path + ": corrupt 'config' metadata");
  }
  for (auto it = fp.begin(); it != fp.end(); ++it) {
    if (!saved.contains(it.key()) || saved[it.key()] != it.value())
      throw Error(path + ": cannot resume: setting '" + it.key() + "' was " +
                  (saved.contains(it.key()) ? saved[it.key()].dump() : std::string("absent")) +
                  ", now " + it.value().dump());
  }
  for (auto& [name, p] : model.named_parameters()) {
    const std::string key = "model." + name;
    if (!file.has(key)) throw Error(path + ": tensor '" + key + "' missing");
    Tensor t = file.get(key);
    if (t.shape() != p->value.shape())
      throw Error(path + ": tensor '" + key + "': shape " + shape_str(t.shape()) + ", expected " +
                  shape_str(p->value.shape()));
    p->value.copy_from(t);
  }
  Position pos;
  pos.epoch = static_cast<int>(parse_int(field("epoch"), path + ": epoch"));
  pos.step = parse_int(field("step"), path + ": step");
  pos.sums.loss = parse_double(field("loss_sum"), path + ": loss_sum");
  pos.sums.correct = parse_int(field("correct"), path + ": correct");
  pos.sums.count = parse_int(field("count"), path + ": count");
  opt.load_state(file, "optim.");
  opt.set_steps(parse_int(field("optimizer_steps"), path + ": optimizer_steps"));
  return pos;
}

std::string log_header(const std::vector<std::string>& class_names, bool has_val) {
  std::string h = "epoch,lr,train_loss,train_acc";
  if (has_val) {
    h += ",val_loss,val_top1,val_top5";
    for (size_t c = 0; c < class_names.size(); ++c) h += ",val_acc_" + std::to_string(c);
  }
  return h + ",seconds,images_per_s\n";
}

std::string log_row(const EpochLog& e) {
  std::ostringstream os;
  os.precision(6);
  os << e.epoch << "," << e.lr << "," << e.train_loss << "," << e.train_acc;
  if (e.has_val) {
    os << "," << e.val.loss << "," << e.val.top1 << "," << e.val.top5;
    for (size_t c = 0; c < e.val.class_names.size(); ++c) {
      os << ",";
      const double a = e.val.class_accuracy(static_cast<int>(c));
      if (!std::isnan(a)) os << a;
    }
  }
  os.precision(4);
  os << "," << e.seconds << "," << e.images_per_s << "\n";
  return os.str();
}

// The log's rows for epochs 1..keep_epochs (a resumed run drops rows of redone epochs).
std::string read_log_rows(const std::string& path, int keep_epochs) {
  std::ifstream f(path);
  if (!f) return "";
  std::string line, rows;
  std::getline(f, line);  // header
  while (std::getline(f, line)) {
    const long epoch = std::strtol(line.c_str(), nullptr, 10);
    if (epoch >= 1 && epoch <= keep_epochs) rows += line + "\n";
  }
  return rows;
}

}  // namespace

std::string train_state_path(const std::string& weights_path) {
  return strip_ext(weights_path) + ".state.safetensors";
}

std::string train_log_path(const std::string& weights_path) {
  return strip_ext(weights_path) + ".log.csv";
}

std::vector<std::string> load_for_finetune(Model& model, const std::string& path) {
  SafetensorsReader file(path);
  NamedParams params = model.named_parameters();
  // The classifier is the last learnable layer: its weight and bias.
  std::vector<std::string> head;
  for (auto it = params.rbegin(); it != params.rend() && head.size() < 2; ++it)
    if (!it->second->is_buffer) head.push_back(it->first);
  std::vector<std::string> reinit;
  for (auto& [name, p] : params) {
    if (!file.has(name)) throw Error(path + ": tensor '" + name + "': missing");
    const SafetensorsInfo& info = file.info(name);
    if (info.shape != p->value.shape()) {
      const bool is_head = std::find(head.begin(), head.end(), name) != head.end();
      if (is_head && info.shape.size() == p->value.shape().size() && !info.shape.empty() &&
          std::equal(info.shape.begin() + 1, info.shape.end(), p->value.shape().begin() + 1)) {
        reinit.push_back(name);
        continue;
      }
      throw Error(path + ": tensor '" + name + "': shape " + shape_str(info.shape) +
                  ", expected " + shape_str(p->value.shape()) + " for " + model.arch());
    }
    p->value.copy_from(file.get(name));
  }
  for (const std::string& name : file.names()) {
    const std::string suffix = "num_batches_tracked";
    if (name.size() >= suffix.size() && name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0)
      continue;
    bool known = false;
    for (auto& kv : params) known = known || kv.first == name;
    if (!known) throw Error(path + ": tensor '" + name + "': not a parameter of " + model.arch());
  }
  return reinit;
}

bool run_training(const TrainConfig& c, const TrainHooks& hooks) {
  auto say = [&](const std::string& m) {
    if (hooks.message) hooks.message(m);
  };
  if (c.epochs < 1) throw Error("--epochs: must be at least 1");
  if (c.batch_size < 2) throw Error("--batch-size: must be at least 2 (BatchNorm needs batch statistics)");
  if (!(c.schedule.base_lr > 0)) throw Error("--lr: must be positive");
  if (c.out.empty()) throw Error("--out: required");
  if (c.label_smoothing < 0 || c.label_smoothing >= 1) throw Error("--label-smoothing: must be in [0, 1)");

  auto train_data = open_dataset_default_split(c.data, "train");
  std::unique_ptr<Dataset> val_data;
  if (!c.val.empty()) val_data = open_dataset_default_split(c.val, "val");

  int64_t classes = c.num_classes;
  if (classes <= 0 && !c.init_weights.empty()) {
    SafetensorsReader file(c.init_weights);
    auto probe = build_model(c.model, 2, 0, "", false);  // names only: no weights drawn
    NamedParams ps = probe->named_parameters();
    for (auto it = ps.rbegin(); it != ps.rend(); ++it)
      if (!it->second->is_buffer) {
        classes = file.info(it->first).shape.at(0);  // the classifier bias
        break;
      }
  }
  if (classes <= 0) classes = static_cast<int64_t>(train_data->class_names().size());
  check_labels_fit(*train_data, classes, "--data " + c.data);
  if (val_data) check_labels_fit(*val_data, classes, "--val " + c.val);

  auto model = build_model(c.model, classes, c.seed);
  if (!c.init_weights.empty()) {
    const auto reinit = load_for_finetune(*model, c.init_weights);
    if (!reinit.empty()) {
      std::string names;
      for (const auto& n : reinit) names += (names.empty() ? "" : ", ") + n;
      say("fine-tuning: " + c.init_weights + " has another number of classes; " + names +
          " re-initialised for " + std::to_string(classes) + " classes");
    }
  }
  NamedParams params = model->named_parameters();
  const int64_t trainable = apply_freeze(params, c.freeze, c.train_only);
  if (trainable == 0) throw Error("--freeze/--train-only: no parameter left to train");
  if (!c.freeze.empty() || !c.train_only.empty())
    say("training " + std::to_string(trainable) + " of " +
        std::to_string(model->parameter_count()) + " parameters");

  const std::vector<size_t> indices = select_indices(*train_data, {}, c.limit);
  const int64_t B = c.batch_size;
  const int64_t steps_per_epoch = static_cast<int64_t>(indices.size()) / B;
  if (steps_per_epoch == 0)
    throw Error("--data " + c.data + ": " + std::to_string(indices.size()) +
                " samples, fewer than one batch of " + std::to_string(B));
  if (static_cast<int64_t>(indices.size()) % B)
    say(std::to_string(indices.size() % B) + " samples left out of each epoch (last partial batch dropped)");
  const int64_t total_steps = steps_per_epoch * c.epochs;
  std::vector<size_t> val_indices;
  if (val_data) val_indices = select_indices(*val_data, {}, c.val_limit);

  ScheduleConfig sched = c.schedule;
  sched.warmup_steps = static_cast<int64_t>(std::llround(c.warmup_epochs * steps_per_epoch));
  sched.milestones.clear();
  for (double e : c.step_epochs) sched.milestones.push_back(std::llround(e * steps_per_epoch));

  Optimizer opt(params, c.optimizer);
  const Json fp = fingerprint(c, classes, indices.size(), val_indices.size());

  Position pos;
  const std::string state_path = train_state_path(c.out);
  const std::string log_path = train_log_path(c.out);
  for (const std::string& p : {c.out, state_path, log_path}) remove_stale_temps(p);
  std::string log_rows;
  if (c.resume) {
    if (file_exists(state_path)) {
      pos = load_checkpoint(c.out, *model, opt, fp);
      log_rows = read_log_rows(log_path, pos.epoch);
      say("resuming from " + state_path + " at epoch " + std::to_string(pos.epoch + 1) + ", step " +
          std::to_string(pos.step) + " of " + std::to_string(steps_per_epoch));
      if (pos.epoch >= c.epochs) {
        say("training already complete");
        return true;
      }
    } else {
      say("--resume: no checkpoint at " + state_path + ", starting from the beginning");
    }
  }

  const std::vector<std::string> class_names = train_data->class_names();
  for (int epoch = pos.epoch; epoch < c.epochs; ++epoch) {
    const auto t0 = std::chrono::steady_clock::now();
    std::vector<size_t> order = shuffled(indices, mix_seed(c.seed, static_cast<uint64_t>(epoch)));
    order.resize(static_cast<size_t>(steps_per_epoch * B));
    order.erase(order.begin(), order.begin() + static_cast<std::ptrdiff_t>(pos.step * B));
    LoaderOptions lo;
    lo.norm = c.norm;
    lo.decode_threads = c.decode_threads;
    lo.augment = c.augment;
    lo.augment.seed = mix_seed(mix_seed(c.seed, 0xa5a5a5a5u), static_cast<uint64_t>(epoch));
    BatchLoader loader(*train_data, order, c.batch_size, c.input_size, lo);
    model->set_training(true);
    int64_t images_this_run = 0;
    double lr = 0;
    Batch batch;
    for (int64_t step = pos.step; step < steps_per_epoch; ++step) {
      if (!loader.next(batch)) throw Error("internal: training loader ran dry");
      const int64_t global = static_cast<int64_t>(epoch) * steps_per_epoch + step;
      lr = schedule_lr(sched, global, total_steps);
      if (batch.labels.size() >= 2) {
        model->seed_dropout(mix_seed(mix_seed(c.seed, 0xd509u), static_cast<uint64_t>(global)));
        const StepResult r = train_step(*model, opt, batch.images, batch.labels, lr, c.label_smoothing);
        pos.sums.loss += r.loss * double(r.count);
        pos.sums.correct += r.correct;
        pos.sums.count += r.count;
        images_this_run += r.count;
      }
      loader.recycle(std::move(batch));
      pos.step = step + 1;
      if (hooks.progress) {
        TrainProgress p;
        p.epoch = epoch + 1;
        p.epochs = c.epochs;
        p.step = step + 1;
        p.steps = steps_per_epoch;
        const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        p.images_per_s = secs > 0 ? images_this_run / secs : 0;
        const double left = double(total_steps - global - 1) * B;
        p.eta_s = p.images_per_s > 0 ? left / p.images_per_s : 0;
        p.loss = pos.sums.count ? pos.sums.loss / pos.sums.count : 0;
        p.accuracy = pos.sums.count ? double(pos.sums.correct) / pos.sums.count : 0;
        p.lr = lr;
        hooks.progress(p);
      }
      if (c.checkpoint_steps > 0 && pos.step % c.checkpoint_steps == 0 && pos.step < steps_per_epoch)
        save_checkpoint(c.out, *model, opt, fp, pos);
    }
    if (loader.skipped() > 0) {
      say(std::to_string(loader.skipped()) + " training images could not be read this epoch; first: " +
          loader.errors().front());
    }
    const double train_secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

    EpochLog log;
    log.epoch = epoch + 1;
    log.lr = lr;
    log.train_loss = pos.sums.count ? pos.sums.loss / pos.sums.count : 0;
    log.train_acc = pos.sums.count ? double(pos.sums.correct) / pos.sums.count : 0;
    log.seconds = train_secs;
    log.images_per_s = train_secs > 0 ? images_this_run / train_secs : 0;
    if (val_data) {
      EvalOptions eo;
      eo.input_size = c.input_size;
      eo.batch_size = std::max(c.batch_size, 32);
      eo.norm = c.norm;
      eo.decode_threads = c.decode_threads;
      eo.progress = hooks.eval_progress;
      log.val = evaluate(*model, *val_data, val_indices, eo);
      log.has_val = true;
    }
    log_rows += log_row(log);
    write_file_atomic(log_path, log_header(val_data ? val_data->class_names() : class_names,
                                           static_cast<bool>(val_data)) + log_rows);
    pos.epoch = epoch + 1;
    pos.step = 0;
    pos.sums = EpochSums{};
    save_checkpoint(c.out, *model, opt, fp, pos);
    if (hooks.epoch_done) hooks.epoch_done(log);
  }
  return true;
}

}  // namespace isplit
