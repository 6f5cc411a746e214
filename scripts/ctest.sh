#!/usr/bin/env bash
# Configure, build and run the torch-free native tests (CMakeLists.txt): the C++ unit
# tests over the shared math and CPU kernels, the CUDA kernels run on the CPU
# (csrc/tests/cuda_emu), and the nvcc compile of every .cu file.
# Called by scripts/test.sh when present.  Needs cmake, a C++17 compiler and, for the
# CUDA compile, nvcc (found on PATH or at /usr/local/cuda/bin/nvcc).
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${MONIQUA_CMAKE_BUILD:-build/cmake}
ARGS=()
if ! command -v nvcc >/dev/null 2>&1 && [ -x /usr/local/cuda/bin/nvcc ]; then
  ARGS+=("-DCMAKE_CUDA_COMPILER=/usr/local/cuda/bin/nvcc")
fi
# -O1: the extension's -O3 build of the same kernels is checked bit for bit against the
# reference by tests/test_parity.py; here the CPU kernels compile in 10 s instead of 72 s
# on the 2-core CI box, and a second optimization level also catches code whose result
# depends on it.
cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DCMAKE_CXX_FLAGS_RELEASE="-O1 -DNDEBUG" \
  "${ARGS[@]}" >/dev/null
cmake --build "$BUILD" -j "${MONIQUA_BUILD_JOBS:-2}"
ctest --test-dir "$BUILD" --output-on-failure
