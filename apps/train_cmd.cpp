#include "apps/train_cmd.h"

#include <unistd.h>

#include <cstdio>
#include <iomanip>
#include <iostream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "apps/analyze.h"
#include "apps/backend.h"
#include "apps/progress.h"
#include "engine/parallel.h"
#include "engine/safetensors.h"

namespace isplit {

namespace {

std::vector<std::string> split_list(const std::string& text) {
  std::vector<std::string> out;
  std::stringstream ss(text);
  std::string item;
  while (std::getline(ss, item, ','))
    if (!item.empty()) out.push_back(item);
  return out;
}

std::string clock_text(double s) {
  const long t = static_cast<long>(s);
  std::ostringstream os;
  if (t >= 3600) os << t / 3600 << "h";
  os << std::setfill('0') << std::setw(t >= 3600 ? 2 : 1) << (t / 60) % 60 << "m" << std::setw(2) << t % 60 << "s";
  return os.str();
}

}  // namespace

CLI::App* add_train_command(CLI::App& app, TrainArgs& a) {
  TrainConfig& c = a.config;
  auto* cmd = app.add_subcommand("train", "train or fine-tune VGG16 / ResNet-50 on a labelled data set");
  cmd->add_option("--model", c.model, "vgg16 or resnet50")->required()->check(CLI::IsMember({"vgg16", "resnet50"}));
  cmd->add_option("--data", c.data, "training set: image folder, Tiny-ImageNet root, IDX file or a directory of IDX files (its train-* file)")->required();
  cmd->add_option("--val", c.val, "validation set, evaluated after every epoch (a directory of IDX files: its t10k-* file)");
  cmd->add_option("--weights", c.init_weights, "initial weights (.safetensors); another class count re-initialises only the classifier");
  cmd->add_option("--num-classes", c.num_classes, "classifier width (default: from --weights, else the data's classes)")->check(CLI::PositiveNumber);
  cmd->add_option("--input-size", c.input_size, "input height and width (default 32)")->check(CLI::Range(32, 4096));
  cmd->add_option("--epochs", c.epochs, "passes over the training set")->required()->check(CLI::Range(1, 100000));
  cmd->add_option("--batch-size", c.batch_size, "images per step (>= 2)")->required()->check(CLI::Range(2, 65536));
  cmd->add_option("--optimizer", a.optimizer, "sgd (default) or adamw")->check(CLI::IsMember({"sgd", "adamw"}));
  cmd->add_option("--lr", c.schedule.base_lr, "peak learning rate")->required()->check(CLI::PositiveNumber);
  cmd->add_option("--momentum", c.optimizer.momentum, "SGD momentum (default 0.9)")->check(CLI::Range(0.0, 1.0));
  cmd->add_flag("--nesterov", c.optimizer.nesterov, "SGD with Nesterov momentum");
  cmd->add_option("--weight-decay", c.optimizer.weight_decay, "SGD: L2 on the gradient; AdamW: decoupled decay (default 0)")->check(CLI::NonNegativeNumber);
  cmd->add_option("--schedule", a.schedule, "cosine (default, per step to 0), step or const")->check(CLI::IsMember({"cosine", "step", "const"}));
  cmd->add_option("--step-epochs", a.step_epochs, "step schedule: epochs at which lr *= --gamma (default: 1/2 and 3/4 of the run)");
  cmd->add_option("--gamma", c.schedule.gamma, "step schedule factor (default 0.1)")->check(CLI::PositiveNumber);
  cmd->add_option("--warmup", c.warmup_epochs, "linear warm-up, in epochs (fractions allowed)")->check(CLI::NonNegativeNumber);
  cmd->add_option("--label-smoothing", c.label_smoothing, "cross-entropy label smoothing in [0, 1)")->check(CLI::Range(0.0, 0.999));
  cmd->add_option("--freeze", a.freeze, "comma-separated parameter name patterns to keep fixed (globs; 'layer1' = its prefix)");
  cmd->add_option("--train-only", a.train_only, "comma-separated patterns: train only the matching parameters");
  cmd->add_option("--seed", c.seed, "seed of initialisation, shuffling, augmentation and dropout (default 0)");
  cmd->add_option("--limit", c.limit, "first N training samples only")->check(CLI::NonNegativeNumber);
  cmd->add_option("--val-limit", c.val_limit, "first N validation samples only")->check(CLI::NonNegativeNumber);
  cmd->add_option("--pad", c.augment.pad, "augmentation: random crop with this padding (default 0)")->check(CLI::Range(0, 1024));
  cmd->add_flag("--hflip", c.augment.hflip, "augmentation: random horizontal flips");
  cmd->add_option("--mean", a.mean, "normalisation mean a,b,c (default ImageNet)");
  cmd->add_option("--std", a.stdev, "normalisation std a,b,c (default ImageNet)");
  cmd->add_option("--out", c.out, "weights written after every epoch (.safetensors); its .state.safetensors and .log.csv siblings")->required();
  cmd->add_flag("--resume", c.resume, "continue from the checkpoint beside --out (bit-identical to an uninterrupted run)");
  cmd->add_option("--checkpoint-steps", c.checkpoint_steps, "also checkpoint every N steps within an epoch")->check(CLI::NonNegativeNumber);
  cmd->add_option("--threads", a.threads, "worker threads (default: all cores)")->check(CLI::Range(0, 1024));
  cmd->add_option("--decode-threads", c.decode_threads, "image decoding threads (default: cores)")->check(CLI::Range(0, 64));
  return cmd;
}

CLI::App* add_eval_command(CLI::App& app, EvalArgs& a) {
  auto* cmd = app.add_subcommand("eval", "top-1/top-5, per-class accuracy and confusion matrix of a model on a data set");
  cmd->add_option("--model", a.model, "vgg16 or resnet50")->required()->check(CLI::IsMember({"vgg16", "resnet50"}));
  cmd->add_option("--weights", a.weights, "weights (.safetensors, torchvision names)")->required();
  cmd->add_option("--data", a.data, "image folder, Tiny-ImageNet root, IDX file or a directory of IDX files (its t10k-* file)")->required();
  cmd->add_option("--split", a.split, "split of a Tiny-ImageNet root / folder / IDX directory (default val/test)");
  cmd->add_option("--num-classes", a.num_classes, "classifier width (default: from the weights)")->check(CLI::PositiveNumber);
  cmd->add_option("--input-size", a.input_size, "input height and width (default 32)")->check(CLI::Range(32, 4096));
  cmd->add_option("--batch", a.batch, "images per forward pass (default 64)")->check(CLI::Range(1, 65536));
  cmd->add_option("--limit", a.limit, "first N images only")->check(CLI::NonNegativeNumber);
  cmd->add_option("--confusion", a.confusion, "write the confusion matrix (rows: labels) to this CSV");
  cmd->add_option("--per-class", a.per_class, "write per-class accuracy to this CSV");
  cmd->add_option("--mean", a.mean, "normalisation mean a,b,c (default ImageNet)");
  cmd->add_option("--std", a.stdev, "normalisation std a,b,c (default ImageNet)");
  cmd->add_flag("--json", a.json, "print one JSON object (top1, top5 as fractions, per-class accuracy)");
  cmd->add_option("--threads", a.threads, "worker threads (default: all cores)")->check(CLI::Range(0, 1024));
  cmd->add_option("--decode-threads", a.decode_threads, "image decoding threads (default: cores)")->check(CLI::Range(0, 64));
  add_backend_option(cmd, a.backend);
  return cmd;
}

int run_train(TrainArgs& a) {
  set_num_threads(a.threads);
  TrainConfig& c = a.config;
  c.optimizer.kind = parse_optimizer(a.optimizer);
  c.schedule.kind = parse_schedule(a.schedule);
  c.freeze = split_list(a.freeze);
  c.train_only = split_list(a.train_only);
  if (!a.mean.empty()) parse_triple(a.mean, "--mean", c.norm.mean);
  if (!a.stdev.empty()) parse_triple(a.stdev, "--std", c.norm.std);
  c.step_epochs.clear();
  if (!a.step_epochs.empty()) {
    for (const std::string& s : split_list(a.step_epochs)) {
      char* end = nullptr;
      const double e = std::strtod(s.c_str(), &end);
      if (*end != '\0' || !(e > 0)) throw Error("--step-epochs: '" + s + "' is not a positive number");
      c.step_epochs.push_back(e);
    }
  } else if (c.schedule.kind == ScheduleKind::step) {
    c.step_epochs = {c.epochs * 0.5, c.epochs * 0.75};
  }
  check_augment(c.augment, c.input_size);

  const bool tty = isatty(STDERR_FILENO) != 0;
  bool drawn = false;
  TrainHooks hooks;
  hooks.message = [&](const std::string& m) {
    if (drawn) std::fputc('\n', stderr);
    drawn = false;
    std::cerr << "isplit: " << m << "\n";
  };
  auto last = std::chrono::steady_clock::now() - std::chrono::seconds(1);
  hooks.progress = [&](const TrainProgress& p) {
    if (!tty) return;
    const auto now = std::chrono::steady_clock::now();
    if (p.step < p.steps && now - last < std::chrono::milliseconds(200)) return;
    last = now;
    std::fprintf(stderr, "\repoch %d/%d  step %lld/%lld  loss %.4f  acc %.1f%%  lr %.3g  %.1f images/s  ETA %s   ",
                 p.epoch, p.epochs, static_cast<long long>(p.step), static_cast<long long>(p.steps), p.loss,
                 100 * p.accuracy, p.lr, p.images_per_s, clock_text(p.eta_s).c_str());
    std::fflush(stderr);
    drawn = true;
  };
  hooks.eval_progress = [&](int64_t done, int64_t total) {
    if (!tty) return;
    std::fprintf(stderr, "\rvalidating %lld/%lld   ", static_cast<long long>(done), static_cast<long long>(total));
    std::fflush(stderr);
    drawn = true;
  };
  hooks.epoch_done = [&](const EpochLog& e) {
    if (drawn) std::fputc('\n', stderr);
    drawn = false;
    std::ostringstream os;
    os << std::fixed << std::setprecision(4) << "epoch " << e.epoch << ": train loss " << e.train_loss
       << " acc " << std::setprecision(2) << 100 * e.train_acc << "%";
    if (e.has_val)
      os << std::setprecision(4) << ", val loss " << e.val.loss << std::setprecision(2) << " top-1 "
         << 100 * e.val.top1 << "% top-5 " << 100 * e.val.top5 << "%";
    os << std::setprecision(1) << ", " << e.seconds << " s (" << e.images_per_s << " images/s)";
    std::cout << os.str() << std::endl;
  };
  run_training(c, hooks);
  if (drawn) std::fputc('\n', stderr);
  std::cout << "weights: " << c.out << "\nlog: " << train_log_path(c.out) << "\n";
  return 0;
}

int run_eval(const EvalArgs& a) {
  set_num_threads(a.threads);
  auto model = load_model(a.model, a.weights, a.num_classes);
  InferenceRunner infer(*model, a.backend);
  if (a.backend == "native") model->pack_for_inference();
  auto data = a.split.empty() ? open_dataset_default_split(a.data, "val") : open_dataset(a.data, a.split);
  EvalOptions o;
  o.input_size = a.input_size;
  o.batch_size = a.batch;
  o.decode_threads = a.decode_threads;
  if (a.backend != "native") o.forward = [&infer](const Tensor& x) { return infer(x); };
  if (!a.mean.empty()) parse_triple(a.mean, "--mean", o.norm.mean);
  if (!a.stdev.empty()) parse_triple(a.stdev, "--std", o.norm.std);
  const auto indices = select_indices(*data, {}, static_cast<size_t>(a.limit));
  Progress progress("images", static_cast<long>(indices.size()));
  o.progress = [&](int64_t done, int64_t) { progress.update(static_cast<long>(done)); };
  const EvalResult r = evaluate(*model, *data, indices, o);
  progress.finish();
  if (r.skipped > 0)
    std::cerr << "isplit: " << r.skipped << " images could not be read; first: " << r.errors.front() << "\n";
  if (r.count == 0) throw Error(a.data + ": no image could be evaluated");
  if (!a.confusion.empty()) write_file_atomic(a.confusion, confusion_csv(r));
  if (!a.per_class.empty()) write_file_atomic(a.per_class, per_class_csv(r));
  if (a.json) {
    nlohmann::ordered_json j;
    j["model"] = a.model;
    j["weights"] = a.weights;
    j["backend"] = a.backend;
    j["data"] = a.data;
    j["images"] = r.count;
    j["skipped"] = r.skipped;
    j["loss"] = r.loss;
    j["top1"] = r.top1;
    j["top5"] = r.top5;
    nlohmann::ordered_json pc = nlohmann::ordered_json::array();
    for (size_t k = 0; k < r.class_names.size(); ++k) {
      const double acc = r.class_accuracy(static_cast<int>(k));
      pc.push_back({{"label", k}, {"name", r.class_names[k]}, {"images", r.class_count(static_cast<int>(k))},
                    {"accuracy", std::isnan(acc) ? nlohmann::ordered_json(nullptr) : nlohmann::ordered_json(acc)}});
    }
    j["per_class"] = pc;
    j["seconds"] = r.seconds;
    std::cout << j.dump() << "\n";
    return 0;
  }
  std::cout << std::fixed << std::setprecision(2) << "images: " << r.count << "\ntop-1: " << 100 * r.top1
            << "%\ntop-5: " << 100 * r.top5 << "%\nloss: " << std::setprecision(4) << r.loss << "\n";
  for (size_t k = 0; k < r.class_names.size(); ++k) {
    const double acc = r.class_accuracy(static_cast<int>(k));
    std::cout << "  " << std::left << std::setw(16) << r.class_names[k] << std::right << std::setw(7)
              << r.class_count(static_cast<int>(k)) << " images  ";
    if (std::isnan(acc))
      std::cout << "-\n";
    else
      std::cout << std::setprecision(2) << 100 * acc << "%\n";
  }
  return 0;
}

}  // namespace isplit
