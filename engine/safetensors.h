// safetensors files: 8-byte little-endian header length, a JSON header, raw tensor data.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "engine/tensor.h"

namespace isplit {

// One tensor described in a safetensors header.
struct SafetensorsInfo {
  std::string name;
  std::string dtype;  // "F32", "F16", "BF16" (others are rejected on read)
  Shape shape;
  uint64_t begin = 0;  // byte offsets into the data section
  uint64_t end = 0;
};

// A safetensors file opened for reading. The header is validated on open (size bounds,
// JSON syntax, dtypes, shapes against offsets, offsets inside the file, no overlaps);
// every error names the file and the tensor or field.
class SafetensorsReader {
 public:
  // Opens and validates path; throws Error on any problem.
  explicit SafetensorsReader(const std::string& path);
  ~SafetensorsReader();
  SafetensorsReader(const SafetensorsReader&) = delete;
  SafetensorsReader& operator=(const SafetensorsReader&) = delete;

  // The file's path.
  const std::string& path() const { return path_; }
  // Tensor names in header order.
  std::vector<std::string> names() const;
  // True when the file holds a tensor of that name.
  bool has(const std::string& name) const;
  // Header entry of a tensor; throws Error naming the file when absent.
  const SafetensorsInfo& info(const std::string& name) const;
  // Reads a tensor converted to float32; throws Error when absent.
  Tensor get(const std::string& name) const;
  // Reads a tensor converted to float32 into dst's storage (no temporary copy); throws
  // Error naming the file and tensor when it is absent or dst has another shape.
  void read_into(const std::string& name, Tensor& dst) const;
  // The `__metadata__` string map (empty when absent).
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

 private:
  std::string path_;
  std::vector<SafetensorsInfo> entries_;
  std::map<std::string, size_t> index_;
  std::map<std::string, std::string> metadata_;
  uint64_t data_offset_ = 0;
  uint64_t file_size_ = 0;
  void* map_ = nullptr;  // read-only mmap of the whole file
};

// Writes tensors as float32 safetensors atomically (temp file, then rename).
void save_safetensors(const std::string& path,
                      const std::vector<std::pair<std::string, Tensor>>& tensors,
                      const std::map<std::string, std::string>& metadata = {});

// Writes bytes to path through a temporary file beside it, fsync and a rename: readers
// see either the old file or the complete new one. Throws Error naming path.
void write_file_atomic(const std::string& path, const std::string& bytes);

}  // namespace isplit
