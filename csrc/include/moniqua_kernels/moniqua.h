// Moniqua modulo quantization per element, DESIGN.md section 4.
//
// All arithmetic float32, one rounding per operation, in the spec's order;
// invB = float32(1) / float32(B) is computed once by the caller.
#pragma once

#include "common.h"

namespace moniqua_kernels {

// k = floor(z * 2^b + u) mod 2^b with z = t - floor(t), t = x * invB.
// u = 0.5 for nearest, u_p for stochastic and dither.
template <int BITS>
MK_HD MK_INLINE uint32_t moniqua_code(float x, float inv_b, float u) {
  const float t = MK_FMUL(x, inv_b);
  float z = MK_FSUB(t, MK_FLOOR(t));
  constexpr uint32_t kMask = (1u << BITS) - 1u;
#if defined(__CUDA_ARCH__)
  // A non-finite t gives z = NaN, then w = NaN, and cvt.rmi.s32.f32 turns NaN into 0:
  // the spec's code for z = 0 (floor(0 + u) = 0, u < 1), without the select below.
  const float w = MK_FADD(MK_FMUL(z, static_cast<float>(1 << BITS)), u);
  return static_cast<uint32_t>(__float2int_rd(w)) & kMask;
#else
  // Finite t gives z in [0, 1]; a non-finite t gives NaN here, which the spec maps to
  // z = 0.  Written as a select so the loop stays vectorizable.
  z = (z >= 0.0f) ? z : 0.0f;
  const float w = MK_FADD(MK_FMUL(z, static_cast<float>(1 << BITS)), u);
  // w is in [0, 2^b + 1): truncation is floor, and the mask is "mod 2^b" (z = 1.0,
  // reached by a tiny negative t, folds back to code 0).
  return static_cast<uint32_t>(static_cast<int32_t>(w)) & kMask;
#endif
}

// The dither offset c = 0.5 - u (exact); 0 for stochastic and nearest.
MK_HD MK_INLINE float moniqua_dither_offset(float u) { return MK_FSUB(0.5f, u); }

// xh = y + (a - B * floor(a * invB + 0.5)),  a = zh * B - y, zh the decoded fraction.
MK_HD MK_INLINE float moniqua_value_from_fraction(float zh, float y, float b, float inv_b) {
  const float a = MK_FSUB(MK_FMUL(zh, b), y);
  const float wraps = MK_FLOOR(MK_FADD(MK_FMUL(a, inv_b), 0.5f));
  return MK_FADD(y, MK_FSUB(a, MK_FMUL(b, wraps)));
}

// The same with zh = (k + c) * 2^-b.
template <int BITS>
MK_HD MK_INLINE float moniqua_value(uint32_t k, float c, float y, float b, float inv_b) {
  const float zh = MK_FMUL(MK_FADD(static_cast<float>(k), c), 1.0f / static_cast<float>(1 << BITS));
  return moniqua_value_from_fraction(zh, y, b, inv_b);
}

// The dither fraction zh = (k + 0.5 - u) * 2^-b straight from the Philox word:
// k + 0.5 - u = ((k << 24) + 2^23 - (word >> 8)) * 2^-24 exactly, and converting that
// integer to float rounds the same exact value once, as the spec's float32 sum
// k + (0.5 - u) does, so the result is bit-identical with one int->float conversion
// instead of two (the conversion unit runs at 1/8 of the FP32 rate on sm_90).  The
// integer fits int32 up to 7 bits; 8 bits need int64.
template <int BITS>
MK_HD MK_INLINE float moniqua_dither_fraction(uint32_t k, uint32_t word) {
  constexpr float kScale = 1.0f / static_cast<float>(1ull << (24 + BITS));
  if (BITS < 8) {
    const int32_t fixed = static_cast<int32_t>(k << 24) + 0x800000 - static_cast<int32_t>(word >> 8);
    return MK_FMUL(static_cast<float>(fixed), kScale);
  }
  const int64_t fixed = (static_cast<int64_t>(k) << 24) + 0x800000 - static_cast<int64_t>(word >> 8);
  return MK_FMUL(static_cast<float>(fixed), kScale);
}

// The gossip mix (DESIGN.md section 4), in the spec's order: acc starts at +0 and takes
// acc + w_j * (d_j - d_self) for the neighbours left to right; then x + gamma * acc.
MK_HD MK_INLINE float mix_accumulate(float acc, float w, float d_j, float d_self) {
  return MK_FADD(acc, MK_FMUL(w, MK_FSUB(d_j, d_self)));
}

MK_HD MK_INLINE float mix_result(float x, float gamma, float acc) {
  return MK_FADD(x, MK_FMUL(gamma, acc));
}

}  // namespace moniqua_kernels

