// The fused Moniqua gossip mix on the CPU, in place (DESIGN.md section 4; the block
// decode, shared with decode, is in moniqua_cpu.h).
#include "moniqua_cpu.h"

namespace moniqua_kernels {
namespace cpu {
namespace {

template <int BITS, int ROUND, typename T>
MK_INLINE int64_t mix_blocks(T* x, int64_t n, const MixArgs& a, int64_t blk0, int64_t blk1) {
  constexpr bool kFloat = std::is_same<T, float>::value;
  alignas(64) float x_scratch[kFloat ? 1 : kBlock];
  alignas(64) float dself[kBlock];
  alignas(64) float dj[kBlock];
  alignas(64) float acc[kBlock];
  const float gamma = a.gamma;
  int64_t bad = 0;
  for (int64_t blk = blk0; blk < blk1; ++blk) {
    const BlockRange r = block_range(blk, n);
    // float32 x is read and written in place, not copied into scratch and back (a rep
    // movsq that perf charged a third of the samples, with x's first reads from memory).
    // 2^24 elements, 2 neighbours, 1-bit dither, 2 threads: 22.4 -> 20.1 ms.
    float* xf = x_scratch;
    if constexpr (kFloat) xf = x + r.begin;
    else load_row(x, r, xf);
    decode_row<BITS, ROUND, T>(a.own, xf, r, a.m, a.streams[a.npayloads], dself, false);
    // acc starts at +0 (0 + v is not folded away without -ffast-math, so signed zeros
    // match the spec too).
    for (int64_t i = 0; i < r.len; ++i) acc[i] = 0.0f;
    for (int64_t j = 0; j < a.npayloads; ++j) {
      decode_row<BITS, ROUND, T>(a.payloads[j], xf, r, a.m, a.streams[j], dj, false);
      const float w = a.weights[j];
      for (int64_t i = 0; i < r.len; ++i) acc[i] = mix_accumulate(acc[i], w, dj[i], dself[i]);
    }
    if (a.check) {  // write only results finite in T; count the others
      int64_t block_bad = 0;
      for (int64_t i = 0; i < r.len; ++i) {
        const float v = mix_result(xf[i], gamma, acc[i]);
        const bool skip = not_finite_as<T>(v);
        block_bad += skip;
        xf[i] = skip ? xf[i] : v;
      }
      bad += block_bad;
    } else {
      for (int64_t i = 0; i < r.len; ++i) xf[i] = mix_result(xf[i], gamma, acc[i]);
    }
    if constexpr (!kFloat) store_row(x, r, xf);
  }
  return bad;
}

}  // namespace

MK_CPU_ENTRY
int64_t moniqua_mix(void* x, DType dt, int64_t n, const MixArgs& a, int64_t blk0,
                    int64_t blk1) {
  return dispatch_dtype(dt, [&](auto tag) MK_LAMBDA_INLINE {
    using T = decltype(tag);
    return dispatch_bits(a.m.bits, [&](auto bits) MK_LAMBDA_INLINE {
      return dispatch_rounding(a.m.rounding, [&](auto round) MK_LAMBDA_INLINE {
        return mix_blocks<decltype(bits)::value, decltype(round)::value>(static_cast<T*>(x),
                                                                         n, a, blk0, blk1);
      });
    });
  });
}

}  // namespace cpu
}  // namespace moniqua_kernels
