// Device helpers shared by the .cu files: launch checks, grid sizing, the stream of a
// kernel, 16-element groups loaded and stored with 16-byte accesses, payload bytes
// as one vector access, and the error flags.
//
// Work layout of the elementwise kernels: a thread takes groups of kEPT = 16
// consecutive elements (grid-stride).  Whole groups run without a bound check per
// element; the last, partial group (n % 16 elements) is taken by one thread with
// checks.  The mix takes groups of 8 (moniqua.cu, kMixEPT).  Decode and mix re-map the
// elements of a warp's whole groups (warp tiles, below).  A vector access is used only
// when the pointer is aligned to its width (a runtime check per launch: views like
// buf[1:] and unaligned buckets stay correct).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "launchers.h"
#include "moniqua_kernels/dispatch.h"
#include "moniqua_kernels/moniqua_kernels.h"

// Return the launch's error (configuration or asynchronous) from the launcher.
#define MK_LAUNCH_CHECK()                           \
  do {                                              \
    const cudaError_t mk_err_ = cudaGetLastError(); \
    if (mk_err_ != cudaSuccess) return mk_err_;     \
  } while (0)

// kernel<<<grid, block, 0, stream>>>(args), written so that csrc/tests/cuda_emu/
// cuda_runtime.h, which defines it first, runs the same launchers on the CPU.
#ifndef MK_LAUNCH
#define MK_LAUNCH(grid, block, stream, ...) __VA_ARGS__<<<(grid), (block), 0, (stream)>>>
#endif

#define MK_GRID_STRIDE(i, count)                                                              \
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < (count); \
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)

