// CUDA kernels of the moniqua_kernels_C ops: device guard, current stream, and a
// checked launcher call.  Compiled only when the extension is built with CUDA
// (setup.py adds csrc/cuda/*.cpp and defines MONIQUA_WITH_CUDA).
#include <c10/cuda/CUDAStream.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "bindings.h"
#include "cuda/launchers.h"

namespace moniqua_kernels {
namespace {

namespace kc = cuda;

#define MK_CHECK_CUDA(t) TORCH_CHECK((t).is_cuda(), #t " must be a CUDA tensor")
#define MK_LAUNCH(expr) C10_CUDA_CHECK(expr)

kc::StreamArg stream_arg(int64_t seed, int64_t offset) {
  check_offset(offset);
  return kc::StreamArg{static_cast<uint64_t>(seed), offset};
}

using Moniqua = ModulusArgs;

Moniqua moniqua_args(double modulus, int64_t bits, const std::string& rounding) {
  return modulus_args(modulus, bits, rounding);
}

void check_cuda_payload(const at::Tensor& payload, int64_t n, int bits, const char* name) {
  MK_CHECK_CUDA(payload);
  check_payload(payload, n, bits, name);
}

cudaStream_t current() { return c10::cuda::getCurrentCUDAStream(); }

void philox_uniform_cuda(at::Tensor& out, int64_t seed, int64_t offset) {
  MK_CHECK_CUDA(out);
  MK_CHECK_DTYPE(out, at::kFloat);
  MK_CHECK_CONTIGUOUS(out);
  const c10::cuda::CUDAGuard guard(out.device());
  MK_LAUNCH(kc::philox_uniform(out.data_ptr<float>(), out.numel(), stream_arg(seed, offset), current()));
}

at::Tensor pack_bits_cuda(const at::Tensor& codes, int64_t bits) {
  MK_CHECK_CUDA(codes);
  check_bits(bits, false);
  MK_CHECK_DTYPE(codes, at::kByte);
  MK_CHECK_CONTIGUOUS(codes);
  const c10::cuda::CUDAGuard guard(codes.device());
  const int64_t n = codes.numel();
  at::Tensor out = at::empty({packed_nbytes(n, static_cast<int>(bits))}, codes.options());
  MK_LAUNCH(kc::pack_bits(codes.data_ptr<uint8_t>(), n, static_cast<int>(bits), out.data_ptr<uint8_t>(), current()));
  return out;
}

at::Tensor unpack_bits_cuda(const at::Tensor& payload, int64_t bits, int64_t n) {
  check_bits(bits, false);
  check_cuda_payload(payload, n, static_cast<int>(bits), "payload");
  const c10::cuda::CUDAGuard guard(payload.device());
  at::Tensor out = at::empty({n}, payload.options());
  MK_LAUNCH(kc::unpack_bits(payload.data_ptr<uint8_t>(), n, static_cast<int>(bits), out.data_ptr<uint8_t>(), current()));
  return out;
}

at::Tensor moniqua_encode_cuda(const at::Tensor& x, double modulus, int64_t bits,
                               const std::string& rounding, int64_t seed, int64_t offset) {
  MK_CHECK_CUDA(x);
  MK_CHECK_CONTIGUOUS(x);
  const Moniqua a = moniqua_args(modulus, bits, rounding);
  const DType dt = float_dtype(x, "x");
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t n = x.numel();
  at::Tensor out = at::empty({packed_nbytes(n, a.bits)}, x.options().dtype(at::kByte));
  MK_LAUNCH(kc::moniqua_encode(x.data_ptr(), dt, n, a.b, a.inv_b, a.bits, a.rounding,
                               stream_arg(seed, offset), out.data_ptr<uint8_t>(), current()));
  return out;
}

at::Tensor moniqua_decode_cuda(const at::Tensor& payload, const at::Tensor& reference,
                               double modulus, int64_t bits, const std::string& rounding,
                               int64_t seed, int64_t offset) {
  MK_CHECK_CUDA(reference);
  MK_CHECK_CONTIGUOUS(reference);
  const Moniqua a = moniqua_args(modulus, bits, rounding);
  const DType dt = float_dtype(reference, "reference");
  const int64_t n = reference.numel();
  check_cuda_payload(payload, n, a.bits, "payload");
  const c10::cuda::CUDAGuard guard(reference.device());
  at::Tensor out = at::empty_like(reference, at::MemoryFormat::Contiguous);
  MK_LAUNCH(kc::moniqua_decode(payload.data_ptr<uint8_t>(), reference.data_ptr(), dt, n, a.b,
                               a.inv_b, a.bits, a.rounding, stream_arg(seed, offset),
                               out.data_ptr(), current()));
  return out;
}

void moniqua_mix_cuda(at::Tensor& x, at::TensorList payloads, at::ArrayRef<double> weights,
                      const at::Tensor& own_payload, double modulus, int64_t bits,
                      const std::string& rounding, double gamma, at::IntArrayRef seeds,
                      at::IntArrayRef offsets) {
  MK_CHECK_CUDA(x);
  MK_CHECK_CONTIGUOUS(x);
  const int64_t np = static_cast<int64_t>(payloads.size());
  TORCH_CHECK(np <= kc::kMaxMixPayloads, "the fused CUDA mix takes at most ",
              kc::kMaxMixPayloads, " neighbour payloads per call, got ", np,
              "; split the neighbours over several calls with gamma scaled accordingly, or "
              "use the reference/triton backend");
  check_mix_lists(np, weights.size(), seeds.size(), offsets.size());
  const Moniqua a = moniqua_args(modulus, bits, rounding);
  const int64_t n = x.numel();
  kc::MixPayloads p{};
  p.count = static_cast<int>(np);
  for (int64_t j = 0; j < np; ++j) {
    check_cuda_payload(payloads[j], n, a.bits, "payloads[j]");
    TORCH_CHECK(payloads[j].device() == x.device(), "payloads[j] must be on x's device");
    p.payload[j] = payloads[j].data_ptr<uint8_t>();
    p.weight[j] = static_cast<float>(weights[j]);
    p.stream[j] = stream_arg(seeds[j], offsets[j]);
  }
  check_cuda_payload(own_payload, n, a.bits, "own_payload");
  p.own = own_payload.data_ptr<uint8_t>();
  p.own_stream = stream_arg(seeds[np], offsets[np]);
  const DType dt = float_dtype(x, "x");
  const c10::cuda::CUDAGuard guard(x.device());
  MK_LAUNCH(kc::moniqua_mix(x.data_ptr(), dt, n, p, a.b, a.inv_b, a.bits, a.rounding,
                            static_cast<float>(gamma), current()));
}

std::tuple<at::Tensor, at::Tensor> qsgd_encode_cuda(const at::Tensor& x, int64_t bits,
                                                    int64_t bucket_size, const std::string& norm,
                                                    int64_t seed, int64_t offset) {
  MK_CHECK_CUDA(x);
  MK_CHECK_CONTIGUOUS(x);
  check_bits(bits, true);
  TORCH_CHECK(bucket_size >= 1, "bucket_size must be >= 1");
  TORCH_CHECK(norm == "max" || norm == "l2", "unknown norm '", norm, "'");
  const DType dt = float_dtype(x, "x");
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t n = x.numel();
  at::Tensor scales = at::empty({(n + bucket_size - 1) / bucket_size}, x.options().dtype(at::kFloat));
  at::Tensor payload = at::empty({packed_nbytes(n, static_cast<int>(bits))}, x.options().dtype(at::kByte));
  MK_LAUNCH(kc::qsgd_encode(x.data_ptr(), dt, n, static_cast<int>(bits), bucket_size, norm == "l2",
                            stream_arg(seed, offset), scales.data_ptr<float>(),
                            payload.data_ptr<uint8_t>(), current()));
  return {scales, payload};
}

at::Tensor qsgd_decode_cuda(const at::Tensor& scales, const at::Tensor& payload, int64_t n,
                            int64_t bits, int64_t bucket_size) {
  MK_CHECK_CUDA(scales);
  check_bits(bits, true);
  TORCH_CHECK(bucket_size >= 1, "bucket_size must be >= 1");
  MK_CHECK_DTYPE(scales, at::kFloat);
  MK_CHECK_CONTIGUOUS(scales);
  TORCH_CHECK(scales.numel() == (n + bucket_size - 1) / bucket_size, "one scale per bucket");
  check_cuda_payload(payload, n, static_cast<int>(bits), "payload");
  const c10::cuda::CUDAGuard guard(payload.device());
  at::Tensor out = at::empty({n}, payload.options().dtype(at::kFloat));
  MK_LAUNCH(kc::qsgd_decode(scales.data_ptr<float>(), payload.data_ptr<uint8_t>(), n,
                            static_cast<int>(bits), bucket_size, out.data_ptr<float>(), current()));
  return out;
}

std::tuple<at::Tensor, at::Tensor> sign_encode_cuda(const at::Tensor& x) {
  MK_CHECK_CUDA(x);
  MK_CHECK_CONTIGUOUS(x);
  const DType dt = float_dtype(x, "x");
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t n = x.numel();
  at::Tensor payload = at::empty({packed_nbytes(n, 1)}, x.options().dtype(at::kByte));
  at::Tensor scale = at::empty({}, x.options().dtype(at::kFloat));
  at::Tensor work = at::empty({std::max<int64_t>(1, kc::sign_workspace_doubles(n))},
                              x.options().dtype(at::kDouble));
  MK_LAUNCH(kc::sign_encode(x.data_ptr(), dt, n, work.data_ptr<double>(), scale.data_ptr<float>(),
                            payload.data_ptr<uint8_t>(), current()));
  return {scale, payload};
}

at::Tensor sign_decode_cuda(const at::Tensor& scale, const at::Tensor& payload, int64_t n) {
  MK_CHECK_CUDA(scale);
  MK_CHECK_DTYPE(scale, at::kFloat);
  TORCH_CHECK(scale.numel() == 1, "scale must have one element");
  check_cuda_payload(payload, n, 1, "payload");
  const c10::cuda::CUDAGuard guard(payload.device());
  at::Tensor out = at::empty({n}, payload.options().dtype(at::kFloat));
  const at::Tensor sc = scale.contiguous();
  MK_LAUNCH(kc::sign_decode(sc.data_ptr<float>(), payload.data_ptr<uint8_t>(), n,
                            out.data_ptr<float>(), current()));
  return out;
}

// Exclusive prefix of kept elements per chunk (device), and the total read back.
at::Tensor randomk_first(const at::Tensor& like, int64_t n, double ratio, int64_t seed,
                         int64_t offset) {
  at::Tensor first = at::empty({kc::randomk_chunks(n) + 1}, like.options().dtype(at::kLong));
  MK_LAUNCH(kc::randomk_prefix(n, randomk_threshold(ratio), stream_arg(seed, offset),
                               first.data_ptr<int64_t>(), current()));
  return first;
}

void randomk_count_cuda(at::Tensor& out, int64_t n, double ratio, int64_t seed, int64_t offset) {
  MK_CHECK_CUDA(out);
  MK_CHECK_DTYPE(out, at::kLong);
  TORCH_CHECK(out.numel() == 1, "out must have one element");
  const c10::cuda::CUDAGuard guard(out.device());
  const at::Tensor first = randomk_first(out, n, ratio, seed, offset);
  out.copy_(first[first.numel() - 1]);
}

at::Tensor randomk_encode_cuda(const at::Tensor& x, double ratio, int64_t seed, int64_t offset) {
  MK_CHECK_CUDA(x);
  MK_CHECK_CONTIGUOUS(x);
  float_dtype(x, "x");
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t n = x.numel();
  const at::Tensor first = randomk_first(x, n, ratio, seed, offset);
  const int64_t total = first[first.numel() - 1].item<int64_t>();  // the output size: a sync
  at::Tensor values = at::empty({total}, x.options());
  MK_LAUNCH(kc::randomk_gather(x.data_ptr(), static_cast<int>(x.element_size()), n,
                               randomk_threshold(ratio), stream_arg(seed, offset),
                               first.data_ptr<int64_t>(), values.data_ptr(), current()));
  return values;
}

at::Tensor randomk_decode_cuda(const at::Tensor& values, int64_t n, double ratio, int64_t seed,
                               int64_t offset, bool rescale) {
  MK_CHECK_CUDA(values);
  MK_CHECK_CONTIGUOUS(values);
  const DType dt = float_dtype(values, "values");
  const c10::cuda::CUDAGuard guard(values.device());
  const at::Tensor first = randomk_first(values, n, ratio, seed, offset);
  at::Tensor out = at::empty({n}, values.options());
  MK_LAUNCH(kc::randomk_scatter(values.data_ptr(), dt, n, randomk_threshold(ratio),
                                stream_arg(seed, offset), first.data_ptr<int64_t>(), rescale,
                                static_cast<float>(1.0 / ratio), out.data_ptr(), current()));
  return out;
}

}  // namespace
}  // namespace moniqua_kernels

TORCH_LIBRARY_IMPL(moniqua_kernels_C, CUDA, m) {
  using namespace moniqua_kernels;
  m.impl("philox_uniform_", &philox_uniform_cuda);
  m.impl("pack_bits", &pack_bits_cuda);
  m.impl("unpack_bits", &unpack_bits_cuda);
  m.impl("moniqua_encode", &moniqua_encode_cuda);
  m.impl("moniqua_decode", &moniqua_decode_cuda);
  m.impl("moniqua_mix_", &moniqua_mix_cuda);
  m.impl("qsgd_encode", &qsgd_encode_cuda);
  m.impl("qsgd_decode", &qsgd_decode_cuda);
  m.impl("sign_encode", &sign_encode_cuda);
  m.impl("sign_decode", &sign_decode_cuda);
  m.impl("randomk_count_", &randomk_count_cuda);
  m.impl("randomk_encode", &randomk_encode_cuda);
  m.impl("randomk_decode", &randomk_decode_cuda);
}
