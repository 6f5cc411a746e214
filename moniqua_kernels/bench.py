"""Microbenchmarks of the compression ops (DESIGN.md section 10).

For each op (Moniqua encode, decode, mix with 2 neighbours, QSGD encode, scaled sign
encode) x bits x dtype x size, time every backend that can serve the op on the device
(``mk.available``; the reason is recorded for the others) and the baselines:

  eager      the reference function called directly (plain torch)
  compile    torch.compile(reference function)
  copy       y.copy_(x) on the op's input: the machine's copy bandwidth, same run
  numpy      numpy.packbits(x < 0) (CPU, beside scaled sign)
  cupy       sign -> bool -> cupy.packbits (GPU, beside scaled sign, if cupy imports)

Bandwidth = (bytes the op must read + bytes it must write) / median time.  GPU timing is
``triton.testing.do_bench`` (median, L2 flushed between runs); CPU timing is
``torch.utils.benchmark`` (median of blocked_autorange, thread count recorded).  The
ops run through the public API with ``check_finite=False``: the finite check is a
separate reduction plus a host read, not part of the kernel being measured.

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
import warnings
from pathlib import Path
from typing import Callable, Optional

import torch

import moniqua_kernels as mk
from moniqua_kernels import backends
from moniqua_kernels.reference import moniqua as ref_moniqua
from moniqua_kernels.reference import qsgd as ref_qsgd
from moniqua_kernels.reference import sign as ref_sign
from moniqua_kernels.reference.packing import packed_nbytes

OPS = ("moniqua_encode", "moniqua_decode", "moniqua_mix", "qsgd_encode", "sign_encode")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
MODULUS, ROUNDING, SEED, OFFSET = 2.0, "dither", 1234, 0
QSGD_BUCKET = 512
MIX_WEIGHTS, MIX_GAMMA = (1 / 3, 1 / 3), 1.0
# The public op name behind each benchmark (what the backend registry is asked about).
REGISTRY_OP = {"moniqua_encode": "moniqua_encode", "moniqua_decode": "moniqua_decode",
               "moniqua_mix": "moniqua_mix_", "qsgd_encode": "qsgd_encode",
               "sign_encode": "sign_encode"}

QUICK = {"sizes": [1 << 16], "bits": [1, 8], "dtypes": ["fp32"], "compile": False}
FULL_GPU = {"sizes": [1 << k for k in range(10, 29, 2)], "bits": [1, 2, 4, 8],
            "dtypes": ["fp32", "bf16"], "compile": True}
# CPU: the eager reference needs ~seconds per call above 2^22 elements.
FULL_CPU = {"sizes": [1 << k for k in range(10, 23, 4)], "bits": [1, 2, 4, 8],
            "dtypes": ["fp32", "bf16"], "compile": True}


# ----------------------------------------------------------------------------- cases

class Case:
    """One (op, bits, dtype, n): inputs, the bytes the op must move, and callables."""

    def __init__(self, op: str, bits: int, dtype: torch.dtype, n: int, device: str):
        self.op, self.bits, self.dtype, self.n, self.device = op, bits, dtype, n, device
        g = torch.Generator(device="cpu").manual_seed(n)
        self.x = torch.randn(n, generator=g).to(device=device, dtype=dtype)
        esize = self.x.element_size()
        nb = packed_nbytes(n, bits)
        with mk.use_backend("reference"):
            if op in ("moniqua_decode", "moniqua_mix"):
                self.y = (self.x.float() + 0.1).to(dtype)
                self.payloads = [mk.moniqua_encode(self.x + 0.05 * j, MODULUS, bits, ROUNDING,
                                                   SEED + j, OFFSET, check_finite=False)
                                 for j in range(3)]
        if op == "moniqua_encode":
            self.nbytes = n * esize + nb
        elif op == "moniqua_decode":
            self.nbytes = nb + 2 * n * esize  # payload and y in, decoded values out
        elif op == "moniqua_mix":
            self.nbytes = 3 * nb + 2 * n * esize  # 2 neighbours + own payload, x in and out
        elif op == "qsgd_encode":
            self.nbytes = n * esize + nb + 4 * math.ceil(n / QSGD_BUCKET)
        elif op == "sign_encode":
            self.nbytes = n * esize + nb + 4
        else:
            raise ValueError(f"unknown op {op!r}; choose from {', '.join(OPS)}")

    def public(self) -> Callable[[], object]:
        """The op through the public API (the backend in force serves it)."""
        x, b = self.x, self.bits
        if self.op == "moniqua_encode":
            return lambda: mk.moniqua_encode(x, MODULUS, b, ROUNDING, SEED, OFFSET,
                                             check_finite=False)
        if self.op == "moniqua_decode":
            p, y = self.payloads[0], self.y
            return lambda: mk.moniqua_decode(p, y, MODULUS, b, ROUNDING, SEED, OFFSET,
                                             check_finite=False)
        if self.op == "moniqua_mix":
            xm = x.clone()
            return lambda: mk.moniqua_mix_(xm, self.payloads[:2], MIX_WEIGHTS, self.payloads[2],
                                           MODULUS, b, ROUNDING, MIX_GAMMA, [SEED] * 3,
                                           [OFFSET] * 3, check_finite=False)
        if self.op == "qsgd_encode":
            return lambda: mk.qsgd_encode(x, b, QSGD_BUCKET, "max", SEED, OFFSET,
                                          check_finite=False)
        return lambda: mk.sign_encode(x, check_finite=False)

    def reference(self, wrap=lambda f: f) -> Callable[[], object]:
        """The reference function called directly; wrap=torch.compile for 'compile'."""
        x, b = self.x, self.bits
        if self.op == "moniqua_encode":
            f = wrap(ref_moniqua.moniqua_encode)
            return lambda: f(x, MODULUS, b, ROUNDING, SEED, OFFSET)
        if self.op == "moniqua_decode":
            f = wrap(ref_moniqua.moniqua_decode)
            p, y = self.payloads[0], self.y
            return lambda: f(p, y, MODULUS, b, ROUNDING, SEED, OFFSET)
        if self.op == "moniqua_mix":
            f = wrap(ref_moniqua.moniqua_mix_)
            xm = x.clone()
            return lambda: f(xm, self.payloads[:2], list(MIX_WEIGHTS), self.payloads[2],
                             MODULUS, b, ROUNDING, MIX_GAMMA, [SEED] * 3, [OFFSET] * 3)
        if self.op == "qsgd_encode":
            f = wrap(ref_qsgd.qsgd_encode)
            return lambda: f(x, b, QSGD_BUCKET, "max", SEED, OFFSET)
        f = wrap(ref_sign.sign_encode)
        return lambda: f(x)

    def copy(self) -> Callable[[], object]:
        dst = torch.empty_like(self.x)
        return lambda: dst.copy_(self.x)

    @property
    def copy_nbytes(self) -> int:
        """A copy reads and writes the input once: its bandwidth counts both."""
        return 2 * self.x.numel() * self.x.element_size()


def op_bits(op: str, bits: list[int]) -> list[int]:
    if op == "sign_encode":
        return [1]
    if op == "qsgd_encode":
        return [b for b in bits if b in (2, 4, 8)]
    return [b for b in bits if b in (1, 2, 4, 8)]


# ---------------------------------------------------------------------------- timing

def time_median(fn: Callable[[], object], device: str, quick: bool) -> float:
    """Median seconds per call."""
    fn()  # warm-up: compilation, autotuning, allocator
    if device == "cuda":
        import triton.testing
        return triton.testing.do_bench(fn, warmup=5 if quick else 25, rep=20 if quick else 100,
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
    return (lambda: np.packbits(xn < 0, bitorder="little")), None


def _cupy_packbits(case: Case) -> tuple[Optional[Callable], Optional[str]]:
    try:
        import cupy
    except Exception as exc:  # not installed, or no matching CUDA runtime
        return None, f"cupy does not import ({type(exc).__name__}: {exc})"
    x = case.x
    return (lambda: cupy.packbits(cupy.from_dlpack(torch.sign(x) < 0), bitorder="little")), None


def providers(case: Case, device: str, use_compile: bool, include_interpreter: bool):
    """(name, callable or None, reason when None) for every provider of a case."""
    rows = []
    op = REGISTRY_OP[case.op]
    for name, reason in mk.available(op, device).items():
        if reason is None and name == "triton" and device == "cpu" and not include_interpreter:
            reason = ("TRITON_INTERPRET=1 runs Triton through a numpy interpreter on CPU: "
                      "its timing means nothing (pass --include-interpreter to time it)")
        if reason is None:
            def run(fn=case.public(), name=name):
                with mk.use_backend(name):
                    return fn()
            rows.append((name, run, None))
        else:
            rows.append((name, None, reason))
    rows.append(("eager", case.reference(), None))
    if use_compile:
        rows.append(("compile", case.reference(wrap=torch.compile), None))
    else:
        rows.append(("compile", None, "not run: --quick or --no-compile (compiling takes "
                                      "longer than the quick budget)"))
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
        by_case.setdefault((r["op"], r["bits"], r["dtype"], r["n"]), {})[r["provider"]] = r
    for rows in by_case.values():
        copy, eager, comp = (rows.get(k, {}).get("seconds") for k in ("copy", "eager", "compile"))
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
             f"- versions: " + ", ".join(f"{k} {v}" for k, v in env["versions"].items() if v),
             f"- timer: {env['timer']}; torch threads: {env['threads']} "
             f"(cpu_count {env['cpu_count']}, 1-minute load average at start "
             f"{_fmt(env['load_avg_1m'], '.1f')})",
             "- GB/s = (bytes the op must read + write) / median time; % copy = that over the "
             "bandwidth of `y.copy_(x)` (2 x the input's bytes / its time) in the same run", "",
             "| op | bits | dtype | n | provider | median us | GB/s | % copy | x eager | "
             "x compile |", "|---|---|---|---|---|---|---|---|---|---|"]
    skipped = {}
    for r in results:
        if r.get("seconds") is None:
            skipped.setdefault((r["provider"], r["reason"]), []).append(r["op"])
            continue
        pct = _fmt(r["frac_of_copy"] and 100 * r["frac_of_copy"], ".0f")
        lines.append(f"| {r['op']} | {r['bits']} | {r['dtype']} | {r['n']} | {r['provider']} | "
                     f"{r['seconds'] * 1e6:.1f} | {r['gbps']:.2f} | {pct} | "
                     f"{_fmt(r['x_eager'], '.2f')} | {_fmt(r['x_compile'], '.2f')} |")
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
        bits, dtype = rows[0]["bits"], rows[0]["dtype"]
        rows = [r for r in rows if r["bits"] == bits and r["dtype"] == dtype]
        for provider in dict.fromkeys(r["provider"] for r in rows):
            pts = sorted((r["n"], r["gbps"]) for r in rows if r["provider"] == provider)
            style = dict(color="black", linestyle="--") if provider == "copy" else {}
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=provider,
                    **style)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_title(f"{op} ({bits}-bit, {dtype})", fontsize=9)
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
                   help="one size (2^16), bits 1 and 8, fp32, no torch.compile")
    p.add_argument("--sizes", type=str, help="comma list of element counts (2^k allowed)")
    p.add_argument("--ops", type=str, help=f"comma list from {','.join(OPS)}")
    p.add_argument("--bits", type=str, help="comma list from 1,2,4,8")
    p.add_argument("--dtypes", type=str, help=f"comma list from {','.join(DTYPES)}")
    p.add_argument("--backends", type=str,
                   help="comma list of backends to time (default: every available one)")
    p.add_argument("--device", choices=("cpu", "cuda"),
                   default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--compile", dest="compile", action="store_true", default=None,
                   help="time torch.compile(reference) (default: on unless --quick)")
    p.add_argument("--no-compile", dest="compile", action="store_false")
    p.add_argument("--threads", type=int,
                   help="torch CPU threads (default: torch's choice); recorded in the JSON")
    p.add_argument("--include-interpreter", action="store_true",
                   help="time Triton under TRITON_INTERPRET=1 on CPU (meaningless numbers)")
    p.add_argument("--out", type=Path, default=Path("benchmarks") / "results")
    args = p.parse_args(argv)
    try:
        for name in ("sizes", "bits"):
            if getattr(args, name):
                _int_list(getattr(args, name))
    except ValueError:
        p.error(f"--{name} takes a comma list of integers or 2^k, got {getattr(args, name)!r}")
    for name, allowed in (("ops", OPS), ("dtypes", tuple(DTYPES))):
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
    ops = args.ops.split(",") if args.ops else list(OPS)
    use_compile = base["compile"] if args.compile is None else args.compile
    wanted = set(args.backends.split(",")) if args.backends else None

    env = environment(device)
    results = []
    for op in ops:
        for b in op_bits(op, bits):
            for dname in dtypes:
                for n in sizes:
                    case = Case(op, b, DTYPES[dname], n, device)
                    for name, fn, reason in providers(case, device, use_compile,
                                                      args.include_interpreter):
                        if wanted is not None and name in backends.BACKEND_NAMES \
                                and name not in wanted:
                            continue
                        nbytes = case.copy_nbytes if name == "copy" else case.nbytes
                        row = {"op": op, "bits": b, "dtype": dname, "n": n, "provider": name,
                               "bytes": nbytes}
                        if fn is not None:
                            try:
                                sec = time_median(fn, device, args.quick)
                                row.update(seconds=sec, gbps=nbytes / sec / 1e9)
                            except Exception as exc:  # a provider failing is a result too
                                row.update(seconds=None, reason=f"failed: {type(exc).__name__}: "
                                                                f"{exc}"[:300])
                        else:
                            row.update(seconds=None, reason=reason)
                        results.append(row)
                        if fn is not None and row.get("seconds"):
                            print(f"{op:15s} {b}b {dname} n={n:<10d} {name:15s} "
                                  f"{row['seconds'] * 1e6:10.1f} us {row['gbps']:8.2f} GB/s",
                                  flush=True)
    add_ratios(results)
    doc = {"environment": env, "config": {"sizes": sizes, "bits": bits, "dtypes": dtypes,
                                          "ops": ops, "quick": args.quick,
                                          "compile": use_compile, "modulus": MODULUS,
                                          "rounding": ROUNDING, "qsgd_bucket": QSGD_BUCKET},
           "results": results}
    args.out.mkdir(parents=True, exist_ok=True)
    tag = device if device == "cpu" else re.sub(r"[^A-Za-z0-9]+", "_", env["device_name"])
    stem = args.out / f"ops_{tag}{'-quick' if args.quick else ''}"
    stem.with_suffix(".json").write_text(json.dumps(doc, indent=1) + "\n")
    stem.with_suffix(".md").write_text(markdown(env, results))
    doc["files"] = [str(stem.with_suffix(s)) for s in (".json", ".md")]
    if plot(env, results, stem.with_suffix(".png")):
        doc["files"].append(str(stem.with_suffix(".png")))
    print("wrote " + ", ".join(doc["files"]))
    return doc


if __name__ == "__main__":
    main()
