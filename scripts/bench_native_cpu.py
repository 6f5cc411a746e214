"""CPU benchmark of the native kernels against the issue-4 goals (one run, one table).

Medians from torch.utils.benchmark; bandwidth = (bytes the op must read + write) /
median, beside `y.copy_(x)` (and `x.clone()`, which, like a decode, writes freshly
allocated memory) measured in the same run.  Usage:

    PYTHONPATH=. python scripts/bench_native_cpu.py [--threads 2] [--log2n 24]
"""
import argparse
import json
import platform

import numpy as np
import torch
from torch.utils import benchmark

import moniqua_kernels as mk
from moniqua_kernels import _native


THREADS = 1


def median_ms(stmt, min_run_time, **env):
    # Timer runs with num_threads=1 unless told otherwise: pass the thread count.
    timer = benchmark.Timer(stmt, globals=env, num_threads=THREADS)
    return timer.blocked_autorange(min_run_time=min_run_time).median * 1e3


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--log2n", type=int, default=24)
    ap.add_argument("--min-run-time", type=float, default=1.0)
    ap.add_argument("--json", default=None, help="also write the rows here")
    args = ap.parse_args()
    global THREADS
    THREADS = args.threads
    torch.set_num_threads(args.threads)
    n, t = 1 << args.log2n, args.min_run_time
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, generator=g)
    y = x + 0.2 * torch.rand(n, generator=g) - 0.1
    out = torch.empty_like(x)
    copy = median_ms("out.copy_(x)", t, out=out, x=x)
    clone = median_ms("x.clone()", t, x=x)
    rows = []

    def row(name, native_ms, ref_ms, nbytes):
        gbs = nbytes / native_ms / 1e6
        rows.append(dict(op=name, native_ms=native_ms, reference_ms=ref_ms,
                         speedup=None if ref_ms is None else ref_ms / native_ms,
                         GBps=gbs, copy_fraction=gbs / (8 * n / copy / 1e6)))

    modulus = 4 * 0.1
    for rounding in ("nearest", "dither"):
        payload = _native.moniqua_encode(x, modulus, 1, rounding, 1, 0)
        for name, stmt, nbytes in (
                ("encode", "fn(x, modulus, 1, rounding, 1, 0)", 4 * n + n // 8),
                ("decode", "fn(payload, y, modulus, 1, rounding, 1, 0)", 8 * n + n // 8)):
            env = dict(x=x, y=y, payload=payload, modulus=modulus, rounding=rounding)
            nat = median_ms(stmt, t, fn=getattr(_native, f"moniqua_{name}"), **env)
            ref = median_ms(stmt, t, fn=getattr(mk.reference, f"moniqua_{name}"), **env)
            row(f"moniqua 1-bit {rounding} {name}", nat, ref, nbytes)
        pays = [_native.moniqua_encode(y + 0.01 * j, modulus, 1, rounding, j, 0) for j in range(2)]
        stmt = "fn(w, pays, [0.25, 0.25], payload, modulus, 1, rounding, 1.0, [0, 1, 2], [0, 0, 0])"
        env = dict(w=x.clone(), pays=pays, payload=payload, modulus=modulus, rounding=rounding)
        nat = median_ms(stmt, t, fn=_native.moniqua_mix_, **env)
        ref = median_ms(stmt, t, fn=mk.reference.moniqua_mix_, **env)
        row(f"moniqua 1-bit {rounding} mix, 2 neighbours", nat, ref, 8 * n + 3 * n // 8)
    nat = median_ms("fn(x)", t, fn=_native.sign_encode, x=x)
    ref = median_ms("fn(x)", t, fn=mk.reference.sign_encode, x=x)
    row("scaled sign encode", nat, ref, 4 * n + n // 8)
    xn = x.numpy()
    packbits = median_ms("np.packbits(xn < 0, bitorder='little')", t, np=np, xn=xn)
    nat = median_ms("fn(n, 1, 0, 'cpu')", t, fn=_native.philox_uniform, n=n)
    row("philox_uniform", nat, None, 4 * n)

    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"threads={args.threads}, n=2^{args.log2n}, CPU kernels: {_native.isa()}")
    print(f"copy_ {copy:.2f} ms ({8 * n / copy / 1e6:.2f} GB/s), clone {clone:.2f} ms, "
          f"numpy.packbits(x < 0) {packbits:.2f} ms")
    print("| op | native ms | reference ms | x reference | GB/s | of copy_ bandwidth |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        ref = "-" if r["reference_ms"] is None else f"{r['reference_ms']:.1f}"
        sp = "-" if r["speedup"] is None else f"{r['speedup']:.1f}x"
        print(f"| {r['op']} | {r['native_ms']:.2f} | {ref} | {sp} | {r['GBps']:.2f} | "
              f"{100 * r['copy_fraction']:.0f}% |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(threads=args.threads, n=n, copy_ms=copy, clone_ms=clone,
                           packbits_ms=packbits, isa=_native.isa(), rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
