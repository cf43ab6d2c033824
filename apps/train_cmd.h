// `isplit train` and `isplit eval`.
#pragma once
#include <CLI/CLI.hpp>

#include <string>

#include "train/trainer.h"

namespace isplit {

// Options of `isplit train` as parsed (lists and triples still text).
struct TrainArgs {
  TrainConfig config;
  std::string optimizer = "sgd", schedule = "cosine";
  std::string freeze, train_only, step_epochs, mean, stdev;
  int threads = 0;
};

// Options of `isplit eval`.
struct EvalArgs {
  std::string model = "resnet50", weights, data, split, confusion, per_class, mean, stdev;
  int64_t num_classes = 0;
  int input_size = 32;
  int batch = 64;
  long limit = 0;
  bool json = false;
  int threads = 0, decode_threads = 0;
  std::string backend = "native";  // native | onednn
};

// Registers `train` on app with its options bound to args.
CLI::App* add_train_command(CLI::App& app, TrainArgs& args);
// Registers `eval` on app with its options bound to args.
CLI::App* add_eval_command(CLI::App& app, EvalArgs& args);
// Runs `isplit train`; returns the exit code (throws Error on runtime failures).
int run_train(TrainArgs& args);
// Runs `isplit eval`; returns the exit code (throws Error on runtime failures).
int run_eval(const EvalArgs& args);

}  // namespace isplit
