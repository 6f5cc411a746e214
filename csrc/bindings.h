// Helpers shared by the CPU and CUDA bindings: argument decoding from the schemas'
// Python-level types into the kernels' plain parameters.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <string>

#include "moniqua_kernels/common.h"
#include "moniqua_kernels/packing.h"

namespace moniqua_kernels {

// The op names of the private namespace; the public ops (ops.py) validate arguments,
// these trust them apart from the checks below, which name the tensor at fault.
#define MK_CHECK_CONTIGUOUS(t) TORCH_CHECK((t).is_contiguous(), #t " must be contiguous")
#define MK_CHECK_DTYPE(t, dt) \
  TORCH_CHECK((t).scalar_type() == (dt), #t " must be ", (dt), ", got ", (t).scalar_type())

inline DType float_dtype(const at::Tensor& t, const char* name) {
  switch (t.scalar_type()) {
    case at::kFloat: return DType::kFloat32;
    case at::kHalf: return DType::kFloat16;
    case at::kBFloat16: return DType::kBFloat16;
    default: TORCH_CHECK(false, name, " must be float32, float16 or bfloat16, got ", t.scalar_type());
  }
}

inline int parse_rounding(const std::string& r) {
  if (r == "nearest") return kNearest;
  if (r == "dither") return kDither;
  TORCH_CHECK(r == "stochastic", "unknown rounding '", r, "'");
  return kStochastic;
}

inline void check_bits(int64_t bits, bool qsgd) {
  TORCH_CHECK(qsgd ? (bits == 2 || bits == 4 || bits == 8)
                   : (bits == 1 || bits == 2 || bits == 4 || bits == 8),
              "unsupported bits ", bits);
}

inline void check_offset(int64_t offset) {
  TORCH_CHECK(offset >= 0 && offset % 4 == 0, "offset must be a non-negative multiple of 4, got ",
              offset);
}

// ceil(ratio * 2^24) in double, exactly as the reference's Python computes it.
inline uint32_t randomk_threshold(double ratio) {
  return static_cast<uint32_t>(std::ceil(ratio * 16777216.0));
}

}  // namespace moniqua_kernels
