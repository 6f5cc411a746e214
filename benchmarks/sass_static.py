"""Static look at the kernels' machine code for an H100 (sm_90), without a GPU.

For the Moniqua encode, decode and 2-neighbour mix of both GPU backends, in the cases the
GPU goals name (1 bit dither and nearest, 8 bits dither; float32 and bfloat16 inputs,
flags on), and the QSGD encode at the default bucket of 512 (max norm, flags on):
registers, spilled bytes, and SASS instructions per element by class.  These are
counts of the code, not of its execution, so they bound what a GPU run can reach (the
issue budget at copy bandwidth, ../shared/gpu-review.md) and compare one version of a
kernel with the next where no GPU is; Nsight Compute's `smsp__inst_executed` on a GPU
is the measurement.

* CUDA C++: csrc/cuda/moniqua.cu and qsgd.cu compiled as setup.py does (nvcc -O3
  --fmad=false), the grid-stride loop's body divided by the elements a thread takes in
  it (kEPT = 16, the mix's kMixEPT = 8, read from the source), with the mix's
  neighbour loop counted once per neighbour.  The loop body holds the vector and the
  element-by-element paths of every access (chosen per launch by alignment), so the
  count is an upper bound on the path a run takes.
* Triton: each kernel compiled for sm_90 with the package's launch options and full
  blocks (MASKED=False; QSGD: a full bucket, with the warps its launcher gives it), no
  loop: every instruction divided by the elements a thread takes (BLOCK / (32 *
  num_warps)); the mix at the block its launcher gives it (moniqua.mix_block: "mix,
  block 2048" where that is not BLOCK).  Registers from ptxas -v on Triton's PTX.
  "unchecked": the same kernel compiled without its data checks (flag_ptr None,
  check_finite=False), at the block its launcher gives it then; the checked
  count includes the branch that counts non-finite elements, which a program runs only
  when it holds one.

    python benchmarks/sass_static.py [--out FILE.md] [--only cuda|triton]

Needs nvcc (CUDA part) and Triton with its NVIDIA backend (Triton part, and its
cuobjdump for both).
"""
from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ARCH = 90
CASES = [(bits, rounding, dtype) for bits, rounding in ((1, "dither"), (1, "nearest"),
                                                        (8, "dither"))
         for dtype in ("fp32", "bf16")]
QSGD_BUCKET = 512
QSGD_CASES = [(bits, dtype) for bits, dtype in ((4, "fp32"), (4, "bf16"), (2, "fp32"),
                                                (8, "fp32"))]
ROUNDING_ID = {"stochastic": 0, "nearest": 1, "dither": 2}
CLASSES = {"IMAD": ("IMAD",), "LOP3/SHF/IADD3": ("LOP3", "SHF", "IADD3", "LEA", "SEL"),
           "FADD/FMUL/FFMA": ("FADD", "FMUL", "FFMA"), "conversions": ("I2F", "I2FP", "F2I",
                                                                       "FRND", "F2F"),
           "loads/stores": ("LDG", "STG")}


def triton_bin(name: str) -> str:
    import triton
    return str(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name)


def cuobjdump() -> str:
    return shutil.which("cuobjdump") or triton_bin("cuobjdump")


def sass_functions(cubin: Path) -> dict[str, list[str]]:
    """Opcode lines of every function in a cubin: {name: [instruction, ...]} (address order)."""
    text = subprocess.run([cuobjdump(), "-sass", str(cubin)], capture_output=True, text=True,
                          check=True).stdout
    funcs, cur = {}, None
    for line in text.splitlines():
        m = re.search(r"Function : (\S+)", line)
        if m:
            cur = funcs.setdefault(m.group(1), [])
            continue
        m = re.match(r"\s+/\*([0-9a-f]{4,})\*/\s+(.*?);", line)
        if m and cur is not None:
            cur.append((int(m.group(1), 16), m.group(2).strip()))
    return funcs


def opcode(ins: str) -> str:
    return re.sub(r"^@!?U?P\w+\s+", "", ins).split()[0].split(".")[0]


