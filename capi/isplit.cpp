// The C API (capi/isplit.h) over Model: every entry point validates its arguments,
// catches every exception and turns it into a status and a message in the caller's buffer.
#include "isplit.h"

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <limits>
#include <memory>
#include <new>
#include <string>

#include "data/image.h"
#include "models/model.h"

struct isplit_model {
  std::unique_ptr<isplit::Model> model;
  std::string cut;  // "" = whole network
};

namespace {

using isplit::Error;

// Largest input (elements) and image side a run accepts: keeps every size product far
// from int64 and allocation overflow.
constexpr int64_t kMaxInputElements = int64_t{1} << 31;
constexpr int kMaxSide = 16384;

// An argument error: reported as ISPLIT_ERR_ARGUMENT.
struct ArgumentError : Error {
  using Error::Error;
};
// A file that cannot be opened or read: ISPLIT_ERR_FILE.
struct FileError : Error {
  using Error::Error;
};
// A weights file that cannot be parsed or does not fit the model: ISPLIT_ERR_FORMAT.
struct FormatError : Error {
  using Error::Error;
};

// Writes "<fn>: <prefix><what>" into err (truncated, NUL-terminated) without allocating.
void report(char* err, size_t err_len, const char* fn, const char* prefix,
            const char* what) noexcept {
  if (err && err_len > 0) std::snprintf(err, err_len, "%s: %s%s", fn, prefix, what);
}

// Runs body, mapping exceptions to statuses; a plain `isplit::Error` maps to fallback.
template <typename F>
isplit_status guarded(const char* fn, char* err, size_t err_len, isplit_status fallback,
                      F&& body) noexcept {
  if (err && err_len > 0) err[0] = '\0';
  try {
    body();
    return ISPLIT_OK;
  } catch (const ArgumentError& e) {
    report(err, err_len, fn, "", e.what());
    return ISPLIT_ERR_ARGUMENT;
  } catch (const FileError& e) {
    report(err, err_len, fn, "", e.what());
    return ISPLIT_ERR_FILE;
  } catch (const FormatError& e) {
    report(err, err_len, fn, "", e.what());
    return ISPLIT_ERR_FORMAT;
  } catch (const std::bad_alloc&) {
    report(err, err_len, fn, "", "out of memory");
    return ISPLIT_ERR_MEMORY;
  } catch (const Error& e) {
    report(err, err_len, fn, "", e.what());
    return fallback;
  } catch (const std::exception& e) {
    report(err, err_len, fn, "internal error: ", e.what());
    return ISPLIT_ERR_INTERNAL;
  } catch (...) {
    report(err, err_len, fn, "unknown internal error", "");
    return ISPLIT_ERR_INTERNAL;
  }
}

// Builds the model and loads its weights, mapping failures to FILE, ARGUMENT (an unknown
// cut point) and FORMAT. With a cut point only the head's stages are built and loaded.
std::unique_ptr<isplit::Model> load_weights(const std::string& arch, const std::string& path,
                                            const std::string& cut) {
  {
    std::ifstream f(path, std::ios::binary);
    if (!f) throw FileError(path + ": cannot open (" + std::strerror(errno) + ")");
  }
  try {
    return isplit::load_model(arch, path, 0, cut);
  } catch (const std::bad_alloc&) {
    throw;
  } catch (const isplit::CutPointError& e) {
    throw ArgumentError(e.what());
  } catch (const std::exception& e) {
    throw FormatError(e.what());
  }
}

// Runs the model on x and moves the result into a malloc'd isplit_tensor.
void run_into(isplit_model* m, const isplit::Tensor& x, isplit_tensor* out) {
  isplit::Tensor y;
  try {
    y = m->model->forward(nullptr, isplit::Var{x}, nullptr, m->cut).value;
  } catch (const std::bad_alloc&) {
    throw;
  } catch (const Error& e) {
    // Bad input shapes (too small for the network's pooling) surface here.
    throw ArgumentError(e.what());
  }
  if (y.ndim() < 1 || y.ndim() > 4)
    throw Error("unexpected output shape " + isplit::shape_str(y.shape()));
  float* data = static_cast<float*>(std::malloc(std::max<size_t>(y.bytes(), 1)));
  if (!data) throw std::bad_alloc();
  std::memcpy(data, y.data(), y.bytes());
  out->data = data;
  out->ndim = y.ndim();
  for (int i = 0; i < 4; ++i) out->shape[i] = i < y.ndim() ? y.dim(i) : 0;
}

// Clears *out so that a failed run leaves nothing to free.
void clear_tensor(isplit_tensor* out) noexcept {
  out->data = nullptr;
  out->ndim = 0;
  for (int64_t& d : out->shape) d = 0;
}

}  // namespace

