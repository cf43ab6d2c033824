#include "engine/parallel.h"

#include <sched.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace isplit {

namespace {

// How long a thread that has nothing to do keeps polling before it sleeps. Long enough to
// catch the next parallel region of a running network (they follow each other within
// microseconds), short enough that an idle or shared machine gets its core back.
constexpr auto kSpin = std::chrono::microseconds(200);

// Polls ready() for up to kSpin; true when it became true.
template <typename Ready>
bool spin_until(Ready ready) {
  const auto deadline = std::chrono::steady_clock::now() + kSpin;
  for (;;) {
    for (int i = 0; i < 64; ++i) {
      if (ready()) return true;
      cpu_relax();
    }
    if (std::chrono::steady_clock::now() >= deadline) return ready();
  }
}

thread_local bool t_inside_job = false;  // a parallel_for body runs on this thread

// Two-thread regions are cut where the two threads are expected to finish together. On a
// VM one vCPU is often 5-20 % slower than the other for minutes at a time (a neighbour on
// the host), and with an even cut the faster thread then waits in every region: counted
// over ResNet-50 passes at 224x224, the calling thread finished 1.7-3.7 ms later than the
// worker per 25-27 ms pass in such phases. So the calling thread's speed relative to the
// worker is learned from every region's two finish times, and each range is cut in that
// proportion. Every body gives the same bits for any cut of its range (the engine's rule),
// so this changes timings only.
constexpr int64_t kShareOne = 1 << 16;   // the caller's share, in 1/65536ths of a range
constexpr int64_t kBalanceMinItems = 3;  // two items: no cut but the middle
constexpr int64_t kLearnMinNs = 20000;   // shorter regions say more about noise than speed
constexpr int kLearnShift = 5;           // each region moves the share 1/32 of the way

// ISPLIT_BALANCE=0 turns the learned cut off (even cuts).
bool balance_from_env() {
  const char* env = std::getenv("ISPLIT_BALANCE");
  return !(env && std::string(env) == "0");
}
std::atomic<bool> g_balance{balance_from_env()};
std::atomic<int64_t> g_caller_share{kShareOne / 2};

// Moves the caller's share towards the one that would have made this region's parts end
// together: the caller did `done` of n items in caller_ns, the worker the rest in worker_ns.
void learn_share(int64_t done, int64_t n, int64_t caller_ns, int64_t worker_ns) {
  if (std::max(caller_ns, worker_ns) < kLearnMinNs || caller_ns <= 0 || worker_ns <= 0) return;
  const double vc = static_cast<double>(done) / caller_ns, vw = static_cast<double>(n - done) / worker_ns;
  const int64_t ideal = static_cast<int64_t>(kShareOne * vc / (vc + vw));
  const int64_t share = g_caller_share.load(std::memory_order_relaxed);
  const int64_t next = share + ((ideal - share) >> kLearnShift);
  g_caller_share.store(std::clamp<int64_t>(next, kShareOne / 4, kShareOne * 3 / 4), std::memory_order_relaxed);
}

int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// A fixed set of worker threads for parallel_for.
//
// A job is cut into `parts` contiguous ranges (equal ones, or with two threads the learned
// cut above); the caller runs part 0, then the caller and the workers claim the other
// parts one by one from a shared counter. Which thread runs a part never matters (every
// kernel computes the same bits from the same range), so a part nobody has started yet
// is simply taken by whoever is free: on a busy machine, a worker that the scheduler has
// not run yet delays nothing, and a waiting thread sleeps after a short spin instead of
// keeping a core from the thread it waits for. This is what OpenMP's static schedule with
// spin-waiting did not do: one preempted thread stalled every region, up to ten times the
// step time with a compiler running beside a training run.
class Pool {
 public:
  static Pool& instance() {
    static Pool* pool = new Pool();  // never destroyed: workers may run at exit
    return *pool;
  }

  void set_workers(int count) {
    std::lock_guard<std::mutex> call(call_mutex_);
    stop_workers();
    stop_ = false;
    // A worker that starts after the next job is published still takes part in it.
    const uint64_t seen = generation_of(state_.load(std::memory_order_acquire));
    for (int i = 0; i < count; ++i) workers_.emplace_back([this, seen] { work(seen); });
  }

