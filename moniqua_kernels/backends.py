"""Backend registry: which kernel serves an op on a device, and why not.

Backends, by name:
  reference  the pure-torch spec (reference/kernels.py); every device.
  cpu        native C++ kernels of the _C extension; CPU tensors.
  cuda       native CUDA C++ kernels of the _C extension (built with CUDA); CUDA tensors.
  triton     Triton kernels (moniqua_kernels.triton); CUDA tensors, and CPU tensors
             when TRITON_INTERPRET=1 and the backend is selected explicitly.

Kernels are registered against the op table (ops/_table.py) with ``register_kernel``:
the reference's by the table itself, the others by their module when it is first
needed (a missing native library or Triton never breaks import).

Selection: ``set_backend(name)`` (or the ``use_backend`` context manager) wins over the
environment variable ``MONIQUA_BACKEND=auto|reference|cpu|cuda|triton``.  ``auto``
takes the first backend of the device's preference list that can serve the op (on CUDA
the order per op comes from the measured table ``AUTO_CUDA``); it warns once when a
preferred backend is missing, naming the fix.  A forced backend that cannot serve a
call raises ``BackendUnavailableError`` listing why each backend cannot.
"""
from __future__ import annotations

import contextlib
import importlib
import os
import threading
import warnings
from typing import Callable, Optional

import torch

BACKEND_NAMES = ("reference", "cpu", "cuda", "triton")
ENV_VAR = "MONIQUA_BACKEND"

_AUTO_ORDER = {"cpu": ("cpu", "reference"), "cuda": ("triton", "cuda", "reference")}
# auto on CUDA, per op: the faster GPU backend first.  Measured at n = 2^26, % of copy
# bandwidth, Triton / CUDA C++:
# - H100 (benchmarks/results/NVIDIA_H100_80GB_HBM3/run2): encode 1-bit dither fp32 91 / 90,
#   bf16 58 / 54; decode 1-bit dither fp32 99 / 87; mix 1-bit dither fp32 58 / 48; sign
#   81 / 80; QSGD 4-bit 57 / 24; philox 106 / 92.
# - H200 (benchmarks/results/NVIDIA_H200/run3, after the CUDA one-pass QSGD encode and the
#   CUDA decode and mix tiles): CUDA C++ faster in 2 of 43 cases, by 1.01x and 1.08x
#   (encode 1-bit dither fp32 73 / 74, decode 8-bit dither fp32 86 / 93); median CUDA /
#   Triton per op 0.62-0.98 (mix 0.72, QSGD encode 0.71, decode 0.86).
# - H100 again at 058e747 (benchmarks/results/NVIDIA_H100_80GB_HBM3/run5): CUDA C++ faster in
#   4 of 34 cases, by at most 1.01x (the fp32 decodes); median CUDA / Triton per op
#   0.73-0.99 (mix 0.73, QSGD encode 0.77, QSGD decode 0.73, encode 0.99, decode 0.98).
# Per op, Triton is as fast or faster on both cards (the exceptions are single cases,
# within 8 %), so every op keeps _AUTO_ORDER["cuda"]; an op the CUDA kernels serve
# faster on some card gets an entry here, with its measurement.
AUTO_CUDA: dict[str, tuple[str, ...]] = {}

# Where each backend's kernels come from, and the fix when they cannot load.
_MODULES = {"cpu": "moniqua_kernels._native", "cuda": "moniqua_kernels._native",
            "triton": "moniqua_kernels.triton"}
_FIXES = {
    "cpu": "build the native extension: pip install --no-build-isolation -e . "
           "(without MONIQUA_SKIP_EXT=1)",
    "cuda": "build the native extension against a CUDA build of torch with CUDA_HOME set: "
            "pip install --no-build-isolation -e .",
    "triton": "install Triton: pip install triton",
}
_DEVICES = {"reference": None, "cpu": ("cpu",), "cuda": ("cuda",), "triton": ("cuda",)}

_kernels: dict[str, dict[str, Callable]] = {name: {} for name in BACKEND_NAMES}
_load_errors: dict[str, str] = {}  # backend -> why it cannot serve any call
_loaded: set[str] = set()
_lock = threading.Lock()
_forced: Optional[str] = None
_warned: set[str] = set()
_cache: dict[tuple, Callable] = {}


class BackendUnavailableError(RuntimeError):
    """The selected backend cannot run this op on this device."""


def register_kernel(op: str, backend: str, fn: Callable) -> None:
    """Make fn (taking exactly the op's schema arguments) backend's kernel for op."""
    from .ops._table import OPS
    if op not in OPS:
        raise KeyError(f"{op!r} is not an op of the table; declare it in ops/_table.py")
    _kernels[backend][op] = fn
    _cache.clear()


def _load(backend: str) -> None:
    if backend in _loaded:
        return
    # Threads (the simulator's workers) may race to the first call: one loads, the
    # others wait, and nobody sees a half-registered backend.
    with _lock:
        if backend in _loaded:
            return
        if backend == "reference":  # the spec kernels, declared with the ops
            from .ops._table import OPS
            for op, definition in OPS.items():
                _kernels["reference"].setdefault(op, definition.reference)
            _loaded.add(backend)
            return
        try:
            importlib.import_module(_MODULES[backend])
        except Exception as exc:  # ImportError, a broken .so, an old Triton
            _load_errors[backend] = (f"{_MODULES[backend]} could not be loaded "
                                     f"({type(exc).__name__}: {exc})")
        _loaded.add(backend)
        if backend in ("cpu", "cuda"):  # one module serves both native backends
            _loaded.update(("cpu", "cuda"))
            if backend in _load_errors:
                _load_errors["cpu"] = _load_errors["cuda"] = _load_errors[backend]
            elif not _kernels["cuda"]:
                # Without this a CPU-only build said "has no kernel for <op>", as if the
                # op had no CUDA kernel anywhere, and its fallback to Triton was silent.
                _load_errors["cuda"] = ("the native extension was built without CUDA "
                                        "kernels (a CPU build of torch, or no nvcc or "
                                        "CUDA_HOME when it was built)")


