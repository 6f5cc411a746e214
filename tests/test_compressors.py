"""Compressor objects: exact nbytes, wire round trip, decode shapes, bounds."""
import re

import pytest
import torch

import moniqua_kernels as mk
from moniqua_kernels.compressors import (QSGD, Compose, Identity, Moniqua, RandomK,
                                         ScaledSign, TopK, from_spec)


def all_compressors():
    return [Identity(), Moniqua(0.1, 1, "dither"), Moniqua(0.1, 2, "stochastic"),
            Moniqua(0.1, 8, "nearest"), QSGD(2, 64), QSGD(4, 512), QSGD(8, 100, "l2"),
            ScaledSign(), RandomK(0.1), RandomK(0.3, rescale=True), TopK(0.01), TopK(0.5),
            Compose(TopK(0.1), QSGD(4, 128)), Compose(RandomK(0.2, True), ScaledSign()),
            Compose(RandomK(0.25), Identity())]


@pytest.mark.parametrize("comp", all_compressors(), ids=repr)
@pytest.mark.parametrize("n", [0, 1, 9, 1000, 4099])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_nbytes_equals_real_payload_and_wire_roundtrip(comp, n, dtype):
    g = torch.Generator().manual_seed(n)
    x = torch.randn(n, generator=g).to(dtype)
    y = (x.float() + 0.01).to(dtype)
    seed, offset = 1000 + n, 4 * n
    payload = comp.encode(x, seed=seed, offset=offset)
    assert payload.nbytes == comp.nbytes(n, dtype, seed=seed, offset=offset)
    wire = payload.to_wire()
    assert wire.dtype == torch.uint8 and wire.numel() == payload.nbytes
    back = comp.from_wire(wire, x.shape, dtype, seed=seed, offset=offset)
    a = comp.decode(payload, reference=y)
    b = comp.decode(back, reference=y)
    assert a.shape == x.shape and a.dtype == dtype
    assert torch.equal(a, b)


def test_bits_per_element():
    n = 1 << 16
    assert Moniqua(1.0, 1).bits_per_element(n) == 1.0
    assert Identity().bits_per_element(n) == 32.0
    assert abs(QSGD(4, 512).bits_per_element(n) - (4 + 32 / 512)) < 1e-12
    assert abs(ScaledSign().bits_per_element(n) - (1 + 32 / n)) < 1e-12


def test_moniqua_error_bound_holds():
    comp = Moniqua(theta=0.2, bits=2, rounding="stochastic")
    assert comp.error_bound() == comp.delta * comp.modulus == 0.25 * 0.8
    x = torch.randn(5000) * 10
    y = x + (torch.rand(5000) - 0.5) * 0.39
    err = (comp.decode(comp.encode(x, seed=1), reference=y) - x).abs().max()
    assert float(err) <= comp.error_bound() + 1e-5
    comp.theta = 0.1  # schedules change theta between steps
    assert comp.modulus == 0.4


def test_moniqua_needs_reference_and_matching_payload():
    comp = Moniqua(0.1, 1)
    p = comp.encode(torch.randn(10))
    with pytest.raises(ValueError, match="reference="):
        comp.decode(p)
    with pytest.raises(ValueError, match="made by 'moniqua', not 'qsgd'"):
        QSGD().decode(p)
    with pytest.raises(ValueError, match="expected 2 uint8 bytes"):
        comp.from_wire(torch.zeros(3, dtype=torch.uint8), (10,), torch.float32)


def test_choco_delta_definitions():
    x = torch.randn(1000)
    assert TopK(0.1).choco_delta(x) == 0.1
    assert RandomK(0.2).choco_delta(x) == 0.2
    d = ScaledSign().choco_delta(x)
    assert 0 < d <= 1
    # The definition: ||C(x) - x||^2 <= (1 - delta) ||x||^2 holds exactly for sign.
    c = ScaledSign()
    err = (c.decode(c.encode(x)) - x).pow(2).sum()
    assert float(err) <= (1 - d) * float(x.pow(2).sum()) * (1 + 1e-5)


def test_compose_streams_do_not_overlap():
    """The quantizer draws the positions right after the sparsifier's: its codes are
    those of stream (seed, offset + round4(n)), and not those of the sparsifier's
    (seed, offset), which a quantizer reusing the sparsifier's stream would give."""
    comp = Compose(RandomK(0.5), QSGD(4, 64))
    assert comp.stream_span(100) == 200
    x = torch.randn(100)
    p = comp.encode(x, seed=3, offset=8)
    values = mk.randomk_encode(x, 0.5, 3, 8)
    after = mk.qsgd_encode(values, 4, 64, "max", 3, 8 + 100)
    shared = mk.qsgd_encode(values, 4, 64, "max", 3, 8)
    assert torch.equal(p.tensors["q.codes"], after[1])
    assert not torch.equal(after[1], shared[1])  # the check above can tell them apart
    dec = comp.decode(p)
    kept = mk.randomk_decode(values, 100, 0.5, 3, 8) != 0
    assert torch.equal(dec != 0, kept & (dec != 0))


def test_from_spec():
    assert isinstance(from_spec("moniqua:1"), Moniqua)
    assert from_spec("moniqua:2:stochastic:0.5").modulus == 2.0
    assert from_spec("qsgd:8:256:l2").norm == "l2"
    c = from_spec("topk:0.1+qsgd:4")
    assert isinstance(c, Compose) and isinstance(c.quantizer, QSGD)
    with pytest.raises(ValueError, match="unknown compressor 'gzip'"):
        from_spec("gzip")
    with pytest.raises(ValueError, match="bad compressor spec"):
        from_spec("topk")
    assert from_spec("randomk:0.1:rescale").rescale
    # a field more than the form takes was ignored: 'randomk:0.1:rescaled' gave a biased
    # compressor; and a composition's errors name the whole spec
    for spec, says in [("randomk:0.1:rescaled", "second field is 'rescale'"),
                       ("randomk:0.1:rescale:x", "at most 2 field"),
                       ("sign:7", "sign takes no fields"),
                       ("qsgd:4:512:max:elias:x", "at most 4 field"),
                       ("sign+qsgd:4", "sparsifier must be TopK or RandomK"),
                       ("topk:0.1+qsgd:4+sign", "one SPARSIFIER+QUANTIZER pair"),
                       ("randomk:0.5+qsgd:2:8:l2:elias", "fixed-size quantizer")]:
        with pytest.raises(ValueError, match=f"bad compressor spec '{re.escape(spec)}'.*"
                                             f"{re.escape(says)}"):
            from_spec(spec)


def test_unbiased_flags_tell_the_truth():
    # the contractive composition shrinks its decode by 1 / (1 + beta) on purpose
    assert not Compose(RandomK(1.0, True), QSGD(2, 8), contractive=True).unbiased
    assert Compose(RandomK(1.0, True), QSGD(2, 8)).unbiased
    ones = torch.ones(8)
    c = Compose(RandomK(1.0, True), QSGD(2, 8), contractive=True)
    assert float(c.decode(c.encode(ones)).mean()) < 0.5
    # random-k keeps with probability ratio rounded up to 2^-24: below it, refused
    with pytest.raises(ValueError, match="below it"):
        RandomK(1e-9, rescale=True)
