#include "apps/bench_cmd.h"

#include <sys/resource.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "apps/backend.h"
#include "engine/cpu.h"
#include "engine/gemm_prepacked.h"
#include "engine/parallel.h"
#include "train/step.h"

namespace isplit {

namespace {

// Peak resident set of this process so far, in bytes.
long long peak_rss_bytes() {
  struct rusage ru;
  if (getrusage(RUSAGE_SELF, &ru) != 0) return -1;
  return static_cast<long long>(ru.ru_maxrss) * 1024;  // Linux reports KiB
}

// Median of a non-empty list (mean of the middle two for an even count); 0 when empty.
double median_of(std::vector<double> v) {
  if (v.empty()) return 0.0;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// Times in ms by name, names in the order first seen (a stage runs once per pass, so a
// name not seen yet is the next stage in network order).
struct StageSamples {
  std::vector<std::string> names;
  std::vector<std::vector<double>> ms;
  void add(const std::string& name, double seconds) {
    const size_t i = static_cast<size_t>(std::find(names.begin(), names.end(), name) - names.begin());
    if (i == names.size()) {
      names.push_back(name);
      ms.emplace_back();
    }
    ms[i].push_back(1e3 * seconds);
  }
  // The median of name's samples, or -1 when it has none.
  double median(const std::string& name) const {
    const auto it = std::find(names.begin(), names.end(), name);
    return it == names.end() ? -1.0 : median_of(ms[static_cast<size_t>(it - names.begin())]);
  }
};

}  // namespace

CLI::App* add_bench_command(CLI::App& app, BenchArgs& a) {
  auto* cmd = app.add_subcommand("bench", "time forward, importance or training steps of a whole model");
  cmd->add_option("--model", a.model, "vgg16 or resnet50")->required()->check(CLI::IsMember({"vgg16", "resnet50"}));
  cmd->add_option("--mode", a.mode, "forward (BatchNorm folded), importance (forward + backward to every layer output) or train (SGD step)")
      ->check(CLI::IsMember({"forward", "importance", "train"}));
  cmd->add_option("--input-size", a.input_size, "input height and width (default 224)")->check(CLI::Range(32, 4096));
  cmd->add_option("--batch", a.batch, "images per pass (default 1; train needs >= 2)")->check(CLI::Range(1, 65536));
  cmd->add_option("--threads", a.threads, "worker threads (default: all cores)")->check(CLI::Range(0, 1024));
  cmd->add_option("--iters", a.iters, "timed passes (default 10)")->check(CLI::Range(1, 100000));
  cmd->add_option("--warmup", a.warmup, "untimed passes first (default 2)")->check(CLI::Range(0, 100000));
  cmd->add_option("--evict-mb", a.evict_mb,
                  "before every pass, untimed, the threads read this many MB of other data, so that "
                  "the weights come from memory as after other work; counted in the peak RSS (default 0: "
                  "back-to-back passes; at most 4096)")
      ->check(CLI::Range(0, 4096));
  cmd->add_option("--num-classes", a.num_classes, "classifier width (default 1000; 10 for train)")->check(CLI::PositiveNumber);
  cmd->add_flag("--json", a.json, "print one JSON object");
  cmd->add_flag("--stages", a.stages,
                "also time every stage of the forward pass, and in importance mode of the backward too (native backend; median ms per stage)");
  cmd->add_option("--winograd", a.winograd, "3x3 convolutions by Winograd: on, off or auto (default: ISPLIT_WINOGRAD, else auto)");
  cmd->add_option("--winograd-filters", a.winograd_filters,
                  "Winograd filters streamed from the weights (a quarter of the memory), stored transformed (4x the weights, faster on few tiles) or auto: stored for layers of at most 64x64 channels on maps of at most 32x32, streamed for the others (default: ISPLIT_WINOGRAD_FILTERS, else auto)")
      ->check(CLI::IsMember({"stored", "streamed", "auto"}));
  cmd->add_option("--prepack", a.prepack, "GEMM weights packed once for inference: on or off (default: ISPLIT_PREPACK, else on)")
      ->check(CLI::IsMember({"on", "off"}));
  cmd->add_option("--huge-pages", a.huge_pages,
                  "weights and packed weights on transparent huge pages: on or off (default: ISPLIT_HUGEPAGES, else on)")
      ->check(CLI::IsMember({"on", "off"}));
  add_backend_option(cmd, a.backend);
  return cmd;
}

int run_bench(const BenchArgs& a) {
  const bool onednn = a.backend == "onednn";
  if (onednn && a.mode != "forward") {
    std::cerr << "isplit: bench: --backend onednn times only --mode forward (not " << a.mode << ")\n";
    return 2;
  }
  set_num_threads(a.threads);
  if (!a.winograd.empty()) set_winograd_mode(parse_winograd_mode(a.winograd, "--winograd"));
  if (!a.winograd_filters.empty())
    set_winograd_filters_mode(parse_winograd_filters(a.winograd_filters, "--winograd-filters"));
  if (!a.prepack.empty()) set_gemm_prepack(a.prepack == "on");
  if (!a.huge_pages.empty()) set_tensor_huge_pages(a.huge_pages == "on");
  if (a.stages && (onednn || a.mode == "train"))
    throw Error("--stages: per-stage times need the native backend and --mode forward or importance");
  if (a.mode == "train" && a.batch < 2) throw Error("--batch: train mode needs at least 2 images (BatchNorm batch statistics)");
  const int64_t classes = a.num_classes > 0 ? a.num_classes : (a.mode == "train" ? 10 : 1000);
  auto model = build_model(a.model, classes, 1);
  const long long weights = static_cast<long long>(model->parameter_count()) * 4;  // before folding
  const int64_t S = a.input_size, B = a.batch;
  Tensor x = Tensor::empty({B, 3, S, S});
  std::mt19937_64 rng(7);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  for (int64_t i = 0; i < x.numel(); ++i) x[i] = dist(rng);
  std::vector<int> labels(static_cast<size_t>(B));
  for (int64_t i = 0; i < B; ++i) labels[static_cast<size_t>(i)] = static_cast<int>(i % classes);

  std::unique_ptr<Optimizer> opt;
  InferenceRunner infer(*model, a.backend);
  if (onednn) {
    infer.prepare(x.shape());  // BatchNorm folded and weights reordered here, untimed
  } else if (a.mode == "forward") {
    model->fold_batchnorm();
    model->pack_for_inference();
  } else if (a.mode == "importance") {
    model->pack_for_inference();
  } else if (a.mode == "train") {
    model->set_training(true);
    OptimizerConfig oc;
    oc.weight_decay = 5e-4;
    opt = std::make_unique<Optimizer>(model->named_parameters(), oc);
  }
  // An importance pass's two parts, for the timed passes: the forward that records the
  // tape, and the backward with the tape's teardown.
  std::vector<double> forward_part_ms, backward_part_ms;
  bool timing_parts = false;
  // With --stages, the importance pass's backward timed by stage too (tape sections).
  StageSamples back;
  auto time_back = [&](const std::string& name, double seconds) { back.add(name, seconds); };
  auto pass = [&] {
    if (a.mode == "forward") {
      (void)infer(x);
    } else if (a.mode == "importance") {
      const auto t0 = std::chrono::steady_clock::now();
      auto t1 = t0;
      {
        Tape tape = Tape::activations_only();
        if (timing_parts && a.stages) tape.set_section_timer(time_back);
        Var out = model->forward(&tape, tape.input(x));
        t1 = std::chrono::steady_clock::now();
        Tensor seed = Tensor::zeros(out.value.shape());
        for (int64_t n = 0; n < B; ++n) seed[n * classes + labels[static_cast<size_t>(n)]] = 1.0f;
        tape.backward(out, seed, /*release=*/true);  // as isplit analyze runs it
      }
      if (timing_parts) {
        const auto t2 = std::chrono::steady_clock::now();
        forward_part_ms.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
        backward_part_ms.push_back(std::chrono::duration<double, std::milli>(t2 - t1).count());
      }
    } else {
      train_step(*model, *opt, x, labels, 1e-4);
    }
  };
  // What --evict-mb reads between passes: every cache line once, split between the threads.
  std::vector<float> other(static_cast<size_t>(a.evict_mb) << 18, 1.0f);
  auto evict = [&] {
    if (other.empty()) return;
    constexpr int64_t kPage = 1024;  // floats
    std::atomic<int64_t> sink{0};
    parallel_for(static_cast<int64_t>(other.size()) / kPage, 1, [&](int64_t b, int64_t e) {
      float sum = 0.0f;
      for (int64_t i = b * kPage; i < e * kPage; i += 16) sum += other[static_cast<size_t>(i)];
      sink.fetch_add(static_cast<int64_t>(sum), std::memory_order_relaxed);
    });
  };
  for (int i = 0; i < a.warmup; ++i) {
    evict();
    pass();
  }
  // Per-stage forward times of the timed passes, stages in network order.
  StageSamples fwd;
  const std::vector<std::string>& stage_names = fwd.names;
  if (a.stages)
    model->set_stage_timer([&](const std::string& name, double seconds) { fwd.add(name, seconds); });
  // Tensor memory: what stays between passes (weights, packed filters, optimizer state)
  // and the high-water mark during the timed passes.
  const size_t resident = tensor_live_bytes();
  reset_tensor_peak_bytes();
  std::vector<double> ms;
  timing_parts = true;
  for (int i = 0; i < a.iters; ++i) {
    evict();
    const auto t0 = std::chrono::steady_clock::now();
    pass();
    ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  model->set_stage_timer(nullptr);
  const auto [fastest, slowest] = std::minmax_element(ms.begin(), ms.end());
  const double median = median_of(ms);
  std::vector<double> stage_median, back_median;  // back: -1 where no backward was recorded
  for (const std::string& name : stage_names) {
    stage_median.push_back(fwd.median(name));
    back_median.push_back(back.median(name));
  }
  const bool show_back = !back.names.empty();
  const long long peak = peak_rss_bytes();
  const size_t tensor_peak = tensor_peak_bytes();
  if (a.json) {
    nlohmann::ordered_json j;
    j["model"] = a.model;
    j["mode"] = a.mode;
    j["backend"] = a.backend;
    j["input_size"] = a.input_size;
    j["batch"] = a.batch;
    j["threads"] = num_threads();
    if (onednn) {
      j["onednn_version"] = onednn_version_text();
    } else {
      j["isa"] = isa_name(active_isa());
      j["winograd"] = winograd_mode() == WinogradMode::Off ? "off" : winograd_mode() == WinogradMode::On ? "on" : "auto";
      j["winograd_filters"] = winograd_filters_mode() == WinogradFilters::Streamed ? "streamed"
                              : winograd_filters_mode() == WinogradFilters::Stored ? "stored"
                                                                                   : "auto";
      j["prepack"] = gemm_prepack_enabled() ? "on" : "off";
    }
    j["iters"] = a.iters;
    j["evict_mb"] = a.evict_mb;
    j["median_ms"] = median;
    j["min_ms"] = *fastest;
    j["max_ms"] = *slowest;
    j["images_per_s"] = median > 0 ? 1000.0 * B / median : 0.0;
    j["peak_rss_bytes"] = peak;
    j["weights_bytes"] = weights;
    j["tensor_resident_bytes"] = resident;
    j["tensor_peak_bytes"] = tensor_peak;
    j["huge_pages"] = tensor_huge_pages() ? "on" : "off";
    j["huge_page_bytes"] = static_cast<long long>(tensor_huge_page_bytes());
    j["times_ms"] = ms;
    if (!forward_part_ms.empty()) {
      j["forward_part_ms"] = median_of(forward_part_ms);
      j["backward_part_ms"] = median_of(backward_part_ms);
    }
    if (a.stages) {
      nlohmann::ordered_json st = nlohmann::ordered_json::array();
      for (size_t i = 0; i < stage_names.size(); ++i) {
        nlohmann::ordered_json e = {{"name", stage_names[i]}, {"median_ms", stage_median[i]}};
        if (show_back && back_median[i] >= 0) e["backward_median_ms"] = back_median[i];
        st.push_back(e);
      }
      j["stages"] = st;
    }
    std::cout << j.dump() << "\n";
    return 0;
  }
  std::printf("%s %s %dx%d batch %d, %d threads (%s): median %.2f ms, min %.2f, max %.2f, %.1f images/s; "
              "peak RSS %.1f MB (weights %.1f MB); tensors %.1f MB between passes, peak %.1f MB "
              "(+%.1f MB during a pass)\n",
              a.model.c_str(), a.mode.c_str(), a.input_size, a.input_size, a.batch, num_threads(),
              onednn ? ("oneDNN " + onednn_version_text()).c_str() : isa_name(active_isa()).c_str(), median, *fastest, *slowest,
              median > 0 ? 1000.0 * B / median : 0.0, peak / 1e6, weights / 1e6, resident / 1e6,
              tensor_peak / 1e6, (static_cast<double>(tensor_peak) - resident) / 1e6);
  if (!forward_part_ms.empty())
    std::printf("medians of the parts: forward (recording the tape) %.2f ms, backward %.2f ms\n",
                median_of(forward_part_ms), median_of(backward_part_ms));
  if (a.stages) {
    double total = 0, back_total = 0;
    for (double t : stage_median) total += t;
    for (double t : back_median) back_total += std::max(t, 0.0);
    if (show_back) {
      std::printf("%-24s %10s %7s %12s %7s %9s\n", "stage", "forward ms", "share", "backward ms",
                  "share", "back/fwd");
      for (size_t i = 0; i < stage_names.size(); ++i) {
        std::printf("%-24s %10.3f %6.1f%%", stage_names[i].c_str(), stage_median[i],
                    total > 0 ? 100.0 * stage_median[i] / total : 0.0);
        if (back_median[i] >= 0)
          std::printf(" %12.3f %6.1f%% %9.2f\n", back_median[i],
                      back_total > 0 ? 100.0 * back_median[i] / back_total : 0.0,
                      stage_median[i] > 0 ? back_median[i] / stage_median[i] : 0.0);
        else
          std::printf(" %12s\n", "-");
      }
      std::printf("%-24s %10.3f %7s %12.3f\n", "sum of stage medians", total, "", back_total);
    } else {
      std::printf("%-24s %10s %7s\n", a.mode == "forward" ? "stage" : "stage (forward part)", "median ms", "share");
      for (size_t i = 0; i < stage_names.size(); ++i)
        std::printf("%-24s %10.3f %6.1f%%\n", stage_names[i].c_str(), stage_median[i],
                    total > 0 ? 100.0 * stage_median[i] / total : 0.0);
      std::printf("%-24s %10.3f\n", "sum of stage medians", total);
    }
  }
  return 0;
}

}  // namespace isplit
