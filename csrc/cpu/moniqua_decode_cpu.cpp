// Moniqua decode on the CPU: the sender's values recovered against the receiver's own
// (DESIGN.md section 4; the block decode, shared with the mix, is in moniqua_cpu.h).
#include "moniqua_cpu.h"

namespace moniqua_kernels {
namespace cpu {
namespace {

template <int BITS, int ROUND, typename T>
MK_INLINE int64_t decode_blocks(const uint8_t* payload, const T* y, int64_t n, ModulusParams m,
                                Stream s, T* out, bool check, int64_t blk0, int64_t blk1) {
  alignas(64) float yf[kBlock];
  alignas(64) float xh[kBlock];
  int64_t bad = 0;
  for (int64_t blk = blk0; blk < blk1; ++blk) {
    const BlockRange r = block_range(blk, n);
    if (std::is_same<T, float>::value) {  // read y and write out directly
      bad += decode_row<BITS, ROUND, T>(payload, reinterpret_cast<const float*>(y) + r.begin,
                                        r, m, s, reinterpret_cast<float*>(out) + r.begin, check);
    } else {
      load_row(y, r, yf);
      bad += decode_row<BITS, ROUND, T>(payload, yf, r, m, s, xh, check);
      store_row(out, r, xh);
    }
  }
  return bad;
}

}  // namespace

MK_CPU_ENTRY
int64_t moniqua_decode(const uint8_t* payload, const void* y, DType dt, int64_t n,
                       ModulusParams m, Stream s, void* out, bool check, int64_t blk0,
                       int64_t blk1) {
  return dispatch_dtype(dt, [&](auto tag) MK_LAMBDA_INLINE {
    using T = decltype(tag);
    return dispatch_bits(m.bits, [&](auto bits) MK_LAMBDA_INLINE {
      return dispatch_rounding(m.rounding, [&](auto round) MK_LAMBDA_INLINE {
        return decode_blocks<decltype(bits)::value, decltype(round)::value>(
            payload, static_cast<const T*>(y), n, m, s, static_cast<T*>(out), check, blk0,
            blk1);
      });
    });
  });
}

}  // namespace cpu
}  // namespace moniqua_kernels
