// `isplit analyze` and `isplit merge`.
#pragma once
#include <string>
#include <vector>

#include "data/image.h"

namespace isplit {

struct AnalyzeArgs {
  std::string model, weights, data, split, out;
  std::string target = "predicted";    // predicted | label
  std::string points = "default";      // default | all
  std::string method = "gradcam";
  std::string relu_grad = "post";      // post | pre
  std::string classes;                 // "3,5,7"
  std::string shard;                   // "K/N"
  int input_size = 224;
  int64_t num_classes = 0;
  long limit = 0;
  int batch = 4;
  int decode_threads = 0;
  Normalize norm;
};

// Runs the analysis and writes the outputs (or a partial file with --shard).
int run_analyze(const AnalyzeArgs& args);
// Merges partial files written by sharded runs into the outputs of one run.
int run_merge(const std::vector<std::string>& parts, const std::string& out);
// Parses "a,b,c" into three floats; throws Error naming the option.
void parse_triple(const std::string& text, const char* option, float out[3]);
// Parses "a,b,c" into integers; throws Error naming the option.
std::vector<int> parse_int_list(const std::string& text, const std::string& option);

}  // namespace isplit
