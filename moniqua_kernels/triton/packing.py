"""Philox uniforms and the bare wire layout (DESIGN.md sections 3 and 5) in Triton."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..reference.packing import packed_nbytes
from ._common import (BLOCK, LAUNCH, block_start, grid_for, load_codes, load_tail,
                      pack_codes, philox_block, store_bytes, store_tail, uniform_from_words)


@triton.jit
def _philox_uniform_kernel(out_ptr, n, seed, offset, BLOCK: tl.constexpr):
    start = block_start(BLOCK)
    u = uniform_from_words(philox_block(seed, offset, start, BLOCK))
    store_tail(out_ptr, u, start, n, BLOCK)


def philox_uniform_triton(n: int, seed: int, offset: int, device) -> torch.Tensor:
    out = torch.empty(n, dtype=torch.float32, device=device)
    if n:
        _philox_uniform_kernel[grid_for(n)](out, n, seed, offset, BLOCK=BLOCK, **LAUNCH)
    return out


@triton.jit
def _pack_bits_kernel(codes_ptr, out_ptr, n, nbytes, BITS: tl.constexpr, BLOCK: tl.constexpr):
    start = block_start(BLOCK)
    codes = load_tail(codes_ptr, start, n, BLOCK).to(tl.int32)
    store_bytes(out_ptr, pack_codes(codes, BITS, BLOCK), start, nbytes, BITS, BLOCK)


def pack_bits_triton(codes: torch.Tensor, bits: int) -> torch.Tensor:
    n = codes.numel()
    nbytes = packed_nbytes(n, bits)
    out = torch.empty(nbytes, dtype=torch.uint8, device=codes.device)
    if n:
        _pack_bits_kernel[grid_for(n)](codes, out, n, nbytes, BITS=bits, BLOCK=BLOCK, **LAUNCH)
    return out


@triton.jit
def _unpack_bits_kernel(payload_ptr, out_ptr, n, nbytes, BITS: tl.constexpr,
                        BLOCK: tl.constexpr):
    start = block_start(BLOCK)
    codes = load_codes(payload_ptr, start, nbytes, BITS, BLOCK)
    store_tail(out_ptr, codes.to(tl.uint8), start, n, BLOCK)


def unpack_bits_triton(payload: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    out = torch.empty(n, dtype=torch.uint8, device=payload.device)
    if n:
        _unpack_bits_kernel[grid_for(n)](payload, out, n, payload.numel(), BITS=bits,
                                         BLOCK=BLOCK, **LAUNCH)
    return out
