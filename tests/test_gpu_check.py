"""scripts/gpu_check.sh --dry-run: the prepared GPU run works on this machine before a
GPU is in hand (every phase runs or says why not, the summary prints last)."""
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here: run the real script")
@pytest.mark.skipif(shutil.which("timeout") is None, reason="needs coreutils' timeout")
def test_dry_run_writes_phases_and_summary(tmp_path):
    env = dict(os.environ, PYTHON=sys.executable)
    pack = tmp_path.parent / f"{tmp_path.name}_pack"
    out = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--dry-run",
                          "--budget", "300", "--pack", str(pack), str(tmp_path)], env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    # --pack: two files, the summary and the whole OUTDIR (what a runner that returns few
    # files brings back)
    assert sorted(p.name for p in pack.iterdir()) == ["summary.md", f"{tmp_path.name}.tar.gz"]
    with tarfile.open(pack / f"{tmp_path.name}.tar.gz") as tar:
        names = set(tar.getnames())
    assert {f"{tmp_path.name}/{f}" for f in ("summary.md", "phases.tsv", "junit_gpu.xml",
                                              "bench.log")} <= names
    assert (pack / "summary.md").read_text() == (tmp_path / "summary.md").read_text()
    assert out.stdout.rstrip().endswith(f"everything is in {tmp_path}")
    assert "## Phases" in out.stdout  # the summary is printed last
    phases = {}
    for line in (tmp_path / "phases.tsv").read_text().splitlines():
        name, rc, _, *note = line.split("\t") + [""]
        phases[name] = (rc, note[0])
    assert phases["env"][0] == "0"
    for name in ("build", "tests_triton", "ncu"):
        assert phases[name][0] == "skipped" and "no CUDA device" in phases[name][1], name
    assert phases["bench"][0] == "0"
    summary = (tmp_path / "summary.md").read_text()
    assert summary.startswith("# gpu_check summary")
    # without CUDA tests/test_gpu.py skips as a module: pytest's "no tests ran" (rc 5),
    # which the summary names instead of showing a bare failure code
    assert phases["tests_gpu"][0] == "5"
    assert "| tests_gpu | no tests ran (pytest rc=5) |" in summary
    assert list((tmp_path / "bench").glob("ops_cpu*.json"))
    assert (tmp_path / "junit_gpu.xml").exists()


def test_refuses_bad_arguments():
    out = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--budget", "x"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "--budget takes whole seconds" in out.stderr
    out = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--bogus"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "unknown option" in out.stderr


def test_refuses_a_pack_folder_inside_the_output(tmp_path):
    out = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--dry-run",
                          "--pack", str(tmp_path / "packed"), str(tmp_path)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "it would pack itself" in out.stderr


_SESSION = '''
import time
import pytest

def test_ok():
    pass

def test_bad():
    assert 1 == 2, "one is not two"

@pytest.fixture
def broken():
    raise RuntimeError("fixture broke")

def test_setup(broken):
    pass

def test_slow():
    time.sleep(600)
'''


def test_progress_log_survives_a_killed_session(tmp_path):
    """A session killed mid-test (as a phase's time limit does) leaves its failures, with
    their reports, and the test that was running in the streaming log, and the summary
    names them: what GPU run 2's killed CUDA phase could not tell."""
    (tmp_path / "test_session.py").write_text(_SESSION)
    out = tmp_path / "out"
    out.mkdir()
    log = out / "tests_gpu.progress"
    env = dict(os.environ, MONIQUA_TEST_PROGRESS=str(log), PYTHONPATH=str(ROOT / "tests"))
    xdist = ["-n", "2"] if importlib.util.find_spec("xdist") else []  # the GPU phases run under xdist
    proc = subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-p", "progress_log",
                             "-p", "no:cacheprovider", *xdist, "test_session.py"],
                            cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    wanted = ("passed\ttest_session.py::test_ok\t", "failed\ttest_session.py::test_bad\tcall",
              "failed\ttest_session.py::test_setup\tsetup", "start\ttest_session.py::test_slow")
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            text = log.read_text() if log.exists() else ""
            if all(w in text for w in wanted):
                break
            assert proc.poll() is None, text
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    text = log.read_text()
    assert all(w in text for w in wanted), text
    assert "AssertionError: one is not two" in text  # the whole report is there
    assert "RuntimeError: fixture broke" in text
    summary = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_summary.py"),
                              str(out)], capture_output=True, text=True, timeout=60)
    assert summary.returncode == 1  # failures make the summary fail
    assert ("- tests_gpu.progress: 2 failed, 1 passed, 1 still running when it stopped"
            in summary.stdout), summary.stdout
    assert ("FAILED test_session.py::test_bad (call): AssertionError: one is not two"
            in summary.stdout)
    assert "FAILED test_session.py::test_setup (setup): RuntimeError: fixture broke" \
        in summary.stdout
    assert "RUNNING test_session.py::test_slow" in summary.stdout



