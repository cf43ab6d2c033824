// Model structure: torchvision names and counts, cut points, input sizes, save/load,
// BatchNorm folding, stopping at a cut point, head-only models and their memory,
// thread-count independence.
#include <doctest/doctest.h>

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <map>
#include <random>

#include "engine/parallel.h"
#include "engine/safetensors.h"
#include "models/memory.h"
#include "models/model.h"
#include "tests/model_util.h"

using namespace isplit;
using namespace isplit::testing;

TEST_SUITE("models") {
  TEST_CASE("torchvision parameter names and counts") {
    auto vgg = build_model("vgg16", 1000);
    auto res = build_model("resnet50", 1000);
    CHECK(vgg->parameter_count() == 138357544);  // torchvision vgg16
    CHECK(res->parameter_count() == 25557032);   // torchvision resnet50
    CHECK(vgg->named_parameters().size() == 32);
    CHECK(res->named_parameters().size() == 267);  // state_dict() minus num_batches_tracked
    auto names = res->named_parameters();
    CHECK(names.front().first == "conv1.weight");
    CHECK(names[1].first == "bn1.weight");
    CHECK(names.back().first == "fc.bias");
    bool found = false;
    for (auto& [n, p] : names) found = found || (n == "layer3.5.bn2.running_var" && p->is_buffer);
    CHECK(found);
    CHECK(vgg->named_parameters().back().first == "classifier.6.bias");
    CHECK(build_model("vgg16", 7)->named_parameters().back().second->value.dim(0) == 7);
    CHECK_THROWS_AS(build_model("alexnet", 10), Error);
    CHECK_THROWS_AS(build_model("vgg16", 0), Error);
  }

  TEST_CASE("cut points follow DESIGN.md") {
    auto vgg = build_model("vgg16", 10);
    auto res = build_model("resnet50", 10);
    CHECK(vgg->cut_points(true).size() == 31);
    CHECK(vgg->cut_points(false).size() == 18);
    CHECK(res->cut_points(true).size() == 20);
    CHECK(res->cut_points(false).size() == 18);
    CHECK(vgg->cut_points(false).front().name == "features.1");
    CHECK(vgg->cut_points(false).back().name == "features.30");
    CHECK(res->cut_points(true).front().name == "conv1");
    CHECK(res->cut_points(false).front().name == "relu");
    CHECK(res->cut_points(false).back().name == "layer4.2");
  }

  TEST_CASE("any input size from 32, shapes as torchvision") {
    for (const char* arch : {"vgg16", "resnet50"}) {
      auto m = build_model(arch, 10);
      for (int64_t size : {32, 45, 64}) {
        INFO(arch << " at " << size);
        Tensor y = m->predict(random_tensor({2, 3, size, size}, 1));
        CHECK(y.shape() == Shape{2, 10});
        for (int64_t i = 0; i < y.numel(); ++i) REQUIRE(std::isfinite(y[i]));
      }
    }
    auto res = build_model("resnet50", 10);
    auto info = res->stage_info({1, 3, 224, 224});
    for (auto& s : info)
      if (s.name == "layer3.5") CHECK(s.out_shape == Shape{1, 1024, 14, 14});
    auto vgg = build_model("vgg16", 10);
    for (auto& s : vgg->stage_info({1, 3, 64, 64}))
      if (s.name == "avgpool") CHECK(s.out_shape == Shape{1, 512, 7, 7});
    CHECK_THROWS_AS(res->predict(random_tensor({1, 1, 64, 64}, 1)), Error);
  }

  TEST_CASE("stop_after returns the cut point's output") {
    auto m = build_model("resnet50", 10);
    Tensor x = random_tensor({1, 3, 64, 64}, 2);
    Tensor seen;
    m->forward(nullptr, Var{x}, [&](const std::string& n, const Var& v) {
      if (n == "layer2.1") seen = v.value.clone();
    });
    Var head = m->forward(nullptr, Var{x}, nullptr, "layer2.1");
    REQUIRE(head.value.shape() == seen.shape());
    CHECK(max_rel(head.value, seen) == 0.0);
    CHECK_THROWS_AS(m->forward(nullptr, Var{x}, nullptr, "layer9.9"), Error);
  }

  TEST_CASE("a head holds only its stages and computes the whole network's cut output") {
    const auto dir = std::filesystem::temp_directory_path() / ("isplit_head_" + std::to_string(getpid()));
    std::filesystem::create_directories(dir);
    auto whole = build_model("resnet50", 10, 7);
    randomise_batchnorm(*whole);
    whole->set_training(false);
    whole->save((dir / "w.safetensors").string());
    const size_t before = tensor_live_bytes();
    auto head = load_model("resnet50", (dir / "w.safetensors").string(), 0, "layer2.0");
    CHECK(tensor_live_bytes() - before < 4u << 20);  // conv1..layer2.0: ~1.7 MB of weights
    CHECK(head->head_cut() == "layer2.0");
    CHECK(head->has_cut_point("layer2.0"));
    CHECK_FALSE(head->has_cut_point("layer2.1"));
    CHECK(head->named_parameters().back().first == "layer2.0.downsample.1.running_var");
    head->set_training(false);
    Tensor x = random_tensor({2, 3, 64, 64}, 12);
    Tensor ref = whole->forward(nullptr, Var{x}, nullptr, "layer2.0").value;
    CHECK(max_rel(head->predict(x), ref) == 0.0);
    // Same initial weights as the whole network's first stages, for every seed.
    auto fresh_head = build_model("vgg16", 10, 5, "features.4");
    auto fresh_whole = build_model("vgg16", 10, 5);
    auto hp = fresh_head->named_parameters();
    auto wp = fresh_whole->named_parameters();
    REQUIRE(hp.size() == 4);
    for (size_t i = 0; i < hp.size(); ++i) {
      CHECK(hp[i].first == wp[i].first);
      const Tensor& a = hp[i].second->value;
      const Tensor& b = wp[i].second->value;
      REQUIRE(a.numel() == b.numel());
      CHECK(std::equal(a.data(), a.data() + a.numel(), b.data()));
    }
    // A head file (saved by a head) loads back as that head.
    head->save((dir / "h.safetensors").string());
    CHECK(load_model("resnet50", (dir / "h.safetensors").string(), 0, "layer2.0")
              ->named_parameters().size() == head->named_parameters().size());
    CHECK_THROWS_AS(load_model("resnet50", (dir / "h.safetensors").string(), 0, "layer2.1"), Error);
    CHECK_THROWS_AS(build_model("resnet50", 10, 0, "layer9.9"), CutPointError);
    CHECK_THROWS_AS(build_model("vgg16", 10, 0, "classifier.0"), CutPointError);  // not a cut point
    CHECK(cut_point_names("resnet50", false).size() == head->cut_points(false).size() + 12);
    std::filesystem::remove_all(dir);
  }

  TEST_CASE("head memory: one pass over the whole network equals each head run alone") {
    for (const std::string arch : {"resnet50", "vgg16"}) {
      CAPTURE(arch);
      auto whole = build_model(arch, 10, 1);
      const Shape input = {1, 3, 32, 32};
      whole->predict(Tensor(input));  // grow the kernels' scratch buffers first
      const std::vector<HeadMemory> all = measure_cut_memory(*whole, input);
      REQUIRE(all.size() == whole->cut_points(true).size());
      size_t last_weights = 0;
      for (const HeadMemory& h : all) {
        CHECK(h.weight_bytes >= last_weights);
        last_weights = h.weight_bytes;
      }
      for (const char* cut : {"features.4", "features.30", "maxpool", "layer3.2", "layer4.2"}) {
        const auto it = std::find_if(all.begin(), all.end(), [&](const HeadMemory& h) { return h.cut == cut; });
        if (it == all.end()) continue;
        CAPTURE(cut);
        const HeadMemory alone = measure_head(arch, 10, cut, input);
        CHECK(alone.weight_bytes == it->weight_bytes);
        CHECK(alone.activation_bytes == it->activation_bytes);
      }
      // At least the input and the cut output are live at the end of a head.
      const auto stages = whole->stage_info(input);
      for (const HeadMemory& h : all)
        for (const StageInfo& s : stages)
          if (s.name == h.cut)
            CHECK(h.activation_bytes >= tensor_storage_bytes(shape_numel(s.out_shape)) +
                                            tensor_storage_bytes(shape_numel(input)));
    }
  }

  TEST_CASE("save and load round trip") {
    const auto dir = std::filesystem::temp_directory_path() / ("isplit_models_" + std::to_string(getpid()));
    std::filesystem::create_directories(dir);
    auto a = build_model("resnet50", 10, 11);
    randomise_batchnorm(*a);
    a->save((dir / "w.safetensors").string());
    auto b = load_model("resnet50", (dir / "w.safetensors").string());
    CHECK(b->num_classes() == 10);
    // load_model builds without drawing weights: every parameter must come from the file.
    auto ap = a->named_parameters(), bq = b->named_parameters();
    REQUIRE(ap.size() == bq.size());
    for (size_t i = 0; i < ap.size(); ++i) {
      const Tensor &u = ap[i].second->value, &v = bq[i].second->value;
      REQUIRE(u.numel() == v.numel());
      CHECK_MESSAGE(std::equal(u.data(), u.data() + u.numel(), v.data()), ap[i].first);
    }
    Tensor x = random_tensor({1, 3, 48, 48}, 4);
    CHECK(max_rel(b->predict(x), a->predict(x)) == 0.0);
    CHECK_THROWS_AS(load_model("vgg16", (dir / "w.safetensors").string()), Error);
    std::filesystem::remove_all(dir);
  }

  TEST_CASE("a model built to be loaded draws no weights") {
    // Without random_init every convolution and linear weight stays zero (the round trip
    // above checks that loading then sets every parameter).
    for (const bool vgg : {false, true}) {
      auto blank = vgg ? make_vgg16(10, 5, "", false, false) : make_resnet50(10, 5, "", false, false);
      auto drawn = vgg ? make_vgg16(10, 5, "", false, true) : make_resnet50(10, 5, "", false, true);
      auto bp = blank->named_parameters(), dp = drawn->named_parameters();
      REQUIRE(bp.size() == dp.size());
      int weights = 0;
      for (size_t i = 0; i < bp.size(); ++i) {
        const std::string& name = bp[i].first;
        CHECK(name == dp[i].first);
        const bool drawn_param = name.size() > 7 && name.compare(name.size() - 7, 7, ".weight") == 0 &&
                                 dp[i].second->value.ndim() >= 2;  // conv and linear weights
        const Tensor& t = bp[i].second->value;
        const bool zero = std::all_of(t.data(), t.data() + t.numel(), [](float v) { return v == 0.0f; });
        if (drawn_param) {
          ++weights;
          CHECK_MESSAGE(zero, name);
          const Tensor& d = dp[i].second->value;
          CHECK_MESSAGE(std::any_of(d.data(), d.data() + d.numel(), [](float v) { return v != 0.0f; }), name);
        }
      }
      CHECK(weights == (vgg ? 16 : 54));
    }
  }

  TEST_CASE("folded BatchNorm gives the unfolded outputs") {
    auto m = build_model("resnet50", 10, 5);
    randomise_batchnorm(*m);
    Tensor x = random_tensor({2, 3, 64, 64}, 6);
    Tensor ref = m->predict(x);
    m->fold_batchnorm();
    CHECK(m->folded());
    CHECK(max_rel(m->predict(x), ref) < 1e-4);
    CHECK_FALSE(m->has_cut_point("conv1"));  // folded into bn1: no longer observable
    CHECK_FALSE(m->has_cut_point("bn1"));    // the ReLU after it is fused into conv1
    CHECK(m->has_cut_point("relu"));
    CHECK(m->has_cut_point("layer1.0"));
    Tape tape = Tape::activations_only();
    CHECK_THROWS_AS(m->forward(&tape, tape.input(x)), Error);  // fused: inference only
    m->set_training(true);
    CHECK_THROWS_AS(m->predict(x), Error);
  }

  TEST_CASE("folded VGG16: ReLUs fused into the convolutions, same outputs and cut values") {
    auto m = build_model("vgg16", 10, 5);
    Tensor x = random_tensor({1, 3, 64, 64}, 6);
    std::map<std::string, Tensor> before;
    Tensor ref = m->forward(nullptr, Var{x}, [&](const std::string& n, const Var& v) {
      before[n] = v.value;
    }).value;
    m->fold_batchnorm();
    m->pack_for_inference();
    CHECK_FALSE(m->has_cut_point("features.0"));  // its ReLU is fused into it
    CHECK(m->has_cut_point("features.1"));
    int seen = 0;
    Tensor out = m->forward(nullptr, Var{x}, [&](const std::string& n, const Var& v) {
      CHECK_MESSAGE(max_rel(v.value, before.at(n)) < 1e-4, n);
      ++seen;
    }).value;
    CHECK(seen == static_cast<int>(m->cut_points(true).size()));
    CHECK(max_rel(out, ref) < 1e-4);
  }

  TEST_CASE("the stage timer sees every stage once per pass, in order, and changes nothing") {
    auto m = build_model("resnet50", 10, 3);
    Tensor x = random_tensor({1, 3, 32, 32}, 4);
    const Tensor ref = m->predict(x);
    std::vector<std::string> names;
    std::vector<double> seconds;
    m->set_stage_timer([&](const std::string& n, double s) {
      names.push_back(n);
      seconds.push_back(s);
    });
    Tensor out = m->predict(x);
    CHECK(max_rel(out, ref) == 0.0);
    // 4 stem stages, 16 bottlenecks, avgpool, flatten, fc.
    REQUIRE(names.size() == 23);
    CHECK(names.front() == "conv1");
    CHECK(names[4] == "layer1.0");
    CHECK(names[19] == "layer4.2");
    CHECK(names.back() == "fc");
    for (double s : seconds) CHECK(s >= 0.0);
    // Stopping at a cut point reports only the stages that ran.
    names.clear();
    (void)m->forward(nullptr, Var{x}, nullptr, "layer1.0");
    CHECK(names.size() == 5);
    // A packed VGG16 at 64x64 runs avgpool -> flatten -> fc as one map: reported once.
    auto vgg = build_model("vgg16", 10, 3);
    vgg->fold_batchnorm();
    vgg->pack_for_inference();
    std::vector<std::string> vnames;
    vgg->set_stage_timer([&](const std::string& n, double) { vnames.push_back(n); });
    (void)vgg->predict(random_tensor({1, 3, 64, 64}, 5));
    CHECK(std::count(vnames.begin(), vnames.end(), "avgpool+flatten+classifier.0") == 1);
    // Removed: no more calls.
    m->set_stage_timer(nullptr);
    names.clear();
    (void)m->predict(x);
    CHECK(names.empty());
  }

  TEST_CASE("results do not depend on the thread count") {
    auto m = build_model("resnet50", 10, 8);
    Tensor x = random_tensor({2, 3, 64, 64}, 9);
    auto run = [&](int threads) {
      set_num_threads(threads);
      Tape tape = Tape::activations_only();
      Var cut;
      Var out = m->forward(&tape, tape.input(x), [&](const std::string& n, const Var& v) {
        if (n == "layer1.0") cut = v;
      });
      Tensor seed = Tensor::zeros(out.value.shape());
      seed[3] = 1.0f;
      tape.backward(out, seed);
      return std::make_pair(out.value.clone(), tape.grad(cut).clone());
    };
    auto one = run(1);
    auto two = run(2);
    set_num_threads(0);
    // Forward and activation gradients: bitwise equal (every reduction has a fixed order).
    CHECK(max_rel(one.first, two.first) == 0.0);
    CHECK(max_rel(one.second, two.second) == 0.0);
  }
}
