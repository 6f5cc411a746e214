// Portability layer for the math shared by the CPU and CUDA kernels.
//
// MK_HD marks a function callable from host and device: empty for a plain C++
// compiler, __host__ __device__ under nvcc.  The float helpers round every product and
// sum on its own (DESIGN.md section 4): on the device through the _rn intrinsics,
// which nvcc never contracts into an FMA; on the host plain operators, with the
// translation units compiled with -ffp-contract=off.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define MK_HD __host__ __device__
#define MK_INLINE __forceinline__
#else
#define MK_HD
#if defined(__GNUC__)
// always_inline: the CPU kernels are multiversioned per ISA (cpu/block.h); a callee
// that is not inlined would be compiled for the baseline ISA only.
#define MK_INLINE inline __attribute__((always_inline))
#else
#define MK_INLINE inline
#endif
#endif

#if defined(__CUDA_ARCH__)
#define MK_FMUL(a, b) __fmul_rn((a), (b))
#define MK_FADD(a, b) __fadd_rn((a), (b))
#define MK_FSUB(a, b) __fsub_rn((a), (b))
#define MK_FLOOR(a) floorf(a)
#define MK_FABS(a) fabsf(a)
#else
#define MK_FMUL(a, b) ((a) * (b))
#define MK_FADD(a, b) ((a) + (b))
#define MK_FSUB(a, b) ((a) - (b))
#define MK_FLOOR(a) __builtin_floorf(a)
#define MK_FABS(a) __builtin_fabsf(a)
#endif

namespace moniqua_kernels {

// Rounding modes, numbered as in the bindings' string parsing.
enum Rounding : int { kStochastic = 0, kNearest = 1, kDither = 2 };

// Input/output element types of the float kernels.
enum class DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

// Element types with the memory layout of at::Half / at::BFloat16 (their bit patterns):
// the kernels convert with convert.h, so they need no torch or CUDA half headers.
struct Half16 {
  uint16_t bits;
};
struct BFloat16 {
  uint16_t bits;
};

// The one random-number stream type (DESIGN.md section 3), CPU and CUDA.  `tensor`,
// when not null, points at int64 {seed, offset} in the memory of the device that runs
// the kernel, which reads it there: a captured CUDA graph then draws the stream the
// tensor holds at replay.  Such an offset is checked by the kernel (kBadStream).
struct Stream {
  uint64_t seed;
  int64_t offset;  // a multiple of 4
  const int64_t* tensor;
};

// The one parameter struct of the Moniqua kernels: B and invB = float32(1) / B rounded
// once on the host, bits in {1, 2, 4, 8}, a Rounding.
struct ModulusParams {
  float b, inv_b;
  int bits, rounding;
};

// Slots of an op's error-flag row (moniqua_kernels/ops/_errors.py): int64 counts the
// kernels add to; a null row turns the checks off.
enum FlagSlot : int { kNonFinite = 0, kBadStream = 1, kPadding = 2 };

MK_HD MK_INLINE uint32_t float_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u;
  __builtin_memcpy(&u, &f, sizeof u);
  return u;
#endif
}

MK_HD MK_INLINE float bits_float(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  __builtin_memcpy(&f, &u, sizeof f);
  return f;
#endif
}

}  // namespace moniqua_kernels
