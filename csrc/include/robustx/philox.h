// Philox4x32-10 counter-based RNG (Salmon et al., "Parallel random numbers: as easy as
// 1, 2, 3", SC 2011) and the bits -> uniform transform used by every sampler. The same
// functions run on CPU and GPU, so both produce identical streams.
#pragma once
#include "robustx/common.h"

namespace robustx {

struct Philox4 {
  uint32_t w[4];
};

RX_HD void mulhilo32(uint32_t a, uint32_t b, uint32_t& hi, uint32_t& lo) {
  const uint64_t product = static_cast<uint64_t>(a) * static_cast<uint64_t>(b);
  hi = static_cast<uint32_t>(product >> 32);
  lo = static_cast<uint32_t>(product);
}

// Ten rounds on counter (c0, c1, c2, c3) with key (k0, k1).
RX_HD Philox4 philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0, uint32_t k1) {
  for (int round = 0; round < 10; ++round) {
    if (round > 0) {
      k0 += 0x9E3779B9u;
      k1 += 0xBB67AE85u;
    }
    uint32_t hi0, lo0, hi1, lo1;
    mulhilo32(0xD2511F53u, c0, hi0, lo0);
    mulhilo32(0xCD9E8D57u, c2, hi1, lo1);
    const uint32_t n0 = hi1 ^ c1 ^ k0, n2 = hi0 ^ c3 ^ k1;
    c0 = n0;
    c1 = lo1;
    c2 = n2;
    c3 = lo0;
  }
  return Philox4{{c0, c1, c2, c3}};
}

// Top 24 bits forced odd, over 2^24: uniform in [2^-24, 1 - 2^-24], exact in float.
template <typename acc_t>
RX_HD acc_t uniform_from_bits(uint32_t bits) {
  return static_cast<acc_t>((bits >> 8) | 1u) * static_cast<acc_t>(5.9604644775390625e-08);  // 2^-24
}

// The stream of point (center i, sample s): block j holds words 4j .. 4j+3.
struct PointStream {
  uint32_t key0, key1, s_lo, s_hi, center;

  RX_HD PointStream(uint64_t seed, uint64_t sample, uint32_t center_index)
      : key0(static_cast<uint32_t>(seed)),
        key1(static_cast<uint32_t>(seed >> 32)),
        s_lo(static_cast<uint32_t>(sample)),
        s_hi(static_cast<uint32_t>(sample >> 32)),
        center(center_index) {}

  RX_HD Philox4 block(uint32_t j) const { return philox4x32_10(j, s_lo, s_hi, center, key0, key1); }
};

// Counter word 0 of the point's radius draw (coordinate blocks count up from 0).
constexpr uint32_t kRadiusBlock = 0xFFFFFFFFu;

}  // namespace robustx
