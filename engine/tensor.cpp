#include "engine/tensor.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <mutex>
#include <unordered_map>
#include <cstring>
#include <limits>
#include <sstream>
#include <string>

#include "engine/cpu.h"
#include "engine/parallel.h"

namespace isplit {

namespace {
constexpr size_t kAlign = 64;

// Inside a HugePageScope, blocks of at least this many bytes start on a 2 MiB boundary and
// ask the kernel for transparent huge pages over their whole 2 MiB pages (madvise: in the
// "madvise" mode of /sys/kernel/mm/transparent_hugepage/enabled nothing else gets them).
// For the weights, which every batch-1 pass streams from memory once: ResNet-50's layer4
// at 64x64 ran about 10 % faster with them. Activations are reused from the block cache
// while they are hot, and stay on small pages (docs/benchmarks.md).
constexpr size_t kHugePage = size_t{2} << 20;
thread_local bool t_huge_scope = false;

std::atomic<bool>& huge_pages_slot() {
  static std::atomic<bool> slot{env_switch("ISPLIT_HUGEPAGES", true)};
  return slot;
}

std::atomic<size_t> g_huge_page_bytes{0};

// Fresh storage for a block of `bytes` (a multiple of kAlign), or null.
void* system_block(size_t bytes) {
#if defined(MADV_HUGEPAGE)
  if (t_huge_scope && bytes >= kHugePage && huge_pages_slot().load(std::memory_order_relaxed)) {
    void* p = nullptr;
    if (posix_memalign(&p, kHugePage, bytes) != 0) return nullptr;
    // Only whole huge pages: the tail of the block keeps small pages, so no block takes
    // more memory than it asks for. Advice the kernel cannot follow costs nothing.
    if (madvise(p, bytes / kHugePage * kHugePage, MADV_HUGEPAGE) == 0)
      g_huge_page_bytes.fetch_add(bytes / kHugePage * kHugePage, std::memory_order_relaxed);
    return p;
  }
#endif
  return std::aligned_alloc(kAlign, bytes);
}

// A cache of freed blocks, by exact (rounded) size. Fresh pages cost a page fault each on
// first touch, which on some machines makes writing new memory an order of magnitude
// slower than reusing it; a network allocates the same sizes on every pass, so freed
// blocks are kept for the next request of that size, up to a bound. Blocks from one page
// up are kept: left to malloc, the small ones of a pass (a ResNet-50 at 64x64 has many
// of 8-64 KiB) were returned to the system when the heap top was trimmed and faulted in
// again on the next pass, about 90 page faults per importance pass on this VM.
class BlockCache {
 public:
  // While set on a thread, blocks freed there go back to the system instead of the cache
  // (storage that is not about to be asked for again, like weights released once packed).
  static thread_local bool returning_to_system;
  static BlockCache& instance() {
    static BlockCache* cache = new BlockCache();  // never destroyed: tensors may outlive main
    return *cache;
  }
  void* take(size_t bytes) {
    {
      std::lock_guard<SpinLock> hold(lock_);
      auto it = free_.find(bytes);
      if (it != free_.end() && !it->second.empty()) {
        void* p = it->second.back();
        it->second.pop_back();
        cached_ -= bytes;
        note_live(bytes);
        return p;
      }
    }
    void* p = system_block(bytes);
    if (!p) return nullptr;
    if (bytes >= kMinCached) fresh_.fetch_add(bytes, std::memory_order_relaxed);
    note_live(bytes);
    return p;
  }
  size_t fresh() const { return fresh_.load(std::memory_order_relaxed); }
  size_t live() const { return live_.load(std::memory_order_relaxed); }
  size_t peak() const { return peak_.load(std::memory_order_relaxed); }
  void reset_peak() { peak_.store(live(), std::memory_order_relaxed); }
  // Adds (or, negative, removes) bytes the cache does not hand out itself.
  void track(std::ptrdiff_t delta) {
    if (delta >= 0)
      note_live(size_t(delta));
    else
      live_.fetch_sub(size_t(-delta), std::memory_order_relaxed);
  }
  void give(void* p, size_t bytes) {
    live_.fetch_sub(bytes, std::memory_order_relaxed);
    std::lock_guard<SpinLock> hold(lock_);
    if (bytes < kMinCached || cached_ + bytes > limit_ || returning_to_system) {
      std::free(p);
      return;
    }
    free_[bytes].push_back(p);
    cached_ += bytes;
  }
  void set_limit(size_t bytes) {
    std::lock_guard<SpinLock> hold(lock_);
    limit_ = bytes;
    for (auto& [size, blocks] : free_)
      while (cached_ > limit_ && !blocks.empty()) {
        std::free(blocks.back());
        blocks.pop_back();
        cached_ -= size;
      }
  }
  size_t cached() {
    std::lock_guard<SpinLock> hold(lock_);
    return cached_;
  }

