// Every CUDA kernel (csrc/cuda/*.cu) runs on the CPU (cuda_emu/
// cuda_runtime.h) against the CPU kernels, which tests/test_parity.py holds bit for bit
// to the reference.  What this covers where no GPU is: for Moniqua every launcher's
// dtype x bits x rounding, the whole-group, warp-tile and tail paths at sizes around
// the group, tile and block edges, misaligned views (one element or one byte off, so
// the scalar paths run), in-place mix with 0-3 neighbours, non-finite inputs and
// results, stream tensors (graph-safe streams) and their refusal, payload padding
// flags; Philox uniforms, bit packing, the scaled sign (block reductions with warp
// shuffles), bucketed QSGD (warp shuffles, or a block per bucket) and random-k (block scans) likewise.
// Built with
// AddressSanitizer and UBSan's alignment check (CMakeLists.txt): every buffer is
// allocated at its exact size, so a read or write past it, or a vector access at a
// misaligned address, stops the run as compute-sanitizer would on a GPU.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <random>
#include <utility>
#include <vector>

#include "cpu/kernels.h"
#include "cuda/launchers.h"
#include "moniqua_kernels/moniqua_kernels.h"

namespace mk = moniqua_kernels;
using mk::DType;

static int g_failures = 0;
static int g_cases = 0;
#define CHECK(cond, ...)                                                          \
  do {                                                                            \
    if (!(cond)) {                                                                \
      if (++g_failures <= 20) {                                                   \
        std::printf("%s:%d: CHECK failed: %s: ", __FILE__, __LINE__, #cond);      \
        std::printf(__VA_ARGS__);                                                 \
        std::printf("\n");                                                        \
      }                                                                           \
    }                                                                             \
  } while (0)

static size_t elem_size(DType dt) { return dt == DType::kFloat32 ? 4 : 2; }
static const char* dt_name(DType dt) {
  return dt == DType::kFloat32 ? "fp32" : dt == DType::kFloat16 ? "fp16" : "bf16";
}

// A buffer of exactly `offset + bytes` bytes (heap, so ASan guards both ends), whose
// view starts `offset` bytes in: offset 1 element or 1 byte makes the kernels take their
// scalar paths.
struct Buffer {
  std::unique_ptr<uint8_t[]> mem;
  size_t offset, bytes;
  Buffer(size_t bytes_, size_t offset_, uint8_t fill = 0xAA)
      : mem(new uint8_t[offset_ + bytes_ + (offset_ + bytes_ == 0)]), offset(offset_), bytes(bytes_) {
    std::memset(mem.get(), fill, offset_ + bytes_);
  }
  uint8_t* data() const { return mem.get() + offset; }
};

static void store_elem(uint8_t* p, DType dt, int64_t i, float v) {
  if (dt == DType::kFloat32) {
    std::memcpy(p + 4 * i, &v, 4);
  } else {
    const uint16_t h = dt == DType::kFloat16 ? mk::float_to_half(v) : mk::float_to_bf16(v);
    std::memcpy(p + 2 * i, &h, 2);
  }
}

// Values spread over several multiples of B, with NaN and inf at a few places when asked.
static void fill(uint8_t* p, DType dt, int64_t n, float b, std::mt19937_64& rng, bool bad) {
  std::uniform_real_distribution<float> u(-3.0f * b, 3.0f * b);
  for (int64_t i = 0; i < n; ++i) store_elem(p, dt, i, u(rng));
  if (bad && n > 2) {
    store_elem(p, dt, n / 3, NAN);
    store_elem(p, dt, n - 1, -INFINITY);
  }
}

static bool same_bytes(const uint8_t* a, const uint8_t* b, size_t bytes, size_t* first) {
  for (size_t i = 0; i < bytes; ++i) {
    if (a[i] != b[i]) {
      *first = i;
      return false;
    }
  }
  return true;
}

struct Case {
  DType dt;
  int bits, rounding;
  int64_t n;
  size_t x_off;  // elements
  size_t p_off;  // bytes
  bool bad;      // NaN / inf in the inputs
};

static void run_case(const Case& c, std::mt19937_64& rng) {
  ++g_cases;
  const size_t es = elem_size(c.dt);
  const size_t xbytes = es * static_cast<size_t>(c.n);
  const size_t nbytes = static_cast<size_t>(mk::packed_nbytes(c.n, c.bits));
  const float b = 0.75f;
  const mk::ModulusParams m{b, 1.0f / b, c.bits, c.rounding};
  const int64_t blocks = mk::cpu::num_blocks(c.n);
  char name[160];
  std::snprintf(name, sizeof name, "%s bits=%d rounding=%d n=%lld x_off=%zu p_off=%zu bad=%d",
                dt_name(c.dt), c.bits, c.rounding, static_cast<long long>(c.n), c.x_off,
                c.p_off, c.bad);
  size_t at = 0;

  // encode
  Buffer x(xbytes, c.x_off * es);
  fill(x.data(), c.dt, c.n, b, rng, c.bad);
  const mk::Stream s{0x9E3779B97F4A7C15ull + static_cast<uint64_t>(c.n), 4 * (c.n % 7), nullptr};
  std::vector<uint8_t> want(nbytes + 1);
  const int64_t want_bad = mk::cpu::moniqua_encode(x.data(), c.dt, c.n, m, s, want.data(), true,
                                                   0, blocks);
  Buffer got(nbytes, c.p_off);
  int64_t flag[3] = {0, 0, 0};
  CHECK(mk::cuda::moniqua_encode(x.data(), c.dt, c.n, m, s, got.data(), flag, nullptr) ==
            cudaSuccess, "%s", name);
  CHECK(same_bytes(want.data(), got.data(), nbytes, &at), "encode %s: byte %zu", name, at);
  CHECK(flag[mk::kNonFinite] == want_bad && flag[mk::kBadStream] == 0,
        "encode %s: flags %lld/%lld, want %lld", name, static_cast<long long>(flag[0]),
        static_cast<long long>(flag[1]), static_cast<long long>(want_bad));

  // the same through a stream tensor {seed, offset} (graph-safe streams)
  const int64_t stream_tensor[2] = {static_cast<int64_t>(s.seed), s.offset};
  const mk::Stream st{0, 0, stream_tensor};
  Buffer got_t(nbytes, c.p_off);
  CHECK(mk::cuda::moniqua_encode(x.data(), c.dt, c.n, m, st, got_t.data(), nullptr, nullptr) ==
            cudaSuccess, "%s", name);
  CHECK(same_bytes(want.data(), got_t.data(), nbytes, &at), "encode (stream tensor) %s: byte %zu",
        name, at);

  // decode against references y
  Buffer y(xbytes, c.x_off * es);
  fill(y.data(), c.dt, c.n, b, rng, c.bad);
  std::vector<uint8_t> dec_want(xbytes + 1);
  const int64_t dec_bad = mk::cpu::moniqua_decode(want.data(), y.data(), c.dt, c.n, m, s,
                                                  dec_want.data(), true, 0, blocks);
  Buffer payload(nbytes, c.p_off);
  std::memcpy(payload.data(), want.data(), nbytes);
  Buffer dec_got(xbytes, c.x_off * es);
  int64_t dflag[3] = {0, 0, 0};
  CHECK(mk::cuda::moniqua_decode(payload.data(), y.data(), c.dt, c.n, m, s, dec_got.data(), dflag,
                                 nullptr) == cudaSuccess, "%s", name);
  CHECK(same_bytes(dec_want.data(), dec_got.data(), xbytes, &at), "decode %s: byte %zu", name, at);
  CHECK(dflag[mk::kNonFinite] == dec_bad && dflag[mk::kPadding] == 0,
        "decode %s: flags %lld/%lld, want %lld", name, static_cast<long long>(dflag[0]),
        static_cast<long long>(dflag[2]), static_cast<long long>(dec_bad));

  // mix with 0-3 neighbours, in place; each neighbour's payload from its own x and stream
  for (int k = 0; k <= 3; ++k) {
    std::vector<std::unique_ptr<Buffer>> nb;
    std::vector<const uint8_t*> ptrs;
    std::vector<float> weights;
    std::vector<mk::Stream> streams;
    mk::cuda::MixPayloads p{};
    p.count = k;
    for (int j = 0; j < k; ++j) {
      Buffer xj(xbytes, 0);
      fill(xj.data(), c.dt, c.n, b, rng, false);
      streams.push_back(mk::Stream{s.seed + 17 * (j + 1), s.offset + 4 * j, nullptr});
      nb.emplace_back(new Buffer(nbytes, c.p_off));
      mk::cpu::moniqua_encode(xj.data(), c.dt, c.n, m, streams.back(), nb.back()->data(), false, 0,
                              blocks);
      ptrs.push_back(nb.back()->data());
      weights.push_back(0.25f + 0.125f * j);
      p.payload[j] = nb.back()->data();
      p.weight[j] = weights.back();
      p.stream[j] = streams.back();
    }
    streams.push_back(s);  // the own payload's stream comes last
    p.own = payload.data();
    p.own_stream = s;
    const float gamma = 0.625f;
    std::vector<uint8_t> mix_want(xbytes + 1);
    std::memcpy(mix_want.data(), y.data(), xbytes);
    const mk::cpu::MixArgs a{m, k, ptrs.data(), weights.data(), payload.data(), gamma,
                             streams.data(), true};
    const int64_t mix_bad = mk::cpu::moniqua_mix(mix_want.data(), c.dt, c.n, a, 0, blocks);
    Buffer mix_got(xbytes, c.x_off * es);
    std::memcpy(mix_got.data(), y.data(), xbytes);
    int64_t mflag[3] = {0, 0, 0};
    CHECK(mk::cuda::moniqua_mix(mix_got.data(), c.dt, c.n, p, m, gamma, mflag, nullptr) ==
              cudaSuccess, "%s", name);
    CHECK(same_bytes(mix_want.data(), mix_got.data(), xbytes, &at), "mix k=%d %s: byte %zu", k,
          name, at);
    CHECK(mflag[mk::kNonFinite] == mix_bad, "mix k=%d %s: %lld non-finite, want %lld", k, name,
          static_cast<long long>(mflag[0]), static_cast<long long>(mix_bad));
  }
}

// Decoded and mixed results finite in float32 but not in their float16/bfloat16 dtype
// (they round to inf when stored) are counted, and the mix keeps x there, as the CPU
// kernels and the reference do: two of every three elements overflow, over whole warp
// tiles, a partial group and the tail.
static void test_overflow_in_dtype() {
  const int64_t n = 1000 + 3;
  for (DType dt : {DType::kFloat16, DType::kBFloat16}) {
    const bool half = dt == DType::kFloat16;
    const float big = half ? 65000.0f : 3.38e38f, beyond = half ? 71000.0f : 3.4e38f;
    const float b = half ? 2e4f : 1e38f;
    const mk::ModulusParams m{b, 1.0f / b, 8, mk::kNearest};
    const mk::Stream s{7, 0, nullptr};
    const int64_t blocks = mk::cpu::num_blocks(n);
    const size_t xbytes = 2 * static_cast<size_t>(n), nbytes = static_cast<size_t>(n);
    std::vector<float> sender(n);
    Buffer y(xbytes, 0);
    for (int64_t i = 0; i < n; ++i) {
      sender[i] = i % 3 ? beyond : 1.5f;
      store_elem(y.data(), dt, i, i % 3 ? big : 1.0f);
    }
    Buffer theirs(nbytes, 0), own(nbytes, 0);
    mk::cpu::moniqua_encode(sender.data(), DType::kFloat32, n, m, s, theirs.data(), false, 0,
                            blocks);
    mk::cpu::moniqua_encode(y.data(), dt, n, m, s, own.data(), false, 0, blocks);
    const int64_t overflowed = n - (n + 2) / 3;
    std::vector<uint8_t> dec_want(xbytes);
    const int64_t want_bad = mk::cpu::moniqua_decode(theirs.data(), y.data(), dt, n, m, s,
                                                     dec_want.data(), true, 0, blocks);
    CHECK(want_bad == overflowed, "cpu decode %s: %lld counted, want %lld", dt_name(dt),
          static_cast<long long>(want_bad), static_cast<long long>(overflowed));
    Buffer dec_got(xbytes, 0);
    int64_t dflag[3] = {0, 0, 0};
    mk::cuda::moniqua_decode(theirs.data(), y.data(), dt, n, m, s, dec_got.data(), dflag, nullptr);
    size_t at = 0;
    CHECK(same_bytes(dec_want.data(), dec_got.data(), xbytes, &at) && dflag[mk::kNonFinite] ==
          want_bad, "decode %s: byte %zu, %lld counted", dt_name(dt), at,
          static_cast<long long>(dflag[mk::kNonFinite]));
    const uint8_t* ptrs[] = {theirs.data()};
    const float weights[] = {1.0f};
    const mk::Stream streams[] = {s, s};
    std::vector<uint8_t> mix_want(y.data(), y.data() + xbytes);
    const mk::cpu::MixArgs a{m, 1, ptrs, weights, own.data(), 1.0f, streams, true};
    const int64_t mix_bad = mk::cpu::moniqua_mix(mix_want.data(), dt, n, a, 0, blocks);
    CHECK(mix_bad == overflowed && std::memcmp(mix_want.data() + 2, y.data() + 2, 2) == 0,
          "cpu mix %s: %lld counted, want %lld, or x not kept", dt_name(dt),
          static_cast<long long>(mix_bad), static_cast<long long>(overflowed));
    mk::cuda::MixPayloads p{};
    p.count = 1;
    p.payload[0] = theirs.data();
    p.weight[0] = 1.0f;
    p.stream[0] = s;
    p.own = own.data();
    p.own_stream = s;
    Buffer mix_got(xbytes, 0);
    std::memcpy(mix_got.data(), y.data(), xbytes);
    int64_t mflag[3] = {0, 0, 0};
    mk::cuda::moniqua_mix(mix_got.data(), dt, n, p, m, 1.0f, mflag, nullptr);
    CHECK(same_bytes(mix_want.data(), mix_got.data(), xbytes, &at) && mflag[mk::kNonFinite] ==
          mix_bad, "mix %s: byte %zu, %lld counted", dt_name(dt), at,
          static_cast<long long>(mflag[mk::kNonFinite]));
  }
}

// A stream tensor whose offset is not a multiple of 4 is flagged once and nothing is
// written; a payload with bits set above its last code is flagged.
static void test_refusals() {
  const int64_t n = 37;
  std::vector<float> x(n, 0.5f), out(n, 7.0f);
  const mk::ModulusParams m{1.0f, 1.0f, 2, mk::kDither};
  const int64_t bad_stream[2] = {5, 2};
  std::vector<uint8_t> payload(mk::packed_nbytes(n, 2), 0xAA);
  int64_t flag[3] = {0, 0, 0};
  mk::cuda::moniqua_encode(x.data(), DType::kFloat32, n, m, mk::Stream{0, 0, bad_stream},
                           payload.data(), flag, nullptr);
  CHECK(flag[mk::kBadStream] == 1, "bad stream flagged %lld times", static_cast<long long>(flag[1]));
  bool untouched = true;
  for (uint8_t v : payload) untouched = untouched && v == 0xAA;
  CHECK(untouched, "encode wrote under a refused stream");
  int64_t dflag[3] = {0, 0, 0};
  payload.back() = 0xFF;  // 37 2-bit codes: the top 6 bits of the last byte are padding
  mk::cuda::moniqua_decode(payload.data(), x.data(), DType::kFloat32, n, m, mk::Stream{1, 0, nullptr},
                           out.data(), dflag, nullptr);
  CHECK(dflag[mk::kPadding] == 1, "padding flagged %lld times", static_cast<long long>(dflag[2]));
}

// Philox uniforms, pack and unpack at every width, through misaligned views.
static void test_basic(std::mt19937_64& rng) {
  for (int64_t n : {1, 3, 4, 17, 1000, 4099}) {
    for (size_t off : {0, 1}) {
      ++g_cases;
      const mk::Stream s{rng(), 4 * static_cast<int64_t>(n % 5), nullptr};
      std::vector<float> want(n);
      mk::cpu::philox_uniform(n, s, want.data(), 0, mk::cpu::num_blocks(n));
      Buffer got(4 * n, 4 * off);
      mk::cuda::philox_uniform(reinterpret_cast<float*>(got.data()), n, s, nullptr);
      size_t at = 0;
      CHECK(same_bytes(reinterpret_cast<uint8_t*>(want.data()), got.data(), 4 * n, &at),
            "philox n=%lld off=%zu: byte %zu", static_cast<long long>(n), off, at);
      for (int bits : {1, 2, 4, 8}) {
        ++g_cases;
        const size_t nbytes = static_cast<size_t>(mk::packed_nbytes(n, bits));
        Buffer codes(n, off);
        for (int64_t i = 0; i < n; ++i) codes.data()[i] = static_cast<uint8_t>(rng() & ((1u << bits) - 1));
        std::vector<uint8_t> packed(nbytes + 1);
        mk::cpu::pack_bits(codes.data(), n, bits, packed.data(), 0, mk::cpu::num_blocks(n));
        Buffer got_p(nbytes, off);
        mk::cuda::pack_bits(codes.data(), n, bits, got_p.data(), nullptr);
        CHECK(same_bytes(packed.data(), got_p.data(), nbytes, &at), "pack bits=%d n=%lld off=%zu",
              bits, static_cast<long long>(n), off);
        Buffer back(n, off);
        int64_t flag[3] = {0, 0, 0};
        mk::cuda::unpack_bits(got_p.data(), n, bits, back.data(), flag, nullptr);
        CHECK(same_bytes(codes.data(), back.data(), n, &at) && flag[mk::kPadding] == 0,
              "unpack bits=%d n=%lld off=%zu", bits, static_cast<long long>(n), off);
      }
    }
  }
}

// Relative difference of two float32 scales that the spec lets differ in their last
// bits (sums in double in another order, DESIGN.md section 6).
static bool close_scale(float a, float b) {
  return a == b || std::fabs(a - b) <= 4e-7f * std::fmax(std::fabs(a), std::fabs(b));
}

// The scaled sign: payload bytes exactly, the scale up to its last bits, decode.
static void test_sign(std::mt19937_64& rng) {
  for (DType dt : {DType::kFloat32, DType::kBFloat16})
    for (int64_t n : {1, 17, 4099, (1 << 17) + 3})
      for (size_t off : {0, 1}) {
        ++g_cases;
        const size_t es = elem_size(dt), nbytes = static_cast<size_t>(mk::packed_nbytes(n, 1));
        Buffer x(es * n, es * off);
        fill(x.data(), dt, n, 1.0f, rng, false);
        std::vector<uint8_t> want(nbytes + 1);
        std::vector<double> sums(mk::cpu::num_blocks(n));
        mk::cpu::sign_encode(x.data(), dt, n, want.data(), sums.data(), 0, mk::cpu::num_blocks(n));
        double total = 0.0;
        for (double v : sums) total += v;
        const float want_scale = static_cast<float>(total) / static_cast<float>(n);
        std::vector<double> workspace(mk::cuda::sign_workspace_doubles());
        float scale = -1.0f;
        Buffer got(nbytes, off);
        int64_t flag[3] = {0, 0, 0};
        mk::cuda::sign_encode(x.data(), dt, n, workspace.data(), &scale, got.data(), flag, nullptr);
        size_t at = 0;
        CHECK(same_bytes(want.data(), got.data(), nbytes, &at), "sign %s n=%lld off=%zu: byte %zu",
              dt_name(dt), static_cast<long long>(n), off, at);
        CHECK(close_scale(scale, want_scale) && flag[mk::kNonFinite] == 0,
              "sign %s n=%lld: scale %.9g, want %.9g", dt_name(dt), static_cast<long long>(n),
              scale, want_scale);
        std::vector<float> dec_want(n);
        mk::cpu::sign_decode(scale, want.data(), n, dec_want.data(), 0, mk::cpu::num_blocks(n));
        Buffer dec(4 * n, 4 * off);
        mk::cuda::sign_decode(&scale, got.data(), n, reinterpret_cast<float*>(dec.data()), flag,
                              nullptr);
        CHECK(same_bytes(reinterpret_cast<uint8_t*>(dec_want.data()), dec.data(), 4 * n, &at),
              "sign decode %s n=%lld off=%zu", dt_name(dt), static_cast<long long>(n), off);
      }
  // a NaN makes the sum non-finite: the finisher counts the non-finite elements
  ++g_cases;
  std::vector<float> x(300, 1.0f);
  x[7] = NAN;
  x[290] = INFINITY;
  std::vector<double> workspace(mk::cuda::sign_workspace_doubles());
  std::vector<uint8_t> payload(mk::packed_nbytes(300, 1));
  float scale = 0.0f;
  int64_t flag[3] = {0, 0, 0};
  mk::cuda::sign_encode(x.data(), DType::kFloat32, 300, workspace.data(), &scale, payload.data(),
                        flag, nullptr);
  CHECK(flag[mk::kNonFinite] == 2, "sign counted %lld non-finite, want 2",
        static_cast<long long>(flag[0]));
}

// The CPU's one-pass QSGD (chunks of whole buckets: d = 16, 64, 512, 1024 and 4096 here)
// against its two passes: the same scales, packed codes, codes a byte each, and
// non-finite count.
static void check_qsgd_chunks(const char* name, const void* x, DType dt, int64_t n, int bits,
                              int64_t d, bool l2, const mk::Stream& s,
                              const std::vector<float>& scales, const std::vector<uint8_t>& want,
                              int64_t want_bad) {
  const int64_t nq = (n + d - 1) / d, chunks = mk::cpu::qsgd_num_chunks(n, d);
  const size_t nbytes = static_cast<size_t>(mk::packed_nbytes(n, bits));
  std::vector<float> got_scales(nq, -1.0f);
  std::vector<uint8_t> got(nbytes + 1, 0), codes(n), want_codes(n);
  int64_t bad = 0;
  for (int64_t c = 0; c < chunks; ++c)  // chunk by chunk, as threads split them
    bad += mk::cpu::qsgd_encode_chunks(x, dt, n, bits, d, l2, got_scales.data(), s, got.data(),
                                       true, true, c, c + 1);
  const int64_t unpacked_bad = mk::cpu::qsgd_encode_chunks(
      x, dt, n, bits, d, l2, got_scales.data(), s, codes.data(), false, false, 0, chunks);
  mk::cpu::qsgd_codes(x, dt, n, bits, d, scales.data(), s, want_codes.data(), 0,
                      mk::cpu::num_blocks(n));
  size_t at = 0;
  CHECK(bad == want_bad && unpacked_bad == 0, "%s: chunks counted %lld non-finite, want %lld",
        name, static_cast<long long>(bad), static_cast<long long>(want_bad));
  CHECK(std::memcmp(got_scales.data(), scales.data(), 4 * nq) == 0, "%s: chunk scales", name);
  CHECK(same_bytes(want.data(), got.data(), nbytes, &at), "%s: chunk byte %zu", name, at);
  CHECK(same_bytes(want_codes.data(), codes.data(), n, &at), "%s: chunk code %zu", name, at);
}

// Bucketed QSGD: max-norm scales and codes exactly; l2 scales up to their last bits, and
// the codes exactly where the scales agree; decode.  d = 16, 64 and 512 take the one-pass
// kernel with a bucket in d / 16 lanes of a warp, 1024 and 4096 with a bucket across 2
// and 8 warps (shared memory), 24 and 384 (24 groups of 16) the two-kernel path, 20000
// the two-kernel path with three scale pieces a bucket (8192 + 8192 + 3616; the last
// bucket 5 elements, one piece and two empty ones).  With NaN and inf in x (`bad`), the
// non-finite count and the max-norm scales.
static void test_qsgd(std::mt19937_64& rng) {
  for (DType dt : {DType::kFloat32, DType::kFloat16, DType::kBFloat16})
    for (int bits : {2, 4, 8})
      for (int64_t d : {16, 24, 64, 384, 512, 1024, 4096, 20000})
        for (int64_t n : {int64_t{1}, int64_t{100}, d * (d > 4096 ? 2 : d > 1024 ? 5 : 41) + 5})
          for (bool l2 : {false, true}) {
            ++g_cases;
            const bool bad = n == 100 && bits != 4;
            const size_t es = elem_size(dt), nbytes = static_cast<size_t>(mk::packed_nbytes(n, bits));
            const int64_t nq = (n + d - 1) / d, blocks = mk::cpu::num_blocks(n);
            char name[120];
            std::snprintf(name, sizeof name, "qsgd %s bits=%d d=%lld n=%lld l2=%d bad=%d",
                          dt_name(dt), bits, static_cast<long long>(d), static_cast<long long>(n),
                          l2, bad);
            Buffer x(es * n, es * (n % 2));
            fill(x.data(), dt, n, 1.0f, rng, bad);
            const mk::Stream s{rng(), 8, nullptr};
            std::vector<float> scales(nq);
            const int64_t pieces = mk::cpu::qsgd_scale_pieces(d);
            std::vector<double> stat(nq * pieces);
            const int64_t want_bad = mk::cpu::qsgd_piece_stats(x.data(), dt, n, d, l2, stat.data(),
                                                               scales.data(), true, 0, nq * pieces);
            if (pieces > 1)
              mk::cpu::qsgd_finish_scales(stat.data(), pieces, l2, scales.data(), 0, nq);
            std::vector<uint8_t> want(nbytes + 1);
            mk::cpu::qsgd_encode(x.data(), dt, n, bits, d, scales.data(), s, want.data(), 0, blocks);
            if (mk::cpu::qsgd_chunk_blocks(d) > 0) check_qsgd_chunks(name, x.data(), dt, n, bits, d,
                                                                     l2, s, scales, want, want_bad);
            std::vector<float> got_scales(nq);
            Buffer got(nbytes, n % 3 == 1);
            int64_t flag[3] = {0, 0, 0};
            std::vector<double> work(mk::cuda::qsgd_workspace_doubles(n, d));
            mk::cuda::qsgd_encode(x.data(), dt, n, bits, d, l2, s,
                                  work.empty() ? nullptr : work.data(), got_scales.data(),
                                  got.data(), flag, nullptr);
            CHECK(flag[mk::kNonFinite] == want_bad && flag[mk::kBadStream] == 0,
                  "%s: %lld non-finite, want %lld", name, static_cast<long long>(flag[0]),
                  static_cast<long long>(want_bad));
            bool scales_same = true;
            for (int64_t q = 0; q < nq; ++q) {
              if (bad && l2) break;  // a NaN or inf sum: nothing to compare to its last bits
              CHECK(close_scale(got_scales[q], scales[q]) && (l2 || got_scales[q] == scales[q]),
                    "%s: scale %lld %.9g, want %.9g", name, static_cast<long long>(q),
                    got_scales[q], scales[q]);
              scales_same = scales_same && got_scales[q] == scales[q];
            }
            if (bad) continue;  // a NaN's code is not specified (the float->int conversion)
            size_t at = 0;
            if (scales_same)
              CHECK(same_bytes(want.data(), got.data(), nbytes, &at), "%s: byte %zu", name, at);
            std::vector<float> dec_want(n);
            mk::cpu::qsgd_decode(scales.data(), want.data(), n, bits, d, dec_want.data(), 0, blocks);
            Buffer payload(nbytes, 0);
            std::memcpy(payload.data(), want.data(), nbytes);
            Buffer dec(4 * n, 4 * (n % 2));
            mk::cuda::qsgd_decode(scales.data(), payload.data(), n, bits, d,
                                  reinterpret_cast<float*>(dec.data()), flag, nullptr);
            CHECK(same_bytes(reinterpret_cast<uint8_t*>(dec_want.data()), dec.data(), 4 * n, &at),
                  "%s: decode byte %zu", name, at);
            CHECK(flag[mk::kNonFinite] == 0 && flag[mk::kPadding] == 0, "%s: flags", name);
          }
  // A refused stream tensor (offset not a multiple of 4): flagged once, nothing written,
  // on both paths.
  for (int64_t d : {512, 2048, 24, 9000}) {
    ++g_cases;
    const int64_t n = 30000, nq = (n + d - 1) / d;
    std::vector<float> x(n, 0.5f), got_scales(nq, 7.0f);
    std::vector<uint8_t> payload(mk::packed_nbytes(n, 4), 0xAA);
    std::vector<double> work(mk::cuda::qsgd_workspace_doubles(n, d), 3.0);
    const int64_t bad_stream[2] = {5, 2};
    int64_t flag[3] = {0, 0, 0};
    mk::cuda::qsgd_encode(x.data(), DType::kFloat32, n, 4, d, false, mk::Stream{0, 0, bad_stream},
                          work.empty() ? nullptr : work.data(), got_scales.data(), payload.data(),
                          flag, nullptr);
    bool untouched = true;
    for (uint8_t v : payload) untouched = untouched && v == 0xAA;
    for (float v : got_scales) untouched = untouched && v == 7.0f;
    for (double v : work) untouched = untouched && v == 3.0;
    CHECK(untouched && flag[mk::kBadStream] == 1, "qsgd d=%lld: refused stream, flagged %lld",
          static_cast<long long>(d), static_cast<long long>(flag[1]));
  }
}

// Random-k: the per-chunk prefix of kept elements (count pass, one-block scan), the
// order-preserving gather and the scatter (zeros elsewhere, optional rescale), against
// the CPU kernels, whose blocks are the same 1024-element chunks.
static void test_randomk(std::mt19937_64& rng) {
  static_assert(mk::cpu::kBlock == mk::cuda::kRandomkChunk, "same chunks");
  // 300 chunks: the one-block scan carries over two rounds of 256
  const std::pair<int64_t, double> cases[] = {
      {1, 0.3}, {5, 1.0}, {1024, 0.01}, {1024, 0.3}, {1029, 0.3}, {1029, 1.0}, {300 * 1024 + 7, 0.3}};
  for (const auto& [n, ratio] : cases) {
    ++g_cases;
    const uint32_t thr = static_cast<uint32_t>(std::ceil(ratio * 16777216.0));
    const mk::Stream s{rng(), 4 * static_cast<int64_t>(n % 3), nullptr};
    const int64_t chunks = mk::cuda::randomk_chunks(n);
    std::vector<int64_t> counts(chunks), want_first(chunks + 1, 0);
    mk::cpu::randomk_block_counts(n, thr, s, counts.data(), 0, chunks);
    for (int64_t c = 0; c < chunks; ++c) want_first[c + 1] = want_first[c] + counts[c];
    std::vector<int64_t> first(chunks + 1, -1);
    mk::cuda::randomk_prefix(n, thr, s, first.data(), nullptr);
    bool same = true;
    for (int64_t c = 0; c <= chunks; ++c) same = same && first[c] == want_first[c];
    CHECK(same, "randomk prefix n=%lld ratio=%g: total %lld, want %lld",
          static_cast<long long>(n), ratio, static_cast<long long>(first[chunks]),
          static_cast<long long>(want_first[chunks]));
    const int64_t kept = want_first[chunks];
    for (DType dt : {DType::kFloat32, DType::kBFloat16}) {
      if (n > 100000 && dt != DType::kFloat32) continue;  // one dtype at the large size
      const size_t es = elem_size(dt);
      Buffer x(es * n, 0);
      fill(x.data(), dt, n, 1.0f, rng, false);
      std::vector<uint8_t> want(es * kept + 1);
      mk::cpu::randomk_gather(x.data(), static_cast<int>(es), n, thr, s, want.data(), 0, 0, chunks);
      Buffer values(es * kept, 0);
      mk::cuda::randomk_gather(x.data(), static_cast<int>(es), n, thr, s, first.data(),
                               values.data(), nullptr);
      size_t at = 0;
      CHECK(same_bytes(want.data(), values.data(), es * kept, &at),
            "randomk gather %s n=%lld ratio=%g: byte %zu", dt_name(dt), static_cast<long long>(n),
            ratio, at);
      for (bool rescale : {false, true}) {
        const float inv = static_cast<float>(1.0 / ratio);
        std::vector<uint8_t> back_want(es * n + 1);
        mk::cpu::randomk_scatter(want.data(), dt, n, thr, s, rescale, inv, back_want.data(), 0, 0,
                                 chunks);
        Buffer back(es * n, 0);
        mk::cuda::randomk_scatter(values.data(), dt, n, thr, s, first.data(), rescale, inv,
                                  back.data(), nullptr);
        CHECK(same_bytes(back_want.data(), back.data(), es * n, &at),
              "randomk scatter %s n=%lld ratio=%g rescale=%d: byte %zu", dt_name(dt),
              static_cast<long long>(n), ratio, rescale, at);
      }
    }
  }
}

// Arguments: the parts to run (moniqua basic sign qsgd randomk), all by default.
int main(int argc, char** argv) {
  auto wanted = [&](const char* part) {
    if (argc < 2) return true;
    for (int i = 1; i < argc; ++i)
      if (std::strcmp(argv[i], part) == 0) return true;
    return false;
  };
  std::mt19937_64 rng(20261127);
  if (wanted("moniqua")) {
    const DType dts[] = {DType::kFloat32, DType::kFloat16, DType::kBFloat16};
    // Around the groups of 16 and warp tiles of 512 elements, which are also multiples of
    // the mix's groups of 8 and tiles of 256: 511 is one whole mix tile, 31 groups that do
    // not fill a warp and a tail of 7; 513 two tiles and a tail of 1.
    const int64_t sizes[] = {1, 3, 16, 17, 100, 511, 512, 513, 1000, 4099, 8192 + 37};
    for (DType dt : dts)
      for (int bits : {1, 2, 4, 8})
        for (int rounding : {mk::kStochastic, mk::kNearest, mk::kDither})
          for (int64_t n : sizes)
            for (int align = 0; align < 3; ++align)
              run_case(Case{dt, bits, rounding, n, static_cast<size_t>(align == 1),
                            static_cast<size_t>(align == 2), n % 3 == 1}, rng);
    // more than one block of 256 threads, and whole warps of groups
    for (int bits : {1, 8})
      run_case(Case{DType::kFloat32, bits, mk::kDither, (1 << 17) + 5, 0, 0, true}, rng);
    test_refusals();
    test_overflow_in_dtype();
  }
  if (wanted("basic")) test_basic(rng);
  if (wanted("sign")) test_sign(rng);
  if (wanted("qsgd")) test_qsgd(rng);
  if (wanted("randomk")) test_randomk(rng);
  std::printf("%d cases, %d failures\n", g_cases, g_failures);
  return g_failures == 0 ? 0 : 1;
}
