"""Scaled sign (DESIGN.md section 6) in Triton: bits and |x| partial sums in one pass.

Each program writes its block's sum of |x| (float32); a one-program kernel adds the
partial sums in a fixed order and divides by float32(n) with IEEE division, on the same
stream (no host synchronisation).  The bits are exact; the scale agrees with the
reference within float32 summation-order rounding, as DESIGN.md allows.  A NaN/inf in
x makes its block's partial sum non-finite: only such blocks are counted for the flag.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import (BLOCK, LAUNCH, NON_FINITE, block_range, check_padding, count_bad, f32,
                      jit, load_block, load_codes, pack_codes, split_launch, store_block,
                      store_bytes)


@jit
def _sign_encode_kernel(x_ptr, out_ptr, partial_ptr, flag_ptr, n, nbytes, first_block,
                        MASKED: tl.constexpr, BLOCK: tl.constexpr):
    start, i = block_range(first_block, BLOCK)
    v = load_block(x_ptr, i, n, MASKED).to(tl.float32)
    bit = (v < 0).to(tl.int32)  # masked tail loads 0.0: bit 0, |v| 0
    store_bytes(out_ptr, pack_codes(bit, 1, BLOCK), start, nbytes, True, 1, BLOCK, MASKED)
    total = tl.sum(tl.abs(v), axis=0)
    tl.store(partial_ptr + tl.program_id(0) + first_block, total)
    if flag_ptr is not None:
        total_bad = (tl.abs(total) < float("inf")) == 0  # NaN or inf
        if total_bad:
            count_bad(flag_ptr, ~(tl.abs(v) < float("inf")), NON_FINITE)


@triton.jit
def _sign_scale_kernel(partial_ptr, scale_ptr, nparts, n_f32, CHUNK: tl.constexpr):
    total = tl.zeros((), dtype=tl.float32)
    for c in range(0, nparts, CHUNK):
        idx = c + tl.arange(0, CHUNK)
        total = total + tl.sum(tl.load(partial_ptr + idx, mask=idx < nparts, other=0.0), axis=0)
    tl.store(scale_ptr, tl.div_rn(total, n_f32))


def sign_encode_triton(x, scale, payload, flag) -> None:
    n = x.numel()
    if n == 0:
        scale.zero_()
        return
    nparts = triton.cdiv(n, BLOCK)
    partial = torch.empty(nparts, dtype=torch.float32, device=x.device)
    split_launch(_sign_encode_kernel, n, BLOCK, x, payload, partial, flag, n, payload.numel(),
                 **LAUNCH)
    _sign_scale_kernel[(1,)](partial, scale, nparts, f32(float(n)), CHUNK=1024, **LAUNCH)


@jit
def _sign_decode_kernel(scale_ptr, payload_ptr, out_ptr, flag_ptr, n, nbytes, first_block,
                        MASKED: tl.constexpr, BLOCK: tl.constexpr):
    start, i = block_range(first_block, BLOCK)
    check_padding(payload_ptr, n, nbytes, flag_ptr, 1, MASKED)
    bit = load_codes(payload_ptr, start, nbytes, 1, BLOCK, MASKED).to(tl.float32)
    store_block(out_ptr, i, tl.load(scale_ptr) * (1.0 - 2.0 * bit), n, True, MASKED)


def sign_decode_triton(scale, payload, out, flag) -> None:
    n = out.numel()
    if n:
        split_launch(_sign_decode_kernel, n, BLOCK, scale, payload, out, flag, n,
                     payload.numel(), **LAUNCH)
