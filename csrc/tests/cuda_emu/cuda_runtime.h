// A CPU stand-in for <cuda_runtime.h>: compiles a .cu file's kernels and launchers with a
// host compiler and runs them where no GPU is (csrc/tests/test_cuda_emu.cpp, built by
// CMakeLists.txt with AddressSanitizer and UBSan's alignment check standing in for
// compute-sanitizer's memcheck), so the CUDA kernels' indexing, tails, alignment
// choices, reductions and error flags are tested in CI.
//
// Two ways to run a launch:
//   * by default, every (block, thread) one after another, in a shuffled order: for
//     kernels whose threads never communicate (moniqua.cu).  __shared__,
//     __syncthreads and warp shuffles are not defined then, so a kernel that uses them
//     does not compile, and a kernel that relies on another thread having run first
//     fails;
//   * with MK_EMU_COOPERATIVE defined before this header, each block's threads as
//     fibers (blocks one at a time, in a shuffled order): __syncthreads is a barrier
//     of the block, a shuffle a barrier of the warp, and a thread that returned no
//     longer holds a barrier (as on Volta and later; a shuffle, whose full mask names
//     every lane, aborts instead); __shared__ is one static copy,
//     which the block running has to itself (basic.cu, qsgd.cu, sparse.cu).
// cub/block/block_scan.cuh beside this header stands in for CUB's BlockScan (sparse.cu).
//
// The emulated translation units are compiled with __CUDACC__ and __CUDA_ARCH__ defined,
// so the shared headers take their device branches; the intrinsics below give the
// device's results (round-to-nearest float ops without contraction, cvt.rmi.s32.f32
// with NaN -> 0 and saturation, the high word of a 32x32 product).
#pragma once

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <random>
#include <vector>

#define __host__
#define __device__
#define __global__
#define __forceinline__ inline __attribute__((always_inline))
#define __launch_bounds__(...)

enum cudaError_t : int { cudaSuccess = 0, cudaErrorInvalidValue = 1 };
struct CUstream_st;
using cudaStream_t = CUstream_st*;
inline cudaError_t cudaGetLastError() { return cudaSuccess; }

struct alignas(8) uint2 {
  unsigned int x, y;
};
struct alignas(16) uint4 {
  unsigned int x, y, z, w;
};
struct alignas(16) float4 {
  float x, y, z, w;
};
inline float4 make_float4(float x, float y, float z, float w) { return float4{x, y, z, w}; }

struct dim3 {
  unsigned int x = 1, y = 1, z = 1;
  dim3() = default;
  dim3(unsigned int x_, unsigned int y_ = 1, unsigned int z_ = 1) : x(x_), y(y_), z(z_) {}
};
inline thread_local dim3 threadIdx, blockIdx;
inline dim3 blockDim, gridDim;

using std::isfinite;  // a global function in CUDA's math headers

