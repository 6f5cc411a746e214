"""run_processes(): the workers as processes, gloo over TCP on localhost."""
from __future__ import annotations

import socket
import time
from typing import Callable, Optional

import torch

from .. import data as data_mod
from .. import gossip
from .. import recipe
from .configs import AlgorithmConfig, NetworkModel, make_spec
from .worker import make_result, train_worker

__all__ = ["run_processes"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for a rendezvous)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def reap(procs, grace: float = 10.0) -> None:
    """Join processes, killing those still alive after ``grace`` seconds each."""
    for p in procs:
        p.join(timeout=grace)
        if p.is_alive():
            p.kill()


def _process_main(rank, specs, port, queue, wrap_transport):
    import datetime
    import torch.distributed as dist
    torch.set_num_threads(1)
    k = 0
    try:
        n, timeout = specs[0].n_workers, specs[0].timeout
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                world_size=n, timeout=datetime.timedelta(seconds=timeout))
        transport = gossip.DistTransport(timeout=timeout)
        if wrap_transport is not None:
            transport = wrap_transport(transport, rank)
        for k, spec in enumerate(specs):
            ds = data_mod.load(spec.dataset, spec.seed)
            shard = recipe.worker_shards(ds.y_train, n, spec.seed, spec.dirichlet_alpha)[rank]
            out = train_worker(spec, rank, transport, ds, shard)
            out["params"] = out["params"].numpy()
            queue.put((rank, k, "ok", out))
        dist.barrier()
        dist.destroy_process_group()
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        queue.put((rank, k, "error", f"{type(exc).__name__}: {exc}"))


def run_processes(algorithm="moniqua-1bit", *, config: Optional[AlgorithmConfig] = None,
                  n_workers: int = 4, topology: str = "ring", dataset: str = "synthetic",
                  model: str = "mlp", steps: int = 20, lr: float = 0.1, batch_size: int = 16,
                  seed: int = 0, hidden: int = 64, network: Optional[NetworkModel] = None,
                  timeout: float = 60.0, schedule: Optional[recipe.LRSchedule] = None,
                  dirichlet_alpha: Optional[float] = None,
                  wrap_transport: Optional[Callable[[gossip.transport.Transport, int],
                                                    gossip.transport.Transport]] = None,
                  mp_context=None):
    """The same run as ``run`` with real processes: gloo over TCP on 127.0.0.1.

    algorithm may be a list of config names: they run one after another in the same
    processes (one process group), and a list of Results is returned.  Call it under
    ``if __name__ == "__main__":`` (processes are spawned).  Raises RuntimeError listing
    each rank's error if any rank fails; once one has failed, the others get ``timeout``
    + 5 s to report, then are killed.

    ``wrap_transport(transport, rank)``, if given, is called in each process and returns
    the transport that rank uses instead (it must be picklable: a module-level function
    or a functools.partial of one).  The tests inject faults this way
    (tests/faults.py); instrumentation can count or delay messages.

    ``mp_context``, if given, is the multiprocessing context that starts the workers
    (default: spawn, a fresh interpreter each).  A forkserver context with torch
    preloaded starts them without importing torch again in every worker (the tests do
    this: tests/dist_helpers.py).
    """
    import multiprocessing as mp
    import queue as queue_mod
    names = algorithm if isinstance(algorithm, (list, tuple)) else [algorithm]
    common = dict(n_workers=n_workers, topology=topology, dataset=dataset, model=model,
                  steps=steps, lr=lr, batch_size=batch_size, seed=seed, hidden=hidden,
                  timeout=timeout, schedule=schedule, dirichlet_alpha=dirichlet_alpha)
    named = [make_spec(a, config, **common) for a in names]
    specs = [s for _, s in named]
    ctx = mp_context or mp.get_context("spawn")
    q = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_process_main, args=(r, specs, port, q, wrap_transport),
                         daemon=True) for r in range(n_workers)]
    for p in procs:
        p.start()
    results: dict[tuple[int, int], tuple] = {}
    failed: dict[int, str] = {}
    want = n_workers * len(specs)
    deadline = time.monotonic() + timeout * 3 + 60 + len(specs) * steps * 0.5
    first_failure = None
    try:
        while len(results) + sum(len(specs) for _ in failed) < want:
            try:
                rank, k, status, out = q.get(timeout=1.0)
                if status == "ok":
                    results[(rank, k)] = out
                else:
                    failed[rank] = out
            except queue_mod.Empty:
                for r, p in enumerate(procs):
                    done = all((r, k) in results for k in range(len(specs)))
                    if not p.is_alive() and not done and r not in failed:
                        failed[r] = f"exited with code {p.exitcode}"  # crashed, no report
                if time.monotonic() > deadline:
                    raise TimeoutError("ranks did not report in time: "
                                       f"{sorted(set(range(n_workers)) - set(failed))}")
            if failed:
                first_failure = first_failure or time.monotonic()
                if all(not p.is_alive() or r in failed for r, p in enumerate(procs)):
                    break
                if time.monotonic() > first_failure + timeout + 5:
                    for r, p in enumerate(procs):
                        if p.is_alive() and r not in failed:
                            failed[r] = "no report after the other ranks failed (killed)"
                            p.kill()
                    break
    finally:
        reap(procs)
    for r, p in enumerate(procs):  # died without a report (crashed, killed)
        if r not in failed and not all((r, k) in results for k in range(len(specs))):
            failed[r] = f"exited with code {p.exitcode}"
    if failed:
        err = RuntimeError("; ".join(f"rank {r}: {m}" for r, m in sorted(failed.items())))
        err.rank_errors = dict(sorted(failed.items()))
        raise err
    out = []
    for k, (name, spec) in enumerate(named):
        ds = data_mod.load(spec.dataset, spec.seed)
        outs = []
        for r in range(n_workers):
            o = results[(r, k)]
            o["params"] = torch.from_numpy(o["params"])
            outs.append(o)
        out.append(make_result(spec, name, ds, outs, network or NetworkModel()))
    return out if isinstance(algorithm, (list, tuple)) else out[0]
