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

void ImportanceAccumulator::add_batch(const Tensor& images, const std::vector<int>& labels,
                                      const std::vector<int64_t>& indices) {
  const int64_t b = images.dim(0);
  if (static_cast<int64_t>(labels.size()) != b || static_cast<int64_t>(indices.size()) != b)
    throw Error("importance: labels/indices do not match the batch");
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
  std::vector<int> targets(b);
  for (int64_t i = 0; i < b; ++i) {
    const float* row = logits.value.data() + i * classes;
    targets[i] = options_.target_label
                     ? labels[i]
                     : static_cast<int>(std::max_element(row, row + classes) - row);
    if (targets[i] < 0 || targets[i] >= classes)
      throw Error("importance: label " + std::to_string(targets[i]) + " outside the model's " +
                  std::to_string(classes) + " classes");
    seed[i * classes + targets[i]] = 1.0f;
  }
  tape.backward(logits, seed);

  const size_t first = records_.size();
  for (int64_t i = 0; i < b; ++i) {
    ImageRecord r;
    r.index = indices[i];
    r.label = labels[i];
    r.target = targets[i];
    r.map_sums.assign(names_.size(), 0.0);
    records_.push_back(std::move(r));
  }
  for (size_t p = 0; p < names_.size(); ++p) {
    const Var& a = outs.at(names_[p]);
    const auto pre = pres.find(names_[p]);
    const Tensor g = tape.grad(pre != pres.end() ? pre->second : a);
    const int64_t c = a.value.dim(1), hw = a.value.dim(2) * a.value.dim(3);
    // One image per task; each image's sum is formed in a fixed order.
    parallel_for(b, [&](int64_t i0, int64_t i1) {
      std::vector<double> map(static_cast<size_t>(hw)), scratch;
      for (int64_t i = i0; i < i1; ++i) {
        cam_map(options_.method, a.value.data() + i * c * hw, g.data() + i * c * hw, c, hw,
                map.data(), scratch);
        double s = 0.0;
        for (int64_t k = 0; k < hw; ++k) s += map[k];
        records_[first + i].map_sums[p] = s;
      }
    });
  }
}

void ImportanceAccumulator::merge(const ImportanceAccumulator& other) {
  if (other.fingerprint() != fingerprint())
    throw Error("importance: cannot merge results of different settings");
  records_.insert(records_.end(), other.records_.begin(), other.records_.end());
}

CuiResult ImportanceAccumulator::result(const std::vector<int>& classes) const {
  std::vector<const ImageRecord*> order;
  for (const auto& r : records_)
    if (classes.empty() || std::find(classes.begin(), classes.end(), r.label) != classes.end())
      order.push_back(&r);
  std::sort(order.begin(), order.end(),
            [](const ImageRecord* x, const ImageRecord* y) { return x->index < y->index; });
  for (size_t i = 1; i < order.size(); ++i)
    if (order[i]->index == order[i - 1]->index)
      throw Error("importance: image " + std::to_string(order[i]->index) +
                  " was recorded twice (overlapping shards?)");
  const size_t np = names_.size();
  std::vector<double> total(np, 0.0);
  std::map<int, std::vector<double>> by_class;
  CuiResult res;
  for (const ImageRecord* r : order) {
    auto& cls = by_class[r->label];
    cls.resize(np, 0.0);
    for (size_t p = 0; p < np; ++p) {
      total[p] += r->map_sums[p];
      cls[p] += r->map_sums[p];
    }
    res.images_by_class[r->label] += 1;
  }
  res.images = static_cast<int64_t>(order.size());
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
    pt.cui = cui_of(total[p], res.images, p);
    logs[p] = log10_cui(pt.cui);
    res.points.push_back(pt);
  }
  const auto cand = strict_local_maxima(logs);
  for (size_t p = 0; p < np; ++p) {
    res.points[p].candidate = cand[p];
    if (std::isfinite(logs[p]) && (res.global_max < 0 || logs[p] > logs[res.global_max]))
      res.global_max = static_cast<int>(p);
  }
  for (auto& [label, sums] : by_class) {
    std::vector<double> cuis(np), lg(np);
    for (size_t p = 0; p < np; ++p) {
      cuis[p] = cui_of(sums[p], res.images_by_class[label], p);
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
  j["format"] = "isplit-partial-1";
  j["fingerprint"] = fingerprint();
  j["settings"] = nlohmann::json::parse(settings_json);
  nlohmann::json recs = nlohmann::json::array();
  for (const auto& r : records_)
    recs.push_back({{"index", r.index}, {"label", r.label}, {"target", r.target},
                    {"sums", r.map_sums}});
  j["records"] = std::move(recs);
  const std::string tmp = path + ".tmp." + std::to_string(getpid());
  {
    std::ofstream f(tmp);
    if (!f) throw Error(path + ": cannot open for writing");
    f << j.dump() << "\n";  // nlohmann writes doubles with round-trip precision
    if (!f.flush()) {
      std::remove(tmp.c_str());
      throw Error(path + ": write failed");
    }
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    throw Error(path + ": cannot rename temporary file into place");
  }
}

void ImportanceAccumulator::load_partial(const std::string& path) {
  std::ifstream f(path);
  if (!f) throw Error(path + ": cannot open");
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(f);
  } catch (const std::exception& e) {
    throw Error(path + ": not a partial-sums file (" + std::string(e.what()) + ")");
  }
  try {
    if (j.at("format") != "isplit-partial-1") throw Error(path + ": unknown format");
    if (j.at("fingerprint").get<std::string>() != fingerprint())
      throw Error(path + ": settings differ from the other parts (model, input size, method, "
                         "target, relu-grad or points)");
    for (const auto& r : j.at("records")) {
      ImageRecord rec;
      rec.index = r.at("index").get<int64_t>();
      rec.label = r.at("label").get<int>();
      rec.target = r.at("target").get<int>();
      rec.map_sums = r.at("sums").get<std::vector<double>>();
      if (rec.map_sums.size() != names_.size())
        throw Error(path + ": record of image " + std::to_string(rec.index) +
                    " has the wrong number of points");
      records_.push_back(std::move(rec));
    }
  } catch (const nlohmann::json::exception& e) {
    throw Error(path + ": malformed partial-sums file (" + std::string(e.what()) + ")");
  }
}

}  // namespace isplit
