#!/usr/bin/env bash
# The version-sensitive tests against the GPU machines' stack: torch 2.11 (PyPI's CUDA 13
# build), Triton 3.6 and Python 3.12 (where one is installed), in a throwaway venv, on a copy of the tree (so the main lane's
# editable extension, built for another torch, is left alone).  scripts/test.sh runs it
# last; MONIQUA_COMPAT=0 there skips it.
#
#   bash scripts/compat.sh [pytest args]
#
# Why: GPU sessions are rare and short, and they run this stack.  Under it, every
# compressed DDP hook died with SIGSEGV (CPU error flags in a threading.local freed in
# gloo's callback threads; fixed, tests/test_error_flags_threads.py) while CI's torch
# 2.13 passed; Triton 3.6 specialises ints that 3.9 does not (GPU run 2).
#
# With nvcc on the machine the extension is built with its CUDA kernels for sm_90, as the
# GPU machine builds it (they are compiled, not run: no GPU here); the headers torch's
# CUDA build wants beyond nvcc's come from the pip-installed nvidia packages.
# About 3 GB of wheels (torch's CUDA libraries); measured on the 2-core CI box
# (2026-11-28, alone): install 109 s, build 62 s (216 s in CI's run before -O1, below),
# tests 168 s.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
TORCH_VERSION=${COMPAT_TORCH:-2.11.0}
TRITON_VERSION=${COMPAT_TRITON:-3.6.0}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/moniqua-compat.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
t0=$(date +%s)

# Python 3.12 where there is one: the GPU machines run 3.12.3 (and the main lane 3.11).
# A pyenv shim answers `command -v` even when its version is not active: each candidate
# must run.
BASE_PY=""
for cand in ${COMPAT_PYTHON:-} python3.12 \
    "$(ls -d "$(pyenv root 2>/dev/null)"/versions/3.12*/bin/python3.12 2>/dev/null | tail -n 1)" \
    python3; do
  if [ -n "$cand" ] && "$cand" -c "import venv" 2>/dev/null; then BASE_PY=$cand; break; fi
done
"$BASE_PY" -m venv "$WORK/venv"
PY=$WORK/venv/bin/python
# numpy < 2.4: Triton 3.6's interpreter converts 1-element arrays to ints, which numpy
# 2.4 refuses ('only 0-dimensional arrays can be converted'; Triton 3.9 squeezes first).
"$PY" -m pip install -q "torch==$TORCH_VERSION" "triton==$TRITON_VERSION" "numpy<2.4" \
  pytest pytest-xdist scipy expecttest scikit-learn tqdm matplotlib "setuptools>=77" wheel ninja
echo "compat: installed in $(( $(date +%s) - t0 )) s: $("$PY" -c 'import platform, torch, triton; print("Python", platform.python_version(), "torch", torch.__version__, "triton", triton.__version__)')"

mkdir "$WORK/src"
git ls-files -z -co --exclude-standard | tar -C "$ROOT" --null -T - -cf - | tar -C "$WORK/src" -xf -
cd "$WORK/src"
t1=$(date +%s)
# The C++ side at -O1 unless the caller chose a level (why, and what it saves:
# setup.py's cxx_opt_level); nvcc's CUDA kernels stay at -O3, as the GPU machine builds
# them.  The tests below pass at either level, bit for bit (no FMA contraction, no fast
# math: each operation is the spec's, DESIGN.md section 4).
export MONIQUA_CXX_OPT=${MONIQUA_CXX_OPT:--O1}
# The CUDA toolkit's root, if there is one: nvcc may be a wrapper script (here
# /usr/local/bin/nvcc), which torch would take for the root's bin/, missing the headers.
NVCC=$(command -v nvcc || true)
TOOLKIT=${CUDA_HOME:-}
if [ -z "$TOOLKIT" ] && [ -n "$NVCC" ]; then
  for dir in "$(dirname "$(dirname "$(readlink -f "$NVCC")")")" /usr/local/cuda; do
    if [ -f "$dir/include/cuda_runtime_api.h" ]; then TOOLKIT=$dir; break; fi
  done
fi
if [ -n "$TOOLKIT" ]; then
  # nvidia is a namespace package: the headers may sit under any of its paths
  NV_INCLUDE=$("$PY" -c 'import glob, nvidia
found = [d for p in nvidia.__path__ for d in glob.glob(p + "/cu*/include")
         if glob.glob(d + "/cusparse.h")]
print(found[0] if found else "")')
  CUDA_HOME=$TOOLKIT CPLUS_INCLUDE_PATH="$NV_INCLUDE${CPLUS_INCLUDE_PATH:+:$CPLUS_INCLUDE_PATH}" \
    TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=${MAX_JOBS:-2} \
    "$PY" -m pip install -q --no-build-isolation --no-deps -e .
  want_cuda=True
else
  echo "compat: no CUDA toolkit here: the extension is built without its CUDA kernels"
  MONIQUA_NO_CUDA=1 "$PY" -m pip install -q --no-build-isolation --no-deps -e .
  want_cuda=False
fi
"$PY" -c "from moniqua_kernels import _C; assert _C.with_cuda() == $want_cuda; print('compat: extension built, CUDA kernels:', _C.with_cuda())"
echo "compat: built in $(( $(date +%s) - t1 )) s"

# What depends on torch's or Triton's version: the op table (custom ops, opcheck,
# torch.compile), backend selection with a CUDA build of torch and no device, parity of
# the native kernels and of Triton 3.6's interpreter, sm_90 compiles with Triton 3.6,
# DDP hooks and gloo (future callbacks on torch's threads), the op surface, and the GPU
# script's dry run and the benchmark harness it calls.
# (Triton 3.6's interpreter warns on every runtime loop bound under numpy 2.3: silenced.)
"$PY" -m pytest -q -ra -n "${MONIQUA_TEST_WORKERS:-2}" -m "not serial" -p no:cacheprovider \
  -W "ignore:Conversion of an array with ndim > 0 to a scalar:DeprecationWarning" \
  tests/test_ops_table.py tests/test_backends.py tests/test_parity.py \
  tests/test_triton_compile.py tests/test_triton_import.py tests/test_native_build.py \
  tests/test_ddp_hook.py tests/test_train_ddp.py tests/test_error_flags_threads.py \
  tests/test_gossip_dist.py tests/test_validation.py tests/test_roundtrip.py \
  tests/test_known_answers.py tests/test_gpu_check.py tests/test_bench.py "$@"
echo "compat: torch $TORCH_VERSION + Triton $TRITON_VERSION lane passed in $(( $(date +%s) - t0 )) s"