namespace moniqua_kernels {
namespace cuda {

// 16 elements a thread: four 16-byte float32 loads in flight, four Philox calls, and
// 2*bits whole output bytes (one 2/4/8/16-byte store).
constexpr int kEPT = 16;
constexpr int kThreads = 256;

// Blocks for `groups` thread-items: one item per thread up to 2^20 blocks, then the
// grid-stride loop takes several (n > 2^32 elements).
inline unsigned grid_for(int64_t groups) {
  const int64_t blocks = (groups + kThreads - 1) / kThreads;
  const int64_t cap = int64_t{1} << 20;
  return static_cast<unsigned>(blocks < 1 ? 1 : (blocks > cap ? cap : blocks));
}

__host__ __device__ inline bool aligned_to(const void* p, unsigned bytes) {
  return (reinterpret_cast<uintptr_t>(p) & (bytes - 1)) == 0;
}

__device__ __forceinline__ void flag_add(int64_t* flag, int slot, int64_t count) {
  atomicAdd(reinterpret_cast<unsigned long long*>(flag + slot),
            static_cast<unsigned long long>(count));
}

// The stream a kernel draws: the ints, or the tensor's {seed, offset} read here (so a
// graph replays the values it holds then).  A tensor offset that is negative or not a
// multiple of 4 is flagged once and the kernel writes nothing.
struct StreamVals {
  PhiloxKey key;
  int64_t offset;
};

__device__ __forceinline__ StreamVals stream_vals(const Stream& s) {
  StreamVals v;
  const uint64_t seed = s.tensor != nullptr ? static_cast<uint64_t>(__ldg(s.tensor)) : s.seed;
  v.offset = s.tensor != nullptr ? __ldg(s.tensor + 1) : s.offset;
  v.key = philox_key(seed);
  return v;
}

// False (flagged once, by thread 0 of block 0) for a tensor offset the spec refuses.
__device__ __forceinline__ bool stream_ok(const Stream& s, int64_t* flag) {
  if (s.tensor == nullptr) return true;
  const int64_t offset = __ldg(s.tensor + 1);
  if (offset >= 0 && (offset & 3) == 0) return true;
  if (flag != nullptr && blockIdx.x == 0 && threadIdx.x == 0) flag_add(flag, kBadStream, 1);
  return false;
}

__device__ __forceinline__ bool read_stream(const Stream& s, int64_t* flag, StreamVals& v) {
  if (!stream_ok(s, flag)) return false;
  v = stream_vals(s);
  return true;
}

// The Philox words of the N elements from element index base (a multiple of 4).
template <int N = kEPT>
__device__ __forceinline__ void stream_words(const StreamVals& s, int64_t base, uint32_t* w) {
  const uint64_t ctr0 = static_cast<uint64_t>(s.offset + base) >> 2;
#pragma unroll
  for (int c = 0; c < N / 4; ++c) philox4x32_10(ctr0 + c, s.key, w + 4 * c);
}

// ------------------------------------------------------------------- float elements

// A whole group: VEC (p + base 16-byte aligned) as uint4 loads, else element by element.
template <typename T>
__device__ __forceinline__ void load_group(const T* p, int64_t base, bool vec, float* v) {
  if (vec) {
    constexpr int kVec = 16 / sizeof(T);
#pragma unroll
    for (int q = 0; q < kEPT / kVec; ++q) {
      const uint4 raw = __ldg(reinterpret_cast<const uint4*>(p + base) + q);
      const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
      for (int j = 0; j < kVec; ++j) v[q * kVec + j] = to_float(e[j]);
    }
  } else {
#pragma unroll
    for (int j = 0; j < kEPT; ++j) v[j] = to_float(p[base + j]);
  }
}

// The last, partial group of N elements: zeros past n.
template <int N = kEPT, typename T>
__device__ __forceinline__ void load_tail(const T* p, int64_t base, int64_t n, float* v) {
#pragma unroll
  for (int j = 0; j < N; ++j) v[j] = base + j < n ? to_float(p[base + j]) : 0.0f;
}

template <typename T>
__device__ __forceinline__ void store_group(T* p, int64_t base, bool vec, const float* v) {
  if (vec) {
    constexpr int kVec = 16 / sizeof(T);
#pragma unroll
    for (int q = 0; q < kEPT / kVec; ++q) {
      uint4 raw;
      T* e = reinterpret_cast<T*>(&raw);
#pragma unroll
      for (int j = 0; j < kVec; ++j) from_float(e[j], v[q * kVec + j]);
      reinterpret_cast<uint4*>(p + base)[q] = raw;
    }
  } else {
#pragma unroll
    for (int j = 0; j < kEPT; ++j) from_float(p[base + j], v[j]);
  }
}

template <int N = kEPT, typename T>
__device__ __forceinline__ void store_tail(T* p, int64_t base, int64_t n, const float* v) {
#pragma unroll
  for (int j = 0; j < N; ++j)
    if (base + j < n) from_float(p[base + j], v[j]);
}

// -------------------------------------------------------------------- payload bytes

// The 2*BITS bytes of a group's codes as one word (uint16_t, uint32_t, uint2, uint4).
template <int BITS>
struct CodeWord;
template <>
struct CodeWord<1> { using type = uint16_t; };
template <>
struct CodeWord<2> { using type = uint32_t; };
template <>
struct CodeWord<4> { using type = uint2; };
template <>
struct CodeWord<8> { using type = uint4; };

template <int BITS>
__host__ __device__ constexpr int group_bytes() { return kEPT * BITS / 8; }

template <int BITS>
__device__ __forceinline__ typename CodeWord<BITS>::type load_code_word(const uint8_t* payload,
                                                                       int64_t group, bool vec) {
  using W = typename CodeWord<BITS>::type;
  constexpr int kBytes = group_bytes<BITS>();
  const uint8_t* p = payload + group * kBytes;
  if (vec) return __ldg(reinterpret_cast<const W*>(p));
  W w;
  uint8_t* b = reinterpret_cast<uint8_t*>(&w);
#pragma unroll
  for (int j = 0; j < kBytes; ++j) b[j] = p[j];
  return w;
}

// The last group's bytes that exist (nbytes total), zeros after.
template <int BITS>
__device__ __forceinline__ typename CodeWord<BITS>::type load_code_tail(const uint8_t* payload,
                                                                       int64_t group,
                                                                       int64_t nbytes) {
  using W = typename CodeWord<BITS>::type;
  constexpr int kBytes = group_bytes<BITS>();
  W w;
  uint8_t* b = reinterpret_cast<uint8_t*>(&w);
#pragma unroll
  for (int j = 0; j < kBytes; ++j)
    b[j] = group * kBytes + j < nbytes ? payload[group * kBytes + j] : uint8_t{0};
  return w;
}

// The codes of the N elements from e0 (a multiple of 8) of a payload of nbytes, zeros
// past its end: the mix's partial last group (kMixEPT elements, not a 16-element code
// word as load_code_tail reads).
template <int BITS, int N>
__device__ __forceinline__ void tail_codes(const uint8_t* payload, int64_t e0, int64_t nbytes,
                                           uint32_t* k) {
#pragma unroll
  for (int j = 0; j < N; ++j) {
    const int64_t bit = (e0 + j) * BITS;
    k[j] = (bit >> 3) < nbytes ? unpack_code<BITS>(payload[bit >> 3], (bit & 7) / BITS) : 0u;
  }
}

// Codes of a word: element e sits in byte e / (8/BITS) at bits (e % (8/BITS)) * BITS.
template <int BITS>
__device__ __forceinline__ void word_codes(const typename CodeWord<BITS>::type& w, uint32_t* k) {
  const uint8_t* b = reinterpret_cast<const uint8_t*>(&w);
#pragma unroll
  for (int e = 0; e < kEPT; ++e) k[e] = unpack_code<BITS>(b[e / (8 / BITS)], e % (8 / BITS));
}

template <int BITS>
__device__ __forceinline__ typename CodeWord<BITS>::type codes_word(const uint32_t* k) {
  typename CodeWord<BITS>::type w;
  uint8_t* b = reinterpret_cast<uint8_t*>(&w);
#pragma unroll
  for (int j = 0; j < group_bytes<BITS>(); ++j) {
    uint32_t byte = 0;
#pragma unroll
    for (int m = 0; m < 8 / BITS; ++m) byte |= k[j * (8 / BITS) + m] << (m * BITS);
    b[j] = static_cast<uint8_t>(byte);
  }
  return w;
}

template <int BITS>
__device__ __forceinline__ void store_code_word(uint8_t* payload, int64_t group, bool vec,
                                                const typename CodeWord<BITS>::type& w) {
  using W = typename CodeWord<BITS>::type;
  constexpr int kBytes = group_bytes<BITS>();
  uint8_t* p = payload + group * kBytes;
  if (vec) {
    *reinterpret_cast<W*>(p) = w;
  } else {
    const uint8_t* b = reinterpret_cast<const uint8_t*>(&w);
#pragma unroll
    for (int j = 0; j < kBytes; ++j) p[j] = b[j];
  }
}

template <int BITS>
__device__ __forceinline__ void store_code_tail(uint8_t* payload, int64_t group, int64_t nbytes,
                                                const typename CodeWord<BITS>::type& w) {
  const uint8_t* b = reinterpret_cast<const uint8_t*>(&w);
#pragma unroll
  for (int j = 0; j < group_bytes<BITS>(); ++j)
    if (group * group_bytes<BITS>() + j < nbytes) payload[group * group_bytes<BITS>() + j] = b[j];
}

// Flag a payload whose last byte has bits set above its codes (one thread, one byte).
__device__ __forceinline__ void check_padding(const uint8_t* payload, int64_t n, int bits,
                                              int64_t* flag) {
  const uint32_t mask = padding_mask(n, bits);
  if (flag != nullptr && mask != 0 && blockIdx.x == 0 && threadIdx.x == 0 &&
      (payload[packed_nbytes(n, bits) - 1] & mask) != 0)
    flag_add(flag, kPadding, 1);
}

// ----------------------------------------------------------- warp tiles (decode, mix)
//
// Decode and mix take a thread's group of N elements (decode kEPT = 16, mix 8) as N / V
// chunks of V = 16 / sizeof(T) consecutive elements (one 16-byte access each).  Where a
// warp's 32 groups are all whole (a tile of 32 * N elements), the chunks are
// warp-striped: lane l's chunk c starts at element c * 32 * V + l * V of the tile, so
// each warp-wide access covers 512 contiguous bytes.  Elsewhere chunk c of group g
// starts at g * N + c * V, the group layout the encode keeps.  Why: with the group
// layout a warp's 16-byte stores land 64 bytes apart and write each 32-byte sector in
// two halves; GPU run 2 (H100, benchmarks/results/NVIDIA_H100_80GB_HBM3/run2) measured
// the CUDA decode at 78 % of copy (nearest, fp32) against Triton's coalesced 97 %, and the
// 2-neighbour mix at 72 % against 93 %, while the encode, whose stores are contiguous
// across lanes, ran at 90 %.
constexpr int kWarp = 32;

template <typename T>
__host__ __device__ constexpr int vec_elems() { return 16 / static_cast<int>(sizeof(T)); }

// Where the chunks of the thread of group g start: chunk c at first + c * step.
struct Chunks {
  int64_t first, step;
  __device__ __forceinline__ int64_t at(int c) const { return first + c * step; }
};

// Striped when the 32 groups of g's warp (lane = g % 32) are all whole; groups of N
// elements (kEPT, or the mix's kMixEPT).  GPU run 3 (H200,
// benchmarks/results/NVIDIA_H200/run3) timed the tiles against the group layout
// everywhere: decode 0.99-1.36x (1.36x at 1 bit, nearest, fp32), mix 1.00-1.04x.
template <int V, int N = kEPT>
__device__ __forceinline__ Chunks chunks_of(int64_t g, int lane, int64_t whole) {
  if (g - lane + kWarp <= whole) return Chunks{(g - lane) * N + lane * V, kWarp * V};
  return Chunks{g * N, V};
}

// Elements [e0, e0 + V) as floats; one 16-byte access when VEC (p 16-byte aligned).
template <typename T>
__device__ __forceinline__ void load_chunk(const T* p, int64_t e0, bool vec, float* v) {
  constexpr int V = vec_elems<T>();
  if (vec) {
    const uint4 raw = __ldg(reinterpret_cast<const uint4*>(p + e0));
    const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
    for (int j = 0; j < V; ++j) v[j] = to_float(e[j]);
  } else {
#pragma unroll
    for (int j = 0; j < V; ++j) v[j] = to_float(p[e0 + j]);
  }
}

template <typename T>
__device__ __forceinline__ void store_chunk(T* p, int64_t e0, bool vec, const float* v) {
  constexpr int V = vec_elems<T>();
  if (vec) {
    uint4 raw;
    T* e = reinterpret_cast<T*>(&raw);
#pragma unroll
    for (int j = 0; j < V; ++j) from_float(e[j], v[j]);
    *reinterpret_cast<uint4*>(p + e0) = raw;
  } else {
#pragma unroll
    for (int j = 0; j < V; ++j) from_float(p[e0 + j], v[j]);
  }
}

// The packed codes of a chunk of V elements from e0 (a multiple of V): V * BITS bits
// from bit e0 * BITS of the payload (DESIGN.md section 5: little-endian within and across
// bytes), 4 to 64 bits.  Half a byte (float32, 1 bit) is read as its byte, shifted; whole
// bytes as one word when VEC (payload aligned to the word), else byte by byte.
template <int BITS, int V>
using ChunkWord = std::conditional_t<(V * BITS > 32), uint2, uint32_t>;

template <int BITS, int V>
__host__ __device__ constexpr int chunk_code_bytes() { return V * BITS >= 8 ? V * BITS / 8 : 1; }

template <int BITS, int V>
__device__ __forceinline__ ChunkWord<BITS, V> load_chunk_codes(const uint8_t* payload, int64_t e0,
                                                              bool vec) {
  constexpr int kBytes = chunk_code_bytes<BITS, V>();
  const uint8_t* p = payload + ((e0 * BITS) >> 3);
  if constexpr (V * BITS < 8) {
    return static_cast<uint32_t>(__ldg(p)) >> ((e0 * BITS) & 7);
  } else if constexpr (V * BITS <= 32) {
    using W = std::conditional_t<kBytes == 1, uint8_t, std::conditional_t<kBytes == 2, uint16_t,
                                                                          uint32_t>>;
    if (vec) return static_cast<uint32_t>(__ldg(reinterpret_cast<const W*>(p)));
    uint32_t w = 0;
#pragma unroll
    for (int j = 0; j < kBytes; ++j) w |= static_cast<uint32_t>(p[j]) << (8 * j);
    return w;
  } else {
    if (vec) return __ldg(reinterpret_cast<const uint2*>(p));
    uint2 w{0u, 0u};
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      w.x |= static_cast<uint32_t>(p[j]) << (8 * j);
      w.y |= static_cast<uint32_t>(p[4 + j]) << (8 * j);
    }
    return w;
  }
}

template <int BITS, int V>
__device__ __forceinline__ void chunk_codes(const ChunkWord<BITS, V>& w, uint32_t* k) {
  constexpr uint32_t kMask = (1u << BITS) - 1u;
  if constexpr (V * BITS <= 32) {
#pragma unroll
    for (int j = 0; j < V; ++j) k[j] = (w >> (j * BITS)) & kMask;
  } else {
    constexpr int kHalf = 32 / BITS;
#pragma unroll
    for (int j = 0; j < kHalf; ++j) {
      k[j] = (w.x >> (j * BITS)) & kMask;
      k[kHalf + j] = (w.y >> (j * BITS)) & kMask;
    }
  }
}

// ------------------------------------------------------------------- non-finite probe

// probe += v * 0 (an explicit fma, one instruction): stays 0 while every v is finite
// and turns NaN at the first NaN/inf.  Checked once per group; only a group that trips
// it is counted element by element.
__device__ __forceinline__ float probe_add(float probe, float v) { return __fmaf_rn(v, 0.0f, probe); }

__device__ __forceinline__ bool not_finite(float v) { return !(fabsf(v) < INFINITY); }

}  // namespace cuda
}  // namespace moniqua_kernels
