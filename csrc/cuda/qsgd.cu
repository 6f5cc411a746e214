// Bucketed QSGD on CUDA (DESIGN.md section 6): one block per bucket for the scales,
// then one thread per 16-element group for the codes.
#include "device.cuh"

namespace moniqua_kernels {
namespace cuda {
namespace {

template <typename T>
__global__ void scales_kernel(const T* __restrict__ x, int64_t n, int64_t d, bool l2,
                              float* __restrict__ scales) {
  __shared__ double part[kThreads];
  const int64_t nq = (n + d - 1) / d;
  for (int64_t q = blockIdx.x; q < nq; q += gridDim.x) {
    const int64_t begin = q * d, end = begin + d < n ? begin + d : n;
    double acc = 0.0;  // l2: float32 squares summed in double; max: exact in any order
    for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) {
      const float v = to_float(x[i]);
      if (l2) acc += static_cast<double>(__fmul_rn(v, v));
      else acc = fmax(acc, static_cast<double>(fabsf(v)));
    }
    part[threadIdx.x] = acc;
    __syncthreads();
    for (int stride = blockDim.x / 2; stride > 0; stride >>= 1) {
      if (threadIdx.x < stride) {
        const double o = part[threadIdx.x + stride];
        part[threadIdx.x] = l2 ? part[threadIdx.x] + o : fmax(part[threadIdx.x], o);
      }
      __syncthreads();
    }
    if (threadIdx.x == 0)
      scales[q] = l2 ? __fsqrt_rn(static_cast<float>(part[0])) : static_cast<float>(part[0]);
    __syncthreads();
  }
}

template <int BITS, bool VEC, typename T>
__global__ void encode_kernel(const T* __restrict__ x, int64_t n, int64_t d,
                              const float* __restrict__ scales, StreamArg s,
                              uint8_t* __restrict__ payload) {
  const int64_t groups = (n + kEPT - 1) / kEPT;
  for (int64_t g = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; g < groups;
       g += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t base = g * kEPT;
    float v[kEPT], u[kEPT];
    uint32_t k[kEPT];
    if (VEC && base + kEPT <= n) load_group<true>(x, base, n, v); else load_group<false>(x, base, n, v);
    group_uniforms(s, base, u);
    int64_t q = base / d, qend = (q + 1) * d;
    float r = qsgd_ratio(BITS, scales[q]);
#pragma unroll
    for (int j = 0; j < kEPT; ++j) {
      if (base + j >= qend && base + j < n) {  // the group crosses into the next bucket
        q = (base + j) / d;
        qend = (q + 1) * d;
        r = qsgd_ratio(BITS, scales[q]);
      }
      k[j] = base + j < n ? qsgd_code<BITS>(v[j], r, u[j]) : 0u;
    }
    store_codes<BITS>(payload, g, n, k);
  }
}

template <int BITS>
__global__ void decode_kernel(const float* __restrict__ scales, const uint8_t* __restrict__ payload,
                              int64_t n, int64_t d, float* __restrict__ out) {
  const int64_t groups = (n + kEPT - 1) / kEPT;
  for (int64_t g = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; g < groups;
       g += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t base = g * kEPT;
    uint32_t k[kEPT];
    float v[kEPT];
    load_codes<BITS>(payload, g, n, k);
#pragma unroll
    for (int j = 0; j < kEPT; ++j) {
      const int64_t i = base + j < n ? base + j : n - 1;
      v[j] = qsgd_value<BITS>(k[j], scales[i / d]);
    }
    if (base + kEPT <= n && aligned16(out)) store_group<true>(out, base, n, v);
    else store_group<false>(out, base, n, v);
  }
}

template <typename F>
cudaError_t with_qsgd_bits(int bits, F&& f) {
  switch (bits) {
    case 2: return f(BitsC<2>{});
    case 4: return f(BitsC<4>{});
    default: return f(BitsC<8>{});
  }
}

}  // namespace

cudaError_t qsgd_encode(const void* x, DType dt, int64_t n, int bits, int64_t bucket_size,
                        bool norm_l2, StreamArg s, float* scales, uint8_t* payload,
                        cudaStream_t st) {
  if (n == 0) return cudaSuccess;
  const int64_t nq = (n + bucket_size - 1) / bucket_size;
  const unsigned qgrid = static_cast<unsigned>(nq < (int64_t{1} << 20) ? nq : (int64_t{1} << 20));
  const unsigned grid = grid_for((n + kEPT - 1) / kEPT);
  const bool vec = aligned16(x);
  return with_dtype(dt, [&](auto tag) {
    using T = decltype(tag);
    const T* xt = static_cast<const T*>(x);
    scales_kernel<<<qgrid, kThreads, 0, st>>>(xt, n, bucket_size, norm_l2, scales);
    MK_LAUNCH_CHECK();
    return with_qsgd_bits(bits, [&](auto bc) {
      constexpr int B = decltype(bc)::value;
      if (vec) encode_kernel<B, true><<<grid, kThreads, 0, st>>>(xt, n, bucket_size, scales, s, payload);
      else encode_kernel<B, false><<<grid, kThreads, 0, st>>>(xt, n, bucket_size, scales, s, payload);
      MK_LAUNCH_CHECK();
      return cudaSuccess;
    });
  });
}

cudaError_t qsgd_decode(const float* scales, const uint8_t* payload, int64_t n, int bits,
                        int64_t bucket_size, float* out, cudaStream_t st) {
  if (n == 0) return cudaSuccess;
  return with_qsgd_bits(bits, [&](auto bc) {
    decode_kernel<decltype(bc)::value><<<grid_for((n + kEPT - 1) / kEPT), kThreads, 0, st>>>(
        scales, payload, n, bucket_size, out);
    MK_LAUNCH_CHECK();
    return cudaSuccess;
  });
}

}  // namespace cuda
}  // namespace moniqua_kernels
