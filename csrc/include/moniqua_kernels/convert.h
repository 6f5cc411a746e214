// float16 / bfloat16 <-> float32 by bit manipulation, branch-free so that the CPU
// loops vectorize and the same code serves CUDA.  Widening is exact; narrowing
// rounds to nearest even, as torch's .to(dtype) does.
#pragma once

#include "common.h"

namespace moniqua_kernels {

MK_HD MK_INLINE float bf16_to_float(uint16_t h) {
  return bits_float(static_cast<uint32_t>(h) << 16);
}

MK_HD MK_INLINE uint16_t float_to_bf16(float f) {
  const uint32_t u = float_bits(f);
  const uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
  const bool nan = (u & 0x7FFFFFFFu) > 0x7F800000u;
  return static_cast<uint16_t>(nan ? ((u >> 16) | 0x40u) : rounded);  // quiet NaN
}

MK_HD MK_INLINE float half_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t em = h & 0x7FFFu;
  // Exponent and mantissa moved into float position: the float is the half's value
  // times 2^-112 (normals and subnormals alike), so one exact multiply rescales it.
  const float scaled = MK_FMUL(bits_float(em << 13), 5.192296858534828e33f);  // 2^112
  const uint32_t finite = float_bits(scaled);
  const uint32_t special = 0x7F800000u | (em << 13);  // inf / NaN keep their payload
  return bits_float(sign | (em >= 0x7C00u ? special : finite));
}

MK_HD MK_INLINE uint16_t float_to_half(float f) {
  uint32_t u = float_bits(f);
  const uint32_t sign = (u >> 16) & 0x8000u;
  u &= 0x7FFFFFFFu;
  // Normal range: rebias the exponent and round the 13 dropped bits to nearest even;
  // a carry out of the mantissa correctly bumps the exponent (up to inf).
  const uint32_t normal = (u + 0xC8000FFFu + ((u >> 13) & 1u)) >> 13;  // -112<<23 = 0xC8000000
  // Below 2^-14: adding 0.5f aligns the value so that the float adder's own rounding
  // is the half subnormal rounding; the low mantissa bits are then the half's bits.
  const uint32_t sub = float_bits(MK_FADD(bits_float(u), 0.5f)) - 0x3F000000u;
  uint32_t h = u < 0x38800000u ? sub : normal;
  h = u >= 0x47800000u ? 0x7C00u : h;                       // >= 65536: inf
  h = u > 0x7F800000u ? (0x7E00u | ((u >> 13) & 0x3FFu)) : h;  // NaN stays NaN
  return static_cast<uint16_t>(sign | h);
}

// Element access for the kernels' element types (common.h).
MK_HD MK_INLINE float to_float(float v) { return v; }
MK_HD MK_INLINE float to_float(Half16 v) { return half_to_float(v.bits); }
MK_HD MK_INLINE float to_float(BFloat16 v) { return bf16_to_float(v.bits); }
MK_HD MK_INLINE void from_float(float& d, float v) { d = v; }
MK_HD MK_INLINE void from_float(Half16& d, float v) { d.bits = float_to_half(v); }
MK_HD MK_INLINE void from_float(BFloat16& d, float v) { d.bits = float_to_bf16(v); }

// The smallest magnitude that rounds to inf when stored as T (nearest even): float16
// 65520, halfway between 65504 and 2^16; bfloat16 halfway between 0x7F7F and inf.
template <typename T>
MK_HD MK_INLINE float overflow_threshold();
template <>
MK_HD MK_INLINE float overflow_threshold<float>() { return bits_float(0x7F800000u); }
template <>
MK_HD MK_INLINE float overflow_threshold<Half16>() { return bits_float(0x477FF000u); }
template <>
MK_HD MK_INLINE float overflow_threshold<BFloat16>() { return bits_float(0x7F7F8000u); }

// v is NaN, or +-inf once stored as T: a decoded or mixed result counts as not finite in
// its own dtype, as the reference counts it (a float32 result at or above T's threshold
// is stored as inf).
template <typename T>
MK_HD MK_INLINE bool not_finite_as(float v) { return !(MK_FABS(v) < overflow_threshold<T>()); }

}  // namespace moniqua_kernels
