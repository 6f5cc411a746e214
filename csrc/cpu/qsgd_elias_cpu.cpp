// Elias-coded QSGD on the CPU: the format of moniqua_kernels/reference/qsgd_elias.py.
//
// Per bucket with a non-zero scale: for each nonzero level, omega(gap), the sign bit,
// omega(level); then omega(d + 1 - last position).  Bits most significant first within
// each byte.  Encoding runs over bucket ranges in parallel (each bucket's bit count,
// a prefix sum in the binding, then each range writes its bits); decoding is serial,
// since a bucket's codes start where the previous bucket's end.
#include <cstring>

#include "block.h"

namespace moniqua_kernels {
namespace cpu {
namespace {

// omega(k)'s groups for k >= 1, from the outermost (k itself) in: groups[i], lens[i]
// bits long; returns their count (0 for k = 1).  The code is the groups from the
// innermost out, then a 0.
constexpr int omega_groups(uint64_t k, uint64_t groups[8], int lens[8]) {
  int m = 0;
  while (k > 1) {
    const int b = 64 - __builtin_clzll(k);
    groups[m] = k;
    lens[m++] = b;
    k = static_cast<uint64_t>(b - 1);
  }
  return m;
}

// omega(k) for k < kOmegaTable, its bits right-aligned (at most 16: omega(511) is
// 1 + 9 + 4 + 2 bits), so that the common codes, small gaps and levels, are one
// lookup instead of a loop over their groups.
constexpr int kOmegaTable = 512;
struct OmegaCode {
  uint32_t bits;
  int32_t len;
};
struct OmegaTable {
  OmegaCode code[kOmegaTable];
};
constexpr OmegaTable make_omega_table() {
  OmegaTable t{};
  for (int k = 1; k < kOmegaTable; ++k) {
    uint64_t groups[8] = {};
    int lens[8] = {}, len = 1;
    uint32_t bits = 0;
    for (int m = omega_groups(static_cast<uint64_t>(k), groups, lens); m > 0;) {
      --m;
      bits = (bits << lens[m]) | static_cast<uint32_t>(groups[m]);
      len += lens[m];
    }
    t.code[k] = OmegaCode{bits << 1, len};  // and the final 0
  }
  return t;
}
constexpr OmegaTable kOmega = make_omega_table();

// |omega(k)|: 1 + bits(k) + bits(bits(k) - 1) + ... while the value exceeds 1.
MK_INLINE int64_t omega_length(uint64_t k) {
  if (k < kOmegaTable) return kOmega.code[k].len;
  uint64_t groups[8];
  int lens[8];
  int64_t len = 1;
  for (int m = omega_groups(k, groups, lens); m > 0;) len += lens[--m];
  return len;
}

MK_INLINE int64_t bucket_len(int64_t q, int64_t n, int64_t d) {
  return n - q * d < d ? n - q * d : d;
}

// Bits, most significant first, into bytes; starts `lead` bits into its first byte
// (which, like its last, may be shared with another range: those two bytes are OR-ed
// atomically, the others stored).
class BitWriter {
 public:
  BitWriter(uint8_t* out, int64_t first_bit)
      : out_(out), byte_(first_bit >> 3), first_byte_(first_bit >> 3), nacc_(first_bit & 7) {}

  // The low `len` bits of v, first bit most significant; len <= 64.
  MK_INLINE void put(uint64_t v, int len) {
    while (len > 32) {  // keep acc below 64 bits: nacc_ < 8 after every flush
      len -= 32;
      put32(static_cast<uint32_t>(v >> len), 32);
    }
    put32(static_cast<uint32_t>(v & ((uint64_t{1} << len) - 1)), len);
  }

  // omega(k): its groups from the innermost (smallest) out, then the final 0.
  MK_INLINE void omega(uint64_t k) {
    if (k < kOmegaTable) {
      put32(kOmega.code[k].bits, kOmega.code[k].len);
      return;
    }
    uint64_t groups[8];
    int lens[8];
    for (int m = omega_groups(k, groups, lens); m > 0;) {
      --m;
      put(groups[m], lens[m]);
    }
    put(0, 1);
  }

