"""Parity of the CUDA C++ kernels (backend "cuda") with the reference, on a GPU.

Skipped without CUDA or without a _C built with CUDA.  Covers large sizes and
n > 2^31 (64-bit indexing).  Same rules as tests/test_native.py: payloads and decoded
floats bit-exact; only the sign and QSGD-l2 scales are compared to float64.
"""
import pytest
import torch

import moniqua_kernels as mk

if not torch.cuda.is_available():
    pytest.skip("needs a CUDA device", allow_module_level=True)
pytest.importorskip("moniqua_kernels._native_cuda", reason="_C built without CUDA")

MONIQUA = [(b, r) for b in (1, 2, 4, 8) for r in ("stochastic", "nearest", "dither")
           if not (b == 1 and r == "stochastic")]


def both(fn, *args, **kwargs):
    with mk.use_backend("reference"):
        ref = fn(*args, **kwargs)
    with mk.use_backend("cuda"):
        nat = fn(*args, **kwargs)
    return ref, nat


def same(a, b):
    if isinstance(a, (tuple, list)):
        return all(same(u, v) for u, v in zip(a, b))
    if a.is_floating_point():
        a = a.view(torch.int16 if a.element_size() == 2 else torch.int32)
        b = b.view(a.dtype)
    return a.dtype == b.dtype and torch.equal(a, b)


def sample(n, dtype, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    return (torch.randn(n, generator=g, device="cuda") * 3).to(dtype)


@pytest.mark.parametrize("dtype", (torch.float32, torch.float16, torch.bfloat16), ids=str)
@pytest.mark.parametrize("bits,rounding", MONIQUA)
@pytest.mark.parametrize("n", (0, 1, 7, 17, 1023, 2 ** 22 + 3))
def test_moniqua(n, bits, rounding, dtype):
    x = sample(n, dtype, seed=n)
    ref, nat = both(mk.moniqua_encode, x, 2.5, bits, rounding, -7, 2 ** 34 + 4)
    assert same(ref, nat)
    y = (x.float() + 0.3).to(dtype)
    assert same(*both(mk.moniqua_decode, nat, y, 2.5, bits, rounding, -7, 2 ** 34 + 4))
    # a contiguous but not 16-byte aligned reference takes the scalar-load path
    yu = torch.cat([y.new_zeros(1), y])[1:]
    assert same(*both(mk.moniqua_decode, nat, yu, 2.5, bits, rounding, -7, 2 ** 34 + 4))


@pytest.mark.parametrize("neighbours", (0, 2))
def test_mix(neighbours):
    n = 2 ** 20 + 5
    x = sample(n, torch.float32)
    pays = [mk.moniqua_encode(x + 0.1 * j, 2.0, 1, "dither", j, 0) for j in range(neighbours)]
    own = mk.moniqua_encode(x, 2.0, 1, "dither", 9, 0)
    outs = []
    for backend in ("reference", "cuda"):
        w = x.clone()
        with mk.use_backend(backend):
            mk.moniqua_mix_(w, pays, [0.3] * neighbours, own, 2.0, 1, "dither", 0.5,
                            list(range(neighbours)) + [9], [0] * (neighbours + 1))
        outs.append(w)
    assert same(*outs)


@pytest.mark.parametrize("bits", (2, 4, 8))
def test_qsgd_sign_randomk(bits):
    n = 2 ** 20 + 9
    x = sample(n, torch.float32, seed=3)
    ref, nat = both(mk.qsgd_encode, x, bits, 512, "max", 5, 8)
    assert same(ref, nat)
    assert same(*both(mk.qsgd_decode, nat[0], nat[1], n, bits, 512))
    (rs, rp), (ns, np_) = both(mk.sign_encode, x)
    assert same(rp, np_)
    exact = x.double().abs().mean().item()
    assert abs(ns.item() - exact) <= abs(exact) * 2 ** -23
    ref, nat = both(mk.randomk_encode, x, 0.1, 3, 4)
    assert same(ref, nat)
    assert same(*both(mk.randomk_decode, nat, n, 0.1, 3, 4, True))


@pytest.mark.slow
def test_moniqua_beyond_int32():
    """n > 2^31: the last elements' codes and decoded values match the reference's
    (computed on the tail alone with the matching stream offset)."""
    n = 2 ** 31 + 40
    try:
        x = torch.empty(n, dtype=torch.float16, device="cuda")
    except torch.OutOfMemoryError:
        pytest.skip("not enough GPU memory")
    x.normal_()
    with mk.use_backend("cuda"):
        payload = mk.moniqua_encode(x, 2.0, 4, "dither", 11, 0)
        tail = slice(n - 4096, n)
        xh = mk.moniqua_decode(payload, x, 2.0, 4, "dither", 11, 0)[tail]
    with mk.use_backend("reference"):
        ref_payload = mk.moniqua_encode(x[tail], 2.0, 4, "dither", 11, n - 4096)
        ref_xh = mk.moniqua_decode(ref_payload, x[tail], 2.0, 4, "dither", 11, n - 4096)
    assert same(payload[(n - 4096) // 2:], ref_payload)
    assert same(xh, ref_xh)
