"""Elias-coded QSGD (Alistarh et al. 2017, section 3.1 "Efficient coding"), the spec.

Quantization is bucketed QSGD exactly (qsgd.qsgd_quantize: the same scales, signs and
levels from the same stream as the fixed-width coding); only the wire coding differs.

Payload: float32 scales, one per bucket (the paper's 32-bit norm), then a bit stream.
Bits b_0, b_1, ... are stored most significant first: b_j is bit 7 - j % 8 of byte
j // 8 (numpy.packbits' default order; a prefix code reads naturally that way, unlike
the fixed-width codes' least-significant-first packing); ceil(T / 8) bytes for T bits;
the unused low bits of the last byte are 0.

Buckets in order.  A bucket whose scale is 0 (all its levels are 0) adds no bits.
Otherwise, with 1-based positions p = 1 .. d within the bucket (d its length) and
prev = 0: for each element with level l > 0, in index order,
    omega(p - prev), the sign bit (1 = negative), omega(l);   prev = p
then the end of the bucket: omega(d + 1 - prev).

omega(k) for k >= 1 is Elias' recursive (omega) code: c = "0"; while k > 1:
c = binary(k) + c, k = len(binary(k)) - 1.  Its bits go on the wire first to last:
omega(1) = 0, omega(2) = 100, omega(3) = 110, omega(4) = 101000, omega(8) = 1110000.
|omega(k)| = 1 + log k + log log k + ... (the paper's bound (1 + o(1)) log k + 1).

Decoding reads a bucket's codes until a position reaches d + 1; a position beyond it,
a level of 0 or above s, a stream that ends early, or bits left over are malformed.
Elements without a code decode to +0 (the fixed-width coding keeps the sign of a zero
level; the values are equal).  docs/wire-format.md has a worked example.
"""
from __future__ import annotations

import torch

from .packing import pack_bits, unpack_bits
from .qsgd import qsgd_levels, qsgd_quantize


class EliasStreamError(ValueError):
    """An Elias-coded QSGD stream that does not parse."""


def _bit_length(k: torch.Tensor) -> torch.Tensor:
    """Bits of each positive int64 k (exact below 2^53: frexp of a float64)."""
    return torch.frexp(k.to(torch.float64))[1].to(torch.int64)


