// Philox4x32-10 (Random123) and the uniforms of a stream, DESIGN.md section 3.
//
// Known answer: counter 0, key 0 -> 0x6627e8d5 0xe169c58d 0xbc57ac4c 0x9b00dbd8
// (asserted by csrc/tests/test_math.cpp).
#pragma once

#include "common.h"

namespace moniqua_kernels {

constexpr uint32_t kPhiloxM0 = 0xD2511F53u;
constexpr uint32_t kPhiloxM1 = 0xCD9E8D57u;
constexpr uint32_t kPhiloxW0 = 0x9E3779B9u;
constexpr uint32_t kPhiloxW1 = 0xBB67AE85u;
constexpr float kUniformScale = 1.0f / 16777216.0f;  // 2^-24

struct PhiloxKey {
  uint32_t k0, k1;
};

// seed is an int64 read as uint64: k0 = low 32 bits, k1 = high 32 bits.
MK_HD MK_INLINE PhiloxKey philox_key(uint64_t seed) {
  return PhiloxKey{static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32)};
}

MK_HD MK_INLINE uint32_t mulhi32(uint32_t a, uint32_t m) {
#if defined(__CUDA_ARCH__)
  return __umulhi(a, m);
#else
  return static_cast<uint32_t>((static_cast<uint64_t>(a) * m) >> 32);
#endif
}

// The four output words for 64-bit counter `ctr` (c0 = low, c1 = high, c2 = c3 = 0).
MK_HD MK_INLINE void philox4x32_10(uint64_t ctr, PhiloxKey key, uint32_t out[4]) {
  uint32_t c0 = static_cast<uint32_t>(ctr), c1 = static_cast<uint32_t>(ctr >> 32);
  uint32_t c2 = 0, c3 = 0, k0 = key.k0, k1 = key.k1;
#if defined(__CUDACC__)
#pragma unroll
#else
#pragma GCC unroll 10
#endif
  for (int r = 0; r < 10; ++r) {
    const uint32_t hi0 = mulhi32(c0, kPhiloxM0), lo0 = c0 * kPhiloxM0;
    const uint32_t hi1 = mulhi32(c2, kPhiloxM1), lo1 = c2 * kPhiloxM1;
    c0 = hi1 ^ c1 ^ k0;
    c1 = lo1;
    c2 = hi0 ^ c3 ^ k1;
    c3 = lo0;
    k0 += kPhiloxW0;
    k1 += kPhiloxW1;
  }
  out[0] = c0;
  out[1] = c1;
  out[2] = c2;
  out[3] = c3;
}

// u = (word >> 8) * 2^-24 in [0, 1), exact in float32.
MK_HD MK_INLINE float uniform_from_word(uint32_t w) {
  return MK_FMUL(static_cast<float>(w >> 8), kUniformScale);
}

// Random-k keeps an element where u < ratio, i.e. (word >> 8) < ceil(ratio * 2^24):
// an integer test every backend evaluates identically.
MK_HD MK_INLINE bool randomk_keep(uint32_t w, uint32_t threshold) {
  return (w >> 8) < threshold;
}

}  // namespace moniqua_kernels
