"""The public ops: validate (DESIGN.md section 7), allocate the outputs the caller did not
pass, call the op of the table (_table.py).

Eager calls go straight to the kernel the backend registry picks: the dispatcher's own
cost (~10 us a call, measured on the 2-core CI box) would triple the cost of a small
op for nothing.  While torch.compile traces, or when a tensor subclass or dispatch mode
is involved, the call goes through the dispatcher op, which picks the same kernel; on
CPU both paths raise a kernel's data error as soon as it returns.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import torch

from .. import backends
from ..reference.packing import packed_nbytes
from ..reference.sparse import topk_count, topk_index_dtype
from . import _errors
from . import _validate as v
from ._table import OPS, op

SeedLike = Union[int, torch.Tensor]

_dispatch_stack_len = getattr(torch._C, "_len_torch_dispatch_stack", lambda: 0)


def _run(name: str, device: torch.device, flag: Optional[torch.Tensor], primary, *args):
    """Run op `name` on `device`; on CPU, outside torch.compile, raise right away if its
    kernel flagged bad data (by either path: an nn.Parameter or a dispatch mode takes the
    dispatcher's, and its count once stayed behind to fail the next, clean call).
    primary: the call's main tensor (a subclass of it takes the op path)."""
    eager = not torch.compiler.is_compiling()
    if type(primary) is torch.Tensor and eager and _dispatch_stack_len() == 0:
        result = backends.kernel(name, device)(*args)
    else:
        result = op(name)(*args)
    if flag is not None and eager and not primary.is_cuda:
        _errors.raise_cpu(OPS[name].row, flag)
    return result


def _flag(name: str, primary: torch.Tensor, on: bool) -> Optional[torch.Tensor]:
    """The op's flag row on primary's device (None: checks off)."""
    return _errors.flag_row(OPS[name].row, primary.device, primary.is_cuda) if on else None


def _as_tensor(value, device: torch.device) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.reshape(())
    return torch.full((), value, dtype=torch.int64, device=device)


def _stream(seed, offset, n, device) -> tuple:
    """(seed, offset, stream tensor or None) for the schema's stream arguments, checked
    (seed and offset as ints, SymInts or 0-d int64 tensors; n: the elements drawn)."""
    seed, offset = v.check_stream(seed, offset, n, device)
    if isinstance(seed, torch.Tensor) or isinstance(offset, torch.Tensor):
        return 0, 0, torch.stack([_as_tensor(seed, device), _as_tensor(offset, device)])
    return seed, offset, None


def _flat(x: torch.Tensor) -> torch.Tensor:
    """Contiguous memory in row-major order (the kernels use numel(), not the shape; a
    reshape would cost ~2 us a call)."""
    return x if x.is_contiguous() else x.contiguous()


def _output(out, name, shape, dtype, device, reads=()) -> torch.Tensor:
    """out, checked, or a new tensor.  shape: an int for a 1-d output (torch.empty parses a
    tuple ~0.5 us slower, a sixth of a 1024-element op's cost; bench.py).  reads: what
    the op reads, (name, tensor, same_ok) for v.check_disjoint."""
    if out is None:
        return torch.empty(shape, dtype=dtype, device=device)
    v.check_out(name, out, (shape,) if isinstance(shape, (int, torch.SymInt)) else shape, dtype, device)
    v.check_disjoint(name, out, reads)
    return _written(out)


def _output_like(out, name, like: torch.Tensor, reads=()) -> torch.Tensor:
    """out, checked, or a new contiguous tensor shaped and typed like `like`."""
    if out is None:
        return torch.empty_like(like, memory_format=torch.contiguous_format)
    v.check_out(name, out, like.shape, like.dtype, like.device)
    v.check_disjoint(name, out, reads)
    return _written(out)


def _written(t: torch.Tensor) -> torch.Tensor:
    """A caller's tensor the kernel will write: bump its version, as torch's in-place and
    out= ops do, so that autograd refuses a backward through a saved copy of it (the
    native kernels write memory autograd does not see: a mix into the result of exp()
    gave a wrong gradient, silently).  While tracing, the declared mutation does it."""
    if not torch.compiler.is_compiling():
        torch.autograd.graph.increment_version(t)
    return t


def _host_stream(seed, offset, n: int, device) -> tuple:
    """Seed and offset as checked ints for the random-k ops, whose sizes are
    data-dependent anyway: a tensor is read on the host and its value checked as an int
    would be (the reference once took a refused offset tensor the native kernels
    refused)."""
    seed, offset = v.check_seed(seed, device), v.check_offset(offset, n, device)
    if isinstance(seed, torch.Tensor):
        seed = v.check_seed(int(seed.item()), device)
    if isinstance(offset, torch.Tensor):
        offset = v.check_offset(int(offset.item()), n, device)
    return seed, offset


# ----------------------------------------------------------------------- Moniqua helpers

def moniqua_delta(bits: int, rounding: str = "dither") -> float:
    """Worst-case quantization error as a fraction of B: 2^-b (stochastic) or 2^-(b+1)."""
    bits = v.check_bits(bits, v.MONIQUA_BITS, "moniqua_delta")
    v.check_rounding(rounding, bits)
    return 2.0 ** -bits if rounding == "stochastic" else 2.0 ** -(bits + 1)


def moniqua_modulus(theta: float, bits: int, rounding: str = "dither") -> float:
    """B = 2 theta / (1 - 2 delta): with |x - y| <= theta, |decode - x| <= delta * B."""
    theta = float(theta)
    if not math.isfinite(theta) or theta <= 0:
        raise ValueError(f"theta must be finite and > 0 (a bound on |x - y|), got {theta!r}")
    return 2.0 * theta / (1.0 - 2.0 * moniqua_delta(bits, rounding))


# ----------------------------------------------------------------------------- the ops

def philox_uniform(n: int, seed: SeedLike, offset: SeedLike = 0, device=None, *,
                   out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """float32 uniforms in [0, 1) of stream (seed, offset): u_p = (word >> 8) * 2^-24."""
    n = v.check_int("n", n, low=0)
    device = out.device if isinstance(out, torch.Tensor) and device is None \
        else v.device_of(device)
    if isinstance(offset, torch.Tensor) and not offset.is_cuda and \
            not torch.compiler.is_compiling() and offset.dtype == torch.int64 and \
            offset.numel() == 1:
        # this op has no flag row for the kernel to count a refused offset in: on CPU
        # check the value here (it returned its output unwritten); on CUDA that would be
        # a synchronisation, so there a refused offset tensor leaves out unwritten
        v.check_offset(int(offset), n, device)
    seed, offset, stream = _stream(seed, offset, n, device)
    out = _output(out, "out", n, torch.float32, device)
    _run("philox_uniform", device, None, out, seed, offset, stream, out)
    return out


def pack_bits(codes: torch.Tensor, bits: int, *, out: Optional[torch.Tensor] = None
              ) -> torch.Tensor:
    """Pack codes (uint8, int8, int16, int32 or int64, values in [0, 2^bits)) into the
    wire layout.

    Byte j holds codes j*(8/b) .. j*(8/b) + 8/b - 1, least significant first:
    >>> pack_bits(torch.tensor([1, 2, 3, 0, 3], dtype=torch.uint8), 2).tolist()
    [57, 3]

    The range of the codes is checked with one read of their minimum and maximum (a
    synchronisation on CUDA; skipped while tracing or capturing).
    """
    bits = v.check_bits(bits, v.MONIQUA_BITS, "pack_bits")
    if not isinstance(codes, torch.Tensor):
        raise TypeError(f"codes must be a torch.Tensor, got {type(codes).__name__}")
    if codes.is_floating_point() or codes.is_complex() or codes.dtype == torch.bool:
        raise TypeError(f"codes must have an integer dtype, got {codes.dtype}")
    if codes.dtype in (torch.uint16, torch.uint32, torch.uint64):  # torch has no min/max
        raise TypeError(f"codes must be uint8, int8, int16, int32 or int64, got "
                        f"{codes.dtype}: convert them (.to(torch.int32))")
    capturing = codes.is_cuda and torch.cuda.is_current_stream_capturing()
    if codes.numel() and not torch.compiler.is_compiling() and not capturing:
        lo, hi = torch.aminmax(codes.reshape(-1))
        lo, hi = int(lo), int(hi)
        if lo < 0 or hi >= 1 << bits:
            raise ValueError(f"codes must lie in [0, {1 << bits}) for bits={bits}, "
                             f"got values in [{lo}, {hi}]")
    out = _output(out, "out", packed_nbytes(codes.numel(), bits), torch.uint8, codes.device,
                  (("codes", codes, False),))
    _run("pack_bits", codes.device, None, codes, _flat(codes).to(torch.uint8), bits, out)
    return out


def unpack_bits(payload: torch.Tensor, bits: int, n: int, *,
                out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The n uint8 codes of a packed payload (inverse of pack_bits)."""
    bits = v.check_bits(bits, v.MONIQUA_BITS, "unpack_bits")
    n = v.check_int("n", n, low=0)
    if not isinstance(payload, torch.Tensor):
        raise TypeError(f"payload must be a torch.Tensor, got {type(payload).__name__}")
    device = payload.device
    v.check_payload("payload", payload, n, bits, device)
    out = _output(out, "out", n, torch.uint8, device, (("payload", payload, False),))
    flag = _flag("unpack_bits", payload, True)
    _run("unpack_bits", device, flag, payload, _flat(payload), bits, out, flag)
    return out


def moniqua_encode(x: torch.Tensor, modulus: float, bits: int = 1, rounding: str = "dither",
                   seed: SeedLike = 0, offset: SeedLike = 0, *,
                   out: Optional[torch.Tensor] = None, check_finite: bool = True
                   ) -> torch.Tensor:
    """Moniqua codes of x modulo B, packed to bits per element (uint8, ceil(n*b/8) bytes).

    x: float32/float16/bfloat16, any shape and strides, read in row-major order.
    Stream (seed, offset) drives stochastic and dither rounding; element i uses
    position offset + i.  seed and offset may be 0-d int64 tensors on x's device (read
    by the kernel: a captured CUDA graph then draws the stream they hold at replay).
    check_finite: the kernel counts elements whose x / B is not finite (see
    moniqua_kernels.check_errors for when that surfaces); False skips the count.
    """
    v.check_float_tensor("x", x)
    bits, modulus = v.check_moniqua(bits, rounding, modulus, "moniqua_encode")
    device = x.device
    seed, offset, stream = _stream(seed, offset, x.numel(), device)
    out = _output(out, "out", packed_nbytes(x.numel(), bits), torch.uint8, device,
                  (("x", x, False),))
    flag = _flag("moniqua_encode", x, check_finite)
    _run("moniqua_encode", device, flag, x, _flat(x), modulus, bits, rounding, seed, offset,
         stream, out, flag)
    return out


def moniqua_decode(payload: torch.Tensor, reference: torch.Tensor, modulus: float,
                   bits: int = 1, rounding: str = "dither", seed: SeedLike = 0,
                   offset: SeedLike = 0, *, out: Optional[torch.Tensor] = None,
                   check_finite: bool = True) -> torch.Tensor:
    """Recover the sender's tensor from its codes and the receiver's own reference y.

    Returns a tensor shaped and typed like reference: y + centred_mod(zh * B - y).
    For dither rounding (seed, offset) must be the sender's stream.  check_finite: the
    kernel counts non-finite results (a non-finite y, or a modulus too small for y).
    """
    v.check_float_tensor("reference", reference)
    bits, modulus = v.check_moniqua(bits, rounding, modulus, "moniqua_decode")
    device = reference.device
    n = reference.numel()
    seed, offset, stream = _stream(seed, offset, n, device)
    v.check_payload("payload", payload, n, bits, device)
    out = _output_like(out, "out", reference, (("payload", payload, False),
                                               ("reference", reference, True)))
    flag = _flag("moniqua_decode", reference, check_finite)
    _run("moniqua_decode", device, flag, reference, _flat(payload), _flat(reference), modulus, bits,
         rounding, seed, offset, stream, out, flag)
    return out


def _stream_list(name: str, values, count: int, device) -> Union[list, torch.Tensor]:
    """The mix's seeds or offsets as a list of count values (checked by the caller) or
    an int64 tensor of count values."""
    if isinstance(values, torch.Tensor):
        if values.dtype != torch.int64 or values.numel() != count:
            raise ValueError(f"{name} as a tensor must hold {count} int64 values "
                             "(one per neighbour payload, then the own payload's)")
        v.check_same_device(name, values, device)
        return values.reshape(count)
    values = [0] * count if values is None else list(values)
    if len(values) != count:
        raise ValueError(
            f"{name} has {len(values)} entries; give len(payloads) + 1 = {count} "
            "(one per neighbour payload, then the own payload's)")
    return values


def moniqua_mix_(x: torch.Tensor, payloads: Sequence[torch.Tensor], weights: Sequence[float],
                 own_payload: torch.Tensor, modulus: float, bits: int = 1,
                 rounding: str = "dither", gamma: float = 1.0,
                 seeds: Optional[Union[Sequence[int], torch.Tensor]] = None,
                 offsets: Optional[Union[Sequence[int], torch.Tensor]] = None,
                 *, check_finite: bool = True) -> torch.Tensor:
    """Fused gossip step, in place: x += gamma * sum_j w_j (dec(q_j; x) - dec(q_self; x)).

    payloads[j] is neighbour j's codes with weight weights[j]; own_payload is this
    worker's codes of x.  seeds/offsets hold one stream per neighbour payload followed
    by the own payload's (len(payloads) + 1 entries, ints or an int64 tensor on x's
    device; default all 0).  check_finite: an element whose result would not be finite
    (NaN/inf in x, or a modulus too small for x) is left as it was and counted.
    Returns x.
    """
    v.check_float_tensor("x", x)
    v.check_in_place("x", x)
    bits, modulus = v.check_moniqua(bits, rounding, modulus, "moniqua_mix_")
    payloads = list(payloads)
    weights, gamma = v.check_weights(weights, gamma)
    if len(weights) != len(payloads):
        raise ValueError(f"got {len(payloads)} payloads but {len(weights)} weights; "
                         "give one weight per neighbour payload")
    device, n = x.device, x.numel()
    count = len(payloads) + 1
    seeds = _stream_list("seeds", seeds, count, device)
    offsets = _stream_list("offsets", offsets, count, device)
    if isinstance(seeds, list) and isinstance(offsets, list):
        checked = [v.check_stream(s, o, n, device) for s, o in zip(seeds, offsets)]
        seeds, offsets = [s for s, _ in checked], [o for _, o in checked]
    elif isinstance(seeds, list):
        seeds = [v.check_seed(s, device) for s in seeds]
    elif isinstance(offsets, list):
        offsets = [v.check_offset(o, n, device) for o in offsets]
    for j, p in enumerate(payloads):
        v.check_payload(f"payloads[{j}]", p, n, bits, device)
    v.check_payload("own_payload", own_payload, n, bits, device)
    streams = None
    if isinstance(seeds, torch.Tensor) or isinstance(offsets, torch.Tensor) or any(
            isinstance(s, torch.Tensor) for s in list(seeds) + list(offsets)):
        streams = torch.stack([torch.stack([_as_tensor(s, device) for s in seeds]),
                               torch.stack([_as_tensor(o, device) for o in offsets])], dim=1)
        seeds, offsets = [0] * count, [0] * count
    flag = _flag("moniqua_mix_", x, check_finite)
    work = _written(x) if x.is_contiguous() else x.contiguous()  # (else copy_ bumps it)
    _run("moniqua_mix_", device, flag, x, work, [_flat(p) for p in payloads], weights,
         _flat(own_payload), modulus, bits, rounding, gamma, seeds, offsets, streams,
         flag)
    if work is not x:  # the kernels update contiguous memory: write the result back once
        x.copy_(work)
    return x


def qsgd_encode(x: torch.Tensor, bits: int = 4, bucket_size: int = 512, norm: str = "max",
                seed: SeedLike = 0, offset: SeedLike = 0, *,
                out: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
                check_finite: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Bucketed QSGD: (float32 scales, one per bucket; packed sign+level codes)."""
    v.check_float_tensor("x", x)
    bits = v.check_qsgd(bits, bucket_size, norm)
    device, n = x.device, x.numel()
    bucket_size = v.qsgd_bucket(bucket_size, n)
    seed, offset, stream = _stream(seed, offset, n, device)
    scales_out, payload_out = out if out is not None else (None, None)
    scales = _output(scales_out, "out[0] (scales)", (n + bucket_size - 1) // bucket_size,
                     torch.float32, device, (("x", x, False),))
    payload = _output(payload_out, "out[1] (payload)", packed_nbytes(n, bits), torch.uint8,
                      device, (("x", x, False), ("out[0] (scales)", scales, False)))
    flag = _flag("qsgd_encode", x, check_finite)
    _run("qsgd_encode", device, flag, x, _flat(x), bits, bucket_size, norm, seed, offset, stream,
         scales, payload, flag)
    return scales, payload


def _check_qsgd_decode(scales, n, bits, bucket_size) -> tuple[int, int, int]:
    """bits, n and the kernels' bucket size of a QSGD decode, checked with its scales
    (one float32 per bucket)."""
    bits = v.check_qsgd(bits, bucket_size)
    n = v.check_int("n", n, low=0)
    if not isinstance(scales, torch.Tensor) or scales.dtype != torch.float32:
        raise TypeError("scales must be a float32 tensor (one scale per bucket)")
    nb = (n + bucket_size - 1) // bucket_size
    if scales.numel() != nb:
        raise ValueError(f"scales has {scales.numel()} entries but n={n} in buckets of "
                         f"{bucket_size} needs {nb}")
    return bits, n, v.qsgd_bucket(bucket_size, n)


def qsgd_decode(scales: torch.Tensor, payload: torch.Tensor, n: int, bits: int = 4,
                bucket_size: int = 512, *, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """float32 values N * (-1)^sign * l / s, flat, n elements."""
    bits, n, bucket_size = _check_qsgd_decode(scales, n, bits, bucket_size)
    device = scales.device
    v.check_payload("payload", payload, n, bits, device)
    out = _output(out, "out", n, torch.float32, device,
                  (("scales", scales, False), ("payload", payload, False)))
    flag = _flag("qsgd_decode", payload, True)
    _run("qsgd_decode", device, flag, payload, _flat(scales), _flat(payload), bits, bucket_size, out,
         flag)
    return out


def qsgd_elias_encode(x: torch.Tensor, bits: int = 4, bucket_size: int = 512,
                      norm: str = "max", seed: SeedLike = 0, offset: SeedLike = 0, *,
                      out_scales: Optional[torch.Tensor] = None,
                      check_finite: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """QSGD with Elias-coded positions and levels: (float32 scales, one per bucket; the
    uint8 bit stream, whose length depends on the data).  The levels are exactly
    qsgd_encode's for the same arguments (reference/qsgd_elias.py has the format)."""
    v.check_float_tensor("x", x)
    bits = v.check_qsgd(bits, bucket_size, norm)
    device, n = x.device, x.numel()
    bucket_size = v.qsgd_bucket(bucket_size, n)
    seed, offset, stream = _stream(seed, offset, n, device)
    scales = _output(out_scales, "out_scales", (n + bucket_size - 1) // bucket_size,
                     torch.float32, device, (("x", x, False),))
    flag = _flag("qsgd_elias_encode", x, check_finite)
    codes = _run("qsgd_elias_encode", device, flag, x, _flat(x), bits, bucket_size, norm, seed,
                 offset, stream, scales, flag)
    return scales, codes


def qsgd_elias_decode(scales: torch.Tensor, payload: torch.Tensor, n: int, bits: int = 4,
                      bucket_size: int = 512, *, out: Optional[torch.Tensor] = None
                      ) -> torch.Tensor:
    """float32 values N * (-1)^sign * l / s of an Elias-coded stream, flat, n elements
    (+0 where no code); a stream that does not parse raises."""
    bits, n, bucket_size = _check_qsgd_decode(scales, n, bits, bucket_size)
    if not isinstance(payload, torch.Tensor) or payload.dtype != torch.uint8:
        raise TypeError("payload must be a uint8 tensor (the Elias bit stream)")
    device = scales.device
    if payload.device != device:
        raise ValueError(f"payload is on {payload.device}, scales on {device}")
    out = _output(out, "out", n, torch.float32, device,
                  (("scales", scales, False), ("payload", payload, False)))
    flag = _flag("qsgd_elias_decode", payload, True)
    _run("qsgd_elias_decode", device, flag, payload, _flat(scales), _flat(payload), bits,
         bucket_size, out, flag)
    return out


def sign_encode(x: torch.Tensor, *, out: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
                check_finite: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Scaled sign: (float32 scale = mean |x|, 1 bit per element, 1 = negative)."""
    v.check_float_tensor("x", x)
    device = x.device
    scale_out, payload_out = out if out is not None else (None, None)
    scale = _output(scale_out, "out[0] (scale)", (), torch.float32, device, (("x", x, False),))
    payload = _output(payload_out, "out[1] (payload)", packed_nbytes(x.numel(), 1),
                      torch.uint8, device, (("x", x, False), ("out[0] (scale)", scale, False)))
    flag = _flag("sign_encode", x, check_finite)
    _run("sign_encode", device, flag, x, _flat(x), scale, payload, flag)
    return scale, payload


def sign_decode(scale: torch.Tensor, payload: torch.Tensor, n: int, *,
                out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """float32 values scale * (1 - 2 * bit), flat, n elements."""
    n = v.check_int("n", n, low=0)
    if not isinstance(scale, torch.Tensor) or scale.dtype != torch.float32 or scale.numel() != 1:
        raise TypeError("scale must be a float32 tensor with one element")
    device = scale.device
    v.check_payload("payload", payload, n, 1, device)
    out = _output(out, "out", n, torch.float32, device,
                  (("scale", scale, False), ("payload", payload, False)))
    flag = _flag("sign_decode", payload, True)
    _run("sign_decode", device, flag, payload, scale.reshape(()), _flat(payload), out, flag)
    return out


def randomk_count(n: int, ratio: float, seed: SeedLike = 0, offset: SeedLike = 0,
                  device=None) -> int:
    """How many of n elements random-k keeps for this stream (exact, regenerated)."""
    n = v.check_int("n", n, low=0)
    ratio = v.check_ratio(ratio)
    device = v.device_of(device)
    seed, offset = _host_stream(seed, offset, n, device)
    out = torch.empty((), dtype=torch.int64, device=device)
    _run("randomk_count", device, None, out, n, ratio, seed, offset, out)
    return int(out)


def randomk_encode(x: torch.Tensor, ratio: float, seed: SeedLike = 0, offset: SeedLike = 0,
                   *, out: Optional[torch.Tensor] = None, check_finite: bool = True
                   ) -> torch.Tensor:
    """The values of x where u_p < ratio, in index order, in x's dtype.

    Their number depends on the stream (randomk_count gives it): with out=, out must
    hold exactly that many elements, and the values are copied into it.
    """
    v.check_float_tensor("x", x)
    ratio = v.check_ratio(ratio)
    device = x.device
    seed, offset = _host_stream(seed, offset, x.numel(), device)
    flag = _flag("randomk_encode", x, check_finite)
    values = _run("randomk_encode", device, flag, x, _flat(x), ratio, seed, offset, flag)
    if out is None:
        return values
    v.check_out("out", out, values.shape, values.dtype, device)
    return out.copy_(values)


def randomk_decode(values: torch.Tensor, n: int, ratio: float, seed: SeedLike = 0,
                   offset: SeedLike = 0, rescale: bool = False, *,
                   out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Scatter the kept values back to n elements (times float32(1/ratio) if rescale)."""
    v.check_float_tensor("values", values)
    n = v.check_int("n", n, low=0)
    ratio = v.check_ratio(ratio)
    device = values.device
    seed, offset = _host_stream(seed, offset, n, device)
    if not torch.compiler.is_compiling():
        kept = randomk_count(n, ratio, seed, offset, device)
        if values.numel() != kept:
            raise ValueError(f"values has {values.numel()} elements but stream (seed={seed}, "
                             f"offset={offset}) keeps {kept} of n={n} at ratio={ratio}; "
                             "use the sender's seed, offset and ratio")
    out = _output(out, "out", n, values.dtype, device, (("values", values, False),))
    _run("randomk_decode", device, None, values, _flat(values), ratio, seed, offset, bool(rescale), out)
    return out


def topk_encode(x: torch.Tensor, ratio: float, *,
                out: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
                check_finite: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(ascending indices, values) of the ceil(ratio * n) entries of largest |x|."""
    v.check_float_tensor("x", x)
    ratio = v.check_ratio(ratio)
    device, n = x.device, x.numel()
    k = topk_count(n, ratio)
    idx_out, val_out = out if out is not None else (None, None)
    indices = _output(idx_out, "out[0] (indices)", k, topk_index_dtype(n), device,
                      (("x", x, False),))
    values = _output(val_out, "out[1] (values)", k, x.dtype, device,
                     (("x", x, False), ("out[0] (indices)", indices, False)))
    flag = _flag("topk_encode", x, check_finite)
    _run("topk_encode", device, flag, x, _flat(x), ratio, indices, values, flag)
    return indices, values


def topk_decode(indices: torch.Tensor, values: torch.Tensor, n: int, *,
                out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Dense tensor of n elements with values at indices, zeros elsewhere."""
    v.check_float_tensor("values", values)
    n = v.check_int("n", n, low=0)
    if not isinstance(indices, torch.Tensor) or indices.dtype not in (torch.int32, torch.int64):
        raise TypeError("indices must be an int32 or int64 tensor")
    if indices.numel() != values.numel():
        raise ValueError(f"indices has {indices.numel()} entries but values has "
                         f"{values.numel()}; they must pair up")
    device = values.device
    v.check_same_device("indices", indices, device)
    if indices.numel() and not torch.compiler.is_compiling():
        lo, hi = int(indices.min()), int(indices.max())
        if lo < 0 or hi >= n:
            raise ValueError(f"indices must lie in [0, {n}), got values in [{lo}, {hi}]")
    out = _output(out, "out", n, values.dtype, device,
                  (("indices", indices, False), ("values", values, False)))
    _run("topk_decode", device, None, values, _flat(indices), _flat(values), out)
    return out
