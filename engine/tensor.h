// Tensor: a float32 array with a shape (NCHW for images), 64-byte aligned, shared storage.
#pragma once
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace isplit {

using Shape = std::vector<int64_t>;

// Thrown for every user-facing failure (bad file, bad shape, bad argument).
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Number of elements of a shape (1 for a scalar); throws on negative or overflowing dims.
int64_t shape_numel(const Shape& shape);
// "2x3x4" style text for a shape.
std::string shape_str(const Shape& shape);

class Tensor {
 public:
  Tensor() = default;
  // A zero-filled tensor of the given shape.
  explicit Tensor(const Shape& shape);
  // A zero-filled tensor of the given shape.
  static Tensor zeros(const Shape& shape) { return Tensor(shape); }
  // A tensor whose contents are left uninitialised (for outputs that are fully written).
  static Tensor empty(const Shape& shape);
  // A tensor filled with one value.
  static Tensor full(const Shape& shape, float value);
  // A tensor holding a copy of the given values.
  static Tensor from(const Shape& shape, const std::vector<float>& values);

  bool defined() const { return data_ != nullptr; }
  const Shape& shape() const { return shape_; }
  int ndim() const { return static_cast<int>(shape_.size()); }
  // Size of dimension i; negative i counts from the end.
  int64_t dim(int i) const;
  int64_t numel() const { return numel_; }
  size_t bytes() const { return static_cast<size_t>(numel_) * sizeof(float); }
  float* data() { return data_; }
  const float* data() const { return data_; }
  float& operator[](int64_t i) { return data_[i]; }
  float operator[](int64_t i) const { return data_[i]; }

  // A view with another shape of the same element count, sharing storage.
  Tensor reshape(const Shape& shape) const;
  // A view of rows [begin, end) of the first dimension, sharing storage.
  Tensor slice0(int64_t begin, int64_t end) const;
  // A deep copy.
  Tensor clone() const;
  // Sets every element to value.
  void fill(float value);
  // Sets every element to zero.
  void zero();
  // Copies the elements of src (same numel) into this tensor.
  void copy_from(const Tensor& src);
  // Frees this handle's hold on the storage and keeps the shape: defined() turns false,
  // shape() and numel() stay (a parameter whose values live only in a packed form).
  void release_storage();
  // True when both tensors share the same storage.
  bool shares_storage(const Tensor& other) const { return storage_ == other.storage_; }

 private:
  std::shared_ptr<float> storage_;
  float* data_ = nullptr;
  Shape shape_;
  int64_t numel_ = 0;
};

// Bounds the bytes of freed tensor storage kept for reuse (default: a quarter of the
// physical memory, at most 8 GiB; 0 disables).
void set_tensor_cache_limit(size_t bytes);
// Bytes of freed tensor storage currently kept for reuse.
size_t tensor_cache_bytes();
// Bytes of blocks of a page or more (>= 4 KiB) taken from the system rather than from the cache so far
// (a steady-state loop that allocates nothing new leaves this unchanged).
size_t tensor_fresh_bytes();
// Bytes of tensor storage in use now (every live tensor, rounded to 64-byte blocks), plus
// the kernels' per-thread scratch buffers.
size_t tensor_live_bytes();
// Highest tensor_live_bytes() since the start or the last reset_tensor_peak_bytes().
size_t tensor_peak_bytes();
// Restarts the high-water mark of tensor_peak_bytes() from the bytes in use now.
void reset_tensor_peak_bytes();
// Counts kernel scratch memory (allocated: delta > 0, freed: delta < 0) in
// tensor_live_bytes() and tensor_peak_bytes(); for the kernels' own buffers.
void track_scratch_bytes(std::ptrdiff_t delta);

// While one is alive on a thread, the tensor blocks of 2 MiB or more that the thread takes
// from the system go on transparent huge pages: for storage that lives long and is
// streamed from memory on every pass (weights and their packed forms), where 4 KiB pages
// cost a TLB miss every 64 cache lines. Activations stay on small pages.
class HugePageScope {
 public:
  HugePageScope();
  ~HugePageScope();
  HugePageScope(const HugePageScope&) = delete;
  HugePageScope& operator=(const HugePageScope&) = delete;

 private:
  bool was_;
};
// Whether HugePageScope has an effect (default on; ISPLIT_HUGEPAGES=0 in the environment
// turns it off). Blocks already made keep their pages.
void set_tensor_huge_pages(bool on);
// Whether HugePageScope has an effect.
bool tensor_huge_pages();
// Bytes of tensor storage the kernel was asked to back with huge pages so far (whole 2 MiB
// pages; 0 where the system has no transparent huge pages).
size_t tensor_huge_page_bytes();

// Throws Error naming `what` when the tensor's shape differs from `expected`.
void check_shape(const Tensor& t, const Shape& expected, const std::string& what);

}  // namespace isplit
