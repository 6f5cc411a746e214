"""The one parity suite (DESIGN.md section 9): every backend present against the
reference, which is computed once per case.

Backends join by being available: "cpu" (the native kernels), "triton" (compiled on a
GPU, else through Triton's interpreter on CPU tensors, small sizes only), "cuda".  Every
comparison goes through the public ops with the backend forced, so validation, the
registry and the kernels are all on the path.  Rules: codes, bytes, uniforms, random-k
values and top-k outputs are torch.equal; decoded Moniqua values are equal on the CPU
(native and interpreter evaluate the reference's float32 operations in its order) and
within DESIGN.md's 2 float32 ulps of max(|y|, B) on a GPU; the sign scale and QSGD-l2
scales within their summation-order bounds.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import moniqua_kernels as mk
from moniqua_kernels.triton._common import BLOCK as TRITON_BLOCK  # noqa: F401  (needs triton)
from helpers import torch_threads

HAVE_CUDA = torch.cuda.is_available()
GPU = "cuda" if HAVE_CUDA else None


def _backends():
    out = []
    if mk.available("moniqua_encode", "cpu")["cpu"] is None:
        out.append(("cpu", "cpu"))
    triton_device = "cuda" if HAVE_CUDA else "cpu"
    if mk.available("moniqua_encode", triton_device)["triton"] is None:
        out.append(("triton", triton_device))
    if HAVE_CUDA and mk.available("moniqua_encode", "cuda")["cuda"] is None:
        out.append(("cuda", "cuda"))
    return out


BACKENDS = _backends()
IDS = [f"{b}_{d}" for b, d in BACKENDS]  # -k cuda_cuda, triton_cuda, triton_cpu, cpu_cpu
pytestmark = pytest.mark.skipif(not BACKENDS, reason="no backend besides the reference here")
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
MONIQUA = [(b, r) for b in (1, 2, 4, 8) for r in ("stochastic", "nearest", "dither")
           if not (b == 1 and r == "stochastic")]
# Around Triton's block and the native block of 1024, every byte boundary, odd tails.
SIZES = (0, 1, 7, 8, 9, 1023, 4095, 4097, 5003)
LARGE = (1 << 20) + 3
# (seed, offset): zero; a negative seed (high bit set) with an offset above 2^34; a
# uint64 seed; a large seed with a 2^40 offset.
STREAMS = ((0, 0), (-(2 ** 62) - 12345, 2 ** 34 + 8), (2 ** 64 - 1, 4),
           (12345678901234567, 2 ** 40 + 4))
EPS32 = torch.finfo(torch.float32).eps


def interpreted(backend, device):
    return backend == "triton" and device == "cpu"


def skip_large(backend, device, n):
    if interpreted(backend, device) and n > 5003:
        pytest.skip("the Triton interpreter runs large sizes too slowly; same code path")


def sample(n, dtype=torch.float32, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, generator=g) * scale).to(dtype)


def near(x, spread, seed):
    g = torch.Generator().manual_seed(seed)
    noise = (torch.rand(x.numel(), generator=g) * 2 - 1) * spread
    return (x.float() + noise.reshape(x.shape)).to(x.dtype)


def run(backend, fn, *args, **kwargs):
    with mk.use_backend(backend):
        return fn(*args, **kwargs)


_REFERENCE: dict = {}


def reference(key, thunk):
    """The reference's answer to a case, computed once for every backend (the thunk
    makes the call)."""
    if key not in _REFERENCE:
        with mk.use_backend("reference"):
            _REFERENCE[key] = thunk()
    return _REFERENCE[key]


def on(t, device):
    if isinstance(t, (tuple, list)):
        return type(t)(on(v, device) for v in t)
    return t.to(device) if isinstance(t, torch.Tensor) else t


def same(got, want):
    got, want = on(got, "cpu"), on(want, "cpu")  # both may come from a GPU backend
    if isinstance(want, (tuple, list)):
        return all(same(g, w) for g, w in zip(got, want))
    if want.is_floating_point():  # bit patterns: -0.0 and NaN payloads count
        view = torch.int16 if want.element_size() == 2 else torch.int32
        return got.dtype == want.dtype and torch.equal(got.view(view), want.view(view))
    return got.dtype == want.dtype and torch.equal(got, want)


def assert_decoded(got, want, y, modulus, backend, device, what, factor=1.0):
    got = got.cpu()
    if device == "cpu":
        assert same(got, want), f"{what}: max diff {(got.float() - want.float()).abs().max()}"
        return
    out_eps = torch.finfo(want.dtype).eps if want.dtype != torch.float32 else 0.0
    tol = factor * 2 * EPS32 * torch.clamp(y.float().abs(), min=modulus) \
        + out_eps * want.float().abs()
    err = (got.float() - want.float()).abs()
    assert bool((err <= tol).all()), f"{what}: max excess {(err - tol).max()}"


# ---------------------------------------------------------------------------- philox

@pytest.mark.parametrize("backend,device", BACKENDS, ids=IDS)
@pytest.mark.parametrize("n", SIZES + (LARGE,))
def test_philox_uniform(backend, device, n):
    skip_large(backend, device, n)
    for seed, offset in STREAMS:
        want = reference(("philox", n, seed, offset), lambda: mk.philox_uniform(n, seed, offset))
        assert same(run(backend, mk.philox_uniform, n, seed, offset, device), want), (seed, offset)


# --------------------------------------------------------------------------- packing

@pytest.mark.parametrize("backend,device", BACKENDS, ids=IDS)
@pytest.mark.parametrize("bits", (1, 2, 4, 8))
def test_pack_unpack(backend, device, bits):
    for n in SIZES:
        g = torch.Generator().manual_seed(n)
        codes = torch.randint(0, 1 << bits, (n,), generator=g, dtype=torch.uint8)
        want = reference(("pack", bits, n), lambda: mk.pack_bits(codes, bits))
        got = run(backend, mk.pack_bits, codes.to(device), bits)
        assert same(got, want), n
        assert same(run(backend, mk.unpack_bits, got, bits, n), codes), n
    packed = run(backend, mk.pack_bits, torch.tensor([1, 2, 3, 0, 3], dtype=torch.uint8,
                                                     device=device), 2)
    assert packed.tolist() == [57, 3]  # DESIGN.md section 5
    bits1 = (torch.arange(29) % 3 == 0).to(torch.uint8)
    packed1 = run(backend, mk.pack_bits, bits1.to(device), 1).cpu()
    assert packed1.tolist() == np.packbits(bits1.numpy(), bitorder="little").tolist()


# ---------------------------------------------------------------------------- Moniqua

@pytest.mark.parametrize("backend,device", BACKENDS, ids=IDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("bits,rounding", MONIQUA)
def test_moniqua_encode_decode(backend, device, bits, rounding, dtype):
    modulus = 0.75
    for k, n in enumerate(SIZES):
        seed, offset = STREAMS[k % len(STREAMS)]
        x = sample(n, dtype, seed=n)
        y = near(x, 0.3 * modulus, seed=n + 1)
        key = (bits, rounding, dtype, n)
        want = reference(("enc",) + key, lambda: mk.moniqua_encode(x, modulus, bits, rounding,
                                                                   seed, offset))
        got = run(backend, mk.moniqua_encode, x.to(device), modulus, bits, rounding, seed, offset)
        assert same(got, want), f"encode n={n}: {(got.cpu() != want).sum()} bytes differ"
        dec = reference(("dec",) + key, lambda: mk.moniqua_decode(want, y, modulus, bits,
                                                                  rounding, seed, offset))
        got = run(backend, mk.moniqua_decode, want.to(device), y.to(device), modulus, bits,
                  rounding, seed, offset)
        assert_decoded(got, dec, y, modulus, backend, device, f"decode n={n}")


@pytest.mark.parametrize("backend,device", BACKENDS, ids=IDS)
@pytest.mark.parametrize("bits,rounding", [(1, "dither"), (1, "nearest"), (2, "stochastic"),
                                           (8, "dither")])
@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16), ids=str)
def test_moniqua_large(backend, device, bits, rounding, dtype):
    skip_large(backend, device, LARGE)
    x = sample(LARGE, dtype, seed=5)
    y = near(x, 0.2, seed=6)
    key = ("large", bits, rounding, dtype)
    want = reference(key + ("enc",), lambda: mk.moniqua_encode(x, 0.5, bits, rounding, -9,
                                                               2 ** 36))
    assert same(run(backend, mk.moniqua_encode, x.to(device), 0.5, bits, rounding, -9, 2 ** 36),
                want)
    dec = reference(key + ("dec",), lambda: mk.moniqua_decode(want, y, 0.5, bits, rounding, -9,
                                                              2 ** 36))
    got = run(backend, mk.moniqua_decode, want.to(device), y.to(device), 0.5, bits, rounding, -9,
              2 ** 36)
    assert_decoded(got, dec, y, 0.5, backend, device, "decode")


@pytest.mark.parametrize("backend,device", BACKENDS, ids=IDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("bits,rounding", MONIQUA)
def test_moniqua_mix(backend, device, bits, rounding, dtype):
    modulus = 2.0
    for k, n in enumerate((1, 9, 1029, 5003)):
        for count in (0, 1, 2, 3):
            x0 = sample(n, dtype, seed=n)
            streams = [STREAMS[(k + j) % len(STREAMS)] for j in range(count + 1)]
            seeds, offsets = [s for s, _ in streams], [o for _, o in streams]
            key = ("mix", bits, rounding, dtype, n, count)
            payloads = reference(key + ("p",), lambda: [
                mk.moniqua_encode(near(x0, 0.4, seed=n + j), modulus, bits, rounding,
                                  seeds[j], offsets[j]) for j in range(count)])
            own = reference(key + ("own",), lambda: mk.moniqua_encode(
                x0, modulus, bits, rounding, seeds[-1], offsets[-1]))
            weights = [0.3, 0.2, 0.25][:count]

            def mixed():
                x = x0.clone()
                mk.moniqua_mix_(x, payloads, weights, own, modulus, bits, rounding, gamma=0.9,
                                seeds=seeds, offsets=offsets)
                return x
            want = reference(key, mixed)
            x = x0.to(device)
            run(backend, mk.moniqua_mix_, x, on(payloads, device), weights, own.to(device),
                modulus, bits, rounding, gamma=0.9, seeds=seeds, offsets=offsets)
            # gamma * sum|w| * (two decodes) of DESIGN's decode tolerance
            assert_decoded(x, want, x0, modulus, backend, device, f"mix n={n} count={count}",
                           factor=4)


@pytest.mark.parametrize("backend,device", BACKENDS, ids=IDS)
def test_moniqua_mix_large(backend, device):
    skip_large(backend, device, LARGE)
    x0 = sample(LARGE, seed=3)
    pays = reference("mixL-p", lambda: [mk.moniqua_encode(near(x0, 0.1, j), 0.5, 1, "dither", j)
                                        for j in (1, 2)])
    own = reference("mixL-own", lambda: mk.moniqua_encode(x0, 0.5, 1, "dither", 9))

    def mixed():
        x = x0.clone()
        mk.moniqua_mix_(x, pays, [0.5, 0.25], own, 0.5, 1, "dither", 1.0, [1, 2, 9], [0, 0, 0])
        return x
    want = reference("mixL", mixed)
    x = x0.to(device)
    run(backend, mk.moniqua_mix_, x, on(pays, device), [0.5, 0.25], own.to(device), 0.5, 1,
        "dither", 1.0, [1, 2, 9], [0, 0, 0])
    assert_decoded(x, want, x0, 2.0, backend, device, "mix", factor=4)


TRITON = [(b, d) for b, d in BACKENDS if b == "triton"]


@pytest.mark.parametrize("backend,device", TRITON, ids=[f"{b}_{d}" for b, d in TRITON])
@pytest.mark.parametrize("block", (2048, 4096))
@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning",
                            "ignore:invalid value encountered:RuntimeWarning")
def test_moniqua_mix_at_each_block(backend, device, block, monkeypatch):
    """Triton's mix launches with a block of 2048 or 4096 by rounding, check and dtype
    (moniqua.mix_block, from GPU timings): at each, every case gives the reference's
    results: full and masked programs, stream tensors, results that overflow (counted, x
    kept), and a refused stream tensor (flagged once, nothing written)."""
    from moniqua_kernels.triton import moniqua as tm
    monkeypatch.setattr(tm, "mix_block", lambda rounding, checked, element_size: block)
    n, modulus = TRITON_BLOCK + 1029, 2.0
    x0 = sample(n, seed=11)
    for bits, rounding, dtype in ((1, "dither", torch.float32), (8, "nearest", torch.bfloat16),
                                  (2, "stochastic", torch.float16)):
        xd = x0.to(dtype)
        seeds, offsets = [3, -(2 ** 62) - 12345, 12345], [8, 4, 2 ** 40 + 4]
        key = ("mix-blocks", bits, rounding, dtype)
        payloads = reference(key + ("p",), lambda: [
            mk.moniqua_encode(near(xd, 0.4, seed=j), modulus, bits, rounding, seeds[j],
                              offsets[j]) for j in range(2)])
        own = reference(key + ("own",), lambda: mk.moniqua_encode(xd, modulus, bits, rounding,
                                                                  seeds[2], offsets[2]))

        def mixed():
            x = xd.clone()
            mk.moniqua_mix_(x, payloads, [0.3, 0.2], own, modulus, bits, rounding, 0.9, seeds,
                            offsets)
            return x
        want = reference(key, mixed)
        T = lambda v: torch.tensor(v, dtype=torch.int64, device=device)  # noqa: E731
        for s, o in ((seeds, offsets), (T(seeds), T(offsets))):
            x = xd.to(device, copy=True)
            run(backend, mk.moniqua_mix_, x, on(payloads, device), [0.3, 0.2],
                own.to(device), modulus, bits, rounding, 0.9, s, o)
            assert_decoded(x, want, xd, modulus, backend, device,
                           f"{bits}b {rounding} {dtype}", factor=4)
    assert_mix_overflowing_near_max_keeps_x(backend, device, n)
    # one neighbour's stream offset not a multiple of 4: flagged once, x unchanged
    x = x0.to(device, copy=True)
    pay = run(backend, mk.moniqua_encode, x, modulus, 1, "dither", 5, 0)
    seeds, offsets = torch.tensor([1, 5], device=device), torch.tensor([6, 0], device=device)
    with pytest.raises(mk.KernelInputError, match=r"not a multiple of 4 \(1 call"):
        run(backend, mk.moniqua_mix_, x, [pay], [0.5], pay, modulus, 1, "dither", 1.0, seeds,
            offsets)
        mk.check_errors()
    assert torch.equal(x.cpu(), x0)


@pytest.mark.parametrize("backend,device", BACKENDS, ids=IDS)
@pytest.mark.parametrize("bits,rounding", [(1, "dither"), (4, "stochastic"), (8, "nearest")])
def test_moniqua_non_contiguous_and_views(backend, device, bits, rounding):
    """A transposed input (read in row-major order), a misaligned view (buf[1:]), an out=
    view, and a non-contiguous in-place mix."""
    base = sample(61 * 37, seed=1).reshape(61, 37)
    x = base.t()
    want = reference(("nc", bits, rounding), lambda: mk.moniqua_encode(x, 1.5, bits, rounding,
                                                                       99, 8))
    got = run(backend, mk.moniqua_encode, x.to(device), 1.5, bits, rounding, 99, 8)
    assert same(got, want)
    buf = torch.cat([torch.zeros(1), x.reshape(-1)]).to(device)
    got = run(backend, mk.moniqua_encode, buf[1:], 1.5, bits, rounding, 99, 8)
    assert same(got, want)
    out = torch.full((want.numel() + 3,), 0xAA, dtype=torch.uint8, device=device)
    got = run(backend, mk.moniqua_encode, buf[1:], 1.5, bits, rounding, 99, 8, out=out[3:])
    assert got.data_ptr() == out[3:].data_ptr() and same(out[3:], want)
    assert out[:3].tolist() == [0xAA] * 3
    y = near(x, 0.2, seed=3)
    dec = reference(("ncd", bits, rounding), lambda: mk.moniqua_decode(want, y, 1.5, bits,
                                                                       rounding, 99, 8))
    got = run(backend, mk.moniqua_decode, want.to(device), y.to(device), 1.5, bits, rounding, 99, 8)
    assert got.shape == y.shape
    assert_decoded(got, dec, y, 1.5, backend, device, "decode")
    own = want

    def mixed():
        xm = x.clone()
        mk.moniqua_mix_(xm, [own], [0.5], own, 1.5, bits, rounding, 1.0, [99, 99], [8, 8])
        return xm
    ref_mix = reference(("ncm", bits, rounding), mixed)
    xm = x.clone() if device == "cpu" else x.to(device)  # both keep the transposed strides
    assert not xm.is_contiguous()
    run(backend, mk.moniqua_mix_, xm, [own.to(device)], [0.5], own.to(device), 1.5, bits,
        rounding, 1.0, [99, 99], [8, 8])
    assert_decoded(xm, ref_mix, x, 1.5, backend, device, "mix", factor=4)


@pytest.mark.parametrize("backend,device", BACKENDS, ids=IDS)
@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning",
                            "ignore:invalid value encountered:RuntimeWarning")
def test_non_finite_counted_exactly(backend, device):
    """Every op that checks its data counts the non-finite elements exactly: NaN, inf and
    -inf in different Triton programs (blocks of 4096, the last one masked; buckets of
    512, and of 100 on the scale-then-pack path), and no other element; clean data raises
    nothing.  Triton finds them by the sum of v per program and only then counts
    (flag_non_finite); the mix leaves them as they were."""
    n = 2 * 4096 + 100
    bad_at = [5, 4096 + 7, 2 * 4096 + 99]
    x = sample(n, scale=1.0)
    x[bad_at] = torch.tensor([float("nan"), float("inf"), -float("inf")])
    clean = sample(n, seed=1, scale=1.0).to(device)
    payload = run(backend, mk.moniqua_encode, clean, 4.0, 2, "dither", 3, 0)

    def calls(v):
        return {
            "moniqua_encode": lambda: mk.moniqua_encode(v, 4.0, 2, "dither", 3, 0),
            "moniqua_decode": lambda: mk.moniqua_decode(payload, v, 4.0, 2, "dither", 3, 0),
            "moniqua_mix_": lambda: mk.moniqua_mix_(v.clone(), [payload], [0.5], payload, 4.0,
                                                    2, "dither", 1.0, [3, 3], [0, 0]),
            "qsgd_encode d=512": lambda: mk.qsgd_encode(v, 4, 512),
            "qsgd_encode d=100": lambda: mk.qsgd_encode(v, 4, 100),
            "sign_encode": lambda: mk.sign_encode(v),
        }

    for name, call in calls(x.to(device)).items():
        with pytest.raises(ValueError, match=r"\b3 non-finite"):
            run(backend, call)
            mk.check_errors()  # CUDA tensors: the flag surfaces here
    for name, call in calls(clean).items():
        run(backend, call)
        mk.check_errors()
    mixed = x.to(device)
    with pytest.raises(ValueError, match=r"\b3 non-finite"):
        run(backend, mk.moniqua_mix_, mixed, [payload], [0.5], payload, 4.0, 2, "dither", 1.0,
            [3, 3], [0, 0])
        mk.check_errors()
    got = on(mixed, "cpu")[bad_at]
    assert torch.isnan(got[0]) and got[1] == float("inf") and got[2] == -float("inf")


@pytest.mark.parametrize("backend,device", BACKENDS, ids=IDS)
@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning",
                            "ignore:invalid value encountered:RuntimeWarning")
def test_large_finite_values_are_not_counted(backend, device):
    """Finite values whose sum over a Triton program overflows (Triton's probe is that
    sum, flag_non_finite: an overflowed probe only makes the program count exactly) are
    not counted, and give the reference's bytes."""
    n = 4096 + 100
    x = (sample(n, scale=1.0).sign() * 1e38).to(device)
    x[: n // 2] = 3e38
    for name, call in {
        "moniqua_encode": lambda v: mk.moniqua_encode(v, 4.0, 2, "dither", 3, 0),
        "moniqua_decode": lambda v: mk.moniqua_decode(mk.moniqua_encode(v, 4.0, 2, "dither", 3,
                                                                        0), v, 4.0, 2, "dither",
                                                      3, 0),
        "qsgd_encode d=512": lambda v: mk.qsgd_encode(v, 4, 512, "max", 1, 0),
        "sign_encode": lambda v: mk.sign_encode(v),
    }.items():
        got = run(backend, call, x)
        mk.check_errors()
        assert same(got, reference(("large finite", name), lambda: call(x.cpu()))), name


@pytest.mark.parametrize("backend,device", BACKENDS, ids=IDS)
@pytest.mark.parametrize("dtype,big,modulus", [(torch.float16, 65000.0, 2e4),
                                               (torch.bfloat16, 3.38e38, 1e38)])
@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning",
                            "ignore:invalid value encountered:RuntimeWarning")
