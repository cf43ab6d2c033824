// `isplit bench`: times forward, importance or training steps of a whole model.
#pragma once
#include <CLI/CLI.hpp>

#include <string>

namespace isplit {

// Options of `isplit bench`.
struct BenchArgs {
  std::string model = "resnet50";
  std::string mode = "forward";  // forward | importance | train
  int input_size = 224;
  int batch = 1;
  int threads = 0;
  int iters = 10;
  int warmup = 2;
  int evict_mb = 0;  // MB of other data the threads read before every pass (0: none)
  int64_t num_classes = 0;  // 0: 1000 (forward, importance) or 10 (train)
  bool json = false;
  bool stages = false;  // per-stage times (native forward / importance)
  std::string winograd;  // "": ISPLIT_WINOGRAD or auto; else 0/off, 1/on, auto
  std::string winograd_filters;  // "": ISPLIT_WINOGRAD_FILTERS or auto; else stored, streamed, auto
  std::string prepack;   // "": ISPLIT_PREPACK or on; else on/off
  std::string huge_pages;  // "": ISPLIT_HUGEPAGES or on; else on/off
  std::string backend = "native";  // native | onednn (forward only)
};

// Registers `bench` on app with its options bound to args.
CLI::App* add_bench_command(CLI::App& app, BenchArgs& args);
// Runs `isplit bench`; returns the exit code (throws Error on runtime failures).
int run_bench(const BenchArgs& args);

}  // namespace isplit
