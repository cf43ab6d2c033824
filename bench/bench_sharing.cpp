// What it costs a thread to write memory that another core has read: two threads, each
// pinned to its own CPU, read a 1.2 MB buffer (all of it, or only their own half), meet,
// then each overwrites its own half; the benchmark times the calling thread's writes.
// Where the two cores share no cache (two CCDs of an AMD EPYC, as on the VM of
// docs/benchmarks.md), every line the other core holds must be taken back from it first,
// which is what a kernel pays when it writes into a block that the other thread read in
// an earlier layer.
//   build/isplit_bench --benchmark_filter=Sharing/
#include <benchmark/benchmark.h>
#include <pthread.h>
#include <sched.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <thread>
#include <vector>

#include "engine/parallel.h"
#include "engine/tensor.h"

namespace {

constexpr int64_t kFloats = 1200 * 1024 / 4;  // 1.2 MB
constexpr int64_t kLine = 16;                 // floats per 64-byte line

// The CPUs this process may run on, in order.
std::vector<int> allowed_cpus() {
  cpu_set_t set;
  std::vector<int> cpus;
  if (sched_getaffinity(0, sizeof(set), &set) != 0) return cpus;
  for (int c = 0; c < CPU_SETSIZE; ++c)
    if (CPU_ISSET(c, &set)) cpus.push_back(c);
  return cpus;
}

// Pins the calling thread to one CPU; false when it cannot.
bool pin_to(int cpu) {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  return pthread_setaffinity_np(pthread_self(), sizeof(set), &set) == 0;
}

// A meeting point of two threads: wait(k) returns once both have called it k times.
struct Meeting {
  std::atomic<int64_t> arrived{0};
  void wait(int64_t k) {
    arrived.fetch_add(1, std::memory_order_acq_rel);
    while (arrived.load(std::memory_order_acquire) < 2 * k) isplit::cpu_relax();
  }
};

// Reads floats [b, e) of p, one per line; returns their sum so the reads stay.
float read_lines(const float* p, int64_t b, int64_t e) {
  float s = 0.0f;
  for (int64_t i = b; i < e; i += kLine) s += p[i];
  return s;
}

// Writes v to floats [b, e) of p.
void write_lines(float* p, int64_t b, int64_t e, float v) {
  for (int64_t i = b; i < e; ++i) p[i] = v;
}

// Times the calling thread's writes to its half after both threads read the buffer:
// `shared` (each read all of it) or not (each read its own half only).
void bm_sharing(benchmark::State& state, bool shared) {
  const std::vector<int> cpus = allowed_cpus();
  if (cpus.size() < 2) {
    state.SkipWithError("needs two CPUs");
    return;
  }
  cpu_set_t saved;
  pthread_getaffinity_np(pthread_self(), sizeof(saved), &saved);
  if (!pin_to(cpus[0])) {
    state.SkipWithError("could not pin the benchmark thread");
    return;
  }
  isplit::Tensor buf = isplit::Tensor::zeros({kFloats});
  float* p = buf.data();
  const int64_t half = kFloats / 2;
  Meeting meet;
  std::atomic<bool> stop{false};
  std::atomic<float> sink{0.0f};
  // The other thread: the same steps on the second half, until told to stop.
  std::thread other([&] {
    pin_to(cpus[1]);
    for (int64_t k = 1;; k += 2) {
      meet.wait(k);  // the benchmark thread has started a round (or is stopping)
      if (stop.load(std::memory_order_acquire)) return;
      sink.store(shared ? read_lines(p, 0, kFloats) : read_lines(p, half, kFloats),
                 std::memory_order_relaxed);
      meet.wait(k + 1);
      write_lines(p, half, kFloats, static_cast<float>(k));
    }
  });
  int64_t k = 1;
  for (auto _ : state) {
    meet.wait(k);
    sink.store(shared ? read_lines(p, 0, kFloats) : read_lines(p, 0, half),
               std::memory_order_relaxed);
    meet.wait(k + 1);
    const auto t0 = std::chrono::steady_clock::now();
    write_lines(p, 0, half, static_cast<float>(k));
    benchmark::ClobberMemory();
    state.SetIterationTime(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    k += 2;
  }
  stop.store(true, std::memory_order_release);
  meet.wait(k);
  other.join();
  pthread_setaffinity_np(pthread_self(), sizeof(saved), &saved);
  state.counters["write_GBps"] = benchmark::Counter(
      4e-9 * static_cast<double>(half), benchmark::Counter::kIsIterationInvariantRate,
      benchmark::Counter::OneK::kIs1000);
}

// Registers the two cases.
int register_sharing_benchmarks() {
  benchmark::RegisterBenchmark("Sharing/write_own_half/read_by_owner_only", bm_sharing, false)
      ->UseManualTime()
      ->Unit(benchmark::kMicrosecond);
  benchmark::RegisterBenchmark("Sharing/write_own_half/read_by_both", bm_sharing, true)
      ->UseManualTime()
      ->Unit(benchmark::kMicrosecond);
  return 0;
}

const int kRegistered = register_sharing_benchmarks();

}  // namespace
