"""Philox uniforms and the bare wire layout (DESIGN.md sections 3 and 5) in Triton."""
from __future__ import annotations

import triton.language as tl

from ._common import (BLOCK, LAUNCH, block_range, check_padding, jit, load_block, load_codes,
                      pack_codes, philox_block, split_launch, store_block, store_bytes,
                      stream_args, stream_of, uniform_from_words)


@jit
def _philox_uniform_kernel(out_ptr, n, k0, k1, c0, c1, stream_ptr, first_block,
                           MASKED: tl.constexpr, BLOCK: tl.constexpr):
    start, i = block_range(first_block, BLOCK)
    seed, counter, ok = stream_of(k0, k1, c0, c1, stream_ptr, None)
    u = uniform_from_words(philox_block(seed, counter, start, BLOCK))
    store_block(out_ptr, i, u, n, ok, MASKED)


def philox_uniform_triton(seed, offset, stream, out) -> None:
    n = out.numel()
    if n:
        split_launch(_philox_uniform_kernel, n, BLOCK, out, n, *stream_args(seed, offset), stream,
                     masked_only=stream is not None, **LAUNCH)


@jit
def _pack_bits_kernel(codes_ptr, out_ptr, n, nbytes, first_block, BITS: tl.constexpr,
                      MASKED: tl.constexpr, BLOCK: tl.constexpr):
    start, i = block_range(first_block, BLOCK)
    codes = load_block(codes_ptr, i, n, MASKED).to(tl.int32)
    store_bytes(out_ptr, pack_codes(codes, BITS, BLOCK), start, nbytes, True, BITS, BLOCK, MASKED)


def pack_bits_triton(codes, bits, out) -> None:
    n = codes.numel()
    if n:
        split_launch(_pack_bits_kernel, n, BLOCK, codes, out, n, out.numel(), BITS=bits, **LAUNCH)


@jit
def _unpack_bits_kernel(payload_ptr, out_ptr, n, nbytes, flag_ptr, first_block,
                        BITS: tl.constexpr, MASKED: tl.constexpr, BLOCK: tl.constexpr):
    start, i = block_range(first_block, BLOCK)
    check_padding(payload_ptr, n, nbytes, flag_ptr, BITS, MASKED)
    codes = load_codes(payload_ptr, start, nbytes, BITS, BLOCK, MASKED)
    store_block(out_ptr, i, codes.to(tl.uint8), n, True, MASKED)


def unpack_bits_triton(payload, bits, out, flag) -> None:
    n = out.numel()
    if n:
        split_launch(_unpack_bits_kernel, n, BLOCK, payload, out, n, payload.numel(), flag,
                     BITS=bits, **LAUNCH)
