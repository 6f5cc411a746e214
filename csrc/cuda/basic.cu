// Philox uniforms, bit packing and the scaled sign on CUDA (DESIGN.md sections 3, 5, 6).
#include <algorithm>

#include "device.cuh"

namespace moniqua_kernels {
namespace cuda {
namespace {

// One thread per Philox call: four uniforms, one float4 store when whole and aligned
// (out may be a view such as buf[1:]).
__global__ void philox_kernel(float* __restrict__ out, int64_t n, Stream stream) {
  StreamVals s;
  if (!read_stream(stream, nullptr, s)) return;
  const bool vec = aligned_to(out, 16);
  MK_GRID_STRIDE(c, (n + 3) / 4) {
    uint32_t w[4];
    philox4x32_10((static_cast<uint64_t>(s.offset) >> 2) + static_cast<uint64_t>(c), s.key, w);
    const float v[4] = {uniform_from_word(w[0]), uniform_from_word(w[1]),
                        uniform_from_word(w[2]), uniform_from_word(w[3])};
    if (vec && 4 * c + 4 <= n) {
      reinterpret_cast<float4*>(out)[c] = make_float4(v[0], v[1], v[2], v[3]);
    } else {
      for (int j = 0; j < 4 && 4 * c + j < n; ++j) out[4 * c + j] = v[j];
    }
  }
}

// One thread per group of kEPT codes -> 2*BITS bytes.
template <int BITS>
__global__ void pack_kernel(const uint8_t* __restrict__ codes, int64_t n, uint8_t* __restrict__ out) {
  const bool vec = aligned_to(out, group_bytes<BITS>());
  const int64_t nbytes = packed_nbytes(n, BITS);
  MK_GRID_STRIDE(g, (n + kEPT - 1) / kEPT) {
    uint32_t k[kEPT];
#pragma unroll
    for (int j = 0; j < kEPT; ++j) k[j] = g * kEPT + j < n ? codes[g * kEPT + j] : 0u;
    const auto word = codes_word<BITS>(k);
    if (g * kEPT + kEPT <= n) store_code_word<BITS>(out, g, vec, word);
    else store_code_tail<BITS>(out, g, nbytes, word);
  }
}

template <int BITS>
__global__ void unpack_kernel(const uint8_t* __restrict__ payload, int64_t n,
                              uint8_t* __restrict__ out, int64_t* __restrict__ flag) {
  check_padding(payload, n, BITS, flag);
  const bool vec = aligned_to(payload, group_bytes<BITS>());
  const int64_t nbytes = packed_nbytes(n, BITS);
  MK_GRID_STRIDE(g, (n + kEPT - 1) / kEPT) {
    uint32_t k[kEPT];
    const bool whole = g * kEPT + kEPT <= n;
    word_codes<BITS>(whole ? load_code_word<BITS>(payload, g, vec)
                           : load_code_tail<BITS>(payload, g, nbytes), k);
#pragma unroll
    for (int j = 0; j < kEPT; ++j)
      if (g * kEPT + j < n) out[g * kEPT + j] = static_cast<uint8_t>(k[j]);
  }
}

// Sign bits of each group plus a per-block sum of |x| in double; the grid is capped at
// kSignBlocks so that one finishing block adds all partials (fixed order: the scale is
// the same for every run).  A block's partial is non-finite iff it saw a NaN/inf.
constexpr int kSignBlocks = 1024;

template <typename T>
__global__ void __launch_bounds__(kThreads) sign_kernel(const T* __restrict__ x, int64_t n,
                                                        uint8_t* __restrict__ payload,
                                                        double* __restrict__ partial) {
  __shared__ double warp_sums[kThreads / 32];
  const bool vec_x = aligned_to(x, 16), vec_p = aligned_to(payload, group_bytes<1>());
  const int64_t nbytes = packed_nbytes(n, 1);
  double acc = 0.0;
  MK_GRID_STRIDE(g, (n + kEPT - 1) / kEPT) {
    const int64_t base = g * kEPT;
    const bool whole = base + kEPT <= n;
    float v[kEPT];
    uint32_t k[kEPT];
    if (whole) load_group(x, base, vec_x, v); else load_tail(x, base, n, v);
#pragma unroll
    for (int j = 0; j < kEPT; ++j) {
      k[j] = sign_bit(v[j]);  // out-of-range lanes loaded as 0.0: bit 0, |x| 0
      acc += static_cast<double>(fabsf(v[j]));
    }
    const auto word = codes_word<1>(k);
    if (whole) store_code_word<1>(payload, g, vec_p, word);
    else store_code_tail<1>(payload, g, nbytes, word);
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

// One block of kSignBlocks threads: a fixed-order tree over the partials, then
// scale = sum / n in float32; a non-finite sum means NaN/inf inputs, which are then
// counted (rare: one more pass over x).
template <typename T>
__global__ void sign_finish_kernel(const double* __restrict__ partial, int nblocks,
                                   const T* __restrict__ x, int64_t n, float* __restrict__ scale,
                                   int64_t* __restrict__ flag) {
  __shared__ double tree[kSignBlocks];
  tree[threadIdx.x] = threadIdx.x < nblocks ? partial[threadIdx.x] : 0.0;
  __syncthreads();
  for (int stride = kSignBlocks / 2; stride > 0; stride >>= 1) {
    if (threadIdx.x < stride) tree[threadIdx.x] += tree[threadIdx.x + stride];
    __syncthreads();
  }
  const double total = tree[0];
  if (threadIdx.x == 0) *scale = n ? __fdiv_rn(static_cast<float>(total), static_cast<float>(n)) : 0.0f;
  if (flag != nullptr && !isfinite(total)) {
    int64_t bad = 0;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) bad += not_finite(to_float(x[i]));
    if (bad) flag_add(flag, kNonFinite, bad);
  }
}

__global__ void sign_decode_kernel(const float* __restrict__ scale, const uint8_t* __restrict__ payload,
                                   int64_t n, float* __restrict__ out, int64_t* __restrict__ flag) {
  check_padding(payload, n, 1, flag);
  const float sc = *scale;
  const bool vec_o = aligned_to(out, 16), vec_p = aligned_to(payload, group_bytes<1>());
  const int64_t nbytes = packed_nbytes(n, 1);
  MK_GRID_STRIDE(g, (n + kEPT - 1) / kEPT) {
    const bool whole = g * kEPT + kEPT <= n;
    uint32_t k[kEPT];
    float v[kEPT];
    word_codes<1>(whole ? load_code_word<1>(payload, g, vec_p) : load_code_tail<1>(payload, g, nbytes), k);
#pragma unroll
    for (int j = 0; j < kEPT; ++j) v[j] = sign_value(k[j], sc);
    if (whole) store_group(out, g * kEPT, vec_o, v); else store_tail(out, g * kEPT, n, v);
  }
}

unsigned groups_grid(int64_t n) { return grid_for((n + kEPT - 1) / kEPT); }

}  // namespace

cudaError_t philox_uniform(float* out, int64_t n, Stream s, cudaStream_t st) {
  if (n == 0) return cudaSuccess;
  MK_LAUNCH(grid_for((n + 3) / 4), kThreads, st, philox_kernel)(out, n, s);
  MK_LAUNCH_CHECK();
  return cudaSuccess;
}

cudaError_t pack_bits(const uint8_t* codes, int64_t n, int bits, uint8_t* out, cudaStream_t st) {
  if (n == 0) return cudaSuccess;
  return dispatch_bits(bits, [&](auto bc) {
    MK_LAUNCH(groups_grid(n), kThreads, st, pack_kernel<decltype(bc)::value>)(codes, n, out);
    MK_LAUNCH_CHECK();
    return cudaSuccess;
  });
}

cudaError_t unpack_bits(const uint8_t* payload, int64_t n, int bits, uint8_t* out,
                        int64_t* flag, cudaStream_t st) {
  if (n == 0) return cudaSuccess;
  return dispatch_bits(bits, [&](auto bc) {
    MK_LAUNCH(groups_grid(n), kThreads, st, unpack_kernel<decltype(bc)::value>)(payload, n, out,
                                                                             flag);
    MK_LAUNCH_CHECK();
    return cudaSuccess;
  });
}

int64_t sign_workspace_doubles() { return kSignBlocks; }

cudaError_t sign_encode(const void* x, DType dt, int64_t n, double* workspace, float* scale,
                        uint8_t* payload, int64_t* flag, cudaStream_t st) {
  const int64_t groups = (n + kEPT - 1) / kEPT;
  const int blocks = static_cast<int>(std::min<int64_t>(
      kSignBlocks, std::max<int64_t>(1, (groups + kThreads - 1) / kThreads)));
  return dispatch_dtype(dt, [&](auto tag) {
    using T = decltype(tag);
    const T* xt = static_cast<const T*>(x);
    if (n > 0) {
      MK_LAUNCH(blocks, kThreads, st, sign_kernel<T>)(xt, n, payload, workspace);
      MK_LAUNCH_CHECK();
    }
    MK_LAUNCH(1, kSignBlocks, st, sign_finish_kernel<T>)(workspace, n > 0 ? blocks : 0, xt, n,
                                                         scale, flag);
    MK_LAUNCH_CHECK();
    return cudaSuccess;
  });
}

cudaError_t sign_decode(const float* scale, const uint8_t* payload, int64_t n, float* out,
                        int64_t* flag, cudaStream_t st) {
  if (n == 0) return cudaSuccess;
  MK_LAUNCH(groups_grid(n), kThreads, st, sign_decode_kernel)(scale, payload, n, out, flag);
  MK_LAUNCH_CHECK();
  return cudaSuccess;
}

}  // namespace cuda
}  // namespace moniqua_kernels
