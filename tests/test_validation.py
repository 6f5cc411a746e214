"""Every refused input of DESIGN.md section 7 raises a clear exception before any kernel
runs, and writes nothing."""
import math
import re

import numpy as np
import pytest
import torch

import moniqua_kernels as mk


def x_():
    return torch.randn(100)


def codes_for(x, bits=1):
    return mk.moniqua_encode(x, 1.0, bits, "nearest")


@pytest.mark.parametrize("bits", [0, 3, 5, 16, -1, 2.0, True])
def test_bad_bits_lists_allowed(bits):
    with pytest.raises(ValueError, match="allowed values are 1, 2, 4, 8"):
        mk.moniqua_encode(x_(), 1.0, bits)
    with pytest.raises(ValueError, match="allowed values are 2, 4, 8"):
        mk.qsgd_encode(x_(), bits=bits if bits != 2.0 else 1)


@pytest.mark.parametrize("modulus", [0.0, -1.0, math.inf, math.nan, 1e-60, 1e300])
def test_bad_modulus(modulus):
    with pytest.raises(ValueError, match="modulus B must be finite and > 0"):
        mk.moniqua_encode(x_(), modulus)
    with pytest.raises(ValueError, match="modulus"):
        mk.moniqua_decode(codes_for(x_()), x_(), modulus)


def test_stochastic_one_bit_suggests_alternatives():
    with pytest.raises(ValueError, match="use rounding='nearest' or rounding='dither'"):
        mk.moniqua_encode(x_(), 1.0, 1, "stochastic")
    with pytest.raises(ValueError, match="needs bits >= 2"):
        mk.moniqua_modulus(1.0, 1, "stochastic")


def test_unknown_rounding():
    with pytest.raises(ValueError, match="stochastic, nearest, dither"):
        mk.moniqua_encode(x_(), 1.0, 2, "round")


@pytest.mark.parametrize("dtype", [torch.int32, torch.uint8, torch.bool, torch.float64,
                                   torch.complex64])
def test_non_float_or_unsupported_dtype(dtype):
    x = torch.zeros(10, dtype=dtype)
    with pytest.raises(TypeError, match="float32, float16 or bfloat16"):
        mk.moniqua_encode(x, 1.0)
    with pytest.raises(TypeError, match="float32, float16 or bfloat16"):
        mk.qsgd_encode(x)
    with pytest.raises(TypeError, match="float32, float16 or bfloat16"):
        mk.sign_encode(x)


@pytest.mark.parametrize("offset", [1, 2, 3, 6, -4])
def test_bad_offset(offset):
    err = "multiple of 4" if offset > 0 else ">= 0"
    with pytest.raises(ValueError, match=err):
        mk.moniqua_encode(x_(), 1.0, 1, "dither", seed=0, offset=offset)
    with pytest.raises(ValueError, match=err):
        mk.philox_uniform(4, 0, offset)


def test_bad_seed():
    with pytest.raises(ValueError, match="64 bits"):
        mk.moniqua_encode(x_(), 1.0, seed=2 ** 64)
    with pytest.raises(TypeError, match="seed must be an int"):
        mk.moniqua_encode(x_(), 1.0, seed=1.5)


def test_stream_fast_line_agrees_with_the_full_checks():
    """check_stream's first line (plain in-range ints) returns what check_seed and
    check_offset return, and every other value goes through them."""
    from moniqua_kernels.ops import _validate as v
    cpu = torch.device("cpu")
    values = [0, 1, 4, 2 ** 62, 2 ** 63 - 8, 2 ** 63, 2 ** 64 - 1, -1, -(2 ** 63), 3, -4,
              True, np.int64(8), np.uint64(2 ** 63 + 4)]
    for seed in values:
        for offset in values:
            for n in (0, 1024, 2 ** 62):
                try:
                    want = (v.check_seed(seed, cpu), v.check_offset(offset, n, cpu))
                except (TypeError, ValueError) as exc:
                    with pytest.raises(type(exc), match=re.escape(str(exc))):
                        v.check_stream(seed, offset, n, cpu)
                    continue
                got = v.check_stream(seed, offset, n, cpu)
                assert got == want and [type(g) for g in got] == [type(w) for w in want], \
                    (seed, offset, n)


