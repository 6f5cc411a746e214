// Bucketed QSGD on CUDA (DESIGN.md section 6), two shapes of launch:
//  * a bucket of whole groups that divides a block's 256 groups (d = 16, 32, ..., 4096;
//    the default d = 512 is one warp): one kernel, one thread per 16-element group; the
//    d / 16 lanes of a bucket reduce its scale with shuffles (and, past a warp, through
//    shared memory), then quantize and pack the elements they hold.  x is read once.
//  * any other d: one block per piece of at most 8192 elements of a bucket for the
//    scales (finished by one more kernel where a bucket has several pieces), then one
//    thread per group for the codes (x is read twice).
// Why the first: GPU run 2 (H100, benchmarks/results/NVIDIA_H100_80GB_HBM3/run2) measured
// the two-kernel path at 24 % of copy bandwidth for d = 512 (4 bits, fp32) against 57 % for
// Triton's one-pass kernel; a 512-element bucket left a 256-thread block two elements a
// thread and eight barriers of a double tree.  (The one-pass kernel came after run 2 and
// has not been timed on a GPU yet; gpu_check times it as bench_other's qsgd_encode rows.)
#include "device.cuh"

namespace moniqua_kernels {
namespace cuda {
namespace {

// The two-kernel path's scales come in pieces of at most kScalePiece elements, one block
// a piece: a bucket of d elements is ceil(d / kScalePiece) pieces, so a few huge buckets
// (d = n: QSGD unbucketed) still spread over every SM instead of one block per bucket
// reading the whole tensor alone.  A bucket of one piece is finished by its block; else
// the pieces' statistics go to the workspace and finish_scales_kernel combines them in a
// fixed order (the l2 sum is deterministic).  8192 = 32 elements a thread of a block.
constexpr int64_t kScalePiece = 32 * kThreads;

int64_t pieces_per_bucket(int64_t d) { return (d + kScalePiece - 1) / kScalePiece; }

// The block's statistic of its threads' values (a double tree in shared memory): the sum
// for l2, else the max.  Thread 0 holds the result; every thread must call it.
__device__ double block_stat(double acc, bool l2) {
  __shared__ double part[kThreads];
  part[threadIdx.x] = acc;
  __syncthreads();
  for (int stride = blockDim.x / 2; stride > 0; stride >>= 1) {
    if (threadIdx.x < stride) {
      const double o = part[threadIdx.x + stride];
      part[threadIdx.x] = l2 ? part[threadIdx.x] + o : fmax(part[threadIdx.x], o);
    }
    __syncthreads();
  }
  const double stat = part[0];
  __syncthreads();  // part is reused by the block's next piece
  return stat;
}

// One block a piece; pieces > 1: statistics (not scales) into part[q * pieces + c].
template <typename T>
__global__ void scales_kernel(const T* __restrict__ x, int64_t n, int64_t d, int64_t pieces,
                              bool l2, Stream stream, float* __restrict__ scales,
                              double* __restrict__ part, int64_t* __restrict__ flag) {
  if (!stream_ok(stream, nullptr)) return;  // refused (encode_kernel flags it): no scales
  const int64_t nq = (n + d - 1) / d;
  int64_t bad = 0;
  for (int64_t p = blockIdx.x; p < nq * pieces; p += gridDim.x) {
    const int64_t q = p / pieces, bucket_end = q * d + d < n ? q * d + d : n;
    const int64_t begin = q * d + (p - q * pieces) * kScalePiece;
    const int64_t end = begin + kScalePiece < bucket_end ? begin + kScalePiece : bucket_end;
    double acc = 0.0;  // l2: float32 squares summed in double; max: exact in any order
    // Unrolled, up to eight loads a thread are in flight.  Without, sm_90 SASS has one
    // LDG an iteration: one 128-byte load a warp, 8 KB an SM at 64 warps, where an H100's
    // ~3.35 TB/s times ~0.7 us of latency wants ~18 KB an SM in flight.  Not timed yet.
#pragma unroll 8
    for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) {
      const float v = to_float(x[i]);
      if (l2) acc += static_cast<double>(__fmul_rn(v, v));
      else acc = fmax(acc, static_cast<double>(fabsf(v)));
      if (flag != nullptr) bad += not_finite(v);  // fmax skips NaN: count here
    }
    const double stat = block_stat(acc, l2);
    if (threadIdx.x == 0) {
      if (pieces == 1) scales[q] = qsgd_scale(stat, l2);
      else part[p] = stat;
    }
  }
  if (bad) flag_add(flag, kNonFinite, bad);
}

// One block a bucket: its pieces' statistics, combined in a fixed order.
__global__ void finish_scales_kernel(const double* __restrict__ part, int64_t nq, int64_t pieces,
                                     bool l2, Stream stream, float* __restrict__ scales) {
  if (!stream_ok(stream, nullptr)) return;
  for (int64_t q = blockIdx.x; q < nq; q += gridDim.x) {
    double acc = 0.0;
    for (int64_t c = threadIdx.x; c < pieces; c += blockDim.x) {
      const double o = part[q * pieces + c];
      acc = l2 ? acc + o : fmax(acc, o);
    }
    const double stat = block_stat(acc, l2);
    if (threadIdx.x == 0) scales[q] = qsgd_scale(stat, l2);
  }
}

template <int BITS, typename T>
__global__ void encode_kernel(const T* __restrict__ x, int64_t n, int64_t d,
                              const float* __restrict__ scales, Stream stream,
                              uint8_t* __restrict__ payload, int64_t* __restrict__ flag) {
  StreamVals s;
  if (!read_stream(stream, flag, s)) return;
  const bool vec_x = aligned_to(x, 16), vec_p = aligned_to(payload, group_bytes<BITS>());
  const int64_t nbytes = packed_nbytes(n, BITS);
  MK_GRID_STRIDE(g, (n + kEPT - 1) / kEPT) {
    const int64_t base = g * kEPT;
    const bool whole = base + kEPT <= n;
    float v[kEPT];
    uint32_t k[kEPT], w[kEPT];
    if (whole) load_group(x, base, vec_x, v); else load_tail(x, base, n, v);
    stream_words(s, base, w);
    int64_t q = base / d, qend = (q + 1) * d;
    float r = qsgd_ratio(BITS, scales[q]);
#pragma unroll
    for (int j = 0; j < kEPT; ++j) {
      if (base + j >= qend && base + j < n) {  // the group crosses into the next bucket
        q = (base + j) / d;
        qend = (q + 1) * d;
        r = qsgd_ratio(BITS, scales[q]);
      }
      k[j] = base + j < n ? qsgd_code<BITS>(v[j], r, uniform_from_word(w[j])) : 0u;
    }
    const auto word = codes_word<BITS>(k);
    if (whole) store_code_word<BITS>(payload, g, vec_p, word);
    else store_code_tail<BITS>(payload, g, nbytes, word);
  }
}

// Buckets of `lanes` = d / 16 whole groups, a power of two up to a block's 256 threads:
// the lanes of a bucket are adjacent, so a butterfly of shuffles gives each lane its
// warp's part of the bucket's statistic, and a bucket wider than a warp adds its warps'
// parts from shared memory, in warp order.  The loop is block-uniform (a thread past the
// end holds zeros and still shuffles and waits at the barriers), as shuffles with the
// full mask and __syncthreads require.  Max is exact in any order; the l2 sum (float32
// squares in double) gets one value in every lane of a bucket, since each butterfly step
// adds the same two numbers in both lanes and every warp reads the same parts in the
// same order.
template <int BITS, typename T>
__global__ void fused_encode_kernel(const T* __restrict__ x, int64_t n, int lanes, bool l2,
                                    Stream stream, float* __restrict__ scales,
                                    uint8_t* __restrict__ payload, int64_t* __restrict__ flag) {
  __shared__ double warp_part[kThreads / kWarp];
  StreamVals s;
  if (!read_stream(stream, flag, s)) return;  // refused: nothing written, not even scales
  const bool vec_x = aligned_to(x, 16), vec_p = aligned_to(payload, group_bytes<BITS>());
  const int64_t nbytes = packed_nbytes(n, BITS), groups = (n + kEPT - 1) / kEPT;
  const int lane = static_cast<int>(threadIdx.x) % kWarp, warp = threadIdx.x / kWarp;
  const int warps_per_bucket = lanes > kWarp ? lanes / kWarp : 1;
  int64_t bad = 0;
  for (int64_t g0 = static_cast<int64_t>(blockIdx.x) * blockDim.x; g0 < groups;
       g0 += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t g = g0 + threadIdx.x, base = g * kEPT;
    const bool whole = base + kEPT <= n;
    float v[kEPT];
    if (whole) load_group(x, base, vec_x, v); else load_tail(x, base, n, v);  // zeros past n
    float probe = 0.0f, mx = 0.0f;
    double sq = 0.0;
    if (l2) {
#pragma unroll
      for (int j = 0; j < kEPT; ++j) {
        probe = probe_add(probe, v[j]);
        sq += static_cast<double>(__fmul_rn(v[j], v[j]));
      }
    } else {
#pragma unroll
      for (int j = 0; j < kEPT; ++j) {
        probe = probe_add(probe, v[j]);
        mx = fmaxf(mx, fabsf(v[j]));  // fmaxf skips a NaN, as the CPU kernel's compare
      }
    }
    if (flag != nullptr && probe != 0.0f)
#pragma unroll
      for (int j = 0; j < kEPT; ++j) bad += not_finite(v[j]);
    for (int m = (lanes < kWarp ? lanes : kWarp) >> 1; m > 0; m >>= 1) {
      if (l2) sq += __shfl_xor_sync(0xffffffffu, sq, m);
      else mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, m));
    }
    if (warps_per_bucket > 1) {  // uniform across the block
      if (lane == 0) warp_part[warp] = l2 ? sq : static_cast<double>(mx);
      __syncthreads();
      const int first = warp - warp % warps_per_bucket;
      double part = warp_part[first];
#pragma unroll 1  // at most 8 parts, once per 16 elements: kept small (sm_90 code size)
      for (int w = first + 1; w < first + warps_per_bucket; ++w)
        part = l2 ? part + warp_part[w] : fmax(part, warp_part[w]);
      if (l2) sq = part;
      else mx = static_cast<float>(part);  // a max of floats: exact
      __syncthreads();  // warp_part is written again by the next iteration
    }
    if (base >= n) continue;
    const float scale = l2 ? __fsqrt_rn(static_cast<float>(sq)) : mx;
    if ((threadIdx.x & (lanes - 1)) == 0) scales[g / lanes] = scale;
    const float r = qsgd_ratio(BITS, scale);
    uint32_t k[kEPT], w[kEPT];
    stream_words(s, base, w);
#pragma unroll
    for (int j = 0; j < kEPT; ++j)
      k[j] = whole || base + j < n ? qsgd_code<BITS>(v[j], r, uniform_from_word(w[j])) : 0u;
    const auto word = codes_word<BITS>(k);
    if (whole) store_code_word<BITS>(payload, g, vec_p, word);
    else store_code_tail<BITS>(payload, g, nbytes, word);
  }
  if (bad) flag_add(flag, kNonFinite, bad);
}

