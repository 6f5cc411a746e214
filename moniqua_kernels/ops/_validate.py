"""Argument validation for every public op (DESIGN.md section 7), in one place.

Every check runs in the public wrappers (api.py) before any kernel: a refused call
writes nothing.  The checks that need the data (non-finite inputs, a modulus so small
that x / B overflows, padding bits, the offset held in a stream tensor) run inside the
kernels, in the pass they already make, and land in the error flags (_errors.py).

The checks are written so that torch.compile traces them without guards on per-step
values: a seed or offset may be a SymInt (range checks then become torch._check) or a
0-d int64 tensor (checked in the kernel).
"""
from __future__ import annotations

import math
import operator
import struct
from typing import Optional, Sequence, Union

import torch

from ..reference.moniqua import ROUNDINGS
from ..reference.packing import packed_nbytes
from ..reference.qsgd import NORMS

MONIQUA_BITS = (1, 2, 4, 8)
QSGD_BITS = (2, 4, 8)
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
INT64_MIN, UINT64_END = -(2 ** 63), 2 ** 64
# Below this float32 B, 1/B overflows float32 (1 / 2^-128 = 2^128 > FLT_MAX).
MIN_MODULUS = 2.0 ** -126

StreamValue = Union[int, torch.SymInt, torch.Tensor]


