// BatchLoader: worker threads claim sample positions in index order (never more than
// kBatchesAhead batches past the consumer), decode them into per-batch slots, and the
// consumer assembles batch b once all its slots are filled. Which thread decodes a sample
// never affects where it lands, so batches are identical for any thread count.
#include "data/loader.h"

#include <algorithm>
#include <cstring>
#include <exception>
#include <system_error>
#include <utility>

namespace isplit {

namespace {

LoaderOptions make_options(const Normalize& norm, int decode_threads) {
  LoaderOptions o;
  o.norm = norm;
  o.decode_threads = decode_threads;
  return o;
}

}  // namespace

BatchLoader::BatchLoader(const Dataset& dataset, std::vector<size_t> indices, int batch_size,
                         int input_size, Normalize norm, int decode_threads)
    : BatchLoader(dataset, std::move(indices), batch_size, input_size,
                  make_options(norm, decode_threads)) {}

BatchLoader::BatchLoader(const Dataset& dataset, std::vector<size_t> indices, int batch_size,
                         int input_size, const LoaderOptions& options)
    : dataset_(dataset),
      indices_(std::move(indices)),
      batch_size_(batch_size > 0 ? static_cast<size_t>(batch_size) : 0),
      input_size_(input_size),
      norm_(options.norm),
      augment_(options.augment) {
  const int decode_threads = options.decode_threads;
  if (batch_size <= 0) throw Error("batch loader: batch size must be positive, got " + std::to_string(batch_size));
  if (input_size <= 0 || input_size > 16384)
    throw Error("batch loader: bad input size " + std::to_string(input_size));
  if (augment_.active()) check_augment(augment_, input_size);
  const size_t n = dataset_.size();
  for (size_t i : indices_)
    if (i >= n)
      throw Error("batch loader: sample index " + std::to_string(i) + " out of range (dataset size " +
                  std::to_string(n) + ")");
  num_batches_ = (indices_.size() + batch_size_ - 1) / batch_size_;

  int threads = decode_threads;
  if (threads <= 0) {
    const unsigned hw = std::thread::hardware_concurrency();
    threads = static_cast<int>(std::min<unsigned>(hw == 0 ? 1u : hw, 8u));
  }
  // No more threads than samples can keep busy.
  const size_t useful = std::max<size_t>(1, std::min(indices_.size(), kBatchesAhead * batch_size_));
  threads = static_cast<int>(std::min<size_t>(static_cast<size_t>(threads), useful));
  if (indices_.empty()) threads = 0;
  try {
    for (int t = 0; t < threads; ++t) threads_.emplace_back([this] { worker(); });
  } catch (...) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    work_cv_.notify_all();
    for (std::thread& th : threads_) th.join();
    throw;
  }
}

BatchLoader::~BatchLoader() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  work_cv_.notify_all();
  ready_cv_.notify_all();
  for (std::thread& th : threads_)
    if (th.joinable()) th.join();
}

size_t BatchLoader::batch_len(size_t b) const {
  return std::min(batch_size_, indices_.size() - b * batch_size_);
}

