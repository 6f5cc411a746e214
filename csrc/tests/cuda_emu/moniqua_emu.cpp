// csrc/cuda/moniqua.cu compiled for the CPU: CMakeLists.txt puts cuda_emu/ first on the
// include path (its cuda_runtime.h runs launches thread by thread) and defines
// __CUDACC__ and __CUDA_ARCH__, so the shared headers take their device branches.
#include "cuda/moniqua.cu"