def check_int(name: str, value, low: Optional[int] = None) -> int:
    """A Python or numpy integer (bools refused: never a meaningful count here)."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got bool")
    if isinstance(value, torch.SymInt):
        if low is not None:
            torch._check(value >= low, lambda: f"{name} must be >= {low}")
        return value
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int, got {type(value).__name__}") from None
    if low is not None and value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    return value


def check_bits(bits, allowed: Sequence[int], what: str) -> int:
    try:
        value = None if isinstance(bits, bool) else operator.index(bits)
    except TypeError:
        value = None
    if value not in allowed:
        shown = value if value is not None else repr(bits)  # numpy ints print as ints
        raise ValueError(
            f"{what}: bits={shown} is not supported; allowed values are "
            f"{', '.join(map(str, allowed))}")
    return value


def check_rounding(rounding, bits: int) -> str:
    if rounding not in ROUNDINGS:
        raise ValueError(
            f"rounding={rounding!r} is not supported; use one of {', '.join(ROUNDINGS)}")
    if rounding == "stochastic" and bits == 1:
        raise ValueError(
            "rounding='stochastic' needs bits >= 2 (at 1 bit its error bound is the whole "
            "modulus); use rounding='nearest' or rounding='dither' for 1-bit Moniqua")
    return rounding


def _float32(value: float) -> float:
    """value rounded to float32 (round to nearest even; inf beyond its range)."""
    try:
        return struct.unpack("f", struct.pack("f", value))[0]
    except OverflowError:
        return math.copysign(math.inf, value)


def check_modulus(modulus) -> float:
    if isinstance(modulus, float) and not torch.compiler.is_compiling() \
            and modulus in _GOOD_MODULI:
        return modulus  # the common case: the same B every step (saves ~5 us a call)
    if isinstance(modulus, torch.Tensor):
        raise TypeError("modulus must be a Python float, not a tensor (use float(B))")
    if isinstance(modulus, (bool, str, bytes)) or not isinstance(modulus, (int, float)) and \
            not hasattr(modulus, "__float__"):
        raise TypeError(f"modulus must be a real number, got {type(modulus).__name__}")
    value = float(modulus)
    b32 = _float32(value) if math.isfinite(value) else value
    if not math.isfinite(value) or not value > 0 or not math.isfinite(b32) or b32 <= 0:
        raise ValueError(
            f"modulus B must be finite and > 0 in float32, got {modulus!r}; compute it with "
            "moniqua_modulus(theta, bits, rounding) from a bound theta on |x - y|")
    if b32 < MIN_MODULUS:
        raise ValueError(
            f"modulus B={modulus!r} is so small that 1/B overflows float32; B must be >= "
            f"2^-126 (and x/B must stay finite: the kernels report elements where it does "
            "not)")
    if len(_GOOD_MODULI) < 1024 and not torch.compiler.is_compiling():
        _GOOD_MODULI.add(value)
    return value


_GOOD_MODULI: set[float] = set()


def check_moniqua(bits, rounding, modulus, what: str) -> tuple[int, float]:
    """The parameters every Moniqua op shares: (bits, modulus as a float)."""
    if type(bits) is int and (bits, rounding) in _GOOD_MONIQUA and type(modulus) is float \
            and modulus in _GOOD_MODULI and not torch.compiler.is_compiling():
        return bits, modulus  # the common call: a B already checked (check_modulus)
    if type(bits) is not int or (bits, rounding) not in _GOOD_MONIQUA:  # bools, floats: slow path
        bits = check_bits(bits, MONIQUA_BITS, what)
        check_rounding(rounding, bits)
    return bits, check_modulus(modulus)


_GOOD_MONIQUA = {(b, r) for b in MONIQUA_BITS for r in ROUNDINGS
                 if not (b == 1 and r == "stochastic")}


def check_stream(seed, offset, n, device: torch.device) -> tuple:
    """(seed, offset) checked as check_seed and check_offset do.  The first line is the
    common eager call, two plain ints already in range, which those checks would return
    unchanged: it saves ~1 us of the ~3 us a small op costs (bench.py, n = 1024)."""
    if type(seed) is int and type(offset) is int and 0 <= seed < _INT64_END and \
            0 <= offset and not offset & 3 and offset + n < _INT64_END and \
            not torch.compiler.is_compiling():
        return seed, offset
    return check_seed(seed, device), check_offset(offset, n, device)


_INT64_END = 2 ** 63


def check_seed(seed, device: torch.device) -> StreamValue:
    """An int64/uint64 seed as the int64 with the same bits, or a 0-d int64 tensor.
    While torch.compile traces, an int is left unchecked: checking its value would make
    it a guard and recompile the graph for every seed (the kernels check the offset)."""
    if isinstance(seed, torch.Tensor):
        return _stream_tensor("seed", seed, device)
    if isinstance(seed, torch.SymInt):
        return seed
    if torch.compiler.is_compiling():
        # a uint64 seed as its int64 bits here too (the schema's int is int64: 2^64 - 1
        # failed to compile where eager took it); a constant int's value is guarded anyway
        return seed - UINT64_END if type(seed) is int and seed >= 2 ** 63 else seed
    seed = check_int("seed", seed)
    if not INT64_MIN <= seed < UINT64_END:
        raise ValueError(f"seed must fit in 64 bits (int64 or uint64), got {seed}")
    return seed - UINT64_END if seed >= 2 ** 63 else seed


def check_offset(offset, n, device: torch.device) -> StreamValue:
    """A non-negative multiple of 4 (one Philox call feeds 4 elements), or a 0-d int64
    tensor whose value the kernel checks."""
    if isinstance(offset, torch.Tensor):
        return _stream_tensor("offset", offset, device)
    if isinstance(offset, torch.SymInt) or torch.compiler.is_compiling():
        return offset  # see check_seed
    offset = check_int("offset", offset, low=0)
    if offset % 4:
        raise ValueError(
            f"offset must be a multiple of 4 (one Philox call feeds 4 elements), got "
            f"{offset}; round it up with (offset + 3) // 4 * 4")
    if isinstance(n, int) and offset + n >= 2 ** 63:
        raise ValueError(f"offset + n = {offset + n} overflows the int64 stream position")
    return offset


def _stream_tensor(name: str, t: torch.Tensor, device: torch.device) -> torch.Tensor:
    if t.dtype != torch.int64 or t.numel() != 1:
        raise TypeError(f"a {name} tensor must hold one int64, got {t.dtype} with "
                        f"{t.numel()} elements")
    check_same_device(name, t, device)
    return t.reshape(())


def check_float_tensor(name: str, t) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"{name} must be float32, float16 or bfloat16, got {t.dtype}"
            + ("; convert with .float()" if t.is_floating_point() else ""))
    return t


def check_payload(name: str, payload, n: int, bits: int, device: torch.device) -> None:
    if not isinstance(payload, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(payload).__name__}")
    if payload.dtype != torch.uint8:
        raise TypeError(f"{name} must be uint8 (packed codes), got {payload.dtype}")
    expected = packed_nbytes(n, bits)
    if payload.numel() != expected:
        raise ValueError(
            f"{name} has {payload.numel()} bytes but {n} elements at {bits} bits need "
            f"{expected} bytes (ceil(n*bits/8)); check n, bits and that the payload is "
            "the one encoded for this tensor")
    check_same_device(name, payload, device)


def check_same_device(name: str, t: torch.Tensor, device: torch.device) -> None:
    if t.device != device:
        raise ValueError(f"{name} is on {t.device} but the call's tensors are on {device}; "
                         f"move it with .to({str(device)!r})")


def check_in_place(name: str, x: torch.Tensor) -> None:
    """Refuse what torch's own in-place ops refuse, before anything is written.  (While
    torch.compile traces, the op's declared mutation lets torch check these itself.)"""
    if torch.compiler.is_compiling():
        return
    if x.requires_grad and torch.is_grad_enabled():
        # a leaf (or a view of one) torch refuses; any other the ops have no gradient
        # for, and the native kernels' writes are invisible to autograd
        what = "a leaf tensor that requires grad" if x.is_leaf else \
            "a tensor that autograd records (requires grad)"
        raise RuntimeError(f"{name} is {what} and cannot be updated in place by an op "
                           "without a gradient; run it under torch.no_grad() (as an "
                           "optimizer step does)")
    if any(st == 0 and n > 1 for n, st in zip(x.shape, x.stride())):
        raise RuntimeError(f"{name} is expanded (a stride of 0: several elements share one "
                           "memory location) and cannot be written in place; pass a "
                           "contiguous tensor (.contiguous())")
    if x.is_inference() and not torch.is_inference_mode_enabled():
        raise RuntimeError(f"{name} is an inference tensor: in-place updates of it are "
                           "only allowed inside torch.inference_mode()")


