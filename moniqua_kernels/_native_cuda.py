"""The "cuda" backend: native CUDA C++ kernels from moniqua_kernels._C.

Same OPS keys and signatures as the reference (reference/_ops.py).  The wrappers are
the CPU backend's (the dispatcher routes CUDA tensors to the kernels registered in
csrc/cuda/bindings_cuda.cpp); top-k has no custom CUDA kernel and runs the reference
(torch's GPU sort and scatter).  Importing raises ImportError when _C was built
without CUDA, so the registry falls back to Triton or the reference.

auto selection on CUDA (backends._AUTO_CUDA_ORDER) is meant to come from a measured
CUDA-vs-Triton table per op, committed beside the benchmark results
(benchmarks/results/); it stays empty until GPU numbers exist.
"""
from __future__ import annotations

import torch

from . import _native
from .reference import _ops as _reference

if not torch._C._dispatch_has_kernel_for_dispatch_key("moniqua_kernels_C::moniqua_encode",
                                                       "CUDA"):
    raise ImportError("moniqua_kernels._C was built without CUDA kernels (CPU-only torch or "
                      "no CUDA_HOME at build time)")

OPS = dict(_native.OPS)
OPS["topk_encode"] = _reference.OPS["topk_encode"]
OPS["topk_decode"] = _reference.OPS["topk_decode"]
