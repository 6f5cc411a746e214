"""The op table: every op declared once, with its schema, its fake kernel and its
reference kernel (DESIGN.md section 8).

Each op is a ``torch.library`` op in the ``moniqua_kernels`` namespace.  Ops write into
outputs the caller passes (``Tensor(a!) out``) and return nothing, except random-k's
encode (its length depends on the random mask) and Elias-coded QSGD's encode (its
length depends on the data).  The public wrappers (api.py)
validate, allocate the outputs when the user gave none, and call the op.

Kernels: a backend adds an implementation of an op by ``register_kernel(op, backend,
fn)`` where fn takes exactly the schema's arguments.  The reference kernel of every
op is registered here; triton/__init__.py and _native.py register theirs when they
load.  The dispatcher runs one kernel for every device, ``_route``, which asks the
backend registry (backends.py) which implementation serves the call.

Adding an op: its schema and reference kernel here, its reference in reference/, its
public wrapper and validation in api.py, and, per backend, a kernel and one
registration line.

Flags: ops that can find bad data take ``Tensor(f!)? flag``, an int64[3] row of the
error tables (_errors.py) they add counts to; None turns the checks off
(check_finite=False in the public ops).  A stream tensor (``Tensor? stream``, int64
[seed, offset]; for the mix [len(payloads) + 1, 2]) replaces the int seed and offset
when given, so a CUDA graph replays with whatever values it holds at replay time.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from . import _errors
from ..reference import kernels as ref

NAMESPACE = "moniqua_kernels"


@dataclass(frozen=True)
class OpDef:
    name: str
    schema: str
    reference: Callable
    row: int        # its row in the error tables


OPS: dict[str, OpDef] = {}
_lib = torch.library.Library(NAMESPACE, "DEF")


def _route(name: str):
    def route(*args):
        from .. import backends  # the registry imports the table: bind late
        for a in args:
            if isinstance(a, torch.Tensor):
                return backends.kernel(name, a.device)(*args)
        raise AssertionError(f"{name}: every op has a tensor argument")
    route.__name__ = f"route_{name}"
    return route


def _no_outputs(*args):
    return None


def declare(name: str, schema: str, reference: Callable,
            fake: Optional[Callable] = None) -> None:
    _lib.define(name + schema)
    _lib.impl(name, _route(name), "CompositeExplicitAutograd")
    torch.library.register_fake(f"{NAMESPACE}::{name}", fake or _no_outputs, lib=_lib)
    OPS[name] = OpDef(name, schema, reference, _errors.register(name))


def _randomk_encode_fake(x, ratio, seed, offset, flag):
    kept = torch.library.get_ctx().new_dynamic_size()
    return x.new_empty(kept)


def _qsgd_elias_encode_fake(x, bits, bucket_size, norm, seed, offset, stream, scales, flag):
    nbytes = torch.library.get_ctx().new_dynamic_size()
    return x.new_empty(nbytes, dtype=torch.uint8)


F = "Tensor(f!)? flag"
STREAM = "SymInt seed, SymInt offset, Tensor? stream"
MONIQUA = "float modulus, int bits, str rounding"

declare("philox_uniform", f"({STREAM}, Tensor(a!) out) -> ()", ref.philox_uniform)
declare("pack_bits", "(Tensor codes, int bits, Tensor(a!) out) -> ()", ref.pack_bits)
declare("unpack_bits", f"(Tensor payload, int bits, Tensor(a!) out, {F}) -> ()",
        ref.unpack_bits)
declare("moniqua_encode", f"(Tensor x, {MONIQUA}, {STREAM}, Tensor(a!) out, {F}) -> ()",
        ref.moniqua_encode)
declare("moniqua_decode",
        f"(Tensor payload, Tensor reference, {MONIQUA}, {STREAM}, Tensor(a!) out, {F}) -> ()",
        ref.moniqua_decode)
declare("moniqua_mix_",
        f"(Tensor(a!) x, Tensor[] payloads, float[] weights, Tensor own_payload, {MONIQUA}, "
        f"float gamma, SymInt[] seeds, SymInt[] offsets, Tensor? streams, {F}) -> ()",
        ref.moniqua_mix_)
declare("qsgd_encode",
        f"(Tensor x, int bits, int bucket_size, str norm, {STREAM}, Tensor(a!) scales, "
        f"Tensor(b!) payload, {F}) -> ()", ref.qsgd_encode)
declare("qsgd_decode",
        f"(Tensor scales, Tensor payload, int bits, int bucket_size, Tensor(a!) out, {F}) "
        "-> ()", ref.qsgd_decode)
# Elias-coded QSGD: the stream's length depends on the data (reference/qsgd_elias.py).
declare("qsgd_elias_encode",
        f"(Tensor x, int bits, int bucket_size, str norm, {STREAM}, Tensor(a!) scales, {F}) "
        "-> Tensor", ref.qsgd_elias_encode, fake=_qsgd_elias_encode_fake)
declare("qsgd_elias_decode",
        f"(Tensor scales, Tensor payload, int bits, int bucket_size, Tensor(a!) out, {F}) "
        "-> ()", ref.qsgd_elias_decode)
declare("sign_encode", f"(Tensor x, Tensor(a!) scale, Tensor(b!) payload, {F}) -> ()",
        ref.sign_encode)
declare("sign_decode", f"(Tensor scale, Tensor payload, Tensor(a!) out, {F}) -> ()",
        ref.sign_decode)
declare("randomk_count", "(SymInt n, float ratio, SymInt seed, SymInt offset, "
        "Tensor(a!) out) -> ()", ref.randomk_count)
declare("randomk_encode", f"(Tensor x, float ratio, SymInt seed, SymInt offset, {F}) -> Tensor",
        ref.randomk_encode, fake=_randomk_encode_fake)
declare("randomk_decode", "(Tensor values, float ratio, SymInt seed, SymInt offset, "
        "bool rescale, Tensor(a!) out) -> ()", ref.randomk_decode)
declare("topk_encode", f"(Tensor x, float ratio, Tensor(a!) indices, Tensor(b!) values, {F}) "
        "-> ()", ref.topk_encode)
declare("topk_decode", "(Tensor indices, Tensor values, Tensor(a!) out) -> ()",
        ref.topk_decode)


_errors.freeze()


def op(name: str):
    """The dispatcher op (torch.ops.moniqua_kernels.<name>.default)."""
    return getattr(getattr(torch.ops, NAMESPACE), name).default
