// A one-line progress report (done/total, items/s, ETA) on a terminal; silent when
// stderr is not a TTY (piped, CI).
#pragma once
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <string>

namespace isplit {

class Progress {
 public:
  // Starts reporting `what` (e.g. "images") out of total.
  Progress(std::string what, long total)
      : what_(std::move(what)), total_(total), tty_(isatty(STDERR_FILENO) != 0),
        start_(std::chrono::steady_clock::now()) {}
  ~Progress() { finish(); }
  // Records that `done` items are finished; redraws at most 5 times a second.
  void update(long done) {
    done_ = done;
    if (!tty_) return;
    const auto now = std::chrono::steady_clock::now();
    if (done < total_ && now - last_ < std::chrono::milliseconds(200)) return;
    last_ = now;
    const double secs = std::chrono::duration<double>(now - start_).count();
    const double rate = secs > 0 ? done / secs : 0.0;
    const double eta = rate > 0 ? (total_ - done) / rate : 0.0;
    std::fprintf(stderr, "\r%ld/%ld %s, %.1f %s/s, ETA %dm%02ds   ", done, total_, what_.c_str(),
                 rate, what_.c_str(), int(eta) / 60, int(eta) % 60);
    std::fflush(stderr);
    drawn_ = true;
  }
  // Ends the line if anything was drawn.
  void finish() {
    if (drawn_) std::fputc('\n', stderr);
    drawn_ = false;
  }
  // Seconds since construction.
  double seconds() const {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  }

 private:
  std::string what_;
  long total_, done_ = 0;
  bool tty_, drawn_ = false;
  std::chrono::steady_clock::time_point start_, last_{};
};

}  // namespace isplit
