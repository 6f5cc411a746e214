// A CPU stand-in for CUB's BlockScan (the part sparse.cu uses: ExclusiveSum with the
// block's aggregate), for the cooperative emulation of cuda_runtime.h beside it.  Each
// thread offers its value in the temp storage, and after a block barrier adds up those
// of the threads before it (and all of them for the aggregate); a second barrier keeps
// the storage until every thread has read it, as CUB's callers may reuse it after.
#pragma once

#include <cuda_runtime.h>

namespace cub {

template <typename T, int BLOCK_THREADS>
class BlockScan {
 public:
  struct TempStorage {
    T values[BLOCK_THREADS];
  };

  __device__ explicit BlockScan(TempStorage& storage) : storage_(storage) {}

  __device__ void ExclusiveSum(T input, T& output, T& block_aggregate) {
    storage_.values[threadIdx.x] = input;
    __syncthreads();
    T before = T(0), all = T(0);
    for (int t = 0; t < BLOCK_THREADS; ++t) {
      if (t < static_cast<int>(threadIdx.x)) before += storage_.values[t];
      all += storage_.values[t];
    }
    output = before;
    block_aggregate = all;
    __syncthreads();
  }

 private:
  TempStorage& storage_;
};

}  // namespace cub
