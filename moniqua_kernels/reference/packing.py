"""Bit packing, the wire layout (DESIGN.md section 5).

Byte j holds codes ``j*(8/b) + m`` for m = 0 .. 8/b - 1 at bits ``[m*b, (m+1)*b)``,
least significant first; ``ceil(n*b/8)`` bytes; unused high bits of the last byte
are zero.  Example, b = 2: codes [1, 2, 3, 0, 3] -> bytes [57, 3].
"""
from __future__ import annotations

import torch


def packed_nbytes(n: int, bits: int) -> int:
    return (n * bits + 7) // 8


def pack_bits(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack a flat tensor of codes in [0, 2^bits) into uint8 bytes."""
    per_byte = 8 // bits
    n = codes.numel()
    nbytes = packed_nbytes(n, bits)
    padded = torch.zeros(nbytes * per_byte, dtype=torch.int32, device=codes.device)
    padded[:n] = codes.reshape(-1).to(torch.int32)
    shifts = torch.arange(per_byte, dtype=torch.int32, device=codes.device) * bits
    # The fields do not overlap, so the sum is the bitwise OR of the shifted codes.
    return (padded.view(nbytes, per_byte) << shifts).sum(dim=1).to(torch.uint8)


def unpack_bits(payload: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    """The first n codes (uint8) of a packed payload."""
    per_byte = 8 // bits
    shifts = torch.arange(per_byte, dtype=torch.int32, device=payload.device) * bits
    fields = (payload.reshape(-1, 1).to(torch.int32) >> shifts) & ((1 << bits) - 1)
    return fields.reshape(-1)[:n].to(torch.uint8)
