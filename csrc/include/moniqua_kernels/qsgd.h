// Bucketed QSGD per element, DESIGN.md section 6.
//
// Code of b bits: top bit the sign (1 = negative), low b-1 bits the level
// l = min(floor(|v| * r + u), s), s = 2^(b-1) - 1, r = float32(s) / N (0 when N = 0).
#pragma once

#include <cmath>

#include "common.h"

namespace moniqua_kernels {

MK_HD MK_INLINE int qsgd_levels(int bits) { return (1 << (bits - 1)) - 1; }

// r = float32(s) / N, correctly rounded; 0 for an all-zero bucket.
MK_HD MK_INLINE float qsgd_ratio(int bits, float scale) {
  const float s = static_cast<float>(qsgd_levels(bits));
#if defined(__CUDA_ARCH__)
  return scale > 0.0f ? __fdiv_rn(s, scale) : 0.0f;
#else
  return scale > 0.0f ? s / scale : 0.0f;
#endif
}

// N from a bucket's statistic: max |v| as is, or the square root (correctly rounded) of
// its float32 squares summed in double, rounded to float32 first.
MK_HD MK_INLINE float qsgd_scale(double stat, bool l2) {
#if defined(__CUDA_ARCH__)
  return l2 ? __fsqrt_rn(static_cast<float>(stat)) : static_cast<float>(stat);
#else
  return l2 ? std::sqrt(static_cast<float>(stat)) : static_cast<float>(stat);
#endif
}

template <int BITS>
MK_HD MK_INLINE uint32_t qsgd_code(float v, float r, float u) {
  constexpr uint32_t s = (1u << (BITS - 1)) - 1u;
  const float w = MK_FADD(MK_FMUL(MK_FABS(v), r), u);
  uint32_t level = static_cast<uint32_t>(static_cast<int32_t>(w));  // w >= 0: trunc = floor
  level = level < s ? level : s;
  const uint32_t sign = v < 0.0f ? 1u : 0u;
  return (sign << (BITS - 1)) | level;
}

// N * (-1)^sign * l / s, evaluated as +-((N * l) / s).
template <int BITS>
MK_HD MK_INLINE float qsgd_value(uint32_t code, float scale) {
  constexpr uint32_t s = (1u << (BITS - 1)) - 1u;
  const float level = static_cast<float>(code & s);
#if defined(__CUDA_ARCH__)
  const float magnitude = __fdiv_rn(__fmul_rn(scale, level), static_cast<float>(s));
#else
  const float magnitude = (scale * level) / static_cast<float>(s);
#endif
  return (code >> (BITS - 1)) ? -magnitude : magnitude;
}

}  // namespace moniqua_kernels