def loops(ins) -> list[tuple[int, int]]:
    """(start, end) address of every backward branch's loop, largest first."""
    found = []
    for addr, text in ins:
        m = re.search(r"\bBRA\s+(?:`\(\.L_x_\d+\)\s*)?(0x[0-9a-f]+)", text)
        if m and int(m.group(1), 16) <= addr:
            found.append((int(m.group(1), 16), addr))
    return sorted(found, key=lambda r: r[0] - r[1])


def classes(counter: collections.Counter, per: float) -> dict[str, float]:
    out = {k: sum(counter[o] for o in ops) / per for k, ops in CLASSES.items()}
    out["all"] = sum(counter.values()) / per
    return out


def nvcc_cubin(tmp: Path, source: str) -> tuple[dict, dict]:
    """csrc/cuda/<source> compiled for sm_ARCH: ({function: instructions}, {function:
    {regs, spill}})."""
    nvcc = shutil.which("nvcc") or "/usr/local/cuda/bin/nvcc"
    cubin = tmp / (Path(source).stem + ".cubin")
    build = subprocess.run([nvcc, "-O3", "-std=c++17", "--fmad=false", f"-arch=sm_{ARCH}",
                            "-cubin", "-Xptxas=-v", f"-I{ROOT / 'csrc' / 'include'}",
                            f"-I{ROOT / 'csrc'}", "-o", str(cubin),
                            str(ROOT / "csrc" / "cuda" / source)],
                           capture_output=True, text=True, check=True)
    regs, name = {}, None
    for line in build.stderr.splitlines():
        m = re.search(r"Compiling entry function '(\S+)'", line)
        if m:
            name = m.group(1)
        m = re.search(r"(\d+) bytes spill stores", line)
        if m and name:
            regs.setdefault(name, {})["spill"] = int(m.group(1))
        m = re.search(r"Used (\d+) registers", line)
        if m and name:
            regs.setdefault(name, {})["regs"] = int(m.group(1))
    return sass_functions(cubin), regs


def loop_body(ins, span) -> collections.Counter:
    """Opcodes of the instructions at addresses span = (start, end)."""
    return collections.Counter(opcode(i) for a, i in ins if span[0] <= a <= span[1])


def outer_loop(ins) -> collections.Counter:
    """Opcodes of the grid-stride loop's body (the largest backward branch's loop)."""
    return loop_body(ins, loops(ins)[0])


def cuda_constant(name: str) -> int:
    """`constexpr int name = N;` of csrc/cuda (elements a thread of a grid-stride loop)."""
    for source in sorted((ROOT / "csrc" / "cuda").glob("*.c*")):
        m = re.search(rf"constexpr int {name} = (\d+);", source.read_text())
        if m:
            return int(m.group(1))
    raise LookupError(f"{name} not found in csrc/cuda")


def cuda_rows(tmp: Path) -> list[dict]:
    funcs, regs = nvcc_cubin(tmp, "moniqua.cu")
    per_thread = {"encode": cuda_constant("kEPT"), "decode": cuda_constant("kEPT"),
                  "mix": cuda_constant("kMixEPT")}
    type_code = {"fp32": "f", "bf16": "NS_8BFloat16"}
    rows = []
    for op in ("encode", "decode", "mix"):
        for bits, rounding, dtype in CASES:
            key = f"{op}_kernelILi{bits}ELi{ROUNDING_ID[rounding]}E{type_code[dtype]}E"
            name = next(f for f in funcs if key in f)
            ins = funcs[name]
            found = loops(ins)
            outer = found[0]
            counter = loop_body(ins, outer)
            if op == "mix":  # the neighbour loop inside: once more for the second neighbour
                inner = next((r for r in found[1:] if outer[0] <= r[0] and r[1] <= outer[1]
                              and r[1] - r[0] > 0x400), None)
                if inner:
                    counter.update(loop_body(ins, inner))
            rows.append(dict(backend="cuda", op=op, bits=bits, rounding=rounding, dtype=dtype,
                             **regs.get(name, {}), **classes(counter, per_thread[op])))
    funcs, regs = nvcc_cubin(tmp, "qsgd.cu")
    for bits, dtype in QSGD_CASES:  # the one-pass kernel (d = 512)
        name = next(f for f in funcs
                    if f"fused_encode_kernelILi{bits}E{type_code[dtype]}E" in f)
        rows.append(dict(backend="cuda", op="qsgd_encode", bits=bits, rounding="-",
                         dtype=dtype, **regs.get(name, {}),
                         **classes(outer_loop(funcs[name]), cuda_constant("kEPT"))))
    return rows


