"""Random-k sparsification (DESIGN.md section 6) in Triton.

Element i is kept where (word_p >> 8) < ceil(ratio * 2^24), the reference's exact
integer form of u_p < ratio.  Compaction keeps index order with a prefix sum: a
counting pass writes each block's number of kept elements, torch.cumsum turns them
into block bases, and a second pass ranks the kept elements inside the block
(tl.cumsum) and moves them.

randomk_encode reads the total count back to the host to size its output: the one
host synchronisation in this backend, forced by the data-dependent output length.
randomk_decode and randomk_count do not synchronise.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..reference.sparse import randomk_inverse_ratio, randomk_threshold
from ._common import BLOCK, LAUNCH, block_start, grid_for, philox_block, round_to


@triton.jit
def _keep_mask(seed, offset, threshold, start, BLOCK: tl.constexpr):
    return (philox_block(seed, offset, start, BLOCK) >> 8).to(tl.int32) < threshold


@triton.jit
def _randomk_count_kernel(counts_ptr, n, threshold, seed, offset, BLOCK: tl.constexpr):
    start = block_start(BLOCK)
    i = start + tl.arange(0, BLOCK)
    keep = _keep_mask(seed, offset, threshold, start, BLOCK) & (i < n)
    tl.store(counts_ptr + tl.program_id(0), tl.sum(keep.to(tl.int64), axis=0))


def _block_counts(n: int, ratio: float, seed: int, offset: int, device) -> torch.Tensor:
    counts = torch.empty(grid_for(n)[0], dtype=torch.int64, device=device)
    if n:
        _randomk_count_kernel[grid_for(n)](counts, n, randomk_threshold(ratio), seed, offset,
                                           BLOCK=BLOCK, **LAUNCH)
    return counts


def _block_bases(counts: torch.Tensor) -> torch.Tensor:
    """Exclusive prefix sum: where each block's kept elements start."""
    return torch.cumsum(counts, 0) - counts


def randomk_count_triton(n: int, ratio: float, seed: int, offset: int, device) -> torch.Tensor:
    return _block_counts(n, ratio, seed, offset, device).sum()


@triton.jit
def _randomk_gather_kernel(x_ptr, base_ptr, out_ptr, n, threshold, seed, offset,
                           BLOCK: tl.constexpr):
    start = block_start(BLOCK)
    i = start + tl.arange(0, BLOCK)
    keep = _keep_mask(seed, offset, threshold, start, BLOCK) & (i < n)
    rank = tl.cumsum(keep.to(tl.int64), axis=0) - keep.to(tl.int64)
    dest = tl.load(base_ptr + tl.program_id(0)) + rank
    tl.store(out_ptr + dest, tl.load(x_ptr + i, mask=keep), mask=keep)


def randomk_encode_triton(x: torch.Tensor, ratio: float, seed: int, offset: int) -> torch.Tensor:
    n = x.numel()
    counts = _block_counts(n, ratio, seed, offset, x.device)
    total = int(counts.sum()) if n else 0  # host sync: the output size depends on the data
    out = torch.empty(total, dtype=x.dtype, device=x.device)
    if total:
        _randomk_gather_kernel[grid_for(n)](x, _block_bases(counts), out, n,
                                            randomk_threshold(ratio), seed, offset,
                                            BLOCK=BLOCK, **LAUNCH)
    return out


@triton.jit
def _randomk_scatter_kernel(values_ptr, base_ptr, out_ptr, n, threshold, seed, offset,
                            inv_ratio, RESCALE: tl.constexpr, BLOCK: tl.constexpr):
    start = block_start(BLOCK)
    i = start + tl.arange(0, BLOCK)
    keep = _keep_mask(seed, offset, threshold, start, BLOCK) & (i < n)
    rank = tl.cumsum(keep.to(tl.int64), axis=0) - keep.to(tl.int64)
    src = tl.load(base_ptr + tl.program_id(0)) + rank
    raw = tl.load(values_ptr + src, mask=keep, other=0.0)
    if RESCALE:
        value = round_to(raw.to(tl.float32) * inv_ratio, raw.dtype)
    else:
        value = raw
    tl.store(out_ptr + i, value, mask=i < n)  # zeros where not kept


def randomk_decode_triton(values: torch.Tensor, n: int, ratio: float, seed: int, offset: int,
                          rescale: bool) -> torch.Tensor:
    out = torch.empty(n, dtype=values.dtype, device=values.device)
    if n:
        counts = _block_counts(n, ratio, seed, offset, values.device)
        _randomk_scatter_kernel[grid_for(n)](
            values, _block_bases(counts), out, n, randomk_threshold(ratio), seed, offset,
            randomk_inverse_ratio(ratio), RESCALE=bool(rescale), BLOCK=BLOCK, **LAUNCH)
    return out
