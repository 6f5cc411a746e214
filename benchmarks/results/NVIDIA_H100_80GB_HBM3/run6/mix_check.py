"""GPU run 6 (one short call): the mix's finite check, old (058e747: probe before the
store, x read again) against new (select per element, count after the store), at BLOCK
4096 and 2048 on 8 warps, beside the unchecked kernel and y.copy_(x); and the public op,
checked and not.  n = 2^26, medians of triton.testing.do_bench.

Run as it ran (from the repository root at 058e747, with new_check.diff applied to
moniqua_kernels/triton/moniqua.py, and the kernel as it was beside it):
    git show 058e747:moniqua_kernels/triton/moniqua.py > moniqua_kernels/triton/_moniqua_058e747.py
    python benchmarks/results/NVIDIA_H100_80GB_HBM3/run6/mix_check.py OUT.json
(run 6 ran it from the root as scratch_run6.py).  Without a GPU it runs through Triton's
interpreter at a given small n (TRITON_INTERPRET=1 ... OUT.json 16384): bytes, not times."""
import json
import sys
import time

import torch
import triton
import triton.testing

import moniqua_kernels as mk
from moniqua_kernels.reference.packing import packed_nbytes
from moniqua_kernels.triton import _common as common
from moniqua_kernels.triton import moniqua as new
from moniqua_kernels.triton import _moniqua_058e747 as old

out_path = sys.argv[1]
n = int(sys.argv[2]) if len(sys.argv) > 2 else 1 << 26
DEV = "cuda" if torch.cuda.is_available() else "cpu"
B, SEED, OFFSET = 2.0, 1234, 0
rows = []
t0 = time.monotonic()


def launch(mod, x, payloads, flag, bits, rounding, block, warps):
    nbytes = packed_nbytes(n, bits)
    b32, inv_b = mod._constants(B)
    packed = common.tuple_halves(SEED, OFFSET)
    return mod._moniqua_mix_kernel[(n // block,)](
        x, tuple(payloads[:2]), (0.25, 0.25), payloads[2], n, nbytes, b32, inv_b, 1.0,
        *((h,) * 3 for h in packed), None, flag, 0, BITS=bits,
        ROUNDING=common.ROUNDING_IDS[rounding], MASKED=False, BLOCK=block, SUB=1,
        num_warps=warps, enable_fp_fusion=False)


dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
for dname in ("fp32", "bf16"):
    for bits, rounding in ((1, "nearest"), (1, "dither"), (8, "dither"), (8, "nearest")):
        x = torch.randn(n, device=DEV).to(dtypes[dname])
        payloads = [torch.randint(0, 256, (packed_nbytes(n, bits),), dtype=torch.uint8,
                                  device=DEV) for _ in range(3)]
        flag = torch.zeros(3, dtype=torch.int64, device=DEV)
        dst = torch.empty_like(x)
        bench = triton.testing.do_bench if DEV == "cuda" else (
            lambda fn, **kw: (fn(), 1.0)[1])
        copy_ms = bench(lambda: dst.copy_(x), warmup=10, rep=40,
                                          return_mode="median")
        nbytes = 3 * packed_nbytes(n, bits) + 2 * n * x.element_size()
        want = x.clone()
        launch(new, want, payloads, None, bits, rounding, 4096, 8)
        variants = [("unchecked", new, None, 4096), ("old", old, flag, 4096),
                    ("new", new, flag, 4096), ("unchecked", new, None, 2048),
                    ("old", old, flag, 2048), ("new", new, flag, 2048)]
        work = x.clone()
        for name, mod, f, block in variants:
            got = x.clone()
            c = launch(mod, got, payloads, f, bits, rounding, block, 8)
            same = bool(torch.equal(got.view(torch.uint8), want.view(torch.uint8)))
            ms = bench(
                lambda: launch(mod, work, payloads, f, bits, rounding, block, 8),
                warmup=10, rep=40, return_mode="median")
            rows.append(dict(dtype=dname, bits=bits, rounding=rounding, check=name, block=block,
                             regs=getattr(c, 'n_regs', None), spills=getattr(c, 'n_spills', None), us=ms * 1e3,
                             pct_copy=100 * (nbytes / ms) / (2 * n * x.element_size() / copy_ms),
                             same=same))
            print(rows[-1], flush=True)
        for label, kw in (("public", {}), ("public-unchecked", {"check_finite": False})):
            fn = lambda: mk.moniqua_mix_(work, payloads[:2], [0.25, 0.25], payloads[2], B,
                                         bits=bits, rounding=rounding, seeds=[SEED] * 3,
                                         offsets=[OFFSET] * 3, **kw)
            fn()
            ms = bench(fn, warmup=10, rep=40, return_mode="median")
            rows.append(dict(dtype=dname, bits=bits, rounding=rounding, check=label,
                             block=common.BLOCK, us=ms * 1e3,
                             pct_copy=100 * (nbytes / ms) / (2 * n * x.element_size() / copy_ms)))
            print(rows[-1], flush=True)
        rows.append(dict(dtype=dname, bits=bits, rounding=rounding, check="copy", us=copy_ms * 1e3,
                         flagged=int(flag.sum())))
        json.dump({"device": torch.cuda.get_device_name() if DEV == "cuda" else "cpu", "triton": triton.__version__,
                   "torch": torch.__version__, "seconds": time.monotonic() - t0, "rows": rows},
                  open(out_path, "w"), indent=1)
        del x, payloads, dst, want, work
        torch.cuda.empty_cache()
print("done in", time.monotonic() - t0)
