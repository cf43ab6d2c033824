// Training step and evaluation pass.
#include "train/step.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <sstream>

#include "data/loader.h"

namespace isplit {

namespace {

int argmax_row(const float* row, int64_t n) {
  return static_cast<int>(std::max_element(row, row + n) - row);
}

}  // namespace

StepResult train_step(Model& model, Optimizer& optimizer, const Tensor& images,
                      const std::vector<int>& labels, double lr, double label_smoothing) {
  if (images.ndim() != 4 || images.dim(0) != static_cast<int64_t>(labels.size()))
    throw Error("train step: " + std::to_string(labels.size()) + " labels for images " +
                shape_str(images.shape()));
  StepResult r;
  {
    Tape tape(/*param_grads=*/true);
    Var out = model.forward(&tape, tape.input(images));
    Var loss = cross_entropy_loss(&tape, out, labels, label_smoothing);
    r.loss = loss.value[0];
    r.count = static_cast<int64_t>(labels.size());
    const int64_t C = out.value.dim(1);
    for (int64_t n = 0; n < r.count; ++n)
      if (argmax_row(out.value.data() + n * C, C) == labels[n]) ++r.correct;
    // Only the parameters' gradients are wanted: activations and their gradients go back to
    // the block cache as the backward passes them.
    tape.backward(loss, Tensor::full({}, 1.0f), /*release=*/true);
  }
  if (!std::isfinite(r.loss))
    throw Error("training diverged: the loss is " + std::to_string(r.loss) +
                " (lower the learning rate)");
  optimizer.step(lr);
  optimizer.zero_grad();
  return r;
}

int64_t EvalResult::class_count(int c) const {
  const int64_t k = static_cast<int64_t>(class_names.size());
  int64_t s = 0;
  for (int64_t j = 0; j < k; ++j) s += confusion[c * k + j];
  return s;
}

double EvalResult::class_accuracy(int c) const {
  const int64_t n = class_count(c);
  if (n == 0) return std::numeric_limits<double>::quiet_NaN();
  return double(confusion[c * static_cast<int64_t>(class_names.size()) + c]) / double(n);
}

void check_labels_fit(const Dataset& data, int64_t classes, const std::string& what) {
  const size_t k = data.class_names().size();
  if (static_cast<int64_t>(k) > classes)
    throw Error(what + ": " + std::to_string(k) + " classes (labels up to " +
                std::to_string(k - 1) + ") do not fit a classifier with " +
                std::to_string(classes) + " outputs (label out of range; see --num-classes)");
}

EvalResult evaluate(Model& model, const Dataset& data, const std::vector<size_t>& indices,
                    const EvalOptions& options) {
  const auto t0 = std::chrono::steady_clock::now();
  check_labels_fit(data, model.num_classes(), data.source(indices.empty() ? 0 : indices[0]));
  EvalResult r;
  r.class_names = data.class_names();
  const int64_t K = static_cast<int64_t>(r.class_names.size());
  const int64_t C = model.num_classes();
  r.confusion.assign(static_cast<size_t>(K * K), 0);
  model.set_training(false);
  BatchLoader loader(data, indices, options.batch_size, options.input_size, options.norm,
                     options.decode_threads);
  double loss_sum = 0;
  int64_t hit1 = 0, hit5 = 0;
  Batch batch;
  while (loader.next(batch)) {
    const Tensor logits = options.forward ? options.forward(batch.images) : model.predict(batch.images);
    for (size_t n = 0; n < batch.labels.size(); ++n) {
      const float* row = logits.data() + static_cast<int64_t>(n) * C;
      const int label = batch.labels[n];
      // log-softmax in double for the loss
      const float mx = *std::max_element(row, row + C);
      double se = 0;
      for (int64_t j = 0; j < C; ++j) se += std::exp(double(row[j]) - mx);
      loss_sum += std::log(se) + mx - row[label];
      // rank of the label: classes scoring strictly higher (ties go to the lower index,
      // as argmax does)
      int64_t above = 0;
      for (int64_t j = 0; j < C; ++j)
        if (row[j] > row[label] || (row[j] == row[label] && j < label)) ++above;
      if (above == 0) ++hit1;
      if (above < 5) ++hit5;
      const int pred = argmax_row(row, C);
      // Predictions outside the data set's classes (a wider classifier) count as wrong and
      // are not in the K x K matrix.
      if (pred < K) ++r.confusion[static_cast<size_t>(label * K + pred)];
      ++r.count;
    }
    loader.recycle(std::move(batch));
    if (options.progress) options.progress(r.count, static_cast<int64_t>(indices.size()));
  }
  r.skipped = loader.skipped();
  r.errors = loader.errors();
  if (r.count > 0) {
    r.loss = loss_sum / double(r.count);
    r.top1 = double(hit1) / double(r.count);
    r.top5 = double(hit5) / double(r.count);
  }
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return r;
}

namespace {

std::string csv_field(const std::string& s) {
  if (s.find_first_of(",\"\n\r") == std::string::npos) return s;
  std::string out = "\"";
  for (char c : s) out += c == '"' ? std::string("\"\"") : std::string(1, c);
  return out + "\"";
}

}  // namespace

std::string confusion_csv(const EvalResult& r) {
  const size_t K = r.class_names.size();
  std::ostringstream os;
  os << "label";
  for (const std::string& n : r.class_names) os << "," << csv_field("pred_" + n);
  os << "\n";
  for (size_t i = 0; i < K; ++i) {
    os << csv_field(r.class_names[i]);
    for (size_t j = 0; j < K; ++j) os << "," << r.confusion[i * K + j];
    os << "\n";
  }
  return os.str();
}

std::string per_class_csv(const EvalResult& r) {
  std::ostringstream os;
  os << "label,name,images,correct,accuracy\n";
  const size_t K = r.class_names.size();
  for (size_t c = 0; c < K; ++c) {
    const int64_t n = r.class_count(static_cast<int>(c));
    os << c << "," << csv_field(r.class_names[c]) << "," << n << "," << r.confusion[c * K + c] << ",";
    if (n > 0) os << r.class_accuracy(static_cast<int>(c));
    os << "\n";
  }
  return os.str();
}

}  // namespace isplit
