"""Philox4x32-10 counter-based random numbers (DESIGN.md section 3), in plain torch.

Every backend draws the same numbers: element ``i`` of a call with stream
``(seed, offset)`` uses position ``p = offset + i``; Philox is evaluated at counter
``(p >> 2)`` (low word c0, high word c1, c2 = c3 = 0) under key
``(seed & 0xffffffff, seed >> 32)`` and the element takes word ``p & 3``.  Triton's
``tl.randint4x(seed, counter)`` computes exactly this function.

torch has no unsigned 32-bit multiply with a 64-bit result, so the products are
formed from 16-bit halves of the constant in int64, which never overflows.
"""
from __future__ import annotations

import torch

MASK32 = 0xFFFFFFFF
PHILOX_M0 = 0xD2511F53
PHILOX_M1 = 0xCD9E8D57
PHILOX_W0 = 0x9E3779B9
PHILOX_W1 = 0xBB67AE85
PHILOX_ROUNDS = 10
UNIFORM_SCALE = 2.0 ** -24  # u = (word >> 8) * 2^-24, exact in float32


def seed_key(seed: int) -> tuple[int, int]:
    """Split a seed (int64 read as uint64) into the Philox key (k0, k1)."""
    s = int(seed) & 0xFFFFFFFFFFFFFFFF
    return s & MASK32, s >> 32


def _mulhilo32(const: int, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(hi, lo) 32-bit halves of const * b for a 32-bit constant and int64 b in [0, 2^32)."""
    c_hi, c_lo = const >> 16, const & 0xFFFF
    p_lo = b * c_lo  # < 2^48
    p_hi = b * c_hi  # < 2^48; const * b = p_hi * 2^16 + p_lo
    s = p_lo + ((p_hi & 0xFFFF) << 16)  # < 2^49
    return (p_hi >> 16) + (s >> 32), s & MASK32


def philox4x32_10(c0, c1, c2, c3, k0: int, k1: int):
    """Ten Philox rounds on int64 tensors holding uint32 values; returns four tensors."""
    for _ in range(PHILOX_ROUNDS):
        hi0, lo0 = _mulhilo32(PHILOX_M0, c0)
        hi1, lo1 = _mulhilo32(PHILOX_M1, c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0 = (k0 + PHILOX_W0) & MASK32
        k1 = (k1 + PHILOX_W1) & MASK32
    return c0, c1, c2, c3


def philox_words(n: int, seed: int, offset: int, device=None) -> torch.Tensor:
    """The n uint32 words (as int64) for positions offset .. offset + n - 1."""
    k0, k1 = seed_key(seed)
    ncounters = (n + 3) // 4
    counter = torch.arange(ncounters, dtype=torch.int64, device=device) + (offset >> 2)
    c0 = counter & MASK32
    c1 = counter >> 32
    zero = torch.zeros_like(counter)
    words = torch.stack(philox4x32_10(c0, c1, zero, zero, k0, k1), dim=1)  # [counter, word]
    return words.reshape(-1)[:n]


def uniform_from_words(words: torch.Tensor) -> torch.Tensor:
    """u = (word >> 8) * 2^-24 in [0, 1), exact in float32."""
    return (words >> 8).to(torch.float32) * UNIFORM_SCALE


def philox_uniform(n: int, seed: int, offset: int, device=None) -> torch.Tensor:
    """float32 uniforms u_p for positions offset .. offset + n - 1 of stream (seed, offset)."""
    return uniform_from_words(philox_words(n, seed, offset, device))
