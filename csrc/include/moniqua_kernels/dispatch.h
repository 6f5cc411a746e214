// Runtime values -> compile-time template arguments, for the CPU entry points and the
// CUDA launchers alike.  Host code only.  An unknown value throws (pybind11 turns it
// into a Python ValueError): no width silently runs as another.
#pragma once

#include <stdexcept>
#include <string>
#include <type_traits>

#include "common.h"

// Always inlined: the CPU entry points are cloned per ISA (cpu/block.h, MK_CPU_ENTRY)
// and the kernel body, a lambda, reaches its caller's clone only through these
// helpers.  Left to the compiler, each helper became one baseline-ISA (SSE2) function
// holding the whole loop, with floor() as a libm call: measured on one thread, 2^24
// float32, 1-bit nearest encode 36 ms instead of ~4 ms.
#if defined(__GNUC__) || defined(__clang__)
#define MK_DISPATCH_INLINE inline __attribute__((always_inline))
#else
#define MK_DISPATCH_INLINE inline
#endif

namespace moniqua_kernels {

template <int V>
using IntC = std::integral_constant<int, V>;

template <typename F>
MK_DISPATCH_INLINE decltype(auto) dispatch_bits(int bits, F&& f) {
  switch (bits) {
    case 1: return f(IntC<1>{});
    case 2: return f(IntC<2>{});
    case 4: return f(IntC<4>{});
    case 8: return f(IntC<8>{});
    default: throw std::invalid_argument("unsupported bit width " + std::to_string(bits));
  }
}

// QSGD codes: 1 sign bit + at least 1 level bit.
template <typename F>
MK_DISPATCH_INLINE decltype(auto) dispatch_qsgd_bits(int bits, F&& f) {
  switch (bits) {
    case 2: return f(IntC<2>{});
    case 4: return f(IntC<4>{});
    case 8: return f(IntC<8>{});
    default: throw std::invalid_argument("unsupported QSGD bit width " + std::to_string(bits));
  }
}

template <typename F>
MK_DISPATCH_INLINE decltype(auto) dispatch_rounding(int rounding, F&& f) {
  switch (rounding) {
    case kStochastic: return f(IntC<kStochastic>{});
    case kNearest: return f(IntC<kNearest>{});
    case kDither: return f(IntC<kDither>{});
    default: throw std::invalid_argument("unknown rounding " + std::to_string(rounding));
  }
}

// f(T{}) with T = float, Half16 or BFloat16.
template <typename F>
MK_DISPATCH_INLINE decltype(auto) dispatch_dtype(DType dt, F&& f) {
  switch (dt) {
    case DType::kFloat32: return f(float{});
    case DType::kFloat16: return f(Half16{});
    case DType::kBFloat16: return f(BFloat16{});
    default: throw std::invalid_argument("unsupported element type");
  }
}

}  // namespace moniqua_kernels
