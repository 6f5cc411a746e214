"""Moniqua modulo quantization (DESIGN.md section 4) in Triton: encode, decode and the
fused gossip mix, one pass each over the data.

Exactness: the kernels evaluate the reference's float32 operations in the reference's
order with no multiply-add contraction (LAUNCH disables fp fusion), and take B and
invB = 1.0f / B from reference.moniqua.modulus_constants, so codes are bit-identical
and decoded values equal the reference's.

Launchers take exactly the op's schema arguments (ops/_table.py) and write into the
outputs they are given; flag_ptr None compiles the checks out.
"""
from __future__ import annotations

import triton
import triton.language as tl

from ..reference.moniqua import modulus_constants
from ._common import (BLOCK, DITHER, LAUNCH, NEAREST, ROUNDING_IDS, all_finite,
                      block_range, check_padding, count_non_finite, f32, flag_non_finite,
                      floor_exact, floor_to_int32, jit, load_block, load_codes, pack_codes,
                      philox_block, round_to, split_launch, store_block, store_bytes,
                      stream_args, stream_of, tuple_halves, uniform_from_words, unpack_half)


def _constants(modulus: float) -> tuple[float, float]:
    b32, inv_b = modulus_constants(modulus)
    return float(b32), float(inv_b)


@jit
def _moniqua_encode_kernel(x_ptr, out_ptr, n, nbytes, inv_b, k0, k1, c0, c1, stream_ptr,
                           flag_ptr, first_block, BITS: tl.constexpr, ROUNDING: tl.constexpr,
                           MASKED: tl.constexpr, BLOCK: tl.constexpr):
    start, i = block_range(first_block, BLOCK)
    seed, counter, ok = stream_of(k0, k1, c0, c1, stream_ptr, flag_ptr)
    x = load_block(x_ptr, i, n, MASKED).to(tl.float32)
    t = x * inv_b
    # z = t - floor(t) is exact.  The spec's z = 0 for a non-finite t is not selected
    # here: such a z is NaN, so is w, and floor_to_int32 gives it the code z = 0 gives
    # (0: w = u < 1), as the CUDA C++ encoder's conversion does.  sm_90 SASS, Triton 3.6,
    # unchecked: 2 instructions an element fewer than the select (1-bit dither fp32 29.5
    # -> 27.5, nearest 15.0 -> 13.0).
    z = t - floor_exact(t)
    if ROUNDING == NEAREST:
        u = 0.5
    else:
        u = uniform_from_words(philox_block(seed, counter, start, BLOCK))
    w = z * (1 << BITS) + u  # z * 2^b is exact: the sum is the only rounding
    # w lies in [0, 2^b + 1): floor then mod 2^b (z rounding up to 1.0 wraps to 0).
    codes = floor_to_int32(w) & ((1 << BITS) - 1)
    if MASKED:
        codes = tl.where(i < n, codes, 0)  # the unused high bits of the last byte are zero
    store_bytes(out_ptr, pack_codes(codes, BITS, BLOCK), start, nbytes, ok, BITS, BLOCK, MASKED)
    if flag_ptr is not None:
        if not all_finite(t):  # flag_non_finite, with t computed again for the count
            # live across the probe's reduction, t took sm_90 registers (Triton 3.6: 1-bit
            # dither encode 47 -> 32 for float32, 39 -> 32 for bfloat16)
            t = load_block(x_ptr, i, n, MASKED).to(tl.float32) * inv_b
            count_non_finite(flag_ptr, t, True)  # masked lanes loaded 0: finite


def moniqua_encode_triton(x, modulus, bits, rounding, seed, offset, stream, out, flag) -> None:
    n = x.numel()
    if n:
        _, inv_b = _constants(modulus)
        split_launch(_moniqua_encode_kernel, n, BLOCK, x, out, n, out.numel(), inv_b,
                     *stream_args(seed, offset), stream, flag, BITS=bits,
                     ROUNDING=ROUNDING_IDS[rounding], masked_only=stream is not None, **LAUNCH)


