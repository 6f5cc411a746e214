"""Microbenchmarks of the compression ops: every provider timed side by side in one run.

For each op x bits x rounding x dtype x size, every provider below is timed side by
side in one run, and each provider that cannot run is recorded with its reason:

  <backend>       the kernel alone: the backend's registered implementation called
                  directly on prepared inputs (reference, cpu, cuda, triton)
  dispatcher      the table's op through torch.ops (torch.ops.moniqua_kernels.<op>), same
                  arguments as the kernel row: the dispatcher routes it to the kernel
                  auto picks (what torch.compile calls; the first build's "registered
                  kernel called directly")
  public          the public op with its default arguments (auto backend, the default
                  finite check): what a user's call costs
  public-unchecked  the same with check_finite=False (every op that checks its data)
  public-out      the same defaults writing into a preallocated out= (Moniqua
                  encode/decode, QSGD decode): the cost of allocating the result
  eager           the reference function called directly (plain torch)
  compile         torch.compile(reference function)
  torch           the obvious torch code a user would write (torch.rand dither,
                  shift-and-sum packing): same work, not the same bytes
  torch-compile   torch.compile of that code
  copy            y.copy_(x) on the op's input: the copy bandwidth of the same run
  numpy.packbits  numpy.packbits(x < 0) plus numpy.abs(x).mean() (CPU, beside scaled sign)
  cupy.packbits   sign -> bool -> cupy.packbits (GPU, beside scaled sign)

Bandwidth = (bytes the op must read + bytes it must write) / median time.  GPU timing is
``triton.testing.do_bench`` (median, L2 flushed between runs); CPU timing is
``torch.utils.benchmark`` (median of blocked_autorange, thread count recorded).  The
baselines (eager, compile, torch, torch-compile) run only at --baseline-sizes: they are
slow and compiling them costs seconds each.  --budget-s stops timing when the budget is
spent (the rows left over say so), so a run on a lent GPU always returns; the results
files are written again after every case, so a run killed mid-way keeps what it timed.
--compile-timeout bounds each torch.compile: torch 2.13's inductor did not finish
compiling the reference Moniqua encode (1 bit, dither, 2^16 elements) in 15 minutes on
this project's 2-core CPU machine, where py-spy found it deep in the recursion of its
pointwise lowering (make_pointwise's inner_fn, one level per operation of the ten Philox
rounds it fuses), so without a bound one case takes a whole GPU lease.

Results: ``<out>/ops_<device>[-quick].{json,md,png}`` (default out:
benchmarks/results under the current folder).  Run ``python -m moniqua_kernels bench
--quick`` (CPU: under a minute) or see ``--help``.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import re
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

import moniqua_kernels as mk
from moniqua_kernels import backends
from moniqua_kernels.ops._table import op as table_op
from moniqua_kernels.reference import moniqua as ref_moniqua
from moniqua_kernels.reference import philox as ref_philox
from moniqua_kernels.reference import qsgd as ref_qsgd
from moniqua_kernels.reference import sign as ref_sign
from moniqua_kernels.reference.packing import packed_nbytes

OPS = ("moniqua_encode", "moniqua_decode", "moniqua_mix", "qsgd_encode", "qsgd_encode_whole",
       "qsgd_decode", "sign_encode", "philox_uniform")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
ROUNDINGS = ("dither", "nearest", "stochastic")
MODULUS, SEED, OFFSET = 2.0, 1234, 0
QSGD_BUCKET = 512
MIX_WEIGHTS, MIX_GAMMA = (1 / 3, 1 / 3), 1.0
# The registered op behind each benchmark (what the backend registry is asked about).
MONIQUA_OPS = ("moniqua_encode", "moniqua_decode", "moniqua_mix")

QUICK = {"sizes": [1 << 10, 1 << 16], "bits": [1, 8], "dtypes": ["fp32"],
         "roundings": ["dither"], "compile": False}
FULL_GPU = {"sizes": [1 << k for k in range(20, 29, 2)], "bits": [1, 2, 4, 8],
            "dtypes": ["fp32", "bf16"], "roundings": ["dither", "nearest"], "compile": True,
            "baseline_sizes": [1 << 26]}
# CPU: the eager reference needs ~seconds per call above 2^22 elements.
FULL_CPU = {"sizes": [1 << k for k in range(10, 23, 4)], "bits": [1, 2, 4, 8],
            "dtypes": ["fp32", "bf16"], "roundings": ["dither"], "compile": True}


# ------------------------------------------------------------- the obvious torch code

def _torch_pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    per = 8 // bits
    codes = torch.nn.functional.pad(codes, (0, (-codes.numel()) % per)).view(-1, per)
    shifts = torch.arange(per, device=codes.device, dtype=codes.dtype) * bits
    return (codes << shifts).sum(1).to(torch.uint8)


def _torch_unpack(payload: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    per = 8 // bits
    shifts = torch.arange(per, device=payload.device, dtype=torch.int32) * bits
    return ((payload.int()[:, None] >> shifts) & ((1 << bits) - 1)).view(-1)[:n]


def torch_moniqua_encode(x, modulus, bits):
    """What a user would write: remainder, torch.rand dither, shift-and-sum packing."""
    z = torch.remainder(x.float() / modulus, 1.0)
    codes = torch.floor(z * (1 << bits) + torch.rand_like(z)).int() % (1 << bits)
    return _torch_pack(codes, bits)


def _torch_decoded(payload, yf, modulus, bits):
    k = _torch_unpack(payload, bits, yf.numel()).float()
    zh = (k + 0.5 - torch.rand_like(yf)) / (1 << bits)
    a = zh * modulus - yf
    return yf + a - modulus * torch.round(a / modulus)


def torch_moniqua_decode(payload, y, modulus, bits):
    return _torch_decoded(payload, y.float(), modulus, bits).to(y.dtype)


def torch_moniqua_mix_(x, payloads, weights, own, modulus, bits, gamma):
    xf = x.float()
    d_self = _torch_decoded(own, xf, modulus, bits)
    acc = sum(w * (_torch_decoded(p, xf, modulus, bits) - d_self)
              for p, w in zip(payloads, weights))
    x.copy_(xf + gamma * acc)


def torch_sign_encode(x):
    return x.abs().float().mean(), _torch_pack((x < 0).int(), 1)


# ----------------------------------------------------------------------------- cases

@dataclass(frozen=True)
class BenchOp:
    """How to benchmark one op: the bytes it must move, and builders of each provider's
    call from a Case (inputs made by Case).  kernel(c) gives the registered kernel's
    arguments (schema order; checks off: the kernel alone)."""
    registry: str
    nbytes: Callable[["Case"], int]
    kernel: Callable[["Case"], tuple]
    public: Callable[..., Callable[[], object]]  # (case, **overrides of the defaults)
    reference: Callable
    ref_args: Callable[["Case"], tuple]
    obvious: Optional[Callable[["Case"], Optional[Callable]]] = None
    # For ops that allocate one result (Moniqua encode/decode, QSGD decode): that result,
    # preallocated; row "public-out" (out= this: what allocating the result costs) then
    # runs beside "public".
    result: Optional[Callable[["Case"], torch.Tensor]] = None
    # The public op checks its data by default (check_finite): row "public-unchecked"
    # (check_finite=False: what the default check costs) runs beside "public".
    checks: bool = True


def _nb(c):
    return packed_nbytes(c.n, c.bits)


def _u8(n, device):
    return torch.empty(n, dtype=torch.uint8, device=device)


def _mix_kernel_args(c):
    return (c.xm, c.payloads[:2], list(MIX_WEIGHTS), c.payloads[2], MODULUS, c.bits,
            c.rounding, MIX_GAMMA, [SEED] * 3, [OFFSET] * 3, None, None)


def _qsgd_encode_op(bucket: Callable[["Case"], int]) -> BenchOp:
    """QSGD encode, max norm, with buckets of bucket(case) elements."""
    def nq(c):
        return math.ceil(c.n / bucket(c))
    return BenchOp(
        "qsgd_encode", lambda c: c.n * c.esize + _nb(c) + 4 * nq(c),
        lambda c: (c.x, c.bits, bucket(c), "max", SEED, OFFSET, None,
                   torch.empty(nq(c), device=c.device), _u8(_nb(c), c.device), None),
        lambda c, **kw: lambda: mk.qsgd_encode(c.x, bits=c.bits, bucket_size=bucket(c),
                                               seed=SEED, **kw),
        ref_qsgd.qsgd_encode, lambda c: (c.x, c.bits, bucket(c), "max", SEED, OFFSET))


TABLE = {
    "moniqua_encode": BenchOp(
        "moniqua_encode", lambda c: c.n * c.esize + _nb(c),
        lambda c: (c.x, MODULUS, c.bits, c.rounding, SEED, OFFSET, None, _u8(_nb(c), c.device),
                   None),
        lambda c, **kw: lambda: mk.moniqua_encode(c.x, MODULUS, bits=c.bits,
                                                  rounding=c.rounding, seed=SEED, **kw),
        ref_moniqua.moniqua_encode, lambda c: (c.x, MODULUS, c.bits, c.rounding, SEED, OFFSET),
        lambda c: (None if c.rounding == "nearest" else
                   (torch_moniqua_encode, (c.x, MODULUS, c.bits))),
        lambda c: _u8(_nb(c), c.device)),
    "moniqua_decode": BenchOp(
        "moniqua_decode", lambda c: _nb(c) + 2 * c.n * c.esize,  # payload, y in; values out
        lambda c: (c.payloads[0], c.y, MODULUS, c.bits, c.rounding, SEED, OFFSET, None,
                   torch.empty_like(c.y), None),
        lambda c, **kw: lambda: mk.moniqua_decode(c.payloads[0], c.y, MODULUS, bits=c.bits,
                                                  rounding=c.rounding, seed=SEED, **kw),
        ref_moniqua.moniqua_decode,
        lambda c: (c.payloads[0], c.y, MODULUS, c.bits, c.rounding, SEED, OFFSET),
        lambda c: (None if c.rounding != "dither" else
                   (torch_moniqua_decode, (c.payloads[0], c.y, MODULUS, c.bits))),
        lambda c: torch.empty_like(c.y)),
    "moniqua_mix": BenchOp(
        "moniqua_mix_", lambda c: 3 * _nb(c) + 2 * c.n * c.esize,  # 3 payloads, x in and out
        _mix_kernel_args,
        lambda c, **kw: lambda: mk.moniqua_mix_(c.xm, c.payloads[:2], MIX_WEIGHTS, c.payloads[2],
                                          MODULUS, bits=c.bits, rounding=c.rounding,
                                          gamma=MIX_GAMMA, seeds=[SEED] * 3,
                                          offsets=[OFFSET] * 3, **kw),
        ref_moniqua.moniqua_mix_,
        lambda c: (c.xm, c.payloads[:2], list(MIX_WEIGHTS), c.payloads[2], MODULUS, c.bits,
                   c.rounding, MIX_GAMMA, [SEED] * 3, [OFFSET] * 3),
        lambda c: (None if c.rounding != "dither" else
                   (torch_moniqua_mix_, (c.xm, c.payloads[:2], MIX_WEIGHTS, c.payloads[2],
                                         MODULUS, c.bits, MIX_GAMMA)))),
    "qsgd_encode": _qsgd_encode_op(lambda c: QSGD_BUCKET),
    # QSGD unbucketed (one bucket of n elements, the paper's plain scheme): the scale is
    # one reduction over x, in pieces on both GPU backends, then a second pass codes.
    "qsgd_encode_whole": _qsgd_encode_op(lambda c: c.n),
    "qsgd_decode": BenchOp(  # always float32 out; its only check (padding) is always on
        "qsgd_decode", lambda c: _nb(c) + 4 * math.ceil(c.n / QSGD_BUCKET) + 4 * c.n,
        lambda c: (*c.qsgd, c.bits, QSGD_BUCKET, torch.empty(c.n, device=c.device), None),
        lambda c, **kw: lambda: mk.qsgd_decode(*c.qsgd, c.n, c.bits, **kw),
        ref_qsgd.qsgd_decode, lambda c: (*c.qsgd, c.n, c.bits, QSGD_BUCKET),
        result=lambda c: torch.empty(c.n, device=c.device), checks=False),
    "sign_encode": BenchOp(
        "sign_encode", lambda c: c.n * c.esize + _nb(c) + 4,
        lambda c: (c.x, torch.empty((), device=c.device), _u8(_nb(c), c.device), None),
        lambda c, **kw: lambda: mk.sign_encode(c.x, **kw),
        ref_sign.sign_encode, lambda c: (c.x,),
        lambda c: (torch_sign_encode, (c.x,))),
    "philox_uniform": BenchOp(
        "philox_uniform", lambda c: 4 * c.n,
        lambda c: (SEED, OFFSET, None, torch.empty(c.n, device=c.device)),
        lambda c, **kw: lambda: mk.philox_uniform(c.n, SEED, device=c.device, **kw),
        ref_philox.philox_uniform, lambda c: (c.n, SEED, OFFSET, c.device),
        lambda c: (torch.rand, (c.n,), {"device": c.device}), checks=False),
}


class Case:
    """One (op, bits, rounding, dtype, n): inputs, the bytes the op must move, and each
    provider's callable (from TABLE)."""

    def __init__(self, op: str, bits: int, rounding: str, dtype: torch.dtype, n: int,
                 device: str):
        if op not in TABLE:
            raise ValueError(f"unknown op {op!r}; choose from {', '.join(OPS)}")
        self.op, self.bits, self.rounding, self.dtype, self.n, self.device = (
            op, bits, rounding, dtype, n, device)
        self.spec = TABLE[op]
        g = torch.Generator(device="cpu").manual_seed(n)
        self.x = torch.randn(n, generator=g).to(device=device, dtype=dtype)
        self.esize = self.x.element_size()
        if op in ("moniqua_decode", "moniqua_mix"):
            self.y = (self.x.float() + 0.1).to(dtype)
            self.xm = self.x.clone()
            with mk.use_backend("reference"):
                self.payloads = [mk.moniqua_encode(self.x + 0.05 * j, MODULUS, bits, rounding,
                                                   SEED + j, OFFSET, check_finite=False)
                                 for j in range(3)]
        if op == "qsgd_decode":
            with mk.use_backend("reference"):
                self.qsgd = mk.qsgd_encode(self.x, bits, QSGD_BUCKET, "max", SEED, OFFSET,
                                           check_finite=False)
        self.nbytes = self.spec.nbytes(self)

    def kernel(self, fn: Callable) -> Callable[[], object]:
        """A backend's registered kernel called directly, checks off: the kernel alone."""
        args = self.spec.kernel(self)
        return lambda: fn(*args)

    def public(self, **overrides) -> Callable[[], object]:
        """The public op with its default arguments (auto backend, finite check on),
        but for the given overrides."""
        return self.spec.public(self, **overrides)

    def reference(self, wrap=lambda f: f) -> Callable[[], object]:
        """The reference function called directly; wrap=torch.compile for 'compile'."""
        f, args = wrap(self.spec.reference), self.spec.ref_args(self)
        return lambda: f(*args)

    def obvious(self, wrap=lambda f: f) -> tuple[Optional[Callable], Optional[str]]:
        """The obvious torch code for the op (or None and why there is none)."""
        made = self.spec.obvious(self) if self.spec.obvious else None
        if made is None:
            return None, "no obvious-torch version of this op and rounding in the harness"
        f, args, kwargs = (made + ({},))[:3]
        f = wrap(f)
        return (lambda: f(*args, **kwargs)), None

    def copy(self) -> Callable[[], object]:
        dst = torch.empty_like(self.x)
        return lambda: dst.copy_(self.x)

    @property
    def copy_nbytes(self) -> int:
        """A copy reads and writes the input once: its bandwidth counts both."""
        return 2 * self.x.numel() * self.x.element_size()


