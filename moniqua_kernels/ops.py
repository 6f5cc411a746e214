"""Custom ops: schemas, fake kernels, validation and the public wrappers.

Every op is a ``torch.library`` custom op in the ``moniqua_kernels`` namespace, so
``torch.compile(fullgraph=True)`` and ``torch.library.opcheck`` work on it.  Its
implementation asks the backend registry (backends.py) which kernel serves the call.

All argument validation of DESIGN.md section 7 lives here, in the public wrappers,
and runs before any kernel: a refused call writes nothing.  The custom ops themselves
trust their arguments; call them through the wrappers.
"""
from __future__ import annotations

import math
import operator
from typing import Optional, Sequence

import torch

from . import backends
from .reference.packing import packed_nbytes
from .reference.qsgd import NORMS, qsgd_levels
from .reference.moniqua import ROUNDINGS
from .reference.sparse import topk_count, topk_index_dtype

NAMESPACE = "moniqua_kernels"
MONIQUA_BITS = (1, 2, 4, 8)
QSGD_BITS = (2, 4, 8)
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
INT64_MIN, UINT64_END = -(2 ** 63), 2 ** 64


# --------------------------------------------------------------------------- validation

def _check_int(name: str, value, low: Optional[int] = None) -> int:
    # operator.index takes Python and numpy integers and refuses floats; bools are ints
    # to Python but never a meaningful count or seed here.
    try:
        if isinstance(value, bool):
            raise TypeError
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int, got {type(value).__name__}") from None
    if low is not None and value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    return value


def _check_bits(bits, allowed: Sequence[int], what: str) -> int:
    if isinstance(bits, bool) or not isinstance(bits, int) or bits not in allowed:
        raise ValueError(
            f"{what}: bits={bits!r} is not supported; allowed values are "
            f"{', '.join(map(str, allowed))}")
    return bits


def _check_rounding(rounding, bits: int) -> str:
    if rounding not in ROUNDINGS:
        raise ValueError(
            f"rounding={rounding!r} is not supported; use one of {', '.join(ROUNDINGS)}")
    if rounding == "stochastic" and bits == 1:
        raise ValueError(
            "rounding='stochastic' needs bits >= 2 (at 1 bit its error bound is the whole "
            "modulus); use rounding='nearest' or rounding='dither' for 1-bit Moniqua")
    return rounding


def _check_modulus(modulus) -> float:
    if isinstance(modulus, torch.Tensor):
        raise TypeError("modulus must be a Python float, not a tensor (use float(B))")
    try:
        value = float(modulus)
    except (TypeError, ValueError):
        raise TypeError(f"modulus must be a real number, got {type(modulus).__name__}") from None
    b32 = float(torch.tensor(value, dtype=torch.float32))
    if not math.isfinite(value) or not value > 0 or not math.isfinite(b32) or b32 <= 0:
        raise ValueError(
            f"modulus B must be finite and > 0 in float32, got {modulus!r}; compute it with "
            "moniqua_modulus(theta, bits, rounding) from a bound theta on |x - y|")
    return value


def _check_seed(seed) -> int:
    seed = _check_int("seed", seed)
    if not INT64_MIN <= seed < UINT64_END:
        raise ValueError(f"seed must fit in 64 bits (int64 or uint64), got {seed}")
    return seed - UINT64_END if seed >= 2 ** 63 else seed  # the int64 with the same bits


def _check_offset(offset, n: int) -> int:
    offset = _check_int("offset", offset, low=0)
    if offset % 4:
        raise ValueError(
            f"offset must be a multiple of 4 (one Philox call feeds 4 elements), got "
            f"{offset}; round it up with (offset + 3) // 4 * 4")
    if offset + n >= 2 ** 63:
        raise ValueError(f"offset + n = {offset + n} overflows the int64 stream position")
    return offset


def _check_moniqua(bits, rounding, modulus, what: str) -> float:
    """The parameters every Moniqua op shares; returns the modulus as a float."""
    _check_bits(bits, MONIQUA_BITS, what)
    _check_rounding(rounding, bits)
    return _check_modulus(modulus)


def _check_float_tensor(name: str, t) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"{name} must be float32, float16 or bfloat16, got {t.dtype}"
            + ("; convert with .float()" if t.is_floating_point() else ""))
    return t


def _check_payload(name: str, payload, n: int, bits: int, device: torch.device) -> None:
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
    _check_same_device(name, payload, device)


