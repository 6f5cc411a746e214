// The extension moniqua_kernels._C: the native kernels of the op table
// (moniqua_kernels/ops/_table.py), one function per op with exactly the schema's
// arguments, for CPU tensors and, when built with CUDA, CUDA tensors.
//
// Each op: its checks (the public wrappers validated already; these guard the raw
// pointers and name the tensor at fault), then the launch for the tensors' device.
// Outputs are allocated by the caller.  moniqua_kernels/_native.py registers these
// functions as the "cpu" and "cuda" kernels; tests/test_ops_table.py checks that their
// signatures are the schemas'.
// ATen and pybind11's tensor caster, not <torch/extension.h>: that header pulls in the
// whole C++ frontend (nn, optim, data), which nothing here uses.  Measured on the 2-core
// CI box: this file compiled in 27.5 s with it, 16.7 s without.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/csrc/utils/pybind.h>

#include <algorithm>
#include <atomic>
#if defined(__linux__)
#include <sys/mman.h>
#endif
#include <cmath>
#include <optional>
#include <string>
#include <vector>

#include "cpu/kernels.h"
#include "moniqua_kernels/moniqua_kernels.h"

#if defined(MONIQUA_WITH_CUDA)
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

#include "cuda/launchers.h"
#endif

namespace moniqua_kernels {
namespace {

using OptTensor = std::optional<at::Tensor>;

// ------------------------------------------------------------------------- checks

void check_tensor(const at::Tensor& t, const char* name, const at::Device& device,
                  std::optional<at::ScalarType> dtype = std::nullopt, int64_t numel = -1) {
  TORCH_CHECK(t.device() == device, name, " is on ", t.device(), " but the call runs on ",
              device);
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
  if (dtype) TORCH_CHECK(t.scalar_type() == *dtype, name, " must be ", *dtype, ", got ", t.scalar_type());
  if (numel >= 0) TORCH_CHECK(t.numel() == numel, name, " has ", t.numel(), " elements, expected ", numel);
}

DType float_dtype(const at::Tensor& t, const char* name) {
  switch (t.scalar_type()) {
    case at::kFloat: return DType::kFloat32;
    case at::kHalf: return DType::kFloat16;
    case at::kBFloat16: return DType::kBFloat16;
    default: TORCH_CHECK(false, name, " must be float32, float16 or bfloat16, got ", t.scalar_type());
  }
}

int parse_rounding(const std::string& r) {
  if (r == "nearest") return kNearest;
  if (r == "dither") return kDither;
  TORCH_CHECK(r == "stochastic", "unknown rounding '", r, "'");
  return kStochastic;
}

// B rounded to float32 and invB = 1.0f / B, once, as the reference does.
ModulusParams modulus_params(double modulus, int64_t bits, const std::string& rounding) {
  const float b = static_cast<float>(modulus);
  TORCH_CHECK(std::isfinite(b) && b > 0.0f && std::isfinite(1.0f / b),
              "modulus must be finite and > 0 in float32, with a finite 1/B");
  return ModulusParams{b, 1.0f / b, static_cast<int>(bits), parse_rounding(rounding)};
}

void check_payload(const at::Tensor& p, const char* name, const at::Device& device, int64_t n,
                   int bits) {
  check_tensor(p, name, device, at::kByte, packed_nbytes(n, bits));
}

// ceil(ratio * 2^24) in double, exactly as the reference's Python computes it.
uint32_t randomk_threshold(double ratio) {
  return static_cast<uint32_t>(std::ceil(ratio * 16777216.0));
}

// ------------------------------------------------------------------- flags, streams

int64_t* flag_ptr(const OptTensor& flag, const at::Device& device) {
  if (!flag) return nullptr;
  check_tensor(*flag, "flag", device, at::kLong, 3);
  return flag->data_ptr<int64_t>();
}

// CPU: add a count to a slot of the flag row (host memory).
void flag_add(int64_t* flag, int slot, int64_t count) {
  if (flag != nullptr && count) flag[slot] += count;
}

// CPU: the payload's padding bits must be zero.  True when they are not (flagged): the
// caller then writes nothing, so a refused mix leaves the model as it was (a corrupt
// payload once updated it, then raised).  One byte: checked before the kernel.
bool bad_padding_cpu(const at::Tensor& payload, int64_t n, int bits, int64_t* flag) {
  const uint32_t mask = padding_mask(n, bits);
  if (flag != nullptr && mask && (payload.data_ptr<uint8_t>()[payload.numel() - 1] & mask)) {
    flag_add(flag, kPadding, 1);
    return true;
  }
  return false;
}

// The stream of a call.  CPU: a stream tensor is read here (nullopt when its offset is
// refused: flagged).  CUDA: the kernel reads it.
std::optional<Stream> make_stream(int64_t seed, int64_t offset, const OptTensor& stream,
                                  const at::Device& device, int64_t* flag, int64_t row = 0) {
  TORCH_CHECK(offset >= 0 && offset % 4 == 0, "offset must be a non-negative multiple of 4");
  if (!stream) return Stream{static_cast<uint64_t>(seed), offset, nullptr};
  check_tensor(*stream, "stream", device, at::kLong);
  TORCH_CHECK(stream->numel() >= 2 * (row + 1), "stream tensor too small");
  const int64_t* p = stream->data_ptr<int64_t>() + 2 * row;
  if (device.is_cuda()) return Stream{0, 0, p};
  if (p[1] < 0 || p[1] % 4) {
    flag_add(flag, kBadStream, 1);
    return std::nullopt;
  }
  return Stream{static_cast<uint64_t>(p[0]), p[1], nullptr};
}

// ------------------------------------------------------------------------- CPU runs

// A large output is usually freshly mmap'ed memory: every 4 KiB page faults (and is
// zeroed) on first write.  Asking for transparent huge pages on the 2 MiB-aligned
// interior before the kernel writes it makes that 512x fewer faults; measured on the
// CI VM, torch.empty_like(x).copy_(x) of 2^24 floats cost 28 ms against 9 ms for the
// copy alone, and Moniqua decode went from 20 ms to ~10 ms (2 threads).  A hint only:
// where THP is off or the range is small, nothing changes; on reused memory, no harm.
void advise_huge_pages(const at::Tensor& out) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t{1} << 21;
  const size_t nbytes = out.nbytes();
  if (out.is_cpu() && nbytes >= 4 * kHuge) {
    const uintptr_t begin = reinterpret_cast<uintptr_t>(out.data_ptr());
    const uintptr_t lo = (begin + kHuge - 1) & ~(kHuge - 1);
    const uintptr_t hi = (begin + nbytes) & ~(kHuge - 1);
    if (hi > lo) madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_HUGEPAGE);
  }
#endif
}

