// Exact sum of non-negative doubles: a fixed-point integer wide enough for every finite
// double (units of 2^-1074, 2176 bits). Integer addition is associative, so the result
// does not depend on the order of the terms: batches, threads and shards give the same
// sums bit for bit, in constant memory.
#pragma once
#include <array>
#include <cstdint>
#include <string>

namespace isplit {

class ExactSum {
 public:
  // Adds v (finite, >= 0); throws Error otherwise.
  void add(double v);
  // Adds another exact sum.
  void add(const ExactSum& other);
  // The sum rounded to a double (deterministic: a function of the exact value only).
  double value() const;
  // Lower-case hexadecimal of the integer (for partial files), "0" when zero.
  std::string to_hex() const;
  // Parses to_hex() output; throws Error on malformed text.
  static ExactSum from_hex(const std::string& hex);
  bool operator==(const ExactSum& o) const { return limbs_ == o.limbs_; }

 private:
  static constexpr int kLimbs = 34;
  std::array<uint64_t, kLimbs> limbs_{};
  void add_at(int bit, uint64_t value);
};

}  // namespace isplit