def test_summary_says_which_backend_wins_each_op(tmp_path):
    """gpu_summary sets Triton beside CUDA C++ per case (the largest n of each bench file
    only) and names, per op, the backend that wins more cases: the data for AUTO_CUDA."""
    def row(op, provider, gbps, n=2 ** 26, bits=4):
        return {"op": op, "bits": bits, "rounding": "-", "dtype": "fp32", "n": n,
                "seconds": 1e-3, "provider": provider, "gbps": gbps}

    (tmp_path / "bench_other").mkdir()
    (tmp_path / "bench_other" / "ops_x.json").write_text(json.dumps({"results": [
        row("qsgd_encode", "triton", 1000.0), row("qsgd_encode", "cuda", 1500.0),
        row("qsgd_encode", "triton", 1000.0, bits=8), row("qsgd_encode", "cuda", 1400.0, bits=8),
        row("sign_encode", "triton", 2000.0), row("sign_encode", "cuda", 1800.0),
        row("sign_encode", "triton", 10.0, n=2 ** 20), row("sign_encode", "cuda", 99.0, n=2 ** 20),
        row("philox_uniform", "triton", 3000.0)]}))
    (tmp_path / "triton_tuning.md").write_text(  # gpu_tuning.py's table comes along
        "# Triton launch shapes on X\n\n| op | BLOCK |\n|---|---|\n| mix | 2048 |\n")
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_summary.py"),
                          str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "| qsgd_encode | 4 | - | fp32 | 67108864 | 1000 | 1500 | 1.50 |" in out.stdout
    assert ("- qsgd_encode: CUDA faster in 2 of 2 cases, median CUDA / Triton 1.50: "
            "CUDA C++ first") in out.stdout, out.stdout
    assert ("- sign_encode: CUDA faster in 0 of 1 cases, median CUDA / Triton 0.90: "
            "Triton first") in out.stdout, out.stdout
    assert "philox_uniform:" not in out.stdout  # one backend only: nothing to choose
    assert "## Triton launch variants (check on, medians)\n\n| op | BLOCK |\n|---|---|\n" \
        "| mix | 2048 |\n" in out.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here: run the real script")
@pytest.mark.skipif(shutil.which("timeout") is None, reason="needs coreutils' timeout")
def test_phases_selects_what_runs(tmp_path):
    """--phases runs the phases named and skips the others saying why (a second call in a
    lease re-runs what a fix touched); a name the script does not have is refused; the
    script's list of names is every phase it has."""
    script = (ROOT / "scripts" / "gpu_check.sh").read_text()
    known = set(re.search(r'ALL_PHASES=",(.*),"', script).group(1).split(","))
    used = set(re.findall(r"^\s*(?:phase|skip) (\w+) ", script, re.M))
    assert used == known, (used, known)
    env = dict(os.environ, PYTHON=sys.executable)
    out = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--dry-run",
                          "--phases", "env,tests_gpu", str(tmp_path)], env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    phases = {line.split("\t")[0]: line.split("\t")[1:]
              for line in (tmp_path / "phases.tsv").read_text().splitlines()}
    assert phases["env"][0] == "0"
    assert phases["tests_gpu"][0] == "5"  # ran: without CUDA the module skips
    assert phases["bench"][0] == "skipped" and phases["bench"][2] == "not in --phases"
    bad = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--phases",
                          "env,bogus", str(tmp_path / "x")], capture_output=True, text=True,
                         timeout=60)
    assert bad.returncode == 2 and "unknown phase 'bogus'" in bad.stderr


