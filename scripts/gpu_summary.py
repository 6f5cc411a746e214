"""The short summary of a scripts/gpu_check.sh run, printed last and written to
OUTDIR/summary.md: each phase's exit status and time, the failing tests (from the JUnit
files), each op's share of the copy bandwidth at the largest size timed (from the
benchmark JSON) and the Nsight Compute headline metrics (from the raw CSV export).

    python scripts/gpu_summary.py OUTDIR
"""
from __future__ import annotations

import csv
import json
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path


def phases(out: Path) -> list[str]:
    lines = ["| phase | status | seconds | note |", "|---|---|---|---|"]
    path = out / "phases.tsv"
    if not path.exists():
        return ["(no phases.tsv: the script stopped before its first phase)"]
    for row in path.read_text().splitlines():
        name, rc, secs, *note = row.split("\t") + [""]
        if rc in ("0", "skipped"):
            status = "ok" if rc == "0" else rc
        elif rc in ("124", "137"):
            status = "TIMEOUT"
        elif rc == "5" and name.startswith("tests"):
            # pytest's "no tests ran": what the dry run's tests_gpu gives (the module
            # skips without CUDA); on a GPU it means the phase tested nothing
            status = "no tests ran (pytest rc=5)"
        else:
            status = f"rc={rc}"
        lines.append(f"| {name} | {status} | {secs} | {note[0]} |")
    return lines


def junit(out: Path) -> tuple[list[str], int]:
    lines, failures = [], 0
    for path in sorted(out.glob("junit_*.xml")):
        try:
            root = ET.parse(path).getroot()
        except ET.ParseError as exc:
            lines.append(f"- {path.name}: unreadable ({exc})")
            failures += 1
            continue
        counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
        for suite in root.iter("testsuite"):
            for k in counts:
                counts[k] += int(suite.get(k, 0))
        lines.append(f"- {path.name}: {counts['tests']} tests, {counts['failures']} failed, "
                     f"{counts['errors']} errors, {counts['skipped']} skipped")
        for case in root.iter("testcase"):
            for tag in ("failure", "error"):
                node = case.find(tag)
                if node is not None:
                    failures += 1
                    msg = (node.get("message") or "").splitlines()[0][:160] if node.get(
                        "message") else ""
                    lines.append(f"  - {tag.upper()} {case.get('classname')}::"
                                 f"{case.get('name')}: {msg}")
    return lines, failures


def progress(out: Path) -> tuple[list[str], int]:
    """What the streaming test logs (tests/progress_log.py) show: each phase's counts, its
    failures with their first error line, and the tests still running when it stopped.
    These survive a phase its time limit killed, which leaves no JUnit file."""
    lines, failures = [], 0
    for path in sorted(out.glob("*.progress")):
        started, results, failed, detail = [], {}, [], {}
        current = None
        for line in path.read_text(errors="replace").splitlines():
            if line.startswith("    "):
                if current and line.strip().startswith("E ") and current not in detail:
                    detail[current] = line.strip()[1:].strip()[:160]
                continue
            event, nodeid, *rest = line.split("\t") + [""]
            if event == "start":
                started.append(nodeid)
                continue
            results.setdefault(nodeid, []).append(event)
            current = nodeid
            if event == "failed":
                failed.append(f"{nodeid} ({rest[0]})")
        outcome = lambda ev: "failed" if "failed" in ev else ev[0]  # noqa: E731
        counts = {}
        for ev in results.values():
            counts[outcome(ev)] = counts.get(outcome(ev), 0) + 1
        running = [n for n in started if n not in results]
        failures += len(failed)
        lines.append(f"- {path.name}: " + ", ".join(f"{v} {k}" for k, v in sorted(
            counts.items())) + (f", {len(running)} still running when it stopped" if running
                                else ""))
        for f in failed:
            lines.append(f"  - FAILED {f}: {detail.get(f.split(' (')[0], '')}")
        for n in running:
            lines.append(f"  - RUNNING {n}")
    return lines, failures


