// The wire layout, DESIGN.md section 5.
//
// Codes of b bits; byte j holds elements j*(8/b) + m, m = 0 .. 8/b - 1, at bits
// [m*b, (m+1)*b), least significant first; ceil(n*b/8) bytes; the unused high bits of
// the last byte are zero.  Example, b = 2: codes [1, 2, 3, 0, 3] -> bytes [57, 3].
#pragma once

#include "common.h"

namespace moniqua_kernels {

MK_HD MK_INLINE int64_t packed_nbytes(int64_t n, int bits) { return (n * bits + 7) / 8; }

// One byte from 8/BITS codes (each already < 2^BITS).
template <int BITS>
MK_HD MK_INLINE uint8_t pack_byte(const uint8_t* codes) {
  uint32_t byte = 0;
#if defined(__CUDACC__)
#pragma unroll
#endif
  for (int m = 0; m < 8 / BITS; ++m) byte |= static_cast<uint32_t>(codes[m]) << (m * BITS);
  return static_cast<uint8_t>(byte);
}

// Code m (0 <= m < 8/BITS) of a byte.
template <int BITS>
MK_HD MK_INLINE uint32_t unpack_code(uint32_t byte, int m) {
  return (byte >> (m * BITS)) & ((1u << BITS) - 1u);
}

// The bits of a payload's last byte that hold no code (must be zero, DESIGN.md
// section 5): a mask over the byte, 0 when n * bits fills it.
MK_HD MK_INLINE uint32_t padding_mask(int64_t n, int bits) {
  const int used = static_cast<int>((n * bits) % 8);
  return used ? (0xFFu << used) & 0xFFu : 0u;
}

}  // namespace moniqua_kernels
