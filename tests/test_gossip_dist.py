"""Real multi-process runs: 4 gloo processes on localhost against the simulator.

One process group runs every algorithm config in turn (spawning costs more than the
training).  The simulator must reproduce the parameters bit for bit; bytes must match
the formulas; a peer that exits makes the others fail with PeerError, not hang.
"""
import functools
import math
import time

import pytest
import torch

import faults
from dist_helpers import rank_context
from moniqua_kernels import simulate
from moniqua_kernels.compressors import QSGD, Compose, ScaledSign, TopK
from moniqua_kernels.reference.packing import packed_nbytes

KW = dict(n_workers=4, dataset="synthetic", model="mlp", steps=10, lr=0.1, batch_size=8,
          hidden=16, seed=3, timeout=60.0)
EXACT_ALLREDUCE = simulate.AlgorithmConfig("allreduce", {"deterministic": True}, overlap=False)
# Random-k: the receiver sizes its buffer from the sender's seed (nothing else says it).
CHOCO_RANDOMK = simulate.AlgorithmConfig("choco", {"compressor": "randomk:0.3+qsgd:4",
                                                   "gamma": 0.3}, overlap=False)
NAMES = ["dpsgd", "allreduce", EXACT_ALLREDUCE, "moniqua-1bit", "moniqua-2bit",
         "moniqua-d2-4bit", "moniqua-adpsgd-1bit", "choco-sign", "choco-qsgd4", "squarm",
         CHOCO_RANDOMK, "dcd-qsgd4", "ecd-qsgd4", "deepsqueeze-sign", "adpsgd"]


def _key(name):
    if isinstance(name, str):
        return name
    return "allreduce-exact" if name is EXACT_ALLREDUCE else "choco-randomk"


@pytest.fixture(scope="module")
def runs():
    procs = simulate.run_processes(NAMES, **KW, mp_context=rank_context())
    sims = [simulate.run(n if isinstance(n, str) else "x",
                         config=None if isinstance(n, str) else n, **KW) for n in NAMES]
    return {_key(n): (p, s) for n, p, s in zip(NAMES, procs, sims)}


@pytest.mark.parametrize("name", [_key(n) for n in NAMES if n != "allreduce"])
def test_processes_equal_simulator_bit_for_bit(runs, name):
    proc, sim = runs[name]
    for r in range(KW["n_workers"]):
        assert torch.equal(proc.params[r], sim.params[r]), f"{name}: worker {r} differs"
    assert proc.losses == sim.losses
    assert proc.bytes_sent == sim.bytes_sent


def test_time_varying_directed_topology_equals_simulator():
    """One-peer exponential graph: each step sends to one peer and receives from
    another, over gloo as in the simulator."""
    kw = {**KW, "topology": "exp-onepeer", "steps": 6}
    names = ["dpsgd", "moniqua-2bit"]
    for name, proc in zip(names, simulate.run_processes(names, **kw, mp_context=rank_context())):
        sim = simulate.run(name, **kw)
        assert all(torch.equal(a, b) for a, b in zip(proc.params, sim.params)), name
        assert proc.bytes_sent == sim.bytes_sent


def test_backend_allreduce_matches_simulator_to_rounding(runs):
    """gloo sums in its own order, so only the last bits may differ."""
    proc, sim = runs["allreduce"]
    for r in range(KW["n_workers"]):
        torch.testing.assert_close(proc.params[r], sim.params[r], rtol=1e-5, atol=1e-6)
    # every worker holds the same averaged model
    assert all(torch.equal(proc.params[0], p) for p in proc.params)


def test_training_moved_and_workers_agree(runs):
    for name, (proc, _) in runs.items():
        assert proc.losses[-1] < proc.losses[0] + 0.2, name
        assert proc.consensus_distance < 1.0, name


