// Philox uniforms, bit packing and the scaled sign on CUDA (DESIGN.md sections 3, 5, 6).
#include "device.cuh"

namespace moniqua_kernels {
namespace cuda {
namespace {

#define MK_GRID_STRIDE(i, count)                                                        \
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < (count); \
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)

// One thread per Philox call: four uniforms, one float4 store when whole.
__global__ void philox_kernel(float* __restrict__ out, int64_t n, StreamArg s) {
  const PhiloxKey key = philox_key(s.seed);
  MK_GRID_STRIDE(c, (n + 3) / 4) {
    uint32_t w[4];
    philox4x32_10((static_cast<uint64_t>(s.offset) >> 2) + static_cast<uint64_t>(c), key, w);
    const float4 u = make_float4(uniform_from_word(w[0]), uniform_from_word(w[1]),
                                 uniform_from_word(w[2]), uniform_from_word(w[3]));
    if (4 * c + 4 <= n) {
      reinterpret_cast<float4*>(out)[c] = u;  // out is a fresh (aligned) allocation
    } else {
      const float v[4] = {u.x, u.y, u.z, u.w};
      for (int j = 0; 4 * c + j < n; ++j) out[4 * c + j] = v[j];
    }
  }
}

// One thread per group of kEPT codes -> 2*BITS bytes.
template <int BITS>
__global__ void pack_kernel(const uint8_t* __restrict__ codes, int64_t n, uint8_t* __restrict__ out) {
  MK_GRID_STRIDE(g, (n + kEPT - 1) / kEPT) {
    uint32_t k[kEPT];
#pragma unroll
    for (int j = 0; j < kEPT; ++j) k[j] = g * kEPT + j < n ? codes[g * kEPT + j] : 0u;
    store_codes<BITS>(out, g, n, k);
  }
}

template <int BITS>
__global__ void unpack_kernel(const uint8_t* __restrict__ payload, int64_t n,
                              uint8_t* __restrict__ out) {
  MK_GRID_STRIDE(g, (n + kEPT - 1) / kEPT) {
    uint32_t k[kEPT];
    load_codes<BITS>(payload, g, n, k);
#pragma unroll
    for (int j = 0; j < kEPT; ++j)
      if (g * kEPT + j < n) out[g * kEPT + j] = static_cast<uint8_t>(k[j]);
  }
}

// Bits of each group plus a per-block sum of |x| in double.  Fixed grid (no grid
// stride beyond it) so block b's partial always covers the same groups.
template <bool VEC, typename T>
__global__ void sign_kernel(const T* __restrict__ x, int64_t n, uint8_t* __restrict__ payload,
                            double* __restrict__ partial) {
  __shared__ double warp_sums[kThreads / 32];
  double acc = 0.0;
  MK_GRID_STRIDE(g, (n + kEPT - 1) / kEPT) {
    const int64_t base = g * kEPT;
    float v[kEPT];
    uint32_t k[kEPT];
    if (VEC && base + kEPT <= n) load_group<true>(x, base, n, v); else load_group<false>(x, base, n, v);
#pragma unroll
    for (int j = 0; j < kEPT; ++j) {
      k[j] = sign_bit(v[j]);  // out-of-range lanes loaded as 0.0: bit 0, |x| 0
      acc += static_cast<double>(fabsf(v[j]));
    }
    store_codes<1>(payload, g, n, k);
  }
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) acc += __shfl_down_sync(0xffffffffu, acc, off);
  if ((threadIdx.x & 31) == 0) warp_sums[threadIdx.x >> 5] = acc;
  __syncthreads();
  if (threadIdx.x == 0) {
    double total = 0.0;
    for (int w = 0; w < kThreads / 32; ++w) total += warp_sums[w];
    partial[blockIdx.x] = total;
  }
}

// One block: the partials in block order (one thread), then scale = sum / n in float32.
__global__ void sign_finish_kernel(const double* __restrict__ partial, int64_t nblocks,
                                   int64_t n, float* __restrict__ scale) {
  double total = 0.0;
  for (int64_t b = 0; b < nblocks; ++b) total += partial[b];
  *scale = n ? __fdiv_rn(static_cast<float>(total), static_cast<float>(n)) : 0.0f;
}

__global__ void sign_decode_kernel(const float* __restrict__ scale, const uint8_t* __restrict__ payload,
                                   int64_t n, float* __restrict__ out) {
  const float sc = *scale;
  MK_GRID_STRIDE(g, (n + kEPT - 1) / kEPT) {
    uint32_t k[kEPT];
    float v[kEPT];
    load_codes<1>(payload, g, n, k);
#pragma unroll
    for (int j = 0; j < kEPT; ++j) v[j] = sign_value(k[j], sc);
    if (g * kEPT + kEPT <= n && aligned16(out)) store_group<true>(out, g * kEPT, n, v);
    else store_group<false>(out, g * kEPT, n, v);
  }
}

unsigned sign_grid(int64_t n) { return grid_for((n + kEPT - 1) / kEPT); }

}  // namespace

