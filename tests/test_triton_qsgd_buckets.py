"""How the Triton QSGD decode and pack kernels find an element's bucket when d is not a
power of two (moniqua_kernels/triton/qsgd.py, _per_bucket): one 64-bit division a
program, then per element either one compare between two scalar loads (d >= BLOCK) or a
float32 reciprocal with one correction each way (d < BLOCK).

The reciprocal path is checked for every d < BLOCK and every offset t < d + BLOCK it can
see, in numpy float32 with the kernel's operations (exhaustive: the argument that the
estimate is off by at most one holds here, not just on a sample), and with the
reciprocal off by up to 64 ulps either way (what the correction tolerates).  The kernel
helper itself then runs (interpreter without a GPU) on blocks at many starts.
"""
from __future__ import annotations

import collections

import numpy as np
import pytest
import torch

triton = pytest.importorskip("triton")
import triton.language as tl  # noqa: E402

from moniqua_kernels.triton._common import BLOCK  # noqa: E402
from moniqua_kernels.triton.qsgd import (BUCKET_RECIP, BUCKET_TWO, _bucket_mode,  # noqa: E402
                                         _per_bucket)


def _reciprocal_estimate(t: np.ndarray, d: int, ulps: int = 0,
                         correct: bool = True) -> np.ndarray:
    """The kernel's arithmetic: floor(float32(t) * float32(1/d)), corrected each way."""
    inv_d = np.array(np.float32(1.0) / np.float32(d), dtype=np.float32)
    inv_d = (inv_d.view(np.int32) + np.int32(ulps)).view(np.float32)  # `ulps` ulps off
    t32 = t.astype(np.int32)
    est = (t32.astype(np.float32) * inv_d).astype(np.int32)
    if correct:
        est += ((est + 1) * d <= t32).astype(np.int32)
        est -= (est * d > t32).astype(np.int32)
    return est


def test_reciprocal_estimate_is_exact_for_every_offset():
    t = np.arange(2 * BLOCK, dtype=np.int64)
    wrong, uncorrected = [], collections.Counter()
    for d in range(1, BLOCK):
        want = t[: d + BLOCK] // d
        for ulps in (0, 64, -64):
            got = _reciprocal_estimate(t[: d + BLOCK], d, ulps)
            if not np.array_equal(got, want):
                wrong.append((d, ulps, int(np.argmax(got != want))))
        raw = _reciprocal_estimate(t[: d + BLOCK], d, correct=False) - want
        uncorrected.update(int(e) for e in np.unique(raw) if e != 0)
        uncorrected["d"] += bool(raw.any())
    assert not wrong, wrong[:5]
    # Without the correction (what the kernel's comment says): one too low, for 568 d.
    assert uncorrected == {-1: uncorrected[-1], "d": 568} and uncorrected[-1] > 0


def test_bucket_modes():
    assert _bucket_mode(512, BLOCK) == 9 and _bucket_mode(1, BLOCK) == 0
    assert _bucket_mode(BLOCK * 4, BLOCK) == 14
    assert _bucket_mode(100, BLOCK) == BUCKET_RECIP.value == _bucket_mode(BLOCK - 1, BLOCK)
    assert _bucket_mode(BLOCK + 1, BLOCK) == BUCKET_TWO.value == _bucket_mode(10 ** 9 + 7, BLOCK)


@triton.jit
def _buckets_kernel(table_ptr, q_first, out_ptr, base, n, d, D_MODE: tl.constexpr,
                    MASKED: tl.constexpr, BLOCK: tl.constexpr):
    """_per_bucket over a table of buckets q_first, q_first + 1, ... (value q - q_first)."""
    start = base + tl.program_id(0).to(tl.int64) * BLOCK
    i = start + tl.arange(0, BLOCK)
    tl.store(out_ptr + tl.program_id(0) * BLOCK + tl.arange(0, BLOCK),
             _per_bucket(table_ptr - q_first, i, start, n, d, D_MODE, MASKED, BLOCK))


@pytest.mark.parametrize("d", (3, 7, 41, 100, 1000, 2049, 3000, 4082, BLOCK - 1, BLOCK + 1,
                               9000, 3 * 2 ** 31 + 5))
@pytest.mark.parametrize("masked", (True, False), ids=("masked", "full"))
def test_kernel_buckets(d, masked):
    """Blocks starting anywhere (programs at base + k * BLOCK, base past 2^32 too), the
    last one cut by n where masked: every element gets bucket i // d's entry, 0 past n.  At d = 41 and
    4082 the uncorrected estimate floor(t * (1/d)) is one too low at t = d (and other
    multiples of d)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    programs = 6
    for base in (0, 5, d - 1, 7 * d + 3, 2 ** 33 + 11):
        n = base + programs * BLOCK - (5 if masked else 0)
        i = base + torch.arange(programs * BLOCK, dtype=torch.int64)
        q_first = base // d
        table = torch.arange((n - 1) // d - q_first + 1, dtype=torch.float32, device=device)
        out = torch.empty(programs * BLOCK, dtype=torch.float32, device=device)
        _buckets_kernel[(programs,)](table, q_first, out, base, n, d,
                                     D_MODE=_bucket_mode(d, BLOCK), MASKED=masked, BLOCK=BLOCK)
        want = torch.where(i < n, i // d - q_first, 0).to(torch.float32)
        assert torch.equal(out.cpu(), want), (d, base)
