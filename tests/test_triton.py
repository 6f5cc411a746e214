"""Parity of the Triton backend with the reference (DESIGN.md sections 3-6, 9).

Without a GPU the kernels run through Triton's interpreter on CPU tensors (conftest.py
sets TRITON_INTERPRET=1 before anything imports triton); with one they run compiled
on CUDA tensors.  Every comparison goes through the public ops with the backend forced,
so validation, the registry and the kernels are all on the path.

Payloads, codes, bits and random-k values must be torch.equal to the reference.
Decoded Moniqua values must be within DESIGN.md's 2 float32 ulps of max(|y|, B) (plus
the output dtype's rounding); under the interpreter they must be exactly equal,
because the kernels evaluate the reference's float32 operations in its order.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import moniqua_kernels as mk
from moniqua_kernels import backends
from moniqua_kernels.reference import _ops as reference_ops

triton = pytest.importorskip("triton")
from moniqua_kernels.triton import OPS as TRITON_OPS  # noqa: E402
from moniqua_kernels.triton._common import BLOCK  # noqa: E402

from conftest import requires_cuda  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
INTERPRETED = DEVICE == "cpu"
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# Around the block boundary and the byte boundaries of every bit width, odd tails.
SIZES = (0, 1, 7, 8, 9, BLOCK - 1, BLOCK + 1, 5003)
# (seed, offset): zero, a negative seed (high bit set) with an offset above 2^34, a
# uint64 seed (the same bits as -1 in int64), and a large seed with a 2^40 offset.
STREAMS = ((0, 0), (-(2 ** 62) - 12345, 2 ** 34 + 8), (2 ** 64 - 1, 4),
           (12345678901234567, 2 ** 40 + 4))
MONIQUA_CASES = [(b, r) for b in (1, 2, 4, 8) for r in ("stochastic", "nearest", "dither")
                 if not (b == 1 and r == "stochastic")]

pytestmark = pytest.mark.skipif(
    mk.available("moniqua_encode", DEVICE)["triton"] is not None,
    reason=f"Triton backend unavailable: {mk.available('moniqua_encode', DEVICE)['triton']}")


def both(fn):
    """fn() under the Triton backend and under the reference."""
    with mk.use_backend("triton"):
        got = fn()
    with mk.use_backend("reference"):
        want = fn()
    return got, want


def sample(n: int, dtype, scale: float = 3.0, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, generator=g) * scale).to(dtype).to(DEVICE)


def near(x: torch.Tensor, spread: float, seed: int) -> torch.Tensor:
    """A tensor within `spread` of x: the receiver's reference y."""
    g = torch.Generator().manual_seed(seed)
    noise = (torch.rand(x.numel(), generator=g) * 2 - 1) * spread
    return (x.float().cpu() + noise.reshape(x.shape)).to(x.dtype).to(x.device)


def assert_decoded(got: torch.Tensor, want: torch.Tensor, y: torch.Tensor, modulus: float,
                   what: str) -> None:
    assert got.dtype == want.dtype and got.shape == want.shape, what
    if INTERPRETED:
        diff = (got.float() - want.float()).abs().max() if got.numel() else 0
        assert torch.equal(got, want), f"{what}: max diff {diff}"
        return
    eps32 = torch.finfo(torch.float32).eps
    out_eps = torch.finfo(want.dtype).eps if want.dtype != torch.float32 else 0.0
    tol = 2 * eps32 * torch.clamp(y.float().abs(), min=modulus) + out_eps * want.float().abs()
    err = (got.float() - want.float()).abs()
    assert bool((err <= tol).all()), f"{what}: max excess {(err - tol).max()}"


def test_triton_serves_every_dense_op():
    """Forced 'triton' must resolve to the Triton kernels, not fall back."""
    for op in reference_ops.OPS:
        if op.startswith("topk"):
            continue  # sort-based; served by the reference
        with mk.use_backend("triton"):
            name, fn = backends.select(op, torch.device(DEVICE))
        assert name == "triton" and fn is TRITON_OPS[op], op


# ------------------------------------------------------------------------ known answers

def test_philox_known_answer_and_streams():
    with mk.use_backend("triton"):
        u = mk.philox_uniform(4, 0, 0, DEVICE)
    words = (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)
    assert u.tolist() == [(w >> 8) * 2.0 ** -24 for w in words]
    for seed, offset in STREAMS:
        for n in (1, 9, BLOCK + 3):
            got, want = both(lambda: mk.philox_uniform(n, seed, offset, DEVICE))
            assert torch.equal(got, want), (seed, offset, n)