def test_results_overflowing_their_dtype_are_counted(backend, device, dtype, big, modulus):
    """A decoded or mixed result that is finite in float32 but not in its own dtype (it
    rounds to inf when stored) counts as not finite, as the reference counts it, and the
    mix keeps x there."""
    n = 4096 + 100
    y = torch.full((n,), big).to(dtype)
    y[::3] = 1.0
    sender = torch.full((n,), 3.4e38 if dtype == torch.bfloat16 else 71000.0)
    sender[::3] = 1.5
    payload = run(backend, mk.moniqua_encode, sender.to(device), modulus, 8, "nearest",
                  check_finite=False)
    own = run(backend, mk.moniqua_encode, y.float().to(device), modulus, 8, "nearest",
              check_finite=False)
    with pytest.raises(ValueError, match=rf"\b{n - len(y[::3])} non-finite"):
        run(backend, mk.moniqua_decode, payload, y.to(device), modulus, 8, "nearest")
        mk.check_errors()
    assert_mix_keeps_x_where_every_third_is_finite(backend, device, y, payload, own, modulus,
                                                   1.0)


@pytest.mark.parametrize("backend,device", BACKENDS, ids=IDS)
@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning",
                            "ignore:invalid value encountered:RuntimeWarning")
def test_bfloat16_results_keep_nan_unchecked(backend, device):
    """check_finite=False: a bfloat16 decode or mix whose result is NaN stores NaN (on the
    GPU Triton rounds with cvt.rn and puts NaN back by a select, round_to), and every other
    element the reference's bytes.  NaN payloads are not compared: a GPU's float
    arithmetic makes its NaN canonical."""
    n = 4096 + 100
    y = sample(n, scale=1.0).to(torch.bfloat16)
    y[[3, 4096 + 5]] = torch.tensor([float("nan"), -float("nan")], dtype=torch.bfloat16)
    payload = run(backend, mk.moniqua_encode, sample(n, seed=2, scale=1.0).to(device), 4.0,
                  1, "nearest", check_finite=False)
    decode = run(backend, mk.moniqua_decode, payload, y.to(device), 4.0, 1, "nearest",
                 check_finite=False)
    mixed = y.to(device)
    run(backend, mk.moniqua_mix_, mixed, [payload], [0.5], payload, 4.0, 1, "nearest", 1.0,
        check_finite=False)
    with mk.use_backend("reference"):
        want_decode = mk.moniqua_decode(payload.cpu(), y, 4.0, 1, "nearest", check_finite=False)
        want_mixed = mk.moniqua_mix_(y.clone(), [payload.cpu()], [0.5], payload.cpu(), 4.0, 1,
                                     "nearest", 1.0, check_finite=False)
    for got, want in ((on(decode, "cpu"), want_decode), (on(mixed, "cpu"), want_mixed)):
        nan = torch.isnan(want)
        assert nan.sum() == 2 and torch.equal(torch.isnan(got), nan)
        assert same(got[~nan], want[~nan])


