// Tests of the safetensors reader and writer, and of tools/export_torchvision.py.
#include <doctest/doctest.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "engine/safetensors.h"

namespace fs = std::filesystem;
using isplit::Error;
using isplit::SafetensorsReader;
using isplit::Tensor;

namespace {

// A fresh directory under the system temp directory, removed with its contents at scope end.
struct TempDir {
  fs::path dir;
  TempDir() {
    static std::atomic<int> counter{0};
    auto stamp = std::chrono::steady_clock::now().time_since_epoch().count();
    dir = fs::temp_directory_path() /
          ("isplit_st_" + std::to_string(::getpid()) + "_" + std::to_string(counter++) + "_" +
           std::to_string(stamp));
    fs::create_directories(dir);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(dir, ec);
  }
  // Path of a file inside the directory.
  std::string file(const std::string& name) const { return (dir / name).string(); }
};

// Writes a safetensors file by hand: 8-byte length (header size unless overridden), header,
// data bytes.
void write_raw(const std::string& path, const std::string& header,
               const std::vector<unsigned char>& data, uint64_t length_field) {
  std::ofstream out(path, std::ios::binary);
  for (int i = 0; i < 8; ++i) out.put(static_cast<char>((length_field >> (8 * i)) & 0xff));
  out.write(header.data(), static_cast<std::streamsize>(header.size()));
  out.write(reinterpret_cast<const char*>(data.data()), static_cast<std::streamsize>(data.size()));
  REQUIRE(out.good());
}

// write_raw with the true header length.
void write_raw(const std::string& path, const std::string& header,
               const std::vector<unsigned char>& data = {}) {
  write_raw(path, header, data, header.size());
}

// Little-endian bytes of 16-bit patterns.
std::vector<unsigned char> le16(const std::vector<uint16_t>& v) {
  std::vector<unsigned char> out;
  for (uint16_t x : v) {
    out.push_back(static_cast<unsigned char>(x & 0xff));
    out.push_back(static_cast<unsigned char>(x >> 8));
  }
  return out;
}

// The message of the isplit::Error thrown by opening path ("" if none was thrown).
std::string open_error(const std::string& path) {
  try {
    SafetensorsReader r(path);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

// Checks that opening a hand-built file fails with a one-line message naming path and `what`.
void check_rejected(const std::string& path, const std::string& what) {
  std::string msg = open_error(path);
  INFO("message: " << msg);
  CHECK_FALSE(msg.empty());
  CHECK(msg.find(path) != std::string::npos);
  CHECK(msg.find(what) != std::string::npos);
  CHECK(msg.find('\n') == std::string::npos);
}

// Bit pattern of a float.
uint32_t bits_of(float f) {
  uint32_t b;
  std::memcpy(&b, &f, 4);
  return b;
}

// True when both floats have identical bits.
bool same_bits(float a, float b) { return bits_of(a) == bits_of(b); }

// True when `/usr/bin/python3` can import torch and torchvision (checked once).
bool have_python_torch() {
  static const bool ok =
      std::system("/usr/bin/python3 -c 'import torch, torchvision' >/dev/null 2>&1") == 0;
  return ok;
}

}  // namespace

TEST_SUITE("safetensors") {

TEST_CASE("F32 round trip keeps order, shapes, values and metadata") {
  TempDir tmp;
  std::string path = tmp.file("rt.safetensors");
  Tensor a = Tensor::from({2, 3}, {1.f, -2.5f, 3.25f, 0.f, -0.f, 1e-30f});
  Tensor scalar = Tensor::from({}, {42.5f});
  Tensor empty = Tensor::zeros({0, 4});
  Tensor b = Tensor::from({4}, {std::numeric_limits<float>::infinity(),
                                -std::numeric_limits<float>::infinity(),
                                std::numeric_limits<float>::denorm_min(), 7.f});
  isplit::save_safetensors(path, {{"z.weight", a}, {"scalar", scalar}, {"empty", empty}, {"b", b}},
                           {{"format", "pt"}, {"note", "hello"}});
  CHECK_FALSE(fs::exists(path + ".tmp." + std::to_string(::getpid())));

  SafetensorsReader r(path);
  CHECK(r.path() == path);
  CHECK(r.names() == std::vector<std::string>{"z.weight", "scalar", "empty", "b"});
  CHECK(r.has("scalar"));
  CHECK_FALSE(r.has("missing"));
  CHECK(r.metadata().at("format") == "pt");
  CHECK(r.metadata().at("note") == "hello");
  CHECK(r.info("z.weight").dtype == "F32");

  Tensor a2 = r.get("z.weight");
  CHECK(a2.shape() == isplit::Shape{2, 3});
  for (int64_t i = 0; i < a.numel(); ++i) CHECK(same_bits(a2[i], a[i]));
  Tensor s2 = r.get("scalar");
  CHECK(s2.shape().empty());
  CHECK(s2.numel() == 1);
  CHECK(s2[0] == 42.5f);
  Tensor e2 = r.get("empty");
  CHECK(e2.shape() == isplit::Shape{0, 4});
  CHECK(e2.numel() == 0);
  Tensor b2 = r.get("b");
  for (int64_t i = 0; i < b.numel(); ++i) CHECK(same_bits(b2[i], b[i]));

  std::string msg;
  try {
    r.get("missing");
  } catch (const Error& e) {
    msg = e.what();
  }
  CHECK(msg.find(path) != std::string::npos);
  CHECK(msg.find("missing") != std::string::npos);
}

TEST_CASE("saved header is 8-byte padded compact JSON in the standard layout") {
  TempDir tmp;
  std::string path = tmp.file("layout.safetensors");
  isplit::save_safetensors(path, {{"w", Tensor::from({1, 2}, {1.f, 2.f})}});
  std::ifstream in(path, std::ios::binary);
  std::vector<unsigned char> bytes((std::istreambuf_iterator<char>(in)),
                                   std::istreambuf_iterator<char>());
  REQUIRE(bytes.size() >= 8);
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | bytes[i];
  CHECK(n % 8 == 0);
  REQUIRE(bytes.size() == 8 + n + 8);
  std::string header(bytes.begin() + 8, bytes.begin() + 8 + n);
  CHECK(header.find(R"("w":{"dtype":"F32","shape":[1,2],"data_offsets":[0,8]})") !=
        std::string::npos);
  CHECK(header.find("__metadata__") == std::string::npos);
  CHECK(header.front() == '{');
  CHECK(header.find_last_not_of(' ') == header.rfind('}'));
}

TEST_CASE("save overwrites atomically and reports I/O failures naming the path") {
  TempDir tmp;
  std::string path = tmp.file("over.safetensors");
  isplit::save_safetensors(path, {{"x", Tensor::full({3}, 1.f)}});
  isplit::save_safetensors(path, {{"y", Tensor::full({2}, 2.f)}});
  SafetensorsReader r(path);
  CHECK(r.names() == std::vector<std::string>{"y"});
  CHECK(r.get("y")[1] == 2.f);

  std::string bad = tmp.file("no/such/dir/w.safetensors");
  std::string msg;
  try {
    isplit::save_safetensors(bad, {{"x", Tensor::full({3}, 1.f)}});
  } catch (const Error& e) {
    msg = e.what();
  }
  CHECK(msg.find(bad) != std::string::npos);

  // Renaming onto a non-empty directory fails after the data were written: no temp file left.
  fs::create_directories(tmp.dir / "adir" / "inner");
  std::string dir_target = tmp.file("adir");
  CHECK_THROWS_AS(isplit::save_safetensors(dir_target, {{"x", Tensor::full({3}, 1.f)}}), Error);
  CHECK_FALSE(fs::exists(dir_target + ".tmp." + std::to_string(::getpid())));

  CHECK_THROWS_AS(isplit::save_safetensors(tmp.file("dup.safetensors"),
                                           {{"x", Tensor::full({1}, 1.f)},
                                            {"x", Tensor::full({1}, 1.f)}}),
                  Error);
  CHECK_FALSE(fs::exists(tmp.file("dup.safetensors")));
}

TEST_CASE("F16 is converted exactly, including subnormals, infinities and NaN") {
  TempDir tmp;
  std::string path = tmp.file("f16.safetensors");
  std::vector<uint16_t> h = {0x3C00, 0xC000, 0x3555, 0x7BFF, 0x0400, 0x0001,
                             0x03FF, 0x8001, 0x7C00, 0xFC00, 0x8000, 0x7E00};
  std::string header = R"({"h":{"dtype":"F16","shape":[3,4],"data_offsets":[0,24]}})";
  write_raw(path, header, le16(h));
  SafetensorsReader r(path);
  Tensor t = r.get("h");
  CHECK(t.shape() == isplit::Shape{3, 4});
  const float inf = std::numeric_limits<float>::infinity();
  CHECK(t[0] == 1.0f);
  CHECK(t[1] == -2.0f);
  CHECK(t[2] == 0.333251953125f);
  CHECK(t[3] == 65504.0f);
  CHECK(t[4] == std::ldexp(1.0f, -14));             // smallest normal
  CHECK(t[5] == std::ldexp(1.0f, -24));             // smallest subnormal
  CHECK(t[6] == std::ldexp(1023.0f, -24));          // largest subnormal
  CHECK(t[7] == -std::ldexp(1.0f, -24));            // negative subnormal
  CHECK(t[8] == inf);
  CHECK(t[9] == -inf);
  CHECK(t[10] == 0.0f);
  CHECK(std::signbit(t[10]));
  CHECK(std::isnan(t[11]));
}

TEST_CASE("BF16 is converted exactly") {
  TempDir tmp;
  std::string path = tmp.file("bf16.safetensors");
  std::vector<uint16_t> h = {0x3F80, 0xC040, 0x3EAB, 0x0001, 0x0080, 0x7F80, 0xFF80, 0x8000,
                             0x7FC0};
  std::string header = R"({"__metadata__":{"format":"pt"},)"
                       R"("b":{"dtype":"BF16","shape":[9],"data_offsets":[0,18]}})";
  write_raw(path, header, le16(h));
  SafetensorsReader r(path);
  CHECK(r.metadata().at("format") == "pt");
  CHECK(r.names() == std::vector<std::string>{"b"});
  Tensor t = r.get("b");
  const float inf = std::numeric_limits<float>::infinity();
  CHECK(t[0] == 1.0f);
  CHECK(t[1] == -3.0f);
  CHECK(t[2] == 0.333984375f);
  CHECK(t[3] == std::ldexp(1.0f, -133));  // float32 subnormal
  CHECK(t[4] == std::ldexp(1.0f, -126));  // smallest normal
  CHECK(t[5] == inf);
  CHECK(t[6] == -inf);
  CHECK(t[7] == 0.0f);
  CHECK(std::signbit(t[7]));
  CHECK(std::isnan(t[8]));
}

TEST_CASE("mixed dtypes, unaligned header and gaps are read") {
  TempDir tmp;
  std::string path = tmp.file("mixed.safetensors");
  // Header of odd length (not padded), F32 data then F16 data after a 2-byte gap.
  std::string header = R"({"f":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                       R"("h":{"dtype":"F16","shape":[1],"data_offsets":[10,12]}}  )";
  std::vector<unsigned char> data(12, 0);
  float v[2] = {1.5f, -0.25f};
  std::memcpy(data.data(), v, 8);  // the test host is little-endian
  data[10] = 0x00;
  data[11] = 0x40;  // F16 2.0
  write_raw(path, header, data);
  SafetensorsReader r(path);
  CHECK(r.names() == std::vector<std::string>{"f", "h"});
  CHECK(r.get("f")[0] == 1.5f);
  CHECK(r.get("f")[1] == -0.25f);
  CHECK(r.get("h")[0] == 2.0f);
}

TEST_CASE("read_into converts into a tensor's own storage and checks its shape") {
  TempDir tmp;
  std::string path = tmp.file("into.safetensors");
  std::string header = R"({"f":{"dtype":"F32","shape":[2,1],"data_offsets":[0,8]},)"
                       R"("h":{"dtype":"F16","shape":[1],"data_offsets":[8,10]}})";
  std::vector<unsigned char> data(10, 0);
  float v[2] = {1.5f, -0.25f};
  std::memcpy(data.data(), v, 8);  // the test host is little-endian
  data[9] = 0xC0;                   // F16 -2.0
  write_raw(path, header, data);
  SafetensorsReader r(path);
  Tensor f = Tensor::full({2, 1}, 7.0f);
  const float* storage = f.data();
  r.read_into("f", f);
  CHECK(f.data() == storage);  // written in place
  CHECK(f[0] == 1.5f);
  CHECK(f[1] == -0.25f);
  Tensor h = Tensor::full({1}, 7.0f);
  r.read_into("h", h);
  CHECK(h[0] == -2.0f);
  // Another shape (same element count), a missing name, a tensor without storage.
  Tensor flat = Tensor::full({2}, 7.0f);
  auto message = [&](const std::string& name, Tensor& t) {
    try {
      r.read_into(name, t);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  const std::string wrong = message("f", flat);
  CHECK(wrong.find(path) != std::string::npos);
  CHECK(wrong.find("'f'") != std::string::npos);
  CHECK(wrong.find("shape") != std::string::npos);
  CHECK(flat[0] == 7.0f);  // untouched
  CHECK(message("g", f).find("'g'") != std::string::npos);
  Tensor released = Tensor::full({2, 1}, 7.0f);
  released.release_storage();
  CHECK(message("f", released).find("storage") != std::string::npos);
}

TEST_CASE("bad files are rejected with the path and the culprit named") {
  TempDir tmp;
  const std::string ok_entry = R"("a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]})";
  const std::vector<unsigned char> data8(8, 0);

  SUBCASE("missing file") { check_rejected(tmp.file("absent.safetensors"), "cannot open"); }
  SUBCASE("truncated file") {
    std::string p = tmp.file("short.safetensors");
    std::ofstream(p, std::ios::binary) << "abc";
    check_rejected(p, "header");
    std::string p0 = tmp.file("zero.safetensors");
    std::ofstream(p0, std::ios::binary).flush();
    check_rejected(p0, "header");
  }
  SUBCASE("header length past the end of the file") {
    std::string p = tmp.file("long.safetensors");
    write_raw(p, "{}", {}, 1000);
    check_rejected(p, "header length 1000");
    std::string p2 = tmp.file("huge.safetensors");
    write_raw(p2, "{}", {}, std::numeric_limits<uint64_t>::max());
    check_rejected(p2, "header length");
  }
  SUBCASE("header length over 100 MB") {
    std::string p = tmp.file("big.safetensors");
    const uint64_t n = 101ull * 1024 * 1024;
    write_raw(p, "{}", {}, n);
    fs::resize_file(p, 8 + n + 16);  // sparse: nothing is really written
    check_rejected(p, "100 MB");
  }
  SUBCASE("invalid JSON") {
    std::string p = tmp.file("json.safetensors");
    write_raw(p, "{\"a\": [1,\n2", data8);
    check_rejected(p, "header: invalid JSON");
    std::string p2 = tmp.file("empty_header.safetensors");
    write_raw(p2, "", data8);
    check_rejected(p2, "invalid JSON");
  }
  SUBCASE("header not an object") {
    std::string p = tmp.file("array.safetensors");
    write_raw(p, "[1, 2]", data8);
    check_rejected(p, "header: not a JSON object");
  }
  SUBCASE("entry not an object") {
    std::string p = tmp.file("entry.safetensors");
    write_raw(p, R"({"w": 3})", data8);
    check_rejected(p, "tensor 'w'");
  }
  SUBCASE("missing fields") {
    const std::vector<std::pair<std::string, std::string>> cases = {
        {"dtype", R"({"w":{"shape":[2],"data_offsets":[0,8]}})"},
        {"shape", R"({"w":{"dtype":"F32","data_offsets":[0,8]}})"},
        {"data_offsets", R"({"w":{"dtype":"F32","shape":[2]}})"}};
    for (const auto& [field, header] : cases) {
      std::string p = tmp.file("missing_" + field + ".safetensors");
      write_raw(p, header, data8);
      check_rejected(p, "tensor 'w': missing field '" + field + "'");
    }
  }
  SUBCASE("wrong field types") {
    std::string p = tmp.file("types.safetensors");
    write_raw(p, R"({"w":{"dtype":5,"shape":[2],"data_offsets":[0,8]}})", data8);
    check_rejected(p, "'dtype'");
    write_raw(p, R"({"w":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", data8);
    check_rejected(p, "'shape'");
    write_raw(p, R"({"w":{"dtype":"F32","shape":[2.0],"data_offsets":[0,8]}})", data8);
    check_rejected(p, "'shape'");
    write_raw(p, R"({"w":{"dtype":"F32","shape":2,"data_offsets":[0,8]}})", data8);
    check_rejected(p, "'shape'");
    write_raw(p, R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0]}})", data8);
    check_rejected(p, "'data_offsets'");
    write_raw(p, R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[-8,0]}})", data8);
    check_rejected(p, "'data_offsets'");
  }
  SUBCASE("shape disagrees with offsets") {
    std::string p = tmp.file("shape.safetensors");
    write_raw(p, R"({"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", data8);
    check_rejected(p, "tensor 'w'");
    check_rejected(p, "needs 12");
    write_raw(p, R"({"w":{"dtype":"F16","shape":[2],"data_offsets":[0,8]}})", data8);
    check_rejected(p, "needs 4");
    write_raw(p, R"({"w":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]}})",
              data8);
    check_rejected(p, "too large");
  }
  SUBCASE("offsets outside the data section or reversed") {
    std::string p = tmp.file("offsets.safetensors");
    write_raw(p, R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})", data8);
    check_rejected(p, "tensor 'w'");
    check_rejected(p, "past the data section");
    write_raw(p, R"({"w":{"dtype":"F32","shape":[0],"data_offsets":[8,4]}})", data8);
    check_rejected(p, "begin > end");
  }
  SUBCASE("unsupported dtypes") {
    for (const char* dtype : {"I64", "F64", "U8", "float32"}) {
      std::string p = tmp.file(std::string("dtype_") + dtype + ".safetensors");
      write_raw(p,
                std::string(R"({"idx":{"dtype":")") + dtype +
                    R"(","shape":[1],"data_offsets":[0,8]}})",
                data8);
      check_rejected(p, "tensor 'idx'");
      check_rejected(p, std::string("unsupported dtype '") + dtype + "'");
    }
  }
  SUBCASE("overlapping ranges") {
    std::string p = tmp.file("overlap.safetensors");
    write_raw(p,
              R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
              R"("b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
              data8);
    check_rejected(p, "overlap");
    check_rejected(p, "'a'");
    check_rejected(p, "'b'");
  }
  SUBCASE("duplicate names") {
    std::string p = tmp.file("dup.safetensors");
    write_raw(p,
              R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
              R"("a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
              data8);
    check_rejected(p, "tensor 'a': duplicate name");
  }
  SUBCASE("bad __metadata__") {
    std::string p = tmp.file("meta.safetensors");
    write_raw(p, R"({"__metadata__":{"format":1},)" + ok_entry + "}", data8);
    check_rejected(p, "header: '__metadata__'");
    check_rejected(p, "format");
    write_raw(p, R"({"__metadata__":["x"],)" + ok_entry + "}", data8);
    check_rejected(p, "header: '__metadata__'");
  }
  SUBCASE("control characters in names stay on one line") {
    std::string p = tmp.file("ctrl.safetensors");
    write_raw(p, R"({"a\nb":{"dtype":"I64","shape":[1],"data_offsets":[0,8]}})", data8);
    check_rejected(p, "tensor 'a\\x0ab'");
  }
}

