"""The "cpu" backend: native C++/OpenMP kernels from the extension moniqua_kernels._C.

OPS maps every op name to a callable with the reference's signature (see
reference/_ops.py); each calls the matching op of the private namespace
``torch.ops.moniqua_kernels_C``, registered by ``csrc/bindings.cpp``.  Importing this
module raises ImportError when the extension is not built; the backend registry turns
that into a one-time warning and the reference serves.

The CPU kernels are multiversioned (AVX-512 / AVX2 / baseline, picked when the
library loads); ``isa()`` says which one runs.
"""
from __future__ import annotations

import torch

try:
    from . import _C  # noqa: F401  (loading it registers the ops)
except ImportError as exc:  # not built, or built against another torch
    raise ImportError(
        f"moniqua_kernels._C is not available ({exc}); build it with "
        "`pip install -e .` or `python setup.py build_ext --inplace`") from exc

_ops = torch.ops.moniqua_kernels_C


def isa() -> str:
    """The instruction set the CPU kernels were dispatched to ("x86-64-v4", ...)."""
    return _C.isa()


def philox_uniform(n, seed, offset, device):
    out = torch.empty(n, dtype=torch.float32, device=device)
    _ops.philox_uniform_(out, seed, offset)
    return out


def pack_bits(codes, bits):
    return _ops.pack_bits(codes.reshape(-1).to(torch.uint8), bits)


def unpack_bits(payload, bits, n):
    return _ops.unpack_bits(payload.reshape(-1), bits, n)


def moniqua_encode(x, modulus, bits, rounding, seed, offset):
    return _ops.moniqua_encode(x, float(modulus), bits, rounding, seed, offset)


def moniqua_decode(payload, reference, modulus, bits, rounding, seed, offset):
    return _ops.moniqua_decode(payload, reference, float(modulus), bits, rounding, seed, offset)


def moniqua_mix_(x, payloads, weights, own_payload, modulus, bits, rounding, gamma, seeds,
                 offsets):
    _ops.moniqua_mix_(x, list(payloads), [float(w) for w in weights], own_payload,
                      float(modulus), bits, rounding, float(gamma), list(seeds), list(offsets))


def qsgd_encode(x, bits, bucket_size, norm, seed, offset):
    return _ops.qsgd_encode(x, bits, bucket_size, norm, seed, offset)


def qsgd_decode(scales, payload, n, bits, bucket_size):
    return _ops.qsgd_decode(scales, payload, n, bits, bucket_size)


def sign_encode(x):
    return _ops.sign_encode(x)


def sign_decode(scale, payload, n):
    return _ops.sign_decode(scale.reshape(()), payload, n)


def randomk_count(n, ratio, seed, offset, device):
    out = torch.empty((), dtype=torch.int64, device=device)
    _ops.randomk_count_(out, n, float(ratio), seed, offset)
    return out


def randomk_encode(x, ratio, seed, offset):
    return _ops.randomk_encode(x, float(ratio), seed, offset)


def randomk_decode(values, n, ratio, seed, offset, rescale):
    return _ops.randomk_decode(values, n, float(ratio), seed, offset, bool(rescale))


def topk_encode(x, ratio):
    return _ops.topk_encode(x, float(ratio))


def topk_decode(indices, values, n):
    return _ops.topk_decode(indices, values, n)


OPS = {
    "philox_uniform": philox_uniform,
    "pack_bits": pack_bits,
    "unpack_bits": unpack_bits,
    "moniqua_encode": moniqua_encode,
    "moniqua_decode": moniqua_decode,
    "moniqua_mix_": moniqua_mix_,
    "qsgd_encode": qsgd_encode,
    "qsgd_decode": qsgd_decode,
    "sign_encode": sign_encode,
    "sign_decode": sign_decode,
    "randomk_encode": randomk_encode,
    "randomk_decode": randomk_decode,
    "randomk_count": randomk_count,
    "topk_encode": topk_encode,
    "topk_decode": topk_decode,
}
