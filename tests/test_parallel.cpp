// The worker pool behind parallel_for: every index runs exactly once with the documented
// split (even, or with two threads the learned cut), exceptions reach the caller, nested and
// concurrent calls run serially and correctly.
#include <doctest/doctest.h>

#include <atomic>
#include <chrono>
#include <stdexcept>
#include <thread>
#include <vector>

#include "engine/parallel.h"

using namespace isplit;

namespace {
// Keeps this thread busy (not asleep) for d.
void spin_for(std::chrono::microseconds d) {
  const auto until = std::chrono::steady_clock::now() + d;
  while (std::chrono::steady_clock::now() < until) {
  }
}
}  // namespace

TEST_SUITE("parallel") {
  TEST_CASE("each index runs once, in ranges fixed by n and the thread count") {
    set_parallel_balance(false);  // even cuts
    for (int threads : {1, 2, 3, 7}) {
      set_num_threads(threads);
      CHECK(num_threads() == threads);
      for (int64_t n : {1, 2, 5, 64, 1001}) {
        std::vector<std::atomic<int>> hits(static_cast<size_t>(n));
        std::vector<std::pair<int64_t, int64_t>> ranges(static_cast<size_t>(threads));
        std::atomic<int> calls{0};
        parallel_for(n, [&](int64_t b, int64_t e) {
          const int64_t chunk = (n + std::min<int64_t>(threads, n) - 1) / std::min<int64_t>(threads, n);
          CHECK(b % chunk == 0);  // ranges start on the fixed chunk grid
          CHECK((e == n || e - b == chunk));
          ++calls;
          for (int64_t i = b; i < e; ++i) ++hits[static_cast<size_t>(i)];
        });
        for (auto& h : hits) CHECK(h.load() == 1);
        CHECK(calls.load() <= threads);
      }
    }
    set_num_threads(0);
    set_parallel_balance(true);
  }

  TEST_CASE("with two threads the cut moves work to the faster thread; every index runs once") {
    set_num_threads(2);
    set_parallel_balance(true);
    CHECK(parallel_caller_share() == 0.5);
    const std::thread::id caller = std::this_thread::get_id();
    const int64_t n = 64;
    // Items cost three times as much on the calling thread: the finish times should move
    // the cut until the caller takes a quarter of them (the lowest share allowed).
    auto region = [&](int64_t& caller_items) {
      std::vector<std::atomic<int>> hits(static_cast<size_t>(n));
      std::atomic<int64_t> mine{0};
      parallel_for(n, [&](int64_t b, int64_t e) {
        const bool on_caller = std::this_thread::get_id() == caller;
        for (int64_t i = b; i < e; ++i) {
          spin_for(std::chrono::microseconds(on_caller ? 6 : 2));
          ++hits[static_cast<size_t>(i)];
        }
        if (on_caller) mine += e - b;
      });
      for (auto& h : hits) REQUIRE(h.load() == 1);
      caller_items = mine.load();
    };
    int64_t caller_items = 0;
    for (int round = 0; round < 300; ++round) region(caller_items);
    CHECK(parallel_caller_share() < 0.4);
    CHECK(parallel_caller_share() >= 0.25);
    // The caller runs the first part, and the second too if the worker came late.
    CHECK((caller_items < 26 || caller_items == n));
    // Off: the even cut again.
    set_parallel_balance(false);
    CHECK(parallel_caller_share() == 0.5);
    region(caller_items);
    CHECK((caller_items == n / 2 || caller_items == n));
    set_parallel_balance(true);
    set_num_threads(0);
  }

  TEST_CASE("regions with different part counts, back to back, run each index once") {
    // A thread still claiming parts of a finished region must not take a part of the next
    // one while the caller sets it up (it once compared with the next region's part count).
    // Regions of 2, 3 and 4 parts alternate on 4 threads (more than a small machine has cores, so
    // that threads are preempted in between); every index must run once, and no body may
    // still run when parallel_for has returned.
    set_num_threads(4);
    std::atomic<int> running{0};
    int bad = 0;
    for (int round = 0; round < 3000; ++round) {
      const int64_t n = 2 + round % 3;
      std::atomic<int> hits[4] = {};
      parallel_for(n, [&](int64_t b, int64_t e) {
        ++running;
        for (int64_t i = b; i < e; ++i) ++hits[i];
        --running;
      });
      if (running.load() != 0) ++bad;
      for (int64_t i = 0; i < n; ++i)
        if (hits[i].load() != 1) ++bad;
    }
    CHECK(bad == 0);
    set_num_threads(0);
  }

  TEST_CASE("a grain bounds the number of ranges; every index still runs once") {
    set_num_threads(3);
    for (int64_t grain : {1, 10, 100, 1000}) {
      for (int64_t n : {1, 9, 10, 250, 999, 5000}) {
        CAPTURE(grain);
        CAPTURE(n);
        std::vector<std::atomic<int>> hits(static_cast<size_t>(n));
        std::atomic<int> calls{0};
        parallel_for(n, grain, [&](int64_t b, int64_t e) {
          ++calls;
          for (int64_t i = b; i < e; ++i) ++hits[static_cast<size_t>(i)];
        });
        for (auto& h : hits) CHECK(h.load() == 1);
        // At most one range per `grain` elements (and per thread), at least one.
        CHECK(calls.load() >= 1);
        CHECK(calls.load() <= std::max<int64_t>(1, std::min<int64_t>(3, n / grain)));
      }
    }
    set_num_threads(0);
  }

  TEST_CASE("an exception in a body reaches the caller, and the pool keeps working") {
    set_num_threads(2);
    CHECK_THROWS_AS(parallel_for(100, [](int64_t b, int64_t) {
                      if (b > 0) throw std::runtime_error("part failed");
                    }),
                    std::runtime_error);
    std::atomic<int64_t> sum{0};
    parallel_for(100, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) sum += i;
    });
    CHECK(sum.load() == 4950);
    set_num_threads(0);
  }

  TEST_CASE("nested and concurrent calls") {
    set_num_threads(2);
    std::atomic<int64_t> total{0};
    parallel_for(8, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i)
        parallel_for(10, [&](int64_t b2, int64_t e2) { total += e2 - b2; });  // runs serially
    });
    CHECK(total.load() == 80);
    // Several threads of the caller's own (decode threads, servers) at once.
    std::atomic<int64_t> done{0};
    std::vector<std::thread> callers;
    for (int t = 0; t < 4; ++t)
      callers.emplace_back([&] {
        for (int rep = 0; rep < 200; ++rep)
          parallel_for(37, [&](int64_t b, int64_t e) { done += e - b; });
      });
    for (auto& t : callers) t.join();
    CHECK(done.load() == 4 * 200 * 37);
    set_num_threads(0);
  }
}
