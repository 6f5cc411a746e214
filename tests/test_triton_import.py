"""Without triton the Triton backend is refused with a reason; nothing breaks at import."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SCRIPT = r"""
import sys
sys.modules["triton"] = None          # makes `import triton` raise ImportError
sys.modules["triton.language"] = None
import torch
import moniqua_kernels as mk
reason = mk.available("moniqua_encode", "cuda")["triton"]
assert reason and "triton" in reason and "ImportError" in reason, reason
try:
    import moniqua_kernels.triton
except ImportError as exc:
    assert "needs the triton package" in str(exc), exc
else:
    raise AssertionError("moniqua_kernels.triton imported without triton")
x = torch.randn(10)
with mk.use_backend("reference"):
    assert mk.moniqua_encode(x, 1.0, 2, "nearest").numel() == 3
print("ok")
"""


def test_missing_triton_is_a_reason_not_a_crash():
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("MONIQUA_BACKEND", None)
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
