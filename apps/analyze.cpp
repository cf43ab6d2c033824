#include "apps/analyze.h"

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>

#include "apps/progress.h"
#include "data/dataset.h"
#include "data/loader.h"
#include "engine/cpu.h"
#include "engine/parallel.h"
#include "isplit/analysis/report.h"

namespace isplit {

std::vector<int> parse_int_list(const std::string& text, const std::string& option) {
  std::vector<int> out;
  std::stringstream ss(text);
  std::string item;
  while (std::getline(ss, item, ',')) {
    try {
      size_t used = 0;
      const int v = std::stoi(item, &used);
      if (used != item.size() || v < 0) throw std::invalid_argument(item);
      out.push_back(v);
    } catch (const std::exception&) {
      throw Error(option + ": '" + item + "' is not a non-negative integer");
    }
  }
  if (out.empty()) throw Error(option + ": expected a comma-separated list of integers");
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

// Parses "a,b,c" into three floats; throws Error naming the option.
void parse_triple(const std::string& text, const char* option, float out[3]) {
  std::stringstream ss(text);
  std::string item;
  int i = 0;
  while (std::getline(ss, item, ',')) {
    if (i == 3) throw Error(std::string(option) + ": expected three comma-separated numbers");
    try {
      size_t used = 0;
      out[i] = std::stof(item, &used);
      if (used != item.size()) throw std::invalid_argument(item);
    } catch (const std::exception&) {
      throw Error(std::string(option) + ": '" + item + "' is not a number");
    }
    ++i;
  }
  if (i != 3) throw Error(std::string(option) + ": expected three comma-separated numbers");
}

namespace {

ImportanceOptions options_of(const std::string& method, const std::string& target,
                             const std::string& relu_grad, const std::string& points) {
  ImportanceOptions o;
  o.method = parse_cam_method(method);
  o.target_label = target == "label";
  o.relu_grad_pre = relu_grad == "pre";
  o.all_points = points == "all";
  return o;
}

std::string title_of(const nlohmann::json& s) {
  std::ostringstream t;
  t << "I-SPLIT " << s.value("method", "") << ": " << s.value("model", "") << " at "
    << s.value("input_size", 0) << "x" << s.value("input_size", 0) << ", "
    << s.value("images", 0) << " images, target " << s.value("target", "");
  if (s.contains("classes") && !s["classes"].empty()) t << ", classes " << s["classes"].dump();
  return t.str();
}

void write_outputs(const std::string& out, const ImportanceAccumulator& acc,
                   nlohmann::json settings, const nlohmann::json& timings,
                   const std::vector<std::string>& class_names, const std::vector<int>& classes,
                   int64_t skipped, const std::vector<std::string>& skipped_examples) {
  const CuiResult all = acc.result();
  const CuiResult subset = classes.empty() ? all : acc.result(classes);
  if (subset.images == 0) throw Error("no image of the requested classes could be analysed");
  settings["images"] = subset.images;
  ReportContext ctx;
  ctx.settings_json = settings.dump();
  ctx.timings_json = timings.dump();
  ctx.class_names = class_names;
  ctx.class_subset = classes;
  ctx.all_classes = classes.empty() ? nullptr : &all;
  ctx.skipped_images = skipped;
  ctx.skipped_examples = skipped_examples;
  write_report(out, subset, ctx, title_of(settings));
  std::cout << cui_csv(subset);
  std::cout << "candidates:";
  for (const auto& p : subset.points)
    if (p.candidate) std::cout << " " << p.name;
  if (subset.global_max >= 0) std::cout << " (global maximum " << subset.points[subset.global_max].name << ")";
  std::cout << "\nwrote " << out << "/{cui.csv,cui_by_class.csv,cui.svg,cui_by_class.svg,report.json}\n";
}

}  // namespace

int run_analyze(const AnalyzeArgs& a) {
  int shard_k = 0, shard_n = 1;
  if (!a.shard.empty()) {
    const auto slash = a.shard.find('/');
    try {
      if (slash == std::string::npos) throw std::invalid_argument(a.shard);
      shard_k = std::stoi(a.shard.substr(0, slash));
      shard_n = std::stoi(a.shard.substr(slash + 1));
    } catch (const std::exception&) {
      throw Error("--shard: expected K/N, got '" + a.shard + "'");
    }
    if (shard_n < 1 || shard_k < 0 || shard_k >= shard_n)
      throw Error("--shard: K/N needs 0 <= K < N, got '" + a.shard + "'");
  }
  const std::vector<int> classes = a.classes.empty() ? std::vector<int>() : parse_int_list(a.classes, "--classes");
  const auto t0 = std::chrono::steady_clock::now();
  auto dataset = open_dataset(a.data, a.split);
  for (int c : classes)
    if (c >= static_cast<int>(dataset->class_names().size()))
      throw Error("--classes: class " + std::to_string(c) + " does not exist in " + a.data + " (" +
                  std::to_string(dataset->class_names().size()) + " classes)");
  auto model = load_model(a.model, a.weights, a.num_classes);
  model->pack_for_inference();  // the importance pass needs no weight gradients
  if (static_cast<size_t>(model->num_classes()) < dataset->class_names().size() && a.target == "label")
    throw Error(a.data + ": " + std::to_string(dataset->class_names().size()) +
                " classes but the model has " + std::to_string(model->num_classes()));
  // With --classes every image is still analysed, so that the report can say how the
  // candidates moved against the all-classes curve.
  const std::vector<size_t> indices =
      select_indices(*dataset, {}, static_cast<size_t>(std::max(0L, a.limit)), shard_k, shard_n);
  if (indices.empty()) throw Error(a.data + ": no image selected");
  const double t_load = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

  ImportanceAccumulator acc(*model, options_of(a.method, a.target, a.relu_grad, a.points),
                            a.input_size);
  acc.set_shard(shard_k, shard_n);
  BatchLoader loader(*dataset, indices, a.batch, a.input_size, a.norm, a.decode_threads);
  Progress progress("images", static_cast<long>(indices.size()));
  Batch batch;
  long done = 0;
  while (loader.next(batch)) {
    acc.add_batch(batch.images, batch.labels);
    done += static_cast<long>(batch.indices.size());
    loader.recycle(std::move(batch));  // the accumulator keeps no reference to the images
    progress.update(done + static_cast<long>(loader.skipped()));
  }
  progress.finish();
  const double t_run = progress.seconds();
  if (acc.images() == 0)
    throw Error(a.data + ": none of the " + std::to_string(indices.size()) +
                " selected images could be read (first error: " +
                (loader.errors().empty() ? std::string("?") : loader.errors().front()) + ")");
  for (const auto& e : loader.errors()) std::cerr << "isplit: skipped " << e << "\n";

  nlohmann::json settings = {{"model", a.model},
                             {"weights", a.weights},
                             {"data", a.data},
                             {"data_kind", dataset->kind()},
                             {"input_size", a.input_size},
                             {"num_classes", model->num_classes()},
                             {"method", a.method},
                             {"target", a.target},
                             {"relu_grad", a.relu_grad},
                             {"points", a.points},
                             {"classes", classes},
                             {"limit", a.limit},
                             {"batch", a.batch},
                             {"threads", num_threads()},
                             {"isa", isa_name(active_isa())}};
  nlohmann::json timings = {{"load_seconds", t_load},
                            {"analysis_seconds", t_run},
                            {"images_per_second", t_run > 0 ? acc.images() / t_run : 0.0}};
  if (!a.shard.empty()) {
    settings["shard"] = a.shard;
    settings["class_names"] = dataset->class_names();
    settings["skipped"] = loader.skipped();
    const std::string path = a.out + "/partial-" + std::to_string(shard_k) + "-of-" +
                             std::to_string(shard_n) + ".json";
    std::error_code ec;
    std::filesystem::create_directories(a.out, ec);
    acc.save_partial(path, settings.dump());
    std::cout << "wrote " << path << " (" << acc.images() << " images)\n";
    return 0;
  }
  write_outputs(a.out, acc, settings, timings, dataset->class_names(), classes,
                static_cast<int64_t>(loader.skipped()), loader.errors());
  return 0;
}

int run_merge(const std::vector<std::string>& parts, const std::string& out) {
  if (parts.empty()) throw Error("merge: no partial files given");
  // The first part says what was analysed; every part must agree with it.
  std::ifstream f(parts[0]);
  if (!f) throw Error(parts[0] + ": cannot open");
  nlohmann::json first;
  try {
    first = nlohmann::json::parse(f);
  } catch (const std::exception& e) {
    throw Error(parts[0] + ": not a partial-sums file (" + std::string(e.what()) + ")");
  }
  if (!first.contains("settings") || !first["settings"].is_object())
    throw Error(parts[0] + ": not a partial-sums file (no settings)");
  nlohmann::json settings = first["settings"];
  const std::string arch = settings.value("model", "");
  // Only the model's stages and shapes matter here: no weights are drawn.
  auto model = build_model(arch, settings.value("num_classes", 1000), 0, "", false);
  ImportanceAccumulator acc(*model,
                            options_of(settings.value("method", "gradcam"),
                                       settings.value("target", "predicted"),
                                       settings.value("relu_grad", "post"),
                                       settings.value("points", "default")),
                            settings.value("input_size", 224));
  int64_t skipped = 0;
  for (const auto& p : parts)
    skipped += nlohmann::json::parse(acc.load_partial(p)).value("skipped", int64_t{0});
  const std::vector<int> classes = settings.value("classes", std::vector<int>());
  settings.erase("shard");
  settings.erase("skipped");
  const auto names = settings.value("class_names", std::vector<std::string>());
  settings.erase("class_names");
  settings["merged_parts"] = parts.size();
  const auto& shards = acc.shards();
  const int n = shards.empty() ? 1 : shards.begin()->second;
  if (static_cast<int>(shards.size()) != n)
    std::cerr << "isplit: warning: " << shards.size() << " of " << n
              << " shards merged; the result covers only those images\n";
  write_outputs(out, acc, settings, nlohmann::json::object(), names, classes, skipped, {});
  return 0;
}

}  // namespace isplit