def reason_unavailable(backend: str, op: str, device: torch.device,
                       explicit: bool) -> Optional[str]:
    """None when backend can run op on device, else the reason it cannot."""
    dev = device.type
    if backend == "triton" and dev == "cpu":
        if os.environ.get("TRITON_INTERPRET") != "1":
            return "Triton runs CPU tensors only under TRITON_INTERPRET=1"
        if not explicit:
            return "the Triton interpreter serves CPU tensors only when selected explicitly"
    elif _DEVICES[backend] is not None and dev not in _DEVICES[backend]:
        return f"serves {', '.join(_DEVICES[backend])} tensors, not {dev}"
    _load(backend)
    if backend in _load_errors:
        return _load_errors[backend]
    if op not in _kernels[backend]:
        return f"has no kernel for {op}"
    return None


def _check_name(name: str) -> str:
    if name != "auto" and name not in BACKEND_NAMES:
        raise ValueError(
            f"unknown backend {name!r}; choose one of auto, {', '.join(BACKEND_NAMES)}")
    return name


def set_backend(name: Optional[str]) -> None:
    """Force a backend for every op ('auto' or None restores automatic selection)."""
    global _forced
    _forced = None if name in (None, "auto") else _check_name(name)


# os.environ.get costs ~1.7 us (it encodes the key every call), more than a small op's
# own Python cost; os.environ's underlying dict gives the same answer in ~0.05 us.
_ENV_DATA = getattr(os.environ, "_data", None)
_ENV_KEY = os.environ.encodekey(ENV_VAR) if hasattr(os.environ, "encodekey") else None


def _env_choice() -> Optional[str]:
    if _ENV_DATA is not None and _ENV_KEY is not None:
        raw = _ENV_DATA.get(_ENV_KEY)
        return None if raw is None else os.environ.decodevalue(raw)
    return os.environ.get(ENV_VAR)


def get_backend() -> str:
    """The selection in force: set_backend's, else MONIQUA_BACKEND's, else 'auto'."""
    if _forced is not None:
        return _forced
    raw = _env_choice()
    if raw is None or raw == "auto":
        return "auto"
    return _check_name(raw.strip() or "auto")


@contextlib.contextmanager
def use_backend(name: Optional[str]):
    """Context manager: run the block with a forced backend (None: automatic)."""
    global _forced
    previous = _forced
    set_backend(name)
    try:
        yield
    finally:
        _forced = previous


def available(op: str, device) -> dict[str, Optional[str]]:
    """{backend: None if it can serve op on device when selected, else the reason}."""
    device = torch.device(device)
    return {name: reason_unavailable(name, op, device, explicit=True)
            for name in BACKEND_NAMES}


def kernel(op: str, device: torch.device) -> Callable:
    """The kernel that serves op on device under the current selection (cached)."""
    key = (op, device, get_backend())
    fn = _cache.get(key)
    if fn is None:
        name, fn = select(op, device)
        _cache[key] = fn
    return fn


def select(op: str, device) -> tuple[str, Callable]:
    """(backend name, kernel) for op on device under the current selection."""
    device = torch.device(device)
    choice = get_backend()
    if choice != "auto":
        reason = reason_unavailable(choice, op, device, explicit=True)
        if reason is None:
            return choice, _kernels[choice][op]
        reasons = "; ".join(
            f"{name}: {r or 'available'}" for name, r in available(op, device).items())
        raise BackendUnavailableError(
            f"backend {choice!r} (from set_backend or {ENV_VAR}) cannot run {op} on a "
            f"{device.type} tensor: {reason}. Backends for this call: {reasons}. "
            f"Use {ENV_VAR}=auto to let the package choose.")
    order = (AUTO_CUDA.get(op) if device.type == "cuda" else None) or \
        _AUTO_ORDER.get(device.type, ("reference",))
    skipped = []
    for name in order:
        reason = reason_unavailable(name, op, device, explicit=False)
        if reason is None:
            if skipped:
                _warn_fallback(op, device, skipped, name)
            return name, _kernels[name][op]
        skipped.append((name, reason))
    raise BackendUnavailableError(  # only for devices the reference cannot serve
        f"no backend can run {op} on {device.type}: "
        + "; ".join(f"{n}: {r}" for n, r in skipped))


def _warn_fallback(op, device, skipped, chosen) -> None:
    # Warn once per missing backend, with the fix for that backend; an op that a backend
    # simply has no kernel for is not news.
    for name, reason in skipped:
        if name in _warned or "has no kernel" in reason:
            continue
        _warned.add(name)
        warnings.warn(
            f"moniqua_kernels: the {name} backend is unavailable ({reason}); {op} on "
            f"{device.type} falls back to {chosen}. To get it: {_FIXES[name]}.",
            RuntimeWarning, stacklevel=4)