def triton_rows(tmp: Path) -> list[dict]:
    os.environ.pop("TRITON_INTERPRET", None)
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from moniqua_kernels.triton import moniqua as tm
    from moniqua_kernels.triton import qsgd as tq
    from moniqua_kernels.triton._common import BLOCK, LAUNCH, NUM_WARPS

    E = "constexpr"
    S = {"k0": "i32", "k1": "i32", "c0": "i32", "c1": "i32"}

    def signature(op, dtype):
        if op == "encode":
            return {"x_ptr": f"*{dtype}", "out_ptr": "*u8", "n": "i64", "nbytes": "i64",
                    "inv_b": "fp32", **S, "stream_ptr": E, "flag_ptr": "*i64",
                    "first_block": "i32", "BITS": E, "ROUNDING": E, "MASKED": E, "BLOCK": E}
        if op == "decode":
            return {"payload_ptr": "*u8", "y_ptr": f"*{dtype}", "out_ptr": f"*{dtype}",
                    "n": "i64", "nbytes": "i64", "b32": "fp32", "inv_b": "fp32", **S,
                    "stream_ptr": E, "flag_ptr": "*i64", "first_block": "i32", "BITS": E,
                    "ROUNDING": E, "MASKED": E, "BLOCK": E}
        halves = {k + "s": ("i64",) * 3 for k in ("k0", "k1", "c0", "c1")}
        return {"x_ptr": f"*{dtype}", "payloads": ("*u8",) * 2, "weights": ("fp32",) * 2,
                "own_ptr": "*u8", "n": "i64", "nbytes": "i64", "b32": "fp32", "inv_b": "fp32",
                "gamma": "fp32", **halves, "streams_ptr": E, "flag_ptr": "*i64",
                "first_block": "i32", "BITS": E, "ROUNDING": E, "MASKED": E, "BLOCK": E}

    def aligned(sig):  # pointers 16-byte aligned, as the launcher specialises tensors
        attrs = {}
        for k, kind in enumerate(sig.values()):
            for j, t in enumerate(kind) if isinstance(kind, tuple) else [(None, kind)]:
                if t.startswith("*"):
                    attrs[(k,) if j is None else (k, j)] = [["tt.divisibility", 16]]
        return attrs

    kernels = {"encode": tm._moniqua_encode_kernel, "decode": tm._moniqua_decode_kernel,
               "mix": tm._moniqua_mix_kernel}
    ptxas = triton_bin("ptxas-blackwell")
    if not os.path.exists(ptxas):
        ptxas = triton_bin("ptxas")

    def compile_counts(fn, sig, constexprs, warps):
        compiled = triton.compile(ASTSource(fn=fn, signature=sig, attrs=aligned(sig),
                                            constexprs=constexprs),
                                  target=GPUTarget("cuda", ARCH, 32),
                                  options=dict(LAUNCH, num_warps=warps))
        ptx, cubin = tmp / "k.ptx", tmp / "k.cubin"
        ptx.write_text(compiled.asm["ptx"])
        cubin.write_bytes(compiled.asm["cubin"])
        ins = next(iter(sass_functions(cubin).values()))
        return ptx, collections.Counter(opcode(i) for _, i in ins)

    def row(fn, sig, constexprs, warps, unchecked_block=None, **key):
        """One kernel's counts, per element: BLOCK / (32 * warps) elements a thread."""
        ptx, counter = compile_counts(fn, sig, constexprs, warps)
        report = subprocess.run([ptxas, f"-arch=sm_{ARCH}a", "-v", str(ptx), "-o",
                                 str(tmp / "k2.cubin")], capture_output=True, text=True)
        reg = re.search(r"Used (\d+) registers", report.stderr)
        spill = re.search(r"(\d+) bytes spill stores", report.stderr)
        # flag_ptr None: the kernel without its data checks (check_finite=False), at the
        # block its launcher gives it then (the mix's may differ: moniqua.mix_block)
        block = unchecked_block or constexprs["BLOCK"]
        _, unchecked = compile_counts(fn, dict(sig, flag_ptr=E),
                                      dict(constexprs, flag_ptr=None, BLOCK=block), warps)
        return dict(backend="triton", **key, regs=int(reg.group(1)) if reg else None,
                    spill=int(spill.group(1)) if spill else None,
                    unchecked=sum(unchecked.values()) / (block / (32 * warps)),
                    **classes(counter, constexprs["BLOCK"] / (32 * warps)))

    rows = []
    esize = {"fp32": 4, "bf16": 2}
    for op, fn in kernels.items():
        for bits, rounding, dtype in CASES:
            block, unchecked_block = BLOCK, None
            extra = {"stream_ptr": None}
            if op == "mix":  # its block by rounding, check and dtype (moniqua.mix_block)
                block = tm.mix_block(rounding, True, esize[dtype])
                unchecked_block = tm.mix_block(rounding, False, esize[dtype])
                extra = {"streams_ptr": None}
            rows.append(row(fn, signature(op, dtype), {
                **extra, "BITS": bits, "ROUNDING": ROUNDING_ID[rounding],
                "MASKED": False, "BLOCK": block}, NUM_WARPS, unchecked_block, op=op if block == BLOCK else f"{op}, block {block}",
                bits=bits, rounding=rounding, dtype=dtype))
    warps = tq._bucket_warps(QSGD_BUCKET)
    for bits, dtype in QSGD_CASES:
        sig = {"x_ptr": f"*{dtype}", "scales_ptr": "*fp32", "out_ptr": "*u8", "n": "i64",
               "d8": "i64", **S, "stream_ptr": E, "flag_ptr": "*i64", "first_block": "i32",
               "BITS": E, "NORM": E, "MASKED": E, "WHOLE": E, "BLOCK": E}
        rows.append(row(tq._qsgd_encode_kernel, sig, {
            "stream_ptr": None, "BITS": bits, "NORM": 0, "MASKED": False, "WHOLE": True,
            "BLOCK": QSGD_BUCKET}, warps, op="qsgd_encode",
            bits=bits, rounding="-", dtype=dtype))
    return rows