def test_packing_known_answers():
    with mk.use_backend("triton"):
        packed = mk.pack_bits(torch.tensor([1, 2, 3, 0, 3], dtype=torch.uint8, device=DEVICE), 2)
        assert packed.tolist() == [57, 3]
        bits = (torch.arange(29) % 3 == 0).to(torch.uint8)
        packed1 = mk.pack_bits(bits.to(DEVICE), 1).cpu()
    assert packed1.numpy().tolist() == np.packbits(bits.numpy(), bitorder="little").tolist()


@pytest.mark.parametrize("bits", (1, 2, 4, 8))
def test_pack_unpack_parity(bits):
    for n in SIZES:
        g = torch.Generator().manual_seed(n)
        codes = torch.randint(0, 1 << bits, (n,), generator=g, dtype=torch.uint8).to(DEVICE)
        got, want = both(lambda: mk.pack_bits(codes, bits))
        assert torch.equal(got, want), n
        with mk.use_backend("triton"):
            assert torch.equal(mk.unpack_bits(got, bits, n), codes), n


# ------------------------------------------------------------------------------ Moniqua

@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("bits,rounding", MONIQUA_CASES)
def test_moniqua_encode_decode_parity(bits, rounding, dtype):
    modulus = 0.75
    for k, n in enumerate(SIZES):
        seed, offset = STREAMS[k % len(STREAMS)]
        x = sample(n, dtype, seed=n)
        what = f"n={n} seed={seed} offset={offset}"
        got, want = both(lambda: mk.moniqua_encode(x, modulus, bits, rounding, seed, offset))
        assert torch.equal(got, want), f"encode {what}: {(got != want).sum()} bytes differ"
        y = near(x, 0.3 * modulus, seed=n + 1)
        got, want = both(lambda: mk.moniqua_decode(want, y, modulus, bits, rounding, seed,
                                                   offset))
        assert_decoded(got, want, y, modulus, f"decode {what}")


@pytest.mark.parametrize("bits,rounding", [(1, "dither"), (4, "stochastic"), (8, "nearest")])
def test_moniqua_non_contiguous_and_shaped(bits, rounding):
    base = sample(61 * 37, torch.float32).reshape(61, 37)
    x = base.t()  # non-contiguous, read in row-major order of the transposed view
    assert not x.is_contiguous()
    got, want = both(lambda: mk.moniqua_encode(x, 1.5, bits, rounding, 99, 8))
    assert torch.equal(got, want)
    y = near(x, 0.2, seed=3)
    got, want = both(lambda: mk.moniqua_decode(want, y, 1.5, bits, rounding, 99, 8))
    assert_decoded(got, want, y, 1.5, "decode")


# the interpreter evaluates x * invB with numpy, which warns on the intended overflow
@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning",
                            "ignore:invalid value encountered:RuntimeWarning")
def test_moniqua_non_finite_gives_code_zero():
    """With the finite check off, NaN/inf (and overflow of x * invB) encode as z = 0."""
    x = torch.tensor([float("nan"), float("inf"), -float("inf"), 3e38, 1.0] + [0.3] * 11,
                     device=DEVICE)
    for bits, rounding in ((2, "nearest"), (8, "dither")):
        got, want = both(lambda: mk.moniqua_encode(x, 1e-3, bits, rounding, 5, 0,
                                                   check_finite=False))
        assert torch.equal(got, want), bits


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("bits,rounding", MONIQUA_CASES)
def test_moniqua_mix_parity(bits, rounding, dtype):
    modulus = 2.0
    for k, n in enumerate((1, 9, BLOCK + 1, 5003)):
        x0 = sample(n, dtype, seed=n)
        streams = [STREAMS[(k + j) % len(STREAMS)] for j in range(3)]
        seeds = [s for s, _ in streams]
        offsets = [o for _, o in streams]
        with mk.use_backend("reference"):
            payloads = [mk.moniqua_encode(near(x0, 0.4, seed=n + j), modulus, bits, rounding,
                                          seeds[j], offsets[j]) for j in range(2)]
            own = mk.moniqua_encode(x0, modulus, bits, rounding, seeds[2], offsets[2])
        results = []
        for name in ("triton", "reference"):
            x = x0.clone()
            with mk.use_backend(name):
                mk.moniqua_mix_(x, payloads, [0.3, 0.2], own, modulus, bits, rounding,
                                gamma=0.9, seeds=seeds, offsets=offsets)
            results.append(x)
        # mix error: gamma * sum|w| * (two decodes) of DESIGN's decode tolerance
        assert_decoded(results[0], results[1], x0, 4 * modulus, f"mix n={n}")


