"""Moniqua modulo quantization (DESIGN.md section 4) in Triton: encode, decode and the
fused gossip mix, one pass each over the data.

Exactness: the kernels evaluate the reference's float32 operations in the reference's
order with no multiply-add contraction (LAUNCH disables fp fusion), and take B and
invB = 1.0f / B from reference.moniqua.modulus_constants, so codes are bit-identical
and decoded values equal the reference's.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..reference.moniqua import modulus_constants
from ..reference.packing import packed_nbytes
from ._common import (BLOCK, DITHER, LAUNCH, NEAREST, ROUNDING_IDS, block_start, f32,
                      grid_for, load_codes, load_tail, pack_codes, philox_block, round_to,
                      store_bytes, store_tail, uniform_from_words)


def _constants(modulus: float) -> tuple[float, float]:
    b32, inv_b = modulus_constants(modulus)
    return float(b32), float(inv_b)


@triton.jit
def _moniqua_encode_kernel(x_ptr, out_ptr, n, nbytes, inv_b, seed, offset,
                           BITS: tl.constexpr, ROUNDING: tl.constexpr, BLOCK: tl.constexpr):
    start = block_start(BLOCK)
    i = start + tl.arange(0, BLOCK)
    x = load_tail(x_ptr, start, n, BLOCK).to(tl.float32)
    t = x * inv_b
    # z = t - floor(t) is exact; non-finite t gives z = 0 (|t| < inf is false for NaN).
    z = tl.where(tl.abs(t) < float("inf"), t - tl.floor(t), 0.0)
    if ROUNDING == NEAREST:
        u = 0.5
    else:
        u = uniform_from_words(philox_block(seed, offset, start, BLOCK))
    w = z * (1 << BITS) + u  # z * 2^b is exact: the sum is the only rounding
    # w lies in [0, 2^b + 1): floor then mod 2^b (z rounding up to 1.0 wraps to 0).
    codes = tl.floor(w).to(tl.int32) & ((1 << BITS) - 1)
    codes = tl.where(i < n, codes, 0)  # the unused high bits of the last byte are zero
    store_bytes(out_ptr, pack_codes(codes, BITS, BLOCK), start, nbytes, BITS, BLOCK)


def moniqua_encode_triton(x: torch.Tensor, modulus: float, bits: int, rounding: str,
                          seed: int, offset: int) -> torch.Tensor:
    n = x.numel()
    nbytes = packed_nbytes(n, bits)
    out = torch.empty(nbytes, dtype=torch.uint8, device=x.device)
    if n:
        _, inv_b = _constants(modulus)
        _moniqua_encode_kernel[grid_for(n)](
            x, out, n, nbytes, inv_b, seed, offset, BITS=bits,
            ROUNDING=ROUNDING_IDS[rounding], BLOCK=BLOCK, **LAUNCH)
    return out


@triton.jit
def _decode_block(payload_ptr, y, start, nbytes, b32, inv_b, seed, offset, BITS: tl.constexpr,
                  ROUNDING: tl.constexpr, BLOCK: tl.constexpr):
    """Decoded float32 values of this program's elements against float32 reference y,
    in the reference's order: zh = (k + c) * 2^-b; a = zh*B - y;
    xh = y + (a - B * floor(a * invB + 0.5))."""
    k = load_codes(payload_ptr, start, nbytes, BITS, BLOCK).to(tl.float32)
    if ROUNDING == DITHER:
        k = k + (0.5 - uniform_from_words(philox_block(seed, offset, start, BLOCK)))  # c exact
    zh = k * (1.0 / (1 << BITS))  # exact: a power of two
    a = zh * b32 - y
    return y + (a - b32 * tl.floor(a * inv_b + 0.5))


@triton.jit
def _moniqua_decode_kernel(payload_ptr, y_ptr, out_ptr, n, nbytes, b32, inv_b, seed, offset,
                           BITS: tl.constexpr, ROUNDING: tl.constexpr, BLOCK: tl.constexpr):
    start = block_start(BLOCK)
    y_raw = load_tail(y_ptr, start, n, BLOCK)
    xh = _decode_block(payload_ptr, y_raw.to(tl.float32), start, nbytes, b32, inv_b, seed, offset,
                       BITS, ROUNDING, BLOCK)
    store_tail(out_ptr, round_to(xh, y_raw.dtype), start, n, BLOCK)


def moniqua_decode_triton(payload: torch.Tensor, reference: torch.Tensor, modulus: float,
                          bits: int, rounding: str, seed: int, offset: int) -> torch.Tensor:
    out = torch.empty_like(reference, memory_format=torch.contiguous_format)
    n = reference.numel()
    if n:
        b32, inv_b = _constants(modulus)
        _moniqua_decode_kernel[grid_for(n)](
            payload, reference, out, n, payload.numel(), b32, inv_b, seed, offset,
            BITS=bits, ROUNDING=ROUNDING_IDS[rounding], BLOCK=BLOCK, **LAUNCH)
    return out


@triton.jit
def _moniqua_mix_kernel(x_ptr, payloads, weights, own_ptr, n, nbytes, b32, inv_b, gamma,
                        seeds, offsets, BITS: tl.constexpr, ROUNDING: tl.constexpr,
                        BLOCK: tl.constexpr):
    """x <- x + gamma * sum_j w_j (d_j - d_self); payloads, weights, seeds, offsets are
    tuples (one kernel specialisation per neighbour count), the own stream last in
    seeds/offsets.  x is read once and written once; each payload byte is read once."""
    start = block_start(BLOCK)
    x_raw = load_tail(x_ptr, start, n, BLOCK)
    x = x_raw.to(tl.float32)
    NSELF: tl.constexpr = len(payloads)
    d_self = _decode_block(own_ptr, x, start, nbytes, b32, inv_b, seeds[NSELF], offsets[NSELF],
                           BITS, ROUNDING, BLOCK)
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    for j in tl.static_range(len(payloads)):  # left to right from 0, as the reference
        d_j = _decode_block(payloads[j], x, start, nbytes, b32, inv_b, seeds[j], offsets[j],
                            BITS, ROUNDING, BLOCK)
        acc = acc + weights[j] * (d_j - d_self)
    store_tail(x_ptr, round_to(x + gamma * acc, x_raw.dtype), start, n, BLOCK)


def moniqua_mix_triton(x: torch.Tensor, payloads: list[torch.Tensor], weights: list[float],
                       own_payload: torch.Tensor, modulus: float, bits: int, rounding: str,
                       gamma: float, seeds: list[int], offsets: list[int]) -> None:
    n = x.numel()
    if n == 0:
        return
    b32, inv_b = _constants(modulus)
    _moniqua_mix_kernel[grid_for(n)](
        x, tuple(payloads), tuple(f32(w) for w in weights), own_payload, n,
        own_payload.numel(), b32, inv_b, f32(gamma), tuple(seeds), tuple(offsets),
        BITS=bits, ROUNDING=ROUNDING_IDS[rounding], BLOCK=BLOCK, **LAUNCH)