  void finish() {
    if (nacc_ > 0) emit(static_cast<uint8_t>(acc_ << (8 - nacc_)), true);
  }

 private:
  MK_INLINE void put32(uint32_t v, int len) {
    acc_ = (acc_ << len) | v;
    nacc_ += len;
    while (nacc_ >= 8) {
      nacc_ -= 8;
      emit(static_cast<uint8_t>(acc_ >> nacc_), false);
      acc_ &= (uint64_t{1} << nacc_) - 1;
    }
  }

  MK_INLINE void emit(uint8_t b, bool last) {
    if (byte_ == first_byte_ || last)
      __atomic_fetch_or(out_ + byte_, b, __ATOMIC_RELAXED);
    else
      out_[byte_] = b;
    ++byte_;
  }

  uint8_t* out_;
  int64_t byte_, first_byte_;
  uint64_t acc_ = 0;
  int nacc_;
};

class BitReader {
 public:
  BitReader(const uint8_t* in, int64_t nbytes) : in_(in), nbytes_(nbytes) {}

  // Up to 32 bits; false when the stream ends first.
  MK_INLINE bool get(int len, uint64_t* v) {
    while (nbuf_ < len) {
      if (next_ >= nbytes_) return false;
      buf_ = (buf_ << 8) | in_[next_++];
      nbuf_ += 8;
    }
    nbuf_ -= len;
    *v = (buf_ >> nbuf_) & ((uint64_t{1} << len) - 1);
    return true;
  }

  // omega(k); false for a stream that ends inside the code or a code over 62 bits.
  MK_INLINE bool omega(uint64_t* k) {
    uint64_t value = 1, bit;
    for (;;) {
      if (!get(1, &bit)) return false;
      if (!bit) break;
      if (value > 61) return false;  // the next group would not fit 63 bits
      uint64_t rest = 1;             // the group: 1 then `value` more bits
      for (int left = static_cast<int>(value); left > 0;) {
        const int take = left < 32 ? left : 32;
        uint64_t chunk;
        if (!get(take, &chunk)) return false;
        rest = (rest << take) | chunk;
        left -= take;
      }
      value = rest;
    }
    *k = value;
    return true;
  }

  // Bits read so far; all of the stream consumed, with zero padding?
  bool at_clean_end() const {
    return next_ == nbytes_ && (buf_ & ((uint64_t{1} << nbuf_) - 1)) == 0;
  }

