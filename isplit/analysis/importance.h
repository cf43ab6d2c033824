// I-SPLIT importance: per image, one forward and one backward of the target score;
// per cut point, the class-activation map of every image; the Cumulative Importance
// CUI = |sum(mean map) / (H*W)| over the images (overall and per class), and the split
// candidates as the strict local maxima of log10(CUI).
#pragma once
#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "isplit/analysis/cam.h"
#include "isplit/analysis/exact_sum.h"
#include "models/model.h"

namespace isplit {

struct ImportanceOptions {
  CamMethod method = CamMethod::GradCam;
  bool target_label = false;   // target score: ground-truth label (else predicted class)
  bool relu_grad_pre = false;  // G of a ReLU output point taken before the ReLU (authors' hooks)
  bool all_points = false;     // every cut point (else the default set)
};

// One cut point of the result.
struct CuiPoint {
  std::string name;
  Shape shape;          // C, H, W
  int64_t out_bytes = 0;
  double cui = 0.0;
  bool candidate = false;
};

struct CuiResult {
  std::vector<CuiPoint> points;
  int global_max = -1;                                  // index into points, -1 if all zero
  std::map<int, std::vector<double>> cui_by_class;      // label -> per point
  std::map<int, std::vector<bool>> candidates_by_class; // label -> per point
  std::map<int, int64_t> images_by_class;
  int64_t images = 0;
};

// Strict local maxima of values (first and last count when strictly above their one
// neighbour); -inf (a zero CUI) is never a candidate.
std::vector<bool> strict_local_maxima(const std::vector<double>& values);
// log10 of a CUI, -inf for zero.
double log10_cui(double cui);

// Streams images through the model. Per cut point it keeps, overall and per class, the
// exact sum (ExactSum) of every image's map total: memory is independent of the number
// of images, and since exact sums do not depend on the order of their terms, the result
// is the same bit for bit whatever the batch size, thread count or sharding (merge() of
// shards gives exactly the single-run result).
class ImportanceAccumulator {
 public:
  // Prepares the cut points of model for inputs of size input_size.
  ImportanceAccumulator(Model& model, const ImportanceOptions& options, int64_t input_size);
  // Runs one forward and one backward on a batch [B,3,S,S] and adds every image.
  void add_batch(const Tensor& images, const std::vector<int>& labels);
  // Says which shard (k of n) this accumulator covers (default 0 of 1).
  void set_shard(int k, int n);
  // Adds the sums of another accumulator over other images (same settings, other shard).
  void merge(const ImportanceAccumulator& other);
  // Number of images added.
  int64_t images() const { return images_; }
  // The CUI curves and candidates over the images whose label is in classes (empty: all).
  CuiResult result(const std::vector<int>& classes = {}) const;
  // Writes the sums as a partial-sums file (JSON, exact integers in hex), atomically.
  void save_partial(const std::string& path, const std::string& settings_json) const;
  // Adds a partial-sums file written by save_partial; checks settings and shard overlap.
  // Returns the settings object it was saved with (JSON text).
  std::string load_partial(const std::string& path);
  // Cut point names, in network order.
  const std::vector<std::string>& point_names() const { return names_; }
  // Settings that must agree between shards (model, input size, method, points...).
  std::string fingerprint() const;
  // Shards covered, as (k, n) pairs.
  const std::set<std::pair<int, int>>& shards() const { return shards_; }

 private:
  Model& model_;
  ImportanceOptions options_;
  int64_t input_size_;
  std::vector<std::string> names_;
  std::vector<Shape> shapes_;  // C, H, W
  std::map<int, std::vector<ExactSum>> by_class_;  // label -> per point
  std::map<int, int64_t> count_by_class_;
  int64_t images_ = 0;
  std::set<std::pair<int, int>> shards_{{0, 1}};
  void add_shards(const std::set<std::pair<int, int>>& other, const std::string& where);
};

}  // namespace isplit
