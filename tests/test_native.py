"""Parity of the native CPU kernels (backend "cpu", moniqua_kernels._C) with the reference.

Every op runs through the public API twice, once forced to the reference and once to
the native kernels, and the results must agree bit for bit: codes, payloads, indices,
and also the decoded floats (the kernels evaluate the spec's float32 operations in the
spec's order with no contraction, so "within 2 ulps" would hide a real divergence).
The two exceptions DESIGN.md allows are the scaled-sign scale and the QSGD l2 scale,
whose float32 sums have an unspecified order; they are checked against an exact
float64 evaluation instead (see the tests for the bounds).
"""
import numpy as np
import pytest
import torch

import moniqua_kernels as mk
from moniqua_kernels import backends

pytest.importorskip("moniqua_kernels._C", reason="native extension not built")

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
SMALL = (0, 1, 7, 8, 9, 1023, 1025)
LARGE = 2 ** 20 + 3
MONIQUA = [(b, r) for b in (1, 2, 4, 8) for r in ("stochastic", "nearest", "dither")
           if not (b == 1 and r == "stochastic")]
SEEDS = (0, 12345, -1, 2 ** 63 - 1, -(2 ** 63))
BIG_OFFSET = 2 ** 34 + 4


@pytest.fixture(params=[1, 2], ids=["threads1", "threads2"])
def threads(request):
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


def both(fn, *args, **kwargs):
    """(reference result, native result) of a public op."""
    with mk.use_backend("reference"):
        ref = fn(*args, **kwargs)
    with mk.use_backend("cpu"):
        nat = fn(*args, **kwargs)
    return ref, nat


def assert_same(a, b):
    if isinstance(a, (tuple, list)):
        assert len(a) == len(b)
        for u, v in zip(a, b):
            assert_same(u, v)
        return
    assert a.dtype == b.dtype and a.shape == b.shape, (a.dtype, b.dtype, a.shape, b.shape)
    if a.is_floating_point():  # NaN-free here; compare bit patterns (signed zeros too)
        a = a.view(torch.int16 if a.element_size() == 2 else torch.int32)
        b = b.view(a.dtype)
    if not torch.equal(a, b):
        bad = (a.reshape(-1) != b.reshape(-1)).nonzero().reshape(-1)
        raise AssertionError(f"{bad.numel()} of {a.numel()} elements differ, first at "
                             f"{bad[:5].tolist()}: {a.reshape(-1)[bad[:5]].tolist()} vs "
                             f"{b.reshape(-1)[bad[:5]].tolist()}")


def sample(n, dtype, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, generator=g) * scale).to(dtype)


def neighbour(x, theta, seed=1):
    """A reference y with |x - y| <= theta, in x's dtype."""
    g = torch.Generator().manual_seed(seed)
    return (x.float() + (torch.rand(x.shape, generator=g) * 2 - 1) * theta).to(x.dtype)


def test_auto_selects_native_on_cpu():
    assert backends.select("moniqua_encode", "cpu")[0] == "cpu"
    assert backends.available("moniqua_mix_", "cpu")["cpu"] is None


def test_isa_is_reported():
    from moniqua_kernels import _native
    assert _native.isa() in ("x86-64-v4", "x86-64-v3", "baseline")


# --------------------------------------------------------------------------- Philox

def test_philox_known_answer():
    # Counter 0, key 0 -> 0x6627e8d5 ...: the first word's top 24 bits give u_0.
    with mk.use_backend("cpu"):
        u = mk.philox_uniform(4, 0, 0)
    words = (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)
    assert u.tolist() == [(w >> 8) * 2.0 ** -24 for w in words]


@pytest.mark.parametrize("n", SMALL + (LARGE,))
@pytest.mark.parametrize("seed", SEEDS)
def test_philox_uniform(n, seed, threads):
    for offset in (0, 4, BIG_OFFSET):
        assert_same(*both(mk.philox_uniform, n, seed, offset))


# --------------------------------------------------------------------------- packing

