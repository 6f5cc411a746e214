"""The reference backend: every op of the op table (ops/_table.py) with its schema's
arguments, written with the spec functions of this package.  Outputs are written into
the tensors passed in; flags (ops/_errors.py) count bad data the way the native and
Triton kernels do: non-finite inputs or results, a bad stream offset, padding bits.
"""
from __future__ import annotations

from typing import Optional

import torch

from . import moniqua, packing, philox, qsgd, qsgd_elias, sign, sparse


def _stream(seed, offset, stream: Optional[torch.Tensor], flag) -> Optional[tuple[int, int]]:
    """(seed, offset) from the ints or the stream tensor; None (flagged) when a stream
    tensor holds an offset the spec refuses."""
    if stream is None:
        return int(seed), int(offset)
    s, o = (int(v) for v in stream.reshape(-1).tolist())
    if o < 0 or o % 4:
        if flag is not None:
            flag[1] += 1
        return None
    return s, o


def _count(flag, bad: torch.Tensor) -> None:
    if flag is not None:
        flag[0] += bad.sum()


def _bad_padding(flag, payload: torch.Tensor, n: int, bits: int) -> bool:
    """Flag a payload whose last byte has non-zero bits above its n*bits % 8 used ones.
    True, on CPU, when it was flagged: the op then writes nothing (as the native CPU
    kernels; on CUDA the count stays on the device and the op runs, no sync)."""
    used = (n * bits) % 8
    if flag is None or not used or not payload.numel():
        return False
    bad = (payload[-1].to(torch.int32) >> used) != 0
    flag[2] += bad
    return payload.device.type == "cpu" and bool(bad)


def philox_uniform(seed, offset, stream, out):
    st = _stream(seed, offset, stream, None)
    if st is not None:
        out.copy_(philox.philox_uniform(out.numel(), st[0], st[1], out.device))


def pack_bits(codes, bits, out):
    out.copy_(packing.pack_bits(codes.reshape(-1), bits))


def unpack_bits(payload, bits, out, flag):
    if _bad_padding(flag, payload, out.numel(), bits):
        return
    out.copy_(packing.unpack_bits(payload, bits, out.numel()))


def moniqua_encode(x, modulus, bits, rounding, seed, offset, stream, out, flag):
    st = _stream(seed, offset, stream, flag)
    if st is None:
        return
    if flag is not None:  # t = x * invB must be finite: NaN/inf x, or B too small for x
        _, inv_b = moniqua.modulus_constants(modulus, x.device)
        t = x.reshape(-1).to(torch.float32) * inv_b
        _count(flag, ~(t.abs() < float("inf")))
    out.copy_(moniqua.moniqua_encode(x, modulus, bits, rounding, *st))


def moniqua_decode(payload, reference, modulus, bits, rounding, seed, offset, stream, out,
                   flag):
    st = _stream(seed, offset, stream, flag)
    if st is None:
        return
    if _bad_padding(flag, payload, reference.numel(), bits):
        return
    xh = moniqua.moniqua_decode(payload, reference, modulus, bits, rounding, *st)
    _count(flag, ~torch.isfinite(xh))
    out.copy_(xh)


def moniqua_mix_(x, payloads, weights, own_payload, modulus, bits, rounding, gamma, seeds,
                 offsets, streams, flag):
    if streams is not None:
        rows = [_stream(0, 0, streams[j], flag) for j in range(streams.shape[0])]
        if any(r is None for r in rows):
            return
        seeds, offsets = [r[0] for r in rows], [r[1] for r in rows]
    if any([_bad_padding(flag, p, x.numel(), bits) for p in list(payloads) + [own_payload]]):
        return
    new = x.clone()
    moniqua.moniqua_mix_(new, list(payloads), list(weights), own_payload, modulus, bits,
                         rounding, gamma, [int(s) for s in seeds], [int(o) for o in offsets])
    if flag is None:
        x.copy_(new)
        return
    # Write only where the result is finite: a NaN/inf x, or an overflow from a modulus
    # too small for x, leaves that element as it was and is counted.
    bad = ~torch.isfinite(new)
    _count(flag, bad)
    x.copy_(torch.where(bad, x, new))


def qsgd_encode(x, bits, bucket_size, norm, seed, offset, stream, scales, payload, flag):
    st = _stream(seed, offset, stream, flag)
    if st is None:
        return
    _count(flag, ~torch.isfinite(x.reshape(-1)))
    s, p = qsgd.qsgd_encode(x, bits, bucket_size, norm, *st)
    scales.copy_(s)
    payload.copy_(p)


def qsgd_decode(scales, payload, bits, bucket_size, out, flag):
    if _bad_padding(flag, payload, out.numel(), bits):
        return
    out.copy_(qsgd.qsgd_decode(scales, payload, out.numel(), bits, bucket_size))


def qsgd_elias_encode(x, bits, bucket_size, norm, seed, offset, stream, scales, flag):
    st = _stream(seed, offset, stream, flag)
    if st is None:
        return torch.empty(0, dtype=torch.uint8, device=x.device)
    _count(flag, ~torch.isfinite(x.reshape(-1)))
    s, codes = qsgd_elias.elias_encode(x, bits, bucket_size, norm, *st)
    scales.copy_(s)
    return codes


def qsgd_elias_decode(scales, payload, bits, bucket_size, out, flag):
    try:
        out.copy_(qsgd_elias.elias_decode(scales, payload, out.numel(), bits, bucket_size))
    except qsgd_elias.EliasStreamError:
        if flag is None:
            raise
        flag[2] += 1  # a malformed stream: counted with bad padding (a corrupt payload)


def sign_encode(x, scale, payload, flag):
    _count(flag, ~torch.isfinite(x.reshape(-1)))
    s, p = sign.sign_encode(x)
    scale.copy_(s)
    payload.copy_(p)


def sign_decode(scale, payload, out, flag):
    if _bad_padding(flag, payload, out.numel(), 1):
        return
    out.copy_(sign.sign_decode(scale.reshape(()), payload, out.numel()))


def randomk_count(n, ratio, seed, offset, out):
    out.fill_(sparse.randomk_mask(int(n), ratio, int(seed), int(offset), out.device).sum())


def randomk_encode(x, ratio, seed, offset, flag):
    values = sparse.randomk_encode(x, ratio, int(seed), int(offset))
    _count(flag, ~torch.isfinite(values))  # only the kept values travel
    return values


def randomk_decode(values, ratio, seed, offset, rescale, out):
    out.copy_(sparse.randomk_decode(values, out.numel(), ratio, int(seed), int(offset),
                                    rescale))


def topk_encode(x, ratio, indices, values, flag):
    i, v = sparse.topk_encode(x, ratio)
    _count(flag, ~torch.isfinite(v))  # NaN/inf sort as the largest: they are selected
    indices.copy_(i)
    values.copy_(v)


def topk_decode(indices, values, out):
    out.copy_(sparse.topk_decode(indices, values, out.numel()))