def test_bytes_sent_equal_the_formulas(runs):
    n_params = runs["dpsgd"][0].n_params
    steps, n = KW["steps"], KW["n_workers"]
    deg = 2  # ring of 4
    expect = {
        "dpsgd": deg * 4 * n_params * steps,
        "allreduce": math.ceil(2 * (n - 1) * 4 * n_params / n) * steps,
        "allreduce-exact": (n - 1) * 4 * n_params * steps,
        "choco-sign": deg * ScaledSign().nbytes(n_params) * steps,
        "choco-qsgd4": deg * QSGD(4).nbytes(n_params) * steps,
        "dcd-qsgd4": deg * QSGD(4).nbytes(n_params) * steps,
        "ecd-qsgd4": deg * QSGD(4).nbytes(n_params) * steps,
        "deepsqueeze-sign": deg * ScaledSign().nbytes(n_params) * steps,
    }
    for name, total in expect.items():
        assert runs[name][0].bytes_sent == [total] * n, name
    # Moniqua with its theta checks at steps 0-8: a check looks at 8-bit codes over each
    # neighbour pair once (on a ring: to the successor only), each look ending with a
    # 2-float max all-reduce: one look at 32 theta, or (the first check, one after
    # identical models, one whose codes read near their range) looks from a bound on the
    # spread (theta.bound_look_spread), after a max |x| all-reduce where no look of the
    # check gave it.  So the extra bytes are L looks and F such all-reduces, L >= checks,
    # 1 <= F <= checks.
    checks = [t for t in range(steps) if t < 8 or t & (t - 1) == 0]
    reduce = math.ceil(2 * (n - 1) * 8 / n)
    look, scale_reduce = n_params + reduce, math.ceil(2 * (n - 1) * 4 / n)

    def looks(extra):
        return [(ls, f) for f in range(1, len(checks) + 1)
                for ls, rest in [divmod(extra - f * scale_reduce, look)]
                if rest == 0 and ls >= len(checks)]
    for bits in (1, 2):
        for b in runs[f"moniqua-{bits}bit"][0].bytes_sent:
            assert looks(b - deg * packed_nbytes(n_params, bits) * steps), (bits, b)
    # AD-PSGD: at most one partner per step (and per check)
    for b in runs["moniqua-adpsgd-1bit"][0].bytes_sent:
        assert b <= packed_nbytes(n_params, 1) * steps + len(checks) * (4 * look + scale_reduce)
    # SQuARM (H=2): flags and, when triggered, the composed payload, every 2nd step
    comp = Compose(TopK(0.1), QSGD(4))
    per_sync = deg * (1 + comp.nbytes(n_params))
    for b in runs["squarm"][0].bytes_sent:
        assert deg * (steps // 2) <= b <= per_sync * (steps // 2)
        assert (b - deg * (steps // 2)) % (deg * comp.nbytes(n_params)) == 0


@pytest.mark.parametrize("fault", ["exit", "stall"])
def test_failed_peer_fails_the_others_with_peer_error_in_time(fault):
    """Rank 2 of a ring of 3 exits (connection closed) or hangs (the deadline fires) at
    its fourth exchange (a test transport, tests/faults.py, injects the fault)."""
    timeout = 8.0
    t0 = time.monotonic()
    with pytest.raises(RuntimeError) as info:
        simulate.run_processes("dpsgd", n_workers=3, dataset="synthetic", steps=200,
                               hidden=8, batch_size=4, timeout=timeout,
                               mp_context=rank_context(), wrap_transport=functools.partial(faults.inject, rank=2,
                                                                at_exchange=3, fault=fault))
    elapsed = time.monotonic() - t0
    errors = info.value.rank_errors
    assert (f"exited with code {faults.EXIT_CODE}" if fault == "exit" else "killed") in errors[2]
    for r in (0, 1):
        assert "PeerError" in errors[r] and "peer(s) [2]" in errors[r], errors[r]
        if fault == "stall":
            assert "timed out" in errors[r].lower(), errors[r]
    # Start-up of 3 processes (slow on a loaded 2-core box) + the timeout (+ the parent's
    # grace before it kills the hung rank).  run_processes' own deadline is 184 s here, so
    # passing shows the ranks failed by themselves, within their timeout.
    assert elapsed < 45 + timeout + (timeout + 5 if fault == "stall" else 0)
