// Moniqua encode, decode and the fused gossip mix on CUDA (DESIGN.md section 4).
// One thread per group of kEPT = 16 elements: 16-byte loads (when the tensors are
// 16-byte aligned: a runtime flag, not a template, halves the instantiations), four Philox calls (not
// for nearest), and the group's 2*bits payload bytes in one store.
#include "device.cuh"

namespace moniqua_kernels {
namespace cuda {
namespace {

template <int BITS, int ROUND, typename T>
__global__ void encode_kernel(const T* __restrict__ x, int64_t n, float inv_b, StreamArg s,
                              uint8_t* __restrict__ payload, bool vec) {
  const int64_t groups = (n + kEPT - 1) / kEPT;
  for (int64_t g = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; g < groups;
       g += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t base = g * kEPT;
    float v[kEPT], u[kEPT];
    uint32_t k[kEPT];
    const bool whole = base + kEPT <= n;
    if (vec && whole) load_group<true>(x, base, n, v); else load_group<false>(x, base, n, v);
    if (ROUND != kNearest) group_uniforms(s, base, u);
#pragma unroll
    for (int j = 0; j < kEPT; ++j) {
      // Fields past n stay zero (the spec's unused high bits).
      k[j] = base + j < n ? moniqua_code<BITS>(v[j], inv_b, ROUND == kNearest ? 0.5f : u[j]) : 0u;
    }
    store_codes<BITS>(payload, g, n, k);
  }
}

template <int BITS, int ROUND>
__device__ __forceinline__ void decode_group(const uint8_t* payload, int64_t g, int64_t n,
                                             StreamArg s, const float* y, float b, float inv_b,
                                             float* out) {
  uint32_t k[kEPT];
  float u[kEPT];
  load_codes<BITS>(payload, g, n, k);
  if (ROUND == kDither) group_uniforms(s, g * kEPT, u);
#pragma unroll
  for (int j = 0; j < kEPT; ++j) {
    const float c = ROUND == kDither ? moniqua_dither_offset(u[j]) : 0.0f;
    out[j] = moniqua_value<BITS>(k[j], c, y[j], b, inv_b);
  }
}

template <int BITS, int ROUND, typename T>
__global__ void decode_kernel(const uint8_t* __restrict__ payload, const T* __restrict__ y,
                              int64_t n, float b, float inv_b, StreamArg s, T* __restrict__ out,
                              bool vec) {
  const int64_t groups = (n + kEPT - 1) / kEPT;
  for (int64_t g = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; g < groups;
       g += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t base = g * kEPT;
    const bool whole = base + kEPT <= n;
    float yv[kEPT], xh[kEPT];
    if (vec && whole) load_group<true>(y, base, n, yv); else load_group<false>(y, base, n, yv);
    decode_group<BITS, ROUND>(payload, g, n, s, yv, b, inv_b, xh);
    if (vec && whole) store_group<true>(out, base, n, xh); else store_group<false>(out, base, n, xh);
  }
}

// x <- x + gamma * sum_j w_j (dec(q_j; x) - dec(q_self; x)); x read and written once.
template <int BITS, int ROUND, typename T>
__global__ void mix_kernel(T* __restrict__ x, int64_t n, const MixPayloads p, float b,
                           float inv_b, float gamma, bool vec) {
  const int64_t groups = (n + kEPT - 1) / kEPT;
  for (int64_t g = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; g < groups;
       g += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t base = g * kEPT;
    const bool whole = base + kEPT <= n;
    float xv[kEPT], dself[kEPT], dj[kEPT], acc[kEPT];
    if (vec && whole) load_group<true>(x, base, n, xv); else load_group<false>(x, base, n, xv);
    decode_group<BITS, ROUND>(p.own, g, n, p.own_stream, xv, b, inv_b, dself);
#pragma unroll
    for (int e = 0; e < kEPT; ++e) acc[e] = 0.0f;
    for (int j = 0; j < p.count; ++j) {
      decode_group<BITS, ROUND>(p.payload[j], g, n, p.stream[j], xv, b, inv_b, dj);
      const float w = p.weight[j];
#pragma unroll
      for (int e = 0; e < kEPT; ++e)
        acc[e] = __fadd_rn(acc[e], __fmul_rn(w, __fsub_rn(dj[e], dself[e])));
    }
#pragma unroll
    for (int e = 0; e < kEPT; ++e) xv[e] = __fadd_rn(xv[e], __fmul_rn(gamma, acc[e]));
    if (vec && whole) store_group<true>(x, base, n, xv); else store_group<false>(x, base, n, xv);
  }
}

}  // namespace

cudaError_t moniqua_encode(const void* x, DType dt, int64_t n, float modulus, float inv_modulus,
                           int bits, int rounding, StreamArg s, uint8_t* payload,
                           cudaStream_t st) {
  (void)modulus;
  if (n == 0) return cudaSuccess;
  const unsigned grid = grid_for((n + kEPT - 1) / kEPT);
  const bool vec = aligned16(x);
  return with_dtype(dt, [&](auto tag) {
    using T = decltype(tag);
    const T* xt = static_cast<const T*>(x);
    return with_bits(bits, [&](auto bc) {
      constexpr int B = decltype(bc)::value;
      return with_rounding(rounding, [&](auto rc) {
        constexpr int R = decltype(rc)::value;
        encode_kernel<B, R><<<grid, kThreads, 0, st>>>(xt, n, inv_modulus, s, payload, vec);
        MK_LAUNCH_CHECK();
        return cudaSuccess;
      });
    });
  });
}

cudaError_t moniqua_decode(const uint8_t* payload, const void* y, DType dt, int64_t n,
                           float modulus, float inv_modulus, int bits, int rounding,
                           StreamArg s, void* out, cudaStream_t st) {
  if (n == 0) return cudaSuccess;
  const unsigned grid = grid_for((n + kEPT - 1) / kEPT);
  const bool vec = aligned16(y) && aligned16(out);
  return with_dtype(dt, [&](auto tag) {
    using T = decltype(tag);
    const T* yt = static_cast<const T*>(y);
    T* ot = static_cast<T*>(out);
    return with_bits(bits, [&](auto bc) {
      constexpr int B = decltype(bc)::value;
      return with_rounding(rounding, [&](auto rc) {
        constexpr int R = decltype(rc)::value;
        decode_kernel<B, R><<<grid, kThreads, 0, st>>>(payload, yt, n, modulus, inv_modulus, s, ot, vec);
        MK_LAUNCH_CHECK();
        return cudaSuccess;
      });
    });
  });
}

cudaError_t moniqua_mix(void* x, DType dt, int64_t n, const MixPayloads& p, float modulus,
                        float inv_modulus, int bits, int rounding, float gamma,
                        cudaStream_t st) {
  if (n == 0) return cudaSuccess;
  if (p.count < 0 || p.count > kMaxMixPayloads) return cudaErrorInvalidValue;
  const unsigned grid = grid_for((n + kEPT - 1) / kEPT);
  const bool vec = aligned16(x);
  return with_dtype(dt, [&](auto tag) {
    using T = decltype(tag);
    T* xt = static_cast<T*>(x);
    return with_bits(bits, [&](auto bc) {
      constexpr int B = decltype(bc)::value;
      return with_rounding(rounding, [&](auto rc) {
        constexpr int R = decltype(rc)::value;
        mix_kernel<B, R><<<grid, kThreads, 0, st>>>(xt, n, p, modulus, inv_modulus, gamma, vec);
        MK_LAUNCH_CHECK();
        return cudaSuccess;
      });
    });
  });
}

}  // namespace cuda
}  // namespace moniqua_kernels