def test_moniqua_mix_neighbour_counts_and_non_contiguous():
    modulus, bits, rounding = 1.0, 2, "dither"
    x0 = sample(40 * 30, torch.float32, scale=1.0).reshape(40, 30)
    for count in (0, 1, 3):
        with mk.use_backend("reference"):
            payloads = [mk.moniqua_encode(near(x0, 0.2, j), modulus, bits, rounding, j, 4 * j)
                        for j in range(count)]
            own = mk.moniqua_encode(x0, modulus, bits, rounding, -7, 12)
        outs = []
        for name in ("triton", "reference"):
            x = x0.clone().t()  # non-contiguous: ops.py mixes a contiguous copy
            with mk.use_backend(name):
                mk.moniqua_mix_(x, payloads, [0.25] * count, own, modulus, bits, rounding,
                                gamma=0.5, seeds=list(range(count)) + [-7],
                                offsets=[4 * j for j in range(count)] + [12])
            outs.append(x)
        assert_decoded(outs[0], outs[1], x0.t(), 4 * modulus, f"{count} neighbours")


# --------------------------------------------------------------------------------- QSGD

@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("bits", (2, 4, 8))
@pytest.mark.parametrize("bucket_size", (512, 100, 24), ids=lambda d: f"d{d}")
def test_qsgd_max_parity(bits, bucket_size, dtype):
    """512 and 24 (a masked tile) take the fused one-program-per-bucket kernel, 100 (not
    a multiple of 8: buckets share bytes) the scale-then-pack path."""
    for k, n in enumerate((0, 1, 9, 1023, 5003)):
        if bucket_size == 24 and n > 1023:
            continue  # 600+ one-bucket programs: slow in the interpreter, same code path
        seed, offset = STREAMS[k % len(STREAMS)]
        x = sample(n, dtype, seed=n)
        (s1, p1), (s2, p2) = both(lambda: mk.qsgd_encode(x, bits, bucket_size, "max", seed,
                                                         offset))
        assert torch.equal(s1, s2) and torch.equal(p1, p2), n
        got, want = both(lambda: mk.qsgd_decode(s2, p2, n, bits, bucket_size))
        assert torch.equal(got, want), n


def test_qsgd_large_bucket_chunked():
    """A bucket above the fused tile limit (and one bucket over everything)."""
    x = sample(20000, torch.float32)
    for d in (9000, 20000):
        (s1, p1), (s2, p2) = both(lambda: mk.qsgd_encode(x, 4, d, "max", 3, 2 ** 34))
        assert torch.equal(s1, s2) and torch.equal(p1, p2), d


@pytest.mark.parametrize("bucket_size", (512, 100))
@pytest.mark.parametrize("bits", (2, 8))
def test_qsgd_l2_parity(bits, bucket_size):
    """l2 scales differ only by summation order; codes may then differ by one level, and
    only where the scale differs (DESIGN.md section 6)."""
    n = 5003
    x = sample(n, torch.float32)
    (s1, p1), (s2, p2) = both(lambda: mk.qsgd_encode(x, bits, bucket_size, "l2", 1, 4))
    exact = torch.sqrt(torch.stack([c.double().square().sum()
                                    for c in x.cpu().split(bucket_size)]))
    eps = torch.finfo(torch.float32).eps
    # recursive summation bound: each partial sum rounds once per added term
    assert bool(((s1.cpu().double() - exact).abs() <= bucket_size * eps * exact).all())
    with mk.use_backend("reference"):
        c1 = mk.unpack_bits(p1, bits, n).long()
        c2 = mk.unpack_bits(p2, bits, n).long()
    same_scale = torch.repeat_interleave(s1 == s2, bucket_size)[:n]
    assert torch.equal(c1[same_scale], c2[same_scale])
    top = 1 << (bits - 1)
    assert torch.equal(c1 & top, c2 & top)  # signs agree everywhere
    assert int(((c1 & (top - 1)) - (c2 & (top - 1))).abs().max()) <= 1


# ---------------------------------------------------------------------- sign, random-k