@pytest.mark.parametrize("backend,device", BACKENDS, ids=IDS)
@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning",
                            "ignore:invalid value encountered:RuntimeWarning")
def test_mix_result_overflowing_keeps_x(backend, device):
    """Finite x whose mixed result overflows: those elements are counted and keep x (Triton
    reads x again for them, moniqua_mix_'s kernel), in a full and in a masked program."""
    assert_mix_overflowing_near_max_keeps_x(backend, device, 4096 + 100)


def assert_mix_overflowing_near_max_keeps_x(backend, device, n):
    """x near float32's maximum, but every third element 1.0, mixed with a neighbour
    nearer the maximum: all but every third result overflow (as below)."""
    x = torch.full((n,), 3.3e38)
    x[::3] = 1.0
    near_max = torch.full((n,), 3.39e38)
    near_max[::3] = 1.5
    own, theirs = (run(backend, mk.moniqua_encode, v.to(device), 1e38, 8, "nearest",
                       check_finite=False) for v in (x, near_max))
    assert_mix_keeps_x_where_every_third_is_finite(backend, device, x, theirs, own, 1e38, 10.0)


def assert_mix_keeps_x_where_every_third_is_finite(backend, device, x, theirs, own, modulus,
                                                   weight):
    """Mixing theirs into x (8 bits, nearest) overflows every element but each third one
    (x[::3]): those are counted, keep x, and every result is finite."""
    n = x.numel()
    mixed = x.to(device)
    with pytest.raises(ValueError, match=rf"\b{n - len(x[::3])} non-finite"):
        run(backend, mk.moniqua_mix_, mixed, [theirs], [weight], own, modulus, 8, "nearest",
            1.0)
        mk.check_errors()
    got = on(mixed, "cpu")
    overflowed = torch.ones(n, dtype=torch.bool)
    overflowed[::3] = False
    assert torch.equal(got[overflowed], x[overflowed]) and torch.isfinite(got).all()


