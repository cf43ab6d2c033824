/* isplit C API: load a torchvision VGG16/ResNet-50 from safetensors, optionally only up to
 * a cut point (the head of a split), run it on an RGB or a normalized float buffer and get
 * the output tensor (the logits, or the cut point's activation) with its shape.
 *
 * Errors: every function that can fail returns an isplit_status and writes a one-line
 * message into the caller's buffer (err, err_len; truncated and always NUL-terminated when
 * err_len > 0; err may be NULL). No C++ exception crosses this interface and the library
 * keeps no global error state.
 *
 * Ownership: an isplit_model is created by isplit_model_load and released by
 * isplit_model_free; an isplit_tensor filled by a run belongs to the caller and is
 * released by isplit_tensor_free.
 *
 * Thread safety: a model may be used by one thread at a time (its layers are not
 * reentrant); different models are independent and may run concurrently. Each run itself
 * spreads its work over the engine's OpenMP threads (OMP_NUM_THREADS).
 *
 * Linking from C: see docs/capi.md (libisplit_capi.a, libisplit_models.a, ...,
 * -lstdc++ -fopenmp -lz -lm). */
#ifndef ISPLIT_CAPI_ISPLIT_H
#define ISPLIT_CAPI_ISPLIT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Result of every fallible call. */
typedef enum isplit_status {
  ISPLIT_OK = 0,
  ISPLIT_ERR_ARGUMENT = 1, /* NULL pointer, bad size, unknown architecture or cut point */
  ISPLIT_ERR_FILE = 2,     /* the weights file cannot be opened or read */
  ISPLIT_ERR_FORMAT = 3,   /* the weights file is malformed or does not fit the model */
  ISPLIT_ERR_MEMORY = 4,   /* out of memory */
  ISPLIT_ERR_INTERNAL = 5  /* any other failure inside the engine */
} isplit_status;

/* An opaque loaded model (possibly truncated at a cut point). */
typedef struct isplit_model isplit_model;

/* A float32 tensor in row-major NCHW ([N,C,H,W]) or [N,F] order; shape[i] for i >= ndim is
 * 0. data holds shape[0] * ... * shape[ndim-1] floats. Filled by a run, owned by the
 * caller, released with isplit_tensor_free. */
typedef struct isplit_tensor {
  float* data;
  int64_t shape[4];
  int ndim;
} isplit_tensor;

/* Version of the library as "major.minor.patch" (a static string). */
const char* isplit_version(void);

/* Short name of a status ("ok", "argument", "file", "format", "memory", "internal"). */
const char* isplit_status_name(isplit_status status);

/* Loads arch ("vgg16" or "resnet50") with weights from a .safetensors file; with cut
 * non-NULL and non-empty, the model runs only up to that cut point (e.g. "layer2.0").
 * On success *out is a new model; on failure *out is NULL. */
isplit_status isplit_model_load(const char* arch, const char* weights_path, const char* cut,
                                isplit_model** out, char* err, size_t err_len);

/* Releases a model (NULL is allowed). */
void isplit_model_free(isplit_model* model);

/* Width of the model's classifier (0 for a NULL model). */
int64_t isplit_model_num_classes(const isplit_model* model);

/* The cut point the model stops at ("" for the whole network or a NULL model); valid
 * until the model is freed. */
const char* isplit_model_cut(const isplit_model* model);

/* Runs the model on n already-normalized images given as float32 NCHW [n,3,h,w] and
 * fills *out with the logits [n,classes] or the cut point's activation. */
isplit_status isplit_run_float(isplit_model* model, const float* nchw, int n, int h, int w,
                               isplit_tensor* out, char* err, size_t err_len);

/* Runs the model on one 8-bit RGB image (h rows of w pixels, interleaved HWC), converted
 * like the CLI: scaled to [0,1], resized bilinearly to input_size x input_size when it
 * differs, normalized with the ImageNet mean and std. Fills *out as isplit_run_float. */
isplit_status isplit_run_rgb(isplit_model* model, const uint8_t* rgb_hwc, int h, int w,
                             int input_size, isplit_tensor* out, char* err, size_t err_len);

/* Releases a tensor's data and zeroes it (NULL and an already-freed tensor are allowed). */
void isplit_tensor_free(isplit_tensor* tensor);

#ifdef __cplusplus
}
#endif

#endif /* ISPLIT_CAPI_ISPLIT_H */
