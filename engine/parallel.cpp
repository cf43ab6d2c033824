#include "engine/parallel.h"

#include <omp.h>

#include <algorithm>
#include <thread>

namespace isplit {

namespace {
int g_threads = 0;
}

void set_num_threads(int n) {
  if (n <= 0) n = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  g_threads = n;
  omp_set_num_threads(n);
}

int num_threads() {
  if (g_threads <= 0) set_num_threads(0);
  return g_threads;
}

void parallel_for(int64_t n, const std::function<void(int64_t, int64_t)>& fn) {
  if (n <= 0) return;
  int t = static_cast<int>(std::min<int64_t>(num_threads(), n));
  if (t <= 1) {
    fn(0, n);
    return;
  }
#pragma omp parallel num_threads(t)
  {
    int id = omp_get_thread_num();
    int nt = omp_get_num_threads();
    int64_t chunk = (n + nt - 1) / nt;
    int64_t b = std::min<int64_t>(n, id * chunk);
    int64_t e = std::min<int64_t>(n, b + chunk);
    if (b < e) fn(b, e);
  }
}

}  // namespace isplit
