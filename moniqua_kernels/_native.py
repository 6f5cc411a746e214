"""The "cpu" and "cuda" backends: the native kernels of the extension moniqua_kernels._C.

_C has one function per op of the table with exactly the schema's arguments (csrc/ops.cpp);
each serves CPU tensors, and CUDA tensors when the extension was built with CUDA.
Importing this module registers them; it raises ImportError when _C is not built (the
registry then reports that reason and falls back to the reference).
"""
from __future__ import annotations

from . import backends
from .ops._table import OPS

try:
    from . import _C
except ImportError as exc:  # not built, or built against another torch
    raise ImportError(
        f"moniqua_kernels._C is not available ({exc}); build it with "
        "`pip install --no-build-isolation -e .`") from exc


def isa() -> str:
    """The instruction set the CPU kernels were dispatched to ("x86-64-v4", ...)."""
    return _C.isa()


for _name, _definition in OPS.items():
    backends.register_kernel(_name, "cpu", getattr(_C, _name))
    if _C.with_cuda():
        # Top-k on CUDA is torch's own GPU sort and scatter (the reference kernel); the
        # Elias coder has no GPU kernel (its decode is serial): the reference serves it.
        _fn = _definition.reference if _name.startswith(("topk", "qsgd_elias")) \
            else getattr(_C, _name)
        backends.register_kernel(_name, "cuda", _fn)