@triton.jit
def _decode_block(payload_ptr, y, start, nbytes, b32, inv_b, seed, counter,
                  BITS: tl.constexpr, ROUNDING: tl.constexpr, BLOCK: tl.constexpr,
                  MASKED: tl.constexpr):
    """Decoded float32 values of this program's elements against float32 reference y,
    in the reference's order: zh = (k + c) * 2^-b; a = zh*B - y;
    xh = y + (a - B * floor(a * invB + 0.5)).

    Dither: k + c = k + 0.5 - u is ((k << 24) + 2^23 - (word >> 8)) * 2^-24 exactly, and
    converting that integer to float32 rounds the same exact value once, as the
    reference's float32 sum k + (0.5 - u) does: one conversion and one multiply instead
    of two conversions, two multiplies and two additions (the C++ kernels' form,
    moniqua_dither_fraction in csrc/include/moniqua_kernels/moniqua.h), and below 8 bits
    the code arrives already shifted up by 24 (load_codes UP); 8 bits need int64.  In
    sm_90 SASS (benchmarks/sass_static.py, Triton 3.6 as on the GPU machines) the
    2-neighbour 1-bit dithered mix went from 113.5 to 101.5 instructions an element
    (fp32; registers 109 -> 94) and from 118 to 110 (bf16)."""
    if ROUNDING == DITHER:
        low = (philox_block(seed, counter, start, BLOCK) >> 8).to(tl.int32)
        if BITS < 8:
            k24 = load_codes(payload_ptr, start, nbytes, BITS, BLOCK, MASKED, UP=24)
            fixed = k24 + 0x800000 - low
        else:
            k = load_codes(payload_ptr, start, nbytes, BITS, BLOCK, MASKED)
            fixed = (k.to(tl.int64) << 24) + 0x800000 - low.to(tl.int64)
        zh = fixed.to(tl.float32) * (1.0 / (1 << (24 + BITS)))  # exact: a power of two
    else:
        k = load_codes(payload_ptr, start, nbytes, BITS, BLOCK, MASKED)
        zh = k.to(tl.float32) * (1.0 / (1 << BITS))  # exact: a power of two
    a = zh * b32 - y
    # tl.floor flushes subnormals (floor_exact), but v + 0.5 is never one: it is 0 or a
    # multiple of v's ulp, at least 2^-26 where |v| is near 0.5
    return y + (a - b32 * tl.floor(a * inv_b + 0.5))


@jit
def _moniqua_decode_kernel(payload_ptr, y_ptr, out_ptr, n, nbytes, b32, inv_b, k0, k1, c0,
                           c1, stream_ptr, flag_ptr, first_block, BITS: tl.constexpr,
                           ROUNDING: tl.constexpr, MASKED: tl.constexpr, BLOCK: tl.constexpr):
    start, i = block_range(first_block, BLOCK)
    seed, counter, ok = stream_of(k0, k1, c0, c1, stream_ptr, flag_ptr)
    check_padding(payload_ptr, n, nbytes, flag_ptr, BITS, MASKED)
    y_raw = load_block(y_ptr, i, n, MASKED)
    xh = _decode_block(payload_ptr, y_raw.to(tl.float32), start, nbytes, b32, inv_b, seed,
                       counter, BITS, ROUNDING, BLOCK, MASKED)
    stored = round_to(xh, y_raw.dtype)
    store_block(out_ptr, i, stored, n, ok, MASKED)
    if flag_ptr is not None:  # the result as stored: float16/bfloat16 overflow is counted
        flag_non_finite(flag_ptr, stored.to(tl.float32), (i < n) if MASKED else True)


def moniqua_decode_triton(payload, reference, modulus, bits, rounding, seed, offset, stream,
                          out, flag) -> None:
    n = reference.numel()
    if n:
        b32, inv_b = _constants(modulus)
        split_launch(_moniqua_decode_kernel, n, BLOCK, payload, reference, out, n,
                     payload.numel(), b32, inv_b, *stream_args(seed, offset), stream, flag,
                     BITS=bits, ROUNDING=ROUNDING_IDS[rounding], masked_only=stream is not None,
                     **LAUNCH)