 private:
  const uint8_t* in_;
  int64_t nbytes_, next_ = 0;
  uint64_t buf_ = 0;
  int nbuf_ = 0;
};

// The codes of bucket q (scale != 0): code(gap, sign, level) for each nonzero level in
// index order, then end(gap) with the gap to the position past the bucket.
template <int BITS, typename Code, typename End>
MK_INLINE void visit_bucket(const uint8_t* codes, int64_t n, int64_t d, int64_t q,
                            Code&& code, End&& end) {
  constexpr uint32_t level_mask = (1u << (BITS - 1)) - 1u;
  const uint8_t* c = codes + q * d;
  const int64_t len = bucket_len(q, n, d);
  int64_t prev = 0;
  // 64 elements at a time: a mask of the nonzero levels, walked by its set bits (a
  // branch per element on random levels mispredicts often).  2^22 normal values, 4
  // bits, l2, d = 512, one thread, the whole Elias encode: 29.4 ms; the mask alone
  // 24-26 ms, the omega table alone 28.5 ms, both 16 ms (the mask removes the
  // mispredictions, then the omega loops bind).
  for (int64_t base = 0; base < len; base += 64) {
    const int64_t span = len - base < 64 ? len - base : 64;
    uint64_t nonzero = 0;
    for (int64_t j = 0; j < span; ++j)
      nonzero |= static_cast<uint64_t>((c[base + j] & level_mask) != 0) << j;
    while (nonzero) {
      const int64_t i = base + __builtin_ctzll(nonzero);
      nonzero &= nonzero - 1;
      code(static_cast<uint64_t>(i + 1 - prev), c[i] >> (BITS - 1), c[i] & level_mask);
      prev = i + 1;
    }
  }
  end(static_cast<uint64_t>(len + 1 - prev));
}

template <int BITS>
MK_INLINE void write_buckets(const uint8_t* codes, int64_t n, int64_t d, const float* scales,
                             uint8_t* out, int64_t first_bit, int64_t q0, int64_t q1) {
  BitWriter w(out, first_bit);
  for (int64_t q = q0; q < q1; ++q) {
    if (scales[q] == 0.0f) continue;
    visit_bucket<BITS>(codes, n, d, q, [&](uint64_t gap, uint32_t sign, uint32_t level) {
      w.omega(gap);
      w.put(sign, 1);
      w.omega(level);
    }, [&](uint64_t gap) { w.omega(gap); });
  }
  w.finish();
}

template <int BITS>
MK_INLINE void count_buckets(const uint8_t* codes, int64_t n, int64_t d, const float* scales,
                             int64_t* bucket_bits, int64_t q0, int64_t q1) {
  for (int64_t q = q0; q < q1; ++q) {
    int64_t bits = 0;
    if (scales[q] != 0.0f)
      visit_bucket<BITS>(codes, n, d, q, [&](uint64_t gap, uint32_t, uint32_t level) {
        bits += omega_length(gap) + 1 + omega_length(level);
      }, [&](uint64_t gap) { bits += omega_length(gap); });
    bucket_bits[q - q0] = bits;
  }
}

}  // namespace

MK_CPU_ENTRY
void elias_bucket_bits(const uint8_t* codes, int64_t n, int bits, int64_t bucket_size,
                       const float* scales, int64_t* bucket_bits, int64_t q0, int64_t q1) {
  dispatch_qsgd_bits(bits, [&](auto b) MK_LAMBDA_INLINE {
    count_buckets<decltype(b)::value>(codes, n, bucket_size, scales, bucket_bits, q0, q1);
  });
}

MK_CPU_ENTRY
void elias_write(const uint8_t* codes, int64_t n, int bits, int64_t bucket_size,
                 const float* scales, uint8_t* out, int64_t first_bit, int64_t q0, int64_t q1) {
  dispatch_qsgd_bits(bits, [&](auto b) MK_LAMBDA_INLINE {
    write_buckets<decltype(b)::value>(codes, n, bucket_size, scales, out, first_bit, q0, q1);
  });
}

bool elias_decode(const float* scales, const uint8_t* stream, int64_t nbytes, int64_t n,
                  int bits, int64_t bucket_size, float* out) {
  const uint64_t s = static_cast<uint64_t>(qsgd_levels(bits));
  const float s32 = static_cast<float>(s);
  std::memset(out, 0, static_cast<size_t>(n) * sizeof(float));
  BitReader r(stream, nbytes);
  const int64_t nq = (n + bucket_size - 1) / bucket_size;
  for (int64_t q = 0; q < nq; ++q) {
    const float scale = scales[q];
    if (scale == 0.0f) continue;
    const uint64_t end = static_cast<uint64_t>(bucket_len(q, n, bucket_size)) + 1;
    uint64_t pos = 0;
    for (;;) {
      uint64_t gap, negative, level;
      if (!r.omega(&gap) || gap > end - pos) return false;
      pos += gap;
      if (pos == end) break;
      if (!r.get(1, &negative) || !r.omega(&level) || level > s) return false;
      // N * (-1)^sign * l / s, evaluated as +-((N * l) / s), as qsgd_value
      const float magnitude = (scale * static_cast<float>(level)) / s32;
      out[q * bucket_size + static_cast<int64_t>(pos) - 1] = negative ? -magnitude : magnitude;
    }
  }
  return r.at_clean_end();
}

}  // namespace cpu
}  // namespace moniqua_kernels
