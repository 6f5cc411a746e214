"""scripts/gpu_check.sh --dry-run: the prepared GPU run works on this machine before a
GPU is in hand (every phase runs or says why not, the summary prints last)."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here: run the real script")
@pytest.mark.skipif(shutil.which("timeout") is None, reason="needs coreutils' timeout")
def test_dry_run_writes_phases_and_summary(tmp_path):
    env = dict(os.environ, PYTHON=sys.executable)
    out = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--dry-run",
                          "--budget", "300", str(tmp_path)], env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
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
