// The `isplit` command-line program: parses arguments and calls the libraries.
#include <CLI/CLI.hpp>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <numeric>
#include <sstream>

#include "apps/analyze.h"
#include "apps/backend.h"
#include "apps/bench_cmd.h"
#include "apps/train_cmd.h"
#include "data/image.h"
#include "engine/cpu.h"
#include "engine/parallel.h"
#include "isplit/analysis/report.h"
#include "models/memory.h"
#include "models/model.h"

using namespace isplit;

namespace {

std::string human(double v, const char* unit) {
  const char* prefixes[] = {"", "K", "M", "G", "T"};
  int p = 0;
  while (std::fabs(v) >= 1000.0 && p < 4) {
    v /= 1000.0;
    ++p;
  }
  std::ostringstream os;
  os << std::fixed << std::setprecision(v < 10 ? 2 : 1) << v << " " << prefixes[p] << unit;
  return os.str();
}

std::string chw(const Shape& s) {
  Shape tail(s.begin() + 1, s.end());
  return shape_str(tail);
}

struct Common {
  std::string model = "resnet50";
  int input_size = 224;
  int64_t num_classes = 0;
  int threads = 0;
};

void add_common(CLI::App* cmd, Common& c) {
  cmd->add_option("--model", c.model, "vgg16 or resnet50")
      ->required()
      ->check(CLI::IsMember({"vgg16", "resnet50"}));
  cmd->add_option("--input-size", c.input_size, "input height and width (>= 32)")
      ->check(CLI::Range(32, 4096));
  cmd->add_option("--threads", c.threads, "worker threads (default: all cores)")
      ->check(CLI::Range(0, 1024));
}

// Bytes in binary units ("1.50 MiB").
std::string human_bytes(double v) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (v >= 1024.0 && u < 4) {
    v /= 1024.0;
    ++u;
  }
  std::ostringstream os;
  os << std::fixed << std::setprecision(u == 0 ? 0 : 2) << v << " " << units[u];
  return os.str();
}

// Prints shapes, sizes, FLOPs and the memory of running the head up to each cut point; with
// cut, only that cut point, whose head alone is built and run to measure it.
int run_info(const Common& c, bool all, bool json, const std::string& cut, int batch) {
  const int64_t classes = c.num_classes > 0 ? c.num_classes : 1000;
  // Memory is measured on the head alone for one cut point (first: a bad name fails before
  // anything big is built), else in one pass over the whole network, which also gives the
  // totals and per-stage figures.
  const Shape input = {batch, 3, c.input_size, c.input_size};
  std::vector<HeadMemory> memory;
  if (!cut.empty()) {
    try {
      memory = {measure_head(c.model, classes, cut, input)};
    } catch (const CutPointError& e) {
      std::cerr << "isplit: --cut: " << e.what() << "\n";
      return 2;
    }
  }
  auto model = build_model(c.model, classes, 0, "", false);  // sizes only: no weights drawn
  if (cut.empty()) memory = measure_cut_memory(*model, input);
  auto memory_of = [&](const std::string& name) -> const HeadMemory* {
    for (const HeadMemory& h : memory)
      if (h.cut == name) return &h;
    return nullptr;
  };
  const auto stages = model->stage_info({1, 3, c.input_size, c.input_size});
  const int64_t total_params = model->parameter_count();
  double total_flops = 0;
  for (const auto& s : stages) total_flops += s.flops;
  double head_flops = 0;
  int64_t head_params = 0;
  std::ostringstream out;
  if (json)
    out << "{\"model\":\"" << c.model << "\",\"input_size\":" << c.input_size
        << ",\"batch\":" << batch << ",\"num_classes\":" << model->num_classes()
        << ",\"params\":" << total_params << ",\"flops\":" << total_flops
        << ",\"cut_points\":[";
  else
    out << c.model << " at " << c.input_size << "x" << c.input_size << ", "
        << model->num_classes() << " classes: " << human(double(total_params), "params") << ", "
        << human(total_flops, "FLOP") << " per image; head memory at batch " << batch << "\n"
        << std::left << std::setw(4) << "#" << std::setw(13) << "cut point" << std::setw(14)
        << "output CxHxW" << std::right << std::setw(14) << "output bytes" << std::setw(14)
        << "head params" << std::setw(12) << "head FLOPs" << std::setw(14) << "head weights"
        << std::setw(14) << "peak memory" << "\n";
  int index = 0;
  bool first = true;
  for (const auto& s : stages) {
    head_flops += s.flops;
    head_params += s.params;
    if (!s.cut) continue;
    const bool listed = cut.empty() ? (all || s.is_default) : s.name == cut;
    const HeadMemory* mem = memory_of(s.name);
    if (!listed || !mem) {
      index += all || s.is_default ? 1 : 0;
      continue;
    }
    const int64_t bytes = shape_numel(s.out_shape) * 4;
    if (json) {
      out << (first ? "" : ",") << "{\"index\":" << index << ",\"name\":\"" << s.name
          << "\",\"out_shape\":\"" << chw(s.out_shape) << "\",\"out_bytes\":" << bytes
          << ",\"default\":" << (s.is_default ? "true" : "false")
          << ",\"head_params\":" << head_params << ",\"head_flops\":" << head_flops
          << ",\"head_weight_bytes\":" << mem->weight_bytes
          << ",\"activation_bytes\":" << mem->activation_bytes
          << ",\"peak_bytes\":" << mem->peak_bytes() << "}";
    } else {
      out << std::left << std::setw(4) << index << std::setw(13) << s.name << std::setw(14)
          << chw(s.out_shape) << std::right << std::setw(14) << bytes << std::setw(14)
          << head_params << std::setw(12) << human(head_flops, "") << std::setw(14)
          << human_bytes(double(mem->weight_bytes)) << std::setw(14)
          << human_bytes(double(mem->peak_bytes())) << "\n";
    }
    first = false;
    ++index;
  }
  if (json) out << "]}\n";
  std::cout << out.str();
  return 0;
}

