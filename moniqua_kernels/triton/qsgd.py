"""Bucketed QSGD (DESIGN.md section 6) in Triton.

Encode, two shapes of launch:
  * bucket_size d a multiple of 8 and at most FUSED_MAX_BUCKET (the usual d = 512): one
    program per bucket holds the whole bucket in registers, reduces its scale, quantizes
    and packs it -- x is read once, and the bucket's bytes belong to it alone.  The full
    buckets run apart from the last, partial one (masked), as the elementwise kernels
    split their blocks: 128-bit loads, with no mask at all where d is a power of two
    (sm_90 SASS, 4 bits, fp32, Triton 3.6: d = 512 43.5 instructions an element; d =
    1000 52.5, where every bucket masked with 32-bit loads took 62).
  * otherwise (odd d shares bytes between buckets; a huge d does not fit a tile): one
    program per piece of at most SCALE_PIECE elements of a bucket reduces the scale in
    chunks (one more kernel combines a bucket's pieces), then an elementwise pass over
    whole output bytes gathers each element's r = s / N and packs.  x is read twice.
r = float32(s) / N is IEEE division (tl.div_rn; Triton's "/" is approximate on GPU) and
||v||_2 uses the correctly rounded square root, so "max" scales and codes are exact and
"l2" scales differ from the reference only by summation order.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import (BLOCK, LAUNCH, block_range, check_padding, flag_non_finite, jit,
                      load_block, load_codes, only_if, pack_codes, philox_block, split_launch,
                      store_block, store_bytes, stream_args, stream_of, uniform_from_words)

# A bucket up to 8192 elements is one tile: 8192 fp32 over 8 warps is 32 registers per
# thread, still below register spilling; larger buckets take the chunked path.
FUSED_MAX_BUCKET = 8192
SCALE_CHUNK = 1024
# The chunked path reduces a bucket in pieces of at most SCALE_PIECE elements, one program
# a piece, so a few huge buckets (d = n: QSGD unbucketed) spread over every SM instead of
# one program reading the whole tensor alone; a bucket of several pieces is finished by
# _qsgd_finish_kernel, in a fixed order.
SCALE_PIECE = 8192
NORM_IDS = {"max": 0, "l2": 1}


@triton.jit
def _reduce(s, NORM: tl.constexpr):
    """Statistics s as one: their max, or their sum."""
    if NORM == 0:
        return tl.max(s, axis=0)
    else:
        return tl.sum(s, axis=0)


@triton.jit
def _scale_of(a, NORM: tl.constexpr):
    """Partial scale statistic of |v| values a: max, or the sum of squares."""
    if NORM == 0:
        return _reduce(a, NORM)
    else:
        return _reduce(a * a, NORM)


@triton.jit
def _finish_scale(stat, NORM: tl.constexpr):
    if NORM == 0:
        return stat
    else:
        return tl.sqrt_rn(stat)


@triton.jit
def _inverse(scale, S: tl.constexpr):
    """r = float32(s) / N (correctly rounded); 0 for an all-zero bucket."""
    safe = tl.where(scale > 0, scale, 1.0)
    return tl.where(scale > 0, tl.div_rn(tl.full(scale.shape, S, tl.float32), safe), 0.0)


# How a block of BLOCK elements finds each element's bucket (D_MODE, per call: _bucket_mode).
# sm_90 SASS of the 4-bit decode, full blocks, Triton 3.6, instructions an element: d a
# power of two (a shift) 33; BUCKET_TWO 43; BUCKET_RECIP 57.  Before (every block
# masked, a 64-bit division an element where d is not a power of two): 41 and 76.
BUCKET_TWO: tl.constexpr = tl.constexpr(-1)    # d >= BLOCK: at most two buckets a block
BUCKET_RECIP: tl.constexpr = tl.constexpr(-2)  # d < BLOCK: a float reciprocal, corrected


@triton.jit
def _per_bucket(ptr, i, start, n, d, D_MODE: tl.constexpr, MASKED: tl.constexpr,
                BLOCK: tl.constexpr):
    """ptr[i // d] for a block's elements i = start + arange(BLOCK) (0 at i >= n where
    MASKED; else the block is full): a bucket's scale or ratio.  Not a power of two: one
    64-bit division a program for the first element's bucket q0, then each element's
    offset t from q0's start (t < d + BLOCK) is split without a division."""
    inside = i < n
    if D_MODE >= 0:
        if MASKED:
            return tl.load(ptr + (i >> D_MODE), mask=inside, other=0.0)
        else:
            return tl.load(ptr + (i >> D_MODE))
    else:
        q0 = start // d
        r0 = start - q0 * d  # the block starts r0 elements into bucket q0
        if D_MODE == BUCKET_TWO:
            # d >= BLOCK: elements k >= d - r0 of the block are in bucket q0 + 1
            first = tl.load(ptr + q0)
            second = tl.load(ptr + q0 + 1, mask=(q0 + 1) * d < n, other=0.0)
            split = tl.minimum(d - r0, BLOCK).to(tl.int32)
            value = tl.where(tl.arange(0, BLOCK) >= split, second, first)
            if MASKED:
                value = tl.where(inside, value, 0.0)
            return value
        else:
            # t = r0 + k < 2 * BLOCK and d < BLOCK: exact in float32.  floor(t * (1/d))
            # with the correctly rounded reciprocal is one too low for 568 of the 4095 d
            # (at multiples of d, e.g. t = d = 41), never off by more; the two compares
            # correct either way (tests/test_triton_qsgd_buckets.py checks every t and d).
            t = r0.to(tl.int32) + tl.arange(0, BLOCK)
            d32 = d.to(tl.int32)
            inv_d = tl.div_rn(tl.full((), 1.0, tl.float32), d32.to(tl.float32))
            est = (t.to(tl.float32) * inv_d).to(tl.int32)
            est += ((est + 1) * d32 <= t).to(tl.int32)
            est -= (est * d32 > t).to(tl.int32)
            if MASKED:
                return tl.load(ptr + q0 + est, mask=inside, other=0.0)
            else:
                return tl.load(ptr + q0 + est)


