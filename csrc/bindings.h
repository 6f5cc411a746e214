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

// Moniqua's float32 constants: B rounded to float32 and invB = 1.0f / B.
struct ModulusArgs {
  float b, inv_b;
  int bits, rounding;
};

inline ModulusArgs modulus_args(double modulus, int64_t bits, const std::string& rounding) {
  check_bits(bits, false);
  const float b = static_cast<float>(modulus);
  TORCH_CHECK(std::isfinite(b) && b > 0.0f, "modulus must be finite and > 0 in float32");
  return ModulusArgs{b, 1.0f / b, static_cast<int>(bits), parse_rounding(rounding)};
}

inline void check_payload(const at::Tensor& payload, int64_t n, int bits, const char* name) {
  MK_CHECK_DTYPE(payload, at::kByte);
  MK_CHECK_CONTIGUOUS(payload);
  TORCH_CHECK(payload.numel() == packed_nbytes(n, bits), name, " has ", payload.numel(),
              " bytes, ", n, " elements at ", bits, " bits need ", packed_nbytes(n, bits));
}

inline void check_mix_lists(int64_t npayloads, size_t nweights, size_t nseeds, size_t noffsets) {
  TORCH_CHECK(static_cast<int64_t>(nweights) == npayloads, "one weight per payload");
  TORCH_CHECK(static_cast<int64_t>(nseeds) == npayloads + 1 &&
                  static_cast<int64_t>(noffsets) == npayloads + 1,
              "seeds and offsets need len(payloads) + 1 entries");
}

}  // namespace moniqua_kernels
