"""Backend registry: which implementation serves an op on a device, and why not.

Backends, by name:
  reference  the pure-torch spec (moniqua_kernels.reference); every device.
  cpu        native C++/OpenMP kernels from the _C extension; CPU tensors.
  cuda       native CUDA C++ kernels from the _C extension; CUDA tensors.
  triton     Triton kernels (moniqua_kernels.triton); CUDA tensors, and CPU tensors
             when TRITON_INTERPRET=1 and the backend is selected explicitly.

Selection: ``set_backend(name)`` (or the ``use_backend`` context manager) wins over
the environment variable ``MONIQUA_BACKEND=auto|reference|cpu|cuda|triton``; ``auto``
takes the first backend of the device's preference list that can serve the op.  A
forced backend that cannot serve a call raises ``BackendUnavailableError`` listing why
each backend cannot.  A missing native library or Triton never breaks import: it is
looked up on first use, and ``auto`` warns once and falls back.

Every backend module exposes ``OPS``: a dict from op name to a callable with the
reference's signature; the callables receive validated, contiguous tensors.
"""
from __future__ import annotations

import contextlib
import importlib
import os
import threading
import warnings
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

BACKEND_NAMES = ("reference", "cpu", "cuda", "triton")
ENV_VAR = "MONIQUA_BACKEND"

# auto's preference per device type.  On CUDA the order per op comes from the measured
# table in _AUTO_CUDA_ORDER when the native-kernels work has filled it in.
_AUTO_ORDER = {"cpu": ("cpu", "reference"), "cuda": ("triton", "cuda", "reference")}
_AUTO_CUDA_ORDER: dict[str, tuple[str, ...]] = {}


_LOAD_LOCK = threading.Lock()


class BackendUnavailableError(RuntimeError):
    """The selected backend cannot run this op on this device."""


@dataclass
class _Backend:
    name: str
    module: str  # module exposing OPS
    devices: tuple[str, ...]
    _ops: Optional[dict] = field(default=None, repr=False)
    _load_error: Optional[str] = field(default=None, repr=False)
    _loaded: bool = field(default=False, repr=False)

    def ops(self) -> Optional[dict]:
        if not self._loaded:
            # Threads (the simulator's workers) may race to the first call: one loads,
            # the others wait, and nobody sees a half-loaded backend.
            with _LOAD_LOCK:
                if not self._loaded:
                    try:
                        self._ops = importlib.import_module(self.module).OPS
                    except Exception as exc:  # ImportError, a broken .so, an old Triton
                        self._load_error = f"{type(exc).__name__}: {exc}"
                    self._loaded = True
        return self._ops

    def reason_unavailable(self, op: str, device: torch.device, explicit: bool) -> Optional[str]:
        """None when this backend can run op on device, else the reason it cannot."""
        dev = device.type
        if self.name == "triton" and dev == "cpu":
            if os.environ.get("TRITON_INTERPRET") != "1":
                return "Triton runs CPU tensors only under TRITON_INTERPRET=1"
            if not explicit:
                return "the Triton interpreter serves CPU tensors only when selected explicitly"
        elif dev not in self.devices:
            return f"serves {', '.join(self.devices)} tensors, not {dev}"
        ops = self.ops()
        if ops is None:
            return f"{self.module} could not be imported ({self._load_error})"
        if op not in ops:
            return f"has no kernel for {op}"
        return None


_BACKENDS = {
    "reference": _Backend("reference", "moniqua_kernels.reference._ops", ("cpu", "cuda", "meta", "mps", "xpu")),
    "cpu": _Backend("cpu", "moniqua_kernels._native", ("cpu",)),
    "cuda": _Backend("cuda", "moniqua_kernels._native_cuda", ("cuda",)),
    "triton": _Backend("triton", "moniqua_kernels.triton", ("cuda",)),
}

_forced: Optional[str] = None
_warned: set[str] = set()


def _check_name(name: str) -> str:
    if name != "auto" and name not in _BACKENDS:
        raise ValueError(
            f"unknown backend {name!r}; choose one of auto, {', '.join(BACKEND_NAMES)}")
    return name


def set_backend(name: Optional[str]) -> None:
    """Force a backend for every op ('auto' or None restores automatic selection)."""
    global _forced
    _forced = None if name in (None, "auto") else _check_name(name)


def get_backend() -> str:
    """The selection in force: set_backend's, else MONIQUA_BACKEND's, else 'auto'."""
    if _forced is not None:
        return _forced
    return _check_name(os.environ.get(ENV_VAR, "auto").strip() or "auto")


@contextlib.contextmanager
def use_backend(name: str):
    """Context manager: run the block with a forced backend."""
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
    return {name: b.reason_unavailable(op, device, explicit=True) for name, b in _BACKENDS.items()}


def select(op: str, device) -> tuple[str, Callable]:
    """(backend name, implementation) for op on device under the current selection."""
    device = torch.device(device)
    choice = get_backend()
    if choice != "auto":
        backend = _BACKENDS[choice]
        reason = backend.reason_unavailable(op, device, explicit=True)
        if reason is None:
            return choice, backend.ops()[op]
        reasons = "; ".join(
            f"{name}: {r or 'available'}" for name, r in available(op, device).items())
        raise BackendUnavailableError(
            f"backend {choice!r} (from set_backend or {ENV_VAR}) cannot run {op} on a "
            f"{device.type} tensor: {reason}. Backends for this call: {reasons}. "
            f"Use {ENV_VAR}=auto to let the package choose.")
    order = _AUTO_CUDA_ORDER.get(op) if device.type == "cuda" else None
    order = order or _AUTO_ORDER.get(device.type, ("reference",))
    skipped = []
    for name in order:
        reason = _BACKENDS[name].reason_unavailable(op, device, explicit=False)
        if reason is None:
            if skipped:
                _warn_fallback(op, device, skipped, name)
            return name, _BACKENDS[name].ops()[op]
        skipped.append((name, reason))
    raise BackendUnavailableError(  # only for devices with no reference support
        f"no backend can run {op} on {device.type}: "
        + "; ".join(f"{n}: {r}" for n, r in skipped))


def _warn_fallback(op, device, skipped, chosen) -> None:
    # Warn once per preferred backend: a missing kernel for one op is not news.
    name, reason = skipped[0]
    if name in _warned or "has no kernel" in reason:
        return
    _warned.add(name)
    warnings.warn(
        f"moniqua_kernels: the {name} backend is unavailable ({reason}); "
        f"{op} on {device.type} falls back to {chosen}. Build the extension with "
        f"`pip install -e .` (without MONIQUA_SKIP_EXT=1) for the fast path.",
        RuntimeWarning, stacklevel=4)
