// The extension moniqua_kernels._C: op schemas in the private namespace
// moniqua_kernels_C and their CPU kernels.  moniqua_kernels/_native.py wraps them with
// the reference's signatures; the public ops (ops.py) validate before calling.
//
// Factory-like ops (philox_uniform_, randomk_count_) fill an output tensor the
// wrapper allocates, so the dispatcher has a tensor to pick the device from.
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <Python.h>
#include <torch/library.h>

#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "bindings.h"
#include "cpu/kernels.h"

namespace moniqua_kernels {
namespace {

namespace k = cpu;

// Blocks per task: 16 blocks (16 Ki elements) keep small calls on one thread, where
// waking the pool costs more than the work.
constexpr int64_t kGrain = 16;

template <typename F>
void over_blocks(int64_t n, F&& f) {
  const int64_t nb = k::num_blocks(n);
  if (nb == 0) return;
  at::parallel_for(0, nb, kGrain, [&](int64_t b0, int64_t b1) { f(b0, b1); });
}

// A large output is freshly mmap'ed memory: every 4 KiB page faults (and is zeroed)
// on first write.  Asking for transparent huge pages on the 2 MiB-aligned interior
// before the kernel writes it makes that 512x fewer faults; measured on the CI VM,
// torch.empty_like(x).copy_(x) of 2^24 floats costs 28 ms against 9 ms for the copy
// alone, and Moniqua decode went from 20 ms to ~10 ms (2 threads).  A hint only: where
// THP is off ("never") or the range is too small, nothing changes.
template <typename T>
T&& with_huge_pages(T&& out) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t{1} << 21;
  const size_t nbytes = out.nbytes();
  if (nbytes >= 4 * kHuge) {
    const uintptr_t begin = reinterpret_cast<uintptr_t>(out.data_ptr());
    const uintptr_t lo = (begin + kHuge - 1) & ~(kHuge - 1);
    const uintptr_t hi = (begin + nbytes) & ~(kHuge - 1);
    if (hi > lo) madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_HUGEPAGE);
  }
#endif
  return std::forward<T>(out);
}

k::Stream stream(int64_t seed, int64_t offset) {
  check_offset(offset);
  return k::Stream{static_cast<uint64_t>(seed), offset};
}

k::MoniquaArgs moniqua_args(double modulus, int64_t bits, const std::string& rounding) {
  const ModulusArgs m = modulus_args(modulus, bits, rounding);
  return k::MoniquaArgs{m.b, m.inv_b, m.bits, m.rounding};
}

void philox_uniform_cpu(at::Tensor& out, int64_t seed, int64_t offset) {
  MK_CHECK_DTYPE(out, at::kFloat);
  MK_CHECK_CONTIGUOUS(out);
  with_huge_pages(out);  // freshly allocated by the wrapper
  const int64_t n = out.numel();
  const k::Stream s = stream(seed, offset);
  float* o = out.data_ptr<float>();
  over_blocks(n, [&](int64_t b0, int64_t b1) { k::philox_uniform(n, s, o, b0, b1); });
}

at::Tensor pack_bits_cpu(const at::Tensor& codes, int64_t bits) {
  check_bits(bits, false);
  MK_CHECK_DTYPE(codes, at::kByte);
  MK_CHECK_CONTIGUOUS(codes);
  const int64_t n = codes.numel();
  at::Tensor out = at::empty({packed_nbytes(n, static_cast<int>(bits))}, codes.options());
  const uint8_t* c = codes.data_ptr<uint8_t>();
  uint8_t* o = out.data_ptr<uint8_t>();
  over_blocks(n, [&](int64_t b0, int64_t b1) { k::pack_bits(c, n, static_cast<int>(bits), o, b0, b1); });
  return out;
}