int run_predict(const Common& c, const std::string& weights, const std::string& mean,
                const std::string& stdev, int topk, const std::string& logits_csv,
                const std::string& labels_path, const std::string& backend,
                const std::vector<std::string>& images) {
  Normalize norm;
  if (!mean.empty()) parse_triple(mean, "--mean", norm.mean);
  if (!stdev.empty()) parse_triple(stdev, "--std", norm.std);
  for (float s : norm.std)
    if (!(s > 0)) throw Error("--std: values must be positive");
  std::vector<std::string> labels;
  if (!labels_path.empty()) {
    std::ifstream f(labels_path);
    if (!f) throw Error(labels_path + ": cannot open");
    for (std::string line; std::getline(f, line);) labels.push_back(line);
  }
  auto model = load_model(c.model, weights, c.num_classes);
  InferenceRunner infer(*model, backend);
  if (backend == "native") {
    model->fold_batchnorm();
    model->pack_for_inference();
  }
  const int64_t classes = model->num_classes();
  if (!labels.empty() && static_cast<int64_t>(labels.size()) != classes)
    throw Error(labels_path + ": " + std::to_string(labels.size()) + " labels for " +
                std::to_string(classes) + " classes");
  std::ostringstream csv;
  csv << "file";
  for (int64_t j = 0; j < classes; ++j) csv << ",logit_" << j;
  csv << "\n";
  const int k = static_cast<int>(std::min<int64_t>(topk, classes));
  for (const std::string& path : images) {
    Tensor x = stack_images({load_image_tensor(path, c.input_size, norm)});
    Tensor logits = infer(x);
    std::vector<int64_t> order(classes);
    std::iota(order.begin(), order.end(), 0);
    std::partial_sort(order.begin(), order.begin() + k, order.end(),
                      [&](int64_t a, int64_t b) { return logits[a] > logits[b]; });
    double mx = logits[order[0]], sum = 0;
    for (int64_t j = 0; j < classes; ++j) sum += std::exp(double(logits[j]) - mx);
    std::cout << path << "\n";
    for (int r = 0; r < k; ++r) {
      const int64_t j = order[r];
      std::cout << "  " << r + 1 << "  class " << std::setw(5) << j << "  logit " << std::fixed
                << std::setprecision(6) << std::setw(12) << logits[j] << "  prob "
                << std::setprecision(6) << std::exp(double(logits[j]) - mx) / sum;
      if (!labels.empty()) std::cout << "  " << labels[j];
      std::cout << "\n";
    }
    csv << path;
    csv << std::setprecision(9);
    for (int64_t j = 0; j < classes; ++j) csv << "," << logits[j];
    csv << "\n";
  }
  if (!logits_csv.empty()) write_file_atomic(logits_csv, csv.str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"isplit: run, differentiate and split VGG16 / ResNet-50 on CPUs"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "isplit 0.1.0");

  Common info_opts;
  bool info_all = false, info_json = false;
  auto* info = app.add_subcommand("info", "shape, bytes, parameters and FLOPs per cut point");
  add_common(info, info_opts);
  info->add_option("--num-classes", info_opts.num_classes, "classifier width (default 1000)")
      ->check(CLI::PositiveNumber);
  info->add_flag("--all", info_all, "every module output, not only the default cut points");
  info->add_flag("--json", info_json, "print one JSON object");
  std::string info_cut;
  int info_batch = 1;
  info->add_option("--cut", info_cut,
                   "only this cut point; its head is built alone to measure its memory");
  info->add_option("--batch", info_batch, "images per run for the memory figures (default 1)")
      ->check(CLI::Range(1, 4096));

  Common pred_opts;
  std::string weights, mean, stdev, logits_csv, labels;
  int topk = 5;
  std::vector<std::string> images;
  auto* predict = app.add_subcommand("predict", "classify images with a model and its weights");
  add_common(predict, pred_opts);
  predict->add_option("--weights", weights, "weights (.safetensors, torchvision names)")
      ->required();
  predict->add_option("--num-classes", pred_opts.num_classes,
                      "classifier width (default: from the weights file)")
      ->check(CLI::PositiveNumber);
  predict->add_option("--mean", mean, "normalisation mean a,b,c (default ImageNet)");
  predict->add_option("--std", stdev, "normalisation std a,b,c (default ImageNet)");
  predict->add_option("--topk", topk, "classes to print per image")->check(CLI::Range(1, 100000));
  predict->add_option("--logits", logits_csv, "write file,logit_0,...,logit_{N-1} to this CSV");
  predict->add_option("--labels", labels, "class names, one per line");
  std::string pred_backend = "native";
  add_backend_option(predict, pred_backend);
  predict->add_option("images", images, "image files (PNG, JPEG, BMP, ...)")->required();

  AnalyzeArgs an;
  std::string an_mean, an_std;
  auto* analyze = app.add_subcommand("analyze", "I-SPLIT: importance per layer, CUI curves and split candidates");
  analyze->add_option("--model", an.model, "vgg16 or resnet50")->required()->check(CLI::IsMember({"vgg16", "resnet50"}));
  analyze->add_option("--weights", an.weights, "weights (.safetensors, torchvision names)")->required();
  analyze->add_option("--data", an.data, "image folder, Tiny-ImageNet root, or IDX image file (.gz ok)")->required();
  analyze->add_option("--split", an.split, "Tiny-ImageNet / folder split (train, val)");
  analyze->add_option("--out", an.out, "output directory")->required();
  analyze->add_option("--target", an.target, "score differentiated: predicted class or ground-truth label")
      ->check(CLI::IsMember({"predicted", "label"}));
  analyze->add_option("--classes", an.classes, "restrict to these labels, e.g. 3,5,7");
  analyze->add_option("--points", an.points, "default (transmittable tensors) or all module outputs")
      ->check(CLI::IsMember({"default", "all"}));
  analyze->add_option("--method", an.method, "gradcam, gradcam++, layercam or xgradcam")
      ->check(CLI::IsMember({"gradcam", "gradcam++", "layercam", "xgradcam"}));
  analyze->add_option("--relu-grad", an.relu_grad, "post: gradient of the layer output; pre: before its ReLU (authors' hooks)")
      ->check(CLI::IsMember({"post", "pre"}));
  analyze->add_option("--limit", an.limit, "first N images only")->check(CLI::NonNegativeNumber);
  analyze->add_option("--batch", an.batch, "images per forward/backward pass")->check(CLI::Range(1, 4096));
  analyze->add_option("--input-size", an.input_size, "input height and width (>= 32)")->check(CLI::Range(32, 4096));
  analyze->add_option("--num-classes", an.num_classes, "classifier width (default: from the weights)")->check(CLI::PositiveNumber);
  analyze->add_option("--mean", an_mean, "normalisation mean a,b,c (default ImageNet)");
  analyze->add_option("--std", an_std, "normalisation std a,b,c (default ImageNet)");
  analyze->add_option("--shard", an.shard, "K/N: analyse every N-th image from the K-th, write a partial file");
  analyze->add_option("--decode-threads", an.decode_threads, "image decoding threads (default: cores)")->check(CLI::Range(0, 64));
  int an_threads = 0;
  analyze->add_option("--threads", an_threads, "worker threads (default: all cores)")->check(CLI::Range(0, 1024));

  std::vector<std::string> merge_parts;
  std::string merge_out;
  auto* merge = app.add_subcommand("merge", "combine partial files of sharded analyze runs");
  merge->add_option("parts", merge_parts, "partial-K-of-N.json files")->required();
  merge->add_option("--out", merge_out, "output directory")->required();

  TrainArgs train_args;
  auto* train = add_train_command(app, train_args);
  EvalArgs eval_args;
  auto* eval = add_eval_command(app, eval_args);
  BenchArgs bench_args;
  auto* bench = add_bench_command(app, bench_args);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int rc = app.exit(e);
    return rc == 0 ? 0 : 2;
  }
  try {
    if (*info) {
      set_num_threads(info_opts.threads);
      return run_info(info_opts, info_all, info_json, info_cut, info_batch);
    }
    if (*analyze) {
      set_num_threads(an_threads);
      if (!an_mean.empty()) parse_triple(an_mean, "--mean", an.norm.mean);
      if (!an_std.empty()) parse_triple(an_std, "--std", an.norm.std);
      return run_analyze(an);
    }
    if (*merge) return run_merge(merge_parts, merge_out);
    if (*train) return run_train(train_args);
    if (*eval) return run_eval(eval_args);
    if (*bench) return run_bench(bench_args);
    if (*predict) {
      set_num_threads(pred_opts.threads);
      return run_predict(pred_opts, weights, mean, stdev, topk, logits_csv, labels, pred_backend,
                         images);
    }
  } catch (const std::exception& e) {
    std::cerr << "isplit: " << e.what() << "\n";
    return 1;
  }
  return 2;
}
