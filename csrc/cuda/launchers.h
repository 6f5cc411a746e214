// CUDA launchers: raw device pointers, element counts, a cudaStream_t; no torch headers,
// so nvcc compiles the .cu files standalone (CMakeLists.txt does, in CI, without a
// GPU).  Every launcher checks its launches and returns the first error; an unknown
// bit width or rounding throws std::invalid_argument (dispatch.h) before any launch.
//
// flag: the op's int64[3] error-flag row in device memory (common.h FlagSlot), or null
// to skip the checks.  Streams may point at a device tensor {seed, offset}.
// csrc/ops.cpp calls these after its checks, on torch's current stream.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "moniqua_kernels/common.h"

namespace moniqua_kernels {
namespace cuda {

// Most neighbour payloads one fused mix launch takes (they travel in the kernel's
// parameter block); ops.cpp refuses more with a clear message.
constexpr int kMaxMixPayloads = 32;

cudaError_t philox_uniform(float* out, int64_t n, Stream s, cudaStream_t st);
cudaError_t pack_bits(const uint8_t* codes, int64_t n, int bits, uint8_t* out, cudaStream_t st);
cudaError_t unpack_bits(const uint8_t* payload, int64_t n, int bits, uint8_t* out,
                        int64_t* flag, cudaStream_t st);

cudaError_t moniqua_encode(const void* x, DType dt, int64_t n, ModulusParams m, Stream s,
                           uint8_t* payload, int64_t* flag, cudaStream_t st);
cudaError_t moniqua_decode(const uint8_t* payload, const void* y, DType dt, int64_t n,
                           ModulusParams m, Stream s, void* out, int64_t* flag,
                           cudaStream_t st);

struct MixPayloads {
  int count;                                  // neighbour payloads, <= kMaxMixPayloads
  const uint8_t* payload[kMaxMixPayloads];
  float weight[kMaxMixPayloads];              // float32(w_j)
  Stream stream[kMaxMixPayloads];
  const uint8_t* own;
  Stream own_stream;
};
cudaError_t moniqua_mix(void* x, DType dt, int64_t n, const MixPayloads& p, ModulusParams m,
                        float gamma, int64_t* flag, cudaStream_t st);

// QSGD: scales and codes in one pass where d divides 4096 and is a multiple of 16 (the
// default 512), else scales (one block per piece of at most 8192 elements of a bucket),
// then codes.  workspace: qsgd_workspace_doubles(n, d) doubles of device memory (the
// pieces' statistics where a bucket has several; null where that is 0).
int64_t qsgd_workspace_doubles(int64_t n, int64_t bucket_size);
cudaError_t qsgd_encode(const void* x, DType dt, int64_t n, int bits, int64_t bucket_size,
                        bool norm_l2, Stream s, double* workspace, float* scales,
                        uint8_t* payload, int64_t* flag, cudaStream_t st);
cudaError_t qsgd_decode(const float* scales, const uint8_t* payload, int64_t n, int bits,
                        int64_t bucket_size, float* out, int64_t* flag, cudaStream_t st);

// Scaled sign.  workspace: sign_workspace_doubles() doubles of device memory; the
// per-block sums are added in a fixed order by one finishing block (deterministic).
int64_t sign_workspace_doubles();
cudaError_t sign_encode(const void* x, DType dt, int64_t n, double* workspace, float* scale,
                        uint8_t* payload, int64_t* flag, cudaStream_t st);
cudaError_t sign_decode(const float* scale, const uint8_t* payload, int64_t n, float* out,
                        int64_t* flag, cudaStream_t st);

// Random-k over chunks of kRandomkChunk elements.  randomk_prefix writes, per chunk,
// the number of kept elements before it (exclusive prefix; randomk_chunks(n) + 1
// entries, the last one the total) into `first` (device int64).  Streams here are
// host values (the output size depends on them: ops.cpp reads them first).
constexpr int64_t kRandomkChunk = 1024;
MK_HD inline int64_t randomk_chunks(int64_t n) { return (n + kRandomkChunk - 1) / kRandomkChunk; }
cudaError_t randomk_prefix(int64_t n, uint32_t threshold, Stream s, int64_t* first,
                           cudaStream_t st);
cudaError_t randomk_gather(const void* x, int elem_size, int64_t n, uint32_t threshold,
                           Stream s, const int64_t* first, void* values, cudaStream_t st);
cudaError_t randomk_scatter(const void* values, DType dt, int64_t n, uint32_t threshold,
                            Stream s, const int64_t* first, bool rescale, float inv_ratio,
                            void* out, cudaStream_t st);

}  // namespace cuda
}  // namespace moniqua_kernels
