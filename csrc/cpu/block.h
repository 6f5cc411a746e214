// Building blocks of the CPU kernels: ISA multiversioning, element loads/stores, and
// the per-block Philox, packing and unpacking loops.  Everything here is
// always_inline so it is compiled for the ISA of the entry point that uses it.
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "kernels.h"
#include "moniqua_kernels/dispatch.h"
#include "moniqua_kernels/moniqua_kernels.h"

// Entry points are cloned for x86-64-v4 (AVX-512), x86-64-v3 (AVX2) and the baseline,
// and the loader picks one per process (GNU ifunc), so a portable wheel still runs the
// wide loops.  Measured, 2^24 Philox uniforms on one thread of the CI box: baseline
// (SSE2) 34 ms, x86-64-v3 33 ms, x86-64-v4 21 ms; floor() also inlines as one
// instruction from v3 (SSE4.1 roundps) instead of a libm call.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__) && \
    !defined(MK_NO_CLONES)
#define MK_X86_CLONES 1
#define MK_CPU_ENTRY __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define MK_CPU_ENTRY
#endif

// The dispatch lambdas (dtype, bits, rounding) must inline into the cloned entry
// point too, else their bodies are compiled for the baseline ISA only (seen in
// objdump: sign_encode's lambda bodies were separate SSE2 functions).
#if defined(__GNUC__)
#define MK_LAMBDA_INLINE __attribute__((always_inline))
#else
#define MK_LAMBDA_INLINE
#endif

