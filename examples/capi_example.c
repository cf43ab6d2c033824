/* Example of the isplit C API (C99): loads a model, optionally only up to a cut point,
 * runs it on a float32 NCHW input read from a file (or a deterministic generated one) and
 * prints the output shape with its first values, or the top-5 classes for logits.
 *
 *   usage: isplit_capi_example ARCH WEIGHTS.safetensors [CUT|-] [SIZE] [INPUT.f32|-]
 *                              [OUTPUT.f32]
 *
 * CUT "-" (or omitted) runs the whole network; SIZE is the input side (default 224);
 * INPUT.f32 holds 3*SIZE*SIZE raw little-endian float32 values, already normalized ("-" or
 * omitted: a generated pattern); OUTPUT.f32 receives the output tensor's raw values. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "isplit.h"

/* Writes count floats to path; returns 0 on success. */
static int write_floats(const char* path, const float* buf, size_t count) {
  FILE* f = fopen(path, "wb");
  if (!f) {
    fprintf(stderr, "error: %s: cannot create\n", path);
    return 1;
  }
  const size_t put = fwrite(buf, sizeof(float), count, f);
  if (fclose(f) != 0 || put != count) {
    fprintf(stderr, "error: %s: write failed\n", path);
    return 1;
  }
  return 0;
}

/* Reads exactly count floats from path into buf; returns 0 on success. */
static int read_floats(const char* path, float* buf, size_t count) {
  FILE* f = fopen(path, "rb");
  if (!f) {
    fprintf(stderr, "error: %s: cannot open\n", path);
    return 1;
  }
  const size_t got = fread(buf, sizeof(float), count, f);
  fclose(f);
  if (got != count) {
    fprintf(stderr, "error: %s: expected %zu floats, read %zu\n", path, count, got);
    return 1;
  }
  return 0;
}

int main(int argc, char** argv) {
  if (argc < 3 || argc > 7) {
    fprintf(stderr,
            "usage: %s ARCH WEIGHTS.safetensors [CUT|-] [SIZE] [INPUT.f32|-] [OUTPUT.f32]\n",
            argv[0]);
    return 2;
  }
  const char* arch = argv[1];
  const char* weights = argv[2];
  const char* cut = argc > 3 && strcmp(argv[3], "-") != 0 ? argv[3] : NULL;
  const int size = argc > 4 ? atoi(argv[4]) : 224;
  if (size <= 0 || size > 4096) {
    fprintf(stderr, "error: bad SIZE %s\n", argv[4]);
    return 2;
  }

  char err[512];
  isplit_model* model = NULL;
  isplit_status st = isplit_model_load(arch, weights, cut, &model, err, sizeof err);
  if (st != ISPLIT_OK) {
    fprintf(stderr, "error (%s): %s\n", isplit_status_name(st), err);
    return 1;
  }
  printf("isplit %s: %s, %lld classes, cut '%s'\n", isplit_version(), arch,
         (long long)isplit_model_num_classes(model), isplit_model_cut(model));

  const size_t count = (size_t)3 * size * size;
  float* input = malloc(count * sizeof(float));
  if (!input) {
    fprintf(stderr, "error: out of memory\n");
    isplit_model_free(model);
    return 1;
  }
  if (argc > 5 && strcmp(argv[5], "-") != 0) {
    if (read_floats(argv[5], input, count)) {
      free(input);
      isplit_model_free(model);
      return 1;
    }
  } else {
    /* A deterministic smooth pattern in roughly the range of normalized pixels. */
    for (size_t i = 0; i < count; ++i) input[i] = (float)((int)(i % 97) - 48) / 24.0f;
  }

  isplit_tensor out;
  st = isplit_run_float(model, input, 1, size, size, &out, err, sizeof err);
  free(input);
  if (st != ISPLIT_OK) {
    fprintf(stderr, "error (%s): %s\n", isplit_status_name(st), err);
    isplit_model_free(model);
    return 1;
  }

  int64_t numel = 1;
  printf("output shape [");
  for (int i = 0; i < out.ndim; ++i) {
    printf(i ? ", %lld" : "%lld", (long long)out.shape[i]);
    numel *= out.shape[i];
  }
  printf("]\nfirst values:");
  for (int64_t i = 0; i < numel && i < 8; ++i) printf(" %.6g", out.data[i]);
  printf("\n");

  if (out.ndim == 2) {
    /* Logits of one image: the five largest, by repeated selection. */
    const int64_t classes = out.shape[1];
    int64_t top[5];
    int k = 0;
    for (; k < 5 && k < classes; ++k) {
      int64_t best = -1;
      for (int64_t c = 0; c < classes; ++c) {
        int taken = 0;
        for (int j = 0; j < k; ++j) taken |= top[j] == c;
        if (!taken && (best < 0 || out.data[c] > out.data[best])) best = c;
      }
      top[k] = best;
    }
    printf("top-%d:", k);
    for (int j = 0; j < k; ++j) printf(" %lld (%.4f)", (long long)top[j], out.data[top[j]]);
    printf("\n");
  }

  int rc = 0;
  if (argc > 6) rc = write_floats(argv[6], out.data, (size_t)numel);
  isplit_tensor_free(&out);
  isplit_model_free(model);
  return rc;
}
