"""Random-k and top-k sparsification (DESIGN.md section 6).

Random-k keeps element i where u_p < ratio.  u_p = (word >> 8) * 2^-24, so the test
is the exact integer comparison (word >> 8) < ceil(ratio * 2^24), which every backend
evaluates identically.  The receiver regenerates the mask from (seed, offset); only
the kept values travel, in index order, in the input's dtype.

Top-k keeps k = ceil(ratio * n) elements of largest |x|, ties broken towards the lower
index, sent as ascending indices (int32; int64 when n >= 2^31) and their values.
"""
from __future__ import annotations

import math

import torch

from .philox import philox_words


def randomk_threshold(ratio: float) -> int:
    return int(math.ceil(ratio * (1 << 24)))


def randomk_mask(n: int, ratio: float, seed: int, offset: int, device=None) -> torch.Tensor:
    return (philox_words(n, seed, offset, device) >> 8) < randomk_threshold(ratio)


def randomk_count(n: int, ratio: float, seed: int, offset: int, device=None) -> int:
    return int(randomk_mask(n, ratio, seed, offset, device).sum().item())


def randomk_encode(x: torch.Tensor, ratio: float, seed: int, offset: int) -> torch.Tensor:
    v = x.reshape(-1)
    return v[randomk_mask(v.numel(), ratio, seed, offset, v.device)]


def randomk_inverse_ratio(ratio: float) -> float:
    """float32(1 / ratio): the factor that makes random-k unbiased."""
    return float(torch.tensor(1.0 / ratio, dtype=torch.float32))


def randomk_decode(values: torch.Tensor, n: int, ratio: float, seed: int, offset: int,
                   rescale: bool) -> torch.Tensor:
    mask = randomk_mask(n, ratio, seed, offset, values.device)
    out = torch.zeros(n, dtype=values.dtype, device=values.device)
    kept = values
    if rescale:
        inv = torch.tensor(randomk_inverse_ratio(ratio), dtype=torch.float32,
                           device=values.device)
        kept = (values.to(torch.float32) * inv).to(values.dtype)
    out[mask] = kept
    return out


def topk_count(n: int, ratio: float) -> int:
    return min(n, int(math.ceil(ratio * n)))


def topk_index_dtype(n: int) -> torch.dtype:
    return torch.int32 if n < 2 ** 31 else torch.int64


def topk_encode(x: torch.Tensor, ratio: float) -> tuple[torch.Tensor, torch.Tensor]:
    v = x.reshape(-1)
    n = v.numel()
    k = topk_count(n, ratio)
    order = torch.sort(v.abs().to(torch.float32), descending=True, stable=True).indices[:k]
    indices = torch.sort(order).values
    return indices.to(topk_index_dtype(n)), v[indices]


def topk_decode(indices: torch.Tensor, values: torch.Tensor, n: int) -> torch.Tensor:
    out = torch.zeros(n, dtype=values.dtype, device=values.device)
    out[indices.to(torch.int64)] = values
    return out
