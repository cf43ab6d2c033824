// Image decoding/encoding on top of stb_image / stb_image_write (compiled in here with
// static linkage), and the image -> normalized tensor preprocessing.
#include "data/image.h"

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <climits>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <unistd.h>

// stb: only the formats we support, no stdio (we do file I/O ourselves), static functions.
#define STBI_NO_STDIO
#define STBI_ONLY_PNG
#define STBI_ONLY_JPEG
#define STBI_ONLY_BMP
#define STBI_ONLY_GIF
#define STBI_ONLY_PNM
#define STB_IMAGE_STATIC
#define STB_IMAGE_IMPLEMENTATION
#define STBI_WRITE_NO_STDIO
#define STB_IMAGE_WRITE_STATIC
#define STB_IMAGE_WRITE_IMPLEMENTATION
#if defined(__GNUC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-function"
#pragma GCC diagnostic ignored "-Wunused-parameter"
#pragma GCC diagnostic ignored "-Wsign-compare"
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"
#pragma GCC diagnostic ignored "-Wimplicit-fallthrough"
#pragma GCC diagnostic ignored "-Wtype-limits"
#if !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wstringop-overflow"
#endif
#endif
#include <stb_image.h>
#include <stb_image_write.h>
#if defined(__GNUC__)
#pragma GCC diagnostic pop
#endif