at::Tensor unpack_bits_cpu(const at::Tensor& payload, int64_t bits, int64_t n) {
  check_bits(bits, false);
  check_payload(payload, n, static_cast<int>(bits), "payload");
  at::Tensor out = at::empty({n}, payload.options());
  const uint8_t* p = payload.data_ptr<uint8_t>();
  uint8_t* o = out.data_ptr<uint8_t>();
  over_blocks(n, [&](int64_t b0, int64_t b1) { k::unpack_bits(p, n, static_cast<int>(bits), o, b0, b1); });
  return out;
}

at::Tensor moniqua_encode_cpu(const at::Tensor& x, double modulus, int64_t bits,
                              const std::string& rounding, int64_t seed, int64_t offset) {
  MK_CHECK_CONTIGUOUS(x);
  const k::MoniquaArgs a = moniqua_args(modulus, bits, rounding);
  const k::Stream s = stream(seed, offset);
  const DType dt = float_dtype(x, "x");
  const int64_t n = x.numel();
  at::Tensor out = at::empty({packed_nbytes(n, a.bits)}, x.options().dtype(at::kByte));
  const void* xp = x.data_ptr();
  uint8_t* o = out.data_ptr<uint8_t>();
  over_blocks(n, [&](int64_t b0, int64_t b1) { k::moniqua_encode(xp, dt, n, a, s, o, b0, b1); });
  return out;
}

at::Tensor moniqua_decode_cpu(const at::Tensor& payload, const at::Tensor& reference,
                              double modulus, int64_t bits, const std::string& rounding,
                              int64_t seed, int64_t offset) {
  MK_CHECK_CONTIGUOUS(reference);
  const k::MoniquaArgs a = moniqua_args(modulus, bits, rounding);
  const k::Stream s = stream(seed, offset);
  const DType dt = float_dtype(reference, "reference");
  const int64_t n = reference.numel();
  check_payload(payload, n, a.bits, "payload");
  at::Tensor out = with_huge_pages(at::empty_like(reference, at::MemoryFormat::Contiguous));
  const uint8_t* p = payload.data_ptr<uint8_t>();
  const void* y = reference.data_ptr();
  void* o = out.data_ptr();
  over_blocks(n, [&](int64_t b0, int64_t b1) { k::moniqua_decode(p, y, dt, n, a, s, o, b0, b1); });
  return out;
}

void moniqua_mix_cpu(at::Tensor& x, at::TensorList payloads, at::ArrayRef<double> weights,
                     const at::Tensor& own_payload, double modulus, int64_t bits,
                     const std::string& rounding, double gamma, at::IntArrayRef seeds,
                     at::IntArrayRef offsets) {
  MK_CHECK_CONTIGUOUS(x);
  const int64_t np = static_cast<int64_t>(payloads.size());
  check_mix_lists(np, weights.size(), seeds.size(), offsets.size());
  const int64_t n = x.numel();
  k::MixArgs a;
  a.m = moniqua_args(modulus, bits, rounding);
  std::vector<const uint8_t*> ptrs(static_cast<size_t>(np));
  std::vector<float> w(static_cast<size_t>(np));
  std::vector<k::Stream> streams(static_cast<size_t>(np + 1));
  for (int64_t j = 0; j < np; ++j) {
    check_payload(payloads[j], n, a.m.bits, "payloads[j]");
    ptrs[j] = payloads[j].data_ptr<uint8_t>();
    w[j] = static_cast<float>(weights[j]);
  }
  check_payload(own_payload, n, a.m.bits, "own_payload");
  for (int64_t j = 0; j <= np; ++j) streams[j] = stream(seeds[j], offsets[j]);
  a.npayloads = np;
  a.payloads = ptrs.data();
  a.weights = w.data();
  a.own = own_payload.data_ptr<uint8_t>();
  a.gamma = static_cast<float>(gamma);
  a.streams = streams.data();
  const DType dt = float_dtype(x, "x");
  void* xp = x.data_ptr();
  over_blocks(n, [&](int64_t b0, int64_t b1) { k::moniqua_mix(xp, dt, n, a, b0, b1); });
}

bool parse_norm(const std::string& norm) {
  TORCH_CHECK(norm == "max" || norm == "l2", "unknown norm '", norm, "'");
  return norm == "l2";
}