def test_pack_known_example():
    with mk.use_backend("cpu"):
        packed = mk.pack_bits(torch.tensor([1, 2, 3, 0, 3], dtype=torch.uint8), 2)
        assert packed.tolist() == [57, 3]
        assert mk.unpack_bits(packed, 2, 5).tolist() == [1, 2, 3, 0, 3]


@pytest.mark.parametrize("n", SMALL + (LARGE,))
def test_pack_1bit_is_numpy_packbits(n):
    bits = (sample(n, torch.float32) < 0).to(torch.uint8)
    with mk.use_backend("cpu"):
        packed = mk.pack_bits(bits, 1)
    assert packed.numpy().tobytes() == np.packbits(bits.numpy(), bitorder="little").tobytes()


@pytest.mark.parametrize("bits", (1, 2, 4, 8))
@pytest.mark.parametrize("n", SMALL + (LARGE,))
def test_pack_unpack(bits, n, threads):
    g = torch.Generator().manual_seed(n + bits)
    codes = torch.randint(0, 1 << bits, (n,), generator=g, dtype=torch.uint8)
    ref, nat = both(mk.pack_bits, codes, bits)
    assert_same(ref, nat)
    assert_same(*both(mk.unpack_bits, nat, bits, n))
    with mk.use_backend("cpu"):
        assert_same(mk.unpack_bits(nat, bits, n), codes)
    if n % (8 // bits):  # the unused high bits of the last byte are zero
        assert int(nat[-1]) >> ((n % (8 // bits)) * bits) == 0


# --------------------------------------------------------------------------- Moniqua

def moniqua_case(x, bits, rounding, seed, offset, modulus=2.5):
    ref, nat = both(mk.moniqua_encode, x, modulus, bits, rounding, seed, offset)
    assert_same(ref, nat)
    y = neighbour(x, modulus / 4)
    assert_same(*both(mk.moniqua_decode, nat, y, modulus, bits, rounding, seed, offset))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("bits,rounding", MONIQUA)
@pytest.mark.parametrize("n", SMALL)
def test_moniqua_small(n, bits, rounding, dtype):
    moniqua_case(sample(n, dtype, seed=n), bits, rounding, seed=-7, offset=BIG_OFFSET)


@pytest.mark.parametrize("bits,rounding", MONIQUA)
def test_moniqua_large_fp32(bits, rounding, threads):
    moniqua_case(sample(LARGE, torch.float32), bits, rounding, seed=2 ** 63 - 1, offset=8)


@pytest.mark.parametrize("dtype", (torch.float16, torch.bfloat16), ids=str)
def test_moniqua_large_half(dtype, threads):
    moniqua_case(sample(LARGE, dtype), 2, "dither", seed=-(2 ** 63), offset=BIG_OFFSET)


@pytest.mark.parametrize("seed", SEEDS)
def test_moniqua_seeds(seed):
    moniqua_case(sample(4099, torch.float32), 4, "stochastic", seed, offset=4)


def test_moniqua_non_contiguous():
    base = sample(2 * 3001, torch.float32).reshape(3001, 2)
    x = base.t()  # row-major order of the transposed view differs from memory order
    assert not x.is_contiguous()
    moniqua_case(x, 2, "dither", seed=5, offset=0)
    moniqua_case(base[:, 1], 1, "nearest", seed=5, offset=0)


def test_moniqua_edge_values():
    """Values where z = t - floor(t) rounds to 1.0 or t is huge: codes still match."""
    tiny = torch.tensor([-1e-30, -1e-9, 0.0, -0.0, 1e-30, 2.5, -2.5, 1e30, -1e30, 3.4e38,
                         -3.4e38, 1.25, -1.25], dtype=torch.float32)
    for bits, rounding in MONIQUA:
        moniqua_case(tiny, bits, rounding, seed=3, offset=0)


def test_moniqua_non_finite_unchecked():
    """With check_finite=False a NaN/inf gets the spec's defined code (z = 0)."""
    x = torch.tensor([float("nan"), float("inf"), -float("inf"), 1.0])
    for bits, rounding in MONIQUA:
        ref, nat = both(mk.moniqua_encode, x, 2.0, bits, rounding, 1, 0, check_finite=False)
        assert_same(ref, nat)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("bits,rounding", [(1, "nearest"), (1, "dither"), (2, "stochastic"),
                                           (4, "dither"), (8, "nearest")])
@pytest.mark.parametrize("neighbours", (0, 1, 2, 3))
@pytest.mark.parametrize("n", (0, 9, 1029))
def test_moniqua_mix(n, neighbours, bits, rounding, dtype):
    modulus = 2.0
    x = sample(n, dtype, seed=11)
    seeds = [100 + j for j in range(neighbours)] + [-5]
    offsets = [4 * j for j in range(neighbours)] + [BIG_OFFSET]
    payloads = [mk.moniqua_encode(neighbour(x, 0.4, seed=j), modulus, bits, rounding, seeds[j],
                                  offsets[j]) for j in range(neighbours)]
    own = mk.moniqua_encode(x, modulus, bits, rounding, seeds[-1], offsets[-1])
    weights = [0.25 + 0.125 * j for j in range(neighbours)]
    outs = []
    for backend in ("reference", "cpu"):
        work = x.clone()
        with mk.use_backend(backend):
            mk.moniqua_mix_(work, payloads, weights, own, modulus, bits, rounding, 0.7, seeds,
                            offsets)
        outs.append(work)
    assert_same(*outs)


def test_moniqua_mix_large_non_contiguous(threads):
    modulus, bits, rounding = 3.0, 1, "dither"
    base = sample(2 * LARGE, torch.float32, seed=4).reshape(LARGE, 2)
    payloads = [mk.moniqua_encode(neighbour(base[:, 0], 0.7, seed=j), modulus, bits, rounding,
                                  j, 0) for j in range(2)]
    own = mk.moniqua_encode(base[:, 0], modulus, bits, rounding, 9, 0)
    outs = []
    for backend in ("reference", "cpu"):
        work = base.clone()
        with mk.use_backend(backend):
            mk.moniqua_mix_(work[:, 0], payloads, [1 / 3, 1 / 3], own, modulus, bits, rounding,
                            1.0, [0, 1, 9], [0, 0, 0])
        outs.append(work)
    assert_same(*outs)
    assert_same(outs[1][:, 1], base[:, 1])  # the other column is untouched


# --------------------------------------------------------------------------- QSGD

@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("bits", (2, 4, 8))
@pytest.mark.parametrize("n,bucket", [(0, 512), (1, 512), (9, 4), (1023, 512), (1025, 7),
                                      (3000, 1), (5000, 5000)])
def test_qsgd_max(n, bucket, bits, dtype):
    x = sample(n, dtype, seed=n)
    if n > 20:
        x[5:12] = 0  # an all-zero bucket when the bucket size allows it
    ref, nat = both(mk.qsgd_encode, x, bits, bucket, "max", -3, BIG_OFFSET)
    assert_same(ref, nat)
    assert_same(*both(mk.qsgd_decode, nat[0], nat[1], n, bits, bucket))


@pytest.mark.parametrize("bits", (2, 8))
def test_qsgd_max_large(bits, threads):
    x = sample(LARGE, torch.float32, seed=8)
    ref, nat = both(mk.qsgd_encode, x, bits, 512, "max", 17, 4)
    assert_same(ref, nat)
    assert_same(*both(mk.qsgd_decode, nat[0], nat[1], LARGE, bits, 512))


def _ulp32(v: np.ndarray) -> np.ndarray:
    v = np.abs(v.astype(np.float32))
    return np.spacing(np.maximum(v, np.finfo(np.float32).tiny)).astype(np.float64)


@pytest.mark.parametrize("bits", (2, 4, 8))
def test_qsgd_l2(bits, threads):
    """l2 scales: within 1 float32 ulp of the exact norm of the float32 squares.

    The native sum runs in float64 (error ~2^-43 relative), so the only roundings that
    matter are the float32 sum and sqrt: <= 1 ulp.  The reference's float32 sum order
    is torch's, so codes may differ by one level where the two scales differ; where
    the scales agree, the codes must agree exactly."""
    n, bucket = 300_001, 512
    x = sample(n, torch.float32, seed=21)
    (rs, rp), (ns, np_) = both(mk.qsgd_encode, x, bits, bucket, "l2", 5, 0)
    nq = rs.numel()
    padded = torch.zeros(nq * bucket, dtype=torch.float64)
    padded[:n] = (x * x).double()
    exact = padded.view(nq, bucket).sum(1).sqrt().numpy()
    assert np.all(np.abs(ns.numpy().astype(np.float64) - exact) <= _ulp32(exact))
    with mk.use_backend("reference"):
        rc = mk.unpack_bits(rp, bits, n).long()
        nc = mk.unpack_bits(np_, bits, n).long()
    same_scale = (rs == ns).repeat_interleave(bucket)[:n]
    assert same_scale.float().mean() > 0.5  # the comparison below is not vacuous
    assert torch.equal(rc[same_scale], nc[same_scale])
    s = (1 << (bits - 1)) - 1
    sign_r, sign_n = rc >> (bits - 1), nc >> (bits - 1)
    assert torch.equal(sign_r, sign_n)
    assert int(((rc & s) - (nc & s)).abs().max()) <= 1


# --------------------------------------------------------------------------- sign

@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n", SMALL + (LARGE,))
def test_sign(n, dtype, threads):
    """Bits exact; scale within 1 float32 ulp of the exact mean |x| (float64 sum,
    rounded once to float32, then a float32 division by n: two roundings of 1/2 ulp)."""
    x = sample(n, dtype, seed=n)
    if n > 3:
        x[3] = -0.0  # -0.0 is not negative
    (rs, rp), (ns, np_) = both(mk.sign_encode, x)
    assert_same(rp, np_)
    assert ns.dtype == torch.float32 and ns.shape == rs.shape
    exact = x.double().abs().sum().item() / n if n else 0.0
    assert abs(ns.item() - exact) <= _ulp32(np.array([exact]))[0]
    assert_same(*both(mk.sign_decode, ns, np_, n))


# --------------------------------------------------------------------------- sparse

@pytest.mark.parametrize("ratio", (0.01, 0.3, 1.0))
@pytest.mark.parametrize("n", SMALL + (LARGE,))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_randomk(n, ratio, dtype, threads):
    if n == LARGE and dtype != torch.float32:
        pytest.skip("large size covered in float32")
    x = sample(n, dtype, seed=n)
    ref_count, nat_count = both(mk.randomk_count, n, ratio, 77, BIG_OFFSET, "cpu")
    assert ref_count == nat_count
    ref, nat = both(mk.randomk_encode, x, ratio, 77, BIG_OFFSET)
    assert_same(ref, nat)
    assert nat.numel() == nat_count
    for rescale in (False, True):
        assert_same(*both(mk.randomk_decode, nat, n, ratio, 77, BIG_OFFSET, rescale))


@pytest.mark.parametrize("ratio", (0.001, 0.1, 0.5, 1.0))
@pytest.mark.parametrize("n", SMALL + (100_003,))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_topk(n, ratio, dtype):
    x = sample(n, dtype, seed=n)
    ref, nat = both(mk.topk_encode, x, ratio)
    assert_same(ref, nat)
    assert_same(*both(mk.topk_decode, nat[0], nat[1], n))


def test_topk_ties_take_lower_index():
    x = torch.tensor([1.0, -2.0, 2.0, 0.5, -2.0, 2.0, 0.0, -0.0])
    ref, nat = both(mk.topk_encode, x, 0.25)  # k = 2 of four |x| = 2 ties
    assert_same(ref, nat)
    assert nat[0].tolist() == [1, 2]


def test_ops_opcheck():
    """The public custom op served by the native kernels passes torch's opcheck."""
    x = sample(1031, torch.float32)
    torch.library.opcheck(torch.ops.moniqua_kernels.moniqua_encode.default,
                          (x, 2.0, 2, "dither", 3, 8))
    payload = mk.moniqua_encode(x, 2.0, 2, "dither", 3, 8)
    torch.library.opcheck(torch.ops.moniqua_kernels.moniqua_decode.default,
                          (payload, x, 2.0, 2, "dither", 3, 8))