@pytest.mark.parametrize("backend,device", BACKENDS, ids=IDS)
@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16), ids=str)
def test_negative_subnormal_where_u_is_zero(backend, device, dtype):
    """t = x / B a negative subnormal at a stream position that draws u = 0: floor(t) =
    -1, z = t + 1 rounds to 1.0, and the code wraps to 0.  A floor that flushes
    subnormals (tl.floor compiled for a GPU is cvt.rmi.ftz) gives z = t < 0 and the code
    2^b - 1, the only way that flush shows (any u > 0 absorbs z).  Seed 5 draws u = 0 at
    position 11681449, found by searching philox_words."""
    from moniqua_kernels.reference.moniqua import encode_codes
    from moniqua_kernels.reference.philox import philox_uniform
    seed, offset = 5, 11681448  # element 1 of the call sits at position 11681449
    assert philox_uniform(2, seed, offset)[1].item() == 0.0
    x = torch.tensor([0.3, -1e-40, 2.0, -7.0], dtype=dtype)
    assert x[1] < 0 and x[1].float().abs() < torch.finfo(torch.float32).tiny
    for bits, rounding in ((1, "dither"), (2, "stochastic"), (8, "dither")):
        assert encode_codes(x, 1.0, bits, rounding, seed, offset)[1] == 0
        want = reference(("subnormal", dtype, bits, rounding), lambda: mk.moniqua_encode(
            x, 1.0, bits, rounding, seed, offset))
        got = run(backend, mk.moniqua_encode, x.to(device), 1.0, bits, rounding, seed, offset)
        assert same(got, want), (bits, rounding)