def test_payload_length_mismatch_says_both():
    x = torch.randn(100)
    payload = codes_for(x, 2)  # 25 bytes
    with pytest.raises(ValueError, match=r"has 25 bytes but 100 elements at 1 bits need 13"):
        mk.moniqua_decode(payload, x, 1.0, 1, "nearest")
    with pytest.raises(TypeError, match="uint8"):
        mk.moniqua_decode(payload.to(torch.int32), x, 1.0, 2, "nearest")
    with pytest.raises(ValueError, match="scales has 1 entries"):
        mk.qsgd_decode(torch.ones(1), torch.zeros(50, dtype=torch.uint8), 100, 4, 50)


def test_reference_must_be_float_and_same_device():
    x = torch.randn(100)
    payload = codes_for(x)
    with pytest.raises(TypeError, match="reference must be float32"):
        mk.moniqua_decode(payload, x.to(torch.int64), 1.0, 1, "nearest")
    meta_ref = torch.empty(100, device="meta")
    with pytest.raises(ValueError, match="is on cpu but the call's tensors are on meta"):
        mk.moniqua_decode(payload, meta_ref, 1.0, 1, "nearest")


def test_non_finite_counts_elements_and_opt_out():
    x = torch.randn(1000)
    x[[3, 10, 500]] = torch.tensor([math.nan, math.inf, -math.inf])
    with pytest.raises(ValueError, match="3 non-finite element.*modulus is too small"):
        mk.moniqua_encode(x, 1.0)
    with pytest.raises(ValueError, match="3 non-finite") as raised:
        mk.qsgd_encode(x)
    assert "modulus" not in str(raised.value)  # QSGD has no modulus to blame
    with pytest.raises(ValueError, match="check_finite=False"):
        mk.sign_encode(x)
    # The explicit opt-out runs, and gives code 0 where x is not finite.
    payload = mk.moniqua_encode(x, 1.0, 8, "nearest", check_finite=False)
    assert payload[[3, 10, 500]].tolist() == [0, 0, 0]


def test_non_finite_in_a_parameter_is_raised_at_once_and_leaves_nothing_behind():
    # an nn.Parameter takes the dispatcher's path; its count was never raised there, and
    # the next, clean call failed with it
    x = torch.randn(16)
    x[3] = math.nan
    with pytest.raises(mk.KernelInputError, match="1 non-finite"):
        mk.moniqua_encode(torch.nn.Parameter(x, requires_grad=False), 1.0, 2, "nearest")
    mk.moniqua_encode(torch.randn(16), 1.0, 2, "nearest")


def test_refused_mix_writes_nothing():
    x = torch.randn(100)
    before = x.clone()
    good = codes_for(x)
    cases = [
        dict(payloads=[good], weights=[0.5, 0.5]),                       # count mismatch
        dict(payloads=[good[:5]], weights=[0.5]),                        # short payload
        dict(payloads=[good], weights=[0.5], seeds=[0]),                 # seeds length
        dict(payloads=[good], weights=[0.5], offsets=[0, 3]),            # offset % 4
        dict(payloads=[good], weights=[math.nan]),                       # weight
    ]
    for kwargs in cases:
        with pytest.raises(ValueError):
            mk.moniqua_mix_(x, own_payload=good, modulus=1.0, bits=1, rounding="nearest",
                            **kwargs)
        assert torch.equal(x, before)
    x[7] = math.nan
    with pytest.raises(ValueError, match="non-finite"):
        mk.moniqua_mix_(x, [good], [0.5], good, 1.0, 1, "nearest")
    assert torch.isnan(x[7]) and torch.equal(x[:7], before[:7])


