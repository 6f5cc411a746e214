"""Round trip: with |x - y| <= theta and B = moniqua_modulus(theta, ...), every decoded
element is within delta*B of x (plus float rounding, see helpers.decode_tolerance)."""
import pytest
import torch

import moniqua_kernels as mk
from helpers import FLOAT_DTYPES, decode_tolerance, moniqua_modes, pair_within

SMALL_SIZES = (0, 1, 7, 8, 9, 1023)


def _check_roundtrip(x, y, theta, bits, rounding, seed=11, offset=0):
    B = mk.moniqua_modulus(theta, bits, rounding)
    payload = mk.moniqua_encode(x, B, bits, rounding, seed=seed, offset=offset)
    assert payload.dtype == torch.uint8 and payload.numel() == (x.numel() * bits + 7) // 8
    xh = mk.moniqua_decode(payload, y, B, bits, rounding, seed=seed, offset=offset)
    assert xh.shape == y.shape and xh.dtype == y.dtype
    err = (xh.float() - x.float()).abs()
    tol = decode_tolerance(x, y, B, mk.moniqua_delta(bits, rounding))
    assert bool((err <= tol).all()), f"max excess {(err - tol).max().item()}"
    return payload, xh


@pytest.mark.parametrize("bits,rounding", moniqua_modes())
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("n", SMALL_SIZES)
def test_roundtrip_small(bits, rounding, dtype, n):
    x, y, theta = pair_within(n, dtype, seed=n)
    _check_roundtrip(x, y, theta, bits, rounding)


@pytest.mark.parametrize("bits,rounding", moniqua_modes())
def test_roundtrip_large_float32(bits, rounding):
    x, y, theta = pair_within(2 ** 20 + 3, torch.float32, seed=5)
    _check_roundtrip(x, y, theta, bits, rounding, seed=2 ** 40 + 3, offset=2 ** 34 + 8)


@pytest.mark.parametrize("dtype", (torch.float16, torch.bfloat16), ids=str)
def test_roundtrip_large_half_types(dtype):
    x, y, theta = pair_within(2 ** 20 + 3, dtype, seed=6)
    _check_roundtrip(x, y, theta, 1, "dither")
    _check_roundtrip(x, y, theta, 8, "stochastic")


@pytest.mark.parametrize("bits,rounding", [(1, "dither"), (2, "stochastic"), (4, "nearest")])
def test_roundtrip_non_contiguous(bits, rounding):
    x, y, theta = pair_within(64 * 33, torch.float32, seed=9, shape=(64, 33))
    xt, yt = x.t(), y.t()  # transposed views: row-major order of the view is what counts
    assert not xt.is_contiguous()
    payload, xh = _check_roundtrip(xt, yt, theta, bits, rounding)
    B = mk.moniqua_modulus(theta, bits, rounding)
    assert torch.equal(payload, mk.moniqua_encode(xt.contiguous(), B, bits, rounding, seed=11))
    strided = x[:, ::2]
    _check_roundtrip(strided, y[:, ::2], theta, bits, rounding)


def test_tiny_theta_relative_to_values():
    # Values far from zero, modulus far smaller: only x mod B travels.
    g = torch.Generator().manual_seed(3)
    x = 1000 + torch.rand(4096, generator=g)
    y = x + (torch.rand(4096, generator=g) - 0.5) * 1e-2
    _check_roundtrip(x, y, 0.005, 4, "stochastic")


def test_mix_matches_separate_decodes():
    n = 5000
    x, y1, theta = pair_within(n, torch.float32, seed=1)
    _, y2, theta2 = pair_within(n, torch.float32, seed=2)
    y2 = x + (y2 - y2)  # y2 == x, its own neighbour copy
    theta = max(theta, theta2)
    bits, rounding = 2, "dither"
    B = mk.moniqua_modulus(theta, bits, rounding)
    q1 = mk.moniqua_encode(y1, B, bits, rounding, seed=1)
    q2 = mk.moniqua_encode(y2, B, bits, rounding, seed=2)
    qs = mk.moniqua_encode(x, B, bits, rounding, seed=3)
    d1 = mk.moniqua_decode(q1, x, B, bits, rounding, seed=1)
    d2 = mk.moniqua_decode(q2, x, B, bits, rounding, seed=2)
    ds = mk.moniqua_decode(qs, x, B, bits, rounding, seed=3)
    w = torch.tensor([1 / 3, 1 / 3])
    expected = x + 0.5 * (w[0] * (d1 - ds) + w[1] * (d2 - ds))
    mixed = x.clone()
    out = mk.moniqua_mix_(mixed, [q1, q2], [1 / 3, 1 / 3], qs, B, bits, rounding, gamma=0.5,
                          seeds=[1, 2, 3], offsets=[0, 0, 0])
    assert out is mixed
    assert torch.allclose(mixed, expected, rtol=0, atol=4 * 2 ** -23 * (x.abs().max() + B))