def bench(out: Path) -> list[str]:
    lines = []
    for path in sorted(out.glob("bench*/ops_*.json")):
        doc = json.loads(path.read_text())
        rows = [r for r in doc["results"] if r.get("seconds")]
        if not rows:
            continue
        lines += [f"### {path.parent.name}/{path.name}", "",
                  "| op | bits | rounding | dtype | n | provider | GB/s | % copy | x eager | "
                  "x compile |", "|---|---|---|---|---|---|---|---|---|---|"]
        big = max(r["n"] for r in rows)
        for r in rows:
            if r["n"] != big or r["provider"] == "copy":
                continue
            pct = r.get("frac_of_copy")
            fmt = lambda v, f: "" if v is None else format(v, f)  # noqa: E731
            lines.append(f"| {r['op']} | {r['bits']} | {r['rounding']} | {r['dtype']} | "
                         f"{r['n']} | {r['provider']} | {r['gbps']:.0f} | "
                         f"{fmt(pct and 100 * pct, '.0f')} | {fmt(r.get('x_eager'), '.1f')} | "
                         f"{fmt(r.get('x_compile'), '.2f')} |")
        copies = {}
        for r in rows:
            if r["provider"] == "copy" and r["n"] == big:
                copies.setdefault(r["dtype"], []).append(r["gbps"])
        lines += ["", f"copy bandwidth at n={big} (median of its {len(rows)} cases): " + ", ".join(
            f"{d} {sorted(g)[len(g) // 2]:.0f} GB/s" for d, g in copies.items()), ""]
    return lines


