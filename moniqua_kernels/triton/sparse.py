"""Random-k sparsification (DESIGN.md section 6) in Triton.

Element i is kept where (word_p >> 8) < ceil(ratio * 2^24), the reference's exact
integer form of u_p < ratio.  Compaction keeps index order with a prefix sum: a
counting pass writes each block's number of kept elements, torch.cumsum turns them
into block bases, and a second pass ranks the kept elements inside the block
(tl.cumsum) and moves them.

randomk_encode reads the total count back to the host to size its output: the one
host synchronisation in this backend, forced by the data-dependent output length.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..reference.sparse import randomk_inverse_ratio, randomk_threshold
from ._common import BLOCK, LAUNCH, block_range, jit, philox_block, round_to, stream_args, stream_of


@triton.jit
def _keep_mask(k0, k1, c0, c1, threshold, start, i, n, BLOCK: tl.constexpr):
    seed, counter, _ = stream_of(k0, k1, c0, c1, None, None)
    words = philox_block(seed, counter, start, BLOCK)
    return ((words >> 8).to(tl.int32) < threshold) & (i < n)


@jit
def _randomk_count_kernel(counts_ptr, n, threshold, k0, k1, c0, c1, BLOCK: tl.constexpr):
    start, i = block_range(0, BLOCK)
    keep = _keep_mask(k0, k1, c0, c1, threshold, start, i, n, BLOCK)
    tl.store(counts_ptr + tl.program_id(0), tl.sum(keep.to(tl.int64), axis=0))


def _block_counts(n: int, ratio: float, seed, offset, device) -> torch.Tensor:
    grid = (triton.cdiv(n, BLOCK),)
    counts = torch.empty(grid[0], dtype=torch.int64, device=device)
    if n:
        _randomk_count_kernel[grid](counts, n, randomk_threshold(ratio),
                                    *stream_args(seed, offset), BLOCK=BLOCK, **LAUNCH)
    return counts


def _block_bases(counts: torch.Tensor) -> torch.Tensor:
    """Exclusive prefix sum: where each block's kept elements start."""
    return torch.cumsum(counts, 0) - counts


def randomk_count_triton(n, ratio, seed, offset, out) -> None:
    out.copy_(_block_counts(int(n), ratio, seed, offset, out.device).sum())


@jit
def _randomk_gather_kernel(x_ptr, base_ptr, out_ptr, n, threshold, k0, k1, c0, c1,
                           BLOCK: tl.constexpr):
    start, i = block_range(0, BLOCK)
    keep = _keep_mask(k0, k1, c0, c1, threshold, start, i, n, BLOCK)
    rank = tl.cumsum(keep.to(tl.int64), axis=0) - keep.to(tl.int64)
    dest = tl.load(base_ptr + tl.program_id(0)) + rank
    tl.store(out_ptr + dest, tl.load(x_ptr + i, mask=keep), mask=keep)


def randomk_encode_triton(x, ratio, seed, offset, flag) -> torch.Tensor:
    n = x.numel()
    counts = _block_counts(n, ratio, seed, offset, x.device)
    total = int(counts.sum()) if n else 0  # host sync: the output size depends on the data
    out = torch.empty(total, dtype=x.dtype, device=x.device)
    if total:
        _randomk_gather_kernel[(triton.cdiv(n, BLOCK),)](
            x, _block_bases(counts), out, n, randomk_threshold(ratio), *stream_args(seed, offset),
            BLOCK=BLOCK, **LAUNCH)
        if flag is not None:  # only the kept values travel: check those
            flag[0] += (~torch.isfinite(out)).sum()
    return out


@jit
def _randomk_scatter_kernel(values_ptr, base_ptr, out_ptr, n, threshold, k0, k1, c0, c1,
                            inv_ratio, RESCALE: tl.constexpr, BLOCK: tl.constexpr):
    start, i = block_range(0, BLOCK)
    keep = _keep_mask(k0, k1, c0, c1, threshold, start, i, n, BLOCK)
    rank = tl.cumsum(keep.to(tl.int64), axis=0) - keep.to(tl.int64)
    src = tl.load(base_ptr + tl.program_id(0)) + rank
    raw = tl.load(values_ptr + src, mask=keep, other=0.0)
    if RESCALE:
        value = round_to(raw.to(tl.float32) * inv_ratio, raw.dtype)
    else:
        value = raw
    tl.store(out_ptr + i, value, mask=i < n)  # zeros where not kept


def randomk_decode_triton(values, ratio, seed, offset, rescale, out) -> None:
    n = out.numel()
    if n:
        counts = _block_counts(n, ratio, seed, offset, values.device)
        _randomk_scatter_kernel[(triton.cdiv(n, BLOCK),)](
            values, _block_bases(counts), out, n, randomk_threshold(ratio),
            *stream_args(seed, offset), randomk_inverse_ratio(ratio), RESCALE=bool(rescale),
            BLOCK=BLOCK, **LAUNCH)
