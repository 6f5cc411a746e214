// A CPU stand-in for <cuda_runtime.h>: compiles a .cu file's kernels and launchers with a
// host compiler and runs each launch's threads one after another, so the CUDA kernels'
// indexing, tails, alignment choices and error flags are tested where no GPU is
// (csrc/tests/test_cuda_emu.cpp, built by CMakeLists.txt with AddressSanitizer and
// UBSan's alignment check standing in for compute-sanitizer's memcheck).
//
// Only kernels whose threads never communicate can run this way: no __shared__,
// __syncthreads or warp shuffles are defined here, so a kernel that uses them does not
// compile against this header (moniqua.cu's kernels qualify).  Threads run in a
// shuffled order, so a kernel that relies on another thread having run first fails.
//
// The emulated translation unit is compiled with __CUDACC__ and __CUDA_ARCH__ defined,
// so the shared headers take their device branches; the intrinsics below give the
// device's results (round-to-nearest float ops without contraction, cvt.rmi.s32.f32
// with NaN -> 0 and saturation, the high word of a 32x32 product).
#pragma once

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <random>
#include <vector>

#define __host__
#define __device__
#define __global__
#define __forceinline__ inline __attribute__((always_inline))
#define __launch_bounds__(...)

enum cudaError_t : int { cudaSuccess = 0, cudaErrorInvalidValue = 1 };
struct CUstream_st;
using cudaStream_t = CUstream_st*;
inline cudaError_t cudaGetLastError() { return cudaSuccess; }

struct alignas(8) uint2 {
  unsigned int x, y;
};
struct alignas(16) uint4 {
  unsigned int x, y, z, w;
};

struct mk_emu_dim {
  unsigned int x = 1, y = 1, z = 1;
};
inline mk_emu_dim threadIdx, blockIdx, blockDim, gridDim;

template <typename T>
inline T __ldg(const T* p) { return *p; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fmaf_rn(float a, float b, float c) { return std::fmaf(a, b, c); }
inline unsigned int __umulhi(unsigned int a, unsigned int b) {
  return static_cast<unsigned int>((static_cast<uint64_t>(a) * b) >> 32);
}
inline unsigned int __float_as_uint(float f) {
  unsigned int u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}
inline float __uint_as_float(unsigned int u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}
inline int __float2int_rd(float x) {  // cvt.rmi.s32.f32
  if (x != x) return 0;
  const float f = std::floor(x);
  if (f >= 2147483648.0f) return INT_MAX;
  if (f < -2147483648.0f) return INT_MIN;
  return static_cast<int>(f);
}
inline int __popc(unsigned int v) { return __builtin_popcount(v); }
inline unsigned long long atomicAdd(unsigned long long* p, unsigned long long v) {
  const unsigned long long old = *p;
  *p = old + v;
  return old;
}

namespace mk_emu {
// One launch: every (block, thread) of the grid, in an order shuffled by a fixed seed.
template <typename Kernel>
struct Launch {
  unsigned int grid, block;
  Kernel kernel;
  template <typename... Args>
  void operator()(Args&&... args) const {
    std::vector<uint64_t> order(static_cast<uint64_t>(grid) * block);
    std::iota(order.begin(), order.end(), uint64_t{0});
    std::shuffle(order.begin(), order.end(), std::mt19937_64(grid * 1000003ull + block));
    gridDim.x = grid;
    blockDim.x = block;
    for (const uint64_t i : order) {
      blockIdx.x = static_cast<unsigned int>(i / block);
      threadIdx.x = static_cast<unsigned int>(i % block);
      kernel(args...);
    }
  }
};
template <typename Kernel>
Launch<Kernel> launch(unsigned int grid, unsigned int block, Kernel kernel) {
  return Launch<Kernel>{grid, block, kernel};
}
}  // namespace mk_emu

#define MK_LAUNCH(grid, block, stream, ...) ::mk_emu::launch((grid), (block), &__VA_ARGS__)
