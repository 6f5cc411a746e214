// Moniqua on the CPU (DESIGN.md section 4): what decode and the fused mix share, the
// decode of one block.  Each op's loop and entry point is in its own file
// (moniqua_{encode,decode,mix}_cpu.cpp): three translation units compile in parallel
// (measured on the 2-core CI box: one file took 90 s, the critical path of the build;
// split, 36 + 28 + 38 s).  Per block: the Philox uniforms (stochastic/dither only;
// nearest needs none), one vectorized elementwise loop, whole bytes of codes.
#pragma once
#include "block.h"

namespace moniqua_kernels {
namespace cpu {

// Decoded float32 values of one block against the float32 reference yf; returns how
// many are not finite when check (stored as T: not_finite_as).
template <int BITS, int ROUND, typename T>
MK_INLINE int64_t decode_row(const uint8_t* payload, const float* yf, BlockRange r,
                             ModulusParams m, Stream s, float* out, bool check) {
  alignas(64) uint8_t codes[kBlock];
  alignas(64) float u[kBlock];
  unpack_block<BITS>(payload + r.begin * BITS / 8, r.len, codes);
  if (ROUND == kDither) uniforms_block(s, r.begin, r.len, u);
  const float b = m.b, inv_b = m.inv_b;
  if (check) {  // counted in the same loop, as in encode_blocks
    int32_t bad = 0;
    for (int64_t i = 0; i < r.len; ++i) {
      const float c = ROUND == kDither ? moniqua_dither_offset(u[i]) : 0.0f;
      const float v = moniqua_value<BITS>(codes[i], c, yf[i], b, inv_b);
      out[i] = v;
      bad += not_finite_as<T>(v);
    }
    return bad;
  }
  for (int64_t i = 0; i < r.len; ++i) {
    const float c = ROUND == kDither ? moniqua_dither_offset(u[i]) : 0.0f;
    out[i] = moniqua_value<BITS>(codes[i], c, yf[i], b, inv_b);
  }
  return 0;
}

template <typename T>
MK_INLINE void load_row(const T* x, BlockRange r, float* xf) {
  for (int64_t i = 0; i < r.len; ++i) xf[i] = load_float(x + r.begin, i);
}

template <typename T>
MK_INLINE void store_row(T* x, BlockRange r, const float* v) {
  for (int64_t i = 0; i < r.len; ++i) store_float(x + r.begin, i, v[i]);
}

}  // namespace cpu
}  // namespace moniqua_kernels