// Blocks per task: 16 blocks (16 Ki elements) keep small calls on one thread, where
// waking the pool costs more than the work.
constexpr int64_t kGrain = 16;

// f(b0, b1) -> int64 count over the kernel blocks of n elements; returns the sum.
template <typename F>
int64_t over_blocks(int64_t n, F&& f) {
  const int64_t nb = cpu::num_blocks(n);
  std::atomic<int64_t> total{0};
  if (nb > 0)
    at::parallel_for(0, nb, kGrain, [&](int64_t b0, int64_t b1) { total += f(b0, b1); });
  return total.load();
}

#if defined(MONIQUA_WITH_CUDA)
cudaStream_t current_stream() { return at::cuda::getCurrentCUDAStream(); }
#define MK_CUDA_ONLY(expr) expr
#define MK_CUDA_LAUNCH(expr) C10_CUDA_CHECK(expr)
#else
#define MK_CUDA_ONLY(expr)
#define MK_CUDA_LAUNCH(expr) TORCH_CHECK(false, "moniqua_kernels._C was built without CUDA")
#endif

// Run `cpu` on CPU tensors, `gpu` (under the device's guard) on CUDA tensors.
template <typename Cpu, typename Gpu>
void on_device(const at::Device& device, Cpu&& cpu_run, Gpu&& gpu_run) {
  if (device.is_cpu()) {
    cpu_run();
    return;
  }
  TORCH_CHECK(device.is_cuda(), "moniqua_kernels._C serves CPU and CUDA tensors, not ", device);
  MK_CUDA_ONLY(const c10::cuda::CUDAGuard guard(device));
  gpu_run();
}

// -------------------------------------------------------------------------- the ops

void philox_uniform(int64_t seed, int64_t offset, OptTensor stream, at::Tensor out) {
  const at::Device dev = out.device();
  check_tensor(out, "out", dev, at::kFloat);
  const auto s = make_stream(seed, offset, stream, dev, nullptr);
  if (!s) return;
  const int64_t n = out.numel();
  float* o = out.data_ptr<float>();
  on_device(dev, [&] {
    advise_huge_pages(out);
    over_blocks(n, [&](int64_t b0, int64_t b1) { cpu::philox_uniform(n, *s, o, b0, b1); return int64_t{0}; });
  }, [&] { MK_CUDA_LAUNCH(cuda::philox_uniform(o, n, *s, current_stream())); });
}

void pack_bits(at::Tensor codes, int64_t bits, at::Tensor out) {
  const at::Device dev = codes.device();
  check_tensor(codes, "codes", dev, at::kByte);
  const int64_t n = codes.numel();
  check_payload(out, "out", dev, n, static_cast<int>(bits));
  const uint8_t* c = codes.data_ptr<uint8_t>();
  uint8_t* o = out.data_ptr<uint8_t>();
  on_device(dev, [&] {
    over_blocks(n, [&](int64_t b0, int64_t b1) {
      cpu::pack_bits(c, n, static_cast<int>(bits), o, b0, b1);
      return int64_t{0};
    });
  }, [&] { MK_CUDA_LAUNCH(cuda::pack_bits(c, n, static_cast<int>(bits), o, current_stream())); });
}

