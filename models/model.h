// Models as a sequence of named stages (torchvision's top-level modules), with cut
// points, parameter names equal to torchvision's state_dict() keys and safetensors I/O.
#pragma once
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "layers/modules.h"

namespace isplit {

class SafetensorsReader;

// One reportable cut point: the output of a named top-level module.
struct CutPoint {
  std::string name;
  bool is_default;  // part of the default set (the tensors one would transmit)
};

// Per-stage figures for `isplit info`.
struct StageInfo {
  std::string name;
  Shape out_shape;       // [N, C, H, W] or [N, F]
  double flops = 0;      // of this stage alone
  int64_t params = 0;    // learnable parameters of this stage
  bool cut = false;      // a cut point
  bool is_default = false;
};

class Model {
 public:
  // Called with (cut point name, its output) during forward.
  using Observer = std::function<void(const std::string&, const Var&)>;

  virtual ~Model() = default;
  // "vgg16" or "resnet50".
  const std::string& arch() const { return arch_; }
  // Width of the classifier.
  int64_t num_classes() const { return num_classes_; }
  // The cut point a head model ends at ("" for the whole network).
  const std::string& head_cut() const { return stop_after_; }
  // Throws CutPointError when a head was asked for a cut point the builder never reached.
  void check_head_built() const;

  // Runs the network on x [N,3,H,W]. With a tape, records the backward, each stage's nodes
  // in a tape section named as the stage timer names it. observe is called for every cut
  // point output; with stop_after, returns that cut point's output.
  Var forward(Tape* tape, const Var& x, const Observer& observe = nullptr,
              const std::string& stop_after = "");
  // forward that also reports, for cut points whose output is a ReLU's output, that
  // ReLU's input (observe_pre_relu(name, input)); the authors' hooks on torchvision's
  // in-place ReLUs see the gradient of that tensor.
  Var forward(Tape* tape, const Var& x, const Observer& observe, const std::string& stop_after,
              const Observer& observe_pre_relu);
  // Inference convenience: logits [N, classes] of a batch.
  Tensor predict(const Tensor& x);

  // All cut points in network order (all=false: only the default set).
  std::vector<CutPoint> cut_points(bool all = true) const;
  // True when name is a cut point of this model.
  bool has_cut_point(const std::string& name) const;
  // Shapes, FLOPs and parameter counts per stage for an input [N,3,H,W].
  std::vector<StageInfo> stage_info(const Shape& input) const;

  // Parameters and buffers with torchvision's state_dict() names, in its order. plain = true
  // unpacks the weights that a packed model keeps only in packed form (see
  // pack_for_inference) so that every value can be read and written; plain = false leaves
  // them as they are: shapes and counts are right, released values are undefined tensors.
  NamedParams named_parameters(bool plain = true);
  // Total learnable parameter count.
  int64_t parameter_count();
  // Switches every module between training and evaluation mode; dropout=false keeps
  // Dropout layers in evaluation mode (identity) even when training.
  void set_training(bool training, bool dropout = true);
  // Zeroes every parameter gradient.
  void zero_grad();
  // Reseeds every Dropout layer's mask generator from one seed (each layer differently),
  // so that a training step's masks depend only on that seed.
  void seed_dropout(uint64_t seed);

  // Loads weights; every parameter and buffer must be present with its exact shape and
  // nothing else may be (num_batches_tracked is ignored; a head model ignores tensors
  // that are not its own, as a whole network's file has its tail too). Throws Error naming the file
  // and the tensor.
  void load(const SafetensorsReader& file);
  // Loads weights from a .safetensors path (see load).
  void load(const std::string& path);
  // Saves weights as float32 safetensors with torchvision names (atomically).
  void save(const std::string& path);
  // Folds every eval-mode BatchNorm into the convolution before it and fuses a ReLU that
  // follows into the convolution (inference only: a forward with a tape then throws; the
  // outputs of folded convolutions and of BatchNorms before a fused ReLU are then no
  // longer cut points).
  void fold_batchnorm();
  // True after fold_batchnorm().
  bool folded() const { return folded_; }
  // Prepares the fast inference paths (on = false undoes it), each made on first use:
  // convolutions that Winograd computes keep transformed filters (only layers whose input
  // shape makes Winograd pay, see winograd_pays; up to 4x their weights' memory, or, with
  // WinogradFilters::Streamed, their taps reordered in place of the plain weights), the
  // others their weights packed for the GEMM kernels, which then replace the plain weights
  // (unpacked bit for bit when named_parameters(), save() or training needs them;
  // ISPLIT_PREPACK=0 turns packing off), and a forward that wants no gradient of the
  // classifier's weights runs adaptive pool -> flatten -> linear as one smaller linear map
  // when the pool upsamples a small input (VGG16 below 224x224). Evaluation forwards without
  // weight gradients use them; with a tape (the importance pass) ResNet-50's bottlenecks
  // also run each conv with its BatchNorm folded into a copy of its weights (see
  // Conv2d::forward_bn). load() refreshes them and training mode drops them.
  void pack_for_inference(bool on = true);
  // True while packed for inference.
  bool packed() const { return packed_; }

