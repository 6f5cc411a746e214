// Random-k and top-k sparsification on the CPU (DESIGN.md section 6).
// Random-k regenerates its mask from the stream: a counting pass per block, a prefix
// sum in the binding, then a gather (encode) or scatter (decode) pass.
#include <algorithm>
#include <vector>

#include "block.h"

namespace moniqua_kernels {
namespace cpu {
namespace {

// mask[i] = 1 where element begin + i is kept; returns the count.
MK_INLINE int64_t mask_block(Stream s, BlockRange r, uint32_t threshold, uint8_t* mask) {
  alignas(64) uint32_t words[kBlock];
  philox_words_block(s, r.begin, (r.len + 3) / 4, words);
  int64_t count = 0;
  for (int64_t i = 0; i < r.len; ++i) {
    mask[i] = randomk_keep(words[i], threshold) ? 1 : 0;
    count += mask[i];
  }
  return count;
}

template <typename E>
MK_INLINE void gather_blocks(const E* x, int64_t n, uint32_t threshold, Stream s, E* values,
                             int64_t blk0, int64_t blk1) {
  alignas(64) uint8_t mask[kBlock];
  int64_t out = 0;
  for (int64_t blk = blk0; blk < blk1; ++blk) {
    const BlockRange r = block_range(blk, n);
    mask_block(s, r, threshold, mask);
    for (int64_t i = 0; i < r.len; ++i)
      if (mask[i]) values[out++] = x[r.begin + i];
  }
}

template <typename T>
MK_INLINE void scatter_blocks(const T* values, int64_t n, uint32_t threshold, Stream s,
                              bool rescale, float inv_ratio, T* out, int64_t blk0,
                              int64_t blk1) {
  alignas(64) uint8_t mask[kBlock];
  int64_t in = 0;
  for (int64_t blk = blk0; blk < blk1; ++blk) {
    const BlockRange r = block_range(blk, n);
    mask_block(s, r, threshold, mask);
    T* o = out + r.begin;
    for (int64_t i = 0; i < r.len; ++i) {
      if (mask[i]) {
        const T v = values[in++];
        if (rescale) {
          store_float(o, i, MK_FMUL(load_float(&v, 0), inv_ratio));
        } else {
          o[i] = v;
        }
      } else {
        store_float(o, i, 0.0f);
      }
    }
  }
}

}  // namespace

MK_CPU_ENTRY
void randomk_block_counts(int64_t n, uint32_t threshold, Stream s, int64_t* counts,
                          int64_t blk0, int64_t blk1) {
  alignas(64) uint8_t mask[kBlock];
  for (int64_t blk = blk0; blk < blk1; ++blk)
    counts[blk - blk0] = mask_block(s, block_range(blk, n), threshold, mask);
}

MK_CPU_ENTRY
void randomk_gather(const void* x, int elem_size, int64_t n, uint32_t threshold, Stream s,
                    void* values, int64_t first, int64_t blk0, int64_t blk1) {
  if (elem_size == 2) {
    gather_blocks(static_cast<const uint16_t*>(x), n, threshold, s,
                  static_cast<uint16_t*>(values) + first, blk0, blk1);
  } else {
    gather_blocks(static_cast<const uint32_t*>(x), n, threshold, s,
                  static_cast<uint32_t*>(values) + first, blk0, blk1);
  }
}

MK_CPU_ENTRY
void randomk_scatter(const void* values, DType dt, int64_t n, uint32_t threshold, Stream s,
                     bool rescale, float inv_ratio, void* out, int64_t first, int64_t blk0,
                     int64_t blk1) {
  dispatch_dtype(dt, [&](auto tag) MK_LAMBDA_INLINE {
    using T = decltype(tag);
    scatter_blocks(static_cast<const T*>(values) + first, n, threshold, s, rescale, inv_ratio,
                   static_cast<T*>(out), blk0, blk1);
  });
}

void topk_select(const void* x, DType dt, int64_t n, int64_t k, int64_t* indices) {
  if (k <= 0) return;
  // Key = bit pattern of |x| as float32: for non-negative floats the unsigned order is
  // the numeric order; every NaN maps to one key above inf (torch's sort puts NaN
  // first and keeps equal keys in index order).
  std::vector<uint32_t> keys(static_cast<size_t>(n));
  dispatch_dtype(dt, [&](auto tag) MK_LAMBDA_INLINE {
    const auto* xt = static_cast<const decltype(tag)*>(x);
    for (int64_t i = 0; i < n; ++i) {
      const uint32_t a = float_bits(load_float(xt, i)) & 0x7FFFFFFFu;
      keys[i] = a > 0x7F800000u ? 0x7F800001u : a;
    }
  });
  std::vector<uint32_t> sorted(keys);
  std::nth_element(sorted.begin(), sorted.begin() + (k - 1), sorted.end(),
                   [](uint32_t a, uint32_t b) { return a > b; });
  const uint32_t kth = sorted[k - 1];  // the k-th largest key
  int64_t above = 0;
  for (int64_t i = 0; i < n; ++i) above += keys[i] > kth;
  int64_t ties = k - above;  // keys equal to kth taken from the lowest index up
  int64_t out = 0;
  for (int64_t i = 0; i < n && out < k; ++i) {
    if (keys[i] > kth || (keys[i] == kth && ties-- > 0)) indices[out++] = i;
  }
}

}  // namespace cpu
}  // namespace moniqua_kernels