@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_sign_parity(dtype):
    eps = torch.finfo(torch.float32).eps
    for n in SIZES:
        x = sample(n, dtype, seed=n)
        if n > 3:
            x[3] = -0.0  # -0.0 < 0 is false: bit 0
        (s1, p1), (s2, p2) = both(lambda: mk.sign_encode(x))
        assert torch.equal(p1, p2), n
        exact = x.double().abs().sum() / max(n, 1)
        # tree summation error bound, about log2(n) roundings, for both backends
        bound = (math.log2(max(n, 2)) + 2) * eps * float(exact)
        assert abs(float(s1) - float(exact)) <= bound and abs(float(s2) - float(exact)) <= bound
        got, want = both(lambda: mk.sign_decode(s2, p2, n))
        assert torch.equal(got, want), n


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_randomk_parity(dtype):
    for k, n in enumerate((0, 1, 9, BLOCK + 1, 5003)):
        seed, offset = STREAMS[k % len(STREAMS)]
        x = sample(n, dtype, seed=n)
        for ratio in (0.01, 0.3, 1.0):
            got, want = both(lambda: mk.randomk_encode(x, ratio, seed, offset))
            assert torch.equal(got, want), (n, ratio)
            counts = both(lambda: mk.randomk_count(n, ratio, seed, offset, DEVICE))
            assert counts[0] == counts[1] == want.numel()
            for rescale in (False, True):
                got, dense = both(lambda: mk.randomk_decode(want, n, ratio, seed, offset,
                                                            rescale))
                assert torch.equal(got, dense), (n, ratio, rescale)


# ------------------------------------------------------------------------- CUDA only

@requires_cuda
@pytest.mark.parametrize("bits,rounding", [(1, "dither"), (2, "stochastic"), (8, "nearest")])
def test_cuda_large_parity(bits, rounding):
    n = (1 << 24) + 3
    x = sample(n, torch.bfloat16)
    got, want = both(lambda: mk.moniqua_encode(x, 0.5, bits, rounding, -9, 2 ** 36))
    assert torch.equal(got, want)
    y = near(x, 0.1, 1)
    dec = both(lambda: mk.moniqua_decode(want, y, 0.5, bits, rounding, -9, 2 ** 36))
    assert_decoded(*dec, y, 0.5, "decode")
    own = want
    payloads = [mk.moniqua_encode(near(x, 0.1, j), 0.5, bits, rounding, j, 0) for j in (2, 3)]
    outs = []
    for name in ("triton", "reference"):
        xm = x.clone()
        with mk.use_backend(name):
            mk.moniqua_mix_(xm, payloads, [0.5, 0.5], own, 0.5, bits, rounding, 1.0,
                            seeds=[2, 3, -9], offsets=[0, 0, 2 ** 36])
        outs.append(xm)
    assert_decoded(*outs, x, 4 * 0.5, "mix")


@requires_cuda
def test_cuda_above_2_31_elements():
    """n > 2^31 (64-bit indexing), 1-bit dither on bfloat16, against the reference run in
    chunks (chunks of 2^27 elements: whole bytes, offsets multiples of 4)."""
    n = (1 << 31) + 4099
    free, _ = torch.cuda.mem_get_info()
    need = n * 2 * 2 + n // 8 * 2 + (1 << 27) * 64  # x, decoded, payloads, chunk temps
    if free < need:
        pytest.skip(f"needs about {need / 2**30:.1f} GiB of free GPU memory")
    x = torch.empty(n, dtype=torch.bfloat16, device="cuda").uniform_(-4, 4)
    seed, offset, modulus = -(2 ** 40) - 3, 2 ** 33, 1.0
    with mk.use_backend("triton"):
        payload = mk.moniqua_encode(x, modulus, 1, "dither", seed, offset)
    chunk = 1 << 27
    with mk.use_backend("reference"):
        for start in range(0, n, chunk):
            part = x[start:start + chunk]
            want = mk.moniqua_encode(part, modulus, 1, "dither", seed, offset + start)
            assert torch.equal(payload[start // 8:start // 8 + want.numel()], want), start
    y = x  # decode against itself: exercises every element's index arithmetic
    with mk.use_backend("triton"):
        decoded = mk.moniqua_decode(payload, y, modulus, 1, "dither", seed, offset)
    with mk.use_backend("reference"):
        for start in range(0, n, chunk):
            part = payload[start // 8:(min(start + chunk, n) + 7) // 8]
            want = mk.moniqua_decode(part, y[start:start + chunk], modulus, 1, "dither", seed,
                                     offset + start)
            assert_decoded(decoded[start:start + chunk], want, y[start:start + chunk],
                           modulus, f"chunk {start}")
