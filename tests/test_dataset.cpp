// Tests for data/dataset.{h,cpp} and data/loader.{h,cpp}: image folder, Tiny-ImageNet and
// IDX readers (built in a temporary directory), sample selection, the batch loader, and
// Debian's Fashion-MNIST when installed.
#include <doctest/doctest.h>

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <unistd.h>
#include <zlib.h>

#include "data/dataset.h"
#include "data/image.h"
#include "data/loader.h"
#include "tests/test_util.h"

using namespace isplit;
using namespace isplit::testing;
namespace fs = std::filesystem;

namespace {

// A small RGB image whose pixels depend on `id`.
Image make_image(int id, int w = 5, int h = 4) {
  Image im;
  im.width = w;
  im.height = h;
  im.channels = 3;
  im.pixels.resize(static_cast<size_t>(w) * h * 3);
  for (size_t i = 0; i < im.pixels.size(); ++i)
    im.pixels[i] = static_cast<uint8_t>((id * 37 + static_cast<int>(i) * 11) % 256);
  return im;
}

// write_png that creates the parent directories first.
void put_png(const fs::path& p, const Image& image) {
  fs::create_directories(p.parent_path());
  write_png(p.string(), image);
}

void write_text(const fs::path& p, const std::string& text) {
  fs::create_directories(p.parent_path());
  std::ofstream out(p, std::ios::binary);
  out << text;
}

void write_bytes(const fs::path& p, const std::vector<uint8_t>& bytes, bool gzip) {
  fs::create_directories(p.parent_path());
  if (gzip) {
    gzFile gz = gzopen(p.string().c_str(), "wb");
    REQUIRE(gz != nullptr);
    REQUIRE(gzwrite(gz, bytes.data(), static_cast<unsigned>(bytes.size())) ==
            static_cast<int>(bytes.size()));
    REQUIRE(gzclose(gz) == Z_OK);
  } else {
    std::ofstream out(p, std::ios::binary);
    out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  }
}


std::vector<uint8_t> idx_images(uint32_t magic, uint32_t n, uint32_t rows, uint32_t cols,
                                size_t payload) {
  std::vector<uint8_t> v;
  put_be32(v, magic);
  put_be32(v, n);
  put_be32(v, rows);
  put_be32(v, cols);
  for (size_t i = 0; i < payload; ++i) v.push_back(static_cast<uint8_t>((i * 7 + 3) % 256));
  return v;
}

std::vector<uint8_t> idx_labels(const std::vector<uint8_t>& labels, uint32_t count) {
  std::vector<uint8_t> v;
  put_be32(v, 0x00000801);
  put_be32(v, count);
  v.insert(v.end(), labels.begin(), labels.end());
  return v;
}

const std::vector<uint8_t> kIdxLabels = {2, 0, 1, 2, 7, 1, 2, 2, 0, 2};
constexpr uint32_t kRows = 3, kCols = 4;

// Writes <dir>/<prefix>-images-idx3-ubyte[.gz] and its labels file; returns the images path.
fs::path write_idx(const fs::path& dir, bool gzip, const std::string& prefix = "t10k") {
  const std::string ext = gzip ? ".gz" : "";
  const uint32_t n = static_cast<uint32_t>(kIdxLabels.size());
  const fs::path images = dir / (prefix + "-images-idx3-ubyte" + ext);
  write_bytes(images, idx_images(0x00000803, n, kRows, kCols, size_t{n} * kRows * kCols), gzip);
  write_bytes(dir / (prefix + "-labels-idx1-ubyte" + ext), idx_labels(kIdxLabels, n), gzip);
  return images;
}

void check_idx(const Dataset& ds, const std::string& images_path) {
  CHECK(ds.kind() == "idx");
  REQUIRE(ds.size() == kIdxLabels.size());
  REQUIRE(ds.class_names().size() == 8);
  CHECK(ds.class_names()[0] == "0");
  CHECK(ds.class_names()[7] == "7");
  for (size_t i = 0; i < ds.size(); ++i) CHECK(ds.label(i) == kIdxLabels[i]);
  CHECK(ds.source(3) == images_path + "#3");
  const Image im = ds.load(3);
  CHECK(im.width == static_cast<int>(kCols));
  CHECK(im.height == static_cast<int>(kRows));
  CHECK(im.channels == 1);
  REQUIRE(im.pixels.size() == kRows * kCols);
  for (size_t j = 0; j < im.pixels.size(); ++j) {
    const size_t flat = 3 * kRows * kCols + j;
    CHECK(im.pixels[j] == static_cast<uint8_t>((flat * 7 + 3) % 256));
  }
}

// Runs `fn`, expecting an Error whose message contains every string of `needles`.
template <class F>
void expect_error(F fn, const std::vector<std::string>& needles) {
  bool threw = false;
  try {
    fn();
  } catch (const Error& e) {
    threw = true;
    const std::string msg = e.what();
    for (const std::string& n : needles) {
      INFO("message: " << msg);
      CHECK(msg.find(n) != std::string::npos);
    }
    CHECK(msg.find('\n') == std::string::npos);
  }
  CHECK(threw);
}

// Image folder: classes bird, cat, dog (created out of order), hidden, nested and corrupt files.
fs::path make_image_folder(const fs::path& root) {
  put_png(root / "dog" / "1.png", make_image(1));
  fs::create_directories(root / "cat" / "nested");
  put_png(root / "cat" / "x.png", make_image(2));
  put_png(root / "cat" / "nested" / "y.png", make_image(3, 7, 3));
  put_png(root / "cat" / ".hidden.png", make_image(4));
  write_text(root / "cat" / "notes.txt", "not an image");
  fs::create_directories(root / "bird");
  put_png(root / "bird" / "b.png", make_image(5));
  put_png(root / "bird" / "a.png", make_image(6));
  put_png(root / "dog" / "UPPER.PNG", make_image(7));
  write_text(root / "dog" / "bad.png", "this is not a png file at all");
  fs::create_directories(root / "dog" / ".git");
  put_png(root / "dog" / ".git" / "q.png", make_image(8));
  fs::create_directories(root / ".cache");
  put_png(root / ".cache" / "z.png", make_image(9));
  put_png(root / "top.png", make_image(10));  // not inside a class: ignored
  return root;
}


}  // namespace