def omega(k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(code, length) of omega(k) for an int64 tensor k >= 1: the code's bits are the
    low `length` bits of code, first bit most significant."""
    k = k.to(torch.int64)
    code = torch.zeros_like(k)
    length = torch.ones_like(k)  # the final "0"
    while bool((k > 1).any()):
        more = k > 1
        b = _bit_length(k)
        code = torch.where(more, (k << length) | code, code)
        length = torch.where(more, length + b, length)
        k = torch.where(more, b - 1, k)
    return code, length


def _symbols(scales, sign, level, n: int, bucket_size: int):
    """The stream's symbols in order, as (code, length) int64 tensors: one per nonzero
    level (gap, sign, level together: at most 57 bits) and one end per coded bucket."""
    dev = level.device
    idx = torch.nonzero(level > 0).reshape(-1)
    bucket = idx // bucket_size
    pos = idx - bucket * bucket_size + 1
    # prev: the previous nonzero's position in the same bucket, else 0
    prev = torch.zeros_like(pos)
    if idx.numel() > 1:
        same = bucket[1:] == bucket[:-1]
        prev[1:] = torch.where(same, pos[:-1], torch.zeros_like(pos[:-1]))
    g_code, g_len = omega(pos - prev)
    l_code, l_len = omega(level[idx].to(torch.int64))
    s_bit = sign[idx].to(torch.int64)
    nz_code = (((g_code << 1) | s_bit) << l_len) | l_code
    nz_len = g_len + 1 + l_len
    # one end symbol per bucket with a non-zero scale
    nb = scales.numel()
    coded = torch.nonzero(scales != 0).reshape(-1)
    d = torch.clamp(n - coded * bucket_size, max=bucket_size)
    last = torch.zeros(nb, dtype=torch.int64, device=dev)
    if idx.numel():
        last.scatter_reduce_(0, bucket, pos, reduce="amax")
    e_code, e_len = omega(d + 1 - last[coded])
    # order: elements by index, each bucket's end after its last element
    keys = torch.cat([2 * idx, 2 * (coded * bucket_size + d) - 1])
    order = torch.argsort(keys)
    return torch.cat([nz_code, e_code])[order], torch.cat([nz_len, e_len])[order]


def elias_bits(scales, sign, level, n: int, bucket_size: int) -> int:
    """T, the exact number of bits of the stream (before padding to whole bytes)."""
    return int(_symbols(scales, sign, level, n, bucket_size)[1].sum())


def elias_encode(x: torch.Tensor, bits: int, bucket_size: int, norm: str, seed: int,
                 offset: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(float32 scales, uint8 bit stream)."""
    n = x.numel()
    scales, sign, level = qsgd_quantize(x, bits, bucket_size, norm, seed, offset)
    code, length = _symbols(scales, sign, level, n, bucket_size)
    total = int(length.sum())
    start = torch.cumsum(length, 0) - length
    sym = torch.repeat_interleave(torch.arange(code.numel(), device=code.device), length)
    within = torch.arange(total, device=code.device) - start[sym]
    stream = (code[sym] >> (length[sym] - 1 - within)) & 1
    return scales, _pack_msb_first(stream)


def _pack_msb_first(bits: torch.Tensor) -> torch.Tensor:
    padded = torch.zeros((bits.numel() + 7) // 8 * 8, dtype=torch.int32, device=bits.device)
    padded[:bits.numel()] = bits
    return pack_bits(padded.view(-1, 8).flip(1).reshape(-1), 1)


class _Reader:
    def __init__(self, stream: torch.Tensor):
        lsb_first = unpack_bits(stream.reshape(-1).cpu(), 1, 8 * stream.numel())
        self.bits = lsb_first.view(-1, 8).flip(1).reshape(-1).tolist()
        self.at = 0

    def bit(self) -> int:
        if self.at >= len(self.bits):
            raise EliasStreamError(f"the stream ends inside a code (bit {self.at})")
        self.at += 1
        return self.bits[self.at - 1]

    def omega(self) -> int:
        k = 1
        while self.bit():
            if k > 61:  # the next group would have more than 62 bits
                raise EliasStreamError(f"a code group longer than 62 bits at bit {self.at}")
            value = 1
            for _ in range(k):
                value = (value << 1) | self.bit()
            k = value
        return k


def elias_decode(scales: torch.Tensor, stream: torch.Tensor, n: int, bits: int,
                 bucket_size: int) -> torch.Tensor:
    """float32 values N * (-1)^sign * l / s, +0 where no code; raises EliasStreamError
    for a malformed stream."""
    s = qsgd_levels(bits)
    reader = _Reader(stream)
    idx, sign, level = [], [], []
    for q, scale in enumerate(scales.tolist()):
        if scale == 0:
            continue
        d = min(bucket_size, n - q * bucket_size)
        pos = 0
        while True:
            pos += reader.omega()
            if pos == d + 1:
                break
            if pos > d + 1:
                raise EliasStreamError(f"bucket {q}: a position past its {d} elements "
                                       f"(bit {reader.at})")
            negative = reader.bit()
            lv = reader.omega()
            if lv > s:
                raise EliasStreamError(f"bucket {q}: level {lv} above s = {s} (bit "
                                       f"{reader.at})")
            idx.append(q * bucket_size + pos - 1)
            sign.append(negative)
            level.append(lv)
    if (reader.at + 7) // 8 != stream.numel() or any(reader.bits[reader.at:]):
        raise EliasStreamError(f"{stream.numel()} bytes, but the codes end at bit "
                               f"{reader.at}: bytes or bits left over")
    dev = scales.device
    out = torch.zeros(n, dtype=torch.float32, device=dev)
    if idx:
        i = torch.tensor(idx, dtype=torch.int64, device=dev)
        lv = torch.tensor(level, dtype=torch.float32, device=dev)
        s32 = torch.tensor(float(s), dtype=torch.float32, device=dev)
        magnitude = (scales[i // bucket_size] * lv) / s32
        out[i] = torch.where(torch.tensor(sign, device=dev) == 1, -magnitude, magnitude)
    return out


def elias_max_nbytes(n: int, bits: int, bucket_size: int) -> int:
    """An upper bound on the stream's bytes for n elements (every level nonzero and s,
    every gap 1, and each bucket's end code)."""
    nb = (n + bucket_size - 1) // bucket_size
    per_element = 1 + 1 + int(omega(torch.tensor([qsgd_levels(bits)]))[1])
    end = int(omega(torch.tensor([bucket_size + 1]))[1])
    return (n * per_element + nb * end + 7) // 8
