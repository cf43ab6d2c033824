// Threading: one process-wide thread count and a pool of worker threads (engine/parallel.cpp).
#pragma once
#include <cstdint>
#include <functional>

namespace isplit {

// Sets the number of threads the engine uses (<= 0: ISPLIT_NUM_THREADS if set, else
// every core this process may run on).
void set_num_threads(int n);
// The number of threads the engine uses.
int num_threads();

// Runs fn(begin, end) over [0, n) split into contiguous chunks, one per thread.
// The split depends only on n and the thread count, so results are reproducible.
void parallel_for(int64_t n, const std::function<void(int64_t, int64_t)>& fn);
// parallel_for with at least `grain` elements per thread (fewer threads, or the calling
// thread alone, for small n): for cheap per-element work, where waking a thread for a few
// thousand elements costs more than it saves.
void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn);
// Elements per thread worth a parallel pass of a streaming elementwise kernel.
constexpr int64_t kEltwiseGrain = 16384;

}  // namespace isplit
