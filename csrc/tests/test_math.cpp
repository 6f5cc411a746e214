// C++ unit tests (ctest) over the shared header math and the torch-free CPU kernels.
// No test framework: CHECK prints the failing expression and the run exits non-zero.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <vector>

#include "cpu/block.h"
#include "cpu/kernels.h"
#include "moniqua_kernels/moniqua_kernels.h"

namespace mk = moniqua_kernels;

static int g_failures = 0;
#define CHECK(cond)                                                     \
  do {                                                                  \
    if (!(cond)) {                                                      \
      std::printf("%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
      ++g_failures;                                                     \
    }                                                                   \
  } while (0)

static void test_philox_known_answer() {
  uint32_t w[4];
  mk::philox4x32_10(0, mk::philox_key(0), w);
  CHECK(w[0] == 0x6627e8d5u && w[1] == 0xe169c58du && w[2] == 0xbc57ac4cu && w[3] == 0x9b00dbd8u);
  // u = (word >> 8) * 2^-24 is exact: the top 24 bits scaled.
  CHECK(mk::uniform_from_word(0xFFFFFFFFu) == 16777215.0f / 16777216.0f);
  CHECK(mk::uniform_from_word(0x000000FFu) == 0.0f);
  // Key split: k0 = low word, k1 = high word of the seed read as uint64.
  const mk::PhiloxKey k = mk::philox_key(static_cast<uint64_t>(int64_t{-2}));
  CHECK(k.k0 == 0xFFFFFFFEu && k.k1 == 0xFFFFFFFFu);
}

static void test_packing_example() {
  const uint8_t codes[8] = {1, 2, 3, 0, 3, 0, 0, 0};
  CHECK(mk::pack_byte<2>(codes) == 57);
  CHECK(mk::pack_byte<2>(codes + 4) == 3);
  CHECK(mk::packed_nbytes(5, 2) == 2 && mk::packed_nbytes(9, 1) == 2 && mk::packed_nbytes(0, 8) == 0);
  for (int m = 0; m < 4; ++m) CHECK(mk::unpack_code<2>(57, m) == codes[m]);
  // The CPU kernel: same bytes, zero high bits in the last byte, inverse unpack.
  uint8_t out[2] = {0xAA, 0xAA};
  mk::cpu::pack_bits(codes, 5, 2, out, 0, mk::cpu::num_blocks(5));
  CHECK(out[0] == 57 && out[1] == 3);
  uint8_t back[5];
  mk::cpu::unpack_bits(out, 5, 2, back, 0, 1);
  for (int i = 0; i < 5; ++i) CHECK(back[i] == codes[i]);
  // b = 1 is numpy.packbits(bitorder="little"): 1,0,1,1,0,0,0,1 -> 0x8d.
  const uint8_t bits[9] = {1, 0, 1, 1, 0, 0, 0, 1, 1};
  uint8_t packed[2];
  mk::cpu::pack_bits(bits, 9, 1, packed, 0, 1);
  CHECK(packed[0] == 0x8d && packed[1] == 0x01);
}

// Hand-checked, B = 4 (invB = 0.25), 2 bits, nearest (u = 0.5); every step exact:
//   x = 1.3:  t = 0.325, z = 0.325, w = 1.8  -> k = 1; decode at y = 1: zh = 0.25,
//             a = 0, no wrap -> 1.0  (|1.0 - 1.3| <= delta*B = 0.5)
//   x = -0.9: t = -0.225, z = 0.775, w = 3.6 -> k = 3; at y = -1: a = 4, wraps once -> -1.0
//   x = 5.5:  t = 1.375, z = 0.375, w = 2.0  -> k = 2; at y = 5: a = -3, wraps -1 -> 6.0
static void test_moniqua_nearest_example() {
  const float b = 4.0f, inv_b = 1.0f / b;
  CHECK(mk::moniqua_code<2>(1.3f, inv_b, 0.5f) == 1);
  CHECK(mk::moniqua_code<2>(-0.9f, inv_b, 0.5f) == 3);
  CHECK(mk::moniqua_code<2>(5.5f, inv_b, 0.5f) == 2);
  CHECK(mk::moniqua_code<2>(-2.0f, inv_b, 0.5f) == 2);
  CHECK(mk::moniqua_value<2>(1, 0.0f, 1.0f, b, inv_b) == 1.0f);
  CHECK(mk::moniqua_value<2>(3, 0.0f, -1.0f, b, inv_b) == -1.0f);
  CHECK(mk::moniqua_value<2>(2, 0.0f, 5.0f, b, inv_b) == 6.0f);
  // A tiny negative t makes z round to 1.0: code 2^b folds back to 0.
  CHECK(mk::moniqua_code<2>(-1e-30f, inv_b, 0.5f) == 0);
  // Non-finite input: z is defined as 0.
  CHECK(mk::moniqua_code<4>(INFINITY, inv_b, 0.5f) == 0);
  CHECK(mk::moniqua_code<4>(NAN, inv_b, 0.75f) == 0);
}

// |x - y| <= theta and B = 2 theta / (1 - 2 delta) give |xh - x| <= delta * B, up to
// float32 rounding: each of the decode's roundings is at most half an ulp of
// max(|y|, B), so 4 ulps of that is a generous yet meaningful slack.
static void test_roundtrip_bound() {
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> dx(-50.0f, 50.0f), dd(-1.0f, 1.0f);
  const int bits_list[4] = {1, 2, 4, 8};
  for (int bits : bits_list) {
    const double delta = std::ldexp(1.0, -(bits + 1));  // nearest
    const float theta = 0.75f;
    const float b = static_cast<float>(2.0 * theta / (1.0 - 2.0 * delta));
    const int64_t n = 20000;
    std::vector<float> x(n), y(n), xh(n);
    for (int64_t i = 0; i < n; ++i) {
      x[i] = dx(rng);
      y[i] = x[i] + theta * dd(rng);
    }
    std::vector<uint8_t> payload(mk::packed_nbytes(n, bits));
    const mk::ModulusParams a{b, 1.0f / b, bits, mk::kNearest};
    const mk::Stream s{0, 0, nullptr};
    CHECK(mk::cpu::moniqua_encode(x.data(), mk::DType::kFloat32, n, a, s, payload.data(), true,
                                  0, mk::cpu::num_blocks(n)) == 0);
    CHECK(mk::cpu::moniqua_decode(payload.data(), y.data(), mk::DType::kFloat32, n, a, s,
                                  xh.data(), true, 0, mk::cpu::num_blocks(n)) == 0);
    double worst = 0.0;
    for (int64_t i = 0; i < n; ++i) {
      const double slack = 4.0 * std::ldexp(std::max(std::fabs(y[i]), b), -23);
      worst = std::max(worst, std::fabs(double(xh[i]) - x[i]) - delta * b - slack);
    }
    CHECK(worst <= 0.0);
  }
}

// Every block range split gives the same bytes as one pass (what threads rely on),
// for a stochastic encode at a large offset and a negative seed.
static void test_block_split_invariance() {
  const int64_t n = 5 * mk::cpu::kBlock + 13;
  std::vector<float> x(n);
  std::mt19937 rng(3);
  std::normal_distribution<float> nd;
  for (auto& v : x) v = 3.0f * nd(rng);
  const mk::ModulusParams a{2.0f, 0.5f, 4, mk::kStochastic};
  const mk::Stream s{static_cast<uint64_t>(int64_t{-9}), (int64_t{1} << 34) + 4, nullptr};
  const int64_t nb = mk::cpu::num_blocks(n);
  std::vector<uint8_t> one(mk::packed_nbytes(n, 4)), split(one.size());
  mk::cpu::moniqua_encode(x.data(), mk::DType::kFloat32, n, a, s, one.data(), false, 0, nb);
  for (int64_t blk = nb - 1; blk >= 0; --blk)
    mk::cpu::moniqua_encode(x.data(), mk::DType::kFloat32, n, a, s, split.data(), false, blk,
                            blk + 1);
  CHECK(one == split);
  // And element i of the uniforms is word (offset + i) & 3 of counter (offset + i) >> 2.
  std::vector<float> u(n);
  mk::cpu::philox_uniform(n, s, u.data(), 0, nb);
  // Every element, so the vectorized Philox (AVX-512 where the CPU has it) is checked
  // against the scalar header function, including a low-word carry into c1.
  int64_t mismatches = 0;
  for (int64_t i = 0; i < n; ++i) {
    uint32_t w[4];
    mk::philox4x32_10(static_cast<uint64_t>(s.offset + i) >> 2, mk::philox_key(s.seed), w);
    mismatches += u[i] != mk::uniform_from_word(w[(s.offset + i) & 3]);
  }
  CHECK(mismatches == 0);
  const mk::Stream carry{5, ((int64_t{1} << 32) - 8) * 4, nullptr};  // counters cross 2^32
  std::vector<float> uc(200);
  mk::cpu::philox_uniform(200, carry, uc.data(), 0, 1);
  for (int64_t i = 0; i < 200; ++i) {
    uint32_t w[4];
    mk::philox4x32_10(static_cast<uint64_t>(carry.offset + i) >> 2, mk::philox_key(5), w);
    mismatches += uc[i] != mk::uniform_from_word(w[i & 3]);
  }
  CHECK(mismatches == 0);
}

// Each vectorized Philox this CPU can run (AVX-512, AVX2), called directly, against
// the scalar header function: counters whose low word carries into the high one, call
// counts that are not whole iterations.  The kernels take the widest one the CPU has,
// so on an AVX-512 machine this is the only test of the AVX2 path.
static void test_philox_vector_paths() {
#if defined(MK_X86_CLONES)
  using WordsFn = void (*)(uint64_t, mk::PhiloxKey, int64_t, uint32_t*);
  const struct {
    const char* name;
    bool available;
    WordsFn fn;
    int64_t step;  // calls per iteration: words are written for ncalls rounded up to it
  } paths[] = {{"avx512", mk::cpu::kHasAvx512, mk::cpu::philox_words_avx512, 32},
               {"avx2", mk::cpu::kHasAvx2, mk::cpu::philox_words_avx2, 16}};
  const mk::PhiloxKey key = mk::philox_key(0x9E3779B97F4A7C15ull);
  for (const auto& p : paths) {
    if (!p.available) {
      std::printf("Philox %s: not on this CPU, not tested\n", p.name);
      continue;
    }
    int64_t mismatches = 0;
    for (uint64_t ctr0 : {uint64_t{0}, (uint64_t{1} << 32) - 7, uint64_t{0x123456789ABCDEFull}})
      for (int64_t ncalls : {1, 5, 16, 17, 100, 256}) {
        std::vector<uint32_t> words((ncalls + p.step - 1) / p.step * p.step * 4);
        p.fn(ctr0, key, ncalls, words.data());
        for (int64_t c = 0; c < ncalls; ++c) {
          uint32_t w[4];
          mk::philox4x32_10(ctr0 + static_cast<uint64_t>(c), key, w);
          for (int j = 0; j < 4; ++j) mismatches += words[4 * c + j] != w[j];
        }
      }
    std::printf("Philox %s: %lld mismatching words\n", p.name, static_cast<long long>(mismatches));
    CHECK(mismatches == 0);
  }
#endif
}

static void test_half_bf16_conversions() {
  // Every finite half survives half -> float -> half; NaNs stay NaN.
  int bad = 0;
  for (uint32_t h = 0; h < 65536; ++h) {
    const float f = mk::half_to_float(static_cast<uint16_t>(h));
    const bool nan = (h & 0x7C00u) == 0x7C00u && (h & 0x3FFu);
    if (nan) bad += !std::isnan(f);
    else bad += mk::float_to_half(f) != h;
  }
  CHECK(bad == 0);
  CHECK(mk::half_to_float(0x3C00) == 1.0f && mk::half_to_float(0x0001) == std::ldexp(1.0f, -24));
  // Round to nearest even at the midpoints: 1 + 2^-11 is halfway between 1 and the next.
  CHECK(mk::float_to_half(1.0f + std::ldexp(1.0f, -11)) == 0x3C00);
  CHECK(mk::float_to_half(1.0f + 3 * std::ldexp(1.0f, -11)) == 0x3C02);
  CHECK(mk::float_to_half(65520.0f) == 0x7C00 && mk::float_to_half(65519.0f) == 0x7BFF);
  CHECK(mk::float_to_half(std::ldexp(1.0f, -25)) == 0x0000);              // tie to even 0
  CHECK(mk::float_to_half(std::ldexp(3.0f, -25)) == 0x0002);              // tie to even 2
  CHECK(mk::float_to_half(-0.0f) == 0x8000);
  CHECK(mk::bf16_to_float(0x3F80) == 1.0f);
  CHECK(mk::float_to_bf16(1.0f + std::ldexp(1.0f, -8)) == 0x3F80);        // tie to even
  CHECK(mk::float_to_bf16(1.0f + 3 * std::ldexp(1.0f, -8)) == 0x3F82);
  CHECK(std::isnan(mk::bf16_to_float(mk::float_to_bf16(NAN))));
}

static void test_qsgd_and_sign() {
  // 4 bits: s = 7; N = 2, r = 3.5; v = -1 -> |v| r = 3.5, u = 0.25 -> level 3, sign 1.
  const float r = mk::qsgd_ratio(4, 2.0f);
  CHECK(r == 3.5f && mk::qsgd_ratio(4, 0.0f) == 0.0f);
  CHECK(mk::qsgd_code<4>(-1.0f, r, 0.25f) == (8u | 3u));
  CHECK(mk::qsgd_code<4>(2.0f, r, 0.9f) == 7u);  // clamped to s
  CHECK(mk::qsgd_value<4>(8u | 3u, 2.0f) == -(2.0f * 3.0f) / 7.0f);
  CHECK(mk::sign_bit(-0.0f) == 0 && mk::sign_bit(-1e-30f) == 1);
  CHECK(mk::sign_value(1, 0.5f) == -0.5f && mk::sign_value(0, 0.5f) == 0.5f);
  // The sign kernel: bits and the per-block |x| sums.
  const float x[10] = {1, -2, 3, -4, 0, -0.0f, 5, -6, 7, -8};
  uint8_t payload[2];
  double sums[1];
  mk::cpu::sign_encode(x, mk::DType::kFloat32, 10, payload, sums, 0, 1);
  CHECK(payload[0] == 0x8A && payload[1] == 0x02 && sums[0] == 36.0);
}

// The CUDA decode's dither fraction from the Philox word equals the spec's
// (k + (0.5 - u)) * 2^-b bit for bit, for every code and a spread of words.
template <int BITS>
static int dither_fraction_mismatches() {
  int bad = 0;
  std::mt19937 rng(11);
  for (uint32_t k = 0; k < (1u << BITS); ++k) {
    for (int t = 0; t < 2000; ++t) {
      const uint32_t w = t < 4 ? (t == 0 ? 0u : t == 1 ? 0xFFFFFFFFu : t == 2 ? 0x80000000u : 0x7FFFFFFFu)
                               : static_cast<uint32_t>(rng());
      const float spec = (static_cast<float>(k) + mk::moniqua_dither_offset(mk::uniform_from_word(w))) *
                         (1.0f / static_cast<float>(1 << BITS));
      bad += mk::float_bits(spec) != mk::float_bits(mk::moniqua_dither_fraction<BITS>(k, w));
    }
  }
  return bad;
}

static void test_dither_fraction() {
  CHECK(dither_fraction_mismatches<1>() == 0);
  CHECK(dither_fraction_mismatches<2>() == 0);
  CHECK(dither_fraction_mismatches<4>() == 0);
  CHECK(dither_fraction_mismatches<8>() == 0);
}

// The finite checks count exactly the bad elements, and the mix leaves them unwritten.
static void test_non_finite_counts() {
  const int64_t n = 3 * mk::cpu::kBlock + 5;
  std::vector<float> x(n, 0.25f);
  x[3] = NAN;
  x[mk::cpu::kBlock + 7] = INFINITY;
  x[n - 1] = 3e38f;  // finite, but x * invB overflows with B = 1e-3
  std::vector<uint8_t> payload(mk::packed_nbytes(n, 2));
  const mk::ModulusParams m{1e-3f, 1.0f / 1e-3f, 2, mk::kNearest};
  const mk::Stream s{0, 0, nullptr};
  const int64_t nb = mk::cpu::num_blocks(n);
  CHECK(mk::cpu::moniqua_encode(x.data(), mk::DType::kFloat32, n, m, s, payload.data(), true, 0,
                                nb) == 3);
  CHECK(mk::cpu::moniqua_encode(x.data(), mk::DType::kFloat32, n, m, s, payload.data(), false, 0,
                                nb) == 0);
  CHECK(mk::cpu::count_non_finite(x.data(), mk::DType::kFloat32, 0, n) == 2);
  std::vector<float> xm(x);
  const uint8_t* none[1] = {nullptr};
  const float w[1] = {0.0f};
  const mk::Stream streams[1] = {s};
  mk::cpu::MixArgs a{m, 0, none, w, payload.data(), 1.0f, streams, true};
  CHECK(mk::cpu::moniqua_mix(xm.data(), mk::DType::kFloat32, n, a, 0, nb) == 2);
  CHECK(std::isnan(xm[3]) && std::isinf(xm[mk::cpu::kBlock + 7]));
}

// Elias-coded QSGD: the worked example of docs/wire-format.md, then a stream written
// one bucket at a time (each call its own range, in order: a range's first byte is
// shared with the previous range's last, and must be OR-ed, not stored) equals the
// stream written in one range, and decodes to the same values as the fixed width.
static void test_qsgd_elias() {
  namespace cpu = mk::cpu;
  const float ex[10] = {0, -7, 2, 0, 0, 0, 0, 0, 0.5f, -3.5f};
  float scales[3];
  cpu::qsgd_piece_stats(ex, mk::DType::kFloat32, 10, 4, false, nullptr, scales, true, 0, 3);
  uint8_t codes[10];
  const mk::Stream s{0, 0, nullptr};
  cpu::qsgd_codes(ex, mk::DType::kFloat32, 10, 4, 4, scales, s, codes, 0, 1);
  int64_t bits[3];
  cpu::elias_bucket_bits(codes, 10, 4, 4, scales, bits, 0, 3);
  CHECK(bits[0] + bits[1] + bits[2] == 30 && bits[1] == 0);
  uint8_t stream[4] = {0, 0, 0, 0};
  cpu::elias_write(codes, 10, 4, 4, scales, stream, 0, 0, 3);
  CHECK(stream[0] == 155 && stream[1] == 137 && stream[2] == 3 && stream[3] == 112);
  float back[10];
  CHECK(cpu::elias_decode(scales, stream, 4, 10, 4, 4, back));
  for (int i = 0; i < 10; ++i) CHECK(back[i] == ex[i]);
  const uint8_t truncated[3] = {155, 137, 3};
  CHECK(!cpu::elias_decode(scales, truncated, 3, 10, 4, 4, back));

  const int64_t n = 1000, d = 7, nq = (n + d - 1) / d;
  std::mt19937 rng(5);
  std::normal_distribution<float> normal;
  std::vector<float> x(n), sc(nq), one(n), fixed(n);
  for (auto& v : x) v = normal(rng);
  cpu::qsgd_piece_stats(x.data(), mk::DType::kFloat32, n, d, true, nullptr, sc.data(), true, 0,
                        nq);
  std::vector<uint8_t> c(n);
  cpu::qsgd_codes(x.data(), mk::DType::kFloat32, n, 2, d, sc.data(), s, c.data(), 0,
                  cpu::num_blocks(n));
  std::vector<int64_t> first(nq + 1, 0);
  cpu::elias_bucket_bits(c.data(), n, 2, d, sc.data(), first.data() + 1, 0, nq);
  for (int64_t q = 0; q < nq; ++q) first[q + 1] += first[q];
  const int64_t nbytes = (first[nq] + 7) / 8;
  std::vector<uint8_t> whole(nbytes, 0), pieces(nbytes, 0);
  cpu::elias_write(c.data(), n, 2, d, sc.data(), whole.data(), 0, 0, nq);
  int shared = 0;
  for (int64_t q = 0; q < nq; ++q) {
    cpu::elias_write(c.data(), n, 2, d, sc.data(), pieces.data(), first[q], q, q + 1);
    shared += first[q] % 8 != 0;
  }
  CHECK(shared > 10 && whole == pieces);
  CHECK(cpu::elias_decode(sc.data(), whole.data(), nbytes, n, 2, d, one.data()));
  std::vector<uint8_t> packed(mk::packed_nbytes(n, 2));
  cpu::qsgd_encode(x.data(), mk::DType::kFloat32, n, 2, d, sc.data(), s, packed.data(), 0,
                   cpu::num_blocks(n));
  cpu::qsgd_decode(sc.data(), packed.data(), n, 2, d, fixed.data(), 0, cpu::num_blocks(n));
  for (int64_t i = 0; i < n; ++i) CHECK(one[i] == fixed[i]);
}

// QSGD scales from pieces: two buckets of 2.5 kScalePiece elements (3 pieces each, the
// last bucket cut short by n): each bucket's max lies in its last piece, its l2 equals
// the serial double sum to float32 rounding, the pieces may be taken in any ranges
// (one call each, as threads would), and a NaN and an inf in different pieces are
// both counted; a bucket of one piece goes straight to scales.
static void test_qsgd_scale_pieces() {
  namespace cpu = mk::cpu;
  const int64_t d = cpu::kScalePiece * 5 / 2, n = d + cpu::kScalePiece * 2 + 9, nq = 2;
  const int64_t pieces = cpu::qsgd_scale_pieces(d);
  CHECK(pieces == 3 && cpu::qsgd_scale_pieces(cpu::kScalePiece) == 1);
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> uni(-1.0f, 1.0f);
  std::vector<float> x(n);
  for (auto& v : x) v = uni(rng);
  x[d - 1] = -3.0f;  // bucket 0's max, its third piece
  x[n - 1] = 2.5f;   // bucket 1's max, its third piece (only 9 elements)
  for (bool l2 : {false, true}) {
    std::vector<double> stat(nq * pieces, -1.0);
    std::vector<float> sc(nq, -1.0f);
    for (int64_t p = 0; p < nq * pieces; ++p)
      CHECK(cpu::qsgd_piece_stats(x.data(), mk::DType::kFloat32, n, d, l2, stat.data(), sc.data(),
                                  true, p, p + 1) == 0);
    CHECK(sc[0] == -1.0f && sc[1] == -1.0f);  // several pieces: statistics, not scales
    cpu::qsgd_finish_scales(stat.data(), pieces, l2, sc.data(), 0, nq);
    for (int64_t q = 0; q < nq; ++q) {
      double serial = 0.0;
      for (int64_t i = q * d; i < std::min(n, q * d + d); ++i)
        serial += static_cast<double>(x[i]) * x[i];
      if (l2) CHECK(std::fabs(sc[q] - std::sqrt(serial)) <= 2e-7 * std::sqrt(serial));
    }
    if (!l2) CHECK(sc[0] == 3.0f && sc[1] == 2.5f);
  }
  x[10] = NAN;
  x[d + cpu::kScalePiece + 1] = INFINITY;
  std::vector<double> stat(nq * pieces);
  std::vector<float> sc(nq);
  for (bool l2 : {false, true})
    CHECK(cpu::qsgd_piece_stats(x.data(), mk::DType::kFloat32, n, d, l2, stat.data(), sc.data(),
                                true, 0, nq * pieces) == 2);
  float one[1] = {0.0f};
  CHECK(cpu::qsgd_piece_stats(x.data() + 20, mk::DType::kFloat32, 100, 100, false, nullptr, one,
                              true, 0, 1) == 0 && one[0] > 0.9f);
}

int main() {
  test_non_finite_counts();
  test_dither_fraction();
  std::printf("CPU kernels dispatched to: %s\n", moniqua_kernels::cpu::isa_name());
  test_philox_known_answer();
  test_philox_vector_paths();
  test_packing_example();
  test_moniqua_nearest_example();
  test_roundtrip_bound();
  test_block_split_invariance();
  test_half_bf16_conversions();
  test_qsgd_and_sign();
  test_qsgd_elias();
  test_qsgd_scale_pieces();
  if (g_failures) {
    std::printf("%d check(s) failed\n", g_failures);
    return 1;
  }
  std::printf("all checks passed\n");
  return 0;
}