def test_tuning_variants_give_the_default_bytes():
    """benchmarks/gpu_tuning.py's launches, run here by Triton's interpreter: every launch
    variant it will time on a GPU (block, warps) calls its kernel with the
    kernel's current arguments and writes the default variant's bytes (what a GPU run
    would otherwise find out only in its tuning phase, the last it has)."""
    pytest.importorskip("triton")
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("runs the kernels on CPU tensors through Triton's interpreter")
    spec = importlib.util.spec_from_file_location("gpu_tuning",
                                                  ROOT / "benchmarks" / "gpu_tuning.py")
    tuning = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tuning)
    n = 16384  # a multiple of every variant's block
    x = torch.randn(n)
    for bits, rounding in ((1, "dither"), (1, "nearest"), (8, "nearest")):
        g = torch.Generator().manual_seed(bits)
        payloads = [torch.randint(0, 256, (n * bits // 8,), dtype=torch.uint8, generator=g)
                    for _ in range(3)]
        for op in ("mix", "encode", "decode"):
            flag = torch.zeros(3, dtype=torch.int64)
            want = tuning.output(op, x, bits)
            default = tuning.default_shape(op, rounding, x.element_size())
            assert default in tuning.SHAPES
            tuning.launch(op, x, want, payloads, flag, bits, rounding, *default)
            assert op != "mix" or not torch.equal(want, x)  # the mix moved x
            for variant in tuning.SHAPES:
                got = tuning.output(op, x, bits)
                tuning.launch(op, x, got, payloads, flag, bits, rounding, *variant)
                assert torch.equal(got.view(torch.uint8), want.view(torch.uint8)), (op, variant)
            assert int(flag.sum()) == 0


def test_summary_ncu_table_has_pipes_and_top_stalls(tmp_path):
    """Nsight Compute's raw CSV becomes one row a kernel: time, DRAM, registers,
    occupancy, issue, the ALU and FMA-heavy pipes, and the three largest stall reasons
    (GPU run 4's profile had them all, unread: the dithered encode waited on a busy
    scheduler and a throttled math pipe, the mix on too few warps)."""
    stall = "smsp__average_warps_issue_stalled_{}_per_issue_active.ratio"
    cols = {"Kernel Name": ("", "_moniqua_mix_kernel"), "gpu__time_duration.sum": ("us", "280.7"),
            "launch__registers_per_thread": ("register/thread", "96"),
            "smsp__issue_active.avg.pct_of_peak_sustained_active": ("%", "67.4"),
            "sm__pipe_alu_cycles_active.avg.pct_of_peak_sustained_elapsed": ("%", "50.3"),
            "sm__pipe_fmaheavy_cycles_active.avg.pct_of_peak_sustained_elapsed": ("%", "60.0"),
            stall.format("not_selected"): ("", "1.56"), stall.format("selected"): ("", "1"),
            stall.format("math_pipe_throttle"): ("", "0.91"),
            stall.format("long_scoreboard"): ("", "0.2"), stall.format("barrier"): ("", "0")}
    lines = [",".join(f'"{c}"' for c in cols), ",".join(f'"{u}"' for u, _ in cols.values()),
             ",".join(f'"{v}"' for _, v in cols.values())]
    (tmp_path / "ncu_raw.csv").write_text("\n".join(lines) + "\n")
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_summary.py"),
                          str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert ("| kernel | us | regs | issue % | ALU % | FMA-heavy % | top stalls (cycles an "
            "instruction) |") in out.stdout, out.stdout
    assert ("| _moniqua_mix_kernel | 280.7 us | 96 register/thread | 67.4 % | 50.3 % | "
            "60.0 % | not_selected 1.6, selected 1.0, math_pipe_throttle 0.9 |") in out.stdout
