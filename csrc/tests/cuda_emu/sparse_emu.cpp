// csrc/cuda/sparse.cu compiled for the CPU (see moniqua_emu.cpp): its kernels scan across
// a block, so each block's threads run as fibers (cuda_runtime.h), and CUB's BlockScan is
// the stand-in in cub/ beside it.
#define MK_EMU_COOPERATIVE 1
#include "cuda/sparse.cu"
