// Memory needed to run the head of a split: its weights plus the peak of activations and
// kernel scratch while it runs (inference, batch of the given input shape, one thread:
// every further thread adds its own GEMM packing buffers).
#pragma once
#include <cstddef>
#include <string>
#include <vector>

#include "models/model.h"

namespace isplit {

struct HeadMemory {
  std::string cut;            // the head's last stage
  size_t weight_bytes = 0;    // parameters and buffers of the head's stages
  size_t activation_bytes = 0;  // peak of input, activations and scratch during the run
  size_t peak_bytes() const { return weight_bytes + activation_bytes; }
};

// Measures every cut point of `model` (a whole network, evaluation mode, not folded) in one
// forward pass on zeros of shape `input`: for cut point k, the peak of the pass up to k and
// the weights of the stages up to k. Equal to measure_head() for each k.
std::vector<HeadMemory> measure_cut_memory(Model& model, const Shape& input);

// Builds only the head of `arch` up to `cut`, runs it once on zeros of shape `input`, and
// reports its weights and the peak of everything else it allocated.
HeadMemory measure_head(const std::string& arch, int64_t num_classes, const std::string& cut,
                        const Shape& input);

// Bytes the tensor allocator takes for a tensor of numel floats (rounded to its blocks).
size_t tensor_storage_bytes(int64_t numel);

}  // namespace isplit