template <typename T>
inline T __ldg(const T* p) { return *p; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fsqrt_rn(float a) { return std::sqrt(a); }
inline float __fmaf_rn(float a, float b, float c) { return std::fmaf(a, b, c); }
inline unsigned int __umulhi(unsigned int a, unsigned int b) {
  return static_cast<unsigned int>((static_cast<uint64_t>(a) * b) >> 32);
}
inline unsigned int __float_as_uint(float f) {
  unsigned int u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}
inline float __uint_as_float(unsigned int u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}
inline int __float2int_rd(float x) {  // cvt.rmi.s32.f32
  if (x != x) return 0;
  const float f = std::floor(x);
  if (f >= 2147483648.0f) return INT_MAX;
  if (f < -2147483648.0f) return INT_MIN;
  return static_cast<int>(f);
}
inline int __popc(unsigned int v) { return __builtin_popcount(v); }
inline unsigned long long atomicAdd(unsigned long long* p, unsigned long long v) {
  return __atomic_fetch_add(p, v, __ATOMIC_RELAXED);
}

namespace mk_emu {
// A launch's blocks in an order shuffled by a fixed seed.
inline std::vector<uint64_t> shuffled(uint64_t count, uint64_t salt) {
  std::vector<uint64_t> order(count);
  std::iota(order.begin(), order.end(), uint64_t{0});
  std::shuffle(order.begin(), order.end(), std::mt19937_64(count * 1000003ull + salt));
  return order;
}

// blockIdx of block number i (x fastest) of a 1-D or 2-D grid.
inline void set_block(const dim3& grid, uint64_t i) {
  blockIdx.x = static_cast<unsigned int>(i % grid.x);
  blockIdx.y = static_cast<unsigned int>(i / grid.x);
}

// One launch, every (block, thread) of the grid one after another, shuffled.
template <typename Kernel>
struct SerialLaunch {
  dim3 grid;
  unsigned int block;
  Kernel kernel;
  template <typename... Args>
  void operator()(Args&&... args) const {
    gridDim = grid;
    blockDim = dim3(block);
    for (const uint64_t i : shuffled(static_cast<uint64_t>(grid.x) * grid.y * block, block)) {
      set_block(grid, i / block);
      threadIdx.x = static_cast<unsigned int>(i % block);
      kernel(args...);
    }
  }
};
}  // namespace mk_emu

#if !defined(MK_EMU_COOPERATIVE)
#define MK_LAUNCH(grid, block, stream, ...) \
  ::mk_emu::SerialLaunch<decltype(&__VA_ARGS__)>{dim3(grid), static_cast<unsigned int>(block), \
                                                 &__VA_ARGS__}
#else
#include <ucontext.h>

#include <cstdio>
#include <cstdlib>
#include <functional>
#include <memory>
#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/common_interface_defs.h>
#endif

#define __shared__ static

namespace mk_emu {
// Each thread of the running block is a fiber (ucontext) on this one OS thread: a fiber
// runs until it waits at a barrier or returns; a barrier opens when every thread of its
// block (or warp) that has not returned waits at it.  Fibers switch in well under a
// microsecond where OS threads under a condition variable took milliseconds a barrier
// on the 2-core CI box.  AddressSanitizer is told of every stack switch.
struct Fiber {
  ucontext_t ctx;
  char* stack = nullptr;
  enum State { kReady, kWaiting, kDone } state = kReady;
  int barrier = 0;  // what it waits at: -1 the block, w >= 0 warp w
};

constexpr size_t kFiberStack = 64 * 1024;

// Fiber stacks, allocated once for the process and reused by every launch.
inline char* fiber_stack(unsigned int t) {
  static std::vector<std::unique_ptr<char[]>> stacks;
  while (stacks.size() <= t) stacks.emplace_back(new char[kFiberStack]);
  return stacks[t].get();
}

struct BlockState {
  std::vector<Fiber> fibers;
  std::vector<uint64_t> slots;  // one per thread: the value a shuffle offers
  std::function<void()> body;   // the kernel with its arguments
  ucontext_t scheduler;
  int current = 0;
  const void* sched_stack = nullptr;  // the scheduler's stack, for ASan
  size_t sched_stack_size = 0;
};
inline BlockState* g_block = nullptr;

inline void enter_fiber(BlockState& b, int t) {
#if defined(__SANITIZE_ADDRESS__)
  void* fake = nullptr;
  __sanitizer_start_switch_fiber(&fake, b.fibers[t].stack, kFiberStack);
#endif
  b.current = t;
  threadIdx.x = static_cast<unsigned int>(t);
  swapcontext(&b.scheduler, &b.fibers[t].ctx);
#if defined(__SANITIZE_ADDRESS__)
  __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#endif
}

// From the running fiber back to the scheduler (for good when `done`).
inline void leave_fiber(BlockState& b, bool done) {
  Fiber& f = b.fibers[b.current];
#if defined(__SANITIZE_ADDRESS__)
  void* fake = nullptr;
  __sanitizer_start_switch_fiber(done ? nullptr : &fake, b.sched_stack, b.sched_stack_size);
#endif
  swapcontext(&f.ctx, &b.scheduler);
#if defined(__SANITIZE_ADDRESS__)
  __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#endif
}

inline void fiber_main() {
  BlockState& b = *g_block;
#if defined(__SANITIZE_ADDRESS__)
  __sanitizer_finish_switch_fiber(nullptr, &b.sched_stack, &b.sched_stack_size);
#endif
  b.body();
  b.fibers[b.current].state = Fiber::kDone;
  leave_fiber(b, true);
}

inline void wait_at(int barrier) {
  BlockState& b = *g_block;
  b.fibers[b.current].state = Fiber::kWaiting;
  b.fibers[b.current].barrier = barrier;
  leave_fiber(b, false);
}

// Opens the barriers at which every thread that has not returned waits; false when none.
inline bool open_barriers(BlockState& b) {
  const int n = static_cast<int>(b.fibers.size());
  bool opened = false;
  for (int barrier = -1; barrier < (n + 31) / 32; ++barrier) {
    const int lo = barrier < 0 ? 0 : 32 * barrier, hi = barrier < 0 ? n : std::min(n, lo + 32);
    bool all = true, any = false;
    for (int t = lo; t < hi && all; ++t) {
      const Fiber& f = b.fibers[t];
      if (f.state == Fiber::kDone) continue;
      all = f.state == Fiber::kWaiting && f.barrier == barrier;
      any = any || all;
    }
    if (!all || !any) continue;
    for (int t = lo; t < hi; ++t)
      if (b.fibers[t].state == Fiber::kWaiting) b.fibers[t].state = Fiber::kReady;
    opened = true;
  }
  return opened;
}

// One launch: blocks one at a time, shuffled; a block's threads as fibers.
template <typename Kernel>
struct BlockLaunch {
  dim3 grid;
  unsigned int block;
  Kernel kernel;
  template <typename... Args>
  void operator()(Args... args) const {
    gridDim = grid;
    blockDim = dim3(block);
    BlockState b;
    b.fibers = std::vector<Fiber>(block);
    b.slots.assign(block, 0);
    b.body = [&] { kernel(args...); };
    for (unsigned int t = 0; t < block; ++t) b.fibers[t].stack = fiber_stack(t);
    g_block = &b;
    for (const uint64_t blk : shuffled(static_cast<uint64_t>(grid.x) * grid.y, block)) {
      set_block(grid, blk);
      for (Fiber& f : b.fibers) {
        f.state = Fiber::kReady;
        getcontext(&f.ctx);
        f.ctx.uc_stack.ss_sp = f.stack;
        f.ctx.uc_stack.ss_size = kFiberStack;
        f.ctx.uc_link = nullptr;
        makecontext(&f.ctx, fiber_main, 0);
      }
      for (;;) {
        bool ran = false, live = false;
        for (unsigned int t = 0; t < block; ++t) {
          if (b.fibers[t].state == Fiber::kReady) {
            enter_fiber(b, static_cast<int>(t));
            ran = true;
          }
          live = live || b.fibers[t].state != Fiber::kDone;
        }
        if (!live) break;
        if (!ran && !open_barriers(b)) {
          std::fprintf(stderr, "cuda_emu: block %u deadlocked at a barrier\n", blockIdx.x);
          std::abort();
        }
      }
    }
    g_block = nullptr;
  }
};
}  // namespace mk_emu

inline void __syncthreads() { mk_emu::wait_at(-1); }

namespace mk_emu {
// A shuffle with the full mask: every lane offers v, then takes lane `from`'s value (its
// own where `from` is outside its warp or block).  As on a GPU, every lane of the warp must
// take part: a lane that has returned makes the run abort, where a GPU's result would be
// undefined.
template <typename T>
inline T shuffle(T v, unsigned int from) {
  static_assert(sizeof(T) <= sizeof(uint64_t), "one slot a thread");
  BlockState& b = *g_block;
  const unsigned int t = threadIdx.x, warp = t / 32;
  std::memcpy(&b.slots[t], &v, sizeof(T));
  wait_at(static_cast<int>(warp));  // every lane has offered its value
  for (unsigned int l = 32 * warp; l < std::min(blockDim.x, 32 * warp + 32); ++l)
    if (b.fibers[l].state == Fiber::kDone) {
      std::fprintf(stderr, "cuda_emu: block %u: lane %u shuffles after lane %u returned\n",
                   blockIdx.x, t, l);
      std::abort();
    }
  T out = v;
  if (from / 32 == warp && from < blockDim.x) std::memcpy(&out, &b.slots[from], sizeof(T));
  wait_at(static_cast<int>(warp));  // every lane has read before a slot is reused
  return out;
}
}  // namespace mk_emu

template <typename T>
inline T __shfl_down_sync(unsigned int, T v, unsigned int delta) {
  const unsigned int t = threadIdx.x;
  return mk_emu::shuffle(v, t % 32 + delta < 32 ? t + delta : UINT_MAX);
}

template <typename T>
inline T __shfl_xor_sync(unsigned int, T v, int lane_mask) {
  return mk_emu::shuffle(v, threadIdx.x ^ static_cast<unsigned int>(lane_mask));
}

#define MK_LAUNCH(grid, block, stream, ...) \
  ::mk_emu::BlockLaunch<decltype(&__VA_ARGS__)>{dim3(grid), static_cast<unsigned int>(block), \
                                                &__VA_ARGS__}
#endif
