// QSGD encode on the CPU: two passes (qsgd_piece_stats, then qsgd_encode) against one
// pass over chunks of whole buckets (qsgd_encode_chunks), the kernels alone on 2
// threads, 2^24 float32 normals, 4 bits, max norm.  The two ways alternate within each
// of 31 rounds, beside a 2-thread copy; the medians and the median ratio per bucket
// size are printed.  The measurement behind cpu::kOnePassMinBucket (cpu/kernels.h).
// With --split first: the scales pass, the codes pass and the decode each alone (the
// measurement behind the element loops of cpu/qsgd_cpu.cpp).
//
//   cmake -S . -B build/bench -DCMAKE_BUILD_TYPE=Release
//   cmake --build build/bench -j2 --target qsgd_cpu_passes
//   build/bench/qsgd_cpu_passes 16 64 128 256 384 512 4096 65536
//   build/bench/qsgd_cpu_passes --split 1 8 16 24 32 512
// (scripts/ctest.sh builds it too, at -O1, only to keep it compiling.)
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "cpu/kernels.h"
#include "moniqua_kernels/packing.h"

namespace mk = moniqua_kernels;
using Clock = std::chrono::steady_clock;

template <class F>
double time_ms(F&& f) {
  const auto start = Clock::now();
  f();
  return std::chrono::duration<double, std::milli>(Clock::now() - start).count();
}

// f(lo, hi) over [0, total) split between two threads.
template <class F>
void on_two_threads(int64_t total, F&& f) {
  std::thread other([&] { f(0, total / 2); });
  f(total / 2, total);
  other.join();
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

int main(int argc, char** argv) {
  const int64_t n = int64_t{1} << 24, blocks = mk::cpu::num_blocks(n);
  const int bits = 4;
  const bool split = argc > 1 && std::string(argv[1]) == "--split";
  std::vector<float> x(n), copy(n);
  std::mt19937 rng(1);
  std::normal_distribution<float> normal;
  for (float& v : x) v = normal(rng);
  const mk::Stream stream{1, 0, nullptr};
  std::vector<uint8_t> payload(mk::packed_nbytes(n, bits));
  for (int a = split ? 2 : 1; a < argc; ++a) {
    const int64_t d = std::atoll(argv[a]), buckets = (n + d - 1) / d;
    const int64_t chunks = mk::cpu::qsgd_num_chunks(n, d);
    std::vector<float> scales(buckets);
    const auto scales_pass = [&] {
      on_two_threads(buckets, [&](int64_t q0, int64_t q1) {
        mk::cpu::qsgd_piece_stats(x.data(), mk::DType::kFloat32, n, d, false, nullptr,
                                  scales.data(), true, q0, q1);
      });
    };
    const auto codes_pass = [&] {
      on_two_threads(blocks, [&](int64_t b0, int64_t b1) {
        mk::cpu::qsgd_encode(x.data(), mk::DType::kFloat32, n, bits, d, scales.data(), stream,
                             payload.data(), b0, b1);
      });
    };
    std::vector<double> two, one, cp, ratio, stats, codes, decode;
    for (int round = 0; round < 31; ++round) {
      if (split) {
        stats.push_back(time_ms(scales_pass));
        codes.push_back(time_ms(codes_pass));
        decode.push_back(time_ms([&] {
          on_two_threads(blocks, [&](int64_t b0, int64_t b1) {
            mk::cpu::qsgd_decode(scales.data(), payload.data(), n, bits, d, copy.data(), b0,
                                 b1);
          });
        }));
        continue;
      }
      const double t2 = time_ms([&] {
        scales_pass();
        codes_pass();
      });
      const double t1 = chunks == 0 ? 0.0 : time_ms([&] {
        on_two_threads(chunks, [&](int64_t c0, int64_t c1) {
          mk::cpu::qsgd_encode_chunks(x.data(), mk::DType::kFloat32, n, bits, d, false,
                                      scales.data(), stream, payload.data(), true, true, c0, c1);
        });
      });
      cp.push_back(time_ms([&] {
        on_two_threads(n, [&](int64_t i0, int64_t i1) {
          std::copy(x.data() + i0, x.data() + i1, copy.data() + i0);
        });
      }));
      two.push_back(t2);
      one.push_back(t1);
      ratio.push_back(t1 > 0 ? t2 / t1 : 0.0);
    }
    if (split)
      std::printf("d=%6lld  scales %.2f ms  codes %.2f ms  decode %.2f ms\n",
                  static_cast<long long>(d), median(stats), median(codes), median(decode));
    else if (chunks == 0)
      std::printf("d=%6lld  two passes %.2f ms  (no one pass at this d)  copy %.2f ms\n",
                  static_cast<long long>(d), median(two), median(cp));
    else
      std::printf("d=%6lld  two passes %.2f ms  one pass %.2f ms  copy %.2f ms  two/one %.3f\n",
                  static_cast<long long>(d), median(two), median(one), median(cp), median(ratio));
  }
}
