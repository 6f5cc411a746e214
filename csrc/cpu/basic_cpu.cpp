// Philox uniforms, bit packing and the scaled sign on the CPU (DESIGN.md sections 3,
// 5 and 6).
#include "block.h"

namespace moniqua_kernels {
namespace cpu {

const char* isa_name() {
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__) && \
    !defined(MK_NO_CLONES)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("x86-64-v4")) return "x86-64-v4";
  if (__builtin_cpu_supports("x86-64-v3")) return "x86-64-v3";
#endif
  return "baseline";
}

MK_CPU_ENTRY
void philox_uniform(int64_t n, Stream s, float* out, int64_t blk0, int64_t blk1) {
  alignas(64) float u[kBlock];
  for (int64_t blk = blk0; blk < blk1; ++blk) {
    const BlockRange r = block_range(blk, n);
    if (r.len == kBlock) {
      uniforms_block(s, r.begin, kBlock, out + r.begin);
    } else {  // the last call may feed fewer than 4 elements: go through scratch
      uniforms_block(s, r.begin, r.len, u);
      for (int64_t i = 0; i < r.len; ++i) out[r.begin + i] = u[i];
    }
  }
}

MK_CPU_ENTRY
void pack_bits(const uint8_t* codes, int64_t n, int bits, uint8_t* out, int64_t blk0,
               int64_t blk1) {
  alignas(64) uint8_t scratch[kBlock];
  with_bits(bits, [&](auto b) MK_LAMBDA_INLINE {
    constexpr int BITS = decltype(b)::value;
    for (int64_t blk = blk0; blk < blk1; ++blk) {
      const BlockRange r = block_range(blk, n);
      const uint8_t* src = codes + r.begin;
      if (r.len < kBlock) {  // zero-pad the last byte's unused fields
        for (int64_t i = 0; i < kBlock; ++i) scratch[i] = i < r.len ? src[i] : 0;
        src = scratch;
      }
      pack_block<BITS>(src, r.len, out + r.begin * BITS / 8);
    }
  });
}

MK_CPU_ENTRY
void unpack_bits(const uint8_t* payload, int64_t n, int bits, uint8_t* out, int64_t blk0,
                 int64_t blk1) {
  alignas(64) uint8_t scratch[kBlock];
  with_bits(bits, [&](auto b) MK_LAMBDA_INLINE {
    constexpr int BITS = decltype(b)::value;
    for (int64_t blk = blk0; blk < blk1; ++blk) {
      const BlockRange r = block_range(blk, n);
      if (r.len == kBlock) {
        unpack_block<BITS>(payload + r.begin * BITS / 8, kBlock, out + r.begin);
      } else {  // the last byte holds fields past n: unpack into scratch
        unpack_block<BITS>(payload + r.begin * BITS / 8, r.len, scratch);
        for (int64_t i = 0; i < r.len; ++i) out[r.begin + i] = scratch[i];
      }
    }
  });
}

namespace {

template <typename T>
MK_INLINE void sign_blocks(const T* x, int64_t n, uint8_t* payload, double* sums, int64_t blk0,
                           int64_t blk1) {
  alignas(64) uint8_t bits[kBlock];
  for (int64_t blk = blk0; blk < blk1; ++blk) {
    const BlockRange r = block_range(blk, n);
    const T* xb = x + r.begin;
    // |x| summed in double: 1024 additions err by < 2^-43 relative, far below the
    // float32 scale's own rounding, so the order is free for the vectorizer.
    double acc = 0.0;
#pragma omp simd reduction(+ : acc)
    for (int64_t i = 0; i < r.len; ++i) {
      const float v = load_float(xb, i);
      bits[i] = static_cast<uint8_t>(sign_bit(v));
      acc += static_cast<double>(MK_FABS(v));
    }
    for (int64_t i = r.len; i < kBlock && i < r.len + 8; ++i) bits[i] = 0;
    sums[blk - blk0] = acc;
    pack_block<1>(bits, r.len, payload + r.begin / 8);
  }
}

}  // namespace

MK_CPU_ENTRY
void sign_encode(const void* x, DType dt, int64_t n, uint8_t* payload, double* block_sums,
                 int64_t blk0, int64_t blk1) {
  with_dtype(dt, x, [&](auto* xt) MK_LAMBDA_INLINE { sign_blocks(xt, n, payload, block_sums, blk0, blk1); });
}

MK_CPU_ENTRY
void sign_decode(float scale, const uint8_t* payload, int64_t n, float* out, int64_t blk0,
                 int64_t blk1) {
  alignas(64) uint8_t bits[kBlock];
  for (int64_t blk = blk0; blk < blk1; ++blk) {
    const BlockRange r = block_range(blk, n);
    unpack_block<1>(payload + r.begin / 8, r.len, bits);
    float* o = out + r.begin;
    for (int64_t i = 0; i < r.len; ++i) o[i] = sign_value(bits[i], scale);
  }
}

}  // namespace cpu
}  // namespace moniqua_kernels