void unpack_bits(at::Tensor payload, int64_t bits, at::Tensor out, OptTensor flag) {
  const at::Device dev = payload.device();
  check_tensor(out, "out", dev, at::kByte);
  const int64_t n = out.numel();
  check_payload(payload, "payload", dev, n, static_cast<int>(bits));
  int64_t* f = flag_ptr(flag, dev);
  const uint8_t* p = payload.data_ptr<uint8_t>();
  uint8_t* o = out.data_ptr<uint8_t>();
  on_device(dev, [&] {
    if (bad_padding_cpu(payload, n, static_cast<int>(bits), f)) return;
    over_blocks(n, [&](int64_t b0, int64_t b1) {
      cpu::unpack_bits(p, n, static_cast<int>(bits), o, b0, b1);
      return int64_t{0};
    });
  }, [&] { MK_CUDA_LAUNCH(cuda::unpack_bits(p, n, static_cast<int>(bits), o, f, current_stream())); });
}

void moniqua_encode(at::Tensor x, double modulus, int64_t bits, std::string rounding,
                    int64_t seed, int64_t offset, OptTensor stream, at::Tensor out,
                    OptTensor flag) {
  const at::Device dev = x.device();
  check_tensor(x, "x", dev);
  const DType dt = float_dtype(x, "x");
  const ModulusParams m = modulus_params(modulus, bits, rounding);
  const int64_t n = x.numel();
  check_payload(out, "out", dev, n, m.bits);
  int64_t* f = flag_ptr(flag, dev);
  const auto s = make_stream(seed, offset, stream, dev, f);
  if (!s) return;
  const void* xp = x.data_ptr();
  uint8_t* o = out.data_ptr<uint8_t>();
  on_device(dev, [&] {
    flag_add(f, kNonFinite, over_blocks(n, [&](int64_t b0, int64_t b1) {
      return cpu::moniqua_encode(xp, dt, n, m, *s, o, f != nullptr, b0, b1);
    }));
  }, [&] { MK_CUDA_LAUNCH(cuda::moniqua_encode(xp, dt, n, m, *s, o, f, current_stream())); });
}

void moniqua_decode(at::Tensor payload, at::Tensor reference, double modulus, int64_t bits,
                    std::string rounding, int64_t seed, int64_t offset, OptTensor stream,
                    at::Tensor out, OptTensor flag) {
  const at::Device dev = reference.device();
  check_tensor(reference, "reference", dev);
  const DType dt = float_dtype(reference, "reference");
  const ModulusParams m = modulus_params(modulus, bits, rounding);
  const int64_t n = reference.numel();
  check_payload(payload, "payload", dev, n, m.bits);
  check_tensor(out, "out", dev, reference.scalar_type(), n);
  int64_t* f = flag_ptr(flag, dev);
  const auto s = make_stream(seed, offset, stream, dev, f);
  if (!s) return;
  const uint8_t* p = payload.data_ptr<uint8_t>();
  const void* y = reference.data_ptr();
  void* o = out.data_ptr();
  on_device(dev, [&] {
    if (bad_padding_cpu(payload, n, m.bits, f)) return;
    advise_huge_pages(out);
    flag_add(f, kNonFinite, over_blocks(n, [&](int64_t b0, int64_t b1) {
      return cpu::moniqua_decode(p, y, dt, n, m, *s, o, f != nullptr, b0, b1);
    }));
  }, [&] { MK_CUDA_LAUNCH(cuda::moniqua_decode(p, y, dt, n, m, *s, o, f, current_stream())); });
}

void moniqua_mix_(at::Tensor x, std::vector<at::Tensor> payloads, std::vector<double> weights,
                  at::Tensor own_payload, double modulus, int64_t bits, std::string rounding,
                  double gamma, std::vector<int64_t> seeds, std::vector<int64_t> offsets,
                  OptTensor streams, OptTensor flag) {
  const at::Device dev = x.device();
  check_tensor(x, "x", dev);
  const DType dt = float_dtype(x, "x");
  const ModulusParams m = modulus_params(modulus, bits, rounding);
  const int64_t n = x.numel(), np = static_cast<int64_t>(payloads.size());
  TORCH_CHECK(static_cast<int64_t>(weights.size()) == np, "one weight per payload");
  TORCH_CHECK(static_cast<int64_t>(seeds.size()) == np + 1 &&
                  static_cast<int64_t>(offsets.size()) == np + 1,
              "seeds and offsets need len(payloads) + 1 entries");
  for (const auto& p : payloads) check_payload(p, "payloads[j]", dev, n, m.bits);
  check_payload(own_payload, "own_payload", dev, n, m.bits);
  int64_t* f = flag_ptr(flag, dev);
  std::vector<Stream> st;
  for (int64_t j = 0; j <= np; ++j) {
    const auto s = make_stream(seeds[j], offsets[j], streams, dev, f, j);
    if (!s) return;
    st.push_back(*s);
  }
  on_device(dev, [&] {
    bool bad = bad_padding_cpu(own_payload, n, m.bits, f);
    for (const auto& p : payloads) bad = bad_padding_cpu(p, n, m.bits, f) || bad;
    if (bad) return;
    std::vector<const uint8_t*> ptrs;
    std::vector<float> w;
    for (int64_t j = 0; j < np; ++j) {
      ptrs.push_back(payloads[j].data_ptr<uint8_t>());
      w.push_back(static_cast<float>(weights[j]));
    }
    const cpu::MixArgs a{m,   np, ptrs.data(), w.data(), own_payload.data_ptr<uint8_t>(),
                         static_cast<float>(gamma), st.data(), f != nullptr};
    void* xp = x.data_ptr();
    flag_add(f, kNonFinite, over_blocks(n, [&](int64_t b0, int64_t b1) {
      return cpu::moniqua_mix(xp, dt, n, a, b0, b1);
    }));
  }, [&] {
#if defined(MONIQUA_WITH_CUDA)
    TORCH_CHECK(np <= cuda::kMaxMixPayloads, "the fused CUDA mix takes at most ",
                cuda::kMaxMixPayloads, " neighbour payloads per call, got ", np,
                "; split the neighbours over several calls, or use the triton backend");
    cuda::MixPayloads p{};
    p.count = static_cast<int>(np);
    for (int64_t j = 0; j < np; ++j) {
      p.payload[j] = payloads[j].data_ptr<uint8_t>();
      p.weight[j] = static_cast<float>(weights[j]);
      p.stream[j] = st[j];
    }
    p.own = own_payload.data_ptr<uint8_t>();
    p.own_stream = st[np];
    MK_CUDA_LAUNCH(cuda::moniqua_mix(x.data_ptr(), dt, n, p, m, static_cast<float>(gamma), f,
                                     current_stream()));
#endif
  });
}

