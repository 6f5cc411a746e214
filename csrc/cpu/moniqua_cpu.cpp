// Moniqua encode, decode and the fused gossip mix on the CPU (DESIGN.md section 4).
// Per block: the Philox uniforms (stochastic/dither only; nearest needs none), one
// vectorized elementwise loop into a byte per code, then whole output bytes.
#include "block.h"

namespace moniqua_kernels {
namespace cpu {
namespace {

template <int BITS, int ROUND, typename T>
MK_INLINE void encode_blocks(const T* x, int64_t n, MoniquaArgs a, Stream s, uint8_t* payload,
                             int64_t blk0, int64_t blk1) {
  alignas(64) float u[kBlock];
  alignas(64) uint8_t codes[kBlock];
  const float inv_b = a.inv_modulus;
  for (int64_t blk = blk0; blk < blk1; ++blk) {
    const BlockRange r = block_range(blk, n);
    const T* xb = x + r.begin;
    if (r.len == kBlock) {  // constant trip count: no remainder loops
      if (ROUND != kNearest) uniforms_block(s, r.begin, kBlock, u);
      for (int64_t i = 0; i < kBlock; ++i)
        codes[i] = static_cast<uint8_t>(
            moniqua_code<BITS>(load_float(xb, i), inv_b, ROUND == kNearest ? 0.5f : u[i]));
    } else {
      if (ROUND != kNearest) uniforms_block(s, r.begin, r.len, u);
      for (int64_t i = 0; i < r.len; ++i)
        codes[i] = static_cast<uint8_t>(
            moniqua_code<BITS>(load_float(xb, i), inv_b, ROUND == kNearest ? 0.5f : u[i]));
      for (int64_t i = r.len; i < kBlock && i < r.len + 8; ++i) codes[i] = 0;
    }
    pack_block<BITS>(codes, r.len, payload + r.begin * BITS / 8);
  }
}

// Decoded float32 values of one block against the float32 reference yf.
template <int BITS, int ROUND>
MK_INLINE void decode_row(const uint8_t* payload, const float* yf, BlockRange r, MoniquaArgs a,
                          Stream s, float* out) {
  alignas(64) uint8_t codes[kBlock];
  alignas(64) float u[kBlock];
  unpack_block<BITS>(payload + r.begin * BITS / 8, r.len, codes);
  if (ROUND == kDither) uniforms_block(s, r.begin, r.len, u);
  const float b = a.modulus, inv_b = a.inv_modulus;
  for (int64_t i = 0; i < r.len; ++i) {
    const float c = ROUND == kDither ? moniqua_dither_offset(u[i]) : 0.0f;
    out[i] = moniqua_value<BITS>(codes[i], c, yf[i], b, inv_b);
  }
}

template <typename T>
MK_INLINE void load_row(const T* x, BlockRange r, float* xf) {
  for (int64_t i = 0; i < r.len; ++i) xf[i] = load_float(x + r.begin, i);
}

template <typename T>
MK_INLINE void store_row(T* x, BlockRange r, const float* v) {
  for (int64_t i = 0; i < r.len; ++i) store_float(x + r.begin, i, v[i]);
}

template <int BITS, int ROUND, typename T>
MK_INLINE void decode_blocks(const uint8_t* payload, const T* y, int64_t n, MoniquaArgs a,
                             Stream s, T* out, int64_t blk0, int64_t blk1) {
  alignas(64) float yf[kBlock];
  alignas(64) float xh[kBlock];
  for (int64_t blk = blk0; blk < blk1; ++blk) {
    const BlockRange r = block_range(blk, n);
    if (std::is_same<T, float>::value) {  // read y and write out directly
      decode_row<BITS, ROUND>(payload, reinterpret_cast<const float*>(y) + r.begin, r, a, s,
                              reinterpret_cast<float*>(out) + r.begin);
    } else {
      load_row(y, r, yf);
      decode_row<BITS, ROUND>(payload, yf, r, a, s, xh);
      store_row(out, r, xh);
    }
  }
}

template <int BITS, int ROUND, typename T>
MK_INLINE void mix_blocks(T* x, int64_t n, const MixArgs& a, int64_t blk0, int64_t blk1) {
  alignas(64) float xf[kBlock];
  alignas(64) float dself[kBlock];
  alignas(64) float dj[kBlock];
  alignas(64) float acc[kBlock];
  const float gamma = a.gamma;
  for (int64_t blk = blk0; blk < blk1; ++blk) {
    const BlockRange r = block_range(blk, n);
    load_row(x, r, xf);
    decode_row<BITS, ROUND>(a.own, xf, r, a.m, a.streams[a.npayloads], dself);
    // The spec's order: acc starts at +0 and takes acc + w_j * (d_j - d_self) left to
    // right (0 + v is not folded away without -ffast-math, so signed zeros match too).
    for (int64_t i = 0; i < r.len; ++i) acc[i] = 0.0f;
    for (int64_t j = 0; j < a.npayloads; ++j) {
      decode_row<BITS, ROUND>(a.payloads[j], xf, r, a.m, a.streams[j], dj);
      const float w = a.weights[j];
      for (int64_t i = 0; i < r.len; ++i) acc[i] = acc[i] + w * (dj[i] - dself[i]);
    }
    for (int64_t i = 0; i < r.len; ++i) xf[i] = xf[i] + gamma * acc[i];
    store_row(x, r, xf);
  }
}

template <typename F>
MK_INLINE void with_rounding(int rounding, F&& f) {
  switch (rounding) {
    case kNearest: f(std::integral_constant<int, kNearest>{}); break;
    case kDither: f(std::integral_constant<int, kDither>{}); break;
    default: f(std::integral_constant<int, kStochastic>{}); break;
  }
}

}  // namespace

MK_CPU_ENTRY
void moniqua_encode(const void* x, DType dt, int64_t n, MoniquaArgs a, Stream s,
                    uint8_t* payload, int64_t blk0, int64_t blk1) {
  with_dtype(dt, x, [&](auto* xt) MK_LAMBDA_INLINE {
    with_bits(a.bits, [&](auto bits) MK_LAMBDA_INLINE {
      with_rounding(a.rounding, [&](auto round) MK_LAMBDA_INLINE {
        encode_blocks<decltype(bits)::value, decltype(round)::value>(xt, n, a, s, payload,
                                                                     blk0, blk1);
      });
    });
  });
}

MK_CPU_ENTRY
void moniqua_decode(const uint8_t* payload, const void* y, DType dt, int64_t n, MoniquaArgs a,
                    Stream s, void* out, int64_t blk0, int64_t blk1) {
  with_dtype(dt, y, [&](auto* yt) MK_LAMBDA_INLINE {
    using T = std::remove_const_t<std::remove_pointer_t<decltype(yt)>>;
    with_bits(a.bits, [&](auto bits) MK_LAMBDA_INLINE {
      with_rounding(a.rounding, [&](auto round) MK_LAMBDA_INLINE {
        decode_blocks<decltype(bits)::value, decltype(round)::value>(
            payload, yt, n, a, s, static_cast<T*>(out), blk0, blk1);
      });
    });
  });
}

MK_CPU_ENTRY
void moniqua_mix(void* x, DType dt, int64_t n, const MixArgs& a, int64_t blk0, int64_t blk1) {
  with_dtype(dt, x, [&](auto* xt) MK_LAMBDA_INLINE {
    using T = std::remove_const_t<std::remove_pointer_t<decltype(xt)>>;
    with_bits(a.m.bits, [&](auto bits) MK_LAMBDA_INLINE {
      with_rounding(a.m.rounding, [&](auto round) MK_LAMBDA_INLINE {
        mix_blocks<decltype(bits)::value, decltype(round)::value>(static_cast<T*>(x), n, a,
                                                                  blk0, blk1);
      });
    });
  });
}

}  // namespace cpu
}  // namespace moniqua_kernels
