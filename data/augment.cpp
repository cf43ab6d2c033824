// Augmentation and shuffling on a splitmix64 stream (Steele, Lea & Flood 2014; the
// finalizer constants are Stafford's "Mix13", as in java.util.SplittableRandom).
// Bounded integers use rejection (as OpenBSD's arc4random_uniform): exact, portable
// 64-bit arithmetic with no 128-bit multiply.
#include "data/augment.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <utility>

namespace isplit {

namespace {

constexpr uint64_t kGolden = 0x9e3779b97f4a7c15ull;  // 2^64 / golden ratio, odd

// splitmix64's output function: a bijective avalanche mix of 64 bits.
uint64_t fmix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// The splitmix64 generator: a Weyl sequence of step kGolden passed through fmix64.
class SplitMix64 {
 public:
  explicit SplitMix64(uint64_t seed) : state_(seed) {}
  // Next 64 random bits.
  uint64_t next() {
    state_ += kGolden;
    return fmix64(state_);
  }
  // Uniform integer in [0, n), n >= 1, exactly unbiased: 2^64 mod n values at the bottom of
  // the 64-bit range are rejected, so the accepted range is a multiple of n; the expected
  // number of draws is below 2.
  uint64_t below(uint64_t n) {
    const uint64_t threshold = (0 - n) % n;  // == 2^64 mod n
    for (;;) {
      const uint64_t x = next();
      if (x >= threshold) return x % n;
    }
  }

 private:
  uint64_t state_;
};

}  // namespace

uint64_t mix_seed(uint64_t a, uint64_t b) { return fmix64(fmix64(a + kGolden) ^ b); }

void check_augment(const Augment& aug, int size) {
  if (size <= 0) throw Error("augment: bad sample size " + std::to_string(size));
  if (aug.pad < 0)
    throw Error("augment: crop padding must be >= 0, got " + std::to_string(aug.pad));
  if (aug.pad >= size)
    throw Error("augment: crop padding " + std::to_string(aug.pad) +
                " must be smaller than the sample size " + std::to_string(size));
}

void augment_sample(Tensor& sample, const Augment& aug, const Normalize& norm, uint64_t key) {
  const Shape& s = sample.shape();
  if (s.size() != 3 || s[0] != 3 || s[1] <= 0 || s[2] <= 0)
    throw Error("augment: expected a [3,H,W] sample, got " + shape_str(s));
  const int64_t H = s[1], W = s[2];
  check_augment(aug, static_cast<int>(std::min<int64_t>({H, W, int64_t{1} << 30})));
  for (int c = 0; c < 3; ++c)
    if (!std::isfinite(norm.mean[c]) || !std::isfinite(norm.std[c]) || norm.std[c] == 0.0f)
      throw Error("augment: bad normalization (mean " + std::to_string(norm.mean[c]) + ", std " +
                  std::to_string(norm.std[c]) + ")");
  if (!aug.active()) return;

  // Draws, always all three and in this order (see the header).
  SplitMix64 rng(mix_seed(aug.seed, key));
  const uint64_t span = 2 * static_cast<uint64_t>(aug.pad) + 1;
  const int64_t dy = static_cast<int64_t>(rng.below(span));
  const int64_t dx = static_cast<int64_t>(rng.below(span));
  const bool flip = (rng.next() >> 63) != 0;
  const int64_t oy = dy - aug.pad;  // source row = y + oy
  const int64_t ox = dx - aug.pad;  // source column = x + ox (before the flip)
  const bool do_flip = aug.hflip && flip;
  if (oy == 0 && ox == 0 && !do_flip) return;

  // One plane of scratch per thread, reused across samples: no allocation once warm.
  thread_local std::vector<float> scratch;
  const size_t plane = static_cast<size_t>(H) * static_cast<size_t>(W);
  if (scratch.size() < plane) scratch.resize(plane);

  // Output columns [x0, x1) read the image (source column x + ox); the rest is padding.
  const int64_t x0 = std::max<int64_t>(0, -ox);
  const int64_t x1 = std::min<int64_t>(W, W - ox);
  for (int c = 0; c < 3; ++c) {
    // Same expression as image_to_tensor, so padding equals a normalized black pixel exactly.
    const float black = (0.0f - norm.mean[c]) / norm.std[c];
    float* q = sample.data() + static_cast<size_t>(c) * plane;
    std::memcpy(scratch.data(), q, plane * sizeof(float));
    for (int64_t y = 0; y < H; ++y) {
      float* row = q + y * W;
      const int64_t sy = y + oy;
      if (sy < 0 || sy >= H) {
        std::fill(row, row + W, black);
        continue;
      }
      // Crop into row, unflipped.
      const float* src = scratch.data() + sy * W;
      std::fill(row, row + x0, black);
      std::memcpy(row + x0, src + x0 + ox, static_cast<size_t>(x1 - x0) * sizeof(float));
      std::fill(row + x1, row + W, black);
      if (do_flip) std::reverse(row, row + W);
    }
  }
}

std::vector<size_t> shuffled(std::vector<size_t> indices, uint64_t seed) {
  SplitMix64 rng(seed);
  for (size_t i = indices.size(); i > 1; --i) {
    const size_t j = static_cast<size_t>(rng.below(static_cast<uint64_t>(i)));
    std::swap(indices[i - 1], indices[j]);
  }
  return indices;
}

}  // namespace isplit
