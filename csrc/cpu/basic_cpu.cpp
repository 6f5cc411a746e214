// Philox uniforms, bit packing and the scaled sign on the CPU (DESIGN.md sections 3,
// 5 and 6).
#include "block.h"

#if defined(MK_X86_CLONES)
// GCC 12's avx512fintrin.h trips -Wuninitialized on its own pass-through operands
// (_mm512_undefined_epi32); GCC judges the warning by the header's location, so the
// pragma must be in force where the header is read.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#endif

namespace moniqua_kernels {
namespace cpu {

#if defined(MK_X86_CLONES)
namespace {
bool detect_avx512() {
  __builtin_cpu_init();  // required before __builtin_cpu_supports in a static initializer
  return __builtin_cpu_supports("avx512f");
}
}  // namespace

const bool kHasAvx512 = detect_avx512();

namespace {

// (hi, lo) of a * m for 16 lanes: vpmuludq multiplies the even 32-bit lanes into
// 64-bit products; the odd lanes go through a 32-bit shift; blends put the halves
// back in place.
__attribute__((target("avx512f"))) inline void mulhilo16(__m512i a, __m512i m, __m512i& hi,
                                                         __m512i& lo) {
  const __m512i even = _mm512_mul_epu32(a, m);
  const __m512i odd = _mm512_mul_epu32(_mm512_srli_epi64(a, 32), m);
  const __mmask16 odd_lanes = 0xAAAA;
  hi = _mm512_mask_blend_epi32(odd_lanes, _mm512_srli_epi64(even, 32), odd);
  lo = _mm512_mask_blend_epi32(odd_lanes, even, _mm512_slli_epi64(odd, 32));
}

}  // namespace

namespace {

// Store word j of call l (vector j, lane l) in element order 4*l + j: pair the words
// within 128-bit lanes, then a 4x4 transpose of the 128-bit lanes.
__attribute__((target("avx512f"))) inline void store_calls16(__m512i c0, __m512i c1, __m512i c2,
                                                             __m512i c3, uint32_t* out) {
  const __m512i a = _mm512_unpacklo_epi32(c0, c1), b = _mm512_unpacklo_epi32(c2, c3);
  const __m512i cc = _mm512_unpackhi_epi32(c0, c1), d = _mm512_unpackhi_epi32(c2, c3);
  const __m512i e0 = _mm512_unpacklo_epi64(a, b), e1 = _mm512_unpackhi_epi64(a, b);
  const __m512i e2 = _mm512_unpacklo_epi64(cc, d), e3 = _mm512_unpackhi_epi64(cc, d);
  const __m512i t0 = _mm512_shuffle_i32x4(e0, e1, 0x44), t1 = _mm512_shuffle_i32x4(e2, e3, 0x44);
  const __m512i t2 = _mm512_shuffle_i32x4(e0, e1, 0xEE), t3 = _mm512_shuffle_i32x4(e2, e3, 0xEE);
  _mm512_storeu_si512(out, _mm512_shuffle_i32x4(t0, t1, 0x88));
  _mm512_storeu_si512(out + 16, _mm512_shuffle_i32x4(t0, t1, 0xDD));
  _mm512_storeu_si512(out + 32, _mm512_shuffle_i32x4(t2, t3, 0x88));
  _mm512_storeu_si512(out + 48, _mm512_shuffle_i32x4(t2, t3, 0xDD));
}

}  // namespace

// Two independent groups of 16 calls per iteration: one group's rounds are a
// dependent chain (multiply, shift, blend, xor), two give the out-of-order core
// independent work.  Words are written for ncalls rounded up to 32 calls.
__attribute__((target("avx512f"))) void philox_words_avx512(uint64_t ctr0, PhiloxKey key,
                                                            int64_t ncalls, uint32_t* words) {
  const __m512i m0 = _mm512_set1_epi32(static_cast<int>(kPhiloxM0));
  const __m512i m1 = _mm512_set1_epi32(static_cast<int>(kPhiloxM1));
  const __m512i iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  for (int64_t c = 0; c < ncalls; c += 32) {
    __m512i c0[2], c1[2], c2[2], c3[2];
    for (int g = 0; g < 2; ++g) {
      // 64-bit counters ctr0 + c + 16g + lane: low words with iota, carry into high.
      const uint64_t base = ctr0 + static_cast<uint64_t>(c + 16 * g);
      const __m512i base_lo = _mm512_set1_epi32(static_cast<int>(static_cast<uint32_t>(base)));
      const __m512i base_hi = _mm512_set1_epi32(static_cast<int>(base >> 32));
      c0[g] = _mm512_add_epi32(base_lo, iota);
      const __mmask16 carry = _mm512_cmplt_epu32_mask(c0[g], base_lo);
      c1[g] = _mm512_mask_add_epi32(base_hi, carry, base_hi, _mm512_set1_epi32(1));
      c2[g] = _mm512_setzero_si512();
      c3[g] = _mm512_setzero_si512();
    }
    uint32_t k0 = key.k0, k1 = key.k1;
#pragma GCC unroll 10
    for (int r = 0; r < 10; ++r) {
      const __m512i kk0 = _mm512_set1_epi32(static_cast<int>(k0));
      const __m512i kk1 = _mm512_set1_epi32(static_cast<int>(k1));
      for (int g = 0; g < 2; ++g) {
        __m512i hi0, lo0, hi1, lo1;
        mulhilo16(c0[g], m0, hi0, lo0);
        mulhilo16(c2[g], m1, hi1, lo1);
        c0[g] = _mm512_ternarylogic_epi32(hi1, c1[g], kk0, 0x96);
        c1[g] = lo1;
        c2[g] = _mm512_ternarylogic_epi32(hi0, c3[g], kk1, 0x96);
        c3[g] = lo0;
      }
      k0 += kPhiloxW0;
      k1 += kPhiloxW1;
    }
    store_calls16(c0[0], c1[0], c2[0], c3[0], words + 4 * c);
    store_calls16(c0[1], c1[1], c2[1], c3[1], words + 4 * c + 64);
  }
}
#endif

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
  dispatch_bits(bits, [&](auto b) MK_LAMBDA_INLINE {
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
  dispatch_bits(bits, [&](auto b) MK_LAMBDA_INLINE {
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
    // |x| summed in double (1024 additions err by < 2^-43 relative, far below the
    // float32 scale's own rounding) in 8 fixed lanes, in a loop of its own, so it
    // vectorizes (an `omp simd` reduction stayed scalar in the cloned entry points:
    // 2^24 elements took 38 ms, 8.5 ms with the lanes, one thread on the loaded CI
    // box) and the order is deterministic.
    for (int64_t i = 0; i < r.len; ++i) bits[i] = static_cast<uint8_t>(sign_bit(load_float(xb, i)));
    double lanes[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int64_t i = 0;
    for (; i + 8 <= r.len; i += 8)
      for (int j = 0; j < 8; ++j) lanes[j] += static_cast<double>(MK_FABS(load_float(xb, i + j)));
    for (; i < r.len; ++i) lanes[0] += static_cast<double>(MK_FABS(load_float(xb, i)));
    double acc = 0.0;
    for (int j = 0; j < 8; ++j) acc += lanes[j];
    for (int64_t i = r.len; i < kBlock && i < r.len + 8; ++i) bits[i] = 0;
    sums[blk - blk0] = acc;
    pack_block<1>(bits, r.len, payload + r.begin / 8);
  }
}

}  // namespace

MK_CPU_ENTRY
void sign_encode(const void* x, DType dt, int64_t n, uint8_t* payload, double* block_sums,
                 int64_t blk0, int64_t blk1) {
  dispatch_dtype(dt, [&](auto tag) MK_LAMBDA_INLINE {
    sign_blocks(static_cast<const decltype(tag)*>(x), n, payload, block_sums, blk0, blk1);
  });
}

MK_CPU_ENTRY
int64_t count_non_finite(const void* x, DType dt, int64_t begin, int64_t end) {
  return dispatch_dtype(dt, [&](auto tag) MK_LAMBDA_INLINE {
    const auto* xt = static_cast<const decltype(tag)*>(x);
    int64_t bad = 0;
    for (int64_t i = begin; i < end; ++i) bad += not_finite(load_float(xt, i));
    return bad;
  });
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