def check_out(name: str, out, shape, dtype: torch.dtype, device: torch.device) -> None:
    """A caller-provided output: the exact shape, dtype and device, contiguous."""
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(out).__name__}")
    if out.dtype != dtype or tuple(out.shape) != tuple(shape):
        raise ValueError(f"{name} must be a {dtype} tensor of shape {tuple(shape)}, got "
                         f"{out.dtype} of shape {tuple(out.shape)}")
    check_same_device(name, out, device)
    if not out.is_contiguous():
        raise ValueError(f"{name} must be contiguous (the kernels write it in place)")
    check_in_place(name, out)


def byte_range(t: torch.Tensor) -> tuple:
    """(storage address, first byte, one past the last byte) that t's elements span."""
    extent = 1 + sum((n - 1) * st for n, st in zip(t.shape, t.stride()))
    start = t.storage_offset() * t.element_size()
    return t.untyped_storage().data_ptr(), start, start + extent * t.element_size()


def check_disjoint(name: str, out: torch.Tensor, reads) -> None:
    """A caller's output must not overlap what the op reads (as torch's out= ops refuse):
    the kernels read as they write, so the native CPU path gave a wrong result where the
    reference's whole-tensor steps happened to be right.  reads: (name, tensor,
    same_ok) triples; same_ok allows the very same elements (an elementwise op's input)."""
    if torch.compiler.is_compiling() or out.numel() == 0:
        return
    mem, lo, hi = byte_range(out)
    for other, t, same_ok in reads:
        if not isinstance(t, torch.Tensor) or t.numel() == 0 or t.device != out.device:
            continue
        t_mem, t_lo, t_hi = byte_range(t)
        if t_mem != mem or t_hi <= lo or hi <= t_lo:
            continue
        if same_ok and (t_lo, t_hi, t.dtype, t.stride()) == (lo, hi, out.dtype, out.stride()):
            continue
        raise ValueError(f"{name} overlaps {other} in memory: the op reads {other} while it "
                         f"writes {name}; pass an output of its own")


def check_ratio(ratio) -> float:
    value = _real("ratio", ratio)
    if not 0.0 < value <= 1.0:
        raise ValueError(f"ratio must be in (0, 1], got {ratio!r}")
    return value


def check_qsgd(bits, bucket_size, norm=None) -> int:
    bits = check_bits(bits, QSGD_BITS, "qsgd")
    check_int("bucket_size", bucket_size, low=1)
    if norm is not None and norm not in NORMS:
        raise ValueError(f"norm={norm!r} is not supported; use 'max' or 'l2'")
    return bits


def qsgd_bucket(bucket_size: int, n) -> int:
    """The bucket size the kernels get: at most n.  A bucket at least n long is one
    bucket of n whatever its size (the streams are per element), but the kernels size
    their work by it: bucket_size=2^26 for 10 elements took 3.3 s and 1.5 GB in the
    reference, 2^44 six seconds in the native kernels, 2^40 never ended in Triton."""
    return bucket_size if not isinstance(n, int) else min(bucket_size, max(n, 1))


def _real(name: str, value) -> float:
    if isinstance(value, (bool, str, bytes)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}") from None


def check_weights(weights, gamma) -> tuple[list[float], float]:
    """The mix's weights (one float per payload) and gamma, finite."""
    weights = [_real(f"weights[{j}]", w) for j, w in enumerate(weights)]
    gamma = _real("gamma", gamma)
    for j, w in enumerate(weights):
        if not math.isfinite(w):
            raise ValueError(f"weights[{j}] must be finite, got {w!r}")
    if not math.isfinite(gamma):
        raise ValueError(f"gamma must be finite, got {gamma!r}")
    return weights, gamma


def device_of(device) -> torch.device:
    if device is None:
        return torch.device("cpu")
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device
