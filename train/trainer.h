// The training run behind `isplit train`: data, model set-up (fresh, fine-tuned or
// resumed), epochs of seeded shuffling and augmentation, per-epoch validation, a CSV log
// and atomic checkpoints that make a resumed run bit-identical to an uninterrupted one.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "data/augment.h"
#include "train/optimizer.h"
#include "train/step.h"

namespace isplit {

struct TrainConfig {
  std::string model = "resnet50";
  std::string data;            // training set (see open_dataset; a directory of IDX files
                               // uses its train-* file)
  std::string val;             // validation set (optional; such a directory uses t10k-*)
  std::string init_weights;    // optional starting weights (fine-tuning)
  int64_t num_classes = 0;     // 0: from init_weights, else from the training data
  int input_size = 32;
  int epochs = 1;
  int batch_size = 32;
  OptimizerConfig optimizer;
  ScheduleConfig schedule;     // schedule.base_lr is the learning rate
  double warmup_epochs = 0;    // linear warm-up length in epochs (may be fractional)
  std::vector<double> step_epochs;  // step schedule milestones, in epochs
  double label_smoothing = 0;
  std::vector<std::string> freeze, train_only;  // name patterns (see apply_freeze)
  uint64_t seed = 0;
  size_t limit = 0, val_limit = 0;  // first N samples (0: all)
  Augment augment;             // augment.seed is ignored: derived from seed and epoch
  Normalize norm;
  std::string out;             // weights path (.safetensors)
  bool resume = false;
  int64_t checkpoint_steps = 0;  // also checkpoint every N steps inside an epoch (0: only
                                 // at epoch ends)
  int decode_threads = 0;
};

// Progress of a running training, for a progress line.
struct TrainProgress {
  int epoch = 0, epochs = 0;         // 1-based epoch
  int64_t step = 0, steps = 0;       // step within the epoch (1-based) and steps per epoch
  double images_per_s = 0, eta_s = 0;
  double loss = 0, accuracy = 0;     // running means over the epoch so far
  double lr = 0;
};

// One row of the training log (one per epoch).
struct EpochLog {
  int epoch = 0;
  double lr = 0, train_loss = 0, train_acc = 0;
  bool has_val = false;
  EvalResult val;
  double seconds = 0, images_per_s = 0;
};

struct TrainHooks {
  std::function<void(const TrainProgress&)> progress;  // after each step
  std::function<void(const std::string&)> message;     // one-line notes for the user
  std::function<void(const EpochLog&)> epoch_done;     // after each epoch's checkpoint
  std::function<void(int64_t, int64_t)> eval_progress; // validation images done/total
};

// Path of the training-state file kept beside the weights: "<out minus .safetensors>.state.safetensors".
std::string train_state_path(const std::string& weights_path);
// Path of the per-epoch CSV log beside the weights: "<out minus .safetensors>.log.csv".
std::string train_log_path(const std::string& weights_path);

// Runs (or resumes) a training as configured; returns true when all epochs are done.
// Throws Error on bad data, weights, options or checkpoint files.
bool run_training(const TrainConfig& config, const TrainHooks& hooks = {});

// Builds `arch` with `classes` outputs and loads weights from path; when the file's
// classifier width differs from `classes`, the classifier is left freshly initialised from
// seed (every other tensor must match) and its tensor names are returned.
std::vector<std::string> load_for_finetune(Model& model, const std::string& path);

}  // namespace isplit
