"""Launch-shape sweep of the Triton Moniqua kernels on a GPU (block size x warps).

The kernels' BLOCK (elements per program) and num_warps were chosen without a GPU
(triton/_common.py); the mix's block depends on its rounding, from GPU run 6
(moniqua.mix_block).  This times the compiled kernels themselves, launched directly with
each variant and the finite check on (the public op's default), at one size that fills
the chip, beside y.copy_(x) in the same run, and checks every variant's bytes against
the default's (a shape must not change the result).  The mix comes first: it is
furthest from its goal.  (GPU run 5 timed the mix looping over its block in 2 and 4
parts, 72 and 58 registers against 94: 22 % and 6 % slower for the 1-bit dithered fp32
mix; the loop went.)  Output: a JSON file and a Markdown table; the table also prints.

    python benchmarks/gpu_tuning.py --out OUTDIR [--n 2^26] [--budget-s 60]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import triton
import triton.testing

from moniqua_kernels.reference.packing import packed_nbytes
from moniqua_kernels.triton import _common as common
from moniqua_kernels.triton import moniqua as tm

# (BLOCK, warps) timed for each case, the launcher's default first (every other variant's
# bytes are compared with it).
SHAPES = ((2048, 8), (4096, 8), (1024, 4), (4096, 16), (8192, 16))
B, SEED, OFFSET = 2.0, 1234, 0


def default_shape(op, rounding, element_size):
    """The launcher's (BLOCK, warps) with the finite check on."""
    block = tm.mix_block(rounding, True, element_size) if op == "mix" else common.BLOCK
    return block, common.NUM_WARPS


def launch(op, x, out, payloads, flag, bits, rounding, block, warps):
    """One launch of op's kernel with the given variant into out (the mix: x mixed in
    place in out, which holds x's values; n a multiple of every block: full blocks only;
    the finite check on, into flag): the compiled kernel."""
    n = x.numel()
    nbytes = packed_nbytes(n, bits)
    b32, inv_b = tm._constants(B)
    halves = common.stream_args(SEED, OFFSET)
    meta = dict(BITS=bits, ROUNDING=common.ROUNDING_IDS[rounding], MASKED=False, BLOCK=block,
                num_warps=warps, enable_fp_fusion=False)
    grid = (n // block,)
    if op == "encode":
        return tm._moniqua_encode_kernel[grid](x, out, n, nbytes, inv_b, *halves, None, flag, 0,
                                               **meta)
    if op == "decode":
        return tm._moniqua_decode_kernel[grid](payloads[0], x, out, n, nbytes, b32, inv_b,
                                               *halves, None, flag, 0, **meta)
    # the mix's stream halves travel packed for its tuple arguments, as the op passes them
    packed = common.tuple_halves(SEED, OFFSET)
    return tm._moniqua_mix_kernel[grid](out, tuple(payloads[:2]), (0.25, 0.25), payloads[2],
                                        n, nbytes, b32, inv_b, 1.0,
                                        *((h,) * 3 for h in packed), None, flag, 0,
                                        **meta)


def output(op, x, bits):
    """A fresh output for op: the mix's holds x's values."""
    if op == "encode":
        return torch.empty(packed_nbytes(x.numel(), bits), dtype=torch.uint8, device=x.device)
    return x.clone() if op == "mix" else torch.empty_like(x)


def op_bytes(op, n, esize, bits):
    nb = packed_nbytes(n, bits)
    return {"encode": n * esize + nb, "decode": nb + 2 * n * esize,
            "mix": 3 * nb + 2 * n * esize}[op]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--n", type=str, default="2^26")
    p.add_argument("--budget-s", type=float, default=90.0)
    args = p.parse_args(argv)
    n = 1 << int(args.n[2:]) if args.n.startswith("2^") else int(args.n)
    deadline = time.monotonic() + args.budget_s
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    # Most telling first (the budget may cut the tail): the 1-bit mix in both dtypes and
    # roundings, then encode and decode, then 8-bit nearest (no Philox: memory-bound).
    cases = [("mix", dt, 1, r) for r in ("dither", "nearest") for dt in ("fp32", "bf16")]
    cases += [(op, dt, 1, "dither") for dt in ("fp32", "bf16") for op in ("encode", "decode")]
    cases += [(op, "fp32", 8, "nearest") for op in ("mix", "encode", "decode")]
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    for op, dname, bits, rounding in cases:
        x = torch.randn(n, device="cuda").to(dtypes[dname])
        payloads = [torch.randint(0, 256, (packed_nbytes(n, bits),), dtype=torch.uint8,
                                  device="cuda") for _ in range(3)]
        flag = torch.zeros(3, dtype=torch.int64, device="cuda")
        dst = torch.empty_like(x)
        copy_ms = triton.testing.do_bench(lambda: dst.copy_(x), warmup=10, rep=40,
                                          return_mode="median")
        copy_gbps = 2 * n * x.element_size() / copy_ms / 1e6
        want = output(op, x, bits)
        default = default_shape(op, rounding, x.element_size())
        launch(op, x, want, payloads, flag, bits, rounding, *default)
        # timed into one buffer: the mix mixes it again each launch (finite: the flag says)
        work = output(op, x, bits)
        for block, warps in (default,) + tuple(v for v in SHAPES if v != default):
            row = {"op": op, "dtype": dname, "bits": bits, "rounding": rounding, "n": n,
                   "block": block, "warps": warps, "default": (block, warps) == default,
                   "copy_gbps": copy_gbps}
            if time.monotonic() > deadline:
                row["note"] = "not run: budget spent"
                rows.append(row)
                continue
            try:
                variant = (bits, rounding, block, warps)
                got = output(op, x, bits)
                compiled = launch(op, x, got, payloads, flag, *variant)
                row["regs"] = getattr(compiled, "n_regs", None)
                row["spills"] = getattr(compiled, "n_spills", None)
                row["same_bytes"] = bool(torch.equal(got.view(torch.uint8),
                                                     want.view(torch.uint8)))
                ms = triton.testing.do_bench(
                    lambda: launch(op, x, work, payloads, flag, *variant), warmup=10, rep=40,
                    return_mode="median")
                gbps = op_bytes(op, n, x.element_size(), bits) / ms / 1e6
                row.update(us=ms * 1e3, gbps=gbps, pct_copy=100 * gbps / copy_gbps,
                           flagged=int(flag.sum()))
            except Exception as exc:
                row["note"] = f"failed: {type(exc).__name__}: {exc}"[:300]
            rows.append(row)
        del x, payloads, dst, want, work
        torch.cuda.empty_cache()
    name = torch.cuda.get_device_name()
    (args.out / "triton_tuning.json").write_text(json.dumps(
        {"device": name, "triton": triton.__version__, "torch": torch.__version__,
         "rows": rows}, indent=1))
    lines = [f"# Triton launch shapes on {name} (n = {n}, medians)", "",
             "| op | dtype | bits | rounding | BLOCK | warps | default | regs/spills | us | GB/s "
             "| % copy | same bytes |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['op']} | {r['dtype']} | {r['bits']} | {r['rounding']} | "
                     f"{r['block']} | {r['warps']} | {'yes' if r['default'] else ''} | "
                     f"{r.get('regs')}/{r.get('spills')} | "
                     f"{r.get('us', 0):.1f} | "
                     f"{r.get('gbps', 0):.0f} | {r.get('pct_copy', 0):.0f} | "
                     f"{r.get('same_bytes', r.get('note', ''))} |")
    text = "\n".join(lines) + "\n"
    (args.out / "triton_tuning.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