TEST_CASE("export_torchvision.py output is read by the C++ reader") {
  if (!have_python_torch()) {
    MESSAGE("skipped: /usr/bin/python3 with torch and torchvision is not available");
    return;
  }
  TempDir tmp;
  const std::string tools = std::string(ISPLIT_SOURCE_DIR) + "/tools";
  const std::string out = tmp.file("r50.safetensors");
  const std::string cmd = "/usr/bin/python3 '" + tools +
                          "/export_torchvision.py' --model resnet50 --seed 1 --num-classes 10 "
                          "--dtype f16 --out '" + out + "' >/dev/null";
  REQUIRE(std::system(cmd.c_str()) == 0);

  SafetensorsReader r(out);
  std::vector<std::string> names = r.names();
  CHECK(r.has("conv1.weight"));
  CHECK(r.has("layer3.5.bn2.running_var"));
  REQUIRE(r.has("fc.weight"));
  CHECK(r.info("fc.weight").shape == isplit::Shape{10, 2048});
  CHECK(r.info("conv1.weight").shape == isplit::Shape{64, 3, 7, 7});
  CHECK(r.info("conv1.weight").dtype == "F16");
  for (const std::string& n : names) CHECK(n.find("num_batches_tracked") == std::string::npos);
  CHECK(names.size() == 267);  // ResNet-50 state_dict(): 320 entries, 53 of them counters

  // BatchNorm statistics are randomized: positive variances that are not all one.
  Tensor var = r.get("layer3.5.bn2.running_var");
  bool all_one = true;
  for (int64_t i = 0; i < var.numel(); ++i) {
    CHECK(var[i] > 0.0f);
    if (var[i] != 1.0f) all_one = false;
  }
  CHECK_FALSE(all_one);

  // The same seed gives the same file.
  const std::string again = tmp.file("r50_again.safetensors");
  const std::string cmd2 = "/usr/bin/python3 '" + tools +
                           "/export_torchvision.py' --model resnet50 --seed 1 --num-classes 10 "
                           "--dtype f16 --out '" + again + "' >/dev/null";
  REQUIRE(std::system(cmd2.c_str()) == 0);
  SafetensorsReader r2(again);
  Tensor w1 = r.get("layer1.0.conv1.weight"), w2 = r2.get("layer1.0.conv1.weight");
  REQUIRE(w1.numel() == w2.numel());
  CHECK(std::memcmp(w1.data(), w2.data(), w1.bytes()) == 0);
}