  // Called by forward() after each stage it runs with the stage's name and its wall time
  // in seconds (a pool -> flatten -> linear run as one map is reported once, as
  // "avgpool+fc" style names joined by '+').
  using StageTimer = std::function<void(const std::string&, double)>;
  // Installs (or, with nullptr, removes) the per-stage timer used for profiling.
  void set_stage_timer(StageTimer timer) { stage_timer_ = std::move(timer); }

 protected:
  struct Stage {
    std::string name;
    std::unique_ptr<Module> module;
    bool cut = false;
    bool is_default = false;
    bool hidden = false;  // output folded away: not observable any more
  };
  // stop_after: build only the head up to that cut point ("" = the whole network);
  // names_only: record stage names without constructing any module (see cut_point_names).
  Model(std::string arch, int64_t num_classes, std::string stop_after, bool names_only)
      : arch_(std::move(arch)),
        num_classes_(num_classes),
        stop_after_(std::move(stop_after)),
        names_only_(names_only) {}
  // Appends a stage; make() constructs its module, and is not called past a head's last
  // stage or when only names are recorded (so those take no memory and no time).
  void add(std::string name, const std::function<std::unique_ptr<Module>()>& make,
           bool cut = false, bool dflt = false);
  std::vector<Stage> stages_;

 private:
  std::string arch_;
  int64_t num_classes_;
  std::string stop_after_;
  bool names_only_ = false;
  bool complete_ = false;
  bool folded_ = false;
  bool packed_ = false;
  StageTimer stage_timer_;
};

// Names of the architectures build_model knows.
std::vector<std::string> model_names();
// Builds a model by name with torchvision's default initialisation from a seed. With a
// head cut point, only the stages up to and including it are built (their weights get the
// same initial values as in the whole network); the rest never takes memory. random_init
// false leaves every weight zero instead (a model that is only measured, or whose
// parameters are all about to be set).
std::unique_ptr<Model> build_model(const std::string& name, int64_t num_classes = 1000,
                                   uint64_t seed = 0, const std::string& head = "",
                                   bool random_init = true);
// Builds a model (or its head, see build_model) and loads weights; num_classes <= 0 takes
// the width from the file. A head ignores the file's tensors of later stages. Every
// parameter comes from the file (a missing one is an error), so none is drawn at random.
std::unique_ptr<Model> load_model(const std::string& name, const std::string& weights_path,
                                  int64_t num_classes = 0, const std::string& head = "");

// Builders behind build_model; random_init false leaves every weight zero (for a model
// whose parameters are all about to be loaded: drawing them costs about half a second for
// ResNet-50 and VGG16 on a server core).
std::unique_ptr<Model> make_vgg16(int64_t num_classes, uint64_t seed, const std::string& head,
                                  bool names_only = false, bool random_init = true);
std::unique_ptr<Model> make_resnet50(int64_t num_classes, uint64_t seed, const std::string& head,
                                     bool names_only = false, bool random_init = true);
// The cut points of an architecture, in network order, without building any weights.
std::vector<CutPoint> cut_point_names(const std::string& name, bool all = true);

// An unknown cut point, or a head asked to end at a stage that is not a cut point.
class CutPointError : public Error {
 public:
  using Error::Error;
};

}  // namespace isplit