namespace moniqua_kernels {
namespace cpu {

MK_INLINE float load_float(const float* p, int64_t i) { return p[i]; }
MK_INLINE float load_float(const Half16* p, int64_t i) { return to_float(p[i]); }
MK_INLINE float load_float(const BFloat16* p, int64_t i) { return to_float(p[i]); }
template <typename T>
MK_INLINE void store_float(T* p, int64_t i, float v) { from_float(p[i], v); }

// !(|v| < inf): true for NaN and +-inf, written so that the loops vectorize.
MK_INLINE bool not_finite(float v) { return !(MK_FABS(v) < __builtin_inff()); }

struct BlockRange {
  int64_t begin, len;  // first element, elements in the block (<= kBlock)
};

MK_INLINE BlockRange block_range(int64_t blk, int64_t n) {
  const int64_t begin = blk * kBlock;
  const int64_t len = n - begin < kBlock ? n - begin : kBlock;
  return BlockRange{begin, len};
}

#if defined(MK_X86_CLONES)
// AVX-512 Philox, 8 calls per vector (basic_cpu.cpp); words for ncalls rounded up to
// 32.  GCC vectorizes the portable loop below with vpmullq (a 3-uop 64-bit multiply)
// instead of vpmuludq.  Measured on one thread of the (shared, noisy) CI box, 2^24
// elements: philox_uniform 23.9 -> 17.4 ms, 1-bit dither encode 29.7 -> 20.4 ms; two
// interleaved groups per iteration then 17.4 -> ~15 ms and 20.4 -> ~19 ms; the words
// in 64-bit lanes (no blends) then 8.2 -> 6.6 ms for the words alone.
extern const bool kHasAvx512;
void philox_words_avx512(uint64_t ctr0, PhiloxKey key, int64_t ncalls, uint32_t* words);
// The same with AVX2 (words for ncalls rounded up to 16 calls), where AVX-512 is absent.
extern const bool kHasAvx2;
void philox_words_avx2(uint64_t ctr0, PhiloxKey key, int64_t ncalls, uint32_t* words);
#endif

// The four words of each Philox call feeding elements [begin, begin + 4*ncalls) of
// stream s, in element order (words must hold ncalls rounded up to 32 calls): AVX-512,
// else AVX2, else the portable loop over calls, auto-vectorized (10 unrolled rounds, a
// call per lane).
MK_INLINE void philox_words_block(Stream s, int64_t begin, int64_t ncalls, uint32_t* words) {
  const PhiloxKey key = philox_key(s.seed);
  const uint64_t ctr0 = static_cast<uint64_t>(s.offset + begin) >> 2;
#if defined(MK_X86_CLONES)
  if (kHasAvx512) {
    philox_words_avx512(ctr0, key, ncalls, words);
    return;
  }
  if (kHasAvx2) {
    philox_words_avx2(ctr0, key, ncalls, words);
    return;
  }
#endif
  for (int64_t c = 0; c < ncalls; ++c) {
    uint32_t w[4];
    philox4x32_10(ctr0 + static_cast<uint64_t>(c), key, w);
    words[4 * c + 0] = w[0];
    words[4 * c + 1] = w[1];
    words[4 * c + 2] = w[2];
    words[4 * c + 3] = w[3];
  }
}

// Uniforms u_p for elements [begin, begin + len), rounded up to whole Philox calls
// (u must hold len rounded up to 4).
MK_INLINE void uniforms_block(Stream s, int64_t begin, int64_t len, float* u) {
  const int64_t ncalls = (len + 3) / 4;
#if defined(MK_X86_CLONES)
  if (kHasAvx512 || kHasAvx2) {
    alignas(64) uint32_t words[kBlock];
    philox_words_block(s, begin, ncalls, words);
    for (int64_t i = 0; i < 4 * ncalls; ++i) u[i] = uniform_from_word(words[i]);
    return;
  }
#endif
  const PhiloxKey key = philox_key(s.seed);
  const uint64_t ctr0 = static_cast<uint64_t>(s.offset + begin) >> 2;
  for (int64_t c = 0; c < ncalls; ++c) {
    uint32_t w[4];
    philox4x32_10(ctr0 + static_cast<uint64_t>(c), key, w);
    u[4 * c + 0] = uniform_from_word(w[0]);
    u[4 * c + 1] = uniform_from_word(w[1]);
    u[4 * c + 2] = uniform_from_word(w[2]);
    u[4 * c + 3] = uniform_from_word(w[3]);
  }
}

// Pack len codes (codes[len .. round up to 8/BITS) must be zero) into bytes.
template <int BITS>
MK_INLINE void pack_block(const uint8_t* codes, int64_t len, uint8_t* out) {
  const int64_t nbytes = packed_nbytes(len, BITS);
  if (BITS == 1) {
    // Eight 0/1 bytes read as one little-endian word; the multiply gathers bit m of
    // byte m into the top byte (0x8d for 1,0,1,1,0,0,0,1).  One multiply per output
    // byte instead of eight shifts and ors.
    for (int64_t j = 0; j < nbytes; ++j) {
      uint64_t v;
      std::memcpy(&v, codes + 8 * j, 8);
      out[j] = static_cast<uint8_t>((v * 0x0102040810204080ull) >> 56);
    }
  } else {
    for (int64_t j = 0; j < nbytes; ++j) out[j] = pack_byte<BITS>(codes + j * (8 / BITS));
  }
}

// Unpack the codes of len elements (writes len rounded up to 8/BITS codes).
template <int BITS>
MK_INLINE void unpack_block(const uint8_t* in, int64_t len, uint8_t* codes) {
  const int64_t nbytes = packed_nbytes(len, BITS);
  if (BITS == 1) {
    // Broadcast the byte to 8 lanes, keep bit m in lane m, and turn each nonzero lane
    // into 1 (adding 0x7f carries into the lane's top bit exactly when it is nonzero).
    for (int64_t j = 0; j < nbytes; ++j) {
      const uint64_t lanes = (in[j] * 0x0101010101010101ull) & 0x8040201008040201ull;
      const uint64_t v = ((lanes + 0x7F7F7F7F7F7F7F7Full) & 0x8080808080808080ull) >> 7;
      std::memcpy(codes + 8 * j, &v, 8);
    }
  } else {
    for (int64_t j = 0; j < nbytes; ++j)
      for (int m = 0; m < 8 / BITS; ++m) codes[j * (8 / BITS) + m] = static_cast<uint8_t>(unpack_code<BITS>(in[j], m));
  }
}

}  // namespace cpu
}  // namespace moniqua_kernels