TEST_CASE("every F16 and BF16 bit pattern converts as torch converts it") {
  if (!have_python_torch()) {
    MESSAGE("skipped: /usr/bin/python3 with torch and torchvision is not available");
    return;
  }
  TempDir tmp;
  const std::string path = tmp.file("all16.safetensors");
  const std::string script = tmp.file("all16.py");
  std::ofstream(script) << "import sys, torch\n"
                           "sys.path.insert(0, sys.argv[1])\n"
                           "from safetensors_io import write_safetensors\n"
                           "bits = torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16)\n"
                           "h, b = bits.view(torch.float16), bits.view(torch.bfloat16)\n"
                           "write_safetensors(sys.argv[2], {'h': h, 'b': b, 'h32': h.float(),\n"
                           "                                'b32': b.float()})\n";
  const std::string cmd = "/usr/bin/python3 '" + script + "' '" + std::string(ISPLIT_SOURCE_DIR) +
                          "/tools' '" + path + "'";
  REQUIRE(std::system(cmd.c_str()) == 0);
  SafetensorsReader r(path);
  CHECK(r.info("h").dtype == "F16");
  CHECK(r.info("b").dtype == "BF16");
  for (const char* name : {"h", "b"}) {
    Tensor got = r.get(name), want = r.get(std::string(name) + "32");
    REQUIRE(got.numel() == 65536);
    int64_t mismatches = 0;
    for (int64_t i = 0; i < got.numel(); ++i) {
      bool ok = std::isnan(want[i]) ? std::isnan(got[i]) : same_bits(got[i], want[i]);
      if (!ok) ++mismatches;
    }
    INFO("dtype " << name);
    CHECK(mismatches == 0);
  }
}

