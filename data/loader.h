// BatchLoader: decodes and preprocesses dataset samples on background threads and hands
// them out as [B,3,S,S] batches, in index order whatever the thread count.
#pragma once
#include <condition_variable>
#include <cstddef>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "data/augment.h"
#include "data/dataset.h"
#include "data/image.h"
#include "engine/tensor.h"

namespace isplit {

// One batch of preprocessed samples.
struct Batch {
  Tensor images;               // [B,3,S,S], normalized
  std::vector<int> labels;     // B dataset labels
  std::vector<size_t> indices; // B dataset indices
};

// How the loader preprocesses samples.
struct LoaderOptions {
  Normalize norm;          // image_to_tensor normalization
  int decode_threads = 0;  // <= 0: hardware concurrency, at most 8
  Augment augment;         // inactive by default
};

class BatchLoader {
 public:
  // Most error messages kept (skipped() still counts every failure).
  static constexpr size_t kMaxStoredErrors = 100;
  // How many batches the decoder threads may work ahead of the consumer.
  static constexpr size_t kBatchesAhead = 3;

  // Starts decoding `indices` of `dataset` (which must outlive the loader) in chunks of
  // batch_size, each image made a [3,input_size,input_size] tensor by image_to_tensor with
  // `norm`, on decode_threads threads (<= 0: hardware concurrency, at most 8). Throws Error
  // on a bad batch size, input size or index.
  BatchLoader(const Dataset& dataset, std::vector<size_t> indices, int batch_size,
              int input_size, Normalize norm = Normalize{}, int decode_threads = 0);
  // As above with options.norm and options.decode_threads; when options.augment is active,
  // each sample is also augmented (augment_sample) on its decoder thread with key = its
  // dataset index, so batches stay identical for any thread count. Also throws Error when
  // the augmentation does not fit input_size (check_augment).
  BatchLoader(const Dataset& dataset, std::vector<size_t> indices, int batch_size,
              int input_size, const LoaderOptions& options);
  // Stops the decoder threads (finishing at most the image each is on) and joins them.
  ~BatchLoader();
  BatchLoader(const BatchLoader&) = delete;
  BatchLoader& operator=(const BatchLoader&) = delete;

  // Fills `out` with the next batch and returns true, or returns false when every batch
  // has been handed out. Samples that fail to load are left out of their batch (a batch
  // whose samples all fail is skipped), counted by skipped() and reported by errors().
  bool next(Batch& out);
  // Optionally hands a batch's tensor back for reuse by a later batch, sparing fresh memory
  // (first touches of new pages dominate the loader's cost). Only call it when nothing else
  // refers to batch.images any more (no copies or views kept); batches that lost samples
  // are not reused.
  void recycle(Batch&& batch);
  // Number of samples that failed to load or preprocess so far (in batches handed out).
  size_t skipped() const;
  // The first kMaxStoredErrors failure messages ("<source>: <reason>"), in index order.
  std::vector<std::string> errors() const;
  // Number of batches the index list makes (before any skipping).
  size_t num_batches() const { return num_batches_; }
  // Number of decoder threads running.
  int num_threads() const { return static_cast<int>(threads_.size()); }

 private:
  struct Slot {
    std::string error;
    bool ok = false;
  };
  // A batch being decoded: workers write sample j into images[j] (the tensor is shared, so
  // no lock is needed for the pixels) and record the outcome in slots[j].
  struct Pending {
    Tensor images;  // [len,3,S,S]
    std::vector<Slot> slots;
    size_t remaining = 0;
  };

  void worker();
  size_t batch_len(size_t b) const;

  const Dataset& dataset_;
  std::vector<size_t> indices_;
  size_t batch_size_;
  int input_size_;
  Normalize norm_;
  Augment augment_;
  size_t num_batches_ = 0;

  mutable std::mutex mu_;
  std::condition_variable work_cv_;   // workers wait for room ahead
  std::condition_variable ready_cv_;  // the consumer waits for a complete batch
  bool stop_ = false;
  size_t next_claim_ = 0;  // next position in indices_ a worker takes
  size_t consumed_ = 0;    // batches handed out (or skipped) so far
  std::map<size_t, Pending> pending_;
  std::vector<Tensor> free_images_;  // recycled full-size batch tensors
  size_t skipped_ = 0;
  std::vector<std::string> errors_;
  std::vector<std::thread> threads_;
};

}  // namespace isplit
