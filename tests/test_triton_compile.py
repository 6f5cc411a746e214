"""The Triton kernels compile for an H100 (sm_90) and their PTX keeps the exactness rules,
checked without a GPU.

Triton's NVIDIA backend (with the ptxas it ships) compiles to PTX and cubin on a machine
with no GPU.  For every kernel family, in representative specialisations (bit widths,
roundings, input dtypes, 64-bit and 32-bit scalars, the mix's tuple arguments), this
asserts:
  * it compiles down to a cubin (the compiled path, not the interpreter, accepts it);
  * no fma instruction: every float32 product and sum rounds on its own, as the
    reference's do (and, as a control, that the same kernel with fp fusion on does
    contain fma, so the check is not vacuous);
  * divisions and square roots are IEEE (div.rn.f32, sqrt.rn.f32), never approximate;
  * the Moniqua kernels and QSGD's one-pass encode read x / y with 128-bit loads
    (ld.global.v4) although n is not known to be a multiple of 16: only the last block
    (bucket) is masked (load_tail).  Pointers
    carry the 16-byte alignment Triton's launcher specialises torch tensors to.
The compile runs in a subprocess without TRITON_INTERPRET (conftest.py sets it on
machines without a GPU, and triton.jit reads it when the kernels are defined).
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ARCH = 90  # H100

E, BLK = "constexpr", 4096


def _cases():
    """(name, module, kernel, signature, constexprs, needs_div, needs_sqrt).

    Every per-call integer is i32 (the stream's halves, first_block) or i64 (sizes) and
    unspecialised; stream_ptr None (ints) or a pointer (a graph-safe stream tensor);
    flag_ptr a pointer (checks on) or None."""
    S = {"k0": "i32", "k1": "i32", "c0": "i32", "c1": "i32"}
    enc = {"x_ptr": None, "out_ptr": "*u8", "n": "i64", "nbytes": "i64", "inv_b": "fp32", **S,
           "stream_ptr": E, "flag_ptr": "*i64", "first_block": "i32", "BITS": E,
           "ROUNDING": E, "MASKED": E, "BLOCK": E}
    dec = {"payload_ptr": "*u8", "y_ptr": None, "out_ptr": None, "n": "i64", "nbytes": "i64",
           "b32": "fp32", "inv_b": "fp32", **S, "stream_ptr": E, "flag_ptr": "*i64",
           "first_block": "i32", "BITS": E, "ROUNDING": E, "MASKED": E, "BLOCK": E}

    def mix(dtype, neighbours):
        halves = {k + "s": ("i64",) * (neighbours + 1) for k in ("k0", "k1", "c0", "c1")}
        return {"x_ptr": f"*{dtype}", "payloads": ("*u8",) * neighbours,
                "weights": ("fp32",) * neighbours, "own_ptr": "*u8", "n": "i64",
                "nbytes": "i64", "b32": "fp32", "inv_b": "fp32", "gamma": "fp32", **halves,
                "streams_ptr": E, "flag_ptr": "*i64", "first_block": "i32", "BITS": E,
                "ROUNDING": E, "MASKED": E, "BLOCK": E}

    def typed(sig, dtype):
        return {k: (f"*{dtype}" if v is None else v) for k, v in sig.items()}

    def el(bits, rounding, masked=False):
        return {"stream_ptr": None, "BITS": bits, "ROUNDING": rounding, "MASKED": masked,
                "BLOCK": BLK}

    out = []
    for dtype, bits, rounding in (("fp32", 1, 2), ("bf16", 4, 0), ("fp16", 8, 1), ("fp32", 2, 0)):
        out.append((f"moniqua_encode {dtype} {bits}b r{rounding}", "moniqua",
                    "_moniqua_encode_kernel", typed(enc, dtype), el(bits, rounding), False, False))
    out.append(("moniqua_encode masked tail", "moniqua", "_moniqua_encode_kernel",
                typed(enc, "fp32"), el(1, 2, True), False, False))
    graph = dict(typed(enc, "fp32"), stream_ptr="*i64")
    out.append(("moniqua_encode stream tensor", "moniqua", "_moniqua_encode_kernel", graph,
                {"BITS": 1, "ROUNDING": 2, "MASKED": True, "BLOCK": BLK}, False, False))
    for dtype, bits, rounding in (("fp32", 1, 2), ("bf16", 8, 1), ("fp16", 2, 0)):
        out.append((f"moniqua_decode {dtype} {bits}b r{rounding}", "moniqua",
                    "_moniqua_decode_kernel", typed(dec, dtype), el(bits, rounding), False, False))
    # block: the mix launches with 2048 or 4096 (moniqua.mix_block)
    for dtype, bits, rounding, k, block in (("bf16", 1, 2, 2, BLK), ("fp32", 8, 0, 3, BLK),
                                            ("fp16", 4, 1, 0, BLK), ("fp32", 1, 1, 2, 2048)):
        out.append((f"moniqua_mix {dtype} {bits}b r{rounding} {k} neighbours, block {block}",
                    "moniqua", "_moniqua_mix_kernel", mix(dtype, k),
                    {"streams_ptr": None, "BITS": bits, "ROUNDING": rounding, "MASKED": False,
                     "BLOCK": block}, False, False))
    qs = {"k0": "i32", "k1": "i32", "c0": "i32", "c1": "i32"}

    def qenc(dtype, stream, flag):
        return {"x_ptr": f"*{dtype}", "scales_ptr": "*fp32", "out_ptr": "*u8", "n": "i64",
                "d8": "i64", **qs, "stream_ptr": stream, "flag_ptr": flag,
                "first_block": "i32", "BITS": E, "NORM": E, "MASKED": E, "WHOLE": E,
                "BLOCK": E}

    def qscale(dtype, stream, part):
        return {"x_ptr": f"*{dtype}", "scales_ptr": "*fp32", "inv_ptr": "*fp32",
                "part_ptr": part, "n": "i64", "d": "i64", "piece": "i64", "pieces": "i64", **qs,
                "stream_ptr": stream, "flag_ptr": "*i64", "BITS": E, "NORM": E, "SPLIT": E,
                "CHUNK": E}

    out += [
        ("qsgd_encode fused max", "qsgd", "_qsgd_encode_kernel", qenc("fp32", E, "*i64"),
         {"stream_ptr": None, "BITS": 4, "NORM": 0, "MASKED": False, "WHOLE": True,
          "BLOCK": 512}, True, False),
        ("qsgd_encode fused d=1000 full buckets", "qsgd", "_qsgd_encode_kernel",
         qenc("fp32", E, "*i64"), {"stream_ptr": None, "BITS": 4, "NORM": 0, "MASKED": False,
                                   "WHOLE": False, "BLOCK": 1024}, True, False),
        ("qsgd_encode fused l2 bf16 masked", "qsgd", "_qsgd_encode_kernel", qenc("bf16", E, E),
         {"stream_ptr": None, "flag_ptr": None, "BITS": 8, "NORM": 1, "MASKED": True,
          "WHOLE": True, "BLOCK": 512}, True, True),
        ("qsgd_encode fused stream tensor", "qsgd", "_qsgd_encode_kernel",
         qenc("fp32", "*i64", "*i64"), {"BITS": 2, "NORM": 0, "MASKED": True, "WHOLE": False,
                                        "BLOCK": 128}, True, False),
        ("qsgd_scale l2", "qsgd", "_qsgd_scale_kernel", qscale("fp16", E, E),
         {"stream_ptr": None, "part_ptr": None, "BITS": 2, "NORM": 1, "SPLIT": False,
          "CHUNK": 1024}, True, True),
        ("qsgd_scale stream tensor", "qsgd", "_qsgd_scale_kernel", qscale("fp32", "*i64", E),
         {"part_ptr": None, "BITS": 4, "NORM": 0, "SPLIT": False, "CHUNK": 1024}, True, False),
        ("qsgd_scale pieces l2 stream tensor", "qsgd", "_qsgd_scale_kernel",
         qscale("bf16", "*i64", "*fp32"), {"BITS": 8, "NORM": 1, "SPLIT": True, "CHUNK": 1024},
         False, False),
        ("qsgd_finish l2 stream tensor", "qsgd", "_qsgd_finish_kernel",
         {"part_ptr": "*fp32", "scales_ptr": "*fp32", "inv_ptr": "*fp32", "pieces": "i64", **qs,
          "stream_ptr": "*i64", "BITS": E, "NORM": E, "CHUNK": E},
         {"BITS": 4, "NORM": 1, "CHUNK": 1024}, True, True),
        ("qsgd_pack", "qsgd", "_qsgd_pack_kernel",
         {"x_ptr": "*fp32", "inv_ptr": "*fp32", "out_ptr": "*u8", "n": "i64", "nbytes": "i64",
          "d": "i64", **qs, "stream_ptr": E, "flag_ptr": "*i64", "first_block": "i32",
          "BITS": E, "D_MODE": E, "MASKED": E, "BLOCK": E},
         {"stream_ptr": None, "BITS": 4, "D_MODE": -2, "MASKED": False, "BLOCK": BLK}, False,
         False),
        *[(f"qsgd_decode d_mode={mode} masked={masked}", "qsgd", "_qsgd_decode_kernel",
           {"scales_ptr": "*fp32", "payload_ptr": "*u8", "out_ptr": "*fp32", "n": "i64",
            "nbytes": "i64", "d": "i64", "flag_ptr": "*i64", "first_block": "i32", "BITS": E,
            "D_MODE": E, "MASKED": E, "BLOCK": E},
           {"BITS": bits, "D_MODE": mode, "MASKED": masked, "BLOCK": BLK}, True, False)
          for bits, mode, masked in ((8, 9, True), (4, -1, False), (2, -2, True))],
        ("sign_encode", "sign", "_sign_encode_kernel",
         {"x_ptr": "*bf16", "out_ptr": "*u8", "partial_ptr": "*fp32", "flag_ptr": "*i64",
          "n": "i64", "nbytes": "i64", "first_block": "i32", "MASKED": E, "BLOCK": E},
         {"MASKED": False, "BLOCK": BLK}, False, False),
        ("sign_scale", "sign", "_sign_scale_kernel",
         {"partial_ptr": "*fp32", "scale_ptr": "*fp32", "nparts": "i32", "n_f32": "fp32",
          "CHUNK": E}, {"CHUNK": 1024}, True, False),
        ("sign_decode", "sign", "_sign_decode_kernel",
         {"scale_ptr": "*fp32", "payload_ptr": "*u8", "out_ptr": "*fp32", "flag_ptr": "*i64",
          "n": "i64", "nbytes": "i64", "first_block": "i32", "MASKED": E, "BLOCK": E},
         {"MASKED": True, "BLOCK": BLK}, False, False),
        ("randomk_count", "sparse", "_randomk_count_kernel",
         {"counts_ptr": "*i64", "n": "i64", "threshold": "i32", **qs, "BLOCK": E},
         {"BLOCK": BLK}, False, False),
        ("randomk_gather", "sparse", "_randomk_gather_kernel",
         {"x_ptr": "*fp16", "base_ptr": "*i64", "out_ptr": "*fp16", "n": "i64",
          "threshold": "i32", **qs, "BLOCK": E}, {"BLOCK": BLK}, False, False),
        ("randomk_scatter rescale bf16", "sparse", "_randomk_scatter_kernel",
         {"values_ptr": "*bf16", "base_ptr": "*i64", "out_ptr": "*bf16", "n": "i64",
          "threshold": "i32", **qs, "inv_ratio": "fp32", "RESCALE": E, "BLOCK": E},
         {"RESCALE": True, "BLOCK": BLK}, False, False),
        ("philox_uniform", "packing", "_philox_uniform_kernel",
         {"out_ptr": "*fp32", "n": "i64", **qs, "stream_ptr": E, "first_block": "i32",
          "MASKED": E, "BLOCK": E}, {"stream_ptr": None, "MASKED": False, "BLOCK": BLK},
         False, False),
        ("pack_bits", "packing", "_pack_bits_kernel",
         {"codes_ptr": "*u8", "out_ptr": "*u8", "n": "i64", "nbytes": "i64",
          "first_block": "i32", "BITS": E, "MASKED": E, "BLOCK": E},
         {"BITS": 1, "MASKED": True, "BLOCK": BLK}, False, False),
        ("unpack_bits", "packing", "_unpack_bits_kernel",
         {"payload_ptr": "*u8", "out_ptr": "*u8", "n": "i64", "nbytes": "i64",
          "flag_ptr": "*i64", "first_block": "i32", "BITS": E, "MASKED": E, "BLOCK": E},
         {"BITS": 2, "MASKED": True, "BLOCK": BLK}, False, False),
    ]
    return out


def _aligned_pointers(signature: dict) -> dict:
    """tt.divisibility=16 on every pointer (tuple elements too), as the launcher
    specialises 16-byte aligned tensors; integers get no divisibility hint."""
    attrs = {}
    for k, kind in enumerate(signature.values()):
        for j, t in enumerate(kind) if isinstance(kind, tuple) else [(None, kind)]:
            if t.startswith("*"):
                attrs[(k,) if j is None else (k, j)] = [["tt.divisibility", 16]]
    return attrs


def compile_all() -> list[dict]:
    """Compile every case for sm_ARCH; report per case what the PTX contains."""
    import importlib

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from moniqua_kernels.triton._common import LAUNCH
    from moniqua_kernels.triton.qsgd import _bucket_warps

    target = GPUTarget("cuda", ARCH, 32)
    report = []
    for name, module, kernel, signature, constexprs, needs_div, needs_sqrt in _cases():
        fn = getattr(importlib.import_module(f"moniqua_kernels.triton.{module}"), kernel)
        src = ASTSource(fn=fn, signature=signature, constexprs=constexprs,
                        attrs=_aligned_pointers(signature))
        row = {"name": name, "needs_div": needs_div, "needs_sqrt": needs_sqrt}
        options = dict(LAUNCH)
        if kernel == "_qsgd_encode_kernel":  # the warps its launcher gives a bucket tile
            options["num_warps"] = _bucket_warps(constexprs["BLOCK"])
        try:
            compiled = triton.compile(src, target=target, options=options)
        except Exception as exc:  # report, the test names the kernel
            row["error"] = f"{type(exc).__name__}: {exc}"[:2000]
            report.append(row)
            continue
        ptx = compiled.asm["ptx"]
        row.update(
            cubin=len(compiled.asm.get("cubin", b"")) > 0,
            fma=len(re.findall(r"\bfma\.", ptx)),
            div_rn=len(re.findall(r"\bdiv\.rn\.f32", ptx)),
            div_approx=len(re.findall(r"\bdiv\.(approx|full)\.", ptx)),
            sqrt_rn=len(re.findall(r"\bsqrt\.rn\.f32", ptx)),
            sqrt_approx=len(re.findall(r"\bsqrt\.approx\.", ptx)),
            rcp_approx=len(re.findall(r"\brcp\.approx\.", ptx)),
            ld_v4=len(re.findall(r"\bld\.global(\.\w+)*\.v4\.", ptx)),
            cvt_bf16=len(re.findall(r"\bcvt\.rn\.bf16(x2)?\.f32\b", ptx)),
            cvt_rmi=len(re.findall(r"\bcvt\.rmi\.s32\.f32\b", ptx)),
            floor_ftz=len(re.findall(r"\bcvt\.rmi\.ftz\.f32\.f32\b", ptx)),
        )
        report.append(row)
    # Control: the same mix kernel with fusion on must contract, or fma=0 proves nothing.
    from moniqua_kernels.triton.moniqua import _moniqua_mix_kernel
    name, _, _, signature, constexprs, _, _ = next(c for c in _cases() if c[2] ==
                                                   "_moniqua_mix_kernel")
    fused = triton.compile(ASTSource(fn=_moniqua_mix_kernel, signature=signature,
                                     constexprs=constexprs), target=target,
                           options=dict(LAUNCH, enable_fp_fusion=True))
    report.append({"name": "control: " + name + " with fp fusion",
                   "fma": len(re.findall(r"\bfma\.", fused.asm["ptx"])), "control": True})
    return report


def _nvidia_backend_reason():
    try:
        import triton  # noqa: F401
        from triton.backends.nvidia import compiler  # noqa: F401
    except Exception as exc:
        return f"Triton's NVIDIA backend does not import ({exc})"
    ptxas = Path(compiler.__file__).parent / "bin" / "ptxas"
    if not ptxas.exists() and not os.environ.get("TRITON_PTXAS_PATH"):
        return "no ptxas to assemble the PTX"
    return None


@pytest.mark.skipif(_nvidia_backend_reason() is not None,
                    reason=str(_nvidia_backend_reason()))
def test_stream_arguments_never_specialise():
    """Every stream gives the launcher the same specialisation key: the scalar halves
    are unspecialised i32, and the mix's tuple halves (whose elements Triton specialises
    regardless of do_not_specialize) are packed so that none is 1 or a multiple of 16."""
    from triton.backends.compiler import GPUTarget
    from triton.backends.nvidia.compiler import CUDABackend
    try:
        from triton.runtime.jit import native_specialize_impl as specialize
    except ImportError:
        pytest.skip("this Triton has no native_specialize_impl")
    from moniqua_kernels.triton._common import stream_args, tuple_halves
    backend = CUDABackend(GPUTarget("cuda", ARCH, 32))
    streams = [(0, 0), (1, 4), (16, 2 ** 34 + 4), (2 ** 64 - 1, 2 ** 36), (-(2 ** 62), 64),
               (2 ** 32 + 1, 2 ** 40 + 8)]
    keys = {specialize(backend, tuple_halves(s, o), False, False, True) for s, o in streams}
    assert len(keys) == 1, keys
    assert "constexpr" not in str(keys)
    scalar = {specialize(backend, h, False, False, True) for s, o in streams
              for h in stream_args(s, o)}
    assert scalar == {("i32", None)}, scalar


@pytest.mark.skipif(_nvidia_backend_reason() is not None,
                    reason=str(_nvidia_backend_reason()))
def test_kernels_compile_for_sm90_without_fma_or_approximate_division():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(ROOT)
    out = subprocess.run([sys.executable, __file__], env=env, capture_output=True, text=True,
                         timeout=1500)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert len(report) == len(_cases()) + 1
    for row in report:
        if row.get("control"):
            assert row["fma"] > 0, row  # fusion on would contract: the check below bites
            continue
        assert "error" not in row, row
        assert row["cubin"], row
        assert row["fma"] == 0, row
        assert row["div_approx"] == 0 and row["rcp_approx"] == 0, row
        assert row["sqrt_approx"] == 0, row
        if row["needs_div"]:
            assert row["div_rn"] > 0, row
        if row["needs_sqrt"]:
            assert row["sqrt_rn"] > 0, row
        if row["name"].startswith(("moniqua_", "qsgd_encode")) and "masked" not in row["name"] \
                and "stream" not in row["name"]:
            assert row["ld_v4"] > 0, row  # full blocks: unmasked, 128-bit loads
        if row["name"].startswith(("moniqua_decode bf16", "moniqua_mix bf16")):
            assert row["cvt_bf16"] > 0, row  # round_to: the GPU's conversion
        if row["name"].startswith("moniqua_encode"):
            # floor_to_int32: a NaN w (non-finite t) becomes code 0 in the conversion;
            # floor_exact: floor(t) of a negative subnormal t is -1, not -0 (tl.floor's
            # cvt.rmi.ftz)
            assert row["cvt_rmi"] > 0 and row["floor_ftz"] == 0, row


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    print(json.dumps(compile_all()))