extern "C" {

const char* isplit_version(void) { return "0.1.0"; }

const char* isplit_status_name(isplit_status status) {
  switch (status) {
    case ISPLIT_OK: return "ok";
    case ISPLIT_ERR_ARGUMENT: return "argument";
    case ISPLIT_ERR_FILE: return "file";
    case ISPLIT_ERR_FORMAT: return "format";
    case ISPLIT_ERR_MEMORY: return "memory";
    case ISPLIT_ERR_INTERNAL: return "internal";
  }
  return "unknown";
}

isplit_status isplit_model_load(const char* arch, const char* weights_path, const char* cut,
                                isplit_model** out, char* err, size_t err_len) {
  if (out) *out = nullptr;
  return guarded("isplit_model_load", err, err_len, ISPLIT_ERR_FORMAT, [&] {
    if (!out) throw ArgumentError("out is NULL");
    if (!arch) throw ArgumentError("arch is NULL");
    if (!weights_path) throw ArgumentError("weights_path is NULL");
    const std::string name = arch;
    const std::vector<std::string> names = isplit::model_names();
    if (std::find(names.begin(), names.end(), name) == names.end()) {
      std::string known;
      for (const std::string& n : names) known += (known.empty() ? "" : ", ") + n;
      throw ArgumentError("unknown architecture '" + name + "' (known: " + known + ")");
    }
    auto handle = std::make_unique<isplit_model>();
    handle->cut = cut ? cut : "";
    handle->model = load_weights(name, weights_path, handle->cut);
    handle->model->set_training(false);
    // Folding BatchNorm is faster and gives the same outputs to rounding. It hides the
    // outputs of folded convolutions, but a head ends at its cut point, so a convolution
    // there has no BatchNorm after it to fold.
    handle->model->fold_batchnorm();
    handle->model->pack_for_inference();
    *out = handle.release();
  });
}

void isplit_model_free(isplit_model* model) { delete model; }

int64_t isplit_model_num_classes(const isplit_model* model) {
  return model && model->model ? model->model->num_classes() : 0;
}

const char* isplit_model_cut(const isplit_model* model) {
  return model ? model->cut.c_str() : "";
}

isplit_status isplit_run_float(isplit_model* model, const float* nchw, int n, int h, int w,
                               isplit_tensor* out, char* err, size_t err_len) {
  if (out) clear_tensor(out);
  return guarded("isplit_run_float", err, err_len, ISPLIT_ERR_INTERNAL, [&] {
    if (!model || !model->model) throw ArgumentError("model is NULL");
    if (!nchw) throw ArgumentError("input is NULL");
    if (!out) throw ArgumentError("out is NULL");
    if (n <= 0 || h <= 0 || w <= 0)
      throw ArgumentError("bad input size n=" + std::to_string(n) + " h=" + std::to_string(h) +
                          " w=" + std::to_string(w) + " (all must be > 0)");
    // Sides first: with h, w <= 2^14 the product below stays under 2^61.
    if (h > kMaxSide || w > kMaxSide ||
        int64_t{n} * 3 * int64_t{h} * int64_t{w} > kMaxInputElements)
      throw ArgumentError("input too large: " + std::to_string(n) + "x3x" + std::to_string(h) +
                          "x" + std::to_string(w) + " (limits: side " +
                          std::to_string(kMaxSide) + ", " + std::to_string(kMaxInputElements) +
                          " elements)");
    isplit::Tensor x = isplit::Tensor::empty({n, 3, h, w});
    std::memcpy(x.data(), nchw, x.bytes());
    run_into(model, x, out);
  });
}

isplit_status isplit_run_rgb(isplit_model* model, const uint8_t* rgb_hwc, int h, int w,
                             int input_size, isplit_tensor* out, char* err, size_t err_len) {
  if (out) clear_tensor(out);
  return guarded("isplit_run_rgb", err, err_len, ISPLIT_ERR_INTERNAL, [&] {
    if (!model || !model->model) throw ArgumentError("model is NULL");
    if (!rgb_hwc) throw ArgumentError("image is NULL");
    if (!out) throw ArgumentError("out is NULL");
    if (h <= 0 || w <= 0 || input_size <= 0)
      throw ArgumentError("bad size h=" + std::to_string(h) + " w=" + std::to_string(w) +
                          " input_size=" + std::to_string(input_size) + " (all must be > 0)");
    if (int64_t{h} * w > isplit::kMaxImagePixels || input_size > kMaxSide)
      throw ArgumentError("image too large: " + std::to_string(h) + "x" + std::to_string(w) +
                          " pixels, input_size " + std::to_string(input_size) + " (limits: " +
                          std::to_string(isplit::kMaxImagePixels) + " pixels, side " +
                          std::to_string(kMaxSide) + ")");
    isplit::Image image;
    image.width = w;
    image.height = h;
    image.channels = 3;
    image.pixels.assign(rgb_hwc, rgb_hwc + static_cast<size_t>(h) * w * 3);
    isplit::Tensor t;
    try {
      t = isplit::image_to_tensor(image, input_size);
    } catch (const std::bad_alloc&) {
      throw;
    } catch (const Error& e) {
      throw ArgumentError(e.what());
    }
    run_into(model, t.reshape({1, 3, input_size, input_size}), out);
  });
}

void isplit_tensor_free(isplit_tensor* tensor) {
  if (!tensor) return;
  std::free(tensor->data);
  clear_tensor(tensor);
}

}  // extern "C"
