// Scaled sign (CHOCO-SGD), DESIGN.md section 6: 1 bit per element, 1 = negative;
// decode scale * (1 - 2 * bit).
#pragma once

#include "common.h"

namespace moniqua_kernels {

MK_HD MK_INLINE uint32_t sign_bit(float v) { return v < 0.0f ? 1u : 0u; }

MK_HD MK_INLINE float sign_value(uint32_t bit, float scale) {
  return MK_FMUL(scale, MK_FSUB(1.0f, MK_FMUL(2.0f, static_cast<float>(bit))));
}

}  // namespace moniqua_kernels
