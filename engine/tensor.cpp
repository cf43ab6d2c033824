#include "engine/tensor.h"

#include <cstdlib>
#include <cstring>
#include <limits>
#include <sstream>

namespace isplit {

namespace {
constexpr size_t kAlign = 64;

std::shared_ptr<float> allocate(int64_t numel) {
  size_t bytes = static_cast<size_t>(numel) * sizeof(float);
  bytes = (bytes + kAlign - 1) / kAlign * kAlign;
  if (bytes == 0) bytes = kAlign;
  void* p = std::aligned_alloc(kAlign, bytes);
  if (!p) throw Error("out of memory allocating " + std::to_string(bytes) + " bytes");
  return std::shared_ptr<float>(static_cast<float*>(p), [](float* q) { std::free(q); });
}
}  // namespace

int64_t shape_numel(const Shape& shape) {
  int64_t n = 1;
  for (int64_t d : shape) {
    if (d < 0) throw Error("negative dimension in shape " + shape_str(shape));
    if (d != 0 && n > std::numeric_limits<int64_t>::max() / d)
      throw Error("shape " + shape_str(shape) + " overflows");
    n *= d;
  }
  return n;
}

std::string shape_str(const Shape& shape) {
  std::ostringstream os;
  for (size_t i = 0; i < shape.size(); ++i) os << (i ? "x" : "") << shape[i];
  if (shape.empty()) os << "scalar";
  return os.str();
}

Tensor::Tensor(const Shape& shape) : Tensor(empty(shape)) { zero(); }

Tensor Tensor::empty(const Shape& shape) {
  Tensor t;
  t.shape_ = shape;
  t.numel_ = shape_numel(shape);
  t.storage_ = allocate(t.numel_);
  t.data_ = t.storage_.get();
  return t;
}

Tensor Tensor::full(const Shape& shape, float value) {
  Tensor t = empty(shape);
  t.fill(value);
  return t;
}

Tensor Tensor::from(const Shape& shape, const std::vector<float>& values) {
  Tensor t = empty(shape);
  if (static_cast<int64_t>(values.size()) != t.numel_)
    throw Error("Tensor::from: " + std::to_string(values.size()) + " values for shape " +
                shape_str(shape));
  std::memcpy(t.data_, values.data(), t.bytes());
  return t;
}

int64_t Tensor::dim(int i) const {
  int n = ndim();
  if (i < 0) i += n;
  if (i < 0 || i >= n) throw Error("dimension index out of range for shape " + shape_str(shape_));
  return shape_[i];
}

Tensor Tensor::reshape(const Shape& shape) const {
  if (shape_numel(shape) != numel_)
    throw Error("cannot reshape " + shape_str(shape_) + " to " + shape_str(shape));
  Tensor t = *this;
  t.shape_ = shape;
  return t;
}

Tensor Tensor::slice0(int64_t begin, int64_t end) const {
  if (ndim() == 0 || begin < 0 || end > shape_[0] || begin > end)
    throw Error("slice0 out of range for shape " + shape_str(shape_));
  Tensor t = *this;
  int64_t row = shape_[0] ? numel_ / shape_[0] : 0;
  t.data_ = data_ + begin * row;
  t.shape_[0] = end - begin;
  t.numel_ = row * (end - begin);
  return t;
}

Tensor Tensor::clone() const {
  Tensor t = empty(shape_);
  if (numel_) std::memcpy(t.data_, data_, bytes());
  return t;
}

void Tensor::fill(float value) {
  for (int64_t i = 0; i < numel_; ++i) data_[i] = value;
}

void Tensor::copy_from(const Tensor& src) {
  if (src.numel_ != numel_)
    throw Error("copy_from: " + shape_str(src.shape_) + " into " + shape_str(shape_));
  if (numel_) std::memmove(data_, src.data_, bytes());
}

void check_shape(const Tensor& t, const Shape& expected, const std::string& what) {
  if (t.shape() != expected)
    throw Error(what + ": expected shape " + shape_str(expected) + ", got " + shape_str(t.shape()));
}

}  // namespace isplit