def test_sparse_and_sign_refusals():
    x = torch.randn(100)
    for ratio in (0.0, -0.1, 1.5, math.nan):
        with pytest.raises(ValueError, match=r"ratio must be in \(0, 1\]"):
            mk.randomk_encode(x, ratio)
        with pytest.raises(ValueError, match=r"ratio must be in \(0, 1\]"):
            mk.topk_encode(x, ratio)
    values = mk.randomk_encode(x, 0.3, seed=1)
    with pytest.raises(ValueError, match="use the sender's seed"):
        mk.randomk_decode(values, 100, 0.3, seed=2)
    with pytest.raises(ValueError, match=r"indices must lie in \[0, 10\)"):
        mk.topk_decode(torch.tensor([0, 10], dtype=torch.int32), torch.ones(2), 10)
    with pytest.raises(ValueError, match="must pair up"):
        mk.topk_decode(torch.tensor([0], dtype=torch.int32), torch.ones(2), 10)
    with pytest.raises(TypeError, match="one element"):
        mk.sign_decode(torch.ones(2), torch.zeros(13, dtype=torch.uint8), 100)
    with pytest.raises(ValueError, match="norm='l3'"):
        mk.qsgd_encode(x, norm="l3")
    with pytest.raises(ValueError, match="bucket_size must be >= 1"):
        mk.qsgd_encode(x, bucket_size=0)


def test_pack_bits_refusals():
    with pytest.raises(ValueError, match=r"codes must lie in \[0, 4\)"):
        mk.pack_bits(torch.tensor([0, 4]), 2)
    with pytest.raises(TypeError, match="integer dtype"):
        mk.pack_bits(torch.tensor([0.0, 1.0]), 2)
    with pytest.raises(ValueError, match="has 1 bytes but 9 elements"):
        mk.unpack_bits(torch.zeros(1, dtype=torch.uint8), 1, 9)


def test_bad_theta():
    for theta in (0.0, -1.0, math.inf):
        with pytest.raises(ValueError, match="theta must be finite and > 0"):
            mk.moniqua_modulus(theta, 2, "nearest")


# ------------------------------------------------ refusals added with the op table

@pytest.mark.parametrize("modulus", ["1.0", b"1", True, False, None, [1.0]])
def test_modulus_must_be_a_real_number(modulus):
    with pytest.raises(TypeError, match="modulus must be a real number"):
        mk.moniqua_encode(x_(), modulus)


def test_modulus_so_small_that_its_inverse_overflows():
    with pytest.raises(ValueError, match="1/B overflows float32"):
        mk.moniqua_encode(x_(), 1e-39)  # a float32 subnormal: 1/B is inf


def test_x_over_modulus_overflow_is_reported_and_mix_writes_no_inf():
    """B = 1e-30 is a normal float32 with a finite 1/B, but x / B overflows for |x| > ~3e8:
    the kernels find it in the pass they make."""
    x = torch.tensor([1e10, 1.0, -2.0, 0.5])
    with pytest.raises(mk.KernelInputError, match="1 non-finite"):
        mk.moniqua_encode(x, 1e-30)
    own = mk.moniqua_encode(x, 1e-30, check_finite=False)
    xm = x.clone()
    with pytest.raises(mk.KernelInputError, match="moniqua_mix_"):
        mk.moniqua_mix_(xm, [own], [0.5], own, 1e-30)
    assert bool(torch.isfinite(xm).all())


def test_numpy_integer_bits_are_bits():
    np = pytest.importorskip("numpy")
    x = x_()
    assert torch.equal(mk.moniqua_encode(x, 1.0, np.int64(2), "nearest"),
                       mk.moniqua_encode(x, 1.0, 2, "nearest"))
    with pytest.raises(ValueError, match=r"bits=3 is not supported; allowed values are 1, 2"):
        mk.moniqua_encode(x, 1.0, np.int64(3))


