// I-SPLIT analysis: CAM formulas, the candidate rule, and the accumulator's invariance
// to batch size, thread count and sharding.
#include <doctest/doctest.h>

#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <limits>
#include <random>

#include "engine/parallel.h"
#include "isplit/analysis/importance.h"
#include "isplit/analysis/report.h"

using namespace isplit;

namespace {
Tensor random_images(int64_t n, int64_t size, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> d(0.0f, 1.0f);
  Tensor t = Tensor::empty({n, 3, size, size});
  for (int64_t i = 0; i < t.numel(); ++i) t[i] = d(rng);
  return t;
}

// Runs an accumulator over images [begin, end) in batches of `batch`.
void feed(ImportanceAccumulator& acc, const Tensor& x, const std::vector<int>& labels,
          int64_t begin, int64_t end, int64_t batch, int64_t step = 1) {
  std::vector<int64_t> sel;
  for (int64_t i = begin; i < end; i += step) sel.push_back(i);
  for (size_t s = 0; s < sel.size(); s += batch) {
    const size_t e = std::min(sel.size(), s + batch);
    const int64_t per = x.numel() / x.dim(0);
    Tensor b = Tensor::empty({int64_t(e - s), x.dim(1), x.dim(2), x.dim(3)});
    std::vector<int> l;
    for (size_t k = s; k < e; ++k) {
      std::copy(x.data() + sel[k] * per, x.data() + (sel[k] + 1) * per, b.data() + (k - s) * per);
      l.push_back(labels[sel[k]]);
    }
    acc.add_batch(b, l);
  }
}
}  // namespace

