"""Scaled sign (CHOCO-SGD's sign compressor, DESIGN.md section 6).

scale = sum|x| / n in float32 (0 for n = 0); one bit per element, 1 = negative;
decode scale * (1 - 2 * bit).  The sum's order differs between backends, so the
scale agrees within float32 rounding; the bits are exact.
"""
from __future__ import annotations

import torch

from .packing import pack_bits, unpack_bits


def sign_encode(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    v = x.reshape(-1).to(torch.float32)
    n = v.numel()
    if n == 0:
        scale = torch.zeros((), dtype=torch.float32, device=v.device)
    else:
        scale = v.abs().sum() / torch.tensor(float(n), dtype=torch.float32, device=v.device)
    return scale, pack_bits((v < 0).to(torch.uint8), 1)


def sign_decode(scale: torch.Tensor, payload: torch.Tensor, n: int) -> torch.Tensor:
    bit = unpack_bits(payload, 1, n).to(torch.float32)
    return scale.to(torch.float32) * (1.0 - 2.0 * bit)
