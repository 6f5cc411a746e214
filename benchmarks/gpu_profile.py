"""The kernels Nsight Compute profiles: encode, decode and the 2-neighbour mix of both GPU
backends at one size, each launched once inside cudaProfilerStart/Stop after a warm-up
(so compilation and setup kernels stay out of the profile).  Run under
``ncu --profile-from-start off`` (scripts/gpu_check.sh does); alone it is a smoke run.

    python benchmarks/gpu_profile.py [--n 2^26]
"""
from __future__ import annotations

import argparse

import torch

import moniqua_kernels as mk

B = 2.0


def calls(n):
    """(label, backend, thunk) of every profiled launch."""
    out = []
    for dtype, bits, rounding in ((torch.float32, 1, "dither"), (torch.bfloat16, 1, "dither"),
                                  (torch.bfloat16, 1, "nearest"), (torch.float32, 8, "nearest")):
        x = torch.randn(n, device="cuda").to(dtype)
        with mk.use_backend("reference"):
            pays = [mk.moniqua_encode(x + 0.1 * j, B, bits, rounding, j, 0, check_finite=False)
                    for j in range(3)]
        for backend in ("triton", "cuda"):
            if mk.available("moniqua_encode", "cuda")[backend] is not None:
                continue
            xm = x.clone()

            def enc(x=x, bits=bits, rounding=rounding, check=False):
                return mk.moniqua_encode(x, B, bits, rounding, 1, 0, check_finite=check)

            def dec(x=x, p=pays[0], bits=bits, rounding=rounding):
                return mk.moniqua_decode(p, x, B, bits, rounding, 0, 0, check_finite=False)

            def mix(xm=xm, p=pays, bits=bits, rounding=rounding, check=False):
                return mk.moniqua_mix_(xm, p[:2], [0.25, 0.25], p[2], B, bits, rounding, 1.0,
                                       [0, 1, 2], [0, 0, 0], check_finite=check)

            tag = f"{str(dtype)[6:]} {bits}b {rounding}"
            # the encode also with its default finite check: GPU run 3 (H200) timed the
            # checked public encode at 1.0-1.33x the unchecked one; the executed
            # instructions of the two say where that goes
            out += [(f"encode {tag}", backend, enc),
                    (f"encode {tag} checked", backend, lambda enc=enc: enc(check=True)),
                    (f"decode {tag}", backend, dec), (f"mix {tag}", backend, mix)]
            if backend == "triton":
                # the mix with its default check: its registers and occupancy against the
                # unchecked kernel's (GPU run 6: 74 against 40 for 1-bit nearest fp32 at
                # a block of 4096, which moniqua.mix_block answers with 2048)
                out.append((f"mix {tag} checked", backend, lambda mix=mix: mix(check=True)))
        dst = torch.empty_like(x)
        out.append((f"copy {str(dtype)[6:]}", "torch", lambda dst=dst, x=x: dst.copy_(x)))
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=str, default="2^26")
    args = p.parse_args(argv)
    n = 1 << int(args.n[2:]) if args.n.startswith("2^") else int(args.n)
    todo = calls(n)
    for label, backend, fn in todo:  # warm-up: compile, allocate
        with mk.use_backend(None if backend == "torch" else backend):
            fn()
    torch.cuda.synchronize()
    torch.cuda.cudart().cudaProfilerStart()
    for label, backend, fn in todo:
        with mk.use_backend(None if backend == "torch" else backend):
            torch.cuda.nvtx.range_push(f"{backend} {label}")
            fn()
            torch.cuda.nvtx.range_pop()
    torch.cuda.synchronize()
    torch.cuda.cudart().cudaProfilerStop()
    for label, backend, _ in todo:
        print(f"profiled: {backend:7s} {label}")


if __name__ == "__main__":
    main()
