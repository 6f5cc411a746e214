"""Bucketed QSGD (DESIGN.md section 6), the executable spec.

Code of b bits: the top bit is the sign (1 = negative), the low b-1 bits the level
l in [0, s], s = 2^(b-1) - 1.  Per bucket of d elements the scale N is max|v|
("max") or ||v||_2 ("l2"); r = float32(s) / N; l = min(floor(|v| * r + u), s).
"""
from __future__ import annotations

import torch

from .packing import pack_bits, unpack_bits
from .philox import philox_uniform

NORMS = ("max", "l2")


def qsgd_levels(bits: int) -> int:
    return (1 << (bits - 1)) - 1


def _buckets(v: torch.Tensor, bucket_size: int) -> torch.Tensor:
    n = v.numel()
    nb = (n + bucket_size - 1) // bucket_size
    padded = torch.zeros(nb * bucket_size, dtype=v.dtype, device=v.device)
    padded[:n] = v
    return padded.view(nb, bucket_size)


def qsgd_quantize(x: torch.Tensor, bits: int, bucket_size: int, norm: str, seed: int,
                  offset: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(float32 scales per bucket, int32 sign per element (1 = negative), int32 level
    per element): what every QSGD wire coding transmits."""
    v = x.reshape(-1).to(torch.float32)
    n = v.numel()
    s = qsgd_levels(bits)
    vb = _buckets(v, bucket_size)
    a = vb.abs()
    if norm == "max":
        scales = a.amax(dim=1) if n else torch.zeros(0, device=v.device)
    else:
        scales = torch.sqrt((vb * vb).sum(dim=1))
    s32 = torch.tensor(float(s), dtype=torch.float32, device=v.device)
    r = torch.where(scales > 0, s32 / scales, torch.zeros_like(scales))
    u = _buckets(philox_uniform(n, seed, offset, v.device), bucket_size)
    level = torch.floor(a * r[:, None] + u).clamp(max=s).to(torch.int32)
    sign = (vb < 0).to(torch.int32)
    return scales.contiguous(), sign.reshape(-1)[:n], level.reshape(-1)[:n]


def qsgd_encode(x: torch.Tensor, bits: int, bucket_size: int, norm: str, seed: int,
                offset: int) -> tuple[torch.Tensor, torch.Tensor]:
    scales, sign, level = qsgd_quantize(x, bits, bucket_size, norm, seed, offset)
    return scales, pack_bits((sign << (bits - 1)) | level, bits)


def qsgd_decode(scales: torch.Tensor, payload: torch.Tensor, n: int, bits: int,
                bucket_size: int) -> torch.Tensor:
    """float32 values: N * (-1)^sign * l / s, evaluated as +-((N * l) / s)."""
    s = qsgd_levels(bits)
    codes = unpack_bits(payload, bits, n).to(torch.int32)
    level = (codes & s).to(torch.float32)
    negative = (codes >> (bits - 1)) == 1
    bucket = torch.arange(n, device=payload.device) // bucket_size
    s32 = torch.tensor(float(s), dtype=torch.float32, device=payload.device)
    magnitude = (scales[bucket] * level) / s32
    return torch.where(negative, -magnitude, magnitude)
