"""Scaled sign (DESIGN.md section 6) in Triton: bits and |x| partial sums in one pass.

Each program writes its block's sum of |x| (float32); a one-program kernel adds the
partial sums and divides by float32(n) with IEEE division, on the same stream (no host
synchronisation, no host-to-device copy).  The bits are exact; the scale agrees with the
reference within float32 summation-order rounding, as DESIGN.md allows.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..reference.packing import packed_nbytes
from ._common import (BLOCK, LAUNCH, block_start, f32, grid_for, load_codes, load_tail,
                      pack_codes, store_bytes, store_tail)


@triton.jit
def _sign_encode_kernel(x_ptr, out_ptr, partial_ptr, n, nbytes, BLOCK: tl.constexpr):
    start = block_start(BLOCK)
    v = load_tail(x_ptr, start, n, BLOCK).to(tl.float32)
    bit = (v < 0).to(tl.int32)  # masked tail loads 0.0: bit 0, |v| 0
    store_bytes(out_ptr, pack_codes(bit, 1, BLOCK), start, nbytes, 1, BLOCK)
    tl.store(partial_ptr + tl.program_id(0), tl.sum(tl.abs(v), axis=0))


@triton.jit
def _sign_scale_kernel(partial_ptr, scale_ptr, nparts, n_f32, CHUNK: tl.constexpr):
    total = tl.zeros((), dtype=tl.float32)
    for c in range(0, nparts, CHUNK):
        idx = c + tl.arange(0, CHUNK)
        total = total + tl.sum(tl.load(partial_ptr + idx, mask=idx < nparts, other=0.0), axis=0)
    tl.store(scale_ptr, tl.div_rn(total, n_f32))


def sign_encode_triton(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    n = x.numel()
    nbytes = packed_nbytes(n, 1)
    out = torch.empty(nbytes, dtype=torch.uint8, device=x.device)
    if n == 0:
        return torch.zeros((), dtype=torch.float32, device=x.device), out
    grid = grid_for(n)
    partial = torch.empty(grid[0], dtype=torch.float32, device=x.device)
    _sign_encode_kernel[grid](x, out, partial, n, nbytes, BLOCK=BLOCK, **LAUNCH)
    scale = torch.empty((), dtype=torch.float32, device=x.device)
    _sign_scale_kernel[(1,)](partial, scale, grid[0], f32(float(n)), CHUNK=1024, **LAUNCH)
    return scale, out


@triton.jit
def _sign_decode_kernel(scale_ptr, payload_ptr, out_ptr, n, nbytes, BLOCK: tl.constexpr):
    start = block_start(BLOCK)
    bit = load_codes(payload_ptr, start, nbytes, 1, BLOCK).to(tl.float32)
    store_tail(out_ptr, tl.load(scale_ptr) * (1.0 - 2.0 * bit), start, n, BLOCK)


def sign_decode_triton(scale: torch.Tensor, payload: torch.Tensor, n: int) -> torch.Tensor:
    out = torch.empty(n, dtype=torch.float32, device=payload.device)
    if n:
        _sign_decode_kernel[grid_for(n)](scale, payload, out, n, payload.numel(), BLOCK=BLOCK,
                                         **LAUNCH)
    return out
