// safetensors reading (mmap, strict header validation, F16/BF16 to F32) and atomic writing.
#include "engine/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>

namespace isplit {

namespace {

using Json = nlohmann::ordered_json;

// Largest header accepted; checked before anything is allocated for it.
constexpr uint64_t kMaxHeaderBytes = 100ull * 1024 * 1024;
// Longest tensor name quoted in full in an error message.
constexpr size_t kMaxQuotedName = 200;

#if defined(__BYTE_ORDER__) && defined(__ORDER_BIG_ENDIAN__) && \
    __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
constexpr bool kLittleEndian = false;
#else
constexpr bool kLittleEndian = true;
#endif

// Text safe to put on one line of an error message: control bytes escaped, long text cut.
std::string printable(const std::string& s) {
  static const char* hex = "0123456789abcdef";
  std::string out;
  for (size_t i = 0; i < s.size() && i < kMaxQuotedName; ++i) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    if (c < 0x20 || c == 0x7f) {
      out += "\\x";
      out += hex[c >> 4];
      out += hex[c & 15];
    } else {
      out += static_cast<char>(c);
    }
  }
  if (s.size() > kMaxQuotedName) out += "...";
  return out;
}

// "<path>: header: <problem>"
[[noreturn]] void header_error(const std::string& path, const std::string& problem) {
  throw Error(path + ": header: " + problem);
}

// "<path>: tensor '<name>': <problem>"
[[noreturn]] void tensor_error(const std::string& path, const std::string& name,
                               const std::string& problem) {
  throw Error(path + ": tensor '" + printable(name) + "': " + problem);
}

// "<path>: <what>: <strerror(errno)>"
[[noreturn]] void os_error(const std::string& path, const std::string& what, int err) {
  throw Error(path + ": " + what + ": " + std::strerror(err));
}

// Bytes per element of a supported dtype, 0 for any other.
uint64_t element_size(const std::string& dtype) {
  if (dtype == "F32") return 4;
  if (dtype == "F16" || dtype == "BF16") return 2;
  return 0;
}

// Little-endian unsigned integer of n bytes at p.
uint64_t load_le(const unsigned char* p, int n) {
  uint64_t v = 0;
  for (int i = n - 1; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

// Float with the given IEEE-754 binary32 bit pattern.
float bits_to_float(uint32_t bits) {
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

// Exact float32 value of an IEEE-754 binary16 bit pattern (subnormals, inf, NaN kept).
float half_to_float(uint16_t h) {
  uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t exponent = (h >> 10) & 0x1fu;
  uint32_t mantissa = h & 0x3ffu;
  uint32_t bits;
  if (exponent == 0x1f) {  // inf or NaN: payload moves to the top of the float mantissa
    bits = sign | 0x7f800000u | (mantissa << 13);
  } else if (exponent != 0) {  // normal: rebias 15 -> 127
    bits = sign | ((exponent + 112u) << 23) | (mantissa << 13);
  } else if (mantissa == 0) {  // signed zero
    bits = sign;
  } else {  // subnormal half = mantissa * 2^-24, a normal float: renormalize
    int e = -14;
    while ((mantissa & 0x400u) == 0) {
      mantissa <<= 1;
      --e;
    }
    bits = sign | (static_cast<uint32_t>(e + 127) << 23) | ((mantissa & 0x3ffu) << 13);
  }
  return bits_to_float(bits);
}

// Parses a JSON value that must be a non-negative integer fitting in int64; false otherwise.
bool json_to_u63(const Json& v, uint64_t& out) {
  if (v.is_number_unsigned()) {
    out = v.get<uint64_t>();
  } else if (v.is_number_integer()) {
    int64_t s = v.get<int64_t>();
    if (s < 0) return false;
    out = static_cast<uint64_t>(s);
  } else {
    return false;
  }
  return out <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max());
}

// Validates one header entry and returns it; data_size bounds the offsets.
SafetensorsInfo parse_entry(const std::string& path, const std::string& name, const Json& v,
                            uint64_t data_size) {
  if (name.empty()) tensor_error(path, name, "empty tensor name");
  if (!v.is_object()) tensor_error(path, name, "entry is not a JSON object");
  for (const char* field : {"dtype", "shape", "data_offsets"})
    if (!v.contains(field)) tensor_error(path, name, std::string("missing field '") + field + "'");

  SafetensorsInfo info;
  info.name = name;
  const Json& dtype = v.at("dtype");
  if (!dtype.is_string()) tensor_error(path, name, "field 'dtype' is not a string");
  info.dtype = dtype.get<std::string>();
  uint64_t elem = element_size(info.dtype);
  if (elem == 0)
    tensor_error(path, name, "unsupported dtype '" + printable(info.dtype) +
                                 "' (supported: F32, F16, BF16)");

  const Json& shape = v.at("shape");
  if (!shape.is_array()) tensor_error(path, name, "field 'shape' is not an array");
  uint64_t numel = 1;
  bool overflow = false;
  for (const Json& d : shape) {
    uint64_t n;
    if (!json_to_u63(d, n))
      tensor_error(path, name, "field 'shape' must hold non-negative integers, got " + d.dump());
    info.shape.push_back(static_cast<int64_t>(n));
    if (n != 0 && numel > std::numeric_limits<uint64_t>::max() / n) overflow = true;
    numel *= n;
  }
  if (!overflow && numel > std::numeric_limits<uint64_t>::max() / elem) overflow = true;
  if (overflow || numel > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
    tensor_error(path, name, "shape " + shape_str(info.shape) + " is too large");

  const Json& offsets = v.at("data_offsets");
  if (!offsets.is_array() || offsets.size() != 2 || !json_to_u63(offsets[0], info.begin) ||
      !json_to_u63(offsets[1], info.end))
    tensor_error(path, name,
                 "field 'data_offsets' must be [begin, end] with non-negative integers");
  std::string range = "[" + std::to_string(info.begin) + ", " + std::to_string(info.end) + "]";
  if (info.begin > info.end)
    tensor_error(path, name, "data_offsets " + range + " has begin > end");
  if (info.end > data_size)
    tensor_error(path, name, "data_offsets " + range + " extend past the data section (" +
                                 std::to_string(data_size) + " bytes)");
  uint64_t expected = numel * elem;
  if (info.end - info.begin != expected)
    tensor_error(path, name, "data_offsets " + range + " span " +
                                 std::to_string(info.end - info.begin) + " bytes but " +
                                 info.dtype + " shape " + shape_str(info.shape) + " needs " +
                                 std::to_string(expected));
  return info;
}

// Writes all of buf to fd, retrying short writes and EINTR; false with errno set on failure.
bool write_all(int fd, const void* buf, size_t n) {
  const char* p = static_cast<const char*>(buf);
  while (n > 0) {
    ssize_t w = ::write(fd, p, std::min<size_t>(n, size_t{1} << 30));
    if (w < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    if (w == 0) {
      errno = EIO;
      return false;
    }
    p += w;
    n -= static_cast<size_t>(w);
  }
  return true;
}

// Owns a temporary file: closes it and removes it unless commit() succeeded.
class TempFile {
 public:
  TempFile(const std::string& final_path)
      : final_(final_path), tmp_(final_path + ".tmp." + std::to_string(::getpid())) {
    fd_ = ::open(tmp_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd_ < 0) os_error(final_, "cannot create temporary file " + tmp_, errno);
  }
  ~TempFile() {
    if (fd_ >= 0) ::close(fd_);
    if (!committed_) ::unlink(tmp_.c_str());
  }
  TempFile(const TempFile&) = delete;
  TempFile& operator=(const TempFile&) = delete;

  // Appends bytes; throws Error naming the final path on failure.
  void write(const void* buf, size_t n) {
    if (!write_all(fd_, buf, n)) os_error(final_, "cannot write", errno);
  }
  // Flushes, closes and renames onto the final path; throws Error on failure.
  void commit() {
    if (::fsync(fd_) != 0) os_error(final_, "cannot write (fsync)", errno);
    int fd = fd_;
    fd_ = -1;
    if (::close(fd) != 0) os_error(final_, "cannot write (close)", errno);
    if (::rename(tmp_.c_str(), final_.c_str()) != 0)
      os_error(final_, "cannot rename " + tmp_ + " onto it", errno);
    committed_ = true;
  }

 private:
  std::string final_;
  std::string tmp_;
  int fd_ = -1;
  bool committed_ = false;
};

}  // namespace

SafetensorsReader::SafetensorsReader(const std::string& path) : path_(path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) os_error(path, "cannot open", errno);
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    int err = errno;
    ::close(fd);
    os_error(path, "cannot stat", err);
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    throw Error(path + ": not a regular file");
  }
  file_size_ = static_cast<uint64_t>(st.st_size);
  if (file_size_ < 8) {
    ::close(fd);
    header_error(path, "file is " + std::to_string(file_size_) +
                           " bytes, shorter than the 8-byte header length");
  }
  if (file_size_ > std::numeric_limits<size_t>::max()) {
    ::close(fd);
    header_error(path, "file too large to map");
  }
  void* map = ::mmap(nullptr, static_cast<size_t>(file_size_), PROT_READ, MAP_PRIVATE, fd, 0);
  int map_err = errno;
  ::close(fd);
  if (map == MAP_FAILED) os_error(path, "cannot mmap", map_err);
  map_ = map;

  // From here on the destructor will not run if we throw: unmap by hand.
  try {
    const auto* bytes = static_cast<const unsigned char*>(map_);
    uint64_t header_len = load_le(bytes, 8);
    if (header_len > file_size_ - 8)
      header_error(path, "header length " + std::to_string(header_len) +
                             " exceeds the file size " + std::to_string(file_size_));
    if (header_len > kMaxHeaderBytes)
      header_error(path, "header length " + std::to_string(header_len) +
                             " exceeds the 100 MB limit");
    data_offset_ = 8 + header_len;
    const uint64_t data_size = file_size_ - data_offset_;

    // Parse, noting top-level keys so that duplicates (which JSON parsers merge) are caught.
    std::vector<std::string> keys;
    std::set<std::string> seen;
    Json::parser_callback_t on_event = [&](int depth, nlohmann::json::parse_event_t event,
                                           Json& parsed) {
      if (depth == 1 && event == nlohmann::json::parse_event_t::key) {
        std::string key = parsed.get<std::string>();
        if (!seen.insert(key).second) {
          if (key == "__metadata__") header_error(path, "duplicate '__metadata__'");
          tensor_error(path, key, "duplicate name");
        }
        keys.push_back(key);
      }
      return true;
    };
    Json header;
    const char* text = reinterpret_cast<const char*>(bytes + 8);
    try {
      header = Json::parse(text, text + header_len, on_event);
    } catch (const nlohmann::json::exception& e) {
      std::string what = e.what();
      size_t cut = what.find("] ");
      if (cut != std::string::npos) what = what.substr(cut + 2);
      header_error(path, "invalid JSON: " + printable(what));
    }
    if (!header.is_object()) header_error(path, "not a JSON object");

    for (const std::string& key : keys) {
      const Json& value = header.at(key);
      if (key == "__metadata__") {
        if (!value.is_object()) header_error(path, "'__metadata__' is not an object");
        for (auto it = value.begin(); it != value.end(); ++it) {
          if (!it.value().is_string())
            header_error(path, "'__metadata__' value of '" + printable(it.key()) +
                                   "' is not a string");
          metadata_[it.key()] = it.value().get<std::string>();
        }
        continue;
      }
      index_[key] = entries_.size();
      entries_.push_back(parse_entry(path, key, value, data_size));
    }

    // Overlaps: sort by begin and compare each non-empty range with the furthest end so far.
    std::vector<const SafetensorsInfo*> by_offset;
    for (const auto& e : entries_)
      if (e.end > e.begin) by_offset.push_back(&e);
    std::sort(by_offset.begin(), by_offset.end(),
              [](const SafetensorsInfo* a, const SafetensorsInfo* b) {
                return a->begin != b->begin ? a->begin < b->begin : a->end < b->end;
              });
    const SafetensorsInfo* furthest = nullptr;
    for (const SafetensorsInfo* e : by_offset) {
      if (furthest && e->begin < furthest->end)
        tensor_error(path, e->name,
                     "data_offsets [" + std::to_string(e->begin) + ", " +
                         std::to_string(e->end) + "] overlap tensor '" +
                         printable(furthest->name) + "' [" + std::to_string(furthest->begin) +
                         ", " + std::to_string(furthest->end) + "]");
      if (!furthest || e->end > furthest->end) furthest = e;
    }
  } catch (...) {
    ::munmap(map_, static_cast<size_t>(file_size_));
    map_ = nullptr;
    throw;
  }
}

SafetensorsReader::~SafetensorsReader() {
  if (map_) ::munmap(map_, static_cast<size_t>(file_size_));
}

std::vector<std::string> SafetensorsReader::names() const {
  std::vector<std::string> out;
  out.reserve(entries_.size());
  for (const auto& e : entries_) out.push_back(e.name);
  return out;
}

bool SafetensorsReader::has(const std::string& name) const { return index_.count(name) != 0; }

const SafetensorsInfo& SafetensorsReader::info(const std::string& name) const {
  auto it = index_.find(name);
  if (it == index_.end()) tensor_error(path_, name, "not found");
  return entries_[it->second];
}

Tensor SafetensorsReader::get(const std::string& name) const {
  Tensor t = Tensor::empty(info(name).shape);
  read_into(name, t);
  return t;
}

void SafetensorsReader::read_into(const std::string& name, Tensor& t) const {
  const SafetensorsInfo& e = info(name);
  if (t.shape() != e.shape)
    tensor_error(path_, name, "shape " + shape_str(e.shape) + ", read into a tensor of shape " +
                                  shape_str(t.shape()));
  if (!t.defined() && t.numel() > 0) tensor_error(path_, name, "read into a tensor without storage");
  const auto* src = static_cast<const unsigned char*>(map_) + data_offset_ + e.begin;
  float* dst = t.data();
  const int64_t n = t.numel();
  if (e.dtype == "F32") {
    if (kLittleEndian) {
      if (n) std::memcpy(dst, src, static_cast<size_t>(n) * 4);
    } else {
      for (int64_t i = 0; i < n; ++i)
        dst[i] = bits_to_float(static_cast<uint32_t>(load_le(src + 4 * i, 4)));
    }
  } else if (e.dtype == "F16") {
    for (int64_t i = 0; i < n; ++i)
      dst[i] = half_to_float(static_cast<uint16_t>(load_le(src + 2 * i, 2)));
  } else {  // BF16: the top half of a float32
    for (int64_t i = 0; i < n; ++i)
      dst[i] = bits_to_float(static_cast<uint32_t>(load_le(src + 2 * i, 2)) << 16);
  }
}

void save_safetensors(const std::string& path,
                      const std::vector<std::pair<std::string, Tensor>>& tensors,
                      const std::map<std::string, std::string>& metadata) {
  Json header = Json::object();
  if (!metadata.empty()) {
    Json meta = Json::object();
    for (const auto& kv : metadata) meta[kv.first] = kv.second;
    header["__metadata__"] = std::move(meta);
  }
  std::set<std::string> seen;
  uint64_t offset = 0;
  for (const auto& [name, t] : tensors) {
    if (name.empty() || name == "__metadata__")
      tensor_error(path, name, "invalid tensor name for saving");
    if (!seen.insert(name).second) tensor_error(path, name, "duplicate name");
    if (!t.defined()) tensor_error(path, name, "tensor is undefined");
    uint64_t bytes = static_cast<uint64_t>(t.numel()) * 4;
    header[name] = Json{{"dtype", "F32"},
                        {"shape", t.shape()},
                        {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  std::string text;
  try {
    text = header.dump();  // compact; throws on names that are not valid UTF-8
  } catch (const nlohmann::json::exception& e) {
    throw Error(path + ": header: cannot encode as JSON (names and metadata must be UTF-8)");
  }
  text.append((8 - text.size() % 8) % 8, ' ');

  TempFile out(path);
  unsigned char len[8];
  for (int i = 0; i < 8; ++i) len[i] = static_cast<unsigned char>(text.size() >> (8 * i));
  out.write(len, 8);
  out.write(text.data(), text.size());
  for (const auto& [name, t] : tensors) {
    if (t.numel() == 0) continue;
    if (kLittleEndian) {
      out.write(t.data(), t.bytes());
    } else {
      std::vector<unsigned char> buf(t.bytes());
      for (int64_t i = 0; i < t.numel(); ++i) {
        uint32_t bits;
        std::memcpy(&bits, t.data() + i, 4);
        for (int b = 0; b < 4; ++b) buf[4 * i + b] = static_cast<unsigned char>(bits >> (8 * b));
      }
      out.write(buf.data(), buf.size());
    }
  }
  out.commit();
}

void write_file_atomic(const std::string& path, const std::string& bytes) {
  TempFile out(path);
  out.write(bytes.data(), bytes.size());
  out.commit();
}

}  // namespace isplit
