// Division by a divisor that is fixed for a whole kernel launch. A GPU has no integer divide: a
// 32-bit `/` by a runtime value compiles to about 20 instructions around a float reciprocal, a
// 64-bit one to a branch and a call. The elementwise kernels decompose every vector index into
// (batch, channel, position) with two such divisions, so they use FastDivmod when the indices
// fit, and Divmod64 (plain division) beyond (cuda/plane_launch.cuh picks).
//
// FastDivmod is the round-up method of Granlund & Montgomery, "Division by invariant integers
// using multiplication" (PLDI 1994): with s = ceil(log2 d) and m = floor(2^32 (2^s - d) / d) + 1,
//   x / d = (mulhi(x, m) + x) >> s      for 0 <= x < 2^31 and 1 <= d < 2^31,
// where mulhi is the high word of the 64-bit product; x < 2^31 keeps the sum inside 32 bits.
// tests/cpp/kernel_items.cpp checks it against `/` on the CPU, edge values included.
#pragma once

#include <cstdint>

#include "davae_ext/host_device.h"

namespace davae {

struct FastDivmod {
  using index_t = uint32_t;
  static constexpr int64_t kLimit = int64_t{1} << 31;  // dividends and divisors below this

  uint32_t d = 1, m = 1, s = 0;

  FastDivmod() = default;
  explicit FastDivmod(int64_t divisor) : d(static_cast<uint32_t>(divisor)) {
    while ((uint64_t{1} << s) < d) ++s;
    m = static_cast<uint32_t>((((uint64_t{1} << s) - d) << 32) / d + 1);
  }

  DAVAE_HD uint32_t div(uint32_t x) const {
#if defined(__CUDA_ARCH__)
    const uint32_t hi = __umulhi(x, m);
#else
    const uint32_t hi = static_cast<uint32_t>((uint64_t{x} * m) >> 32);
#endif
    return (hi + x) >> s;
  }

  DAVAE_HD void divmod(uint32_t x, uint32_t& q, uint32_t& r) const {
    q = div(x);
    r = x - q * d;
  }
};

struct Divmod64 {
  using index_t = int64_t;

  int64_t d = 1;

  Divmod64() = default;
  explicit Divmod64(int64_t divisor) : d(divisor) {}

  DAVAE_HD int64_t div(int64_t x) const { return x / d; }

  DAVAE_HD void divmod(int64_t x, int64_t& q, int64_t& r) const {
    q = x / d;
    r = x - q * d;
  }
};

}  // namespace davae
