"""Shared test setup.

Without a GPU the Triton kernels run through Triton's interpreter.  The variable must
be set before moniqua_kernels.triton is first imported (triton.jit reads it when the
kernels are defined), so it is set here, before any test module imports anything.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def _share_the_cores():
    """Under xdist, give each worker its share of the cores for torch's intra-op
    threads, and the processes its tests start too (OMP_NUM_THREADS), unless the caller
    set OMP_NUM_THREADS.  Why: each worker's torch otherwise starts one thread per core,
    and the workers' CPU work (the reference side of every parity case) oversubscribes
    the machine: the likely cause of what the GPU machines showed (16 cores,
    scripts/gpu_check.sh on 4 and 8 workers), parity cases that take 0.3-1 s here taking
    8-78 s there (GPU run 5: test_randomk[cuda_cuda] 78 s, test_moniqua_mix_large[cuda_cuda]
    63 s, test_philox_uniform of 2^20 elements 10 s), and four processes of two threads
    on this 2-core machine ran the Philox reference 6-8x slower than four of one (2.9 ->
    18-22 s).  On CI's 2 cores, 2 workers of 1 thread against 2 of 2: 456 against 475 s
    for the parallel lane, one run each."""
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if not workers or "OMP_NUM_THREADS" in os.environ:
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    share = max(1, (cores or 1) // int(workers))
    os.environ["OMP_NUM_THREADS"] = str(share)
    torch.set_num_threads(share)


_share_the_cores()

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