def _check_same_device(name: str, t: torch.Tensor, device: torch.device) -> None:
    if t.device != device:
        raise ValueError(f"{name} is on {t.device} but the call's tensors are on {device}; "
                         f"move it with .to({str(device)!r})")


def _capturing() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


def _check_finite(name: str, t: torch.Tensor, check_finite: bool) -> None:
    """Refuse NaN/inf.  Skipped with check_finite=False and while torch.compile traces
    (the check needs a device-to-host read, which a captured graph cannot do)."""
    if not check_finite or t.numel() == 0 or torch.compiler.is_compiling():
        return
    if _capturing():
        raise RuntimeError(
            f"the finite check on {name} needs a host synchronisation, which CUDA graph "
            "capture forbids; pass check_finite=False while capturing")
    if not bool(torch.isfinite(t).all()):
        bad = int((~torch.isfinite(t)).sum())
        raise ValueError(
            f"{name} has {bad} non-finite element(s) (NaN or inf) out of {t.numel()}; "
            "fix the values (a diverged model?) or pass check_finite=False to accept an "
            "unspecified code for them")


def _check_ratio(ratio) -> float:
    try:
        value = float(ratio)
    except (TypeError, ValueError):
        raise TypeError(f"ratio must be a real number, got {type(ratio).__name__}") from None
    if not 0.0 < value <= 1.0:
        raise ValueError(f"ratio must be in (0, 1], got {ratio!r}")
    return value


def _device(device) -> torch.device:
    if device is None:
        return torch.device("cpu")
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def _flat(x: torch.Tensor) -> torch.Tensor:
    return x if x.is_contiguous() else x.contiguous()


def _impl(op: str, device: torch.device):
    return backends.select(op, device)[1]


# --------------------------------------------------------------------------- custom ops

@torch.library.custom_op(f"{NAMESPACE}::philox_uniform", mutates_args=())
def _philox_uniform_op(n: int, seed: int, offset: int, device: torch.device) -> torch.Tensor:
    return _impl("philox_uniform", device)(n, seed, offset, device)


@_philox_uniform_op.register_fake
def _(n, seed, offset, device):
    return torch.empty(n, dtype=torch.float32, device=device)


@torch.library.custom_op(f"{NAMESPACE}::pack_bits", mutates_args=())
def _pack_bits_op(codes: torch.Tensor, bits: int) -> torch.Tensor:
    return _impl("pack_bits", codes.device)(_flat(codes), bits)


@_pack_bits_op.register_fake
def _(codes, bits):
    return codes.new_empty(packed_nbytes(codes.numel(), bits), dtype=torch.uint8)