 private:
  static constexpr size_t kMinCached = 4 * 1024;  // below a page: malloc reuses them well
  SpinLock lock_;  // both threads of a region may allocate at once (never a futex wait)
  std::unordered_map<size_t, std::vector<void*>> free_;
  size_t cached_ = 0;
  std::atomic<size_t> fresh_{0};
  std::atomic<size_t> live_{0}, peak_{0};
  size_t limit_ = default_limit();

  // Counts a block handed out and raises the high-water mark.
  void note_live(size_t bytes) {
    const size_t now = live_.fetch_add(bytes, std::memory_order_relaxed) + bytes;
    size_t seen = peak_.load(std::memory_order_relaxed);
    while (now > seen && !peak_.compare_exchange_weak(seen, now, std::memory_order_relaxed)) {
    }
  }

  // A quarter of physical memory, at most 8 GiB.
  static size_t default_limit() {
    const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGE_SIZE);
    const size_t phys = pages > 0 && page > 0 ? size_t(pages) * size_t(page) : size_t{4} << 30;
    return std::min(phys / 4, size_t{8} << 30);
  }
};

thread_local bool BlockCache::returning_to_system = false;

std::shared_ptr<float> allocate(int64_t numel) {
  size_t bytes = static_cast<size_t>(numel) * sizeof(float);
  bytes = (bytes + kAlign - 1) / kAlign * kAlign;
  if (bytes == 0) bytes = kAlign;
  void* p = BlockCache::instance().take(bytes);
  if (!p) throw Error("out of memory allocating " + std::to_string(bytes) + " bytes");
  return std::shared_ptr<float>(static_cast<float*>(p),
                                [bytes](float* q) { BlockCache::instance().give(q, bytes); });
}
}  // namespace

void set_tensor_cache_limit(size_t bytes) { BlockCache::instance().set_limit(bytes); }

size_t tensor_cache_bytes() { return BlockCache::instance().cached(); }

size_t tensor_fresh_bytes() { return BlockCache::instance().fresh(); }

size_t tensor_live_bytes() { return BlockCache::instance().live(); }

size_t tensor_peak_bytes() { return BlockCache::instance().peak(); }

void reset_tensor_peak_bytes() { BlockCache::instance().reset_peak(); }

void track_scratch_bytes(std::ptrdiff_t delta) { BlockCache::instance().track(delta); }

HugePageScope::HugePageScope() : was_(t_huge_scope) { t_huge_scope = true; }

HugePageScope::~HugePageScope() { t_huge_scope = was_; }

void set_tensor_huge_pages(bool on) { huge_pages_slot().store(on); }

bool tensor_huge_pages() { return huge_pages_slot().load(); }

size_t tensor_huge_page_bytes() { return g_huge_page_bytes.load(std::memory_order_relaxed); }

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

namespace {
// Throws when t has elements but no storage (released).
void check_values(const Tensor& t, const char* op) {
  if (t.numel() && !t.defined())
    throw Error(std::string(op) + ": tensor " + shape_str(t.shape()) +
                " has no values (released into a packed form)");
}
}  // namespace

void Tensor::release_storage() {
  // When this was the last handle, the block goes back to the system, not to the cache.
  BlockCache::returning_to_system = true;
  storage_.reset();
  BlockCache::returning_to_system = false;
  data_ = nullptr;
}

Tensor Tensor::clone() const {
  check_values(*this, "clone");
  Tensor t = empty(shape_);
  if (numel_) std::memcpy(t.data_, data_, bytes());
  return t;
}

void Tensor::zero() {
  check_values(*this, "zero");
  if (numel_) std::memset(data_, 0, bytes());  // all-zero bits are +0.0f
}

void Tensor::fill(float value) {
  check_values(*this, "fill");
  for (int64_t i = 0; i < numel_; ++i) data_[i] = value;
}

void Tensor::copy_from(const Tensor& src) {
  if (src.numel_ != numel_)
    throw Error("copy_from: " + shape_str(src.shape_) + " into " + shape_str(shape_));
  check_values(*this, "copy_from");
  check_values(src, "copy_from");
  if (numel_) std::memmove(data_, src.data_, bytes());
}

void check_shape(const Tensor& t, const Shape& expected, const std::string& what) {
  if (t.shape() != expected)
    throw Error(what + ": expected shape " + shape_str(expected) + ", got " + shape_str(t.shape()));
}

}  // namespace isplit