template <int BITS>
__global__ void decode_kernel(const float* __restrict__ scales, const uint8_t* __restrict__ payload,
                              int64_t n, int64_t d, float* __restrict__ out,
                              int64_t* __restrict__ flag) {
  check_padding(payload, n, BITS, flag);
  const bool vec_o = aligned_to(out, 16), vec_p = aligned_to(payload, group_bytes<BITS>());
  const int64_t nbytes = packed_nbytes(n, BITS);
  MK_GRID_STRIDE(g, (n + kEPT - 1) / kEPT) {
    const int64_t base = g * kEPT;
    const bool whole = base + kEPT <= n;
    uint32_t k[kEPT];
    float v[kEPT];
    word_codes<BITS>(whole ? load_code_word<BITS>(payload, g, vec_p)
                           : load_code_tail<BITS>(payload, g, nbytes), k);
    // One 64-bit division a group where buckets hold whole groups (the default 512), one
    // per bucket crossed otherwise, not one an element: sm_90 SASS of the 4-bit loop body,
    // both load paths counted, 70.6 instructions an element with a division an element,
    // 35.0 with one a group.
    int64_t q = base / d, qend = (q + 1) * d;
    float scale = scales[q];
    if (d % kEPT == 0) {
#pragma unroll
      for (int j = 0; j < kEPT; ++j) v[j] = qsgd_value<BITS>(k[j], scale);
    } else {
#pragma unroll
      for (int j = 0; j < kEPT; ++j) {
        if (base + j >= qend && base + j < n) {
          q = (base + j) / d;
          qend = (q + 1) * d;
          scale = scales[q];
        }
        v[j] = qsgd_value<BITS>(k[j], scale);
      }
    }
    if (whole) store_group(out, base, vec_o, v); else store_tail(out, base, n, v);
  }
}

