// The oneDNN backend (models/onednn/, built with ISPLIT_HAVE_ONEDNN) against the native
// engine: same logits for both models, folded or not, at two input sizes and two batch
// sizes; heads up to a cut point; its errors for other architectures and bad shapes.
#ifdef ISPLIT_HAVE_ONEDNN
#include <doctest/doctest.h>

#include <string>

#include "engine/parallel.h"
#include "models/model.h"
#include "models/onednn/onednn_net.h"
#include "tests/model_util.h"

using namespace isplit;
using namespace isplit::testing;

namespace {

// A model of an architecture the backend does not know (or, named as one it knows, a
// network without any parameters).
class BareModel : public Model {
 public:
  explicit BareModel(const std::string& arch) : Model(arch, 10, "", false) {}
};

// Checks OnednnNet against the native logits `ref` of model's unfolded network for every
// input in xs; returns the largest relative error.
double check_against(Model& model, const std::vector<Tensor>& xs, const std::vector<Tensor>& refs) {
  double worst = 0;
  for (size_t i = 0; i < xs.size(); ++i) {
    OnednnNet net(model, xs[i].shape());
    const Tensor y = net.forward(xs[i]);
    REQUIRE(y.shape() == refs[i].shape());
    const double err = max_rel(y, refs[i]);
    CHECK_MESSAGE(err < 1e-4, model.arch() << (model.folded() ? " folded " : " ") << shape_str(xs[i].shape())
                                           << ": relative error " << err);
    worst = std::max(worst, err);
  }
  return worst;
}

}  // namespace

TEST_SUITE("onednn") {
  TEST_CASE("oneDNN logits equal the native ones: both models, folded or not, 32 and 64, batch 1 and 3") {
    for (const std::string arch : {"resnet50", "vgg16"}) {
      auto model = build_model(arch, 10, 11);
      randomise_batchnorm(*model);  // ResNet-50: folding has real statistics to fold
      std::vector<Tensor> xs, refs;
      uint64_t seed = 20;
      for (int64_t size : {32, 64})
        for (int64_t batch : {1, 3}) {
          xs.push_back(random_tensor({batch, 3, size, size}, seed++));
          refs.push_back(model->predict(xs.back()));  // unfolded, BatchNorm in evaluation mode
        }
      check_against(*model, xs, refs);
      model->fold_batchnorm();
      model->pack_for_inference();
      check_against(*model, xs, refs);
    }
  }

  TEST_CASE("a built network stands alone: repeated passes, thread counts, model gone") {
    auto model = build_model("resnet50", 7, 12);
    randomise_batchnorm(*model);
    const Tensor x = random_tensor({2, 3, 40, 40}, 13);
    const Tensor ref = model->predict(x);
    OnednnNet net(*model, x.shape());
    model.reset();  // the network holds its own copy of the weights
    CHECK(net.input_shape() == Shape{2, 3, 40, 40});
    CHECK(net.output_shape() == Shape{2, 7});
    const int threads = num_threads();
    set_num_threads(1);
    const Tensor one = net.forward(x);
    set_num_threads(2);
    const Tensor two = net.forward(x);
    const Tensor again = net.forward(x);  // the residual adds run in place: nothing may leak
    set_num_threads(threads);
    CHECK(max_rel(one, ref) < 1e-4);
    CHECK(max_rel(two, ref) < 1e-4);
    CHECK(max_rel(again, two) == 0.0);
  }

  TEST_CASE("heads: the cut point's output, before or after a fused ReLU, folded or not") {
    const std::vector<std::pair<std::string, std::string>> cuts = {
        {"resnet50", "conv1"}, {"resnet50", "bn1"}, {"resnet50", "relu"}, {"resnet50", "maxpool"},
        {"resnet50", "layer2.0"}, {"vgg16", "features.0"}, {"vgg16", "features.1"},
        {"vgg16", "features.4"}, {"vgg16", "features.30"}};
    const Tensor x = random_tensor({2, 3, 48, 48}, 14);
    for (const auto& [arch, cut] : cuts) {
      auto head = build_model(arch, 10, 15, cut);
      randomise_batchnorm(*head);
      const Tensor ref = head->forward(nullptr, Var{x}, nullptr, cut).value;
      OnednnNet net(*head, x.shape());
      CHECK(net.output_shape() == ref.shape());
      const Tensor y = net.forward(x);
      REQUIRE(y.shape() == ref.shape());
      CHECK_MESSAGE(max_rel(y, ref) < 1e-4, arch << " head to " << cut << ": " << max_rel(y, ref));
      head->fold_batchnorm();
      if (head->has_cut_point(cut)) {
        CHECK(max_rel(OnednnNet(*head, x.shape()).forward(x), ref) < 1e-4);
      } else {  // conv1, bn1, features.0: their values are gone once the ReLU is fused
        CHECK_THROWS_WITH_AS(OnednnNet(*head, x.shape()), doctest::Contains("folded away"), Error);
      }
    }
  }

  TEST_CASE("clear errors: other architectures, missing weights, bad shapes") {
    BareModel alexnet("alexnet");
    CHECK_THROWS_WITH_AS(OnednnNet(alexnet, {1, 3, 32, 32}), doctest::Contains("'alexnet' is not supported"), Error);
    BareModel empty("resnet50");
    CHECK_THROWS_WITH_AS(OnednnNet(empty, {1, 3, 32, 32}), doctest::Contains("no parameter conv1.weight"), Error);

    auto vgg = build_model("vgg16", 10, 1);
    for (const Shape& bad : {Shape{1, 3, 32}, Shape{1, 1, 32, 32}, Shape{0, 3, 32, 32}, Shape{1, 3, 32, 32, 1}})
      CHECK_THROWS_WITH_AS(OnednnNet(*vgg, bad), doctest::Contains("is not [N, 3, H, W]"), Error);
    // Five 2x2 pools leave nothing of a 16x16 input for the last one.
    CHECK_THROWS_WITH_AS(OnednnNet(*vgg, {1, 3, 16, 16}), doctest::Contains("too small for features.30"), Error);

    auto res = build_model("resnet50", 10, 1);
    OnednnNet net(*res, {1, 3, 32, 32});
    CHECK_THROWS_WITH_AS(net.forward(Tensor({2, 3, 32, 32})), doctest::Contains("built for 1x3x32x32"), Error);
    CHECK_THROWS_WITH_AS(net.forward(Tensor({1, 3, 64, 64})), doctest::Contains("built for 1x3x32x32"), Error);
    CHECK(net.forward(Tensor({1, 3, 32, 32})).shape() == Shape{1, 10});
  }
}

#endif  // ISPLIT_HAVE_ONEDNN