void BatchLoader::worker() {
  // Nothing may escape a thread: every failure becomes a skipped sample.
  const int64_t S = input_size_;
  const int64_t sample_numel = 3 * S * S;
  for (;;) {
    size_t pos = 0;
    Tensor dst;  // the batch tensor this sample goes into (shared storage)
    {
      std::unique_lock<std::mutex> lock(mu_);
      work_cv_.wait(lock, [&] {
        return stop_ || next_claim_ >= indices_.size() ||
               next_claim_ / batch_size_ < consumed_ + kBatchesAhead;
      });
      if (stop_ || next_claim_ >= indices_.size()) return;
      pos = next_claim_++;
      const size_t b = pos / batch_size_;
      try {
        Pending& p = pending_[b];
        if (p.slots.empty()) {
          const size_t len = batch_len(b);
          const Shape shape{static_cast<int64_t>(len), 3, S, S};
          if (!free_images_.empty() && free_images_.back().shape() == shape) {
            p.images = std::move(free_images_.back());
            free_images_.pop_back();
          } else {
            p.images = Tensor::empty(shape);
          }
          p.slots.resize(len);
          p.remaining = len;
        }
        dst = p.images;
      } catch (...) {
        // Out of memory for the batch itself: give up and wake everyone; next() reports it.
        pending_.erase(b);
        stop_ = true;
        ready_cv_.notify_all();
        work_cv_.notify_all();
        return;
      }
    }
    const size_t b = pos / batch_size_;
    const size_t j = pos - b * batch_size_;
    Slot slot;
    try {
      const size_t index = indices_[pos];
      Tensor t = image_to_tensor(dataset_.load(index), input_size_, norm_);
      if (t.numel() != sample_numel) throw Error("unexpected tensor shape " + shape_str(t.shape()));
      if (augment_.active()) augment_sample(t, augment_, norm_, index);
      std::memcpy(dst.data() + static_cast<int64_t>(j) * sample_numel, t.data(), t.bytes());
      slot.ok = true;
    } catch (const std::exception& e) {
      try {
        slot.error = e.what();
        const std::string src = dataset_.source(indices_[pos]);
        if (slot.error.compare(0, src.size(), src) != 0) slot.error = src + ": " + slot.error;
      } catch (...) {
      }
    } catch (...) {
      try {
        slot.error = "unknown error";
      } catch (...) {
      }
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      Pending& p = pending_[b];
      p.slots[j] = std::move(slot);
      if (--p.remaining == 0) ready_cv_.notify_all();
    }
  }
}

bool BatchLoader::next(Batch& out) {
  const int64_t sample_numel = 3 * static_cast<int64_t>(input_size_) * input_size_;
  for (;;) {
    Pending done;
    size_t b = 0;
    {
      std::unique_lock<std::mutex> lock(mu_);
      if (consumed_ >= num_batches_) return false;
      b = consumed_;
      ready_cv_.wait(lock, [&] {
        if (stop_) return true;
        auto it = pending_.find(b);
        return it != pending_.end() && !it->second.slots.empty() && it->second.remaining == 0;
      });
      auto it = pending_.find(b);
      if (it == pending_.end() || it->second.slots.empty() || it->second.remaining != 0)
        throw Error("batch loader: stopped (out of memory)");
      done = std::move(it->second);
      pending_.erase(it);
      ++consumed_;
      for (const Slot& s : done.slots) {
        if (s.ok) continue;
        ++skipped_;
        if (errors_.size() < kMaxStoredErrors) errors_.push_back(s.error);
      }
    }
    work_cv_.notify_all();

    // Compact the loaded samples to the front (in order) of the batch tensor.
    Batch batch;
    const size_t base = b * batch_size_;
    float* data = done.images.data();
    int64_t kept = 0;
    for (size_t j = 0; j < done.slots.size(); ++j) {
      if (!done.slots[j].ok) continue;
      if (static_cast<int64_t>(j) != kept)
        std::memmove(data + kept * sample_numel, data + static_cast<int64_t>(j) * sample_numel,
                     static_cast<size_t>(sample_numel) * sizeof(float));
      ++kept;
      batch.indices.push_back(indices_[base + j]);
      batch.labels.push_back(dataset_.label(indices_[base + j]));
    }
    if (kept == 0) continue;  // every sample of this batch failed
    batch.images = kept == static_cast<int64_t>(done.slots.size())
                       ? std::move(done.images)
                       : done.images.slice0(0, kept);
    out = std::move(batch);
    return true;
  }
}

void BatchLoader::recycle(Batch&& batch) {
  const int64_t S = input_size_;
  const Shape full{static_cast<int64_t>(batch_size_), 3, S, S};
  Tensor t = std::move(batch.images);
  batch = Batch{};
  if (!t.defined() || t.shape() != full) return;
  std::lock_guard<std::mutex> lock(mu_);
  if (free_images_.size() < kBatchesAhead + 1) free_images_.push_back(std::move(t));
}

size_t BatchLoader::skipped() const {
  std::lock_guard<std::mutex> lock(mu_);
  return skipped_;
}

std::vector<std::string> BatchLoader::errors() const {
  std::lock_guard<std::mutex> lock(mu_);
  return errors_;
}

}  // namespace isplit