cudaError_t philox_uniform(float* out, int64_t n, StreamArg s, cudaStream_t st) {
  if (n == 0) return cudaSuccess;
  philox_kernel<<<grid_for((n + 3) / 4), kThreads, 0, st>>>(out, n, s);
  MK_LAUNCH_CHECK();
  return cudaSuccess;
}

cudaError_t pack_bits(const uint8_t* codes, int64_t n, int bits, uint8_t* out, cudaStream_t st) {
  if (n == 0) return cudaSuccess;
  return with_bits(bits, [&](auto bc) {
    pack_kernel<decltype(bc)::value><<<grid_for((n + kEPT - 1) / kEPT), kThreads, 0, st>>>(codes, n, out);
    MK_LAUNCH_CHECK();
    return cudaSuccess;
  });
}

cudaError_t unpack_bits(const uint8_t* payload, int64_t n, int bits, uint8_t* out,
                        cudaStream_t st) {
  if (n == 0) return cudaSuccess;
  return with_bits(bits, [&](auto bc) {
    unpack_kernel<decltype(bc)::value><<<grid_for((n + kEPT - 1) / kEPT), kThreads, 0, st>>>(payload, n, out);
    MK_LAUNCH_CHECK();
    return cudaSuccess;
  });
}

int64_t sign_workspace_doubles(int64_t n) { return sign_grid(n); }

cudaError_t sign_encode(const void* x, DType dt, int64_t n, double* workspace, float* scale,
                        uint8_t* payload, cudaStream_t st) {
  const unsigned grid = sign_grid(n);
  if (n > 0) {
    const bool vec = aligned16(x);
    const cudaError_t err = with_dtype(dt, [&](auto tag) {
      using T = decltype(tag);
      const T* xt = static_cast<const T*>(x);
      if (vec) sign_kernel<true><<<grid, kThreads, 0, st>>>(xt, n, payload, workspace);
      else sign_kernel<false><<<grid, kThreads, 0, st>>>(xt, n, payload, workspace);
      MK_LAUNCH_CHECK();
      return cudaSuccess;
    });
    if (err != cudaSuccess) return err;
  }
  sign_finish_kernel<<<1, 1, 0, st>>>(workspace, n > 0 ? grid : 0, n, scale);
  MK_LAUNCH_CHECK();
  return cudaSuccess;
}

cudaError_t sign_decode(const float* scale, const uint8_t* payload, int64_t n, float* out,
                        cudaStream_t st) {
  if (n == 0) return cudaSuccess;
  sign_decode_kernel<<<grid_for((n + kEPT - 1) / kEPT), kThreads, 0, st>>>(scale, payload, n, out);
  MK_LAUNCH_CHECK();
  return cudaSuccess;
}

}  // namespace cuda
}  // namespace moniqua_kernels
