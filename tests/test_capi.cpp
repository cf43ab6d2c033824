// The C API (capi/isplit.h) used from C++: results equal the C++ API's on the ResNet-50
// fixture weights (whole network, a cut point, a cut point hidden by BatchNorm folding,
// RGB input), and every error is a status with a message, never an exception.
#include <doctest/doctest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "capi/isplit.h"
#include "conformance_util.h"
#include "data/image.h"
#include "models/model.h"

using namespace isplit;

namespace {

// The fixture weights, or "" (the test then skips) when `make fixtures` has not run.
std::string weights_or_skip() {
  const std::string path = testing::fixture_dir("resnet50_64") + "/weights.safetensors";
  if (std::filesystem::exists(path)) return path;
  MESSAGE("skipped: " << path << " is missing (run `make fixtures`)");
  return "";
}

std::vector<float> random_values(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

// The C tensor as a Tensor (copied), for comparison.
Tensor to_tensor(const isplit_tensor& t) {
  Shape s(t.shape, t.shape + t.ndim);
  Tensor out = Tensor::empty(s);
  std::memcpy(out.data(), t.data, out.bytes());
  return out;
}

// Loads through the C API, failing the test with the message on error.
isplit_model* load_ok(const std::string& path, const char* cut) {
  char err[512];
  isplit_model* m = nullptr;
  const isplit_status st = isplit_model_load("resnet50", path.c_str(), cut, &m, err, sizeof err);
  INFO(err);
  REQUIRE(st == ISPLIT_OK);
  REQUIRE(m != nullptr);
  return m;
}

}  // namespace

TEST_SUITE("capi") {

TEST_CASE("version and status names") {
  CHECK(std::string(isplit_version()) == "0.1.0");
  CHECK(std::string(isplit_status_name(ISPLIT_ERR_FILE)) == "file");
  CHECK(isplit_model_num_classes(nullptr) == 0);
  CHECK(std::string(isplit_model_cut(nullptr)).empty());
  isplit_model_free(nullptr);
  isplit_tensor_free(nullptr);
}

TEST_CASE("whole network: logits equal Model::predict") {
  const std::string path = weights_or_skip();
  if (path.empty()) return;
  isplit_model* m = load_ok(path, nullptr);
  CHECK(std::string(isplit_model_cut(m)).empty());
  auto ref = load_model("resnet50", path);
  CHECK(isplit_model_num_classes(m) == ref->num_classes());
  ref->fold_batchnorm();  // the C API folds when the cut stays observable

  const std::vector<float> x = random_values(2 * 3 * 64 * 64, 1);
  isplit_tensor out;
  char err[256];
  REQUIRE(isplit_run_float(m, x.data(), 2, 64, 64, &out, err, sizeof err) == ISPLIT_OK);
  CHECK(std::string(err).empty());
  REQUIRE(out.ndim == 2);
  CHECK(out.shape[0] == 2);
  CHECK(out.shape[1] == ref->num_classes());
  CHECK(out.shape[2] == 0);
  const Tensor expected = ref->predict(Tensor::from({2, 3, 64, 64}, x));
  testing::check_close(to_tensor(out), expected, 1e-5, "logits");
  isplit_tensor_free(&out);
  CHECK(out.data == nullptr);
  CHECK(out.ndim == 0);
  isplit_tensor_free(&out);  // twice is harmless
  isplit_model_free(m);
}

TEST_CASE("cut point: output equals forward(stop_after)") {
  const std::string path = weights_or_skip();
  if (path.empty()) return;
  const std::vector<float> x = random_values(3 * 64 * 64, 2);
  // layer2.0 survives BatchNorm folding; conv1 does not (the C API then keeps BN unfolded).
  for (const char* cut : {"layer2.0", "conv1"}) {
    CAPTURE(cut);
    isplit_model* m = load_ok(path, cut);
    CHECK(std::string(isplit_model_cut(m)) == cut);
    auto ref = load_model("resnet50", path);
    if (std::string(cut) != "conv1") ref->fold_batchnorm();
    isplit_tensor out;
    char err[256];
    REQUIRE(isplit_run_float(m, x.data(), 1, 64, 64, &out, err, sizeof err) == ISPLIT_OK);
    REQUIRE(out.ndim == 4);
    const Tensor expected =
        ref->forward(nullptr, Var{Tensor::from({1, 3, 64, 64}, x)}, nullptr, cut).value;
    CHECK(shape_str(to_tensor(out).shape()) == shape_str(expected.shape()));
    testing::check_close(to_tensor(out), expected, 1e-5, cut);
    isplit_tensor_free(&out);
    isplit_model_free(m);
  }
}

TEST_CASE("rgb input equals image_to_tensor + forward") {
  const std::string path = weights_or_skip();
  if (path.empty()) return;
  isplit_model* m = load_ok(path, "layer1.2");
  auto ref = load_model("resnet50", path);
  ref->fold_batchnorm();
  Image img;
  img.width = 50;
  img.height = 40;
  img.channels = 3;
  img.pixels.resize(50 * 40 * 3);
  for (size_t i = 0; i < img.pixels.size(); ++i) img.pixels[i] = uint8_t((i * 37 + 11) % 256);
  for (int size : {64, 40}) {  // a 50x40 image: resized both ways (up and down)
    CAPTURE(size);
    isplit_tensor out;
    char err[256];
    REQUIRE(isplit_run_rgb(m, img.pixels.data(), 40, 50, size, &out, err, sizeof err) ==
            ISPLIT_OK);
    const Tensor t = image_to_tensor(img, size).reshape({1, 3, size, size});
    const Tensor expected = ref->forward(nullptr, Var{t}, nullptr, "layer1.2").value;
    testing::check_close(to_tensor(out), expected, 1e-5, "rgb");
    isplit_tensor_free(&out);
  }
  // A square image of exactly the input size takes the no-resize path.
  Image sq;
  sq.width = sq.height = 32;
  sq.channels = 3;
  sq.pixels.assign(32 * 32 * 3, 0);
  for (size_t i = 0; i < sq.pixels.size(); ++i) sq.pixels[i] = uint8_t((i * 13) % 251);
  isplit_tensor out;
  REQUIRE(isplit_run_rgb(m, sq.pixels.data(), 32, 32, 32, &out, nullptr, 0) == ISPLIT_OK);
  const Tensor expected =
      ref->forward(nullptr, Var{image_to_tensor(sq, 32).reshape({1, 3, 32, 32})}, nullptr,
                   "layer1.2")
          .value;
  testing::check_close(to_tensor(out), expected, 1e-5, "rgb 32");
  isplit_tensor_free(&out);
  isplit_model_free(m);
}

TEST_CASE("load errors: status and message, no exception") {
  char err[512];
  isplit_model* m = reinterpret_cast<isplit_model*>(0x1);

  SUBCASE("missing file") {
    const std::string missing = "/nonexistent/dir/weights.safetensors";
    CHECK(isplit_model_load("resnet50", missing.c_str(), nullptr, &m, err, sizeof err) ==
          ISPLIT_ERR_FILE);
    CHECK(m == nullptr);
    CHECK(std::string(err).find(missing) != std::string::npos);
  }
  SUBCASE("not a safetensors file") {
    const std::string bad = std::filesystem::temp_directory_path() / "isplit_capi_bad.st";
    { std::ofstream(bad) << "this is not safetensors"; }
    CHECK(isplit_model_load("resnet50", bad.c_str(), nullptr, &m, err, sizeof err) ==
          ISPLIT_ERR_FORMAT);
    CHECK(m == nullptr);
    CHECK(std::string(err).find(bad) != std::string::npos);
    std::filesystem::remove(bad);
  }
  SUBCASE("bad arch") {
    CHECK(isplit_model_load("alexnet", "x.safetensors", nullptr, &m, err, sizeof err) ==
          ISPLIT_ERR_ARGUMENT);
    CHECK(m == nullptr);
    CHECK(std::string(err).find("alexnet") != std::string::npos);
    CHECK(std::string(err).find("resnet50") != std::string::npos);
  }
  SUBCASE("NULL pointers") {
    CHECK(isplit_model_load(nullptr, "x", nullptr, &m, err, sizeof err) == ISPLIT_ERR_ARGUMENT);
    CHECK(std::string(err).find("arch") != std::string::npos);
    CHECK(isplit_model_load("resnet50", nullptr, nullptr, &m, err, sizeof err) ==
          ISPLIT_ERR_ARGUMENT);
    CHECK(isplit_model_load("resnet50", "x", nullptr, nullptr, err, sizeof err) ==
          ISPLIT_ERR_ARGUMENT);
    // No message buffer at all is fine too.
    CHECK(isplit_model_load(nullptr, nullptr, nullptr, nullptr, nullptr, 0) ==
          ISPLIT_ERR_ARGUMENT);
  }
  SUBCASE("bad cut point") {
    const std::string path = weights_or_skip();
    if (path.empty()) return;
    CHECK(isplit_model_load("resnet50", path.c_str(), "layer9.9", &m, err, sizeof err) ==
          ISPLIT_ERR_ARGUMENT);
    CHECK(m == nullptr);
    const std::string msg = err;
    CHECK(msg.find("unknown cut point 'layer9.9'") != std::string::npos);
    CHECK(msg.find("layer2.0") != std::string::npos);  // lists the valid names
  }
  SUBCASE("tiny error buffer: truncated and NUL-terminated") {
    char small[8];
    std::memset(small, 'x', sizeof small);
    CHECK(isplit_model_load("alexnet", "x", nullptr, &m, small, 5) == ISPLIT_ERR_ARGUMENT);
    CHECK(std::string(small) == "ispl");
    CHECK(small[5] == 'x');  // nothing written past err_len
    char one = 'x';
    CHECK(isplit_model_load("alexnet", "x", nullptr, &m, &one, 1) == ISPLIT_ERR_ARGUMENT);
    CHECK(one == '\0');
  }
}

TEST_CASE("run errors: status and message, no exception") {
  const std::string path = weights_or_skip();
  if (path.empty()) return;
  isplit_model* m = load_ok(path, "layer1.0");
  const std::vector<float> x(3 * 64 * 64, 0.5f);
  char err[512];
  isplit_tensor out;
  out.data = reinterpret_cast<float*>(0x1);

  CHECK(isplit_run_float(nullptr, x.data(), 1, 64, 64, &out, err, sizeof err) ==
        ISPLIT_ERR_ARGUMENT);
  CHECK(out.data == nullptr);  // cleared even on failure: safe to free
  CHECK(std::string(err).find("model") != std::string::npos);
  CHECK(isplit_run_float(m, nullptr, 1, 64, 64, &out, err, sizeof err) == ISPLIT_ERR_ARGUMENT);
  CHECK(isplit_run_float(m, x.data(), 1, 64, 64, nullptr, err, sizeof err) ==
        ISPLIT_ERR_ARGUMENT);
  for (auto [n, h, w] : {std::tuple{0, 64, 64}, {1, 0, 64}, {1, 64, 0}, {-1, 64, 64}}) {
    CHECK(isplit_run_float(m, x.data(), n, h, w, &out, err, sizeof err) == ISPLIT_ERR_ARGUMENT);
    CHECK(std::string(err).find("bad input size") != std::string::npos);
  }
  // Too large: rejected before any allocation (x is far too short; it is never read).
  CHECK(isplit_run_float(m, x.data(), 1 << 20, 1024, 1024, &out, err, sizeof err) ==
        ISPLIT_ERR_ARGUMENT);
  CHECK(std::string(err).find("too large") != std::string::npos);
  CHECK(isplit_run_float(m, x.data(), 1, 1 << 30, 1 << 30, &out, err, sizeof err) ==
        ISPLIT_ERR_ARGUMENT);

  std::vector<uint8_t> rgb(8 * 8 * 3, 100);
  CHECK(isplit_run_rgb(m, nullptr, 8, 8, 64, &out, err, sizeof err) == ISPLIT_ERR_ARGUMENT);
  CHECK(isplit_run_rgb(m, rgb.data(), 8, 8, 0, &out, err, sizeof err) == ISPLIT_ERR_ARGUMENT);
  CHECK(isplit_run_rgb(m, rgb.data(), 0, 8, 64, &out, err, sizeof err) == ISPLIT_ERR_ARGUMENT);
  CHECK(isplit_run_rgb(m, rgb.data(), 1 << 30, 1 << 30, 64, &out, err, sizeof err) ==
        ISPLIT_ERR_ARGUMENT);
  CHECK(out.data == nullptr);
  isplit_tensor_free(&out);
  isplit_model_free(m);
}

}  // TEST_SUITE