TEST_SUITE("dataset") {

TEST_CASE("image folder: classes, order, hidden files, nested folders") {
  TempDir tmp("dataset");
  const fs::path root = make_image_folder(tmp.path / "folder");
  const auto ds = open_dataset(root.string());
  CHECK(ds->kind() == "image-folder");
  REQUIRE(ds->class_names() == std::vector<std::string>{"bird", "cat", "dog"});
  const std::vector<std::string> rel = {"bird/a.png", "bird/b.png", "cat/nested/y.png",
                                        "cat/x.png",  "dog/1.png",  "dog/UPPER.PNG",
                                        "dog/bad.png"};
  const std::vector<int> labels = {0, 0, 1, 1, 2, 2, 2};
  REQUIRE(ds->size() == rel.size());
  for (size_t i = 0; i < rel.size(); ++i) {
    CHECK(ds->source(i) == (root / rel[i]).string());
    CHECK(ds->label(i) == labels[i]);
  }
  const Image y = ds->load(2);
  CHECK(y.width == 7);
  CHECK(y.height == 3);
  CHECK(y.pixels == make_image(3, 7, 3).pixels);
  expect_error([&] { ds->load(6); }, {"bad.png"});
  CHECK_THROWS_AS(ds->label(7), Error);

  // split names a sub-folder.
  const auto sub = open_dataset(tmp.path.string(), "folder");
  CHECK(sub->size() == rel.size());
  expect_error([&] { open_dataset(tmp.path.string(), "nope"); }, {"nope"});
}

TEST_CASE("batch loader: order, values, skipped files, thread independence") {
  TempDir tmp("dataset");
  const fs::path root = make_image_folder(tmp.path / "folder");
  const auto ds = open_dataset(root.string());
  std::vector<size_t> all(ds->size());
  for (size_t i = 0; i < all.size(); ++i) all[i] = i;
  Normalize norm;
  norm.mean[1] = 0.25f;
  norm.std[2] = 0.5f;

  for (int bs : {3, 4}) {
    CAPTURE(bs);
    std::vector<std::vector<Batch>> runs;
    for (int threads : {1, 3}) {
      BatchLoader loader(*ds, all, bs, 6, norm, threads);
      CHECK(loader.num_batches() == (bs == 3 ? 3u : 2u));
      runs.push_back(drain(loader));
      CHECK(loader.skipped() == 1);
      REQUIRE(loader.errors().size() == 1);
      CHECK(loader.errors()[0].find("bad.png") != std::string::npos);
    }
    // bs 3: {0,1,2} {3,4,5} {6} whose only sample fails, so that batch is left out;
    // bs 4: {0,1,2,3} {4,5,(6)}.
    const std::vector<std::vector<size_t>> expected =
        bs == 3 ? std::vector<std::vector<size_t>>{{0, 1, 2}, {3, 4, 5}}
                : std::vector<std::vector<size_t>>{{0, 1, 2, 3}, {4, 5}};
    for (const auto& run : runs) {
      REQUIRE(run.size() == expected.size());
      for (size_t b = 0; b < run.size(); ++b) {
        CHECK(run[b].indices == expected[b]);
        REQUIRE(run[b].labels.size() == expected[b].size());
        REQUIRE(run[b].images.shape() == Shape{static_cast<int64_t>(expected[b].size()), 3, 6, 6});
        for (size_t j = 0; j < expected[b].size(); ++j) {
          CHECK(run[b].labels[j] == ds->label(expected[b][j]));
          const Tensor ref = image_to_tensor(ds->load(expected[b][j]), 6, norm);
          const float* got = run[b].images.data() + j * ref.numel();
          int mismatches = 0;
          for (int64_t k = 0; k < ref.numel(); ++k) mismatches += got[k] != ref[k];
          CHECK(mismatches == 0);
        }
      }
    }
    // Identical with 1 and 3 threads, bit for bit.
    for (size_t b = 0; b < runs[0].size(); ++b) {
      const Tensor& a = runs[0][b].images;
      const Tensor& c = runs[1][b].images;
      REQUIRE(a.numel() == c.numel());
      CHECK(std::equal(a.data(), a.data() + a.numel(), c.data()));
    }
  }
}

TEST_CASE("tiny-imagenet: wnids sorted, words names, val and train splits") {
  TempDir tmp("dataset");
  const fs::path root = tmp.path / "tiny";
  write_text(root / "wnids.txt", "n02\nn01\n");
  write_text(root / "words.txt", "n01\tgoldfish, Carassius auratus\nn99\tother\nn02\tcrane\n");
  fs::create_directories(root / "train" / "n01" / "images");
  fs::create_directories(root / "train" / "n02" / "images");
  put_png(root / "train" / "n01" / "images" / "n01_1.JPEG", make_image(11));
  put_png(root / "train" / "n01" / "images" / "n01_0.JPEG", make_image(12));
  write_text(root / "train" / "n01" / "n01_boxes.txt", "n01_0.JPEG\t0\t0\t4\t3\n");
  put_png(root / "train" / "n02" / "images" / "n02_0.JPEG", make_image(13));
  fs::create_directories(root / "val" / "images");
  for (int i = 0; i < 3; ++i)
    write_png((root / "val" / "images" / ("val_" + std::to_string(i) + ".JPEG")).string(),
              make_image(20 + i));
  write_text(root / "val" / "val_annotations.txt",
             "val_0.JPEG\tn02\t0\t0\t4\t3\nval_1.JPEG\tn01\t1\t1\t3\t2\r\nval_2.JPEG\tn02\t0\t0\t1\t1\n");

  const auto val = open_dataset(root.string());
  CHECK(val->kind() == "tiny-imagenet");
  REQUIRE(val->class_names() == std::vector<std::string>{"goldfish", "crane"});
  REQUIRE(val->size() == 3);
  CHECK(val->label(0) == 1);
  CHECK(val->label(1) == 0);
  CHECK(val->label(2) == 1);
  CHECK(val->source(1) == (root / "val" / "images" / "val_1.JPEG").string());
  CHECK(val->load(2).pixels == make_image(22).pixels);
  CHECK(open_dataset(root.string(), "val")->size() == 3);

  const auto train = open_dataset(root.string(), "train");
  REQUIRE(train->size() == 3);
  CHECK(train->source(0) == (root / "train" / "n01" / "images" / "n01_0.JPEG").string());
  CHECK(train->source(1) == (root / "train" / "n01" / "images" / "n01_1.JPEG").string());
  CHECK(train->label(0) == 0);
  CHECK(train->label(2) == 1);
  CHECK(train->load(0).pixels == make_image(12).pixels);

  expect_error([&] { open_dataset(root.string(), "test"); }, {root.string(), "test"});
  fs::remove(root / "words.txt");
  CHECK(open_dataset(root.string())->class_names() == std::vector<std::string>{"n01", "n02"});
  write_text(root / "val" / "val_annotations.txt", "val_0.JPEG\tn77\t0\t0\t4\t3\n");
  expect_error([&] { open_dataset(root.string()); }, {"val_annotations.txt", "n77"});
}

TEST_CASE("idx: plain and gzip, labels beside, classes.txt") {
  TempDir tmp("dataset");
  const fs::path plain = write_idx(tmp.path / "plain", false);
  check_idx(*open_dataset(plain.string()), plain.string());
  const fs::path gz = write_idx(tmp.path / "gz", true);
  check_idx(*open_dataset(gz.string()), gz.string());

  // Images gzipped, labels plain: both names are tried.
  const fs::path mixed = tmp.path / "mixed";
  write_idx(mixed, true);
  fs::rename(mixed / "t10k-labels-idx1-ubyte.gz", tmp.path / "unused.gz");
  write_bytes(mixed / "t10k-labels-idx1-ubyte", idx_labels(kIdxLabels, kIdxLabels.size()), false);
  check_idx(*open_dataset((mixed / "t10k-images-idx3-ubyte.gz").string()),
            (mixed / "t10k-images-idx3-ubyte.gz").string());

  // A directory of IDX files picks by split.
  const fs::path both = tmp.path / "both";
  write_idx(both, true, "t10k");
  write_idx(both, false, "train");
  CHECK(open_dataset(both.string())->source(0) == (both / "t10k-images-idx3-ubyte.gz").string() + "#0");
  CHECK(open_dataset(both.string(), "train")->source(0) == (both / "train-images-idx3-ubyte").string() + "#0");

  write_text(tmp.path / "plain" / "classes.txt",
             "zero\none\ntwo\nthree\nfour\nfive\nsix\nseven\neight\n\n");
  const auto named = open_dataset(plain.string());
  REQUIRE(named->class_names().size() == 9);
  CHECK(named->class_names()[7] == "seven");
  write_text(tmp.path / "plain" / "classes.txt", "zero\none\n");
  expect_error([&] { open_dataset(plain.string()); }, {"classes.txt"});
}

TEST_CASE("idx: corrupt files are rejected with the file named") {
  TempDir tmp("dataset");
  const uint32_t n = static_cast<uint32_t>(kIdxLabels.size());
  const size_t payload = size_t{n} * kRows * kCols;
  for (bool gzip : {false, true}) {
    CAPTURE(gzip);
    const std::string ext = gzip ? ".gz" : "";
    const fs::path dir = tmp.path / (gzip ? "gz" : "plain");
    const fs::path images = dir / ("x-images-idx3-ubyte" + ext);
    const fs::path labels = dir / ("x-labels-idx1-ubyte" + ext);
    write_bytes(labels, idx_labels(kIdxLabels, n), gzip);

    write_bytes(images, idx_images(0x00000801, n, kRows, kCols, payload), gzip);
    expect_error([&] { open_dataset(images.string()); }, {images.string(), "magic"});

    write_bytes(images, idx_images(0x00000803, n, kRows, kCols, payload - 5), gzip);
    expect_error([&] { open_dataset(images.string()); }, {images.string()});

    write_bytes(images, idx_images(0x00000803, n, kRows, kCols, payload + 1), gzip);
    expect_error([&] { open_dataset(images.string()); }, {images.string()});

    write_bytes(images, idx_images(0x00000803, n + 1, kRows, kCols, payload + kRows * kCols), gzip);
    expect_error([&] { open_dataset(images.string()); }, {labels.string(), "labels"});

    // A header claiming far more than the cap is rejected before any allocation.
    write_bytes(images, idx_images(0x00000803, 0xFFFFFFFFu, 1000, 1000, 0), gzip);
    expect_error([&] { open_dataset(images.string()); }, {images.string()});

    write_bytes(images, idx_images(0x00000803, n, 0, kCols, 0), gzip);
    expect_error([&] { open_dataset(images.string()); }, {images.string()});

    write_bytes(images, std::vector<uint8_t>{0, 0}, gzip);
    expect_error([&] { open_dataset(images.string()); }, {images.string()});

    write_bytes(images, idx_images(0x00000803, n, kRows, kCols, payload), gzip);
    write_bytes(labels, idx_labels(std::vector<uint8_t>(kIdxLabels.begin(), kIdxLabels.end() - 1), n), gzip);
    expect_error([&] { open_dataset(images.string()); }, {labels.string()});

    fs::remove(labels);
    expect_error([&] { open_dataset(images.string()); }, {images.string(), "labels"});
  }
  // Corrupt gzip stream.
  const fs::path bad = tmp.path / "bad-images-idx3-ubyte.gz";
  write_bytes(bad, idx_images(0x00000803, n, kRows, kCols, payload), true);
  {
    std::fstream f(bad, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(12);
    f.write("\xff\xff\xff\xff\xff\xff", 6);
  }
  write_bytes(tmp.path / "bad-labels-idx1-ubyte.gz", idx_labels(kIdxLabels, n), true);
  expect_error([&] { open_dataset(bad.string()); }, {bad.string()});
}

TEST_CASE("open_dataset: missing path, empty folders, unknown layouts") {
  TempDir tmp("dataset");
  expect_error([&] { open_dataset((tmp.path / "missing").string()); },
               {(tmp.path / "missing").string(), "not found"});
  const fs::path empty = tmp.path / "empty";
  fs::create_directories(empty);
  expect_error([&] { open_dataset(empty.string()); }, {empty.string(), "image-folder", "Tiny-ImageNet", "IDX"});
  const fs::path noimg = tmp.path / "noimg";
  fs::create_directories(noimg / "a");
  write_text(noimg / "a" / "x.txt", "text");
  expect_error([&] { open_dataset(noimg.string()); }, {noimg.string(), "no images found"});
  const fs::path png = tmp.path / "single.png";
  write_png(png.string(), make_image(1));
  expect_error([&] { open_dataset(png.string()); }, {png.string(), "IDX"});
}

TEST_CASE("select_indices: class filter, then limit, then shard") {
  TempDir tmp("dataset");
  const auto ds = open_dataset(write_idx(tmp.path, false).string());
  // labels: 2 0 1 2 7 1 2 2 0 2
  CHECK(select_indices(*ds, {}, 0, 0, 1) == std::vector<size_t>{0, 1, 2, 3, 4, 5, 6, 7, 8, 9});
  CHECK(select_indices(*ds, {2}, 0, 0, 1) == std::vector<size_t>{0, 3, 6, 7, 9});
  CHECK(select_indices(*ds, {2}, 4, 0, 1) == std::vector<size_t>{0, 3, 6, 7});
  CHECK(select_indices(*ds, {2}, 4, 1, 2) == std::vector<size_t>{3, 7});
  CHECK(select_indices(*ds, {2}, 4, 0, 2) == std::vector<size_t>{0, 6});
  CHECK(select_indices(*ds, {0, 7}, 0, 0, 1) == std::vector<size_t>{1, 4, 8});
  CHECK(select_indices(*ds, {}, 0, 2, 3) == std::vector<size_t>{2, 5, 8});
  CHECK(select_indices(*ds, {}, 5, 2, 3) == std::vector<size_t>{2});
  CHECK(select_indices(*ds, {}, 100, 0, 1).size() == 10);
  // Shards partition the limited selection.
  std::vector<size_t> merged;
  for (int k = 0; k < 3; ++k)
    for (size_t i : select_indices(*ds, {1, 2}, 6, k, 3)) merged.push_back(i);
  std::sort(merged.begin(), merged.end());
  CHECK(merged == select_indices(*ds, {1, 2}, 6, 0, 1));
  CHECK_THROWS_AS(select_indices(*ds, {}, 0, 2, 2), Error);
  CHECK_THROWS_AS(select_indices(*ds, {}, 0, -1, 2), Error);
  CHECK_THROWS_AS(select_indices(*ds, {}, 0, 0, 0), Error);
  CHECK_THROWS_AS(select_indices(*ds, {8}, 0, 0, 1), Error);
  CHECK_THROWS_AS(select_indices(*ds, {-1}, 0, 0, 1), Error);
}

TEST_CASE("batch loader: idx batches, stop mid-stream, bad arguments") {
  TempDir tmp("dataset");
  const auto ds = open_dataset(write_idx(tmp.path, true).string());
  std::vector<size_t> idx;
  for (int r = 0; r < 50; ++r)
    for (size_t i = 0; i < ds->size(); ++i) idx.push_back(i);
  {
    BatchLoader loader(*ds, idx, 4, 8, Normalize{}, 3);
    Batch b;
    REQUIRE(loader.next(b));
    CHECK(b.images.shape() == Shape{4, 3, 8, 8});
    CHECK(b.labels == std::vector<int>{2, 0, 1, 2});
  }  // destroyed with most batches pending: must not hang
  {
    BatchLoader loader(*ds, idx, 7, 5, Normalize{}, 4);
    size_t seen = 0;
    Batch b;
    while (loader.next(b)) {
      for (size_t j = 0; j < b.indices.size(); ++j) {
        CHECK(b.indices[j] == idx[seen + j]);
        CHECK(b.labels[j] == ds->label(b.indices[j]));
      }
      seen += b.indices.size();
    }
    CHECK(seen == idx.size());
    CHECK(loader.skipped() == 0);
    CHECK_FALSE(loader.next(b));
  }
  {
    // Recycled batch tensors give the same batches as fresh ones.
    BatchLoader fresh(*ds, idx, 6, 5, Normalize{}, 2);
    BatchLoader reuse(*ds, idx, 6, 5, Normalize{}, 3);
    Batch a, b;
    size_t batches = 0;
    while (fresh.next(a)) {
      REQUIRE(reuse.next(b));
      CHECK(a.indices == b.indices);
      REQUIRE(a.images.shape() == b.images.shape());
      CHECK(std::equal(a.images.data(), a.images.data() + a.images.numel(), b.images.data()));
      reuse.recycle(std::move(b));
      ++batches;
    }
    CHECK(batches == fresh.num_batches());
    CHECK_FALSE(reuse.next(b));
  }
  {
    BatchLoader empty(*ds, {}, 4, 8, Normalize{}, 2);
    Batch b;
    CHECK_FALSE(empty.next(b));
    CHECK(empty.num_batches() == 0);
  }
  CHECK_THROWS_AS(BatchLoader(*ds, {0, 10}, 4, 8, Normalize{}, 1), Error);
  CHECK_THROWS_AS(BatchLoader(*ds, {0}, 0, 8, Normalize{}, 1), Error);
  CHECK_THROWS_AS(BatchLoader(*ds, {0}, 1, 0, Normalize{}, 1), Error);
}

TEST_CASE("fashion-mnist (Debian dataset-fashion-mnist) when installed") {
  const std::string dir = "/usr/share/datasets/fashion-mnist";
  const std::string path = dir + "/t10k-images-idx3-ubyte.gz";
  if (!fs::exists(path)) {
    MESSAGE("skipped: " << path << " not installed (apt-get install dataset-fashion-mnist)");
    return;
  }
  const auto ds = open_dataset(path);
  CHECK(ds->kind() == "idx");
  REQUIRE(ds->size() == 10000);
  REQUIRE(ds->class_names().size() == 10);
  CHECK(ds->class_names()[9] == "9");
  // First labels and pixels, read independently with Python's gzip + struct.
  const std::vector<int> first = {9, 2, 1, 1, 6, 1, 4, 6, 5, 7, 4, 5, 7, 3, 4, 1, 2, 4, 8, 0};
  for (size_t i = 0; i < first.size(); ++i) CHECK(ds->label(i) == first[i]);
  const Image im = ds->load(0);
  CHECK(im.width == 28);
  CHECK(im.height == 28);
  CHECK(im.channels == 1);
  uint64_t sum0 = 0;
  for (uint8_t p : im.pixels) sum0 += p;
  CHECK(sum0 == 33456);
  CHECK(im.pixels[215] == 3);
  CHECK(im.pixels[221] == 37);
  uint64_t total = 0;
  for (size_t i = 0; i < ds->size(); ++i)
    for (uint8_t p : ds->load(i).pixels) total += p;
  CHECK(total == 573469082ull);
  // The directory opens its t10k split by default.
  CHECK(open_dataset(dir)->source(5) == path + "#5");
}

}  // TEST_SUITE("dataset")
