"""Statistical behaviour with fixed seeds.  Each tolerance is stated with its reason."""
import math

import pytest
import torch

import moniqua_kernels as mk
from moniqua_kernels.compressors import QSGD, RandomK

N = 2 ** 16


@pytest.mark.parametrize("bits,rounding", [(2, "stochastic"), (4, "stochastic"),
                                           (1, "dither"), (2, "dither"), (8, "dither")])
@pytest.mark.parametrize("value", [0.0, 0.37, -1.2345, 3.999])
def test_unbiased_rounding(bits, rounding, value):
    # N copies of one value, each with its own u: the decoded mean estimates E[xh].
    # Errors lie in [-delta*B, delta*B], so by Hoeffding the mean of N of them is within
    # t = 6 * delta * B / sqrt(N) of its expectation except with probability < 2e-7.
    B = 2.0
    x = torch.full((N,), value)
    payload = mk.moniqua_encode(x, B, bits, rounding, seed=1234)
    xh = mk.moniqua_decode(payload, x, B, bits, rounding, seed=1234)
    t = 6 * mk.moniqua_delta(bits, rounding) * B / math.sqrt(N)
    assert abs(float(xh.double().mean()) - value) <= t


def test_nearest_is_biased_but_deterministic():
    x = torch.full((1000,), 0.3)
    a = mk.moniqua_encode(x, 1.0, 2, "nearest", seed=1)
    b = mk.moniqua_encode(x, 1.0, 2, "nearest", seed=99, offset=4000)
    assert torch.equal(a, b)  # no randomness at all
    xh = mk.moniqua_decode(a, x, 1.0, 2, "nearest")
    assert torch.allclose(xh, torch.full_like(x, 0.25))  # 0.3 -> nearest level 1/4


def test_dither_error_is_uniform_stochastic_error_is_not_larger_than_delta():
    B, n = 1.0, N
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, generator=g) * 10
    xh = mk.moniqua_decode(mk.moniqua_encode(x, B, 2, "dither", seed=5), x, B, 2, "dither",
                           seed=5)
    err = (xh - x) / B  # subtractive dither: uniform on [-1/8, 1/8] for 2 bits
    assert float(err.abs().max()) <= 0.125 + 1e-5
    # variance of U(-1/8, 1/8) = (1/4)^2 / 12; sample variance within 5% (n = 65536:
    # relative standard error of a variance estimate of a uniform is ~0.9 / sqrt(n)).
    assert abs(float(err.var()) / ((0.25 ** 2) / 12) - 1) < 0.05


def test_same_stream_same_bytes_different_seed_differs():
    x = torch.randn(10000)
    a = mk.moniqua_encode(x, 1.0, 1, "dither", seed=42, offset=8)
    assert torch.equal(a, mk.moniqua_encode(x, 1.0, 1, "dither", seed=42, offset=8))
    assert not torch.equal(a, mk.moniqua_encode(x, 1.0, 1, "dither", seed=43, offset=8))
    assert not torch.equal(a, mk.moniqua_encode(x, 1.0, 1, "dither", seed=42, offset=12))
    s1, p1 = mk.qsgd_encode(x, seed=7)
    s2, p2 = mk.qsgd_encode(x, seed=7)
    assert torch.equal(p1, p2) and torch.equal(s1, s2)
    assert not torch.equal(p1, mk.qsgd_encode(x, seed=8)[1])


def test_offset_addresses_positions_of_one_stream():
    # Encoding a tail at offset = its start gives the tail of the whole encoding.
    x = torch.randn(4096)
    whole = mk.moniqua_encode(x, 1.0, 8, "stochastic", seed=3)
    tail = mk.moniqua_encode(x[1024:], 1.0, 8, "stochastic", seed=3, offset=1024)
    assert torch.equal(whole[1024:], tail)


@pytest.mark.parametrize("norm", ["max", "l2"])
@pytest.mark.parametrize("bits", [2, 4, 8])
def test_qsgd_unbiased(bits, norm):
    # 4096 copies of one 16-element bucket, each copy with its own random numbers: the
    # mean over copies estimates E[Q(v)] per element.  Each error lies in an interval of
    # width step = N/s, so by Hoeffding |mean error| <= step * sqrt(ln(2/a) / (2*4096))
    # except with probability a = 1e-9 per element: 0.051 step.  A biased rounding
    # (nearest) would be off by up to 0.5 step.
    g = torch.Generator().manual_seed(bits)
    v = torch.randn(16, generator=g)
    copies = 4096
    x = v.repeat(copies)
    comp = QSGD(bits, bucket_size=16, norm=norm)
    payload = comp.encode(x, seed=3)
    decoded = comp.decode(payload).double().view(copies, 16)
    step = float(payload.tensors["scales"][0]) / comp.levels
    bias = (decoded.mean(dim=0) - v.double()).abs()
    assert float(bias.max()) <= step * math.sqrt(math.log(2 / 1e-9) / (2 * copies))


@pytest.mark.parametrize("norm", ["max", "l2"])
@pytest.mark.parametrize("bits", [2, 4, 8])
def test_qsgd_variance_under_paper_bound(bits, norm):
    g = torch.Generator().manual_seed(bits)
    x = torch.randn(4096, generator=g)
    comp = QSGD(bits, bucket_size=256, norm=norm)
    trials = 64
    decoded = torch.stack([comp.decode(comp.encode(x, seed=s)) for s in range(trials)])
    err = decoded.double() - x.double()
    # The average squared error over 64 trials estimates E||Q(x) - x||^2, which the bound
    # exceeds (for Gaussian data by a wide margin: mean p(1-p) ~ 1/6 < 1/4 for max, and
    # Lemma 3.1 is loose for l2), so sampling noise of a few % cannot cross it.
    mse = float(err.pow(2).sum(dim=1).mean())
    assert 0 < mse <= comp.variance_bound(x)


def test_randomk_keeps_about_ratio_n_and_is_unbiased_with_rescale():
    n, ratio = N, 0.1
    count = mk.randomk_count(n, ratio, seed=5)
    sd = math.sqrt(n * ratio * (1 - ratio))  # binomial standard deviation
    assert abs(count - n * ratio) <= 5 * sd
    comp = RandomK(ratio, rescale=True)
    x = torch.full((n,), 2.0)
    dec = comp.decode(comp.encode(x, seed=5))
    assert dec.numel() == n and int((dec != 0).sum()) == count
    # mean of rescaled sparse vector: 2 * count / (n * ratio); within 5 sd of 2.
    assert abs(float(dec.double().mean()) - 2.0) <= 5 * 2.0 * sd / (n * ratio)


def test_randomk_threshold_is_exact_integer_compare():
    # ratio = 1 keeps everything; a ratio below 2^-24 keeps only words with top bits 0.
    assert mk.randomk_count(1000, 1.0, seed=1) == 1000
    u = mk.philox_uniform(5000, seed=2)
    assert mk.randomk_count(5000, 0.5, seed=2) == int((u < 0.5).sum())
