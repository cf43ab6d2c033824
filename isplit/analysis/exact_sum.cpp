#include "isplit/analysis/exact_sum.h"

#include <cmath>

#include "engine/tensor.h"

namespace isplit {

void ExactSum::add_at(int bit, uint64_t value) {
  int i = bit / 64;
  const int s = bit % 64;
  uint64_t lo = value << s;
  uint64_t hi = s ? value >> (64 - s) : 0;
  while ((lo || hi) && i < kLimbs) {
    const uint64_t before = limbs_[i];
    limbs_[i] += lo;
    const uint64_t carry = limbs_[i] < before ? 1 : 0;
    lo = hi + carry;
    hi = (lo < carry) ? 1 : 0;  // hi + carry overflowed (only when hi was all ones)
    ++i;
  }
  if (lo || hi) throw Error("ExactSum: overflow");
}

void ExactSum::add(double v) {
  if (!(v >= 0.0) || !std::isfinite(v)) throw Error("ExactSum: term must be finite and >= 0");
  if (v == 0.0) return;
  int exp = 0;
  const double m = std::frexp(v, &exp);  // v = m * 2^exp, m in [0.5, 1)
  uint64_t mant = static_cast<uint64_t>(std::ldexp(m, 53));  // exact: 53 bits
  int bit = exp - 53 + 1074;  // position of mant's lowest bit in units of 2^-1074
  if (bit < 0) {  // subnormal: the bits shifted out are zero
    mant >>= -bit;
    bit = 0;
  }
  add_at(bit, mant);
}

void ExactSum::add(const ExactSum& o) {
  uint64_t carry = 0;
  for (int i = 0; i < kLimbs; ++i) {
    const uint64_t a = limbs_[i];
    const uint64_t s = a + o.limbs_[i];
    const uint64_t c1 = s < a ? 1 : 0;
    limbs_[i] = s + carry;
    const uint64_t c2 = limbs_[i] < s ? 1 : 0;
    carry = c1 | c2;
  }
  if (carry) throw Error("ExactSum: overflow");
}

double ExactSum::value() const {
  // From the lowest limb up, so small limbs are not lost before they can round.
  long double acc = 0.0L;
  for (int i = 0; i < kLimbs; ++i)
    if (limbs_[i]) acc += std::ldexp(static_cast<long double>(limbs_[i]), 64 * i - 1074);
  return static_cast<double>(acc);
}

std::string ExactSum::to_hex() const {
  static const char* digits = "0123456789abcdef";
  std::string out;
  for (int i = kLimbs - 1; i >= 0; --i)
    for (int n = 15; n >= 0; --n) {
      const int d = static_cast<int>((limbs_[i] >> (4 * n)) & 15);
      if (out.empty() && d == 0) continue;
      out += digits[d];
    }
  return out.empty() ? "0" : out;
}

ExactSum ExactSum::from_hex(const std::string& hex) {
  if (hex.empty() || hex.size() > static_cast<size_t>(kLimbs) * 16)
    throw Error("ExactSum: bad hexadecimal '" + hex.substr(0, 40) + "'");
  ExactSum s;
  for (size_t k = 0; k < hex.size(); ++k) {
    const char c = hex[hex.size() - 1 - k];
    int d;
    if (c >= '0' && c <= '9') d = c - '0';
    else if (c >= 'a' && c <= 'f') d = c - 'a' + 10;
    else throw Error("ExactSum: bad hexadecimal digit in '" + hex.substr(0, 40) + "'");
    s.limbs_[k / 16] |= static_cast<uint64_t>(d) << (4 * (k % 16));
  }
  return s;
}

}  // namespace isplit
