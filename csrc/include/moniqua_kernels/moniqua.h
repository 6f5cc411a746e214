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
  // Finite t gives z in [0, 1]; a non-finite t gives NaN here, which the spec maps to
  // z = 0.  Written as a select so the loop stays vectorizable.
  z = (z >= 0.0f) ? z : 0.0f;
  const float w = MK_FADD(MK_FMUL(z, static_cast<float>(1 << BITS)), u);
  // w is in [0, 2^b + 1): truncation is floor, and the mask is "mod 2^b" (z = 1.0,
  // reached by a tiny negative t, folds back to code 0).
  return static_cast<uint32_t>(static_cast<int32_t>(w)) & ((1u << BITS) - 1u);
}

// The dither offset c = 0.5 - u (exact); 0 for stochastic and nearest.
MK_HD MK_INLINE float moniqua_dither_offset(float u) { return MK_FSUB(0.5f, u); }

// xh = y + (a - B * floor(a * invB + 0.5)),  a = ((k + c) * 2^-b) * B - y.
template <int BITS>
MK_HD MK_INLINE float moniqua_value(uint32_t k, float c, float y, float b, float inv_b) {
  const float zh = MK_FMUL(MK_FADD(static_cast<float>(k), c), 1.0f / static_cast<float>(1 << BITS));
  const float a = MK_FSUB(MK_FMUL(zh, b), y);
  const float wraps = MK_FLOOR(MK_FADD(MK_FMUL(a, inv_b), 0.5f));
  return MK_FADD(y, MK_FSUB(a, MK_FMUL(b, wraps)));
}

}  // namespace moniqua_kernels
