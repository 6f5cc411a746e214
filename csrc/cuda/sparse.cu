// Random-k on CUDA (DESIGN.md section 6): the mask is regenerated from the stream in
// chunks of kRandomkChunk elements (one block each, 4 elements = 1 Philox call per
// thread); a count pass, a one-block exclusive scan, then an order-preserving gather
// or scatter with a block scan.  Top-k is served by torch's sort (csrc/ops.cpp).
#include <cub/block/block_scan.cuh>

#include "device.cuh"

namespace moniqua_kernels {
namespace cuda {
namespace {

constexpr int kChunkThreads = static_cast<int>(kRandomkChunk / 4);

// The 4-bit mask of thread t's Philox call in chunk `chunk` (bit j: element 4t + j).
__device__ __forceinline__ unsigned call_mask(int64_t chunk, int t, int64_t n, uint32_t thr,
                                              Stream s) {
  const int64_t base = chunk * kRandomkChunk + 4 * static_cast<int64_t>(t);
  if (base >= n) return 0u;
  uint32_t w[4];
  philox4x32_10(static_cast<uint64_t>(s.offset + base) >> 2, philox_key(s.seed), w);
  unsigned m = 0;
#pragma unroll
  for (int j = 0; j < 4; ++j)
    if (base + j < n && randomk_keep(w[j], thr)) m |= 1u << j;
  return m;
}

using Scan = cub::BlockScan<int, kChunkThreads>;

__global__ void count_kernel(int64_t n, uint32_t thr, Stream s, int64_t* __restrict__ counts) {
  __shared__ typename Scan::TempStorage tmp;
  const int64_t chunk = blockIdx.x + static_cast<int64_t>(blockIdx.y) * gridDim.x;
  if (chunk >= randomk_chunks(n)) return;
  const int kept = __popc(call_mask(chunk, threadIdx.x, n, thr, s));
  int total;
  int excl;
  Scan(tmp).ExclusiveSum(kept, excl, total);
  if (threadIdx.x == 0) counts[chunk] = total;
}

// In place: counts -> exclusive prefix, plus the total at index nchunks.  One block of
// kScanThreads: 1024 threads needed 87 registers each, more than an SM has for one block
// (seen on an H100: "too many resources requested for launch").
constexpr int kScanThreads = 256;

__global__ void __launch_bounds__(kScanThreads) scan_kernel(int64_t* __restrict__ first,
                                                            int64_t nchunks) {
  using LScan = cub::BlockScan<int64_t, kScanThreads>;
  __shared__ typename LScan::TempStorage tmp;
  __shared__ int64_t carry;
  if (threadIdx.x == 0) carry = 0;
  __syncthreads();
  for (int64_t start = 0; start < nchunks; start += kScanThreads) {
    const int64_t i = start + threadIdx.x;
    const int64_t v = i < nchunks ? first[i] : 0;
    int64_t excl, total;
    LScan(tmp).ExclusiveSum(v, excl, total);
    if (i < nchunks) first[i] = carry + excl;
    __syncthreads();
    if (threadIdx.x == 0) carry += total;
    __syncthreads();
  }
  if (threadIdx.x == 0) first[nchunks] = carry;
}

// This thread's chunk, 4-bit mask, and the index of its first kept element overall
// (order-preserving: a block scan over the chunk's threads after the chunk prefix).
struct ThreadKept {
  int64_t base;   // first element of the thread's Philox call
  unsigned mask;
  int64_t first;  // position among all kept elements
};

__device__ __forceinline__ bool thread_kept(int64_t n, uint32_t thr, Stream s,
                                            const int64_t* first, Scan::TempStorage& tmp,
                                            ThreadKept& out) {
  const int64_t chunk = blockIdx.x + static_cast<int64_t>(blockIdx.y) * gridDim.x;
  if (chunk >= randomk_chunks(n)) return false;  // whole block: no scan to desert
  out.mask = call_mask(chunk, threadIdx.x, n, thr, s);
  int excl, total;
  Scan(tmp).ExclusiveSum(__popc(out.mask), excl, total);
  out.first = first[chunk] + excl;
  out.base = chunk * kRandomkChunk + 4 * static_cast<int64_t>(threadIdx.x);
  return true;
}

template <typename E>
__global__ void gather_kernel(const E* __restrict__ x, int64_t n, uint32_t thr, Stream s,
                              const int64_t* __restrict__ first, E* __restrict__ values) {
  __shared__ typename Scan::TempStorage tmp;
  ThreadKept t;
  if (!thread_kept(n, thr, s, first, tmp, t)) return;
  int64_t out = t.first;
#pragma unroll
  for (int j = 0; j < 4; ++j)
    if (t.mask & (1u << j)) values[out++] = x[t.base + j];
}

template <typename T>
__global__ void scatter_kernel(const T* __restrict__ values, int64_t n, uint32_t thr,
                               Stream s, const int64_t* __restrict__ first, bool rescale,
                               float inv_ratio, T* __restrict__ out) {
  __shared__ typename Scan::TempStorage tmp;
  ThreadKept t;
  if (!thread_kept(n, thr, s, first, tmp, t)) return;
  int64_t in = t.first;
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    if (t.base + j >= n) break;
    if (t.mask & (1u << j)) {
      const T v = values[in++];
      if (rescale) from_float(out[t.base + j], __fmul_rn(to_float(v), inv_ratio));
      else out[t.base + j] = v;
    } else {
      from_float(out[t.base + j], 0.0f);
    }
  }
}

// Chunks laid out over a 2-D grid (x up to 65535 * 2^k is plenty; y covers the rest).
dim3 chunk_grid(int64_t nchunks) {
  const int64_t x = nchunks < 65535 ? nchunks : 65535;
  const int64_t y = (nchunks + x - 1) / x;
  return dim3(static_cast<unsigned>(x < 1 ? 1 : x), static_cast<unsigned>(y < 1 ? 1 : y));
}

}  // namespace

cudaError_t randomk_prefix(int64_t n, uint32_t threshold, Stream s, int64_t* first,
                           cudaStream_t st) {
  const int64_t nchunks = randomk_chunks(n);
  if (nchunks > 0) {
    MK_LAUNCH(chunk_grid(nchunks), kChunkThreads, st, count_kernel)(n, threshold, s, first);
    MK_LAUNCH_CHECK();
  }
  MK_LAUNCH(1, kScanThreads, st, scan_kernel)(first, nchunks);
  MK_LAUNCH_CHECK();
  return cudaSuccess;
}

cudaError_t randomk_gather(const void* x, int elem_size, int64_t n, uint32_t threshold,
                           Stream s, const int64_t* first, void* values, cudaStream_t st) {
  const int64_t nchunks = randomk_chunks(n);
  if (nchunks == 0) return cudaSuccess;
  if (elem_size == 2) {
    MK_LAUNCH(chunk_grid(nchunks), kChunkThreads, st, gather_kernel<uint16_t>)(
        static_cast<const uint16_t*>(x), n, threshold, s, first, static_cast<uint16_t*>(values));
  } else {
    MK_LAUNCH(chunk_grid(nchunks), kChunkThreads, st, gather_kernel<uint32_t>)(
        static_cast<const uint32_t*>(x), n, threshold, s, first, static_cast<uint32_t*>(values));
  }
  MK_LAUNCH_CHECK();
  return cudaSuccess;
}

cudaError_t randomk_scatter(const void* values, DType dt, int64_t n, uint32_t threshold,
                            Stream s, const int64_t* first, bool rescale, float inv_ratio,
                            void* out, cudaStream_t st) {
  const int64_t nchunks = randomk_chunks(n);
  if (nchunks == 0) return cudaSuccess;
  return dispatch_dtype(dt, [&](auto tag) {
    using T = decltype(tag);
    MK_LAUNCH(chunk_grid(nchunks), kChunkThreads, st, scatter_kernel<T>)(
        static_cast<const T*>(values), n, threshold, s, first, rescale, inv_ratio,
        static_cast<T*>(out));
    MK_LAUNCH_CHECK();
    return cudaSuccess;
  });
}

}  // namespace cuda
}  // namespace moniqua_kernels
