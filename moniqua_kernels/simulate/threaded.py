"""run(): the workers as threads of this process over in-memory mailboxes."""
from __future__ import annotations

import threading
from typing import Callable, Optional

import torch

from .. import backends
from .. import data as data_mod
from .. import gossip
from .. import recipe
from .configs import AlgorithmConfig, NetworkModel, make_spec
from .worker import Result, make_result, train_worker

__all__ = ["run"]


def run(algorithm: str = "moniqua-1bit", *, config: Optional[AlgorithmConfig] = None,
        n_workers: int = 8, topology: str = "ring", dataset: str = "digits",
        model: str = "mlp", steps: int = 500, lr: float = 0.1, batch_size: int = 16,
        seed: int = 0, hidden: int = 64, network: Optional[NetworkModel] = None,
        progress: Optional[Callable[[int, int, float], None]] = None,
        timeout: float = 60.0, compressor=None,
        schedule: Optional[recipe.LRSchedule] = None, dirichlet_alpha: Optional[float] = None,
        **overrides) -> Result:
    """Simulate n_workers in this process; returns a Result.

    algorithm: a name in CONFIGS ('moniqua' and 'choco' mean their 1-bit/sign configs),
    or pass config=AlgorithmConfig(...) to define one.  compressor= and any other
    keyword (gamma=, theta=, bits=, H=, ...) override the config's algorithm arguments,
    e.g. run("choco", compressor="qsgd:8", gamma=0.5); ('lr*', c) means c * lr.
    progress(step, steps, loss) is called from worker 0's thread after each step.
    schedule: a recipe.LRSchedule (warm-up, step or cosine decay) for the steps;
    dirichlet_alpha: non-IID shards (recipe.dirichlet_shards); topology may name a file
    ('weights:PATH', 'edges:PATH').
    """
    if compressor is not None:
        overrides["compressor"] = compressor
    name, spec = make_spec(algorithm, config, overrides, n_workers=n_workers, topology=topology,
                       dataset=dataset, model=model, steps=steps, lr=lr,
                       batch_size=batch_size, seed=seed, hidden=hidden, timeout=timeout,
                       schedule=schedule, dirichlet_alpha=dirichlet_alpha)
    ds = data_mod.load(dataset, seed)
    shards = recipe.worker_shards(ds.y_train, n_workers, seed, dirichlet_alpha)
    net = gossip.InMemoryNetwork(n_workers, timeout)
    outs: list = [None] * n_workers
    errors: list = [None] * n_workers

    def work(rank):
        try:
            outs[rank] = train_worker(spec, rank, net.transport(rank), ds, shards[rank], progress)
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            errors[rank] = exc
            net.fail(f"worker {rank} raised {type(exc).__name__}: {exc}")

    # Load the kernel backends before the workers start, so that no worker's first step
    # pays for the import (the loader itself is locked: backends._load).
    backends.available("moniqua_encode", "cpu")
    threads_before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        threads = [threading.Thread(target=work, args=(r,), name=f"sim-worker-{r}", daemon=True)
                   for r in range(n_workers)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
    finally:
        torch.set_num_threads(threads_before)
    # The first worker that failed on its own (not woken by another's failure) is the cause.
    first = next((e for e in errors if e is not None and not isinstance(e, gossip.PeerError)),
                 next((e for e in errors if e is not None), None))
    if first is not None:
        raise first
    return make_result(spec, name, ds, outs, network or NetworkModel())