// QSGD's scales on the CPU (cpu/kernels.h): the pieces over the threads, about kGrain
// blocks of elements a task, then buckets of several pieces finished; non-finite
// elements flagged.
void qsgd_scales_cpu(const void* x, DType dt, int64_t n, int64_t bucket_size, bool l2,
                     float* scales, int64_t* flag) {
  const int64_t nq = (n + bucket_size - 1) / bucket_size;
  if (nq == 0) return;
  const int64_t pieces = cpu::qsgd_scale_pieces(bucket_size);
  const int64_t piece_elems = std::min(bucket_size, cpu::kScalePiece);
  std::vector<double> stat(pieces > 1 ? static_cast<size_t>(nq * pieces) : 0);
  std::atomic<int64_t> bad{0};
  at::parallel_for(0, nq * pieces, std::max<int64_t>(1, kGrain * cpu::kBlock / piece_elems),
                   [&](int64_t p0, int64_t p1) {
    bad += cpu::qsgd_piece_stats(x, dt, n, bucket_size, l2, stat.data(), scales,
                                 flag != nullptr, p0, p1);
  });
  flag_add(flag, kNonFinite, bad.load());
  if (pieces > 1)
    at::parallel_for(0, nq, 1, [&](int64_t q0, int64_t q1) {
      cpu::qsgd_finish_scales(stat.data(), pieces, l2, scales, q0, q1);
    });
}

// QSGD's scales and codes on the CPU (packed into out, or one byte per element):
// in one pass over chunks of whole buckets where cpu::qsgd_chunk_blocks allows, else
// the scales, then the codes.
void qsgd_encode_cpu(const void* x, DType dt, int64_t n, int bits, int64_t bucket_size, bool l2,
                     const Stream& s, float* scales, uint8_t* out, bool pack, int64_t* flag) {
  const int64_t chunk_blocks = cpu::qsgd_chunk_blocks(bucket_size);
  if (chunk_blocks > 0) {
    const int64_t chunks = cpu::qsgd_num_chunks(n, bucket_size);
    std::atomic<int64_t> bad{0};
    if (chunks > 0)
      at::parallel_for(0, chunks, std::max<int64_t>(1, kGrain / chunk_blocks),
                       [&](int64_t c0, int64_t c1) {
        bad += cpu::qsgd_encode_chunks(x, dt, n, bits, bucket_size, l2, scales, s, out, pack,
                                       flag != nullptr, c0, c1);
      });
    flag_add(flag, kNonFinite, bad.load());
    return;
  }
  qsgd_scales_cpu(x, dt, n, bucket_size, l2, scales, flag);
  over_blocks(n, [&](int64_t b0, int64_t b1) {
    if (pack) cpu::qsgd_encode(x, dt, n, bits, bucket_size, scales, s, out, b0, b1);
    else cpu::qsgd_codes(x, dt, n, bits, bucket_size, scales, s, out, b0, b1);
    return int64_t{0};
  });
}

