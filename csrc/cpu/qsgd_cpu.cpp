// Bucketed QSGD on the CPU (DESIGN.md section 6): scales per bucket (from pieces of at
// most kScalePiece elements), then codes per element block, each element's ratio filled
// from its bucket's so that the loops run over whole blocks for any bucket size.  Where
// chunks of a few blocks hold whole buckets (kernels.h, qsgd_chunk_blocks), both steps
// run chunk by chunk, reading x once.
#include <cmath>
#include <cstring>

#include "block.h"

namespace moniqua_kernels {
namespace cpu {
namespace {

// Element i into a running sum of float32 squares in double (the spec rounds the
// squares to float32; its own float32 sum has an unspecified order, so scales agree to
// float32 rounding), or into a running max |v| (exact in any order; +0 for an all-zero
// range) and non-finite count (the comparison skips a NaN, so the max counts in the same
// loop; in int32, the float loop's vector factor, not int64's).
template <typename T>
MK_INLINE void add_square(const T* x, int64_t i, double& acc) {
  const float v = load_float(x, i);
  acc += static_cast<double>(v * v);
}
template <typename T>
MK_INLINE void add_abs_max(const T* x, int64_t i, float& m, int32_t& bad) {
  const float a = MK_FABS(load_float(x, i));
  m = a > m ? a : m;
  bad += !(a < __builtin_inff());
}

// Ranges shorter than this take plain loops: the simd loops' set-up and reduction cost
// more there (scales, --split: d = 8 40 -> 21 ms, d = 1 214 -> 42 ms).
constexpr int64_t kSimdMinRange = 16;

// Into *stat: the statistic of elements [begin, end), l2 (the sum of squares) or max;
// returns their non-finite count.  The sum propagates NaN/inf, so only a non-finite sum
// is counted element by element.
template <typename T>
MK_INLINE int64_t range_stat(const T* x, int64_t begin, int64_t end, bool l2, double* stat) {
  const bool wide = end - begin >= kSimdMinRange;
  if (l2) {
    double acc = 0.0;
    if (wide) {
#pragma omp simd reduction(+ : acc)
      for (int64_t i = begin; i < end; ++i) add_square(x, i, acc);
    } else {
      for (int64_t i = begin; i < end; ++i) add_square(x, i, acc);
    }
    *stat = acc;
    if (std::isfinite(acc)) return 0;
    int64_t bad = 0;
    for (int64_t i = begin; i < end; ++i) bad += not_finite(load_float(x, i));
    return bad;
  }
  float m = 0.0f;
  int32_t bad = 0;
  if (wide) {
#pragma omp simd reduction(max : m) reduction(+ : bad)
    for (int64_t i = begin; i < end; ++i) add_abs_max(x, i, m, bad);
  } else {
    for (int64_t i = begin; i < end; ++i) add_abs_max(x, i, m, bad);
  }
  *stat = m;
  return bad;
}

// The pieces [p0, p1): piece p is elements
// [q*d + c*kScalePiece, min(q*d + (c+1)*kScalePiece, (q+1)*d, n)) of bucket
// q = p / pieces, c = p % pieces.  Returns the non-finite count (with check).
template <typename T>
MK_INLINE int64_t piece_stats(const T* x, int64_t n, int64_t d, bool l2, double* stat,
                              float* scales, bool check, int64_t p0, int64_t p1) {
  const int64_t pieces = qsgd_scale_pieces(d);
  int64_t bad = 0;
  // Piece p is bucket p, walked without a division per bucket.  With the int32 count:
  // scales at d = 512 5.3-5.7 -> 4.5-5.3 ms (--split, the two builds alternating, 6 runs
  // each).
  if (pieces == 1) {
    for (int64_t q = p0, begin = p0 * d; q < p1; ++q, begin += d) {
      double acc;
      bad += range_stat(x, begin, begin + d < n ? begin + d : n, l2, &acc);
      scales[q] = qsgd_scale(acc, l2);
    }
    return check ? bad : 0;
  }
  for (int64_t p = p0; p < p1; ++p) {
    const int64_t q = p / pieces, bucket_end = q * d + d < n ? q * d + d : n;
    const int64_t begin = q * d + (p - q * pieces) * kScalePiece;
    const int64_t end = begin + kScalePiece < bucket_end ? begin + kScalePiece : bucket_end;
    bad += range_stat(x, begin, end, l2, &stat[p]);
  }
  return check ? bad : 0;
}

// f(q, i, end) for each bucket segment [i, end) of the block of len elements starting
// at element begin (q: the segment's bucket).
template <typename F>
MK_INLINE void for_each_bucket_segment(int64_t begin, int64_t len, int64_t d, F&& f) {
  int64_t q = begin / d;
  for (int64_t i = 0; i < len; ++q) {
    const int64_t end = (q + 1) * d - begin < len ? (q + 1) * d - begin : len;
    f(q, i, end);
    i = end;
  }
}

// per_bucket(q) into out[k] for each element k of the block, so that an element loop can
// run over the whole block for any d.  Loops per bucket segment ran scalar where a
// segment is shorter than GCC's vector factor (32 for the uint8 codes at 256 bits).
// Measured with benchmarks/qsgd_cpu_passes.cpp --split (2^24 float32, 4 bits, max
// norm, 2 threads of the CI box), encode / decode: d = 16 34 / 64 ms per segment, 14 /
// 7 ms over the block; d = 32 12 / 5 ms either way.
template <typename F>
MK_INLINE void bucket_values(int64_t begin, int64_t len, int64_t d, F&& per_bucket,
                             float* out) {
  for_each_bucket_segment(begin, len, d, [&](int64_t q, int64_t i, int64_t end) MK_LAMBDA_INLINE {
    const float v = per_bucket(q);
    for (int64_t k = i; k < end; ++k) out[k] = v;
  });
}

// PACK: packed codes into payload (the fixed-width coding); else one code per byte at
// payload + element index (what the Elias coder reads, qsgd_elias_cpu.cpp).
template <int BITS, bool PACK, typename T>
MK_INLINE void encode_blocks(const T* x, int64_t n, int64_t d, const float* scales, Stream s,
                             uint8_t* payload, int64_t blk0, int64_t blk1) {
  alignas(64) float u[kBlock];
  alignas(64) float ratio[kBlock];
  alignas(64) uint8_t codes[kBlock];
  for (int64_t blk = blk0; blk < blk1; ++blk) {
    const BlockRange r = block_range(blk, n);
    uniforms_block(s, r.begin, r.len, u);
    const auto ratio_of = [&](int64_t q) MK_LAMBDA_INLINE { return qsgd_ratio(BITS, scales[q]); };
    bucket_values(r.begin, r.len, d, ratio_of, ratio);
    const T* xb = x + r.begin;
    for (int64_t k = 0; k < r.len; ++k)
      codes[k] = static_cast<uint8_t>(qsgd_code<BITS>(load_float(xb, k), ratio[k], u[k]));
    if (!PACK) {
      std::memcpy(payload + r.begin, codes, static_cast<size_t>(r.len));
      continue;
    }
    for (int64_t k = r.len; k < kBlock && k < r.len + 8; ++k) codes[k] = 0;
    pack_block<BITS>(codes, r.len, payload + r.begin * BITS / 8);
  }
}

// The decode reads a bucket's scale once per segment where segments are long: the
// per-element scales cost 1.05-1.10x at d = 512 (6 alternating runs of the two builds,
// --split), not measurable in the encode, which Philox binds.
constexpr int64_t kDecodePerSegment = 64;

template <int BITS>
MK_INLINE void decode_blocks(const float* scales, const uint8_t* payload, int64_t n, int64_t d,
                             float* out, int64_t blk0, int64_t blk1) {
  alignas(64) uint8_t codes[kBlock];
  alignas(64) float scale[kBlock];
  for (int64_t blk = blk0; blk < blk1; ++blk) {
    const BlockRange r = block_range(blk, n);
    unpack_block<BITS>(payload + r.begin * BITS / 8, r.len, codes);
    float* o = out + r.begin;
    if (d >= kDecodePerSegment) {
      const auto segment = [&](int64_t q, int64_t i, int64_t end) MK_LAMBDA_INLINE {
        const float sc = scales[q];
        for (int64_t k = i; k < end; ++k) o[k] = qsgd_value<BITS>(codes[k], sc);
      };
      for_each_bucket_segment(r.begin, r.len, d, segment);
      continue;
    }
    bucket_values(r.begin, r.len, d, [&](int64_t q) MK_LAMBDA_INLINE { return scales[q]; }, scale);
    for (int64_t k = 0; k < r.len; ++k) o[k] = qsgd_value<BITS>(codes[k], scale[k]);
  }
}

// Chunks [c0, c1) of qsgd_chunk_blocks(d) blocks: each chunk's buckets' scales (one
// piece a bucket, d <= kScalePiece), then its codes from the cached elements.
template <int BITS, bool PACK, typename T>
MK_INLINE int64_t encode_chunks(const T* x, int64_t n, int64_t d, bool l2, float* scales,
                                bool check, Stream s, uint8_t* out, int64_t c0, int64_t c1) {
  const int64_t cb = qsgd_chunk_blocks(d), nb = num_blocks(n);
  int64_t bad = 0;
  for (int64_t c = c0; c < c1; ++c) {
    const int64_t b0 = c * cb, b1 = b0 + cb < nb ? b0 + cb : nb;
    const int64_t end = b1 * kBlock < n ? b1 * kBlock : n;
    bad += piece_stats(x, n, d, l2, nullptr, scales, check, b0 * kBlock / d, (end + d - 1) / d);
    encode_blocks<BITS, PACK>(x, n, d, scales, s, out, b0, b1);
  }
  return bad;
}

template <bool PACK>
MK_INLINE void encode_dispatch(const void* x, DType dt, int64_t n, int bits, int64_t bucket_size,
                               const float* scales, Stream s, uint8_t* out, int64_t blk0,
                               int64_t blk1) {
  dispatch_dtype(dt, [&](auto tag) MK_LAMBDA_INLINE {
    dispatch_qsgd_bits(bits, [&](auto b) MK_LAMBDA_INLINE {
      encode_blocks<decltype(b)::value, PACK>(static_cast<const decltype(tag)*>(x), n,
                                              bucket_size, scales, s, out, blk0, blk1);
    });
  });
}

}  // namespace

MK_CPU_ENTRY
int64_t qsgd_piece_stats(const void* x, DType dt, int64_t n, int64_t bucket_size, bool norm_l2,
                         double* stat, float* scales, bool check, int64_t piece0,
                         int64_t piece1) {
  return dispatch_dtype(dt, [&](auto tag) MK_LAMBDA_INLINE {
    return piece_stats(static_cast<const decltype(tag)*>(x), n, bucket_size, norm_l2, stat,
                       scales, check, piece0, piece1);
  });
}

MK_CPU_ENTRY
void qsgd_finish_scales(const double* stat, int64_t pieces, bool norm_l2, float* scales,
                        int64_t bucket0, int64_t bucket1) {
  for (int64_t q = bucket0; q < bucket1; ++q) {
    double acc = 0.0;  // the pieces in order: the same scale for every thread count
    for (int64_t c = 0; c < pieces; ++c) {
      const double v = stat[q * pieces + c];
      acc = norm_l2 ? acc + v : (v > acc ? v : acc);
    }
    scales[q] = qsgd_scale(acc, norm_l2);
  }
}

MK_CPU_ENTRY
void qsgd_encode(const void* x, DType dt, int64_t n, int bits, int64_t bucket_size,
                 const float* scales, Stream s, uint8_t* payload, int64_t blk0, int64_t blk1) {
  encode_dispatch<true>(x, dt, n, bits, bucket_size, scales, s, payload, blk0, blk1);
}

MK_CPU_ENTRY
void qsgd_codes(const void* x, DType dt, int64_t n, int bits, int64_t bucket_size,
                const float* scales, Stream s, uint8_t* codes, int64_t blk0, int64_t blk1) {
  encode_dispatch<false>(x, dt, n, bits, bucket_size, scales, s, codes, blk0, blk1);
}

MK_CPU_ENTRY
int64_t qsgd_encode_chunks(const void* x, DType dt, int64_t n, int bits, int64_t bucket_size,
                           bool norm_l2, float* scales, Stream s, uint8_t* out, bool pack,
                           bool check, int64_t chunk0, int64_t chunk1) {
  return dispatch_dtype(dt, [&](auto tag) MK_LAMBDA_INLINE {
    const auto* xt = static_cast<const decltype(tag)*>(x);
    return dispatch_qsgd_bits(bits, [&](auto b) MK_LAMBDA_INLINE {
      constexpr int BITS = decltype(b)::value;
      return pack ? encode_chunks<BITS, true>(xt, n, bucket_size, norm_l2, scales, check, s,
                                              out, chunk0, chunk1)
                  : encode_chunks<BITS, false>(xt, n, bucket_size, norm_l2, scales, check, s,
                                               out, chunk0, chunk1);
    });
  });
}

MK_CPU_ENTRY
void qsgd_decode(const float* scales, const uint8_t* payload, int64_t n, int bits,
                 int64_t bucket_size, float* out, int64_t blk0, int64_t blk1) {
  dispatch_qsgd_bits(bits, [&](auto b) MK_LAMBDA_INLINE {
    decode_blocks<decltype(b)::value>(scales, payload, n, bucket_size, out, blk0, blk1);
  });
}

}  // namespace cpu
}  // namespace moniqua_kernels