std::tuple<at::Tensor, at::Tensor> qsgd_encode_cpu(const at::Tensor& x, int64_t bits,
                                                   int64_t bucket_size, const std::string& norm,
                                                   int64_t seed, int64_t offset) {
  MK_CHECK_CONTIGUOUS(x);
  check_bits(bits, true);
  TORCH_CHECK(bucket_size >= 1, "bucket_size must be >= 1");
  const bool l2 = parse_norm(norm);
  const k::Stream s = stream(seed, offset);
  const DType dt = float_dtype(x, "x");
  const int64_t n = x.numel(), nq = (n + bucket_size - 1) / bucket_size;
  at::Tensor scales = at::empty({nq}, x.options().dtype(at::kFloat));
  at::Tensor payload = at::empty({packed_nbytes(n, static_cast<int>(bits))}, x.options().dtype(at::kByte));
  const void* xp = x.data_ptr();
  float* sc = scales.data_ptr<float>();
  uint8_t* o = payload.data_ptr<uint8_t>();
  if (nq > 0) {
    const int64_t grain = std::max<int64_t>(1, kGrain * k::kBlock / bucket_size);
    at::parallel_for(0, nq, grain, [&](int64_t q0, int64_t q1) {
      k::qsgd_scales(xp, dt, n, bucket_size, l2, sc, q0, q1);
    });
  }
  over_blocks(n, [&](int64_t b0, int64_t b1) {
    k::qsgd_encode(xp, dt, n, static_cast<int>(bits), bucket_size, sc, s, o, b0, b1);
  });
  return {scales, payload};
}

