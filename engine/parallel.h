// Threading: one process-wide thread count and a pool of worker threads (engine/parallel.cpp).
#pragma once
#include <atomic>
#include <cstdint>
#include <functional>
#include <thread>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace isplit {

// Sets the number of threads the engine uses (<= 0: ISPLIT_NUM_THREADS if set, else
// every core this process may run on; at most 1024).
void set_num_threads(int n);
// The number of threads the engine uses.
int num_threads();

// Runs fn(begin, end) over [0, n) split into contiguous chunks, one per thread: equal ones,
// or with two threads cut at the calling thread's learned share (set_parallel_balance).
// Every body must give the same bits for any split of its range (the engine's kernels
// do), so results never depend on where the cut falls.
void parallel_for(int64_t n, const std::function<void(int64_t, int64_t)>& fn);
// parallel_for with at least `grain` elements per thread (fewer threads, or the calling
// thread alone, for small n): for cheap per-element work, where waking a thread for a few
// thousand elements costs more than it saves.
void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn);
// Turns on or off (ISPLIT_BALANCE=0 starts it off) the learned cut of two-thread regions,
// where the calling thread takes the share of each range that, by the finish times of the
// regions before, makes both threads end together; resets what was learned to half.
void set_parallel_balance(bool on);
// The calling thread's current share of a two-thread region's range (0.5 when even).
double parallel_caller_share();
// Elements per thread worth a parallel pass of a streaming elementwise kernel.
constexpr int64_t kEltwiseGrain = 16384;

// Tells a spinning core to back off for a moment.
inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  _mm_pause();
#elif defined(__aarch64__)
  asm volatile("yield" ::: "memory");
#endif
}

// A lock for critical sections of a few hundred nanoseconds that threads of one parallel
// region may enter at the same moment (the tensor block cache). A contended std::mutex
// sleeps in the kernel, and on a VM the futex round trip costs tens of microseconds; this
// spins instead, and yields the core only after a long wait (a preempted holder).
class SpinLock {
 public:
  // Takes the lock, spinning (then yielding) while another thread holds it.
  void lock() {
    for (int spins = 0;; ++spins) {
      if (!held_.load(std::memory_order_relaxed) && !held_.exchange(true, std::memory_order_acquire))
        return;
      if (spins < 4096)
        cpu_relax();
      else
        std::this_thread::yield();
    }
  }
  // Releases the lock.
  void unlock() { held_.store(false, std::memory_order_release); }

 private:
  std::atomic<bool> held_{false};
};

}  // namespace isplit