def test_padding_bits_must_be_zero():
    """The unused high bits of the last byte: a 1000-element 1-bit payload decoded
    against a 999-element reference has its 1000th code there."""
    x = torch.ones(1000)  # 1-bit nearest of 1.0 at B = 4: code 1 for every element
    payload = mk.moniqua_encode(x, 4.0, 1, "nearest")
    assert payload[-1] == 0xFF
    with pytest.raises(mk.KernelInputError, match="padding bits"):
        mk.moniqua_decode(payload, x[:999], 4.0, 1, "nearest")
    with pytest.raises(mk.KernelInputError, match="padding bits"):
        mk.unpack_bits(payload, 1, 999)


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_a_payload_with_bad_padding_writes_nothing(backend):
    # a corrupt payload once updated the model, then raised
    x = torch.randn(5)
    own = mk.moniqua_encode(x, 4.0, 2, "nearest")
    bad = torch.tensor([0xFF, 0xFF], dtype=torch.uint8)   # 5 codes of 2 bits: 6 padding
    before = x.clone()
    with mk.use_backend(backend):
        with pytest.raises(mk.KernelInputError, match="padding bits"):
            mk.moniqua_mix_(x, [bad], [0.5], own, 4.0, 2, "nearest")
        assert torch.equal(x, before)
        out = torch.full((5,), 7.0)
        with pytest.raises(mk.KernelInputError, match="padding bits"):
            mk.moniqua_decode(bad, x, 4.0, 2, "nearest", out=out)
        assert torch.equal(out, torch.full((5,), 7.0))


def test_mix_refuses_leaf_that_requires_grad_and_inference_tensors():
    x = torch.randn(100, requires_grad=True)
    own = mk.moniqua_encode(x.detach(), 1.0)
    with pytest.raises(RuntimeError, match="leaf tensor that requires grad"):
        mk.moniqua_mix_(x, [own], [0.5], own, 1.0)
    with torch.no_grad():  # as an optimizer step does
        mk.moniqua_mix_(x, [own], [0.5], own, 1.0)
    with torch.inference_mode():
        xi = torch.randn(100)
    before = xi.clone()
    with pytest.raises(RuntimeError, match="inference tensor"):
        mk.moniqua_mix_(xi, [own], [0.5], own, 1.0)
    assert torch.equal(xi, before)
    with torch.inference_mode():
        mk.moniqua_mix_(xi, [own], [0.5], own, 1.0)


def test_writes_autograd_cannot_see_are_refused_or_versioned():
    # a mix into a tensor autograd records: refused (no gradient; the native kernels'
    # writes are invisible to autograd), as a view of a leaf is
    w = torch.randn(16, requires_grad=True)
    h = w.exp()                                   # exp saves its result for backward
    own = mk.moniqua_encode(h.detach(), 8.0, 2, "nearest")
    theirs = mk.moniqua_encode(h.detach() + 1, 8.0, 2, "nearest")
    for target in (h, torch.randn(64, requires_grad=True)[:16]):
        with pytest.raises(RuntimeError, match="requires grad"):
            mk.moniqua_mix_(target, [theirs], [0.5], own, 8.0, 2, "nearest")
    # under no_grad it runs, and bumps the version as torch's in-place ops do, so the
    # backward through exp's saved result refuses instead of giving a wrong gradient
    with torch.no_grad():
        mk.moniqua_mix_(h, [theirs], [0.5], own, 8.0, 2, "nearest")
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        h.sum().backward()
    out = torch.empty(16)
    mk.moniqua_decode(own, h.detach(), 8.0, 2, "nearest", out=out)
    assert out._version == 1
    with pytest.raises(RuntimeError, match="expanded"):
        mk.moniqua_mix_(torch.zeros(1).expand(16), [theirs], [0.5], own, 8.0, 2, "nearest")