def table(rows: list[dict]) -> list[str]:
    cols = ["all", *CLASSES]
    lines = ["| backend | op | bits | rounding | dtype | regs | spill B | instr/elem | "
             "unchecked | " + " | ".join(cols[1:]) + " |", "|" + "---|" * (9 + len(cols) - 1)]
    for r in rows:
        unchecked = f"{r['unchecked']:.1f}" if "unchecked" in r else ""
        lines.append(f"| {r['backend']} | {r['op']} | {r['bits']} | {r['rounding']} | "
                     f"{r['dtype']} | {r.get('regs', '')} | {r.get('spill', '')} | "
                     f"{r['all']:.1f} | {unchecked} | " +
                     " | ".join(f"{r[c]:.1f}" for c in cols[1:]) + " |")
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path)
    p.add_argument("--only", choices=("cuda", "triton"))
    args = p.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        if args.only in (None, "cuda"):
            rows += cuda_rows(Path(tmp))
        if args.only in (None, "triton"):
            rows += triton_rows(Path(tmp))
    import triton
    nvcc = subprocess.run([shutil.which("nvcc") or "/usr/local/cuda/bin/nvcc", "--version"],
                          capture_output=True, text=True).stdout.strip().splitlines()[-1]
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                         capture_output=True, text=True).stdout.strip()
    doc = [f"# Static SASS counts, sm_{ARCH} (commit {git})", "",
           f"nvcc: {nvcc}; Triton {triton.__version__}.  Per element, from the code (not a "
           "GPU run): see benchmarks/sass_static.py for what is counted.", ""] + table(rows)
    text = "\n".join(doc) + "\n"
    if args.out:
        args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