TEST_CASE("tools/safetensors_io.py reads what the C++ writer saves") {
  if (!have_python_torch()) {
    MESSAGE("skipped: /usr/bin/python3 with torch and torchvision is not available");
    return;
  }
  TempDir tmp;
  const std::string path = tmp.file("cpp.safetensors");
  isplit::save_safetensors(path,
                           {{"w", Tensor::from({2, 2}, {1.f, 2.f, 3.f, -4.5f})},
                            {"s", Tensor::from({}, {7.f})},
                            {"e", Tensor::zeros({0})}},
                           {{"format", "pt"}});
  const std::string script = tmp.file("check.py");
  std::ofstream(script) << "import sys, torch\n"
                           "sys.path.insert(0, sys.argv[1])\n"
                           "from safetensors_io import read_safetensors, read_safetensors_metadata\n"
                           "t = read_safetensors(sys.argv[2])\n"
                           "assert list(t) == ['w', 's', 'e'], list(t)\n"
                           "assert torch.equal(t['w'], torch.tensor([[1., 2.], [3., -4.5]]))\n"
                           "assert t['s'].shape == () and t['s'].item() == 7.0\n"
                           "assert t['e'].shape == (0,)\n"
                           "assert read_safetensors_metadata(sys.argv[2]) == {'format': 'pt'}\n";
  const std::string cmd = "/usr/bin/python3 '" + script + "' '" + std::string(ISPLIT_SOURCE_DIR) +
                          "/tools' '" + path + "'";
  CHECK(std::system(cmd.c_str()) == 0);
}

}  // TEST_SUITE
