"""Run the kernel microbenchmarks from a checkout: the harness is moniqua_kernels.bench
(also ``python -m moniqua_kernels bench``); results go to benchmarks/results/."""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from moniqua_kernels import bench  # noqa: E402

if __name__ == "__main__":
    argv = sys.argv[1:]
    if "--out" not in argv:
        argv += ["--out", str(ROOT / "benchmarks" / "results")]
    bench.main(argv)
