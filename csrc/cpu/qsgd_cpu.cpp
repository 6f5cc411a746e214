// Bucketed QSGD on the CPU (DESIGN.md section 6): scales per bucket, then codes per
// element block; a block walks its bucket segments so the inner loop has one ratio.
#include <cmath>

#include "block.h"

namespace moniqua_kernels {
namespace cpu {
namespace {

template <typename T>
MK_INLINE void scales_range(const T* x, int64_t n, int64_t d, bool l2, float* scales,
                            int64_t q0, int64_t q1) {
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
      // max is exact in any order; +0 for an all-zero bucket.
      float m = 0.0f;
#pragma omp simd reduction(max : m)
      for (int64_t i = begin; i < end; ++i) {
        const float a = MK_FABS(load_float(x, i));
        m = a > m ? a : m;
      }
      scales[q] = m;
    }
  }
}

template <int BITS, typename T>
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

template <typename F>
MK_INLINE void with_qsgd_bits(int bits, F&& f) {
  switch (bits) {
    case 2: f(std::integral_constant<int, 2>{}); break;
    case 4: f(std::integral_constant<int, 4>{}); break;
    default: f(std::integral_constant<int, 8>{}); break;
  }
}

}  // namespace

MK_CPU_ENTRY
void qsgd_scales(const void* x, DType dt, int64_t n, int64_t bucket_size, bool norm_l2,
                 float* scales, int64_t bucket0, int64_t bucket1) {
  with_dtype(dt, x, [&](auto* xt) MK_LAMBDA_INLINE {
    scales_range(xt, n, bucket_size, norm_l2, scales, bucket0, bucket1);
  });
}

MK_CPU_ENTRY
void qsgd_encode(const void* x, DType dt, int64_t n, int bits, int64_t bucket_size,
                 const float* scales, Stream s, uint8_t* payload, int64_t blk0, int64_t blk1) {
  with_dtype(dt, x, [&](auto* xt) MK_LAMBDA_INLINE {
    with_qsgd_bits(bits, [&](auto b) MK_LAMBDA_INLINE {
      encode_blocks<decltype(b)::value>(xt, n, bucket_size, scales, s, payload, blk0, blk1);
    });
  });
}

MK_CPU_ENTRY
void qsgd_decode(const float* scales, const uint8_t* payload, int64_t n, int bits,
                 int64_t bucket_size, float* out, int64_t blk0, int64_t blk1) {
  with_qsgd_bits(bits, [&](auto b) MK_LAMBDA_INLINE {
    decode_blocks<decltype(b)::value>(scales, payload, n, bucket_size, out, blk0, blk1);
  });
}

}  // namespace cpu
}  // namespace moniqua_kernels