def _bucket_mode(d: int, block: int) -> int:
    """D_MODE for buckets of d elements in blocks of `block`: log2(d) for a power of two
    (a shift), else BUCKET_TWO or BUCKET_RECIP."""
    if d & (d - 1) == 0:
        return d.bit_length() - 1
    return (BUCKET_TWO if d >= block else BUCKET_RECIP).value


@triton.jit
def _codes(v, r, u, BITS: tl.constexpr):
    """Sign bit on top, level l = min(floor(|v| * r + u), s) below it."""
    S: tl.constexpr = (1 << (BITS - 1)) - 1
    level = tl.minimum(tl.floor(tl.abs(v) * r + u), S).to(tl.int32)
    return ((v < 0).to(tl.int32) << (BITS - 1)) | level


@jit
def _qsgd_encode_kernel(x_ptr, scales_ptr, out_ptr, n, d8, k0, k1, c0, c1, stream_ptr, flag_ptr,
                        first_block, BITS: tl.constexpr, NORM: tl.constexpr,
                        MASKED: tl.constexpr, WHOLE: tl.constexpr, BLOCK: tl.constexpr):
    """One program per bucket of d = 8 * d8 <= BLOCK elements: scale, quantize, pack.
    d reaches the kernel as d8 so that the compiler sees every bucket start a multiple of
    8 elements (16 bytes and more): 128-bit loads.  MASKED: the last bucket, cut by n (or
    every bucket, under a stream tensor).  Else a full bucket: WHOLE (d == BLOCK, a power
    of two) with no mask at all, or the tile's first d lanes."""
    q = tl.program_id(0).to(tl.int64) + first_block
    d = d8 * 8
    if WHOLE:
        start = q * BLOCK
    else:
        start = q * d
    if MASKED:
        end = tl.minimum(start + d, n)  # the bucket's elements: [start, end)
    else:
        end = start + d
    i = start + tl.arange(0, BLOCK)
    seed, counter, ok = stream_of(k0, k1, c0, c1, stream_ptr, flag_ptr)
    PARTIAL: tl.constexpr = MASKED or not WHOLE  # lanes past the bucket's end
    v = load_block(x_ptr, i, end, PARTIAL).to(tl.float32)
    scale = _finish_scale(_scale_of(tl.abs(v), NORM), NORM)
    tl.store(scales_ptr + q, scale, mask=ok)
    r = _inverse(scale, (1 << (BITS - 1)) - 1)
    u = uniform_from_words(philox_block(seed, counter, start, BLOCK))
    codes = _codes(v, r, u, BITS)
    if PARTIAL:
        codes = tl.where(i < end, codes, 0)
    PER_BYTE: tl.constexpr = 8 // BITS
    # d % 8 == 0: the bucket owns whole bytes [start / PER_BYTE, ceil(end / PER_BYTE)).
    j = start // PER_BYTE + tl.arange(0, BLOCK // PER_BYTE)
    store_block(out_ptr, j, pack_codes(codes, BITS, BLOCK).to(tl.uint8),
                (end + PER_BYTE - 1) // PER_BYTE, ok, PARTIAL)
    if flag_ptr is not None:
        flag_non_finite(flag_ptr, v, True)  # masked lanes loaded 0: finite


@triton.jit
def _combine(stat, other, NORM: tl.constexpr):
    """Two partial statistics of one bucket as one: max, or the sum."""
    if NORM == 0:
        return tl.maximum(stat, other)
    else:
        return stat + other


@jit
def _qsgd_scale_kernel(x_ptr, scales_ptr, inv_ptr, part_ptr, n, d, piece, pieces, k0, k1, c0,
                       c1, stream_ptr, flag_ptr, BITS: tl.constexpr, NORM: tl.constexpr,
                       SPLIT: tl.constexpr, CHUNK: tl.constexpr):
    """One program per piece of `piece` elements of a bucket (`pieces` a bucket), in
    chunks.  SPLIT=False (one piece a bucket): its scale N and r = s / N; else its
    statistic into part_ptr, for _qsgd_finish_kernel.  No scale is written under a
    refused stream (the pack kernel flags it)."""
    p = tl.program_id(0).to(tl.int64)
    q = p // pieces
    bucket_end = tl.minimum(q * d + d, n)
    begin = q * d + (p - q * pieces) * piece
    end = tl.minimum(begin + piece, bucket_end)
    _, _, ok = stream_of(k0, k1, c0, c1, stream_ptr, None)
    stat = tl.zeros((), dtype=tl.float32)
    for c in range(0, piece, CHUNK):
        i = begin + c + tl.arange(0, CHUNK)
        inside = i < end
        a = tl.abs(tl.load(x_ptr + i, mask=inside, other=0.0).to(tl.float32))
        stat = _combine(stat, _scale_of(a, NORM), NORM)
        if flag_ptr is not None:
            flag_non_finite(flag_ptr, a, inside)
    if SPLIT:
        tl.store(part_ptr + p, stat, mask=ok)
    else:
        scale = _finish_scale(stat, NORM)
        tl.store(scales_ptr + q, scale, mask=ok)
        tl.store(inv_ptr + q, _inverse(scale, (1 << (BITS - 1)) - 1))


@jit
def _qsgd_finish_kernel(part_ptr, scales_ptr, inv_ptr, pieces, k0, k1, c0, c1, stream_ptr,
                        BITS: tl.constexpr, NORM: tl.constexpr, CHUNK: tl.constexpr):
    """One program per bucket: its pieces' statistics combined in a fixed order, its scale N
    and r = s / N."""
    q = tl.program_id(0).to(tl.int64)
    _, _, ok = stream_of(k0, k1, c0, c1, stream_ptr, None)
    stat = tl.zeros((), dtype=tl.float32)
    for c in range(0, pieces, CHUNK):
        j = c + tl.arange(0, CHUNK)
        # not read under a refused stream: the pieces were never written
        part = tl.load(part_ptr + q * pieces + j, mask=only_if(ok, j < pieces), other=0.0)
        stat = _combine(stat, _reduce(part, NORM), NORM)
    scale = _finish_scale(stat, NORM)
    tl.store(scales_ptr + q, scale, mask=ok)
    tl.store(inv_ptr + q, _inverse(scale, (1 << (BITS - 1)) - 1))


@jit
def _qsgd_pack_kernel(x_ptr, inv_ptr, out_ptr, n, nbytes, d, k0, k1, c0, c1, stream_ptr,
                      flag_ptr, first_block, BITS: tl.constexpr, D_MODE: tl.constexpr,
                      MASKED: tl.constexpr, BLOCK: tl.constexpr):
    """Elementwise over whole output bytes: codes with the bucket's r gathered."""
    start, i = block_range(first_block, BLOCK)
    seed, counter, ok = stream_of(k0, k1, c0, c1, stream_ptr, flag_ptr)
    v = load_block(x_ptr, i, n, MASKED).to(tl.float32)
    r = _per_bucket(inv_ptr, i, start, n, d, D_MODE, MASKED, BLOCK)
    u = uniform_from_words(philox_block(seed, counter, start, BLOCK))
    codes = _codes(v, r, u, BITS)
    if MASKED:
        codes = tl.where(i < n, codes, 0)  # the unused high bits of the last byte are zero
    store_bytes(out_ptr, pack_codes(codes, BITS, BLOCK), start, nbytes, ok, BITS, BLOCK, MASKED)


def _bucket_warps(dblock: int) -> int:
    """16 elements a thread (32 at 8192).  Why, in sm_90 SASS instructions per element of
    the 4-bit max-norm kernel, fp32, d = 512, flags on, Triton 3.6 (the GPU machines';
    benchmarks/sass_static.py counts them, results/static_sm90.md): full buckets
    unmasked, 1 warp: 42, four 128-bit loads a thread, no barrier; 2 warps: 59 and 7
    barriers (the scale's reduction across warps); 4 warps: 84.  Every bucket masked on 2
    warps, as before: 88, 32-bit loads, 13 barriers; GPU run 2 timed that launch at 57 %
    of copy bandwidth (H100), where about 50 instructions an element fit the copy's
    time.  The new launch is not timed on a GPU yet."""
    return min(8, max(1, dblock // 512))


def qsgd_encode_triton(x, bits, bucket_size, norm, seed, offset, stream, scales, payload,
                       flag) -> None:
    n, d = x.numel(), bucket_size
    if n == 0:
        return
    nbuckets = triton.cdiv(n, d)
    halves = stream_args(seed, offset)
    if d % 8 == 0 and d <= FUSED_MAX_BUCKET:
        dblock = max(8, triton.next_power_of_2(d))
        args = (x, scales, payload, n, d // 8, *halves, stream, flag)
        meta = dict(LAUNCH, BITS=bits, NORM=NORM_IDS[norm], WHOLE=dblock == d,
                    num_warps=_bucket_warps(dblock))
        # full buckets first, the last partial one masked
        split_launch(_qsgd_encode_kernel, n, d, *args, masked_only=stream is not None,
                     tile=dblock, **meta)
    else:
        inv = torch.empty(nbuckets, dtype=torch.float32, device=x.device)
        pieces = triton.cdiv(d, SCALE_PIECE)
        part = (torch.empty(nbuckets * pieces, dtype=torch.float32, device=x.device)
                if pieces > 1 else None)
        meta = dict(LAUNCH, BITS=bits, NORM=NORM_IDS[norm], CHUNK=SCALE_CHUNK)
        _qsgd_scale_kernel[(nbuckets * pieces,)](x, scales, inv, part, n, d, min(d, SCALE_PIECE),
                                                 pieces, *halves, stream, flag,
                                                 SPLIT=pieces > 1, **meta)
        if pieces > 1:
            _qsgd_finish_kernel[(nbuckets,)](part, scales, inv, pieces, *halves, stream, **meta)
        split_launch(_qsgd_pack_kernel, n, BLOCK, x, inv, payload, n, payload.numel(), d,
                     *halves, stream, flag, BITS=bits, D_MODE=_bucket_mode(d, BLOCK),
                     masked_only=stream is not None, **LAUNCH)


@jit
def _qsgd_decode_kernel(scales_ptr, payload_ptr, out_ptr, n, nbytes, d, flag_ptr, first_block,
                        BITS: tl.constexpr, D_MODE: tl.constexpr, MASKED: tl.constexpr,
                        BLOCK: tl.constexpr):
    """+-((N * l) / s) in the reference's order, the division correctly rounded."""
    start, i = block_range(first_block, BLOCK)
    check_padding(payload_ptr, n, nbytes, flag_ptr, BITS, MASKED)
    codes = load_codes(payload_ptr, start, nbytes, BITS, BLOCK, MASKED)
    S: tl.constexpr = (1 << (BITS - 1)) - 1
    scale = _per_bucket(scales_ptr, i, start, n, d, D_MODE, MASKED, BLOCK)
    magnitude = tl.div_rn(scale * (codes & S).to(tl.float32),
                          tl.full((BLOCK,), S, tl.float32))
    # The sign as a bit flip: compiled, -magnitude became 0 - magnitude, which gives +0.0
    # for a zero level where the reference gives -0.0 (seen on an H100).
    sign = ((codes >> (BITS - 1)) & 1).to(tl.uint32) << 31
    value = (magnitude.to(tl.uint32, bitcast=True) ^ sign).to(tl.float32, bitcast=True)
    store_block(out_ptr, i, value, n, True, MASKED)


def qsgd_decode_triton(scales, payload, bits, bucket_size, out, flag) -> None:
    n = out.numel()
    if n:
        split_launch(_qsgd_decode_kernel, n, BLOCK, scales, payload, out, n, payload.numel(),
                     bucket_size, flag, BITS=bits, D_MODE=_bucket_mode(bucket_size, BLOCK),
                     **LAUNCH)
