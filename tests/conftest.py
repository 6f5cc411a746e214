"""Shared test setup.

Without a GPU the Triton kernels run through Triton's interpreter.  The variable must
be set before moniqua_kernels.triton is first imported (triton.jit reads it when the
kernels are defined), so it is set here, before any test module imports anything.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

import moniqua_kernels as mk  # noqa: E402


@pytest.fixture(autouse=True)
def _reset_backend():
    """Every test starts and ends with automatic backend selection."""
    mk.set_backend(None)
    yield
    mk.set_backend(None)


requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def pytest_collection_modifyitems(items):
    """Tests marked slow (the 20-run teardown stress test, the defaults sweeps; none in a
    module with a module-scoped fixture) start first: xdist's load schedule (scripts/
    test.sh) handed the 100 s stress test out near the end, where it ran alone."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


# The streaming test log of scripts/gpu_check.sh (off unless MONIQUA_TEST_PROGRESS is set).
from progress_log import (  # noqa: E402,F401
    pytest_configure, pytest_runtest_logreport, pytest_runtest_logstart)