TEST_SUITE("analysis") {
  TEST_CASE("candidates are strict local maxima; zero CUI is never one") {
    const double ninf = -std::numeric_limits<double>::infinity();
    auto c = strict_local_maxima({1, 3, 2, 2, 5, 4});
    CHECK(c == std::vector<bool>{false, true, false, false, true, false});
    CHECK(strict_local_maxima({5, 1, 7}) == std::vector<bool>{true, false, true});
    CHECK(strict_local_maxima({2, 2, 2}) == std::vector<bool>{false, false, false});
    CHECK(strict_local_maxima({ninf, ninf, 1}) == std::vector<bool>{false, false, true});
    CHECK(strict_local_maxima({3}) == std::vector<bool>{false});
    CHECK(std::isinf(log10_cui(0.0)));
    CHECK(log10_cui(100.0) == doctest::Approx(2.0));
  }

  TEST_CASE("exact sums do not depend on the order of their terms") {
    std::mt19937_64 rng(1);
    std::uniform_real_distribution<double> u(0.0, 1.0);
    std::vector<double> v;
    for (int i = 0; i < 1000; ++i) v.push_back(std::ldexp(u(rng), int(u(rng) * 80) - 40));
    v.push_back(4.9e-324);  // smallest subnormal
    v.push_back(1e300);
    ExactSum a, b, c;
    for (double x : v) a.add(x);
    for (auto it = v.rbegin(); it != v.rend(); ++it) b.add(*it);
    ExactSum half1, half2;
    for (size_t i = 0; i < v.size(); ++i) (i % 2 ? half1 : half2).add(v[i]);
    c.add(half1);
    c.add(half2);
    CHECK(a == b);
    CHECK(a == c);
    CHECK(ExactSum::from_hex(a.to_hex()) == a);
    CHECK(a.value() == 1e300);
    ExactSum small;
    small.add(0.1);
    small.add(0.2);
    CHECK(small.value() == doctest::Approx(0.3).epsilon(1e-15));
    small.add(0.0);
    CHECK_THROWS_AS(small.add(-1.0), Error);
    CHECK_THROWS_AS(small.add(std::nan("")), Error);
    CHECK_THROWS_AS(ExactSum::from_hex("12g"), Error);
  }

  TEST_CASE("CAM formulas on a hand-computed example") {
    // C = 2, H*W = 2.  A = [[1, 2], [3, 0]], G = [[1, -3], [2, 2]].
    const float a[] = {1, 2, 3, 0};
    const float g[] = {1, -3, 2, 2};
    std::vector<double> scratch;
    double m[2];
    // Grad-CAM: w = [-1, 2]; mean_c: [(-1*1 + 2*3)/2, (-1*2 + 0)/2] = [2.5, -1] -> ReLU [2.5, 0].
    cam_map(CamMethod::GradCam, a, g, 2, 2, m, scratch);
    CHECK(m[0] == doctest::Approx(2.5));
    CHECK(m[1] == doctest::Approx(0.0));
    // Layer-CAM: [(1*1 + 2*3)/2, (0*2 + 2*0)/2] = [3.5, 0].
    cam_map(CamMethod::LayerCam, a, g, 2, 2, m, scratch);
    CHECK(m[0] == doctest::Approx(3.5));
    CHECK(m[1] == doctest::Approx(0.0));
    // XGrad-CAM: w0 = (1 - 6)/3 = -5/3, w1 = 6/3 = 2: [(-5/3 + 6)/2, (-10/3)/2] -> [13/6, 0].
    cam_map(CamMethod::XGradCam, a, g, 2, 2, m, scratch);
    CHECK(m[0] == doctest::Approx(13.0 / 6.0).epsilon(1e-6));
    CHECK(m[1] == doctest::Approx(0.0));
    // Grad-CAM++: channel 0: sumA = 3; g=1: 1/(2+3) = 0.2 -> 0.2*1; g=-3: relu 0 -> w0 = 0.2.
    // channel 1: sumA = 3; g=2: 4/(8+24) = 0.125 -> 0.25 each -> w1 = 0.5.
    // map = [(0.2*1 + 0.5*3)/2, (0.2*2 + 0)/2] = [0.85, 0.2].
    cam_map(CamMethod::GradCamPlusPlus, a, g, 2, 2, m, scratch);
    CHECK(m[0] == doctest::Approx(0.85));
    CHECK(m[1] == doctest::Approx(0.2));
    CHECK(parse_cam_method("gradcam++") == CamMethod::GradCamPlusPlus);
    CHECK_THROWS_AS(parse_cam_method("saliency"), Error);
  }

  TEST_CASE("batch size, threads and shards give the same result exactly") {
    auto model = build_model("resnet50", 4, 21);
    const Tensor x = random_images(6, 40, 5);
    const std::vector<int> labels = {0, 1, 2, 0, 1, 3};
    ImportanceOptions opt;
    ImportanceAccumulator one(*model, opt, 40);
    feed(one, x, labels, 0, 6, 1);
    const CuiResult ref = one.result();
    REQUIRE(ref.points.size() == 18);
    CHECK(ref.images == 6);
    CHECK(ref.cui_by_class.size() == 4);

    SUBCASE("batch of 4, two threads") {
      set_num_threads(2);
      ImportanceAccumulator acc(*model, opt, 40);
      feed(acc, x, labels, 0, 6, 4);
      set_num_threads(0);
      const CuiResult r = acc.result();
      for (size_t p = 0; p < r.points.size(); ++p) CHECK(r.points[p].cui == ref.points[p].cui);
      CHECK(cui_csv(r) == cui_csv(ref));
      CHECK(cui_by_class_csv(r) == cui_by_class_csv(ref));
    }
    SUBCASE("three shards through partial files, merged") {
      const auto dir = std::filesystem::temp_directory_path() / ("isplit_an_" + std::to_string(getpid()));
      std::filesystem::create_directories(dir);
      for (int k = 0; k < 3; ++k) {
        ImportanceAccumulator part(*model, opt, 40);
        part.set_shard(k, 3);
        feed(part, x, labels, k, 6, 2, 3);
        part.save_partial((dir / ("p" + std::to_string(k) + ".json")).string(), "{}");
      }
      ImportanceAccumulator merged(*model, opt, 40);
      for (int k = 2; k >= 0; --k) merged.load_partial((dir / ("p" + std::to_string(k) + ".json")).string());
      CHECK(cui_csv(merged.result()) == cui_csv(ref));
      CHECK(cui_by_class_csv(merged.result()) == cui_by_class_csv(ref));
      CHECK(merged.shards().size() == 3);
      // The same part twice is an overlap, not a bigger data set.
      CHECK_THROWS_AS(merged.load_partial((dir / "p0.json").string()), Error);
      // A part of other settings is refused.
      ImportanceOptions other = opt;
      other.method = CamMethod::LayerCam;
      ImportanceAccumulator wrong(*model, other, 40);
      CHECK_THROWS_AS(wrong.load_partial((dir / "p1.json").string()), Error);
      std::filesystem::remove_all(dir);
    }
    SUBCASE("a class subset is the curve of those images") {
      const CuiResult sub = one.result({1});
      CHECK(sub.images == 2);
      for (size_t p = 0; p < sub.points.size(); ++p)
        CHECK(sub.points[p].cui == doctest::Approx(ref.cui_by_class.at(1)[p]).epsilon(1e-12));
    }
  }

  TEST_CASE("relu-grad pre changes only points that end in a ReLU") {
    auto model = build_model("vgg16", 3, 2);
    const Tensor x = random_images(2, 32, 9);
    ImportanceOptions post, pre;
    post.all_points = pre.all_points = true;
    pre.relu_grad_pre = true;
    ImportanceAccumulator a(*model, post, 32), b(*model, pre, 32);
    feed(a, x, {0, 1}, 0, 2, 2);
    feed(b, x, {0, 1}, 0, 2, 2);
    const CuiResult ra = a.result(), rb = b.result();
    // features.0 (a convolution) and features.4 (a max pool) do not end in a ReLU: same
    // gradient. features.1 is a ReLU output: its pre-ReLU gradient also counts positions
    // where the ReLU is off, which changes the channel weights w_c = mean_hw G_c.
    CHECK(ra.points[0].cui == rb.points[0].cui);
    CHECK(ra.points[4].cui == rb.points[4].cui);  // features.4, a max pool
    CHECK(ra.points[1].cui != rb.points[1].cui);
  }

  TEST_CASE("report outputs") {
    auto model = build_model("resnet50", 2, 3);
    ImportanceAccumulator acc(*model, ImportanceOptions{}, 32);
    feed(acc, random_images(2, 32, 4), {0, 1}, 0, 2, 2);
    const CuiResult r = acc.result();
    const std::string csv = cui_csv(r);
    CHECK(csv.rfind("layer_index,layer_name,out_shape,out_bytes,cui,log10_cui,candidate\n", 0) == 0);
    CHECK(csv.find("\n0,relu,64x16x16,65536,") != std::string::npos);
    CHECK(cui_svg(r, "t", nullptr).find("<svg") == 0);
    ReportContext ctx;
    ctx.settings_json = "{\"model\":\"resnet50\"}";
    const std::string js = report_json(r, ctx);
    CHECK(js.find("\"candidates\"") != std::string::npos);
    CHECK(js.find("\"cde_by_size\"") != std::string::npos);
  }
}
