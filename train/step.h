// One training step and the evaluation pass, the building blocks of `isplit train`,
// `isplit eval` and bottleneck training.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "data/dataset.h"
#include "data/image.h"
#include "models/model.h"
#include "train/optimizer.h"

namespace isplit {

// Loss and accuracy of one training batch (measured on the forward of that step).
struct StepResult {
  double loss = 0;      // mean cross-entropy (with label smoothing when set)
  int64_t correct = 0;  // top-1 hits
  int64_t count = 0;    // batch size
};

// One optimisation step on a batch, the model already in training mode: forward with a
// tape, mean cross-entropy against labels (label_smoothing as PyTorch's), backward into
// the parameter gradients, optimizer update with lr, gradients zeroed again.
StepResult train_step(Model& model, Optimizer& optimizer, const Tensor& images,
                      const std::vector<int>& labels, double lr, double label_smoothing = 0.0);

// Result of evaluating a model over a data set.
struct EvalResult {
  int64_t count = 0;           // images evaluated
  double loss = 0;             // mean cross-entropy (no smoothing)
  double top1 = 0, top5 = 0;   // fractions in [0, 1]
  std::vector<std::string> class_names;  // the data set's
  std::vector<int64_t> confusion;        // [labels x predictions], row-major, classes^2
  size_t skipped = 0;                    // images that could not be read
  std::vector<std::string> errors;       // first messages for skipped images
  double seconds = 0;
  // Images of label c in the data.
  int64_t class_count(int c) const;
  // Accuracy on label c (NaN when the class has no images).
  double class_accuracy(int c) const;
};

// Options of an evaluation pass.
struct EvalOptions {
  int input_size = 224;
  int batch_size = 32;
  Normalize norm;
  int decode_threads = 0;
  // Called after each batch with (images done, images total).
  std::function<void(int64_t, int64_t)> progress;
  // Logits [N, classes] of a batch of images; empty: model.predict (another backend may
  // compute them from the model's weights).
  std::function<Tensor(const Tensor&)> forward;
};

// Evaluates `model` (switched to evaluation mode) on `indices` of `data`. Throws Error when
// a label is outside the model's classes or the data set has more classes than the model.
EvalResult evaluate(Model& model, const Dataset& data, const std::vector<size_t>& indices,
                    const EvalOptions& options);

// Confusion matrix as CSV: a header "label,pred_<name>...", one row per label.
std::string confusion_csv(const EvalResult& r);
// Per-class accuracy as CSV: "label,name,images,correct,accuracy".
std::string per_class_csv(const EvalResult& r);

// Checks that every label of `data` fits a classifier of `classes` outputs; throws Error
// naming the data set otherwise.
void check_labels_fit(const Dataset& data, int64_t classes, const std::string& what);

}  // namespace isplit