def op_bits(op: str, bits: list[int]) -> list[int]:
    if op in ("sign_encode", "philox_uniform"):
        return [1]
    if op in ("qsgd_encode", "qsgd_encode_whole", "qsgd_decode"):
        return [b for b in bits if b in (2, 4, 8)]
    return [b for b in bits if b in (1, 2, 4, 8)]


def op_dtypes(op: str, dtypes: list[str]) -> list[str]:
    """QSGD decode reads codes and writes float32 whatever the encoded dtype: one case."""
    return dtypes[:1] if op == "qsgd_decode" else dtypes


def op_roundings(op: str, bits: int, roundings: list[str]) -> list[str]:
    if op not in MONIQUA_OPS:
        return ["-"]
    return [r for r in roundings if not (r == "stochastic" and bits == 1)]


# ---------------------------------------------------------------------------- timing

class CompileTimeout(Exception):
    pass


def _first_call(fn: Callable[[], object], limit_s: Optional[float]) -> None:
    """fn() once (compilation, autotuning, allocation), raising CompileTimeout after
    limit_s seconds (SIGALRM: the main thread on POSIX; elsewhere unbounded)."""
    import signal
    import threading
    if not limit_s or not hasattr(signal, "SIGALRM") or \
            threading.current_thread() is not threading.main_thread():
        fn()
        return

    def expire(signum, frame):
        raise CompileTimeout(f"compiling took more than {limit_s:g} s (--compile-timeout)")
    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, limit_s)
    try:
        fn()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _compile_timeout_in(exc: BaseException) -> Optional[CompileTimeout]:
    """The CompileTimeout behind exc (inductor wraps what its lowering raises), or None."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, CompileTimeout):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def time_median(fn: Callable[[], object], device: str, quick: bool,
                first_call_limit_s: Optional[float] = None) -> float:
    """Median seconds per call; the first call (the warm-up) bounded by
    first_call_limit_s."""
    _first_call(fn, first_call_limit_s)  # warm-up: compilation, autotuning, allocator
    if device == "cuda":
        import triton.testing
        return triton.testing.do_bench(fn, warmup=5 if quick else 10, rep=20 if quick else 40,
                                       return_mode="median") * 1e-3
    from torch.utils import benchmark
    timer = benchmark.Timer(stmt="fn()", globals={"fn": fn},
                            num_threads=torch.get_num_threads())
    return timer.blocked_autorange(min_run_time=0.05 if quick else 0.3).median


def _numpy_packbits(case: Case) -> tuple[Optional[Callable], Optional[str]]:
    import numpy as np
    if case.dtype == torch.bfloat16:
        return None, "numpy has no bfloat16"
    xn = case.x.numpy()
    # the same work as the scaled sign: the bits and the mean of |x|
    return (lambda: (np.packbits(xn < 0, bitorder="little"), np.abs(xn).mean())), None


def _cupy_packbits(case: Case) -> tuple[Optional[Callable], Optional[str]]:
    try:
        import cupy
    except Exception as exc:  # not installed, or no matching CUDA runtime
        return None, f"cupy does not import ({type(exc).__name__}: {exc})"
    x = case.x
    return (lambda: cupy.packbits(cupy.from_dlpack(torch.sign(x) < 0), bitorder="little")), None


def providers(case: Case, device: str, use_compile: bool, include_interpreter: bool,
              baselines: bool):
    """(name, callable or None, reason when None) for every provider of a case."""
    rows = []
    op = case.spec.registry
    for name, reason in mk.available(op, device).items():
        if reason is None and name == "triton" and device == "cpu" and not include_interpreter:
            reason = ("TRITON_INTERPRET=1 runs Triton through a numpy interpreter on CPU: "
                      "its timing means nothing (pass --include-interpreter to time it)")
        if reason is None and name == "reference" and baselines:
            reason = "timed as 'eager' (the same function)"
        if reason is None and name == "reference" and not baselines:
            reason = "the reference runs only at --baseline-sizes"
        if reason is None:
            with mk.use_backend(name):
                rows.append((name, case.kernel(backends.kernel(op, torch.device(device))),
                             None))
        else:
            rows.append((name, None, reason))
    rows.append(("dispatcher", case.kernel(table_op(op)), None))
    rows.append(("public", case.public(), None))
    if case.spec.checks:
        rows.append(("public-unchecked", case.public(check_finite=False), None))
    if case.spec.result is not None:
        rows.append(("public-out", case.public(out=case.spec.result(case)), None))
    not_here = "not run at this size: baselines run only at --baseline-sizes"
    no_compile = "not run: --quick or --no-compile (compiling takes seconds per case)"
    if baselines:
        rows.append(("eager", case.reference(), None))
        rows.append(("compile", case.reference(wrap=torch.compile), None) if use_compile
                    else ("compile", None, no_compile))
        fn, reason = case.obvious()
        rows.append(("torch", fn, reason))
        if fn is not None and use_compile:
            fn, reason = case.obvious(wrap=torch.compile)
        elif fn is not None:
            fn, reason = None, no_compile
        rows.append(("torch-compile", fn, reason))
    else:
        rows += [(name, None, not_here) for name in ("eager", "compile", "torch", "torch-compile")]
    rows.append(("copy", case.copy(), None))
    if case.op == "sign_encode":
        fn, reason = _numpy_packbits(case) if device == "cpu" else _cupy_packbits(case)
        rows.append(("numpy.packbits" if device == "cpu" else "cupy.packbits", fn, reason))
    return rows


# ------------------------------------------------------------------------- reporting

def environment(device: str) -> dict:
    def git(*args):
        try:
            # The commit of the checkout the package runs from (an editable install).
            here = Path(__file__).resolve().parent
            return subprocess.run(["git", *args], cwd=here, capture_output=True, text=True,
                                  timeout=10).stdout.strip()
        except Exception:
            return ""
    versions = {"python": platform.python_version(), "torch": torch.__version__}
    for mod in ("triton", "numpy", "cupy"):
        try:
            versions[mod] = __import__(mod).__version__
        except Exception:
            versions[mod] = None
    if device == "cuda":
        name = torch.cuda.get_device_name()
        versions["cuda"] = torch.version.cuda
    else:
        name = _cpu_name()
        try:  # the instruction set the native CPU kernels dispatched to
            from moniqua_kernels import _native
            versions["cpu_kernels_isa"] = _native.isa()
        except ImportError:
            versions["cpu_kernels_isa"] = None
    return {
        "device": device, "device_name": name, "versions": versions,
        "git_commit": git("rev-parse", "HEAD"), "git_dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
        "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
        # other processes share the machine: the load at the start qualifies the numbers
        "load_avg_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "timer": "triton.testing.do_bench median" if device == "cuda"
                 else "torch.utils.benchmark blocked_autorange median",
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "backend_env": os.environ.get("MONIQUA_BACKEND"),
        "triton_interpret": os.environ.get("TRITON_INTERPRET"),
    }


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def add_ratios(results: list[dict]) -> None:
    """Per case: fraction of the copy bandwidth, speed-up over eager and compile."""
    by_case: dict[tuple, dict[str, dict]] = {}
    for r in results:
        key = (r["op"], r["bits"], r["rounding"], r["dtype"], r["n"])
        by_case.setdefault(key, {})[r["provider"]] = r
    for rows in by_case.values():
        copy, eager, comp = (rows.get(k, {}).get("seconds") for k in ("copy", "eager", "compile"))
        if "public" in rows and rows["public"].get("seconds"):
            # the public op's cost over the kernel that auto picks, called directly
            auto = backends.select(rows["public"]["registry"],
                                   torch.device(rows["public"]["device"]))[0]
            kern = rows.get(auto, {}).get("seconds")
            for name in ("public", "public-unchecked", "public-out", "dispatcher"):
                if rows.get(name, {}).get("seconds"):
                    rows[name]["x_kernel"] = rows[name]["seconds"] / kern if kern else None
            unchecked = rows.get("public-unchecked", {}).get("seconds")
            rows["public"]["x_unchecked"] = (rows["public"]["seconds"] / unchecked
                                             if unchecked else None)
        for r in rows.values():
            if r.get("seconds") is None:
                continue
            r["copy_gbps"] = rows["copy"]["gbps"] if copy else None
            r["frac_of_copy"] = r["gbps"] / rows["copy"]["gbps"] if copy else None
            baseline = r["provider"] == "copy"  # a speed-up of a copy over an op means nothing
            r["x_eager"] = eager / r["seconds"] if eager and not baseline else None
            r["x_compile"] = comp / r["seconds"] if comp and not baseline else None


def _fmt(v, spec):
    return "" if v is None else format(v, spec)


def markdown(env: dict, results: list[dict]) -> str:
    lines = [f"# Op benchmarks on {env['device_name']} ({env['device']})", "",
             f"- commit `{env['git_commit'][:12]}`{' (dirty)' if env['git_dirty'] else ''}, "
             f"{env['date_utc']}",
             "- versions: " + ", ".join(f"{k} {v}" for k, v in env["versions"].items() if v),
             f"- timer: {env['timer']}; torch threads: {env['threads']} "
             f"(cpu_count {env['cpu_count']}, 1-minute load average at start "
             f"{_fmt(env['load_avg_1m'], '.1f')})",
             "- GB/s = (bytes the op must read + write) / median time; % copy = that over the "
             "bandwidth of `y.copy_(x)` (2 x the input's bytes / its time) in the same run", "",
             "- x kernel: the public op (default arguments; public-out: with a preallocated "
             "out=; dispatcher: the op through torch.ops) over the kernel the registry picks, "
             "called directly with checks off and its output preallocated; x unchecked: the public op over the same call with "
             "check_finite=False (both allocate their result)", "",
             "| op | bits | rounding | dtype | n | provider | median us | GB/s | % copy | "
             "x eager | x compile | x kernel | x unchecked |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    skipped = {}
    for r in results:
        if r.get("seconds") is None:
            skipped.setdefault((r["provider"], r["reason"]), []).append(r["op"])
            continue
        pct = _fmt(r["frac_of_copy"] and 100 * r["frac_of_copy"], ".0f")
        lines.append(f"| {r['op']} | {r['bits']} | {r['rounding']} | {r['dtype']} | {r['n']} | "
                     f"{r['provider']} | "
                     f"{r['seconds'] * 1e6:.1f} | {r['gbps']:.2f} | {pct} | "
                     f"{_fmt(r['x_eager'], '.2f')} | {_fmt(r['x_compile'], '.2f')} | "
                     f"{_fmt(r.get('x_kernel'), '.2f')} | {_fmt(r.get('x_unchecked'), '.2f')} |")
    if skipped:
        lines += ["", "## Not measured", ""]
        for (provider, reason), ops in skipped.items():
            lines.append(f"- **{provider}** ({', '.join(sorted(set(ops)))}): {reason}")
    return "\n".join(lines) + "\n"


def plot(env: dict, results: list[dict], path: Path) -> bool:
    """Bandwidth against size, one panel per op (its first bits and dtype)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        warnings.warn("matplotlib is not installed: no plot written")
        return False
    ops = list(dict.fromkeys(r["op"] for r in results))
    fig, axes = plt.subplots(1, len(ops), figsize=(4.2 * len(ops), 3.6), squeeze=False)
    for ax, op in zip(axes[0], ops):
        rows = [r for r in results if r["op"] == op and r.get("seconds") is not None]
        if not rows:
            continue
        bits, rounding, dtype = rows[0]["bits"], rows[0]["rounding"], rows[0]["dtype"]
        rows = [r for r in rows if (r["bits"], r["rounding"], r["dtype"]) == (bits, rounding, dtype)]
        for provider in dict.fromkeys(r["provider"] for r in rows):
            pts = sorted((r["n"], r["gbps"]) for r in rows if r["provider"] == provider)
            style = dict(color="black", linestyle="--") if provider == "copy" else {}
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=provider,
                    **style)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_title(f"{op} ({bits}-bit {rounding}, {dtype})", fontsize=9)
        ax.set_xlabel("elements")
        ax.set_ylabel("GB/s")
        ax.legend(fontsize=7)
    fig.suptitle(f"{env['device_name']} - commit {env['git_commit'][:10]}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# ------------------------------------------------------------------------------ main

def parse_args(argv):
    p = argparse.ArgumentParser(prog="moniqua-kernels bench",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="two sizes (2^10, 2^16), bits 1 and 8, fp32, dithered, no torch.compile")
    p.add_argument("--sizes", type=str, help="comma list of element counts (2^k allowed)")
    p.add_argument("--ops", type=str, help=f"comma list from {','.join(OPS)}")
    p.add_argument("--bits", type=str, help="comma list from 1,2,4,8")
    p.add_argument("--dtypes", type=str, help=f"comma list from {','.join(DTYPES)}")
    p.add_argument("--roundings", type=str,
                   help=f"comma list from {','.join(ROUNDINGS)} (Moniqua ops)")
    p.add_argument("--baseline-sizes", type=str,
                   help="sizes at which eager, compile, torch and torch-compile run, or "
                        "'none' (default: every size on CPU, 2^26 on GPU)")
    p.add_argument("--budget-s", type=float, default=None,
                   help="stop timing after this many seconds; the rows left say so")
    p.add_argument("--backends", type=str,
                   help="comma list of backends to time (default: every available one)")
    p.add_argument("--device", choices=("cpu", "cuda"),
                   default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--compile", dest="compile", action="store_true", default=None,
                   help="time torch.compile(reference) (default: on unless --quick)")
    p.add_argument("--no-compile", dest="compile", action="store_false")
    p.add_argument("--compile-timeout", type=float, default=300.0,
                   help="seconds each torch.compile may take before its row records that "
                        "it did not finish (default 300)")
    p.add_argument("--threads", type=int,
                   help="torch CPU threads (default: torch's choice); recorded in the JSON")
    p.add_argument("--include-interpreter", action="store_true",
                   help="time Triton under TRITON_INTERPRET=1 on CPU (meaningless numbers)")
    p.add_argument("--out", type=Path, default=Path("benchmarks") / "results")
    args = p.parse_args(argv)
    try:
        for name in ("sizes", "bits", "baseline_sizes"):
            if getattr(args, name) and getattr(args, name) != "none":
                _int_list(getattr(args, name))
    except ValueError:
        p.error(f"--{name.replace('_', '-')} takes a comma list of integers or 2^k, got "
                f"{getattr(args, name)!r}")
    if args.budget_s is not None and not args.budget_s > 0:
        p.error(f"--budget-s must be > 0, got {args.budget_s}")
    if not args.compile_timeout > 0:
        p.error(f"--compile-timeout must be > 0, got {args.compile_timeout}")
    for name, allowed in (("ops", OPS), ("dtypes", tuple(DTYPES)), ("roundings", ROUNDINGS)):
        for item in (getattr(args, name) or "").split(","):
            if item and item not in allowed:
                p.error(f"unknown {name[:-1]} {item!r} in --{name}; choose from "
                        f"{', '.join(allowed)}")
    return args


def _int_list(text: str) -> list[int]:
    out = []
    for item in text.split(","):
        item = item.strip()
        m = re.fullmatch(r"2\^(\d+)", item)
        out.append(1 << int(m.group(1)) if m else int(item))
    return out


def main(argv=None) -> dict:
    """Run the benchmark; returns the JSON document (also written under --out)."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    device = args.device
    if args.threads:
        torch.set_num_threads(args.threads)
    base = QUICK if args.quick else (FULL_GPU if device == "cuda" else FULL_CPU)
    sizes = _int_list(args.sizes) if args.sizes else base["sizes"]
    bits = _int_list(args.bits) if args.bits else base["bits"]
    dtypes = args.dtypes.split(",") if args.dtypes else base["dtypes"]
    roundings = args.roundings.split(",") if args.roundings else base["roundings"]
    ops = args.ops.split(",") if args.ops else list(OPS)
    use_compile = base["compile"] if args.compile is None else args.compile
    if args.baseline_sizes == "none":
        baseline_sizes = []
    else:
        baseline_sizes = (_int_list(args.baseline_sizes) if args.baseline_sizes
                          else base.get("baseline_sizes", sizes))
    wanted = set(args.backends.split(",")) if args.backends else None
    deadline = time.monotonic() + args.budget_s if args.budget_s else None

    env = environment(device)
    config = {"sizes": sizes, "bits": bits, "dtypes": dtypes, "roundings": roundings,
              "ops": ops, "quick": args.quick, "compile": use_compile,
              "compile_timeout_s": args.compile_timeout, "baseline_sizes": baseline_sizes,
              "modulus": MODULUS, "qsgd_bucket": QSGD_BUCKET}
    args.out.mkdir(parents=True, exist_ok=True)
    tag = device if device == "cpu" else re.sub(r"[^A-Za-z0-9]+", "_", env["device_name"])
    stem = args.out / f"ops_{tag}{'-quick' if args.quick else ''}"
    results = []
    # written now and again after every case: a killed run keeps what it timed
    doc = _write(stem, env, config, results)
    for op in ops:
        for b in op_bits(op, bits):
            for rounding in op_roundings(op, b, roundings):
                for dname in op_dtypes(op, dtypes):
                    for n in sizes:
                        results += _time_case(op, b, rounding, dname, n, device, args,
                                              use_compile, n in baseline_sizes, wanted,
                                              deadline)
                        doc = _write(stem, env, config, results)
    doc["files"] = [str(stem.with_suffix(s)) for s in (".json", ".md")]
    if plot(env, results, stem.with_suffix(".png")):
        doc["files"].append(str(stem.with_suffix(".png")))
    print("wrote " + ", ".join(doc["files"]))
    return doc


def _write(stem: Path, env: dict, config: dict, results: list[dict]) -> dict:
    """The JSON and Markdown results so far (ratios added to copies of the rows)."""
    rows = [dict(r) for r in results]
    add_ratios(rows)
    doc = {"environment": env, "config": config, "results": rows}
    stem.with_suffix(".json").write_text(json.dumps(doc, indent=1) + "\n")
    stem.with_suffix(".md").write_text(markdown(env, rows))
    return doc


def _time_case(op, b, rounding, dname, n, device, args, use_compile, baselines, wanted,
               deadline) -> list[dict]:
    """The rows of one case: every provider timed, or the reason it was not."""
    rows = []
    head = {"op": op, "bits": b, "rounding": rounding, "dtype": dname, "n": n}
    if deadline is not None and time.monotonic() > deadline:
        return [dict(head, provider="*", bytes=None, seconds=None,
                     reason="not run: --budget-s spent")]
    try:
        case = Case(op, b, rounding, DTYPES[dname], n, device)
    except torch.OutOfMemoryError as exc:
        return [dict(head, provider="*", bytes=None, seconds=None,
                     reason=f"inputs do not fit: {exc}"[:300])]
    for name, fn, reason in providers(case, device, use_compile, args.include_interpreter,
                                      baselines):
        if wanted is not None and name in backends.BACKEND_NAMES and name not in wanted:
            continue
        nbytes = case.copy_nbytes if name == "copy" else case.nbytes
        row = dict(head, provider=name, bytes=nbytes, registry=case.spec.registry,
                   device=device)
        if fn is not None and deadline is not None and time.monotonic() > deadline:
            fn, reason = None, "not run: --budget-s spent"
        if fn is not None:
            compiled = name in ("compile", "torch-compile")
            try:
                sec = time_median(fn, device, args.quick,
                                  args.compile_timeout if compiled else None)
                row.update(seconds=sec, gbps=nbytes / sec / 1e9)
            except Exception as exc:  # a provider failing is a result too
                timeout = _compile_timeout_in(exc)
                if timeout is not None:
                    row.update(seconds=None, reason=f"not run: {timeout}")
                    torch._dynamo.reset()  # what the interrupted compile left half-built
                else:
                    row.update(seconds=None,
                               reason=f"failed: {type(exc).__name__}: {exc}"[:300])
        else:
            row.update(seconds=None, reason=reason)
        rows.append(row)
        if row.get("seconds"):
            print(f"{op:17s} {b}b {rounding:10s} {dname} n={n:<10d} {name:15s} "
                  f"{row['seconds'] * 1e6:10.1f} us {row['gbps']:8.2f} GB/s", flush=True)
    del case
    if device == "cuda":
        torch.cuda.empty_cache()
    return rows


if __name__ == "__main__":
    main()