void qsgd_encode(at::Tensor x, int64_t bits, int64_t bucket_size, std::string norm, int64_t seed,
                 int64_t offset, OptTensor stream, at::Tensor scales, at::Tensor payload,
                 OptTensor flag) {
  const at::Device dev = x.device();
  check_tensor(x, "x", dev);
  const DType dt = float_dtype(x, "x");
  TORCH_CHECK(bucket_size >= 1, "bucket_size must be >= 1");
  TORCH_CHECK(norm == "max" || norm == "l2", "unknown norm '", norm, "'");
  const bool l2 = norm == "l2";
  const int64_t n = x.numel(), nq = (n + bucket_size - 1) / bucket_size;
  check_tensor(scales, "scales", dev, at::kFloat, nq);
  check_payload(payload, "payload", dev, n, static_cast<int>(bits));
  int64_t* f = flag_ptr(flag, dev);
  const auto s = make_stream(seed, offset, stream, dev, f);
  if (!s) return;
  const void* xp = x.data_ptr();
  float* sc = scales.data_ptr<float>();
  uint8_t* o = payload.data_ptr<uint8_t>();
  on_device(dev, [&] {
    qsgd_encode_cpu(xp, dt, n, static_cast<int>(bits), bucket_size, l2, *s, sc, o, true, f);
  }, [&] {
#if defined(MONIQUA_WITH_CUDA)
    const int64_t work_doubles = cuda::qsgd_workspace_doubles(n, bucket_size);
    at::Tensor work = at::empty({work_doubles}, x.options().dtype(at::kDouble));
    MK_CUDA_LAUNCH(cuda::qsgd_encode(xp, dt, n, static_cast<int>(bits), bucket_size, l2, *s,
                                     work_doubles ? work.data_ptr<double>() : nullptr, sc, o, f,
                                     current_stream()));
#endif
  });
}

void qsgd_decode(at::Tensor scales, at::Tensor payload, int64_t bits, int64_t bucket_size,
                 at::Tensor out, OptTensor flag) {
  const at::Device dev = scales.device();
  TORCH_CHECK(bucket_size >= 1, "bucket_size must be >= 1");
  check_tensor(out, "out", dev, at::kFloat);
  const int64_t n = out.numel();
  check_tensor(scales, "scales", dev, at::kFloat, (n + bucket_size - 1) / bucket_size);
  check_payload(payload, "payload", dev, n, static_cast<int>(bits));
  int64_t* f = flag_ptr(flag, dev);
  const float* sc = scales.data_ptr<float>();
  const uint8_t* p = payload.data_ptr<uint8_t>();
  float* o = out.data_ptr<float>();
  on_device(dev, [&] {
    if (bad_padding_cpu(payload, n, static_cast<int>(bits), f)) return;
    advise_huge_pages(out);
    over_blocks(n, [&](int64_t b0, int64_t b1) {
      cpu::qsgd_decode(sc, p, n, static_cast<int>(bits), bucket_size, o, b0, b1);
      return int64_t{0};
    });
  }, [&] {
    MK_CUDA_LAUNCH(cuda::qsgd_decode(sc, p, n, static_cast<int>(bits), bucket_size, o, f,
                                     current_stream()));
  });
}

// Elias-coded QSGD: CPU only (the table routes CUDA tensors to the reference).  Scales
// and per-element codes as qsgd_encode's, each bucket's bit count, their prefix sum,
// then the stream, written by bucket ranges in parallel.
at::Tensor qsgd_elias_encode(at::Tensor x, int64_t bits, int64_t bucket_size, std::string norm,
                             int64_t seed, int64_t offset, OptTensor stream, at::Tensor scales,
                             OptTensor flag) {
  const at::Device dev = x.device();
  TORCH_CHECK(dev.is_cpu(), "qsgd_elias_encode: the native kernel serves CPU tensors");
  check_tensor(x, "x", dev);
  const DType dt = float_dtype(x, "x");
  TORCH_CHECK(bucket_size >= 1, "bucket_size must be >= 1");
  TORCH_CHECK(norm == "max" || norm == "l2", "unknown norm '", norm, "'");
  const bool l2 = norm == "l2";
  const int b = static_cast<int>(bits);
  const int64_t n = x.numel(), nq = (n + bucket_size - 1) / bucket_size;
  check_tensor(scales, "scales", dev, at::kFloat, nq);
  int64_t* f = flag_ptr(flag, dev);
  const auto s = make_stream(seed, offset, stream, dev, f);
  if (!s) return at::empty({0}, x.options().dtype(at::kByte));
  const void* xp = x.data_ptr();
  float* sc = scales.data_ptr<float>();
  at::Tensor codes = at::empty({n}, x.options().dtype(at::kByte));
  uint8_t* c = codes.data_ptr<uint8_t>();
  qsgd_encode_cpu(xp, dt, n, b, bucket_size, l2, *s, sc, c, false, f);
  // Buckets per task below: about kGrain blocks of elements.
  const int64_t grain = std::max<int64_t>(1, kGrain * cpu::kBlock / bucket_size);
  std::vector<int64_t> first(nq + 1, 0);  // bucket q's first bit; first[nq]: the total
  if (nq > 0)
    at::parallel_for(0, nq, grain, [&](int64_t q0, int64_t q1) {
      cpu::elias_bucket_bits(c, n, b, bucket_size, sc, first.data() + 1 + q0, q0, q1);
    });
  for (int64_t q = 0; q < nq; ++q) first[q + 1] += first[q];
  at::Tensor out = at::zeros({(first[nq] + 7) / 8}, x.options().dtype(at::kByte));
  uint8_t* o = out.data_ptr<uint8_t>();
  if (nq > 0)
    at::parallel_for(0, nq, grain, [&](int64_t q0, int64_t q1) {
      cpu::elias_write(c, n, b, bucket_size, sc, o, first[q0], q0, q1);
    });
  return out;
}