def test_outputs_overlapping_inputs_are_refused_before_writing():
    # the native kernels read as they write: an overlapping out= gave a wrong result on
    # CPU (the reference's whole-tensor steps happened to be right), and topk_decode
    # zeroed the caller's values before torch refused
    x = torch.randn(2048)
    scales, payload = mk.qsgd_encode(x, 4, 512)
    buf = torch.empty(2048)
    buf[:4] = scales
    with pytest.raises(ValueError, match="out overlaps scales"):
        mk.qsgd_decode(buf[:4], payload, 2048, 4, 512, out=buf)
    codes = torch.randint(0, 2, (8192,), dtype=torch.uint8)
    with pytest.raises(ValueError, match="out overlaps codes"):
        mk.pack_bits(codes, 1, out=codes[-1024:])
    values = torch.arange(1.0, 11.0)
    with pytest.raises(ValueError, match="out overlaps values"):
        mk.topk_decode(torch.tensor([1, 2, 3]), values[:3], 10, out=values)
    assert torch.equal(values, torch.arange(1.0, 11.0))
    both = torch.empty(64, dtype=torch.uint8)
    with pytest.raises(ValueError, match=r"out\[1\] \(payload\) overlaps out\[0\]"):
        mk.sign_encode(torch.randn(32), out=(both[:4].view(torch.float32)[0], both[:4]))
    # a decode into its own reference reads each element before writing it: allowed;
    # shifted by one element it is not
    y = torch.randn(101)
    wire = mk.moniqua_encode(y[:100] + 0.01, 4.0, 8, "nearest")
    want = mk.moniqua_decode(wire, y[:100], 4.0, 8, "nearest")
    same = y[:100].clone()
    assert torch.equal(mk.moniqua_decode(wire, same, 4.0, 8, "nearest", out=same), want)
    with pytest.raises(ValueError, match="out overlaps reference"):
        mk.moniqua_decode(wire, y[:100], 4.0, 8, "nearest", out=y[1:])


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_refused_offset_tensors_raise_in_ops_without_a_flag_row(backend):
    # philox_uniform has no flag row: a refused offset tensor returned out unwritten;
    # random-k reads its stream on the host, and the reference took what cpu refused
    with mk.use_backend(backend):
        for offset in (5, -4):
            with pytest.raises(ValueError, match="offset"):
                mk.philox_uniform(8, 0, torch.tensor(offset))
            with pytest.raises(ValueError, match="offset"):
                mk.randomk_count(64, 0.5, 0, torch.tensor(offset))
            with pytest.raises(ValueError, match="offset"):
                mk.randomk_encode(torch.randn(64), 0.5, 0, torch.tensor(offset))
        assert torch.equal(mk.philox_uniform(8, 3, torch.tensor(8)), mk.philox_uniform(8, 3, 8))


def test_a_bucket_longer_than_the_data_is_one_bucket():
    # the kernels sized their work by bucket_size: 2^26 for 10 elements took 3.3 s and
    # 1.5 GB in the reference, 2^44 six seconds in the native kernels
    x = torch.randn(10)
    want = mk.qsgd_encode(x, 4, 16, seed=2)
    for huge in (1 << 26, 1 << 44):
        got = mk.qsgd_encode(x, 4, huge, seed=2)
        assert all(torch.equal(a, b) for a, b in zip(got, want))
        assert torch.equal(mk.qsgd_decode(*got, 10, 4, huge), mk.qsgd_decode(*want, 10, 4, 16))
        elias = mk.qsgd_elias_encode(x, 4, huge, seed=2)
        assert all(torch.equal(a, b) for a, b in zip(elias, mk.qsgd_elias_encode(x, 4, 16, seed=2)))
        assert torch.equal(mk.qsgd_elias_decode(*elias, 10, 4, huge),
                           mk.qsgd_elias_decode(*elias, 10, 4, 16))


def test_stream_tensor_offset_is_checked_by_the_kernel():
    x = x_()
    with pytest.raises(mk.KernelInputError, match="offset was negative or not a multiple of 4"):
        mk.moniqua_encode(x, 1.0, seed=torch.tensor(3), offset=torch.tensor(6))
    with pytest.raises(TypeError, match="one int64"):
        mk.moniqua_encode(x, 1.0, seed=torch.tensor(3.0))
