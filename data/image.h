// Image decoding (PNG/JPEG/BMP/GIF/PGM/PPM via stb_image), PNG writing, and the
// preprocessing that turns a decoded image into a normalized float32 CHW tensor.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "engine/tensor.h"

namespace isplit {

// A decoded 8-bit image, pixels interleaved row-major as HWC (channels 1..4:
// grey, grey+alpha, RGB, RGBA).
struct Image {
  int width = 0;
  int height = 0;
  int channels = 0;
  std::vector<uint8_t> pixels;
};

// Largest file decode_image_file reads (bytes).
constexpr size_t kMaxImageFileBytes = size_t{256} << 20;
// Largest image (width * height) the decoders accept.
constexpr int64_t kMaxImagePixels = int64_t{64} << 20;

// Reads and decodes an image file; throws Error "<path>: <reason>" on any failure.
Image decode_image_file(const std::string& path);
// Decodes an image held in memory; errors are reported as "<name_for_errors>: <reason>".
Image decode_image_memory(const uint8_t* data, size_t size, const std::string& name_for_errors);

// Per-channel (RGB) normalization applied after scaling pixels to [0,1]; ImageNet defaults.
struct Normalize {
  float mean[3] = {0.485f, 0.456f, 0.406f};
  float std[3] = {0.229f, 0.224f, 0.225f};
};

// Converts an image to a float32 [3,size,size] tensor: made RGB (grey replicated, alpha
// dropped), scaled to [0,1], resized bilinearly (PyTorch F.interpolate, align_corners=False,
// no antialias) when its dims differ from size x size, then (x - mean) / std.
Tensor image_to_tensor(const Image& image, int size, const Normalize& norm = Normalize{});
// decode_image_file followed by image_to_tensor.
Tensor load_image_tensor(const std::string& path, int size, const Normalize& norm = Normalize{});
// Stacks [3,S,S] tensors (all of one shape) into one [N,3,S,S] batch.
Tensor stack_images(const std::vector<Tensor>& images);

// Encodes the image as PNG and writes it atomically (temp file, then rename); throws Error.
void write_png(const std::string& path, const Image& image);

}  // namespace isplit