void qsgd_elias_decode(at::Tensor scales, at::Tensor payload, int64_t bits, int64_t bucket_size,
                       at::Tensor out, OptTensor flag) {
  const at::Device dev = scales.device();
  TORCH_CHECK(dev.is_cpu(), "qsgd_elias_decode: the native kernel serves CPU tensors");
  TORCH_CHECK(bucket_size >= 1, "bucket_size must be >= 1");
  check_tensor(out, "out", dev, at::kFloat);
  const int64_t n = out.numel();
  check_tensor(scales, "scales", dev, at::kFloat, (n + bucket_size - 1) / bucket_size);
  check_tensor(payload, "payload", dev, at::kByte);
  int64_t* f = flag_ptr(flag, dev);
  const bool ok = cpu::elias_decode(scales.data_ptr<float>(), payload.data_ptr<uint8_t>(),
                                    payload.numel(), n, static_cast<int>(bits), bucket_size,
                                    out.data_ptr<float>());
  if (!ok) {
    TORCH_CHECK(f != nullptr, "qsgd_elias_decode: the stream does not parse");
    flag_add(f, kPadding, 1);
  }
}

void sign_encode(at::Tensor x, at::Tensor scale, at::Tensor payload, OptTensor flag) {
  const at::Device dev = x.device();
  check_tensor(x, "x", dev);
  const DType dt = float_dtype(x, "x");
  const int64_t n = x.numel();
  check_tensor(scale, "scale", dev, at::kFloat, 1);
  check_payload(payload, "payload", dev, n, 1);
  int64_t* f = flag_ptr(flag, dev);
  const void* xp = x.data_ptr();
  uint8_t* o = payload.data_ptr<uint8_t>();
  on_device(dev, [&] {
    std::vector<double> sums(static_cast<size_t>(cpu::num_blocks(n)));
    over_blocks(n, [&](int64_t b0, int64_t b1) {
      cpu::sign_encode(xp, dt, n, o, sums.data() + b0, b0, b1);
      return int64_t{0};
    });
    double total = 0.0;  // block order: the same scale for every thread count
    for (double v : sums) total += v;
    *scale.data_ptr<float>() = n ? static_cast<float>(total) / static_cast<float>(n) : 0.0f;
    if (f != nullptr && !std::isfinite(total))  // rare: count the NaN/inf elements
      flag_add(f, kNonFinite, cpu::count_non_finite(xp, dt, 0, n));
  }, [&] {
#if defined(MONIQUA_WITH_CUDA)
    at::Tensor work = at::empty({cuda::sign_workspace_doubles()}, x.options().dtype(at::kDouble));
    MK_CUDA_LAUNCH(cuda::sign_encode(xp, dt, n, work.data_ptr<double>(), scale.data_ptr<float>(),
                                     o, f, current_stream()));
#endif
  });
}

void sign_decode(at::Tensor scale, at::Tensor payload, at::Tensor out, OptTensor flag) {
  const at::Device dev = scale.device();
  check_tensor(scale, "scale", dev, at::kFloat, 1);
  check_tensor(out, "out", dev, at::kFloat);
  const int64_t n = out.numel();
  check_payload(payload, "payload", dev, n, 1);
  int64_t* f = flag_ptr(flag, dev);
  const uint8_t* p = payload.data_ptr<uint8_t>();
  float* o = out.data_ptr<float>();
  on_device(dev, [&] {
    if (bad_padding_cpu(payload, n, 1, f)) return;
    advise_huge_pages(out);
    const float sc = *scale.data_ptr<float>();
    over_blocks(n, [&](int64_t b0, int64_t b1) {
      cpu::sign_decode(sc, p, n, o, b0, b1);
      return int64_t{0};
    });
  }, [&] {
    MK_CUDA_LAUNCH(cuda::sign_decode(scale.data_ptr<float>(), p, n, o, f, current_stream()));
  });
}

// Random-k, CPU: kept elements per block and their exclusive prefix.
std::vector<int64_t> randomk_prefix_cpu(int64_t n, uint32_t threshold, Stream s, int64_t* total) {
  const int64_t nb = cpu::num_blocks(n);
  std::vector<int64_t> counts(static_cast<size_t>(nb) + 1, 0);
  over_blocks(n, [&](int64_t b0, int64_t b1) {
    cpu::randomk_block_counts(n, threshold, s, counts.data() + b0, b0, b1);
    return int64_t{0};
  });
  int64_t acc = 0;
  for (int64_t b = 0; b < nb; ++b) {
    const int64_t c = counts[b];
    counts[b] = acc;
    acc += c;
  }
  counts[nb] = acc;
  *total = acc;
  return counts;
}