@pytest.mark.parametrize("backend,device", BACKENDS, ids=IDS)
@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning",
                            "ignore:invalid value encountered:RuntimeWarning")
def test_moniqua_non_finite_gives_code_zero(backend, device):
    """With the finite check off, NaN/inf (and overflow of x * invB) encode as z = 0."""
    x = torch.tensor([float("nan"), float("inf"), -float("inf"), 3e38, 1.0] + [0.3] * 11)
    for bits, rounding in ((2, "nearest"), (8, "dither")):
        want = reference(("nf", bits), lambda: mk.moniqua_encode(x, 1e-3, bits, rounding, 5, 0,
                                                                 check_finite=False))
        got = run(backend, mk.moniqua_encode, x.to(device), 1e-3, bits, rounding, 5, 0,
                  check_finite=False)
        assert same(got, want), bits


# ------------------------------------------------------------------------------- QSGD

@pytest.mark.parametrize("backend,device", BACKENDS, ids=IDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("bits", (2, 4, 8))
@pytest.mark.parametrize("bucket_size", (512, 100, 24, 7), ids=lambda d: f"d{d}")
def test_qsgd_max(backend, device, bits, bucket_size, dtype):
    """512 and 24 take Triton's one-program-per-bucket kernel, 100 and 7 (buckets share
    bytes) the scale-then-pack path."""
    for k, n in enumerate((0, 1, 9, 1023, 5003)):
        if interpreted(backend, device) and bucket_size in (24, 7) and n > 1023:
            # one program per bucket, run one by one: 5003 elements are 209 programs
            # (~3.5 s a case) at 24, 715 at 7 (1.9 s of a 2.6 s case); 1023 has 43 and
            # 147 with a partial last bucket, the same path.  A GPU runs every size.
            continue
        seed, offset = STREAMS[k % len(STREAMS)]
        x = sample(n, dtype, seed=n)
        key = ("qsgd", bits, bucket_size, dtype, n)
        want = reference(key, lambda: mk.qsgd_encode(x, bits, bucket_size, "max", seed, offset))
        got = run(backend, mk.qsgd_encode, x.to(device), bits, bucket_size, "max", seed, offset)
        assert same(got, want), n
        dec = reference(key + ("dec",), lambda: mk.qsgd_decode(*want, n, bits, bucket_size))
        assert same(run(backend, mk.qsgd_decode, *on(want, device), n, bits, bucket_size), dec), n


@pytest.mark.parametrize("backend,device", BACKENDS, ids=IDS)
@pytest.mark.parametrize("bucket_size", (8, 40, 64, 512, 1000, 1024, 16384),
                         ids=lambda d: f"d{d}")
def test_qsgd_launch_shapes(backend, device, bucket_size):
    """Whole buckets only (n a multiple of d: no masked launch), and whole buckets plus a
    partial one; on CUDA C++ d <= 512 is the one-pass kernel with a bucket in a warp,
    1024 with a bucket across two warps, 16384 the two-kernel path (two scale pieces a
    bucket), as on Triton (above FUSED_MAX_BUCKET).  Triton runs the full buckets of 40
    and 1000 (not powers of two) in a tile of 64 and 1024 with the lanes past d masked.
    Decode, and Triton's two-kernel encode, find a bucket by a shift at the powers of
    two, by a reciprocal at 40 and 1000."""
    for bits in (2, 8):
        for n in (3 * bucket_size, 3 * bucket_size + 5):
            x = sample(n, seed=n + bits)
            key = ("qsgd-shape", bits, bucket_size, n)
            want = reference(key, lambda: mk.qsgd_encode(x, bits, bucket_size, "max", 11, 4))
            got = run(backend, mk.qsgd_encode, x.to(device), bits, bucket_size, "max", 11, 4)
            assert same(got, want), (bits, n)
            dec = reference(key + ("dec",), lambda: mk.qsgd_decode(*want, n, bits, bucket_size))
            assert same(run(backend, mk.qsgd_decode, *on(want, device), n, bits, bucket_size),
                        dec), (bits, n)


@pytest.mark.parametrize("backend,device", BACKENDS, ids=IDS)
def test_qsgd_large_and_big_buckets(backend, device):
    skip_large(backend, device, LARGE)
    x = sample(LARGE, seed=7)
    for d in (512, 9000):
        want = reference(("qsgdL", d), lambda: mk.qsgd_encode(x, 4, d, "max", 3, 2 ** 34))
        assert same(run(backend, mk.qsgd_encode, x.to(device), 4, d, "max", 3, 2 ** 34), want), d


@pytest.mark.parametrize("backend,device", BACKENDS, ids=IDS)
@pytest.mark.parametrize("norm", ("max", "l2"))
def test_qsgd_buckets_of_several_scale_pieces(backend, device, norm):
    """Buckets above the scale piece (8192 elements on both GPU backends, 65536 on the CPU)
    are reduced in pieces and combined: QSGD unbucketed (d = n: 25 GPU pieces, 4 CPU
    pieces, the last partial), and d = 20000 (three GPU pieces; the last bucket of 5
    elements has one piece with data and two empty ones).  max: exact; l2: within the
    summation bound, codes as test_qsgd_l2 allows."""
    for n, d in ((3 * 65536 + 77, 3 * 65536 + 77), (2 * 20000 + 5, 20000)):
        x = sample(n, seed=d)
        got = on(run(backend, mk.qsgd_encode, x.to(device), 4, d, norm, 5, 8), "cpu")
        want = reference(("qsgd-pieces", norm, n, d),
                         lambda: mk.qsgd_encode(x, 4, d, norm, 5, 8))
        if norm == "max":
            assert same(got, want), d
            continue
        exact = torch.sqrt(torch.stack([c.double().square().sum() for c in x.split(d)]))
        assert bool(((got[0].double() - exact).abs() <= d * EPS32 * exact).all()), d
        with mk.use_backend("reference"):
            c1, c2 = (mk.unpack_bits(p, 4, n).long() for p in (got[1], want[1]))
        assert torch.equal(c1 & 8, c2 & 8) and int(((c1 & 7) - (c2 & 7)).abs().max()) <= 1


@pytest.mark.skipif(("cpu", "cpu") not in BACKENDS, reason="the native CPU kernels are not built")
@pytest.mark.parametrize("bucket_size", (16, 128, 512, 4096, 1000, 8))
def test_qsgd_cpu_one_pass_for_any_thread_count(bucket_size):
    """The CPU encodes QSGD in one pass over chunks of whole buckets (a block of 64
    buckets at 16, 8 at 128, 2 at 512; a bucket of 4 blocks at 4096; 1000 and 8 keep two
    passes):
    the reference's bytes from 1, 3 and 7 threads, the last chunk partial; l2 the same
    bytes for every thread count; the Elias stream, which codes the same way, too."""
    n = (1 << 18) + 5
    x = sample(n, seed=bucket_size)
    want = reference(("qsgd-threads", bucket_size),
                     lambda: mk.qsgd_encode(x, 4, bucket_size, "max", 9, 4))
    got = []
    with mk.use_backend("cpu"):
        for threads in (1, 3, 7):
            with torch_threads(threads):
                got.append((mk.qsgd_encode(x, 4, bucket_size, "max", 9, 4),
                            mk.qsgd_encode(x, 4, bucket_size, "l2", 9, 4),
                            mk.qsgd_elias_encode(x, 4, bucket_size, "max", 9, 4)))
    for max_norm, l2, elias in got:
        assert same(max_norm, want)
        assert same(l2, got[0][1]) and same(elias, got[0][2])
    assert torch.equal(got[0][2][0], want[0])


@pytest.mark.parametrize("backend,device", BACKENDS, ids=IDS)
def test_stream_tensors_match_ints(backend, device):
    """Seeds and offsets as int64 tensors on the device (what CUDA graphs and
    torch.compile pass; the kernel reads them) give the bytes of the same ints, for every
    op that draws a stream and every launch shape (full and masked Triton blocks, both
    QSGD paths)."""
    n, B = 1000 + 3, 4.0
    x, y = sample(n).to(device), near(sample(n), 1.0, 1).to(device)
    T = lambda v: torch.tensor(v, dtype=torch.int64, device=device)  # noqa: E731
    seed, offset = STREAMS[1]
    calls = {
        "philox": lambda s, o: mk.philox_uniform(n, s, o, device=device),
        "encode": lambda s, o: mk.moniqua_encode(x, B, 2, "dither", s, o),
        "decode": lambda s, o: mk.moniqua_decode(mk.moniqua_encode(x, B, 2, "dither", 5, 8),
                                                 y, B, 2, "dither", s, o),
        "qsgd512": lambda s, o: mk.qsgd_encode(x, 4, 512, "max", s, o),
        "qsgd100": lambda s, o: mk.qsgd_encode(x, 4, 100, "max", s, o),
        "qsgd20000": lambda s, o: mk.qsgd_encode(x, 4, 20000, "l2", s, o),  # scale pieces
    }
    for name, call in calls.items():
        assert same(run(backend, call, T(seed), T(offset)), run(backend, call, seed, offset)), name
    payloads = [run(backend, mk.moniqua_encode, x + 0.1 * j, B, 2, "dither", 7 + j, 4 * j)
                for j in range(3)]
    seeds, offsets = [7, 8, 9], [0, 4, 8]
    mixed = []
    for s, o in ((seeds, offsets), (T(seeds), T(offsets))):
        z = y.clone()
        run(backend, mk.moniqua_mix_, z, payloads[:2], [0.25, 0.5], payloads[2], B, bits=2,
            gamma=0.5, seeds=s, offsets=o)
        mixed.append(z)
    assert same(mixed[1], mixed[0])


@pytest.mark.parametrize("backend,device", BACKENDS, ids=IDS)
@pytest.mark.parametrize("bucket_size", (512, 24, 100, 9000))
def test_qsgd_refused_stream_writes_nothing(backend, device, bucket_size):
    """A stream tensor whose offset is not a multiple of 4 is refused by the kernel, which
    reads it on the device: flagged, and neither the scales nor the codes are written
    (every launch shape: one pass at 512 and 24, two kernels at 100 on Triton; CUDA
    C++ takes two kernels at 24 and 100; 9000, a bucket in two scale pieces, three)."""
    n = 10000
    x = sample(n).to(device)
    scales = torch.full((math.ceil(n / bucket_size),), 7.0, device=device)
    payload = torch.full((math.ceil(n * 4 / 8),), 0xAA, dtype=torch.uint8, device=device)
    seed, offset = torch.tensor(3, device=device), torch.tensor(6, device=device)
    with pytest.raises(mk.KernelInputError, match="not a multiple of 4"):
        run(backend, mk.qsgd_encode, x, 4, bucket_size, "max", seed, offset,
            out=(scales, payload))
        mk.check_errors()  # CUDA tensors: the flag surfaces here
    assert bool((scales == 7.0).all()) and bool((payload == 0xAA).all())


@pytest.mark.parametrize("backend,device", BACKENDS, ids=IDS)
@pytest.mark.parametrize("bucket_size", (512, 100))
@pytest.mark.parametrize("bits", (2, 8))
def test_qsgd_l2(backend, device, bits, bucket_size):
    """l2 scales differ only by summation order; codes may then differ by one level, and
    only where the scale differs (DESIGN.md section 6)."""
    n = 5003
    x = sample(n)
    s1, p1 = on(run(backend, mk.qsgd_encode, x.to(device), bits, bucket_size, "l2", 1, 4), "cpu")
    s2, p2 = reference(("l2", bits, bucket_size), lambda: mk.qsgd_encode(x, bits, bucket_size,
                                                                         "l2", 1, 4))
    exact = torch.sqrt(torch.stack([c.double().square().sum() for c in x.split(bucket_size)]))
    # recursive summation bound: each partial sum rounds once per added term
    assert bool(((s1.double() - exact).abs() <= bucket_size * EPS32 * exact).all())
    with mk.use_backend("reference"):
        c1, c2 = (mk.unpack_bits(p, bits, n).long() for p in (p1, p2))
    same_scale = torch.repeat_interleave(s1 == s2, bucket_size)[:n]
    assert torch.equal(c1[same_scale], c2[same_scale])
    top = 1 << (bits - 1)
    assert torch.equal(c1 & top, c2 & top)  # signs agree everywhere
    assert int(((c1 & (top - 1)) - (c2 & (top - 1))).abs().max()) <= 1


# ------------------------------------------------------------------ QSGD, Elias-coded

def _serves_elias(backend, device):
    if mk.available("qsgd_elias_encode", device)[backend] is not None:
        pytest.skip(f"{backend} has no Elias kernel (the reference serves {device})")


@pytest.mark.parametrize("backend,device", BACKENDS, ids=IDS)
@pytest.mark.parametrize("bits", (2, 4, 8))
def test_qsgd_elias_max(backend, device, bits):
    """Bytes equal; the large case runs the encoder's bucket ranges on several threads
    (bytes shared between ranges are OR-ed), with buckets that share bytes."""
    _serves_elias(backend, device)
    cases = ((0, 512, torch.float32), (1, 512, torch.float32), (9, 4, torch.float16),
             (1023, 100, torch.bfloat16), (5003, 7, torch.float32), (LARGE, 100, torch.float32),
             (LARGE, 512, torch.float32))
    for k, (n, d, dtype) in enumerate(cases):
        seed, offset = STREAMS[k % len(STREAMS)]
        x = sample(n, dtype, seed=n)
        key = ("elias", bits, n, d, dtype)
        want = reference(key, lambda: mk.qsgd_elias_encode(x, bits, d, "max", seed, offset))
        got = run(backend, mk.qsgd_elias_encode, x.to(device), bits, d, "max", seed, offset)
        assert same(got, want), (n, d)
        dec = reference(key + ("dec",), lambda: _elias_decoded(x, want, bits, d, seed, offset))
        assert same(run(backend, mk.qsgd_elias_decode, *on(want, device), n, bits, d), dec), n


def _elias_decoded(x, stream, bits, d, seed, offset):
    """The reference's decode of an Elias stream of x.  Above 5003 elements it is the
    fixed-width decode of the same quantization, zeros as +0: test_qsgd_elias.py checks
    that the two codings decode equal, and the spec's Elias decoder, a Python loop over
    the codes, took 24 of this test's 31 s (its six calls at 2^20 elements)."""
    n = x.numel()
    if n <= 5003:
        return mk.qsgd_elias_decode(*stream, n, bits, d)
    scales, codes = mk.qsgd_encode(x, bits, d, "max", seed, offset)
    assert same(scales, stream[0])
    return mk.qsgd_decode(scales, codes, n, bits, d) + 0.0  # -0.0 + 0.0 = +0.0


@pytest.mark.parametrize("backend,device", BACKENDS, ids=IDS)
def test_qsgd_elias_sparse_long_gaps(backend, device):
    """Sparse x (one bucket element in ~300 nonzero, plus one large value): gaps of
    hundreds, on both sides of the native coder's table of omega codes (below 512), and
    whole-bucket gaps past it; several 64-element masks without a nonzero level."""
    _serves_elias(backend, device)
    g = torch.Generator().manual_seed(3)
    n = 20000
    x = torch.randn(n, generator=g) * (torch.rand(n, generator=g) < 0.003)
    x[5] = 50.0
    for d in (512, 1000, 4096):
        want = reference(("elias-sparse", d), lambda: mk.qsgd_elias_encode(x, 2, d, "max", 1, 0))
        assert same(run(backend, mk.qsgd_elias_encode, x.to(device), 2, d, "max", 1, 0), want), d


@pytest.mark.parametrize("backend,device", BACKENDS, ids=IDS)
def test_qsgd_elias_l2(backend, device):
    """l2 scales may differ in their last bits (summation order), and a code with them:
    the streams are equal where every scale is, and each side decodes its own stream to
    the values the other side's decoder gives."""
    _serves_elias(backend, device)
    n, d = 5003, 100
    x = sample(n)
    for bits in (2, 4, 8):
        got = on(run(backend, mk.qsgd_elias_encode, x.to(device), bits, d, "l2", 1, 4), "cpu")
        want = reference(("elias-l2", bits), lambda: mk.qsgd_elias_encode(x, bits, d, "l2", 1, 4))
        if same(got[0], want[0]):
            assert same(got[1], want[1]), bits
        mine = on(run(backend, mk.qsgd_elias_decode, *on(got, device), n, bits, d), "cpu")
        with mk.use_backend("reference"):
            assert same(mine, mk.qsgd_elias_decode(*got, n, bits, d)), bits


# -------------------------------------------------------------------- sign, sparse

@pytest.mark.parametrize("backend,device", BACKENDS, ids=IDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_sign(backend, device, dtype):
    for n in SIZES + (LARGE,):
        if interpreted(backend, device) and n > 5003:
            continue
        x = sample(n, dtype, seed=n)
        if n > 3:
            x[3] = -0.0  # -0.0 < 0 is false: bit 0
        s_ref, p_ref = reference(("sign", dtype, n), lambda: mk.sign_encode(x))
        s, p = on(run(backend, mk.sign_encode, x.to(device)), "cpu")
        assert same(p, p_ref), n
        exact = x.double().abs().sum() / max(n, 1)
        # tree summation error bound, about log2(n) roundings, for every backend
        bound = (math.log2(max(n, 2)) + 2) * EPS32 * float(exact)
        assert abs(float(s) - float(exact)) <= bound and abs(float(s_ref) - float(exact)) <= bound
        dec = reference(("signd", dtype, n), lambda: mk.sign_decode(s_ref, p_ref, n))
        assert same(run(backend, mk.sign_decode, s_ref.to(device), p_ref.to(device), n), dec), n


@pytest.mark.parametrize("backend,device", BACKENDS, ids=IDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_randomk(backend, device, dtype):
    for k, n in enumerate((0, 1, 9, 4097, 5003, LARGE)):
        if interpreted(backend, device) and n > 5003:
            continue
        seed, offset = STREAMS[k % len(STREAMS)]
        x = sample(n, dtype, seed=n)
        for ratio in (0.01, 0.3, 1.0):
            key = ("rk", dtype, n, ratio)
            want = reference(key, lambda: mk.randomk_encode(x, ratio, seed, offset))
            assert same(run(backend, mk.randomk_encode, x.to(device), ratio, seed, offset),
                        want), (n, ratio)
            assert run(backend, mk.randomk_count, n, ratio, seed, offset, device) == want.numel()
            for rescale in (False, True):
                dense = reference(key + (rescale,), lambda: mk.randomk_decode(
                    want, n, ratio, seed, offset, rescale))
                got = run(backend, mk.randomk_decode, want.to(device), n, ratio, seed, offset,
                          rescale)
                assert same(got, dense), (n, ratio, rescale)


@pytest.mark.parametrize("backend,device", BACKENDS, ids=IDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_topk(backend, device, dtype):
    if mk.available("topk_encode", device)[backend] is not None:
        pytest.skip(f"{backend} serves no top-k: {mk.available('topk_encode', device)[backend]}")
    for n in (0, 1, 9, 1023, 100_003):
        x = sample(n, dtype, seed=n)
        for ratio in (0.001, 0.1, 0.5, 1.0):
            want = reference(("topk", dtype, n, ratio), lambda: mk.topk_encode(x, ratio))
            got = run(backend, mk.topk_encode, x.to(device), ratio)
            assert same(got, want), (n, ratio)
            dense = reference(("topkd", dtype, n, ratio), lambda: mk.topk_decode(*want, n))
            assert same(run(backend, mk.topk_decode, *on(want, device), n), dense)
    x = torch.tensor([1.0, -3.0, 3.0, 2.0, -3.0, 0.5], dtype=dtype)  # ties: lower index first
    idx, vals = run(backend, mk.topk_encode, x.to(device), 0.5)
    assert idx.tolist() == [1, 2, 4]
