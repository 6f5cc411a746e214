// Bucketed QSGD on the CPU (DESIGN.md section 6): scales per bucket, then codes per
// element block; a block walks its bucket segments so the inner loop has one ratio.
#include <cmath>
#include <cstring>

#include "block.h"

namespace moniqua_kernels {
namespace cpu {
namespace {

template <typename T>
MK_INLINE int64_t scales_range(const T* x, int64_t n, int64_t d, bool l2, float* scales,
                               bool check, int64_t q0, int64_t q1) {
  int64_t bad = 0;
  for (int64_t q = q0; q < q1; ++q) {
    const int64_t begin = q * d, end = begin + d < n ? begin + d : n;
    if (l2) {
      // The float32 squares (as the spec rounds them) summed in double; the spec's own
      // float32 sum has an unspecified order, so scales agree to float32 rounding.
      double acc = 0.0;
#pragma omp simd reduction(+ : acc)
      for (int64_t i = begin; i < end; ++i) {
        const float v = load_float(x, i);
        acc += static_cast<double>(v * v);
      }
      scales[q] = std::sqrt(static_cast<float>(acc));
    } else {
      // max is exact in any order; +0 for an all-zero bucket.  (The comparison skips a
      // NaN, so the max path counts non-finite elements in the same loop.)
      float m = 0.0f;
      int64_t bucket_bad = 0;
#pragma omp simd reduction(max : m) reduction(+ : bucket_bad)
      for (int64_t i = begin; i < end; ++i) {
        const float a = MK_FABS(load_float(x, i));
        m = a > m ? a : m;
        bucket_bad += !(a < __builtin_inff());
      }
      scales[q] = m;
      bad += check ? bucket_bad : 0;
      continue;
    }
    // l2: the sum propagates NaN/inf, so only a bucket with a non-finite scale is
    // counted element by element.
    if (check && not_finite(scales[q]))
      for (int64_t i = begin; i < end; ++i) bad += not_finite(load_float(x, i));
  }
  return bad;
}

// PACK: packed codes into payload (the fixed-width coding); else one code per byte at
// payload + element index (what the Elias coder reads, qsgd_elias_cpu.cpp).
template <int BITS, bool PACK, typename T>
MK_INLINE void encode_blocks(const T* x, int64_t n, int64_t d, const float* scales, Stream s,
                             uint8_t* payload, int64_t blk0, int64_t blk1) {
  alignas(64) float u[kBlock];
  alignas(64) uint8_t codes[kBlock];
  for (int64_t blk = blk0; blk < blk1; ++blk) {
    const BlockRange r = block_range(blk, n);
    uniforms_block(s, r.begin, r.len, u);
    const T* xb = x + r.begin;
    int64_t i = 0;
    while (i < r.len) {  // one bucket segment per pass
      const int64_t q = (r.begin + i) / d;
      const int64_t seg_end_abs = (q + 1) * d;
      const int64_t end = seg_end_abs - r.begin < r.len ? seg_end_abs - r.begin : r.len;
      const float ratio = qsgd_ratio(BITS, scales[q]);
      for (int64_t k = i; k < end; ++k)
        codes[k] = static_cast<uint8_t>(qsgd_code<BITS>(load_float(xb, k), ratio, u[k]));
      i = end;
    }
    if (!PACK) {
      std::memcpy(payload + r.begin, codes, static_cast<size_t>(r.len));
      continue;
    }
    for (int64_t k = r.len; k < kBlock && k < r.len + 8; ++k) codes[k] = 0;
    pack_block<BITS>(codes, r.len, payload + r.begin * BITS / 8);
  }
}

template <int BITS>
MK_INLINE void decode_blocks(const float* scales, const uint8_t* payload, int64_t n, int64_t d,
                             float* out, int64_t blk0, int64_t blk1) {
  alignas(64) uint8_t codes[kBlock];
  for (int64_t blk = blk0; blk < blk1; ++blk) {
    const BlockRange r = block_range(blk, n);
    unpack_block<BITS>(payload + r.begin * BITS / 8, r.len, codes);
    float* o = out + r.begin;
    int64_t i = 0;
    while (i < r.len) {
      const int64_t q = (r.begin + i) / d;
      const int64_t seg_end_abs = (q + 1) * d;
      const int64_t end = seg_end_abs - r.begin < r.len ? seg_end_abs - r.begin : r.len;
      const float scale = scales[q];
      for (int64_t k = i; k < end; ++k) o[k] = qsgd_value<BITS>(codes[k], scale);
      i = end;
    }
  }
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
int64_t qsgd_scales(const void* x, DType dt, int64_t n, int64_t bucket_size, bool norm_l2,
                    float* scales, bool check, int64_t bucket0, int64_t bucket1) {
  return dispatch_dtype(dt, [&](auto tag) MK_LAMBDA_INLINE {
    return scales_range(static_cast<const decltype(tag)*>(x), n, bucket_size, norm_l2, scales,
                        check, bucket0, bucket1);
  });
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
void qsgd_decode(const float* scales, const uint8_t* payload, int64_t n, int bits,
                 int64_t bucket_size, float* out, int64_t blk0, int64_t blk1) {
  dispatch_qsgd_bits(bits, [&](auto b) MK_LAMBDA_INLINE {
    decode_blocks<decltype(b)::value>(scales, payload, n, bucket_size, out, blk0, blk1);
  });
}

}  // namespace cpu
}  // namespace moniqua_kernels