#if defined(MONIQUA_WITH_CUDA)
// Random-k, CUDA: the exclusive prefix of kept elements per chunk, on the device.
at::Tensor randomk_first_cuda(const at::Tensor& like, int64_t n, uint32_t thr, Stream s) {
  at::Tensor first = at::empty({cuda::randomk_chunks(n) + 1}, like.options().dtype(at::kLong));
  MK_CUDA_LAUNCH(cuda::randomk_prefix(n, thr, s, first.data_ptr<int64_t>(), current_stream()));
  return first;
}
#endif

void randomk_count(int64_t n, double ratio, int64_t seed, int64_t offset, at::Tensor out) {
  const at::Device dev = out.device();
  check_tensor(out, "out", dev, at::kLong, 1);
  const Stream s = *make_stream(seed, offset, std::nullopt, dev, nullptr);
  const uint32_t thr = randomk_threshold(ratio);
  on_device(dev, [&] {
    int64_t total = 0;
    randomk_prefix_cpu(n, thr, s, &total);
    *out.data_ptr<int64_t>() = total;
  }, [&] {
#if defined(MONIQUA_WITH_CUDA)
    const at::Tensor first = randomk_first_cuda(out, n, thr, s);
    out.copy_(first[first.numel() - 1]);
#endif
  });
}

at::Tensor randomk_encode(at::Tensor x, double ratio, int64_t seed, int64_t offset,
                          OptTensor flag) {
  const at::Device dev = x.device();
  check_tensor(x, "x", dev);
  float_dtype(x, "x");
  const int64_t n = x.numel();
  const uint32_t thr = randomk_threshold(ratio);
  const Stream s = *make_stream(seed, offset, std::nullopt, dev, nullptr);
  const int es = static_cast<int>(x.element_size());
  at::Tensor values;
  on_device(dev, [&] {
    int64_t total = 0;
    const std::vector<int64_t> first = randomk_prefix_cpu(n, thr, s, &total);
    values = at::empty({total}, x.options());
    void* v = values.data_ptr();
    over_blocks(n, [&](int64_t b0, int64_t b1) {
      cpu::randomk_gather(x.data_ptr(), es, n, thr, s, v, first[b0], b0, b1);
      return int64_t{0};
    });
  }, [&] {
#if defined(MONIQUA_WITH_CUDA)
    const at::Tensor first = randomk_first_cuda(x, n, thr, s);
    const int64_t total = first[first.numel() - 1].item<int64_t>();  // the output size: a sync
    values = at::empty({total}, x.options());
    MK_CUDA_LAUNCH(cuda::randomk_gather(x.data_ptr(), es, n, thr, s, first.data_ptr<int64_t>(),
                                        values.data_ptr(), current_stream()));
#endif
  });
  if (flag && values.numel()) {  // only the kept values travel: check those
    const at::Tensor bad = values.isfinite().logical_not().sum();
    flag->select(0, kNonFinite).add_(bad);
  }
  return values;
}

void randomk_decode(at::Tensor values, double ratio, int64_t seed, int64_t offset, bool rescale,
                    at::Tensor out) {
  const at::Device dev = values.device();
  check_tensor(values, "values", dev);
  const DType dt = float_dtype(values, "values");
  check_tensor(out, "out", dev, values.scalar_type());
  const int64_t n = out.numel();
  const uint32_t thr = randomk_threshold(ratio);
  const Stream s = *make_stream(seed, offset, std::nullopt, dev, nullptr);
  const float inv = static_cast<float>(1.0 / ratio);
  on_device(dev, [&] {
    int64_t total = 0;
    const std::vector<int64_t> first = randomk_prefix_cpu(n, thr, s, &total);
    TORCH_CHECK(values.numel() == total, "values has ", values.numel(),
                " elements, the stream keeps ", total);
    advise_huge_pages(out);
    over_blocks(n, [&](int64_t b0, int64_t b1) {
      cpu::randomk_scatter(values.data_ptr(), dt, n, thr, s, rescale, inv, out.data_ptr(),
                           first[b0], b0, b1);
      return int64_t{0};
    });
  }, [&] {
#if defined(MONIQUA_WITH_CUDA)
    const at::Tensor first = randomk_first_cuda(values, n, thr, s);
    MK_CUDA_LAUNCH(cuda::randomk_scatter(values.data_ptr(), dt, n, thr, s,
                                         first.data_ptr<int64_t>(), rescale, inv, out.data_ptr(),
                                         current_stream()));
#endif
  });
}

// Top-k (CPU only: the cuda backend serves it with torch's GPU sort, _native.py).
void topk_encode(at::Tensor x, double ratio, at::Tensor indices, at::Tensor values,
                 OptTensor flag) {
  const at::Device dev = x.device();
  TORCH_CHECK(dev.is_cpu(), "the native top-k kernel serves CPU tensors");
  check_tensor(x, "x", dev);
  const DType dt = float_dtype(x, "x");
  const int64_t n = x.numel(), k = indices.numel();
  check_tensor(indices, "indices", dev);
  check_tensor(values, "values", dev, x.scalar_type(), k);
  at::Tensor idx64 = at::empty({k}, x.options().dtype(at::kLong));
  cpu::topk_select(x.data_ptr(), dt, n, k, idx64.data_ptr<int64_t>());
  values.copy_(x.reshape({-1}).index_select(0, idx64));
  indices.copy_(idx64);
  if (flag && k) {  // NaN/inf sort as the largest |x|: they are among the selected
    int64_t* f = flag_ptr(flag, dev);
    flag_add(f, kNonFinite, values.isfinite().logical_not().sum().item<int64_t>());
  }
}