namespace isplit {
namespace {

[[noreturn]] void fail(const std::string& name, const std::string& reason) {
  throw Error(name + ": " + reason);
}

std::string stb_reason() {
  const char* r = stbi_failure_reason();
  return r ? std::string(r) : std::string("unknown error");
}

// Checks an Image's fields are self-consistent; `what` names it in errors.
void check_image(const Image& image, const std::string& what) {
  if (image.width <= 0 || image.height <= 0)
    fail(what, "image has empty dimensions " + std::to_string(image.width) + "x" +
                   std::to_string(image.height));
  if (image.channels < 1 || image.channels > 4)
    fail(what, "image has " + std::to_string(image.channels) + " channels (expected 1..4)");
  const int64_t pixels = int64_t{image.width} * image.height;
  if (pixels > kMaxImagePixels)
    fail(what, "image too large (" + std::to_string(image.width) + "x" +
                   std::to_string(image.height) + ")");
  if (image.pixels.size() != static_cast<size_t>(pixels * image.channels))
    fail(what, "image buffer holds " + std::to_string(image.pixels.size()) +
                   " bytes, expected " + std::to_string(pixels * image.channels));
}

// Bilinear taps along one axis, PyTorch upsample_bilinear2d (align_corners=False) style.
struct Taps {
  std::vector<int> i0, i1;
  std::vector<float> w0, w1;
};

Taps linear_taps(int in, int out) {
  Taps t;
  t.i0.resize(out);
  t.i1.resize(out);
  t.w0.resize(out);
  t.w1.resize(out);
  const float scale = static_cast<float>(in) / static_cast<float>(out);
  for (int d = 0; d < out; ++d) {
    float src = scale * (static_cast<float>(d) + 0.5f) - 0.5f;
    if (src < 0.0f) src = 0.0f;
    int i = static_cast<int>(src);  // floor, since src >= 0
    if (i > in - 1) i = in - 1;
    const float l1 = std::min(std::max(src - static_cast<float>(i), 0.0f), 1.0f);
    t.i0[d] = i;
    t.i1[d] = i < in - 1 ? i + 1 : i;
    t.w1[d] = l1;
    t.w0[d] = 1.0f - l1;
  }
  return t;
}

// stb_image 2.27 (Debian's libstb-dev) writes past its Huffman tables when a JPEG DHT
// segment declares more than 256 codes (CVE-2021-37789, fixed upstream in 2.28). stb only
// processes a DHT segment where the bytes FF C4 occur, so every FF C4 in the file is
// parsed exactly as stb would parse it and the file is rejected if any table is too big.
// A stray FF C4 inside opaque APP data can, rarely, reject a valid file; that is safe. Files
// with implausibly many FF C4 pairs are rejected too, which bounds the work.
// Returns an error reason, or nullptr when the data is fine for stb.
const char* jpeg_huffman_guard(const uint8_t* data, size_t size) {
  // Of the formats compiled in, only JPEG data can start with 0xFF (stb skips FF fill
  // bytes before the SOI marker, so no stricter test is safe).
  if (size < 2 || data[0] != 0xFF) return nullptr;
  auto byte = [&](size_t i) -> unsigned { return i < size ? data[i] : 0u; };  // stb reads 0 past the end
  int markers = 0;
  for (size_t m = 0; m + 1 < size; ++m) {
    if (data[m] != 0xFF || data[m + 1] != 0xC4) continue;
    if (++markers > 1024) return "corrupt JPEG: too many Huffman table markers";
    size_t p = m + 2;
    long len = static_cast<long>((byte(p) << 8) | byte(p + 1)) - 2;
    p += 2;
    while (len > 0) {
      const unsigned q = byte(p++);
      if ((q >> 4) > 1 || (q & 15) > 3) break;  // stb rejects this header before building
      unsigned n = 0;
      for (int i = 0; i < 16; ++i) n += byte(p++);
      if (n > 256) return "corrupt JPEG: bad Huffman table";
      p += n;
      len -= 17 + static_cast<long>(n);
    }
  }
  return nullptr;
}

}  // namespace

Image decode_image_memory(const uint8_t* data, size_t size, const std::string& name) {
  if (data == nullptr || size == 0) fail(name, "empty file");
  if (size > static_cast<size_t>(INT_MAX)) fail(name, "file too large");
  const int len = static_cast<int>(size);
  // Before any stb call: stbi_info already parses the JPEG tables that precede the frame.
  if (const char* why = jpeg_huffman_guard(data, size))
    fail(name, std::string("not a supported image (") + why + ")");
  int w = 0, h = 0, comp = 0;
  if (!stbi_info_from_memory(data, len, &w, &h, &comp))
    fail(name, "not a supported image (" + stb_reason() + ")");
  if (w <= 0 || h <= 0) fail(name, "not a supported image (empty dimensions)");
  if (int64_t{w} * h > kMaxImagePixels)
    fail(name, "image too large (" + std::to_string(w) + "x" + std::to_string(h) + ")");
  int dw = 0, dh = 0, dc = 0;
  stbi_uc* pix = stbi_load_from_memory(data, len, &dw, &dh, &dc, 0);
  if (pix == nullptr) fail(name, "not a supported image (" + stb_reason() + ")");
  Image image;
  image.width = dw;
  image.height = dh;
  image.channels = dc;
  const bool ok = dw > 0 && dh > 0 && dc >= 1 && dc <= 4 &&
                  int64_t{dw} * dh <= kMaxImagePixels;
  if (ok) {
    const size_t n = static_cast<size_t>(dw) * static_cast<size_t>(dh) * static_cast<size_t>(dc);
    image.pixels.assign(pix, pix + n);
  }
  stbi_image_free(pix);
  if (!ok) fail(name, "not a supported image (bad decoded dimensions)");
  return image;
}

Image decode_image_file(const std::string& path) {
  std::error_code ec;
  const auto status = std::filesystem::status(path, ec);
  if (!ec && std::filesystem::exists(status) && !std::filesystem::is_regular_file(status))
    fail(path, "cannot open (not a regular file)");
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(path, std::string("cannot open (") + std::strerror(errno) + ")");
  in.seekg(0, std::ios::end);
  const std::streamoff end = in.tellg();
  if (end < 0) fail(path, "cannot read (not a regular file?)");
  if (end == 0) fail(path, "empty file");
  if (static_cast<uint64_t>(end) > kMaxImageFileBytes)
    fail(path, "file too large (" + std::to_string(end) + " bytes, limit " +
                   std::to_string(kMaxImageFileBytes) + ")");
  in.seekg(0, std::ios::beg);
  std::vector<uint8_t> bytes(static_cast<size_t>(end));
  in.read(reinterpret_cast<char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  if (in.gcount() != static_cast<std::streamsize>(bytes.size())) fail(path, "read error");
  return decode_image_memory(bytes.data(), bytes.size(), path);
}

Tensor image_to_tensor(const Image& image, int size, const Normalize& norm) {
  check_image(image, "image_to_tensor");
  if (size <= 0 || size > 16384)
    throw Error("image_to_tensor: bad output size " + std::to_string(size));
  for (int c = 0; c < 3; ++c) {
    if (!std::isfinite(norm.mean[c]) || !std::isfinite(norm.std[c]) || norm.std[c] == 0.0f)
      throw Error("image_to_tensor: bad normalization (mean " + std::to_string(norm.mean[c]) +
                  ", std " + std::to_string(norm.std[c]) + ")");
  }
  // Exactly torch's uint8 -> float32 / 255.
  float lut[256];
  for (int v = 0; v < 256; ++v) lut[v] = static_cast<float>(v) / 255.0f;

  const int W = image.width, H = image.height, C = image.channels;
  // Source channel for R, G, B: grey (and grey+alpha) replicated, alpha dropped.
  const int src_ch[3] = {0, C >= 3 ? 1 : 0, C >= 3 ? 2 : 0};
  const uint8_t* px = image.pixels.data();
  Tensor out = Tensor::empty({3, size, size});
  float* o = out.data();
  const size_t plane = static_cast<size_t>(size) * size;

  if (W == size && H == size) {
    for (int y = 0; y < size; ++y)
      for (int x = 0; x < size; ++x) {
        const uint8_t* p = px + (static_cast<size_t>(y) * W + x) * C;
        for (int c = 0; c < 3; ++c) o[c * plane + static_cast<size_t>(y) * size + x] = lut[p[src_ch[c]]];
      }
  } else {
    const Taps tx = linear_taps(W, size);
    const Taps ty = linear_taps(H, size);
    for (int y = 0; y < size; ++y) {
      const uint8_t* r0 = px + static_cast<size_t>(ty.i0[y]) * W * C;
      const uint8_t* r1 = px + static_cast<size_t>(ty.i1[y]) * W * C;
      const float wy0 = ty.w0[y], wy1 = ty.w1[y];
      for (int x = 0; x < size; ++x) {
        const size_t a = static_cast<size_t>(tx.i0[x]) * C;
        const size_t b = static_cast<size_t>(tx.i1[x]) * C;
        const float wx0 = tx.w0[x], wx1 = tx.w1[x];
        for (int c = 0; c < 3; ++c) {
          const int s = src_ch[c];
          const float top = wx0 * lut[r0[a + s]] + wx1 * lut[r0[b + s]];
          const float bot = wx0 * lut[r1[a + s]] + wx1 * lut[r1[b + s]];
          o[c * plane + static_cast<size_t>(y) * size + x] = wy0 * top + wy1 * bot;
        }
      }
    }
  }
  for (int c = 0; c < 3; ++c) {
    float* q = o + c * plane;
    const float m = norm.mean[c], sd = norm.std[c];
    for (size_t i = 0; i < plane; ++i) q[i] = (q[i] - m) / sd;
  }
  return out;
}

Tensor load_image_tensor(const std::string& path, int size, const Normalize& norm) {
  const Image image = decode_image_file(path);
  try {
    return image_to_tensor(image, size, norm);
  } catch (const Error& e) {
    fail(path, e.what());
  }
}

Tensor stack_images(const std::vector<Tensor>& images) {
  if (images.empty()) throw Error("stack_images: no images");
  const Shape& s = images[0].shape();
  if (s.size() != 3 || s[0] != 3 || s[1] <= 0 || s[1] != s[2])
    throw Error("stack_images: expected a [3,S,S] image tensor, got " + shape_str(s));
  for (size_t i = 1; i < images.size(); ++i)
    if (images[i].shape() != s)
      throw Error("stack_images: image " + std::to_string(i) + " has shape " +
                  shape_str(images[i].shape()) + ", expected " + shape_str(s));
  Tensor out = Tensor::empty({static_cast<int64_t>(images.size()), s[0], s[1], s[2]});
  const int64_t n = images[0].numel();
  for (size_t i = 0; i < images.size(); ++i)
    std::memcpy(out.data() + static_cast<int64_t>(i) * n, images[i].data(),
                static_cast<size_t>(n) * sizeof(float));
  return out;
}

void write_png(const std::string& path, const Image& image) {
  check_image(image, path);
  if (int64_t{image.width} * image.channels > INT_MAX) fail(path, "image too wide for PNG");
  std::vector<uint8_t> encoded;
  auto sink = [](void* ctx, void* data, int size) {
    auto* v = static_cast<std::vector<uint8_t>*>(ctx);
    const auto* b = static_cast<const uint8_t*>(data);
    v->insert(v->end(), b, b + size);
  };
  if (!stbi_write_png_to_func(sink, &encoded, image.width, image.height, image.channels,
                              image.pixels.data(), image.width * image.channels))
    fail(path, "PNG encoding failed");

  static std::atomic<unsigned> counter{0};
  const std::string tmp = path + ".tmp." + std::to_string(::getpid()) + "." +
                          std::to_string(counter.fetch_add(1));
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) fail(path, std::string("cannot write (") + std::strerror(errno) + ")");
    out.write(reinterpret_cast<const char*>(encoded.data()),
              static_cast<std::streamsize>(encoded.size()));
    out.close();
    if (!out) {
      std::remove(tmp.c_str());
      fail(path, "write error");
    }
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    const std::string why = std::strerror(errno);
    std::remove(tmp.c_str());
    fail(path, "cannot rename temp file (" + why + ")");
  }
}

}  // namespace isplit
