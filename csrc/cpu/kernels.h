// The CPU kernels' torch-free interface: raw pointers, element counts, and a range of
// work blocks.  The torch bindings (csrc/ops.cpp) run the blocks of a call over
// at::parallel_for, so torch.set_num_threads governs them; the C++ unit tests
// (csrc/tests) call the same functions without torch.
//
// A block is kBlock consecutive elements: block i covers elements
// [i*kBlock, min((i+1)*kBlock, n)).  kBlock is a multiple of 8 (whole output bytes
// at every bit width, so blocks never share a byte) and of 4 (whole Philox calls).
#pragma once

#include <cstdint>

#include "moniqua_kernels/common.h"

namespace moniqua_kernels {
namespace cpu {

// 1024 elements: the per-block scratch (uniforms, codes, and for mix four float
// rows) stays inside the 48 KiB L1 of the CI box's cores.  (Chosen by that budget,
// not tuned by measurement.)
constexpr int64_t kBlock = 1024;

inline int64_t num_blocks(int64_t n) { return (n + kBlock - 1) / kBlock; }

// Which instruction set the multiversioned kernels picked at load time
// ("x86-64-v4", "x86-64-v3" or "baseline"), for benchmark reports.
const char* isa_name();

// Streams (common.h) reach these kernels with tensor == nullptr: the binding reads a
// stream tensor on the host.  Float-element tensors are passed as (pointer, DType);
// half and bfloat16 are their 16-bit patterns.
//
// The kernels with a `check` argument return, for their blocks, how many elements were
// not finite (DESIGN.md section 7: inputs for the encoders, results for decode and
// mix); with check false they return 0 and count nothing.

void philox_uniform(int64_t n, Stream s, float* out, int64_t blk0, int64_t blk1);

void pack_bits(const uint8_t* codes, int64_t n, int bits, uint8_t* out, int64_t blk0,
               int64_t blk1);
void unpack_bits(const uint8_t* payload, int64_t n, int bits, uint8_t* out, int64_t blk0,
                 int64_t blk1);

// Counts elements whose t = x * invB is not finite (a NaN/inf x, or B too small).
int64_t moniqua_encode(const void* x, DType dt, int64_t n, ModulusParams m, Stream s,
                       uint8_t* payload, bool check, int64_t blk0, int64_t blk1);
// Counts non-finite decoded values.
int64_t moniqua_decode(const uint8_t* payload, const void* y, DType dt, int64_t n,
                       ModulusParams m, Stream s, void* out, bool check, int64_t blk0,
                       int64_t blk1);

// x <- x + gamma * sum_j w_j (dec(q_j; x) - dec(q_self; x)), in place.
// streams[j] belongs to payloads[j] for j < npayloads, streams[npayloads] to own.
// With check, an element whose result is not finite keeps its old value and is counted.
struct MixArgs {
  ModulusParams m;
  int64_t npayloads;
  const uint8_t* const* payloads;
  const float* weights;  // float32(w_j)
  const uint8_t* own;
  float gamma;           // float32(gamma)
  const Stream* streams;
  bool check;
};
int64_t moniqua_mix(void* x, DType dt, int64_t n, const MixArgs& a, int64_t blk0,
                    int64_t blk1);

// QSGD: bucket scales first, then codes (over element blocks).  A bucket's scale comes
// from its qsgd_scale_pieces(d) pieces of at most kScalePiece elements, over piece ranges,
// so that a few huge buckets (d = n) still spread over the threads: a bucket of one piece
// gets its scale (into scales[q]), else each piece its statistic (into stat[p]: norm_l2,
// its float32 squares summed in double, else max |v|, exact), and qsgd_finish_scales
// combines a bucket's pieces in order (the same scale for every thread count).  The
// statistics pass reads every element: it counts the non-finite ones.
// Why pieces: a bucket was one task; 2^24 float32 in one bucket took as long as in
// buckets of 2^14 on 2 cores (one core streams near the memory bound there), but one
// thread of many reads the whole tensor alone.
constexpr int64_t kScalePiece = int64_t{1} << 16;
inline int64_t qsgd_scale_pieces(int64_t bucket_size) {
  return (bucket_size + kScalePiece - 1) / kScalePiece;
}
int64_t qsgd_piece_stats(const void* x, DType dt, int64_t n, int64_t bucket_size, bool norm_l2,
                         double* stat, float* scales, bool check, int64_t piece0,
                         int64_t piece1);
void qsgd_finish_scales(const double* stat, int64_t pieces, bool norm_l2, float* scales,
                        int64_t bucket0, int64_t bucket1);
void qsgd_encode(const void* x, DType dt, int64_t n, int bits, int64_t bucket_size,
                 const float* scales, Stream s, uint8_t* payload, int64_t blk0, int64_t blk1);
void qsgd_decode(const float* scales, const uint8_t* payload, int64_t n, int bits,
                 int64_t bucket_size, float* out, int64_t blk0, int64_t blk1);

// QSGD in one pass where a bucket is a run of whole blocks or a block holds whole
// buckets: 16 <= d <= 65536 with d dividing kBlock or kBlock dividing d.  A chunk is
// max(d, kBlock) elements (d = 512: one block of 2 buckets; 4096: a bucket of 4
// blocks); chunk c is blocks [c * chunk_blocks, (c + 1) * chunk_blocks).
// qsgd_encode_chunks takes a chunk's buckets' scales, then its codes from the cached
// elements (at most 256 KiB of float32): the same scales, codes and non-finite count
// as qsgd_piece_stats + qsgd_encode, reading x once.  Measured on the CI box with
// benchmarks/qsgd_cpu_passes.cpp (the kernels alone, 2 threads, 2^24 float32, 4 bits,
// max norm; the two ways alternating, medians of 31), two passes over one, in four
// runs: d = 128 1.00-1.06x, 256 1.07-1.10x, 512 1.04-1.12x, 4096 0.98-1.05x, 65536
// 1.03-1.08x.  The gain is the second read of x from DRAM and shrinks when memory is
// idle (the copy beside it at 2.8 ms instead of 4 ms): the encode is bound by Philox.
// Not at 384 (lcm(384, 1024) = 3 blocks: 0.96-1.02x).  Below 128 the per-bucket loops
// bound both ways until the codes ran over whole blocks (qsgd_cpu.cpp); since then, two
// runs: 16 1.15-1.18x, 32 1.19-1.22x, 64 1.20x, 128 1.19-1.22x, 8 1.04x, 4 0.98x, 2 0.93x, 1 0.89x.
// 0: the two passes serve.
constexpr int64_t kOnePassMinBucket = 16;
inline int64_t qsgd_chunk_blocks(int64_t bucket_size) {
  if (bucket_size < kOnePassMinBucket || bucket_size > kScalePiece) return 0;
  if (kBlock % bucket_size == 0) return 1;
  return bucket_size % kBlock == 0 ? bucket_size / kBlock : 0;
}
inline int64_t qsgd_num_chunks(int64_t n, int64_t bucket_size) {  // 0 without one pass
  const int64_t cb = qsgd_chunk_blocks(bucket_size);
  return cb > 0 ? (num_blocks(n) + cb - 1) / cb : 0;
}
// PACK: packed codes into out (qsgd_encode's payload); else one code per byte at
// out + element index (qsgd_codes').  Returns the non-finite count (with check).
int64_t qsgd_encode_chunks(const void* x, DType dt, int64_t n, int bits, int64_t bucket_size,
                           bool norm_l2, float* scales, Stream s, uint8_t* out, bool pack,
                           bool check, int64_t chunk0, int64_t chunk1);

// QSGD's codes unpacked, one byte per element at codes[i] (sign in bit bits-1, level
// below it), for the element blocks [blk0, blk1): the Elias coder's input.
void qsgd_codes(const void* x, DType dt, int64_t n, int bits, int64_t bucket_size,
                const float* scales, Stream s, uint8_t* codes, int64_t blk0, int64_t blk1);

// Elias-coded QSGD (moniqua_kernels/reference/qsgd_elias.py), over bucket ranges:
// the bits of each bucket's codes (bucket_bits[q - q0]), then the stream itself,
// buckets [q0, q1) from bit first_bit on.  out must be zeroed; a byte this range shares
// with the range before or after it is written with an atomic OR, so ranges may run in
// parallel.  The decoder is serial (a bucket's codes start where the last one's end)
// and returns false, having written what it decoded so far, on a malformed stream.
void elias_bucket_bits(const uint8_t* codes, int64_t n, int bits, int64_t bucket_size,
                       const float* scales, int64_t* bucket_bits, int64_t q0, int64_t q1);
void elias_write(const uint8_t* codes, int64_t n, int bits, int64_t bucket_size,
                 const float* scales, uint8_t* out, int64_t first_bit, int64_t q0, int64_t q1);
bool elias_decode(const float* scales, const uint8_t* stream, int64_t nbytes, int64_t n,
                  int bits, int64_t bucket_size, float* out);

// Scaled sign: the bits of each block, and each block's sum |x| in double into
// block_sums[blk - blk0]; the caller adds them in block order (a deterministic scale
// for any thread count).  A non-finite |x| makes its block's sum non-finite: the
// binding counts those blocks' non-finite elements only then.
void sign_encode(const void* x, DType dt, int64_t n, uint8_t* payload, double* block_sums,
                 int64_t blk0, int64_t blk1);
int64_t count_non_finite(const void* x, DType dt, int64_t begin, int64_t end);
void sign_decode(float scale, const uint8_t* payload, int64_t n, float* out, int64_t blk0,
                 int64_t blk1);

// Random-k: threshold = ceil(ratio * 2^24); element kept where (word >> 8) < threshold.
// counts[blk - blk0] = kept elements of each block.
void randomk_block_counts(int64_t n, uint32_t threshold, Stream s, int64_t* counts,
                          int64_t blk0, int64_t blk1);
// Gathers the kept elements (element size 2 or 4 bytes) of blocks [blk0, blk1) to
// values + first, first = kept elements before blk0.
void randomk_gather(const void* x, int elem_size, int64_t n, uint32_t threshold, Stream s,
                    void* values, int64_t first, int64_t blk0, int64_t blk1);
// Scatters values (from index first on) into out (zeroed here), multiplied by
// float32(1/ratio) when rescale (then rounded back to dt).
void randomk_scatter(const void* values, DType dt, int64_t n, uint32_t threshold, Stream s,
                     bool rescale, float inv_ratio, void* out, int64_t first, int64_t blk0,
                     int64_t blk1);

// Top-k: the k elements of largest |x| (ties to the lower index), ascending indices.
// Serial; indices are int64 here, the binding narrows them to int32 when n < 2^31.
void topk_select(const void* x, DType dt, int64_t n, int64_t k, int64_t* indices);

}  // namespace cpu
}  // namespace moniqua_kernels
