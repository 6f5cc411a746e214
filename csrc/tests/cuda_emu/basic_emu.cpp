// csrc/cuda/basic.cu compiled for the CPU (see moniqua_emu.cpp); its kernels reduce across
// a block, so each block's threads run as OS threads (cuda_runtime.h).
#define MK_EMU_COOPERATIVE 1
#include "cuda/basic.cu"
