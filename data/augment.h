// Training-time data augmentation (random crop with padding, horizontal flip) and a seeded
// shuffle. Every random draw comes from our own splitmix64 generator and unbiased bounded
// integers, never from <random>'s distributions, so results are identical on every
// standard library and architecture.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

#include "data/image.h"
#include "engine/tensor.h"

namespace isplit {

// Training-time augmentation applied to a normalized [3,S,S] sample.
struct Augment {
  int pad = 0;          // random crop with padding: pad each side by `pad` pixels filled with
                        // black (pixel value 0, i.e. (0-mean)/std per channel after normalization),
                        // then crop a random SxS window (like torchvision RandomCrop(S, padding=pad))
  bool hflip = false;   // horizontal flip with probability 1/2
  uint64_t seed = 0;    // all random draws are a pure function of (seed, key)
  bool active() const { return pad > 0 || hflip; }
};

// Throws Error unless `aug` can be applied to [3,size,size] samples: 0 <= pad < size, so
// every crop window keeps at least one row and one column of the image.
void check_augment(const Augment& aug, int size);

// Applies `aug` in place to sample [3,S,S] (normalized with `norm`), drawing from (aug.seed, key).
// The crop window's top-left corner (dy, dx) in the padded [S+2p, S+2p] image is drawn
// uniformly from [0, 2*pad]^2, then the window is mirrored left-right with probability 1/2:
// out[c][y][x] = padded[c][y+dy][x'+dx] with x' = flip ? S-1-x : x. The draws are always
// made in the order dy, dx, flip whatever pad and hflip are, so turning one option on or off
// does not change the other's draws. `sample` may be a view into a batch; it must be
// contiguous [3,H,W] (H, W > pad). Throws Error on a bad shape, pad or normalization.
void augment_sample(Tensor& sample, const Augment& aug, const Normalize& norm, uint64_t key);

// Returns `indices` in a seeded random order (Fisher-Yates driven by our splitmix64 generator
// started at `seed`, with unbiased bounded draws): the same order on every platform.
std::vector<size_t> shuffled(std::vector<size_t> indices, uint64_t seed);

// Mixes two 64-bit values into one seed (splitmix64 finalizer), e.g. (run seed, epoch).
// A bijection in each argument when the other is fixed.
uint64_t mix_seed(uint64_t a, uint64_t b);

}  // namespace isplit