  // Runs fn over parts of [0, n); false when the pool is busy with another caller's job.
  bool run(int64_t n, int parts, const std::function<void(int64_t, int64_t)>& fn) {
    std::unique_lock<std::mutex> call(call_mutex_, std::try_to_lock);
    if (!call.owns_lock()) return false;
    fn_ = &fn;
    n_ = n;
    parts_ = parts;
    chunk_ = (n + parts - 1) / parts;
    error_ = nullptr;
    // Two parts: cut at the caller's learned share.
    const bool learn = parts == 2 && n >= kBalanceMinItems && g_balance.load(std::memory_order_relaxed);
    const int64_t share = g_caller_share.load(std::memory_order_relaxed);
    cut_ = learn ? std::clamp<int64_t>((n * share + kShareOne / 2) / kShareOne, 1, n - 1) : chunk_;
    start_ns_ = learn ? now_ns() : 0;
    worker_end_ns_ = 0;
    done_.store(0, std::memory_order_relaxed);
    const uint64_t gen = ++generation_;
    // Publishes the job, part 1 next.
    state_.store((gen << 32) | (static_cast<uint64_t>(parts_) << 16) | 1u, std::memory_order_seq_cst);
    if (sleepers_.load(std::memory_order_seq_cst) > 0) {
      std::lock_guard<std::mutex> lock(mutex_);
      work_cv_.notify_all();
    }
    run_part(0);
    const int64_t caller_end = learn ? now_ns() - start_ns_ : 0;
    run_parts(gen);
    if (!spin_until([&] { return done_.load(std::memory_order_acquire) == parts_; })) {
      std::unique_lock<std::mutex> lock(mutex_);
      caller_waiting_ = true;
      done_cv_.wait(lock, [&] { return done_.load(std::memory_order_acquire) == parts_; });
      caller_waiting_ = false;
    }
    fn_ = nullptr;
    // Learn only from regions where a worker ran part 1 (not the caller after it).
    if (learn && worker_end_ns_ > 0) learn_share(cut_, n, caller_end, worker_end_ns_);
    if (error_) std::rethrow_exception(error_);
    return true;
  }

 private:
  Pool() = default;