@jit
def _moniqua_mix_kernel(x_ptr, payloads, weights, own_ptr, n, nbytes, b32, inv_b, gamma,
                        k0s, k1s, c0s, c1s, streams_ptr, flag_ptr, first_block,
                        BITS: tl.constexpr, ROUNDING: tl.constexpr, MASKED: tl.constexpr,
                        BLOCK: tl.constexpr):
    """x <- x + gamma * sum_j w_j (d_j - d_self); payloads, weights and the stream
    halves are tuples (one kernel specialisation per neighbour count), the own stream
    last.  x is read once and written once; each payload byte is read once.  With
    flags, an element whose result is not finite keeps x and is counted."""
    start, i = block_range(first_block, BLOCK)
    NSELF: tl.constexpr = len(payloads)
    check_padding(own_ptr, n, nbytes, flag_ptr, BITS, MASKED)
    for j in tl.static_range(len(payloads)):
        check_padding(payloads[j], n, nbytes, flag_ptr, BITS, MASKED)
    row = streams_ptr + 2 * NSELF if streams_ptr is not None else None
    seed, counter, ok = stream_of(unpack_half(k0s[NSELF]), unpack_half(k1s[NSELF]),
                                  unpack_half(c0s[NSELF]), unpack_half(c1s[NSELF]), row, flag_ptr)
    x_raw = load_block(x_ptr, i, n, MASKED)
    x = x_raw.to(tl.float32)
    d_self = _decode_block(own_ptr, x, start, nbytes, b32, inv_b, seed, counter, BITS, ROUNDING,
                           BLOCK, MASKED)
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    for j in tl.static_range(len(payloads)):  # left to right from 0, as the reference
        row = streams_ptr + 2 * j if streams_ptr is not None else None
        seed_j, counter_j, ok_j = stream_of(unpack_half(k0s[j]), unpack_half(k1s[j]),
                                            unpack_half(c0s[j]), unpack_half(c1s[j]), row,
                                            flag_ptr)
        ok = ok & ok_j
        d_j = _decode_block(payloads[j], x, start, nbytes, b32, inv_b, seed_j, counter_j, BITS,
                            ROUNDING, BLOCK, MASKED)
        acc = acc + weights[j] * (d_j - d_self)
    result = round_to(x + gamma * acc, x_raw.dtype)
    if flag_ptr is not None:
        # flag_non_finite on the result as stored (a float16/bfloat16 overflow counts), and
        # the elements that are not finite keep x, read again: live across the probe's
        # reduction, x took sm_90 registers (1-bit dither bf16 mix 89 -> 80 with Triton
        # 3.6, 92 -> 80 with 3.9)
        as_float = result.to(tl.float32)
        if not all_finite(as_float):
            count_non_finite(flag_ptr, as_float, (i < n) if MASKED else True)
            result = tl.where(as_float - as_float == 0.0, result,
                              load_block(x_ptr, i, n, MASKED))
    store_block(x_ptr, i, result, n, ok, MASKED)


# The mix's block (elements per program, on 8 warps) by rounding, check and element size.
# GPU run 6 timed 4096 against 2048 for every case on an H100 (n = 2^26, medians in us;
# benchmarks/results/NVIDIA_H100_80GB_HBM3/run6):
#
#   nearest, checked     fp32 1 bit 260 -> 222   bf16 1 bit 170 -> 142   8 bits: same
#   nearest, unchecked   fp32 1 bit 208 -> 222   bf16 1 bit 156 -> 134   8 bits: same
#   dither, checked      fp32 1 bit 301 -> 307   bf16 1 bit 298 -> 308   8 bits: 0-2 % faster
#   dither, unchecked    fp32 1 bit 289 -> 293   bf16 1 bit 293 -> 290   8 bits: 1-2 % slower
#
# The nearest mix is memory-bound, and the finite check's reduction keeps the result live
# across it: at 4096 the checked 1-bit fp32 kernel takes 74 registers (40 unchecked), 3
# programs an SM instead of 6; at 2048 it takes 40.  The dithered mix is issue-bound
# (Philox), where a block's size hardly matters.  fp16 is taken as bf16 (not timed).
MIX_NEAREST_BLOCK = 2048


def mix_block(rounding: str, checked: bool, element_size: int) -> int:
    """The block the mix launches with (the table above)."""
    if rounding == "nearest" and (checked or element_size == 2):
        return MIX_NEAREST_BLOCK
    return BLOCK


def moniqua_mix_triton(x, payloads, weights, own_payload, modulus, bits, rounding, gamma, seeds,
                       offsets, streams, flag) -> None:
    n = x.numel()
    if n == 0:
        return
    b32, inv_b = _constants(modulus)
    halves = list(zip(*(tuple_halves(s, o) for s, o in zip(seeds, offsets))))
    block = mix_block(rounding, flag is not None, x.element_size())
    split_launch(_moniqua_mix_kernel, n, block, x, tuple(payloads), tuple(f32(w) for w in weights),
                 own_payload, n, own_payload.numel(), b32, inv_b, f32(gamma),
                 *(tuple(h) for h in halves), streams, flag, BITS=bits,
                 ROUNDING=ROUNDING_IDS[rounding], masked_only=streams is not None, **LAUNCH)
