#include "isplit/analysis/importance.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>

#include "engine/parallel.h"
#include "isplit/analysis/report.h"

namespace isplit {

std::vector<bool> strict_local_maxima(const std::vector<double>& v) {
  const size_t n = v.size();
  std::vector<bool> out(n, false);
  for (size_t i = 0; i < n; ++i) {
    if (!std::isfinite(v[i])) continue;
    const bool left = i == 0 || v[i] > v[i - 1];
    const bool right = i + 1 == n || v[i] > v[i + 1];
    out[i] = n > 1 && left && right;
  }
  return out;
}

double log10_cui(double cui) {
  return cui > 0.0 ? std::log10(cui) : -std::numeric_limits<double>::infinity();
}

ImportanceAccumulator::ImportanceAccumulator(Model& model, const ImportanceOptions& options,
                                             int64_t input_size)
    : model_(model), options_(options), input_size_(input_size) {
  if (model.folded())
    throw Error("importance: the model's BatchNorm is folded; gradients need the unfolded net");
  const auto info = model.stage_info({1, 3, input_size, input_size});
  for (const CutPoint& c : model.cut_points(options.all_points)) {
    for (const auto& s : info)
      if (s.name == c.name) {
        if (s.out_shape.size() != 4) throw Error("importance: cut point " + c.name + " is not 4-d");
        shapes_.push_back({s.out_shape[1], s.out_shape[2], s.out_shape[3]});
      }
    names_.push_back(c.name);
  }
}

std::string ImportanceAccumulator::fingerprint() const {
  nlohmann::json j;
  j["model"] = model_.arch();
  j["num_classes"] = model_.num_classes();
  j["input_size"] = input_size_;
  j["method"] = cam_method_name(options_.method);
  j["target"] = options_.target_label ? "label" : "predicted";
  j["relu_grad"] = options_.relu_grad_pre ? "pre" : "post";
  j["points"] = names_;
  return j.dump();
}

void ImportanceAccumulator::add_batch(const Tensor& images, const std::vector<int>& labels) {
  const int64_t b = images.dim(0);
  if (static_cast<int64_t>(labels.size()) != b)
    throw Error("importance: labels do not match the batch");
  model_.set_training(false);
  Tape tape = Tape::activations_only();
  std::map<std::string, Var> outs, pres;
  Var logits = model_.forward(
      &tape, tape.input(images), [&](const std::string& n, const Var& v) { outs[n] = v; }, "",
      options_.relu_grad_pre ? Model::Observer([&](const std::string& n, const Var& v) { pres[n] = v; })
                             : Model::Observer());
  // Eval mode: images are independent, so the gradient of the sum of the targets gives
  // every image its own gradient in one backward.
  const int64_t classes = logits.value.dim(1);
  Tensor seed = Tensor::zeros(logits.value.shape());
  for (int64_t i = 0; i < b; ++i) {
    const float* row = logits.value.data() + i * classes;
    const int target = options_.target_label
                           ? labels[i]
                           : static_cast<int>(std::max_element(row, row + classes) - row);
    if (target < 0 || target >= classes)
      throw Error("importance: label " + std::to_string(target) + " outside the model's " +
                  std::to_string(classes) + " classes");
    seed[i * classes + target] = 1.0f;
  }
  // Only the cut points' gradients are read: the rest, and the values the backward holds,
  // go back to the block cache as the walk passes them.
  for (const auto& o : outs) tape.retain_grad(o.second);
  for (const auto& o : pres) tape.retain_grad(o.second);
  tape.backward(logits, seed, /*release=*/true);

  const size_t points = names_.size();
  std::vector<Tensor> acts(points), grads(points);
  for (size_t p = 0; p < points; ++p) {
    const Var& a = outs.at(names_[p]);
    const auto pre = pres.find(names_[p]);
    acts[p] = a.value;
    grads[p] = tape.grad(pre != pres.end() ? pre->second : a);
  }
  // One task per (image, cut point), each total formed in a fixed order, so where a task
  // runs never changes a result. The tasks are dealt to one bin per thread, dearest first,
  // each to the bin with the least work so far: the cut points' sizes differ by 8x or more,
  // and at batch 1 there is no other way to keep both cores busy.
  const int64_t tasks = b * static_cast<int64_t>(points);
  auto cost = [&](int64_t t) { return acts[static_cast<size_t>(t) % points].numel() / b; };
  std::vector<int64_t> by_cost(static_cast<size_t>(tasks));
  for (int64_t t = 0; t < tasks; ++t) by_cost[static_cast<size_t>(t)] = t;
  std::stable_sort(by_cost.begin(), by_cost.end(), [&](int64_t x, int64_t y) { return cost(x) > cost(y); });
  const int64_t nbins = std::max<int64_t>(1, std::min<int64_t>(num_threads(), tasks));
  std::vector<std::vector<int64_t>> bins(static_cast<size_t>(nbins));
  std::vector<int64_t> load(static_cast<size_t>(nbins), 0);
  for (int64_t t : by_cost) {
    const size_t least = static_cast<size_t>(std::min_element(load.begin(), load.end()) - load.begin());
    bins[least].push_back(t);
    load[least] += cost(t);
  }
  std::vector<double> sums(static_cast<size_t>(tasks));
  parallel_for(nbins, [&](int64_t b0, int64_t b1) {
    std::vector<double> map, scratch;
    for (int64_t bin = b0; bin < b1; ++bin)
      for (int64_t t : bins[static_cast<size_t>(bin)]) {
        const int64_t i = t / static_cast<int64_t>(points);
        const size_t p = static_cast<size_t>(t) % points;
        const Tensor& a = acts[p];
        const int64_t c = a.dim(1), hw = a.dim(2) * a.dim(3);
        map.resize(static_cast<size_t>(hw));
        cam_map(options_.method, a.data() + i * c * hw, grads[p].data() + i * c * hw, c, hw,
                map.data(), scratch);
        double s = 0.0;
        for (int64_t k = 0; k < hw; ++k) s += map[k];
        sums[static_cast<size_t>(t)] = s;  // t = i * points + p
      }
  });
  for (int64_t i = 0; i < b; ++i) {
    auto& cls = by_class_[labels[i]];
    cls.resize(names_.size());
    for (size_t p = 0; p < names_.size(); ++p) cls[p].add(sums[i * names_.size() + p]);
    count_by_class_[labels[i]] += 1;
  }
  images_ += b;
}

void ImportanceAccumulator::set_shard(int k, int n) {
  if (n < 1 || k < 0 || k >= n) throw Error("importance: shard K/N needs 0 <= K < N");
  shards_ = {{k, n}};
}

void ImportanceAccumulator::add_shards(const std::set<std::pair<int, int>>& other,
                                       const std::string& where) {
  for (const auto& s : other) {
    if (shards_.count(s))
      throw Error(where + ": shard " + std::to_string(s.first) + "/" + std::to_string(s.second) +
                  " is already included (overlapping parts)");
    if (!shards_.empty() && shards_.begin()->second != s.second)
      throw Error(where + ": shard " + std::to_string(s.first) + "/" + std::to_string(s.second) +
                  " does not split the data like the other parts (N differs)");
  }
  shards_.insert(other.begin(), other.end());
}

void ImportanceAccumulator::merge(const ImportanceAccumulator& other) {
  if (other.fingerprint() != fingerprint())
    throw Error("importance: cannot merge results of different settings");
  add_shards(other.shards_, "merge");
  for (const auto& [label, sums] : other.by_class_) {
    auto& mine = by_class_[label];
    mine.resize(names_.size());
    for (size_t p = 0; p < sums.size(); ++p) mine[p].add(sums[p]);
    count_by_class_[label] += other.count_by_class_.at(label);
  }
  images_ += other.images_;
}

CuiResult ImportanceAccumulator::result(const std::vector<int>& classes) const {
  const size_t np = names_.size();
  std::vector<ExactSum> total(np);
  CuiResult res;
  for (const auto& [label, sums] : by_class_) {
    if (!classes.empty() && std::find(classes.begin(), classes.end(), label) == classes.end())
      continue;
    for (size_t p = 0; p < np; ++p) total[p].add(sums[p]);
    res.images_by_class[label] = count_by_class_.at(label);
    res.images += count_by_class_.at(label);
  }
  auto cui_of = [&](double sum, int64_t count, size_t p) {
    const double hw = double(shapes_[p][1] * shapes_[p][2]);
    return count ? std::fabs(sum / double(count) / hw) : 0.0;
  };
  std::vector<double> logs(np);
  for (size_t p = 0; p < np; ++p) {
    CuiPoint pt;
    pt.name = names_[p];
    pt.shape = shapes_[p];
    pt.out_bytes = shape_numel(shapes_[p]) * static_cast<int64_t>(sizeof(float));
    pt.cui = cui_of(total[p].value(), res.images, p);
    logs[p] = log10_cui(pt.cui);
    res.points.push_back(pt);
  }
  const auto cand = strict_local_maxima(logs);
  for (size_t p = 0; p < np; ++p) {
    res.points[p].candidate = cand[p];
    if (std::isfinite(logs[p]) && (res.global_max < 0 || logs[p] > logs[res.global_max]))
      res.global_max = static_cast<int>(p);
  }
  for (const auto& [label, count] : res.images_by_class) {
    const auto& sums = by_class_.at(label);
    std::vector<double> cuis(np), lg(np);
    for (size_t p = 0; p < np; ++p) {
      cuis[p] = cui_of(sums[p].value(), count, p);
      lg[p] = log10_cui(cuis[p]);
    }
    res.cui_by_class[label] = cuis;
    res.candidates_by_class[label] = strict_local_maxima(lg);
  }
  return res;
}

void ImportanceAccumulator::save_partial(const std::string& path,
                                         const std::string& settings_json) const {
  nlohmann::json j;
  j["format"] = "isplit-partial-2";
  j["fingerprint"] = fingerprint();
  j["settings"] = nlohmann::json::parse(settings_json);
  nlohmann::json shards = nlohmann::json::array();
  for (const auto& s : shards_) shards.push_back({s.first, s.second});
  j["shards"] = shards;
  nlohmann::json classes = nlohmann::json::array();
  for (const auto& [label, sums] : by_class_) {
    std::vector<std::string> hex;
    for (const auto& x : sums) hex.push_back(x.to_hex());
    classes.push_back({{"label", label}, {"images", count_by_class_.at(label)}, {"sums", hex}});
  }
  j["classes"] = classes;
  write_file_atomic(path, j.dump() + "\n");
}

std::string ImportanceAccumulator::load_partial(const std::string& path) {
  std::ifstream f(path);
  if (!f) throw Error(path + ": cannot open");
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(f);
  } catch (const std::exception& e) {
    throw Error(path + ": not a partial-sums file (" + std::string(e.what()) + ")");
  }
  try {
    if (j.at("format") != "isplit-partial-2") throw Error(path + ": unknown format");
    if (j.at("fingerprint").get<std::string>() != fingerprint())
      throw Error(path + ": settings differ from the other parts (model, input size, method, "
                         "target, relu-grad or points)");
    std::set<std::pair<int, int>> shards;
    for (const auto& s : j.at("shards")) shards.insert({s.at(0).get<int>(), s.at(1).get<int>()});
    // A fresh accumulator (no image yet) takes the part's shards as its own.
    if (images_ == 0 && shards_ == std::set<std::pair<int, int>>{{0, 1}}) shards_.clear();
    add_shards(shards, path);
    for (const auto& c : j.at("classes")) {
      const int label = c.at("label").get<int>();
      const auto hex = c.at("sums").get<std::vector<std::string>>();
      if (hex.size() != names_.size())
        throw Error(path + ": class " + std::to_string(label) + " has the wrong number of points");
      auto& mine = by_class_[label];
      mine.resize(names_.size());
      for (size_t p = 0; p < hex.size(); ++p) mine[p].add(ExactSum::from_hex(hex[p]));
      const int64_t n = c.at("images").get<int64_t>();
      count_by_class_[label] += n;
      images_ += n;
    }
    return j.at("settings").dump();
  } catch (const nlohmann::json::exception& e) {
    throw Error(path + ": malformed partial-sums file (" + std::string(e.what()) + ")");
  }
}

}  // namespace isplit