at::Tensor qsgd_decode_cpu(const at::Tensor& scales, const at::Tensor& payload, int64_t n,
                           int64_t bits, int64_t bucket_size) {
  check_bits(bits, true);
  TORCH_CHECK(bucket_size >= 1, "bucket_size must be >= 1");
  MK_CHECK_DTYPE(scales, at::kFloat);
  MK_CHECK_CONTIGUOUS(scales);
  TORCH_CHECK(scales.numel() == (n + bucket_size - 1) / bucket_size, "one scale per bucket");
  check_payload(payload, n, static_cast<int>(bits), "payload");
  at::Tensor out = with_huge_pages(at::empty({n}, payload.options().dtype(at::kFloat)));
  const float* sc = scales.data_ptr<float>();
  const uint8_t* p = payload.data_ptr<uint8_t>();
  float* o = out.data_ptr<float>();
  over_blocks(n, [&](int64_t b0, int64_t b1) {
    k::qsgd_decode(sc, p, n, static_cast<int>(bits), bucket_size, o, b0, b1);
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> sign_encode_cpu(const at::Tensor& x) {
  MK_CHECK_CONTIGUOUS(x);
  const DType dt = float_dtype(x, "x");
  const int64_t n = x.numel(), nb = k::num_blocks(n);
  at::Tensor payload = at::empty({packed_nbytes(n, 1)}, x.options().dtype(at::kByte));
  std::vector<double> sums(static_cast<size_t>(nb));
  const void* xp = x.data_ptr();
  uint8_t* o = payload.data_ptr<uint8_t>();
  over_blocks(n, [&](int64_t b0, int64_t b1) { k::sign_encode(xp, dt, n, o, sums.data() + b0, b0, b1); });
  double total = 0.0;  // block order: the same scale for every thread count
  for (double v : sums) total += v;
  const float scale = n ? static_cast<float>(total) / static_cast<float>(n) : 0.0f;
  at::Tensor scale_t = at::empty({}, x.options().dtype(at::kFloat));
  scale_t.fill_(scale);
  return {scale_t, payload};
}

at::Tensor sign_decode_cpu(const at::Tensor& scale, const at::Tensor& payload, int64_t n) {
  MK_CHECK_DTYPE(scale, at::kFloat);
  TORCH_CHECK(scale.numel() == 1, "scale must have one element");
  check_payload(payload, n, 1, "payload");
  const float sc = scale.item<float>();
  at::Tensor out = with_huge_pages(at::empty({n}, payload.options().dtype(at::kFloat)));
  const uint8_t* p = payload.data_ptr<uint8_t>();
  float* o = out.data_ptr<float>();
  over_blocks(n, [&](int64_t b0, int64_t b1) { k::sign_decode(sc, p, n, o, b0, b1); });
  return out;
}

// Kept elements per block and their exclusive prefix (first kept index per block).
std::vector<int64_t> randomk_prefix(int64_t n, uint32_t threshold, k::Stream s, int64_t* total) {
  const int64_t nb = k::num_blocks(n);
  std::vector<int64_t> counts(static_cast<size_t>(nb) + 1, 0);
  over_blocks(n, [&](int64_t b0, int64_t b1) {
    k::randomk_block_counts(n, threshold, s, counts.data() + b0, b0, b1);
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

void randomk_count_cpu(at::Tensor& out, int64_t n, double ratio, int64_t seed, int64_t offset) {
  MK_CHECK_DTYPE(out, at::kLong);
  TORCH_CHECK(out.numel() == 1, "out must have one element");
  int64_t total = 0;
  randomk_prefix(n, randomk_threshold(ratio), stream(seed, offset), &total);
  out.fill_(total);
}

at::Tensor randomk_encode_cpu(const at::Tensor& x, double ratio, int64_t seed, int64_t offset) {
  MK_CHECK_CONTIGUOUS(x);
  float_dtype(x, "x");
  const int64_t n = x.numel();
  const uint32_t thr = randomk_threshold(ratio);
  const k::Stream s = stream(seed, offset);
  int64_t total = 0;
  const std::vector<int64_t> first = randomk_prefix(n, thr, s, &total);
  at::Tensor values = at::empty({total}, x.options());
  const void* xp = x.data_ptr();
  void* v = values.data_ptr();
  const int es = static_cast<int>(x.element_size());
  over_blocks(n, [&](int64_t b0, int64_t b1) {
    k::randomk_gather(xp, es, n, thr, s, v, first[b0], b0, b1);
  });
  return values;
}

at::Tensor randomk_decode_cpu(const at::Tensor& values, int64_t n, double ratio, int64_t seed,
                              int64_t offset, bool rescale) {
  MK_CHECK_CONTIGUOUS(values);
  const DType dt = float_dtype(values, "values");
  const uint32_t thr = randomk_threshold(ratio);
  const k::Stream s = stream(seed, offset);
  int64_t total = 0;
  const std::vector<int64_t> first = randomk_prefix(n, thr, s, &total);
  TORCH_CHECK(values.numel() == total, "values has ", values.numel(), " elements, the stream keeps ",
              total);
  const float inv = static_cast<float>(1.0 / ratio);
  at::Tensor out = with_huge_pages(at::empty({n}, values.options()));
  const void* v = values.data_ptr();
  void* o = out.data_ptr();
  over_blocks(n, [&](int64_t b0, int64_t b1) {
    k::randomk_scatter(v, dt, n, thr, s, rescale, inv, o, first[b0], b0, b1);
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> topk_encode_cpu(const at::Tensor& x, double ratio) {
  MK_CHECK_CONTIGUOUS(x);
  const DType dt = float_dtype(x, "x");
  const int64_t n = x.numel();
  // k = min(n, ceil(ratio * n)) in double, as the reference computes it.
  const int64_t kk = std::min<int64_t>(n, static_cast<int64_t>(std::ceil(ratio * static_cast<double>(n))));
  at::Tensor idx64 = at::empty({kk}, x.options().dtype(at::kLong));
  k::topk_select(x.data_ptr(), dt, n, kk, idx64.data_ptr<int64_t>());
  at::Tensor values = x.reshape({-1}).index_select(0, idx64);
  at::Tensor indices = n < (int64_t{1} << 31) ? idx64.to(at::kInt) : idx64;
  return {indices, values};
}

at::Tensor topk_decode_cpu(const at::Tensor& indices, const at::Tensor& values, int64_t n) {
  TORCH_CHECK(indices.numel() == values.numel(), "indices and values must pair up");
  at::Tensor out = at::zeros({n}, values.options());
  if (indices.numel()) out.index_put_({indices.to(at::kLong)}, values);
  return out;
}

}  // namespace
}  // namespace moniqua_kernels

TORCH_LIBRARY(moniqua_kernels_C, m) {
  m.def("philox_uniform_(Tensor(a!) out, int seed, int offset) -> ()");
  m.def("pack_bits(Tensor codes, int bits) -> Tensor");
  m.def("unpack_bits(Tensor payload, int bits, int n) -> Tensor");
  m.def("moniqua_encode(Tensor x, float modulus, int bits, str rounding, int seed, int offset) -> Tensor");
  m.def("moniqua_decode(Tensor payload, Tensor reference, float modulus, int bits, str rounding, "
        "int seed, int offset) -> Tensor");
  m.def("moniqua_mix_(Tensor(a!) x, Tensor[] payloads, float[] weights, Tensor own_payload, "
        "float modulus, int bits, str rounding, float gamma, int[] seeds, int[] offsets) -> ()");
  m.def("qsgd_encode(Tensor x, int bits, int bucket_size, str norm, int seed, int offset) -> (Tensor, Tensor)");
  m.def("qsgd_decode(Tensor scales, Tensor payload, int n, int bits, int bucket_size) -> Tensor");
  m.def("sign_encode(Tensor x) -> (Tensor, Tensor)");
  m.def("sign_decode(Tensor scale, Tensor payload, int n) -> Tensor");
  m.def("randomk_count_(Tensor(a!) out, int n, float ratio, int seed, int offset) -> ()");
  m.def("randomk_encode(Tensor x, float ratio, int seed, int offset) -> Tensor");
  m.def("randomk_decode(Tensor values, int n, float ratio, int seed, int offset, bool rescale) -> Tensor");
  m.def("topk_encode(Tensor x, float ratio) -> (Tensor, Tensor)");
  m.def("topk_decode(Tensor indices, Tensor values, int n) -> Tensor");
}

TORCH_LIBRARY_IMPL(moniqua_kernels_C, CPU, m) {
  using namespace moniqua_kernels;
  m.impl("philox_uniform_", &philox_uniform_cpu);
  m.impl("pack_bits", &pack_bits_cpu);
  m.impl("unpack_bits", &unpack_bits_cpu);
  m.impl("moniqua_encode", &moniqua_encode_cpu);
  m.impl("moniqua_decode", &moniqua_decode_cpu);
  m.impl("moniqua_mix_", &moniqua_mix_cpu);
  m.impl("qsgd_encode", &qsgd_encode_cpu);
  m.impl("qsgd_decode", &qsgd_decode_cpu);
  m.impl("sign_encode", &sign_encode_cpu);
  m.impl("sign_decode", &sign_decode_cpu);
  m.impl("randomk_count_", &randomk_count_cpu);
  m.impl("randomk_encode", &randomk_encode_cpu);
  m.impl("randomk_decode", &randomk_decode_cpu);
  m.impl("topk_encode", &topk_encode_cpu);
  m.impl("topk_decode", &topk_decode_cpu);
}

// A plain Python module, so `import moniqua_kernels._C` loads the library and runs the
// registrations above; isa() names the instruction set the CPU kernels run with.
namespace {
PyObject* mk_isa(PyObject*, PyObject*) {
  return PyUnicode_FromString(moniqua_kernels::cpu::isa_name());
}
PyMethodDef mk_methods[] = {
    {"isa", mk_isa, METH_NOARGS, "Instruction set of the CPU kernels."},
    {nullptr, nullptr, 0, nullptr}};
PyModuleDef mk_module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, mk_methods};
}  // namespace

extern "C" PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&mk_module); }
