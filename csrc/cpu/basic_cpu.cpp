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
bool cpu_supports_avx512() {
  __builtin_cpu_init();  // required before __builtin_cpu_supports in a static initializer
  return __builtin_cpu_supports("avx512f");
}
bool cpu_supports_avx2() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2");
}
}  // namespace

const bool kHasAvx512 = cpu_supports_avx512();
const bool kHasAvx2 = cpu_supports_avx2();

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

// Each word of a call in the low half of a 64-bit lane, 8 calls a vector: vpmuludq
// reads only the low halves, so its 64-bit product is the (hi, lo) pair in place, and
// whatever the high halves hold never reaches a low half (a shift right by 32 brings
// hi down; lo is the product itself).  The earlier layout, 16 calls in 32-bit lanes,
// spent two shifts and two blends per product on the odd lanes: 16 instructions a
// round per 16 calls against 12 here.  Measured, 2^24 words on one thread of the CI
// box (the two side by side, medians of 21): 8.2 ms -> 6.6 ms, the same words.  Four
// independent groups of 8 calls per iteration give the out-of-order core independent
// chains; words are written for ncalls rounded up to 32 calls.
__attribute__((target("avx512f"))) void philox_words_avx512(uint64_t ctr0, PhiloxKey key,
                                                            int64_t ncalls, uint32_t* words) {
  const __m512i m0 = _mm512_set1_epi64(kPhiloxM0), m1 = _mm512_set1_epi64(kPhiloxM1);
  const __m512i iota = _mm512_setr_epi64(0, 1, 2, 3, 4, 5, 6, 7);
  // The low halves of two vectors of 8 lanes, as one of 16.
  const __m512i low_halves =
      _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  for (int64_t c = 0; c < ncalls; c += 32) {
    __m512i c0[4], c1[4], c2[4], c3[4];
    for (int g = 0; g < 4; ++g) {
      // 64-bit counters ctr0 + c + 8g + lane: the low word in place, the high word
      // shifted down.
      const uint64_t base = ctr0 + static_cast<uint64_t>(c + 8 * g);
      c0[g] = _mm512_add_epi64(_mm512_set1_epi64(static_cast<long long>(base)), iota);
      c1[g] = _mm512_srli_epi64(c0[g], 32);
      c2[g] = _mm512_setzero_si512();
      c3[g] = _mm512_setzero_si512();
    }
    uint32_t k0 = key.k0, k1 = key.k1;
#pragma GCC unroll 10
    for (int r = 0; r < 10; ++r) {
      const __m512i kk0 = _mm512_set1_epi32(static_cast<int>(k0));
      const __m512i kk1 = _mm512_set1_epi32(static_cast<int>(k1));
      for (int g = 0; g < 4; ++g) {
        const __m512i p0 = _mm512_mul_epu32(c0[g], m0), p1 = _mm512_mul_epu32(c2[g], m1);
        c0[g] = _mm512_ternarylogic_epi32(_mm512_srli_epi64(p1, 32), c1[g], kk0, 0x96);
        c1[g] = p1;
        c2[g] = _mm512_ternarylogic_epi32(_mm512_srli_epi64(p0, 32), c3[g], kk1, 0x96);
        c3[g] = p0;
      }
      k0 += kPhiloxW0;
      k1 += kPhiloxW1;
    }
    for (int h = 0; h < 2; ++h) {  // groups 2h and 2h + 1: calls c + 16h .. c + 16h + 15
      const int a = 2 * h, b = 2 * h + 1;
      store_calls16(_mm512_permutex2var_epi32(c0[a], low_halves, c0[b]),
                    _mm512_permutex2var_epi32(c1[a], low_halves, c1[b]),
                    _mm512_permutex2var_epi32(c2[a], low_halves, c2[b]),
                    _mm512_permutex2var_epi32(c3[a], low_halves, c3[b]), words + 4 * c + 64 * h);
    }
  }
}
#endif

#if defined(MK_X86_CLONES)
// The same layout with AVX2: 4 calls a vector, four groups (16 calls) per iteration;
// AVX2 has no ternary logic, so two xors.  Words are written for ncalls rounded up to
// 16 calls.  Measured, 2^24 words on one thread of the CI box: 9.1 ms, against 27 ms
// for the portable loop as GCC vectorizes it for x86-64-v3 (4.4 calls a vector, but
// 64-bit multiplies emulated); two groups 10.7 ms, three 10.0 ms.  The CPUs without
// AVX-512 (AMD before Zen 4, most Intel client parts) take this path.  The kernels
// built for x86-64-v3 with AVX-512 switched off (the CI box standing in for such a
// CPU; 2^24 float32, 2 threads): philox_uniform 13.9 -> 5.4 ms, 1-bit dither encode
// 15.9 -> 7.2, decode 17.4 -> 8.3, 2-neighbour mix 53.2 -> 27.7, QSGD 4 bits 16.7 -> 8.1.
__attribute__((target("avx2"))) void philox_words_avx2(uint64_t ctr0, PhiloxKey key,
                                                       int64_t ncalls, uint32_t* words) {
  const __m256i m0 = _mm256_set1_epi64x(kPhiloxM0), m1 = _mm256_set1_epi64x(kPhiloxM1);
  const __m256i iota = _mm256_setr_epi64x(0, 1, 2, 3);
  for (int64_t c = 0; c < ncalls; c += 16) {
    __m256i c0[4], c1[4], c2[4], c3[4];
    for (int g = 0; g < 4; ++g) {
      const uint64_t base = ctr0 + static_cast<uint64_t>(c + 4 * g);
      c0[g] = _mm256_add_epi64(_mm256_set1_epi64x(static_cast<long long>(base)), iota);
      c1[g] = _mm256_srli_epi64(c0[g], 32);
      c2[g] = _mm256_setzero_si256();
      c3[g] = _mm256_setzero_si256();
    }
    uint32_t k0 = key.k0, k1 = key.k1;
#pragma GCC unroll 10
    for (int r = 0; r < 10; ++r) {
      const __m256i kk0 = _mm256_set1_epi32(static_cast<int>(k0));
      const __m256i kk1 = _mm256_set1_epi32(static_cast<int>(k1));
      for (int g = 0; g < 4; ++g) {
        const __m256i p0 = _mm256_mul_epu32(c0[g], m0), p1 = _mm256_mul_epu32(c2[g], m1);
        c0[g] = _mm256_xor_si256(_mm256_xor_si256(_mm256_srli_epi64(p1, 32), c1[g]), kk0);
        c1[g] = p1;
        c2[g] = _mm256_xor_si256(_mm256_xor_si256(_mm256_srli_epi64(p0, 32), c3[g]), kk1);
        c3[g] = p0;
      }
      k0 += kPhiloxW0;
      k1 += kPhiloxW1;
    }
    for (int g = 0; g < 4; ++g) {
      // Per call, (w0, w1) and (w2, w3) as 64-bit pairs; then calls 0..3 in order.
      const __m256i w01 = _mm256_blend_epi32(c0[g], _mm256_slli_epi64(c1[g], 32), 0xAA);
      const __m256i w23 = _mm256_blend_epi32(c2[g], _mm256_slli_epi64(c3[g], 32), 0xAA);
      const __m256i even = _mm256_unpacklo_epi64(w01, w23);  // calls 0 and 2
      const __m256i odd = _mm256_unpackhi_epi64(w01, w23);   // calls 1 and 3
      uint32_t* out = words + 4 * (c + 4 * g);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out),
                          _mm256_permute2x128_si256(even, odd, 0x20));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + 8),
                          _mm256_permute2x128_si256(even, odd, 0x31));
    }
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