void topk_decode(at::Tensor indices, at::Tensor values, at::Tensor out) {
  const at::Device dev = values.device();
  TORCH_CHECK(indices.numel() == values.numel(), "indices and values must pair up");
  check_tensor(out, "out", dev, values.scalar_type());
  out.zero_();
  if (indices.numel()) out.index_put_({indices.to(at::kLong)}, values);
}

}  // namespace
}  // namespace moniqua_kernels

PYBIND11_MODULE(_C, m) {
  namespace mk = moniqua_kernels;
  namespace py = pybind11;
  m.doc() = "Native kernels of the moniqua_kernels op table (CPU; CUDA when built with it)";
  m.def("isa", [] { return std::string(mk::cpu::isa_name()); },
        "The instruction set the CPU kernels were dispatched to");
  m.def("with_cuda", [] {
#if defined(MONIQUA_WITH_CUDA)
    return true;
#else
    return false;
#endif
  });
  // The argument names are the schemas' (checked by tests/test_ops_table.py).
  m.def("philox_uniform", &mk::philox_uniform, py::arg("seed"), py::arg("offset"),
        py::arg("stream"), py::arg("out"));
  m.def("pack_bits", &mk::pack_bits, py::arg("codes"), py::arg("bits"), py::arg("out"));
  m.def("unpack_bits", &mk::unpack_bits, py::arg("payload"), py::arg("bits"), py::arg("out"),
        py::arg("flag"));
  m.def("moniqua_encode", &mk::moniqua_encode, py::arg("x"), py::arg("modulus"), py::arg("bits"),
        py::arg("rounding"), py::arg("seed"), py::arg("offset"), py::arg("stream"),
        py::arg("out"), py::arg("flag"));
  m.def("moniqua_decode", &mk::moniqua_decode, py::arg("payload"), py::arg("reference"),
        py::arg("modulus"), py::arg("bits"), py::arg("rounding"), py::arg("seed"),
        py::arg("offset"), py::arg("stream"), py::arg("out"), py::arg("flag"));
  m.def("moniqua_mix_", &mk::moniqua_mix_, py::arg("x"), py::arg("payloads"), py::arg("weights"),
        py::arg("own_payload"), py::arg("modulus"), py::arg("bits"), py::arg("rounding"),
        py::arg("gamma"), py::arg("seeds"), py::arg("offsets"), py::arg("streams"),
        py::arg("flag"));
  m.def("qsgd_encode", &mk::qsgd_encode, py::arg("x"), py::arg("bits"), py::arg("bucket_size"),
        py::arg("norm"), py::arg("seed"), py::arg("offset"), py::arg("stream"),
        py::arg("scales"), py::arg("payload"), py::arg("flag"));
  m.def("qsgd_decode", &mk::qsgd_decode, py::arg("scales"), py::arg("payload"), py::arg("bits"),
        py::arg("bucket_size"), py::arg("out"), py::arg("flag"));
  m.def("qsgd_elias_encode", &mk::qsgd_elias_encode, py::arg("x"), py::arg("bits"),
        py::arg("bucket_size"), py::arg("norm"), py::arg("seed"), py::arg("offset"),
        py::arg("stream"), py::arg("scales"), py::arg("flag"));
  m.def("qsgd_elias_decode", &mk::qsgd_elias_decode, py::arg("scales"), py::arg("payload"),
        py::arg("bits"), py::arg("bucket_size"), py::arg("out"), py::arg("flag"));
  m.def("sign_encode", &mk::sign_encode, py::arg("x"), py::arg("scale"), py::arg("payload"),
        py::arg("flag"));
  m.def("sign_decode", &mk::sign_decode, py::arg("scale"), py::arg("payload"), py::arg("out"),
        py::arg("flag"));
  m.def("randomk_count", &mk::randomk_count, py::arg("n"), py::arg("ratio"), py::arg("seed"),
        py::arg("offset"), py::arg("out"));
  m.def("randomk_encode", &mk::randomk_encode, py::arg("x"), py::arg("ratio"), py::arg("seed"),
        py::arg("offset"), py::arg("flag"));
  m.def("randomk_decode", &mk::randomk_decode, py::arg("values"), py::arg("ratio"),
        py::arg("seed"), py::arg("offset"), py::arg("rescale"), py::arg("out"));
  m.def("topk_encode", &mk::topk_encode, py::arg("x"), py::arg("ratio"), py::arg("indices"),
        py::arg("values"), py::arg("flag"));
  m.def("topk_decode", &mk::topk_decode, py::arg("indices"), py::arg("values"), py::arg("out"));
}
