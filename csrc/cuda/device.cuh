// Device helpers shared by the .cu files: launch checks, grid sizing, and 16-element
// loads/stores with 16-byte vector accesses.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "launchers.h"
#include "moniqua_kernels/moniqua_kernels.h"

// Return the launch's error (configuration or asynchronous) from the launcher.
#define MK_LAUNCH_CHECK()                       \
  do {                                          \
    const cudaError_t mk_err_ = cudaGetLastError(); \
    if (mk_err_ != cudaSuccess) return mk_err_; \
  } while (0)

namespace moniqua_kernels {
namespace cuda {

// Elements per thread in the elementwise kernels: 16 = four 16-byte float loads, four
// Philox calls, and 2*bits whole output bytes.
constexpr int kEPT = 16;
constexpr int kThreads = 256;

// Blocks for `work` thread-items; kernels loop grid-stride over 64-bit indices, so the
// grid is capped (n > 2^31 elements runs with more iterations per thread).
inline unsigned grid_for(int64_t work) {
  const int64_t blocks = (work + kThreads - 1) / kThreads;
  const int64_t cap = int64_t{1} << 20;
  return static_cast<unsigned>(blocks < 1 ? 1 : (blocks > cap ? cap : blocks));
}

__host__ __device__ inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

struct HalfT { uint16_t v; };
struct BF16T { uint16_t v; };

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(HalfT v) { return half_to_float(v.v); }
__device__ __forceinline__ float to_float(BF16T v) { return bf16_to_float(v.v); }
__device__ __forceinline__ void from_float(float& d, float v) { d = v; }
__device__ __forceinline__ void from_float(HalfT& d, float v) { d.v = float_to_half(v); }
__device__ __forceinline__ void from_float(BF16T& d, float v) { d.v = float_to_bf16(v); }

// Load kEPT elements starting at p (element index base) as float32; VEC: p is
// 16-byte aligned and all kEPT are in range, so whole uint4 loads are used.
template <bool VEC, typename T>
__device__ __forceinline__ void load_group(const T* p, int64_t base, int64_t n, float* v) {
  if (VEC) {
    constexpr int kVec = 16 / sizeof(T);
#pragma unroll
    for (int q = 0; q < kEPT / kVec; ++q) {
      const uint4 raw = *reinterpret_cast<const uint4*>(p + base + q * kVec);
      const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
      for (int j = 0; j < kVec; ++j) v[q * kVec + j] = to_float(e[j]);
    }
  } else {
#pragma unroll
    for (int j = 0; j < kEPT; ++j) v[j] = base + j < n ? to_float(p[base + j]) : 0.0f;
  }
}

template <bool VEC, typename T>
__device__ __forceinline__ void store_group(T* p, int64_t base, int64_t n, const float* v) {
  if (VEC) {
    constexpr int kVec = 16 / sizeof(T);
#pragma unroll
    for (int q = 0; q < kEPT / kVec; ++q) {
      uint4 raw;
      T* e = reinterpret_cast<T*>(&raw);
#pragma unroll
      for (int j = 0; j < kVec; ++j) from_float(e[j], v[q * kVec + j]);
      *reinterpret_cast<uint4*>(p + base + q * kVec) = raw;
    }
  } else {
#pragma unroll
    for (int j = 0; j < kEPT; ++j)
      if (base + j < n) from_float(p[base + j], v[j]);
  }
}

// Uniforms of the kEPT elements from element index base (a multiple of 4).
__device__ __forceinline__ void group_uniforms(StreamArg s, int64_t base, float* u) {
  const PhiloxKey key = philox_key(s.seed);
  const uint64_t ctr0 = static_cast<uint64_t>(s.offset + base) >> 2;
#pragma unroll
  for (int c = 0; c < kEPT / 4; ++c) {
    uint32_t w[4];
    philox4x32_10(ctr0 + c, key, w);
#pragma unroll
    for (int j = 0; j < 4; ++j) u[4 * c + j] = uniform_from_word(w[j]);
  }
}

// The 2*BITS payload bytes of a group as codes (VEC: whole, aligned bytes).
template <int BITS>
__device__ __forceinline__ void load_codes(const uint8_t* payload, int64_t group, int64_t n,
                                           uint32_t* k) {
  constexpr int kBytes = kEPT * BITS / 8;
  const int64_t byte0 = group * kBytes;
  const int64_t nbytes = packed_nbytes(n, BITS);
  uint8_t b[kBytes];
#pragma unroll
  for (int j = 0; j < kBytes; ++j) b[j] = byte0 + j < nbytes ? payload[byte0 + j] : 0;
#pragma unroll
  for (int e = 0; e < kEPT; ++e) k[e] = unpack_code<BITS>(b[e / (8 / BITS)], e % (8 / BITS));
}

// Store the group's codes as 2*BITS bytes: one 2/4/8/16-byte store when whole.
template <int BITS>
__device__ __forceinline__ void store_codes(uint8_t* payload, int64_t group, int64_t n,
                                            const uint32_t* k) {
  constexpr int kBytes = kEPT * BITS / 8;
  uint8_t b[kBytes];
#pragma unroll
  for (int j = 0; j < kBytes; ++j) {
    uint32_t byte = 0;
#pragma unroll
    for (int m = 0; m < 8 / BITS; ++m) byte |= k[j * (8 / BITS) + m] << (m * BITS);
    b[j] = static_cast<uint8_t>(byte);
  }
  const int64_t byte0 = group * kBytes;
  const int64_t nbytes = packed_nbytes(n, BITS);
  if (byte0 + kBytes <= nbytes) {
    if (kBytes == 2) {
      *reinterpret_cast<uint16_t*>(payload + byte0) = static_cast<uint16_t>(b[0] | (b[1] << 8));
    } else if (kBytes == 4) {
      uint32_t w;
      memcpy(&w, b, 4);
      *reinterpret_cast<uint32_t*>(payload + byte0) = w;
    } else if (kBytes == 8) {
      uint2 w;
      memcpy(&w, b, 8);
      *reinterpret_cast<uint2*>(payload + byte0) = w;
    } else {
      uint4 w;
      memcpy(&w, b, 16);
      *reinterpret_cast<uint4*>(payload + byte0) = w;
    }
  } else {
#pragma unroll
    for (int j = 0; j < kBytes; ++j)
      if (byte0 + j < nbytes) payload[byte0 + j] = b[j];
  }
}

template <typename F>
inline cudaError_t with_dtype(DType dt, F&& f) {
  switch (dt) {
    case DType::kFloat16: return f(HalfT{});
    case DType::kBFloat16: return f(BF16T{});
    default: return f(float{});
  }
}

template <int B>
struct BitsC {
  static constexpr int value = B;
};

template <typename F>
inline cudaError_t with_bits(int bits, F&& f) {
  switch (bits) {
    case 1: return f(BitsC<1>{});
    case 2: return f(BitsC<2>{});
    case 4: return f(BitsC<4>{});
    default: return f(BitsC<8>{});
  }
}

template <typename F>
inline cudaError_t with_rounding(int rounding, F&& f) {
  switch (rounding) {
    case kNearest: return f(BitsC<kNearest>{});
    case kDither: return f(BitsC<kDither>{});
    default: return f(BitsC<kStochastic>{});
  }
}

}  // namespace cuda
}  // namespace moniqua_kernels
