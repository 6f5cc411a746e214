"""Backend registry: selection, refusal reasons, fallback."""
import pytest
import torch

import moniqua_kernels as mk
from moniqua_kernels import backends


def test_reference_forced_by_env(monkeypatch):
    monkeypatch.setenv("MONIQUA_BACKEND", "reference")
    assert mk.get_backend() == "reference"
    name, fn = backends.select("moniqua_encode", "cpu")
    assert name == "reference"


def test_set_backend_overrides_env(monkeypatch):
    monkeypatch.setenv("MONIQUA_BACKEND", "triton")
    mk.set_backend("reference")
    assert backends.select("qsgd_encode", "cpu")[0] == "reference"
    mk.set_backend(None)
    assert mk.get_backend() == "triton"


def test_unknown_backend_name(monkeypatch):
    with pytest.raises(ValueError, match="choose one of auto, reference, cpu, cuda, triton"):
        mk.set_backend("fpga")
    monkeypatch.setenv("MONIQUA_BACKEND", "fpga")
    with pytest.raises(ValueError, match="unknown backend 'fpga'"):
        mk.moniqua_encode(torch.randn(4), 1.0)


def test_forced_cuda_on_cpu_tensor_lists_every_backend():
    mk.set_backend("cuda")
    with pytest.raises(mk.BackendUnavailableError) as info:
        mk.moniqua_encode(torch.randn(8), 1.0)
    msg = str(info.value)
    assert "backend 'cuda'" in msg and "serves cuda tensors, not cpu" in msg
    for name in ("reference", "cpu", "cuda", "triton"):
        assert f"{name}:" in msg


def test_triton_on_cpu_needs_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    reasons = mk.available("moniqua_encode", "cpu")
    assert reasons["reference"] is None
    assert "TRITON_INTERPRET=1" in reasons["triton"]


def test_cuda_backend_of_a_cpu_only_build_says_so():
    # The reason must name the build, not claim that the op has no CUDA kernel: the
    # fallback warning skips "has no kernel" reasons, so a GPU user would not learn it.
    _C = pytest.importorskip("moniqua_kernels._C")
    reason = mk.available("moniqua_mix_", "cuda")["cuda"]
    if _C.with_cuda():
        assert reason is None
    else:
        assert "built without CUDA kernels" in reason


def test_auto_on_cpu_serves_and_agrees_with_reference():
    x = torch.randn(1001)
    auto = mk.moniqua_encode(x, 0.5, 4, "stochastic", seed=1)
    with mk.use_backend("reference"):
        ref = mk.moniqua_encode(x, 0.5, 4, "stochastic", seed=1)
    assert torch.equal(auto, ref)
    assert mk.get_backend() == "auto"  # the context manager restored the selection


def test_every_available_backend_matches_reference_on_cpu():
    # Whatever is built here (native extension, Triton interpreter) gives the same bytes.
    x = torch.randn(999)
    with mk.use_backend("reference"):
        want = mk.moniqua_encode(x, 0.5, 2, "dither", seed=3, offset=8)
    for name, reason in mk.available("moniqua_encode", "cpu").items():
        if reason is None:
            with mk.use_backend(name):
                got = mk.moniqua_encode(x, 0.5, 2, "dither", seed=3, offset=8)
            assert torch.equal(got, want), name