@torch.library.custom_op(f"{NAMESPACE}::unpack_bits", mutates_args=())
def _unpack_bits_op(payload: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    return _impl("unpack_bits", payload.device)(_flat(payload), bits, n)


@_unpack_bits_op.register_fake
def _(payload, bits, n):
    return payload.new_empty(n, dtype=torch.uint8)


@torch.library.custom_op(f"{NAMESPACE}::moniqua_encode", mutates_args=())
def _moniqua_encode_op(x: torch.Tensor, modulus: float, bits: int, rounding: str,
                       seed: int, offset: int) -> torch.Tensor:
    return _impl("moniqua_encode", x.device)(_flat(x), modulus, bits, rounding, seed, offset)


@_moniqua_encode_op.register_fake
def _(x, modulus, bits, rounding, seed, offset):
    return x.new_empty(packed_nbytes(x.numel(), bits), dtype=torch.uint8)


@torch.library.custom_op(f"{NAMESPACE}::moniqua_decode", mutates_args=())
def _moniqua_decode_op(payload: torch.Tensor, reference: torch.Tensor, modulus: float,
                       bits: int, rounding: str, seed: int, offset: int) -> torch.Tensor:
    fn = _impl("moniqua_decode", reference.device)
    return fn(_flat(payload), _flat(reference), modulus, bits, rounding, seed, offset)


@_moniqua_decode_op.register_fake
def _(payload, reference, modulus, bits, rounding, seed, offset):
    return torch.empty_like(reference, memory_format=torch.contiguous_format)


@torch.library.custom_op(f"{NAMESPACE}::moniqua_mix_", mutates_args=("x",))
def _moniqua_mix_op(x: torch.Tensor, payloads: list[torch.Tensor], weights: list[float],
                    own_payload: torch.Tensor, modulus: float, bits: int, rounding: str,
                    gamma: float, seeds: list[int], offsets: list[int]) -> None:
    fn = _impl("moniqua_mix_", x.device)
    payloads = [_flat(p) for p in payloads]
    if x.is_contiguous():
        fn(x, payloads, weights, _flat(own_payload), modulus, bits, rounding, gamma,
           seeds, offsets)
    else:  # backends update contiguous memory; write the result back once
        work = x.contiguous()
        fn(work, payloads, weights, _flat(own_payload), modulus, bits, rounding, gamma,
           seeds, offsets)
        x.copy_(work)


@_moniqua_mix_op.register_fake
def _(x, payloads, weights, own_payload, modulus, bits, rounding, gamma, seeds, offsets):
    return None


def _nbuckets(n, bucket_size):
    return (n + bucket_size - 1) // bucket_size


@torch.library.custom_op(f"{NAMESPACE}::qsgd_encode", mutates_args=())
def _qsgd_encode_op(x: torch.Tensor, bits: int, bucket_size: int, norm: str, seed: int,
                    offset: int) -> tuple[torch.Tensor, torch.Tensor]:
    return _impl("qsgd_encode", x.device)(_flat(x), bits, bucket_size, norm, seed, offset)


@_qsgd_encode_op.register_fake
def _(x, bits, bucket_size, norm, seed, offset):
    n = x.numel()
    return (x.new_empty(_nbuckets(n, bucket_size), dtype=torch.float32),
            x.new_empty(packed_nbytes(n, bits), dtype=torch.uint8))


@torch.library.custom_op(f"{NAMESPACE}::qsgd_decode", mutates_args=())
def _qsgd_decode_op(scales: torch.Tensor, payload: torch.Tensor, n: int, bits: int,
                    bucket_size: int) -> torch.Tensor:
    fn = _impl("qsgd_decode", payload.device)
    return fn(_flat(scales), _flat(payload), n, bits, bucket_size)


@_qsgd_decode_op.register_fake
def _(scales, payload, n, bits, bucket_size):
    return payload.new_empty(n, dtype=torch.float32)


@torch.library.custom_op(f"{NAMESPACE}::sign_encode", mutates_args=())
def _sign_encode_op(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return _impl("sign_encode", x.device)(_flat(x))


@_sign_encode_op.register_fake
def _(x):
    return (x.new_empty((), dtype=torch.float32),
            x.new_empty(packed_nbytes(x.numel(), 1), dtype=torch.uint8))


@torch.library.custom_op(f"{NAMESPACE}::sign_decode", mutates_args=())
def _sign_decode_op(scale: torch.Tensor, payload: torch.Tensor, n: int) -> torch.Tensor:
    return _impl("sign_decode", payload.device)(scale.reshape(()), _flat(payload), n)


@_sign_decode_op.register_fake
def _(scale, payload, n):
    return payload.new_empty(n, dtype=torch.float32)


@torch.library.custom_op(f"{NAMESPACE}::randomk_count", mutates_args=())
def _randomk_count_op(n: int, ratio: float, seed: int, offset: int,
                      device: torch.device) -> torch.Tensor:
    return _impl("randomk_count", device)(n, ratio, seed, offset, device)


@_randomk_count_op.register_fake
def _(n, ratio, seed, offset, device):
    return torch.empty((), dtype=torch.int64, device=device)


@torch.library.custom_op(f"{NAMESPACE}::randomk_encode", mutates_args=())
def _randomk_encode_op(x: torch.Tensor, ratio: float, seed: int, offset: int) -> torch.Tensor:
    return _impl("randomk_encode", x.device)(_flat(x), ratio, seed, offset)


@_randomk_encode_op.register_fake
def _(x, ratio, seed, offset):
    kept = torch.library.get_ctx().new_dynamic_size()
    return x.new_empty(kept)


@torch.library.custom_op(f"{NAMESPACE}::randomk_decode", mutates_args=())
def _randomk_decode_op(values: torch.Tensor, n: int, ratio: float, seed: int, offset: int,
                       rescale: bool) -> torch.Tensor:
    fn = _impl("randomk_decode", values.device)
    return fn(_flat(values), n, ratio, seed, offset, rescale)


@_randomk_decode_op.register_fake
def _(values, n, ratio, seed, offset, rescale):
    return values.new_empty(n)


@torch.library.custom_op(f"{NAMESPACE}::topk_encode", mutates_args=())
def _topk_encode_op(x: torch.Tensor, ratio: float) -> tuple[torch.Tensor, torch.Tensor]:
    return _impl("topk_encode", x.device)(_flat(x), ratio)


@_topk_encode_op.register_fake
def _(x, ratio):
    n = x.numel()
    k = topk_count(n, ratio) if isinstance(n, int) else torch.library.get_ctx().new_dynamic_size()
    index_dtype = topk_index_dtype(n) if isinstance(n, int) else torch.int64
    return x.new_empty(k, dtype=index_dtype), x.new_empty(k)


@torch.library.custom_op(f"{NAMESPACE}::topk_decode", mutates_args=())
def _topk_decode_op(indices: torch.Tensor, values: torch.Tensor, n: int) -> torch.Tensor:
    return _impl("topk_decode", values.device)(_flat(indices), _flat(values), n)


@_topk_decode_op.register_fake
def _(indices, values, n):
    return values.new_empty(n)


# --------------------------------------------------------------------------- public API

def moniqua_delta(bits: int, rounding: str = "dither") -> float:
    """Worst-case quantization error as a fraction of B: 2^-b (stochastic) or 2^-(b+1)."""
    _check_bits(bits, MONIQUA_BITS, "moniqua_delta")
    _check_rounding(rounding, bits)
    return 2.0 ** -bits if rounding == "stochastic" else 2.0 ** -(bits + 1)


def moniqua_modulus(theta: float, bits: int, rounding: str = "dither") -> float:
    """B = 2 theta / (1 - 2 delta): with |x - y| <= theta, |decode - x| <= delta * B."""
    theta = float(theta)
    if not math.isfinite(theta) or theta <= 0:
        raise ValueError(f"theta must be finite and > 0 (a bound on |x - y|), got {theta!r}")
    return 2.0 * theta / (1.0 - 2.0 * moniqua_delta(bits, rounding))


def philox_uniform(n: int, seed: int, offset: int = 0, device=None) -> torch.Tensor:
    """float32 uniforms in [0, 1) of stream (seed, offset): u_p = (word >> 8) * 2^-24."""
    n = _check_int("n", n, low=0)
    return _philox_uniform_op(n, _check_seed(seed), _check_offset(offset, n), _device(device))


def pack_bits(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack codes (any integer dtype, values in [0, 2^bits)) into the wire layout.

    Byte j holds codes j*(8/b) .. j*(8/b) + 8/b - 1, least significant first:
    >>> pack_bits(torch.tensor([1, 2, 3, 0, 3], dtype=torch.uint8), 2).tolist()
    [57, 3]
    """
    _check_bits(bits, MONIQUA_BITS, "pack_bits")
    if not isinstance(codes, torch.Tensor):
        raise TypeError(f"codes must be a torch.Tensor, got {type(codes).__name__}")
    if codes.is_floating_point() or codes.is_complex() or codes.dtype == torch.bool:
        raise TypeError(f"codes must have an integer dtype, got {codes.dtype}")
    if codes.numel() and not torch.compiler.is_compiling():
        lo, hi = int(codes.min()), int(codes.max())
        if lo < 0 or hi >= 1 << bits:
            raise ValueError(f"codes must lie in [0, {1 << bits}) for bits={bits}, "
                             f"got values in [{lo}, {hi}]")
    return _pack_bits_op(codes.reshape(-1).to(torch.uint8), bits)


def unpack_bits(payload: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    """The n uint8 codes of a packed payload (inverse of pack_bits)."""
    _check_bits(bits, MONIQUA_BITS, "unpack_bits")
    n = _check_int("n", n, low=0)
    if not isinstance(payload, torch.Tensor):
        raise TypeError(f"payload must be a torch.Tensor, got {type(payload).__name__}")
    _check_payload("payload", payload, n, bits, payload.device)
    return _unpack_bits_op(payload.reshape(-1), bits, n)


def moniqua_encode(x: torch.Tensor, modulus: float, bits: int = 1, rounding: str = "dither",
                   seed: int = 0, offset: int = 0, *, check_finite: bool = True) -> torch.Tensor:
    """Moniqua codes of x modulo B, packed to bits per element (uint8, ceil(n*b/8) bytes).

    x: float32/float16/bfloat16, any shape and strides, read in row-major order.
    Stream (seed, offset) drives stochastic and dither rounding; element i uses
    position offset + i.  check_finite=False skips the NaN/inf check (graph capture).
    """
    _check_float_tensor("x", x)
    modulus = _check_moniqua(bits, rounding, modulus, "moniqua_encode")
    seed = _check_seed(seed)
    offset = _check_offset(offset, x.numel())
    _check_finite("x", x, check_finite)
    return _moniqua_encode_op(x, modulus, bits, rounding, seed, offset)


def moniqua_decode(payload: torch.Tensor, reference: torch.Tensor, modulus: float,
                   bits: int = 1, rounding: str = "dither", seed: int = 0, offset: int = 0,
                   *, check_finite: bool = True) -> torch.Tensor:
    """Recover the sender's tensor from its codes and the receiver's own reference y.

    Returns a tensor shaped and typed like reference: y + centred_mod(zh * B - y).
    For dither rounding (seed, offset) must be the sender's stream.
    """
    _check_float_tensor("reference", reference)
    modulus = _check_moniqua(bits, rounding, modulus, "moniqua_decode")
    seed = _check_seed(seed)
    offset = _check_offset(offset, reference.numel())
    _check_payload("payload", payload, reference.numel(), bits, reference.device)
    _check_finite("reference", reference, check_finite)
    return _moniqua_decode_op(payload.reshape(-1), reference, modulus, bits, rounding, seed,
                              offset)


def moniqua_mix_(x: torch.Tensor, payloads: Sequence[torch.Tensor], weights: Sequence[float],
                 own_payload: torch.Tensor, modulus: float, bits: int = 1,
                 rounding: str = "dither", gamma: float = 1.0,
                 seeds: Optional[Sequence[int]] = None, offsets: Optional[Sequence[int]] = None,
                 *, check_finite: bool = True) -> torch.Tensor:
    """Fused gossip step, in place: x += gamma * sum_j w_j (dec(q_j; x) - dec(q_self; x)).

    payloads[j] is neighbour j's codes with weight weights[j]; own_payload is this
    worker's codes of x.  seeds/offsets hold one stream per neighbour payload followed
    by the own payload's (len(payloads) + 1 entries; default all 0).  Returns x.
    """
    _check_float_tensor("x", x)
    modulus = _check_moniqua(bits, rounding, modulus, "moniqua_mix_")
    payloads = list(payloads)
    weights = [float(w) for w in weights]
    if len(weights) != len(payloads):
        raise ValueError(f"got {len(payloads)} payloads but {len(weights)} weights; "
                         "give one weight per neighbour payload")
    if not all(math.isfinite(w) for w in weights) or not math.isfinite(float(gamma)):
        raise ValueError("weights and gamma must be finite")
    nstreams = len(payloads) + 1
    seeds = [0] * nstreams if seeds is None else list(seeds)
    offsets = [0] * nstreams if offsets is None else list(offsets)
    for name, values in (("seeds", seeds), ("offsets", offsets)):
        if len(values) != nstreams:
            raise ValueError(
                f"{name} has {len(values)} entries; give len(payloads) + 1 = {nstreams} "
                "(one per neighbour payload, then the own payload's)")
    n = x.numel()
    seeds = [_check_seed(s) for s in seeds]
    offsets = [_check_offset(o, n) for o in offsets]
    for j, p in enumerate(payloads):
        _check_payload(f"payloads[{j}]", p, n, bits, x.device)
    _check_payload("own_payload", own_payload, n, bits, x.device)
    _check_finite("x", x, check_finite)
    _moniqua_mix_op(x, [p.reshape(-1) for p in payloads], weights, own_payload.reshape(-1),
                    modulus, bits, rounding, float(gamma), seeds, offsets)
    return x


def _check_qsgd(bits, bucket_size, norm=None) -> None:
    _check_bits(bits, QSGD_BITS, "qsgd")
    _check_int("bucket_size", bucket_size, low=1)
    if norm is not None and norm not in NORMS:
        raise ValueError(f"norm={norm!r} is not supported; use 'max' or 'l2'")


def qsgd_encode(x: torch.Tensor, bits: int = 4, bucket_size: int = 512, norm: str = "max",
                seed: int = 0, offset: int = 0, *, check_finite: bool = True
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Bucketed QSGD: (float32 scales, one per bucket; packed sign+level codes)."""
    _check_float_tensor("x", x)
    _check_qsgd(bits, bucket_size, norm)
    seed = _check_seed(seed)
    offset = _check_offset(offset, x.numel())
    _check_finite("x", x, check_finite)
    return _qsgd_encode_op(x, bits, bucket_size, norm, seed, offset)


def qsgd_decode(scales: torch.Tensor, payload: torch.Tensor, n: int, bits: int = 4,
                bucket_size: int = 512) -> torch.Tensor:
    """float32 values N * (-1)^sign * l / s, flat, n elements."""
    _check_qsgd(bits, bucket_size)
    n = _check_int("n", n, low=0)
    if not isinstance(scales, torch.Tensor) or scales.dtype != torch.float32:
        raise TypeError("scales must be a float32 tensor (one scale per bucket)")
    nb = _nbuckets(n, bucket_size)
    if scales.numel() != nb:
        raise ValueError(f"scales has {scales.numel()} entries but n={n} in buckets of "
                         f"{bucket_size} needs {nb}")
    _check_payload("payload", payload, n, bits, scales.device)
    return _qsgd_decode_op(scales.reshape(-1), payload.reshape(-1), n, bits, bucket_size)


def sign_encode(x: torch.Tensor, *, check_finite: bool = True
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Scaled sign: (float32 scale = mean |x|, 1 bit per element, 1 = negative)."""
    _check_float_tensor("x", x)
    _check_finite("x", x, check_finite)
    return _sign_encode_op(x)


def sign_decode(scale: torch.Tensor, payload: torch.Tensor, n: int) -> torch.Tensor:
    """float32 values scale * (1 - 2 * bit), flat, n elements."""
    n = _check_int("n", n, low=0)
    if not isinstance(scale, torch.Tensor) or scale.dtype != torch.float32 or scale.numel() != 1:
        raise TypeError("scale must be a float32 tensor with one element")
    _check_payload("payload", payload, n, 1, scale.device)
    return _sign_decode_op(scale, payload.reshape(-1), n)


def randomk_count(n: int, ratio: float, seed: int = 0, offset: int = 0, device=None) -> int:
    """How many of n elements random-k keeps for this stream (exact, regenerated)."""
    n = _check_int("n", n, low=0)
    ratio = _check_ratio(ratio)
    return int(_randomk_count_op(n, ratio, _check_seed(seed), _check_offset(offset, n),
                                 _device(device)))


def randomk_encode(x: torch.Tensor, ratio: float, seed: int = 0, offset: int = 0,
                   *, check_finite: bool = True) -> torch.Tensor:
    """The values of x where u_p < ratio, in index order, in x's dtype."""
    _check_float_tensor("x", x)
    ratio = _check_ratio(ratio)
    seed = _check_seed(seed)
    offset = _check_offset(offset, x.numel())
    _check_finite("x", x, check_finite)
    return _randomk_encode_op(x, ratio, seed, offset)


def randomk_decode(values: torch.Tensor, n: int, ratio: float, seed: int = 0, offset: int = 0,
                   rescale: bool = False) -> torch.Tensor:
    """Scatter the kept values back to n elements (times float32(1/ratio) if rescale)."""
    _check_float_tensor("values", values)
    n = _check_int("n", n, low=0)
    ratio = _check_ratio(ratio)
    seed = _check_seed(seed)
    offset = _check_offset(offset, n)
    if not torch.compiler.is_compiling():
        kept = randomk_count(n, ratio, seed, offset, values.device)
        if values.numel() != kept:
            raise ValueError(f"values has {values.numel()} elements but stream (seed={seed}, "
                             f"offset={offset}) keeps {kept} of n={n} at ratio={ratio}; "
                             "use the sender's seed, offset and ratio")
    return _randomk_decode_op(values.reshape(-1), n, ratio, seed, offset, bool(rescale))


def topk_encode(x: torch.Tensor, ratio: float, *, check_finite: bool = True
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """(ascending indices, values) of the ceil(ratio * n) entries of largest |x|."""
    _check_float_tensor("x", x)
    ratio = _check_ratio(ratio)
    _check_finite("x", x, check_finite)
    return _topk_encode_op(x, ratio)


def topk_decode(indices: torch.Tensor, values: torch.Tensor, n: int) -> torch.Tensor:
    """Dense tensor of n elements with values at indices, zeros elsewhere."""
    _check_float_tensor("values", values)
    n = _check_int("n", n, low=0)
    if not isinstance(indices, torch.Tensor) or indices.dtype not in (torch.int32, torch.int64):
        raise TypeError("indices must be an int32 or int64 tensor")
    if indices.numel() != values.numel():
        raise ValueError(f"indices has {indices.numel()} entries but values has "
                         f"{values.numel()}; they must pair up")
    _check_same_device("indices", indices, values.device)
    if indices.numel() and not torch.compiler.is_compiling():
        lo, hi = int(indices.min()), int(indices.max())
        if lo < 0 or hi >= n:
            raise ValueError(f"indices must lie in [0, {n}), got values in [{lo}, {hi}]")
    return _topk_decode_op(indices.reshape(-1), values.reshape(-1), n)