def test_mix_averages_towards_the_neighbour():
    # One neighbour, weight 1/2, gamma 1: x moves to the midpoint (x + y) / 2, up to the
    # two decodes' quantization errors (each <= delta*B).
    x, y, theta = pair_within(10000, torch.float32, seed=4)
    bits, rounding = 8, "nearest"
    B = mk.moniqua_modulus(theta, bits, rounding)
    qy = mk.moniqua_encode(y, B, bits, rounding)
    qx = mk.moniqua_encode(x, B, bits, rounding)
    mixed = mk.moniqua_mix_(x.clone(), [qy], [0.5], qx, B, bits, rounding, gamma=1.0)
    bound = 0.5 * 2 * mk.moniqua_delta(bits, rounding) * B + 1e-5
    assert float((mixed - (x + y) / 2).abs().max()) <= bound
    assert float((mixed - y).norm()) < 0.51 * float((x - y).norm())


def test_mix_in_place_on_non_contiguous_and_half():
    base = torch.randn(40, 30)
    x = base.t().to(torch.bfloat16)
    assert not x.is_contiguous()
    B = 4.0
    q = mk.moniqua_encode(x, B, 1, "dither", seed=4)
    before = x.clone()
    mk.moniqua_mix_(x, [q], [0.5], q, B, 1, "dither", gamma=1.0, seeds=[4, 4], offsets=[0, 0])
    assert torch.equal(x, before)  # own payload as the neighbour's: the mix is zero


def test_empty_tensors():
    x = torch.empty(0)
    assert mk.moniqua_encode(x, 1.0).numel() == 0
    assert mk.moniqua_decode(torch.empty(0, dtype=torch.uint8), x, 1.0).numel() == 0
    s, p = mk.qsgd_encode(x)
    assert s.numel() == 0 and p.numel() == 0
    assert mk.qsgd_decode(s, p, 0).numel() == 0
    scale, p = mk.sign_encode(x)
    assert float(scale) == 0.0 and mk.sign_decode(scale, p, 0).numel() == 0
    assert mk.randomk_encode(x, 0.5).numel() == 0
    i, v = mk.topk_encode(x, 0.5)
    assert i.numel() == 0 and mk.topk_decode(i, v, 0).numel() == 0


def test_other_compressors_roundtrip_values():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3000, generator=g)
    # QSGD: each element within one level step N/s of x, with the sign kept.
    scales, payload = mk.qsgd_encode(x, bits=4, bucket_size=100, seed=1)
    xh = mk.qsgd_decode(scales, payload, 3000, bits=4, bucket_size=100)
    step = scales.repeat_interleave(100)[:3000] / 7
    assert bool(((xh - x).abs() <= step * (1 + 1e-6)).all())
    assert bool(((xh == 0) | (torch.sign(xh) == torch.sign(x))).all())
    # sign: +-mean|x|
    scale, payload = mk.sign_encode(x)
    assert torch.isclose(scale, x.abs().mean())
    assert torch.equal(mk.sign_decode(scale, payload, 3000), torch.where(x < 0, -scale, scale))
    # top-k: exactly the largest magnitudes survive
    idx, vals = mk.topk_encode(x, 0.1)
    dense = mk.topk_decode(idx, vals, 3000)
    kth = x.abs().sort(descending=True).values[299]
    assert idx.numel() == 300 and bool((x.abs()[idx] >= kth).all())
    assert torch.equal(dense[idx.long()], x[idx.long()])
    # random-k: kept values land where the regenerated mask says
    vals = mk.randomk_encode(x, 0.25, seed=3, offset=8)
    dense = mk.randomk_decode(vals, 3000, 0.25, seed=3, offset=8)
    kept = dense != 0
    assert torch.equal(dense[kept], x[kept]) and int(kept.sum()) == vals.numel()
    scaled = mk.randomk_decode(vals, 3000, 0.25, seed=3, offset=8, rescale=True)
    assert torch.allclose(scaled[kept], 4 * x[kept])


def test_topk_ties_break_towards_lower_index():
    x = torch.tensor([1.0, -2.0, 2.0, 0.5, -2.0, 2.0])
    idx, vals = mk.topk_encode(x, 0.5)  # k = 3 of the four |x| = 2 entries
    assert idx.tolist() == [1, 2, 4] and vals.tolist() == [-2.0, 2.0, -2.0]