  void stop_workers() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stop_ = true;
      work_cv_.notify_all();
    }
    for (std::thread& t : workers_) t.join();
    workers_.clear();
  }

  // Runs part `part` of the current job and counts it done; a worker timing its part for
  // the learned cut notes when it ended first (the caller reads that once all are done).
  void run_part(int part, bool timed = false) {
    // Part 0 ends at the cut (chunk_ unless learned), the others follow in chunk_ steps.
    const int64_t b = part == 0 ? 0 : std::min(n_, cut_ + (part - 1) * chunk_);
    const int64_t e = part == 0 ? cut_ : part == parts_ - 1 ? n_ : std::min(n_, cut_ + part * chunk_);
    if (b < e) {
      t_inside_job = true;
      try {
        (*fn_)(b, e);
      } catch (...) {
        std::lock_guard<std::mutex> lock(mutex_);
        if (!error_) error_ = std::current_exception();
      }
      t_inside_job = false;
    }
    if (timed) worker_end_ns_ = now_ns() - start_ns_;
    if (done_.fetch_add(1, std::memory_order_acq_rel) + 1 == parts_) {
      std::lock_guard<std::mutex> lock(mutex_);
      if (caller_waiting_) done_cv_.notify_one();
    }
  }

  // Claims and runs parts of job `gen` (part 1 on) until none is left; `worker`: called by
  // a worker, which times its parts when the job learns its cut.
  void run_parts(uint64_t gen, bool worker = false) {
    for (;;) {
      uint64_t s = state_.load(std::memory_order_acquire);
      int part;
      do {
        // The part count comes from the same word as the generation: a thread still in
        // the loop of a finished job must not read parts_ of the next one (being set up).
        part = static_cast<int>(s & 0xffffu);
        if ((s >> 32) != gen || part >= static_cast<int>((s >> 16) & 0xffffu)) return;
      } while (!state_.compare_exchange_weak(s, s + 1, std::memory_order_acq_rel));
      run_part(part, worker && start_ns_ > 0);
    }
  }

  // A worker's loop; `seen`: the last generation before it was started.
  void work(uint64_t seen) {
    for (;;) {
      auto fresh = [&] { return generation_of(state_.load(std::memory_order_seq_cst)) != seen; };
      if (!spin_until(fresh)) {
        std::unique_lock<std::mutex> lock(mutex_);
        sleepers_.fetch_add(1, std::memory_order_seq_cst);
        work_cv_.wait(lock, [&] { return stop_ || fresh(); });
        sleepers_.fetch_sub(1, std::memory_order_seq_cst);
        if (stop_) return;
      }
      seen = generation_of(state_.load(std::memory_order_acquire));
      run_parts(seen, true);
    }
  }

  static uint64_t generation_of(uint64_t state) { return state >> 32; }

  std::mutex call_mutex_;  // one job at a time
  std::mutex mutex_;       // sleeping, waking, errors
  std::condition_variable work_cv_, done_cv_;
  std::vector<std::thread> workers_;
  bool stop_ = false;
  bool caller_waiting_ = false;
  std::atomic<int> sleepers_{0};
  // The job: generation in the high 32 bits, its part count in bits 16-31, the next
  // unclaimed part in the low 16 bits.
  std::atomic<uint64_t> state_{0};
  uint64_t generation_ = 0;
  std::atomic<int> done_{0};
  const std::function<void(int64_t, int64_t)>* fn_ = nullptr;
  int64_t n_ = 0, chunk_ = 0, cut_ = 0;
  int64_t start_ns_ = 0;       // when a learning job began (0: not learning)
  int64_t worker_end_ns_ = 0;  // when the worker's part ended, after start_ns_
  int parts_ = 0;
  std::exception_ptr error_;
};

int g_threads = 0;
constexpr int kMaxThreads = 1024;  // parts of a job are counted in 16 bits

// ISPLIT_NUM_THREADS when set to a positive count, else the cores in this process's CPU
// affinity mask (what taskset or a container allows), else the hardware's.
int default_threads() {
  if (const char* env = std::getenv("ISPLIT_NUM_THREADS")) {
    char* end = nullptr;
    const long v = std::strtol(env, &end, 10);
    if (end != env && *end == '\0' && v > 0 && v <= 1024) return static_cast<int>(v);
  }
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0 && CPU_COUNT(&set) > 0) return CPU_COUNT(&set);
  return static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
}

}  // namespace

void set_parallel_balance(bool on) {
  g_balance.store(on, std::memory_order_relaxed);
  g_caller_share.store(kShareOne / 2, std::memory_order_relaxed);
}

double parallel_caller_share() {
  return static_cast<double>(g_caller_share.load(std::memory_order_relaxed)) / kShareOne;
}

void set_num_threads(int n) {
  if (n <= 0) n = default_threads();
  n = std::min(n, kMaxThreads);
  if (n == g_threads) return;
  g_threads = n;
  Pool::instance().set_workers(n - 1);
}

int num_threads() {
  if (g_threads <= 0) set_num_threads(0);
  return g_threads;
}

void parallel_for(int64_t n, const std::function<void(int64_t, int64_t)>& fn) {
  if (n <= 0) return;
  const int t = static_cast<int>(std::min<int64_t>(num_threads(), n));
  // One thread, a nested call from inside a body, or a pool busy with another caller's
  // job: run here. Every kernel gives the same bits for any split of its range.
  if (t <= 1 || t_inside_job || !Pool::instance().run(n, t, fn)) fn(0, n);
}

void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn) {
  if (n <= 0) return;
  const int64_t by_grain = grain > 0 ? std::max<int64_t>(1, n / grain) : n;
  const int t = static_cast<int>(std::min<int64_t>(num_threads(), by_grain));
  if (t <= 1 || t_inside_job || !Pool::instance().run(n, t, fn)) fn(0, n);
}

}  // namespace isplit