def backend_choice(out: Path) -> list[str]:
    """Triton against CUDA C++, case by case at each bench file's largest n (the bench and
    bench_other phases), and per op the backend that
    wins more cases: what backends.AUTO_CUDA should say (auto tries Triton first)."""
    cases = {}
    for path in sorted(out.glob("bench*/ops_*.json")):
        rows = [r for r in json.loads(path.read_text())["results"] if r.get("seconds")]
        big = max((r["n"] for r in rows), default=0)
        for r in rows:
            if r["n"] == big and r["provider"] in ("triton", "cuda"):
                key = (r["op"], r["bits"], r["rounding"], r["dtype"], r["n"])
                cases.setdefault(key, {})[r["provider"]] = r["gbps"]
    both = sorted((k for k, v in cases.items() if len(v) == 2), key=str)
    if not both:
        return []
    lines = ["| op | bits | rounding | dtype | n | Triton GB/s | CUDA GB/s | CUDA / Triton |",
             "|---|---|---|---|---|---|---|---|"]
    wins = {}
    for key in both:
        t, c = cases[key]["triton"], cases[key]["cuda"]
        lines.append("| " + " | ".join(str(k) for k in key) + f" | {t:.0f} | {c:.0f} | "
                     f"{c / t:.2f} |")
        wins.setdefault(key[0], []).append(c / t)
    lines.append("")
    for op, ratios in sorted(wins.items()):
        cuda_wins = sum(r > 1.0 for r in ratios)
        median = sorted(ratios)[len(ratios) // 2]
        verdict = "CUDA C++ first" if cuda_wins * 2 > len(ratios) else "Triton first"
        lines.append(f"- {op}: CUDA faster in {cuda_wins} of {len(ratios)} cases, median "
                     f"CUDA / Triton {median:.2f}: {verdict}")
    return lines


def ptxas(out: Path) -> list[str]:
    """Registers, stack and spills per CUDA kernel from the build log (-Xptxas=-v)."""
    path = out / "build.log"
    if not path.exists():
        return []
    kernels, name = {}, None
    for line in path.read_text(errors="replace").splitlines():
        m = re.search(r"Compiling entry function '(\S+)'", line)
        if m:
            # ..._ZN...13encode_kernelILi1ELi2EfEEv...: the file and the template arguments
            k = re.search(r"_\d+_([a-z]+)_cu_\w*?\d+([a-z_]+_kernel)(?:I(.*?)EEv)?", m.group(1))
            name = (f"{k.group(1)}.cu {k.group(2)}" + (f"<{k.group(3)}>" if k.group(3) else "")
                    if k else m.group(1)[:80])
            kernels[name] = {}
            continue
        if name is None:
            continue
        m = re.search(r"Used (\d+) registers", line)
        if m:
            kernels[name]["regs"] = int(m.group(1))
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores", line)
        if m:
            kernels[name].update(stack=int(m.group(1)), spill=int(m.group(2)))
    if not kernels:
        return []
    lines = ["| kernel | registers | stack bytes | spill bytes |", "|---|---|---|---|"]
    for name, k in sorted(kernels.items()):
        lines.append(f"| {name} | {k.get('regs', '')} | {k.get('stack', '')} | "
                     f"{k.get('spill', '')} |")
    return lines


NCU_COLUMNS = (("Kernel Name", "kernel"), ("gpu__time_duration.sum", "us"),
               ("dram__throughput.avg.pct_of_peak_sustained_elapsed", "DRAM %"),
               ("launch__registers_per_thread", "regs"),
               ("sm__warps_active.avg.pct_of_peak_sustained_active", "occupancy %"),
               ("smsp__issue_active.avg.pct_of_peak_sustained_active", "issue %"),
               # the busiest pipes of these kernels: integer/logic (LOP3, SHF, IADD3) and
               # the FMA-heavy one (IMAD, IMAD.WIDE: Philox's products)
               ("sm__pipe_alu_cycles_active.avg.pct_of_peak_sustained_elapsed", "ALU %"),
               ("sm__pipe_fmaheavy_cycles_active.avg.pct_of_peak_sustained_elapsed",
                "FMA-heavy %"),
               ("dram__bytes_read.sum", "read"), ("dram__bytes_write.sum", "write"))
STALL = re.compile(r"smsp__average_warps_issue_stalled_(\w+)_per_issue_active\.ratio")


def ncu(out: Path) -> list[str]:
    path = out / "ncu_raw.csv"
    if not path.exists():
        return []
    with path.open() as f:
        reader = list(csv.reader(f))
    if len(reader) < 3:
        return ["(ncu_raw.csv is empty)"]
    head, units, rows = reader[0], reader[1], reader[2:]
    idx = {name: head.index(name) for name, _ in NCU_COLUMNS if name in head}
    # where warps wait, per issued instruction: the three largest reasons (WarpStateStats)
    stalls = {STALL.fullmatch(h).group(1): k for k, h in enumerate(head) if STALL.fullmatch(h)}
    lines = ["| " + " | ".join(label for name, label in NCU_COLUMNS if name in idx) +
             (" | top stalls (cycles an instruction) |" if stalls else " |"),
             "|" + "---|" * (len(idx) + bool(stalls))]
    for row in rows:
        cells = []
        for name, _ in NCU_COLUMNS:
            if name not in idx:
                continue
            value = row[idx[name]]
            unit = units[idx[name]]
            if name == "Kernel Name":
                value = value[:60]
            elif unit:
                value = f"{value} {unit}"
            cells.append(value)
        if stalls:
            top = sorted(((_number(row[k]), name) for name, k in stalls.items()),
                         reverse=True)[:3]
            cells.append(", ".join(f"{name} {v:.1f}" for v, name in top if v > 0))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _number(text: str) -> float:
    try:
        return float(text.replace(",", ""))
    except ValueError:
        return 0.0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    out = Path(argv[0])
    doc = ["# gpu_check summary", ""]
    env = out / "env.json"
    if env.exists():
        e = json.loads(env.read_text())
        doc += [f"- device: {e.get('device_name')} ({e.get('sm_count')} SMs), torch "
                f"{e.get('torch')}, CUDA {e.get('cuda')}, Triton {e.get('triton')}, cupy "
                f"{e.get('cupy')}", ""]
    doc += ["## Phases", ""] + phases(out) + [""]
    tests, failures = junit(out)
    doc += ["## Tests", ""] + (tests or ["(no JUnit files)"]) + [""]
    streamed, streamed_failures = progress(out)
    if streamed:
        # the streaming logs count what a killed phase ran; JUnit counts finished phases
        doc += ["Streaming test logs (a failure's whole report is in the .progress file):",
                ""] + streamed + [""]
        failures = max(failures, streamed_failures)
    b = bench(out)
    if b:
        doc += ["## Bandwidth at the largest size (% of y.copy_(x) in the same run)", ""] + b
    choice = backend_choice(out)
    if choice:
        doc += ["## Triton or CUDA C++ per op (auto's order, backends.AUTO_CUDA)", ""] + \
            choice + [""]
    tuning = out / "triton_tuning.md"  # benchmarks/gpu_tuning.py: its table, heading off
    if tuning.exists():
        doc += ["## Triton launch variants (check on, medians)", ""] + \
            tuning.read_text().splitlines()[2:] + [""]
    n = ncu(out)
    if n:
        doc += ["## Nsight Compute", ""] + n + [""]
    regs = ptxas(out)
    if regs:
        (out / "cuda_registers.md").write_text("\n".join(regs) + "\n")
        doc += [f"CUDA registers per kernel: cuda_registers.md ({len(regs) - 2} kernels)", ""]
    text = "\n".join(doc) + "\n"
    (out / "summary.md").write_text(text)
    print(text)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
