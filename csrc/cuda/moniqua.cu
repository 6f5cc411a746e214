// Moniqua encode, decode and the fused gossip mix on CUDA (DESIGN.md section 4).
//
// One thread per group of kEPT = 16 elements (device.cuh): whole groups without a
// bound check per element, one thread for the partial last group.  Measured on an
// H100 before this layout (benchmarks/results/NVIDIA_H100_80GB_HBM3/, run 1): the
// per-element checks of the old single path cost about 7 of ~40 instructions an
// element, and 1-bit dither encode ran at 78-82 % of copy bandwidth, issue-bound.
// Decode takes the same 16 elements a thread and the mix 8 (kMixEPT, below), in chunks
// that are warp-striped where a warp's 32 groups are whole (device.cuh, warp tiles); the
// encode keeps consecutive groups (its stores are contiguous across lanes already).  The CPU
// emulation (csrc/tests/cuda_emu) runs these kernels against the CPU kernels in CI.
#include "device.cuh"

namespace moniqua_kernels {
namespace cuda {
namespace {

template <int BITS, int ROUND>
__device__ __forceinline__ void encode_codes(const float* v, const StreamVals& s, int64_t base,
                                             float inv_b, uint32_t* k) {
  if (ROUND == kNearest) {
#pragma unroll
    for (int j = 0; j < kEPT; ++j) k[j] = moniqua_code<BITS>(v[j], inv_b, 0.5f);
  } else {
    uint32_t w[kEPT];
    stream_words(s, base, w);
#pragma unroll
    for (int j = 0; j < kEPT; ++j) k[j] = moniqua_code<BITS>(v[j], inv_b, uniform_from_word(w[j]));
  }
}

// Elements of a group whose t = x * invB is not finite (only run when the probe tripped).
__device__ __forceinline__ int64_t count_bad_t(const float* v, float inv_b) {
  int64_t bad = 0;
#pragma unroll
  for (int j = 0; j < kEPT; ++j) bad += not_finite(__fmul_rn(v[j], inv_b));
  return bad;
}

template <int BITS, int ROUND, typename T>
__global__ void __launch_bounds__(kThreads) encode_kernel(const T* __restrict__ x, int64_t n,
                                                          float inv_b, Stream stream,
                                                          uint8_t* __restrict__ payload,
                                                          int64_t* __restrict__ flag) {
  StreamVals s;
  if (!read_stream(stream, flag, s)) return;
  const int64_t whole = n / kEPT;
  const bool vec_x = aligned_to(x, 16), vec_p = aligned_to(payload, group_bytes<BITS>());
  int64_t bad = 0;
  MK_GRID_STRIDE(g, whole) {
    float v[kEPT];
    uint32_t k[kEPT];
    load_group(x, g * kEPT, vec_x, v);
    encode_codes<BITS, ROUND>(v, s, g * kEPT, inv_b, k);
    store_code_word<BITS>(payload, g, vec_p, codes_word<BITS>(k));
    if (flag != nullptr) {
      float probe = 0.0f;
#pragma unroll
      for (int j = 0; j < kEPT; ++j) probe = probe_add(probe, __fmul_rn(v[j], inv_b));
      if (probe != probe) bad += count_bad_t(v, inv_b);
    }
  }
  if (n % kEPT && blockIdx.x == gridDim.x - 1 && threadIdx.x == 0) {  // the partial group
    float v[kEPT];
    uint32_t k[kEPT];
    load_tail(x, whole * kEPT, n, v);
    encode_codes<BITS, ROUND>(v, s, whole * kEPT, inv_b, k);
#pragma unroll
    for (int j = 0; j < kEPT; ++j) k[j] = whole * kEPT + j < n ? k[j] : 0u;  // zero padding
    store_code_tail<BITS>(payload, whole, packed_nbytes(n, BITS), codes_word<BITS>(k));
    if (flag != nullptr) bad += count_bad_t(v, inv_b);  // zeros past n are finite
  }
  if (bad) flag_add(flag, kNonFinite, bad);
}

// Decoded float32 values of N elements from element base (a multiple of 4), from their
// codes k, against float32 references y.
template <int BITS, int ROUND, int N>
__device__ __forceinline__ void decode_codes(const uint32_t* k, const StreamVals& s,
                                             int64_t base, const float* y, float b, float inv_b,
                                             float* out) {
  if (ROUND == kDither) {
    uint32_t w[N];
    stream_words<N>(s, base, w);
#pragma unroll
    for (int j = 0; j < N; ++j)
      out[j] = moniqua_value_from_fraction(moniqua_dither_fraction<BITS>(k[j], w[j]), y[j], b, inv_b);
  } else {
#pragma unroll
    for (int j = 0; j < N; ++j) out[j] = moniqua_value<BITS>(k[j], 0.0f, y[j], b, inv_b);
  }
}

// A whole group's worth of chunks (N elements; device.cuh: warp tiles), decoded.
template <int BITS, int ROUND, int V, int N = kEPT>
__device__ __forceinline__ void decode_chunks(const ChunkWord<BITS, V>* words, const StreamVals& s,
                                              const Chunks& at, const float* y, float b,
                                              float inv_b, float* out) {
#pragma unroll
  for (int c = 0; c < N / V; ++c) {
    uint32_t k[V];
    chunk_codes<BITS, V>(words[c], k);
    decode_codes<BITS, ROUND, V>(k, s, at.at(c), y + c * V, b, inv_b, out + c * V);
  }
}

// The partial last group, from its code word.
template <int BITS, int ROUND>
__device__ __forceinline__ void decode_word(const typename CodeWord<BITS>::type& word,
                                            const StreamVals& s, int64_t base, const float* y,
                                            float b, float inv_b, float* out) {
  uint32_t k[kEPT];
  word_codes<BITS>(word, k);
  decode_codes<BITS, ROUND, kEPT>(k, s, base, y, b, inv_b, out);
}

// Any of a group's N results not finite once stored as T (not_finite_as), as one
// predicate (a compare an element), and the count of those within valid.
template <typename T, int N = kEPT>
__device__ __forceinline__ bool any_bad(const float* v) {
  bool any = false;
#pragma unroll
  for (int j = 0; j < N; ++j) any |= not_finite_as<T>(v[j]);
  return any;
}

template <typename T>
__device__ __forceinline__ int64_t count_bad(const float* v, int valid) {
  int64_t bad = 0;
#pragma unroll
  for (int j = 0; j < kEPT; ++j) bad += j < valid && not_finite_as<T>(v[j]);
  return bad;
}

// Each thread's whole group as chunks, warp-striped in whole tiles (device.cuh): all of
// a thread's loads first, then the arithmetic, then the stores.
template <int BITS, int ROUND, typename T>
__global__ void __launch_bounds__(kThreads) decode_kernel(const uint8_t* __restrict__ payload,
                                                          const T* __restrict__ y, int64_t n,
                                                          float b, float inv_b, Stream stream,
                                                          T* __restrict__ out,
                                                          int64_t* __restrict__ flag) {
  constexpr int V = vec_elems<T>(), kChunks = kEPT / V;
  StreamVals s;
  if (!read_stream(stream, flag, s)) return;
  check_padding(payload, n, BITS, flag);
  const int64_t whole = n / kEPT;
  const int lane = static_cast<int>(threadIdx.x % kWarp);
  const bool vec_y = aligned_to(y, 16), vec_o = aligned_to(out, 16);
  const bool vec_p = aligned_to(payload, chunk_code_bytes<BITS, V>());
  int64_t bad = 0;
  MK_GRID_STRIDE(g, whole) {
    const Chunks at = chunks_of<V>(g, lane, whole);
    ChunkWord<BITS, V> words[kChunks];
    float yv[kEPT], xh[kEPT];
#pragma unroll
    for (int c = 0; c < kChunks; ++c) {
      words[c] = load_chunk_codes<BITS, V>(payload, at.at(c), vec_p);
      load_chunk(y, at.at(c), vec_y, yv + c * V);
    }
    decode_chunks<BITS, ROUND, V>(words, s, at, yv, b, inv_b, xh);
#pragma unroll
    for (int c = 0; c < kChunks; ++c) store_chunk(out, at.at(c), vec_o, xh + c * V);
    if (flag != nullptr && any_bad<T>(xh)) bad += count_bad<T>(xh, kEPT);
  }
  if (n % kEPT && blockIdx.x == gridDim.x - 1 && threadIdx.x == 0) {
    const auto word = load_code_tail<BITS>(payload, whole, packed_nbytes(n, BITS));
    float yv[kEPT], xh[kEPT];
    load_tail(y, whole * kEPT, n, yv);
    decode_word<BITS, ROUND>(word, s, whole * kEPT, yv, b, inv_b, xh);
    store_tail(out, whole * kEPT, n, xh);
    if (flag != nullptr) bad += count_bad<T>(xh, static_cast<int>(n % kEPT));
  }
  if (bad) flag_add(flag, kNonFinite, bad);
}

// Keep x where one of N results is not finite; count those elements within valid.
template <typename T, int N>
__device__ __forceinline__ int64_t keep_bad(const float* xv, float* result, int valid) {
  int64_t bad = 0;
#pragma unroll
  for (int e = 0; e < N; ++e) {
    if (not_finite_as<T>(result[e])) {
      result[e] = xv[e];
      bad += e < valid;
    }
  }
  return bad;
}

// The mix takes kMixEPT = 8 elements a thread, half the decode's group.  With 16 it held
// x, its own decode, a neighbour's decode and the sum of 16 elements at once: 96-122
// registers on sm_90 (2 blocks of 256 an SM, a quarter of the SM's threads), and
// __launch_bounds__ caps spilled (up to 92 bytes at 80 registers, 296 at 64).  GPU run 5
// (H100, benchmarks/results/NVIDIA_H100_80GB_HBM3/run5) timed that mix at 53-75 % of
// copy, where the Triton mix (8 or 16 elements a thread, 40-94 registers) ran at
// 65-101 %.  With 8: 57-86 registers, no spills (4 blocks an SM at 64 and below, 3
// above), and 2-7 % more instructions an element (the group's addressing over half the
// elements; benchmarks/results/static_sm90.md).  Not yet timed on a GPU.
constexpr int kMixEPT = 8;

// x <- x + gamma * sum_j w_j (dec(q_j; x) - dec(q_self; x)) (mix.h order), a thread's
// group of kMixEPT elements as chunks, warp-striped in whole tiles (device.cuh).  The
// next neighbour's codes are loaded before the current one is decoded, so a payload's
// memory round trip overlaps the previous decode's arithmetic.
template <int BITS, int ROUND, typename T>
__global__ void __launch_bounds__(kThreads) mix_kernel(T* __restrict__ x, int64_t n,
                                                       const MixPayloads p, float b,
                                                       float inv_b, float gamma,
                                                       int64_t* __restrict__ flag) {
  constexpr int V = vec_elems<T>(), N = kMixEPT, kChunks = N / V;
  using Word = ChunkWord<BITS, V>;
  for (int j = 0; j <= p.count; ++j)
    if (!stream_ok(j < p.count ? p.stream[j] : p.own_stream, flag)) return;
  check_padding(p.own, n, BITS, flag);
  for (int j = 0; j < p.count; ++j) check_padding(p.payload[j], n, BITS, flag);
  const int64_t whole = n / N;
  const int lane = static_cast<int>(threadIdx.x % kWarp);
  constexpr int kCodeBytes = chunk_code_bytes<BITS, V>();
  bool vec_p = aligned_to(p.own, kCodeBytes);
  for (int j = 0; j < p.count; ++j) vec_p = vec_p && aligned_to(p.payload[j], kCodeBytes);
  const bool vec_x = aligned_to(x, 16);
  int64_t bad = 0;
  MK_GRID_STRIDE(g, whole) {
    const Chunks at = chunks_of<V, N>(g, lane, whole);
    Word own[kChunks], next[kChunks];
    float xv[N], dself[N], dj[N], acc[N], result[N];
#pragma unroll
    for (int c = 0; c < kChunks; ++c) {
      load_chunk(x, at.at(c), vec_x, xv + c * V);
      own[c] = load_chunk_codes<BITS, V>(p.own, at.at(c), vec_p);
      next[c] = p.count > 0 ? load_chunk_codes<BITS, V>(p.payload[0], at.at(c), vec_p) : own[c];
    }
    decode_chunks<BITS, ROUND, V, N>(own, stream_vals(p.own_stream), at, xv, b, inv_b, dself);
#pragma unroll
    for (int e = 0; e < N; ++e) acc[e] = 0.0f;
    for (int j = 0; j < p.count; ++j) {
      Word cur[kChunks];
#pragma unroll
      for (int c = 0; c < kChunks; ++c) cur[c] = next[c];
      if (j + 1 < p.count) {
#pragma unroll
        for (int c = 0; c < kChunks; ++c)
          next[c] = load_chunk_codes<BITS, V>(p.payload[j + 1], at.at(c), vec_p);
      }
      decode_chunks<BITS, ROUND, V, N>(cur, stream_vals(p.stream[j]), at, xv, b, inv_b, dj);
      const float w = p.weight[j];
#pragma unroll
      for (int e = 0; e < N; ++e) acc[e] = mix_accumulate(acc[e], w, dj[e], dself[e]);
    }
#pragma unroll
    for (int e = 0; e < N; ++e) result[e] = mix_result(xv[e], gamma, acc[e]);
    if (flag != nullptr && any_bad<T, N>(result)) bad += keep_bad<T, N>(xv, result, N);
#pragma unroll
    for (int c = 0; c < kChunks; ++c) store_chunk(x, at.at(c), vec_x, result + c * V);
  }
  if (n % N && blockIdx.x == gridDim.x - 1 && threadIdx.x == 0) {
    // The partial group: codes past n decode to finite garbage that is never stored.
    const int64_t nbytes = packed_nbytes(n, BITS), base = whole * N;
    float xv[N], result[N], dself[N], dj[N], acc[N];
    uint32_t k[N];
    load_tail<N>(x, base, n, xv);
    tail_codes<BITS, N>(p.own, base, nbytes, k);
    decode_codes<BITS, ROUND, N>(k, stream_vals(p.own_stream), base, xv, b, inv_b, dself);
#pragma unroll
    for (int e = 0; e < N; ++e) acc[e] = 0.0f;
    for (int j = 0; j < p.count; ++j) {
      tail_codes<BITS, N>(p.payload[j], base, nbytes, k);
      decode_codes<BITS, ROUND, N>(k, stream_vals(p.stream[j]), base, xv, b, inv_b, dj);
#pragma unroll
      for (int e = 0; e < N; ++e) acc[e] = mix_accumulate(acc[e], p.weight[j], dj[e], dself[e]);
    }
#pragma unroll
    for (int e = 0; e < N; ++e) result[e] = mix_result(xv[e], gamma, acc[e]);
    if (flag != nullptr) bad += keep_bad<T, N>(xv, result, static_cast<int>(n % N));
    store_tail<N>(x, base, n, result);
  }
  if (bad) flag_add(flag, kNonFinite, bad);
}

unsigned grid_of(int64_t n, int ept = kEPT) { return grid_for((n + ept - 1) / ept); }

}  // namespace

cudaError_t moniqua_encode(const void* x, DType dt, int64_t n, ModulusParams m, Stream s,
                           uint8_t* payload, int64_t* flag, cudaStream_t st) {
  if (n == 0) return cudaSuccess;
  return dispatch_dtype(dt, [&](auto tag) {
    using T = decltype(tag);
    return dispatch_bits(m.bits, [&](auto bits) {
      return dispatch_rounding(m.rounding, [&](auto round) {
        constexpr int kBits = decltype(bits)::value, kRound = decltype(round)::value;
        MK_LAUNCH(grid_of(n), kThreads, st, encode_kernel<kBits, kRound, T>)(
            static_cast<const T*>(x), n, m.inv_b, s, payload, flag);
        MK_LAUNCH_CHECK();
        return cudaSuccess;
      });
    });
  });
}

cudaError_t moniqua_decode(const uint8_t* payload, const void* y, DType dt, int64_t n,
                           ModulusParams m, Stream s, void* out, int64_t* flag,
                           cudaStream_t st) {
  if (n == 0) return cudaSuccess;
  return dispatch_dtype(dt, [&](auto tag) {
    using T = decltype(tag);
    return dispatch_bits(m.bits, [&](auto bits) {
      return dispatch_rounding(m.rounding, [&](auto round) {
        constexpr int kBits = decltype(bits)::value, kRound = decltype(round)::value;
        MK_LAUNCH(grid_of(n), kThreads, st, decode_kernel<kBits, kRound, T>)(
            payload, static_cast<const T*>(y), n, m.b, m.inv_b, s, static_cast<T*>(out), flag);
        MK_LAUNCH_CHECK();
        return cudaSuccess;
      });
    });
  });
}

cudaError_t moniqua_mix(void* x, DType dt, int64_t n, const MixPayloads& p, ModulusParams m,
                        float gamma, int64_t* flag, cudaStream_t st) {
  if (n == 0) return cudaSuccess;
  if (p.count < 0 || p.count > kMaxMixPayloads) return cudaErrorInvalidValue;
  return dispatch_dtype(dt, [&](auto tag) {
    using T = decltype(tag);
    return dispatch_bits(m.bits, [&](auto bits) {
      return dispatch_rounding(m.rounding, [&](auto round) {
        constexpr int kBits = decltype(bits)::value, kRound = decltype(round)::value;
        MK_LAUNCH(grid_of(n, kMixEPT), kThreads, st, mix_kernel<kBits, kRound, T>)(
            static_cast<T*>(x), n, p, m.b, m.inv_b, gamma, flag);
        MK_LAUNCH_CHECK();
        return cudaSuccess;
      });
    });
  });
}

}  // namespace cuda
}  // namespace moniqua_kernels
