"""The custom ops under torch.library.opcheck and torch.compile(fullgraph=True)."""
import pytest
import torch

import moniqua_kernels as mk
from moniqua_kernels import ops
from conftest import requires_cuda


def _sample_calls(device="cpu"):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(37, generator=g).to(device)
    y = (x + 0.01).contiguous()
    q1 = mk.moniqua_encode(x, 1.0, 2, "dither", seed=3)
    q2 = mk.moniqua_encode(y, 1.0, 2, "dither", seed=4)
    scales, qcodes = mk.qsgd_encode(x, 4, 16, "max", 5, 0)
    scale, scodes = mk.sign_encode(x)
    values = mk.randomk_encode(x, 0.5, 6, 0)
    idx, vals = mk.topk_encode(x, 0.25)
    dev = torch.device(device)
    return [
        (ops._philox_uniform_op, (10, 7, 4, dev)),
        (ops._pack_bits_op, (torch.randint(0, 4, (13,), dtype=torch.uint8).to(device), 2)),
        (ops._unpack_bits_op, (q1, 2, 37)),
        (ops._moniqua_encode_op, (x, 1.0, 2, "dither", 3, 0)),
        (ops._moniqua_encode_op, (x.half(), 0.5, 8, "stochastic", -5, 8)),
        (ops._moniqua_decode_op, (q1, y, 1.0, 2, "dither", 3, 0)),
        (ops._moniqua_mix_op, (x.clone(), [q2], [0.5], q1, 1.0, 2, "dither", 1.0, [4, 3], [0, 0])),
        (ops._qsgd_encode_op, (x, 4, 16, "max", 5, 0)),
        (ops._qsgd_encode_op, (x, 8, 16, "l2", 5, 0)),
        (ops._qsgd_decode_op, (scales, qcodes, 37, 4, 16)),
        (ops._sign_encode_op, (x,)),
        (ops._sign_decode_op, (scale, scodes, 37)),
        (ops._randomk_count_op, (37, 0.5, 6, 0, dev)),
        (ops._randomk_decode_op, (values, 37, 0.5, 6, 0, True)),
        (ops._topk_encode_op, (x, 0.25)),
        (ops._topk_decode_op, (idx, vals, 37)),
    ]


@pytest.mark.parametrize("index", range(16))
def test_opcheck(index):
    op, args = _sample_calls()[index]
    torch.library.opcheck(op, args)


def test_opcheck_randomk_encode_data_dependent_size():
    # Its output length depends on the random mask: the fake kernel declares an
    # unbacked size, and every opcheck utility must accept that.
    torch.library.opcheck(ops._randomk_encode_op, (torch.randn(37), 0.5, 6, 0))


def test_compile_fullgraph_encode_decode_matches_eager():
    def roundtrip(x, y):
        payload = mk.moniqua_encode(x, 0.8, 2, "dither", seed=9, offset=4, check_finite=False)
        xh = mk.moniqua_decode(payload, y, 0.8, 2, "dither", seed=9, offset=4,
                               check_finite=False)
        scales, codes = mk.qsgd_encode(x, 4, 64, "max", 1, 0, check_finite=False)
        return payload, xh, codes, mk.qsgd_decode(scales, codes, x.numel(), 4, 64)

    x = torch.randn(1000)
    y = x + 0.05
    compiled = torch.compile(roundtrip, fullgraph=True)
    for got, want in zip(compiled(x, y), roundtrip(x, y)):
        assert torch.equal(got, want)


def test_compile_fullgraph_mix_in_place():
    def step(x, q_neighbour, q_own):
        mk.moniqua_mix_(x, [q_neighbour], [0.5], q_own, 1.0, 1, "dither", 1.0,
                        [1, 2], [0, 0], check_finite=False)
        return x

    x = torch.randn(500)
    qn = mk.moniqua_encode(x + 0.1, 1.0, 1, "dither", seed=1)
    qo = mk.moniqua_encode(x, 1.0, 1, "dither", seed=2)
    eager = step(x.clone(), qn, qo)
    compiled = torch.compile(step, fullgraph=True)(x.clone(), qn, qo)
    assert torch.equal(eager, compiled)


@requires_cuda
def test_reference_on_cuda_matches_cpu():
    x = torch.randn(10007)
    for bits, rounding in [(1, "dither"), (2, "stochastic"), (8, "nearest")]:
        with mk.use_backend("reference"):
            cpu = mk.moniqua_encode(x, 0.7, bits, rounding, seed=5)
            gpu = mk.moniqua_encode(x.cuda(), 0.7, bits, rounding, seed=5)
        assert torch.equal(cpu, gpu.cpu())


@requires_cuda
@pytest.mark.parametrize("index", range(16))
def test_opcheck_cuda(index):
    op, args = _sample_calls("cuda")[index]
    torch.library.opcheck(op, args)