// d is whole groups of kEPT and divides a block's 256 groups (d = 16, 32, ..., 4096):
// fused_encode_kernel.
bool fused_encode(int64_t bucket_size) {
  return bucket_size % kEPT == 0 && (kThreads * kEPT) % bucket_size == 0;
}

}  // namespace

int64_t qsgd_workspace_doubles(int64_t n, int64_t bucket_size) {
  const int64_t pieces = pieces_per_bucket(bucket_size);
  if (fused_encode(bucket_size) || pieces == 1) return 0;
  return (n + bucket_size - 1) / bucket_size * pieces;
}

cudaError_t qsgd_encode(const void* x, DType dt, int64_t n, int bits, int64_t bucket_size,
                        bool norm_l2, Stream s, double* workspace, float* scales,
                        uint8_t* payload, int64_t* flag, cudaStream_t st) {
  if (n == 0) return cudaSuccess;
  const int64_t nq = (n + bucket_size - 1) / bucket_size, pieces = pieces_per_bucket(bucket_size);
  const auto capped = [](int64_t blocks) {
    return static_cast<unsigned>(blocks < (int64_t{1} << 20) ? blocks : (int64_t{1} << 20));
  };
  const unsigned grid = grid_for((n + kEPT - 1) / kEPT);
  const bool fused = fused_encode(bucket_size);
  return dispatch_dtype(dt, [&](auto tag) {
    using T = decltype(tag);
    const T* xt = static_cast<const T*>(x);
    return dispatch_qsgd_bits(bits, [&](auto bc) {
      if (fused) {
        MK_LAUNCH(grid, kThreads, st, fused_encode_kernel<decltype(bc)::value, T>)(
            xt, n, static_cast<int>(bucket_size / kEPT), norm_l2, s, scales, payload, flag);
        MK_LAUNCH_CHECK();
        return cudaSuccess;
      }
      MK_LAUNCH(capped(nq * pieces), kThreads, st, scales_kernel<T>)(
          xt, n, bucket_size, pieces, norm_l2, s, scales, workspace, flag);
      MK_LAUNCH_CHECK();
      if (pieces > 1) {
        MK_LAUNCH(capped(nq), kThreads, st, finish_scales_kernel)(workspace, nq, pieces, norm_l2,
                                                                   s, scales);
        MK_LAUNCH_CHECK();
      }
      MK_LAUNCH(grid, kThreads, st, encode_kernel<decltype(bc)::value, T>)(
          xt, n, bucket_size, scales, s, payload, flag);
      MK_LAUNCH_CHECK();
      return cudaSuccess;
    });
  });
}

cudaError_t qsgd_decode(const float* scales, const uint8_t* payload, int64_t n, int bits,
                        int64_t bucket_size, float* out, int64_t* flag, cudaStream_t st) {
  if (n == 0) return cudaSuccess;
  return dispatch_qsgd_bits(bits, [&](auto bc) {
    MK_LAUNCH(grid_for((n + kEPT - 1) / kEPT), kThreads, st, decode_kernel<decltype(bc)::value>)(
        scales, payload, n, bucket_size, out, flag);
    MK_LAUNCH_CHECK();
    return cudaSuccess;
  });
}

}  // namespace cuda
}  // namespace moniqua_kernels
