"""n workers in one process, running exactly the algorithm classes of ``gossip``.

    from moniqua_kernels import simulate
    r = simulate.run("moniqua-1bit", n_workers=8, topology="ring", dataset="digits",
                     steps=600, lr=0.1, batch_size=16, seed=0)
    r.test_accuracy, r.bits_per_element, r.bytes_per_worker_per_step, r.est_comm_time_s

Each worker is a thread with its own model, optimizer, data shard and an
``InMemoryTransport``; they meet only through the transport, as processes do.  Every
computation is deterministic and does not depend on the interleaving, so a run equals
the same run on torch.distributed (``run_processes``, gloo on localhost) bit for bit.
(Torch ops run with one intra-op thread during a run, as in the processes, because
matmul results may depend on the thread count.)

Registry ``CONFIGS``: named algorithm configurations (``list_configs()``), e.g.
'dpsgd', 'allreduce', 'moniqua-1bit', 'moniqua-2bit', 'moniqua-d2-4bit',
'moniqua-adpsgd-1bit', 'choco-sign', 'choco-qsgd4', 'squarm'.

Network model: ``NetworkModel(latency_s, bandwidth_Bps)`` estimates a worker's
communication time in a step as rounds x latency + bytes / bandwidth (its sends share
one link; the rounds of a step are sequential); a synchronous step waits for the slowest
worker, so the estimate of a step is the max over workers, summed over the steps.
"""
from __future__ import annotations

import dataclasses
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from . import backends
from . import data as data_mod
from . import recipe
from . import gossip
from .gossip.theta import ThetaMonitor

__all__ = ["run", "run_processes", "Result", "AlgorithmConfig", "CONFIGS", "ALIASES",
           "list_configs",
           "NetworkModel", "RunSpec"]


@dataclass(frozen=True)
class NetworkModel:
    latency_s: float = 50e-6          # per message round
    bandwidth_Bps: float = 1.25e9     # bytes/s per worker link (10 Gbit/s)

    def time(self, nbytes: float, rounds: int) -> float:
        return rounds * self.latency_s + nbytes / self.bandwidth_Bps


@dataclass(frozen=True)
class AlgorithmConfig:
    """A named algorithm setup.  ``kwargs`` go to the algorithm class; a value given
    as ('lr*', c) becomes c * lr of the run (Moniqua's theta, SQuARM's lr)."""
    algorithm: str                   # key of gossip.ALGORITHMS
    kwargs: dict = field(default_factory=dict)
    momentum: float = 0.0
    nesterov: bool = False
    overlap: bool = True             # begin(), backward, end(), opt.step(); else step() after
    description: str = ""


def _lr_scaled(c):
    return ("lr*", float(c))


CONFIGS: dict[str, AlgorithmConfig] = {
    "dpsgd": AlgorithmConfig("dpsgd", {}, description="D-PSGD, full precision (32 bits)"),
    "allreduce": AlgorithmConfig("allreduce", {}, overlap=False,
                                 description="exact model averaging every step"),
    "moniqua-1bit": AlgorithmConfig(
        "moniqua", {"bits": 1, "rounding": "dither", "theta": _lr_scaled(3.0), "gamma": 0.05,
                    "monitor": 100},
        description="Moniqua on D-PSGD, 1 bit, dither, theta = 3 lr, gamma = 0.05"),
    "moniqua-2bit": AlgorithmConfig(
        "moniqua", {"bits": 2, "rounding": "dither", "theta": _lr_scaled(3.0), "gamma": 0.2,
                    "monitor": 100},
        description="Moniqua on D-PSGD, 2 bits, dither, theta = 3 lr, gamma = 0.2"),
    # 1-bit D2 diverged in our runs (gamma 0.01 and 0.05: D2's extra term accumulates the
    # quantization noise until theta is violated); 4 bits with gamma 0.5 trains.
    "moniqua-d2-4bit": AlgorithmConfig(
        "moniqua", {"variant": "d2", "bits": 4, "rounding": "dither", "theta": _lr_scaled(3.0),
                    "gamma": 0.5, "monitor": 100}, overlap=False,
        description="Moniqua on D2, 4 bits, dither, theta = 3 lr, gamma = 0.5 (plain SGD)"),
    "moniqua-adpsgd-1bit": AlgorithmConfig(
        "moniqua", {"variant": "adpsgd", "bits": 1, "rounding": "dither",
                    "theta": _lr_scaled(3.0), "gamma": 0.1, "monitor": 100},
        description="Moniqua on AD-PSGD (random pairwise matchings), 1 bit, dither"),
    "choco-sign": AlgorithmConfig("choco", {"compressor": "sign", "gamma": 0.2}, overlap=False,
                                  description="CHOCO-SGD, scaled sign (1 bit + scale)"),
    "choco-qsgd4": AlgorithmConfig("choco", {"compressor": "qsgd:4", "gamma": 0.8},
                                   overlap=False, description="CHOCO-SGD, QSGD 4 bits"),
    "squarm": AlgorithmConfig(
        "squarm", {"compressor": "topk:0.1+qsgd:4", "gamma": 0.5, "H": 2,
                   "threshold": 0.01, "lr": _lr_scaled(1.0)},
        momentum=0.9, nesterov=True, overlap=False,
        description="SQuARM-SGD: Nesterov 0.9, H=2, top-10% + QSGD 4 bits, trigger"),
}
CONFIGS["qsgd-4bit"] = CONFIGS["choco-qsgd4"]
# Bare algorithm names run their default config.
ALIASES = {"moniqua": "moniqua-1bit", "choco": "choco-sign"}


def list_configs() -> dict[str, str]:
    """Config name -> one-line description."""
    return {k: v.description for k, v in CONFIGS.items()}


@dataclass
class RunSpec:
    """Everything a worker needs (picklable, sent to processes)."""
    config: AlgorithmConfig
    n_workers: int = 8
    topology: str = "ring"
    dataset: str = "digits"
    model: str = "mlp"
    steps: int = 500
    lr: float = 0.1
    batch_size: int = 16
    seed: int = 0
    hidden: int = 64
    timeout: float = 60.0
    schedule: Optional[recipe.LRSchedule] = None   # learning rate per step (recipe.py)
    dirichlet_alpha: Optional[float] = None        # non-IID shards; None: IID


@dataclass
class Result:
    """What a run returns.

    losses[t]: the mean over workers of their minibatch loss at step t.
    test_accuracy: accuracy of the averaged model (mean of the workers' parameters);
    test_accuracy_workers: each worker's own model's accuracy (mean: test_accuracy_mean).
    bytes_per_worker_per_step: mean over workers and steps of the exact bytes sent;
    bits_per_element: that, in bits per model parameter.
    est_comm_time_s: NetworkModel estimate over all steps; wall_time_s: training loop.
    """
    config: str
    algorithm: str
    n_workers: int
    topology: str
    dataset: str
    model: str
    steps: int
    lr: float
    batch_size: int
    seed: int
    n_params: int
    losses: list
    test_accuracy: float
    test_accuracy_workers: list
    test_loss: float
    bytes_per_worker_per_step: float
    bits_per_element: float
    bytes_sent: list            # per worker, cumulative
    consensus_distance: float   # (1/n) sum_i ||x_i - x_bar||^2 at the end
    theta_violations: int
    wall_time_s: float
    est_comm_time_s: float
    params: list = field(repr=False, default_factory=list)   # final flat params per worker

    @property
    def test_accuracy_mean(self) -> float:
        return sum(self.test_accuracy_workers) / len(self.test_accuracy_workers)

    def summary(self) -> dict:
        d = dataclasses.asdict(self)
        d.pop("params")
        d["losses_last"] = self.losses[-1] if self.losses else float("nan")
        d.pop("losses")
        return d


# --------------------------------------------------------------------------- one worker

def _resolve(value, lr):
    if isinstance(value, tuple) and len(value) == 2 and value[0] == "lr*":
        return value[1] * lr
    return value


def _build(spec: RunSpec, rank: int, transport, ds: data_mod.Dataset):
    model = data_mod.make_model(spec.model, ds.n_features, ds.n_classes, spec.seed, spec.hidden)
    cfg = spec.config
    opt = torch.optim.SGD(model.parameters(), lr=spec.lr, momentum=cfg.momentum,
                          nesterov=cfg.nesterov)
    kwargs = {k: _resolve(v, spec.lr) for k, v in cfg.kwargs.items()}
    if isinstance(kwargs.get("monitor"), int):
        # A 256-coordinate sample every K steps: ~0.03 bits per element per step.
        kwargs["monitor"] = ThetaMonitor(every=kwargs["monitor"], sample=256, seed=spec.seed)
    cls = gossip.ALGORITHMS[cfg.algorithm]
    topology = "complete" if cfg.algorithm == "allreduce" else spec.topology
    alg = cls(model, topology, transport=transport, seed=spec.seed, timeout=spec.timeout,
              **kwargs)
    return model, opt, alg


def _train(spec: RunSpec, rank: int, transport, ds: data_mod.Dataset, shard: torch.Tensor,
           progress: Optional[Callable] = None, exit_at: Optional[int] = None) -> dict:
    model, opt, alg = _build(spec, rank, transport, ds)
    gen = torch.Generator().manual_seed(spec.seed * 7919 + rank)
    loss_fn = torch.nn.functional.cross_entropy
    losses, sent, rounds = [], [], []
    overlap = spec.config.overlap
    t0 = time.perf_counter()
    for t in range(spec.steps):
        if exit_at is not None and t == exit_at[0]:
            if exit_at[1] == "exit":
                os._exit(3)  # a crashing peer, for the failure tests
            time.sleep(10 * spec.timeout)  # a stalled peer: alive, silent
        if spec.schedule is not None:
            spec.schedule.apply(opt, t)
        idx = shard[torch.randint(shard.numel(), (spec.batch_size,), generator=gen)]
        x, y = ds.x_train[idx], ds.y_train[idx]
        if overlap:
            alg.begin()
        loss = loss_fn(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if overlap:
            alg.end()
            opt.step()
        else:
            opt.step()
            alg.step()
        losses.append(float(loss.detach()))
        sent.append(alg.last_bytes_sent)
        rounds.append(alg.last_rounds)
        if progress is not None and rank == 0:
            progress(t + 1, spec.steps, losses[-1])
    wall = time.perf_counter() - t0
    cd = alg.consensus_distance()
    mon = getattr(alg, "monitor", None)
    return {"params": alg.flat.flat(), "losses": losses, "sent": sent, "rounds": rounds,
            "wall": wall, "consensus": cd, "violations": mon.violations if mon else 0}


# --------------------------------------------------------------------------- results

def _accuracy(spec, ds, flat):
    model = data_mod.make_model(spec.model, ds.n_features, ds.n_classes, spec.seed, spec.hidden)
    start = 0
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(flat[start:start + p.numel()].view_as(p))
            start += p.numel()
        logits = model(ds.x_test)
        acc = float((logits.argmax(1) == ds.y_test).float().mean())
        loss = float(torch.nn.functional.cross_entropy(logits, ds.y_test))
    return acc, loss


def _result(spec: RunSpec, name: str, ds, outs: list[dict], network: NetworkModel) -> Result:
    n, steps = spec.n_workers, spec.steps
    params = [o["params"] for o in outs]
    avg = torch.stack(params).mean(0)
    acc, test_loss = _accuracy(spec, ds, avg)
    accs = [_accuracy(spec, ds, p)[0] for p in params]
    losses = [sum(o["losses"][t] for o in outs) / n for t in range(steps)]
    total = [sum(o["sent"]) for o in outs]
    per_step = sum(total) / (n * max(steps, 1))
    comm = sum(max(network.time(o["sent"][t], o["rounds"][t]) for o in outs)
               for t in range(steps))
    return Result(name, spec.config.algorithm, n, spec.topology, spec.dataset, spec.model, steps,
                  spec.lr, spec.batch_size, spec.seed, params[0].numel(), losses, acc, accs,
                  test_loss, per_step, 8.0 * per_step / params[0].numel(), total,
                  outs[0]["consensus"], max(o["violations"] for o in outs),
                  max(o["wall"] for o in outs), comm, params)


def _spec(algorithm, config, overrides=None, **kw) -> tuple[str, RunSpec]:
    if config is None:
        if isinstance(algorithm, AlgorithmConfig):
            name, config = algorithm.algorithm, algorithm
        elif algorithm in CONFIGS or algorithm in ALIASES:
            name, config = algorithm, CONFIGS[ALIASES.get(algorithm, algorithm)]
        else:
            raise ValueError(f"unknown algorithm config {algorithm!r}; use one of "
                             f"{', '.join(list(CONFIGS) + list(ALIASES))} or pass "
                             "config=AlgorithmConfig(...)")
    else:
        name = algorithm if isinstance(algorithm, str) else config.algorithm
    if overrides:
        config = dataclasses.replace(config, kwargs={**config.kwargs, **overrides})
    if kw.get("dataset") not in data_mod.DATASETS:
        raise ValueError(f"unknown dataset {kw.get('dataset')!r}; use one of "
                         f"{', '.join(data_mod.DATASETS)}")
    if kw.get("model") not in data_mod.MODELS:
        raise ValueError(f"unknown model {kw.get('model')!r}; use one of "
                         f"{', '.join(data_mod.MODELS)}")
    if kw["n_workers"] < 1 or kw["steps"] < 1 or kw["batch_size"] < 1:
        raise ValueError("n_workers, steps and batch_size must be >= 1")
    if kw.get("schedule") is not None and kw["schedule"].steps != kw["steps"]:
        raise ValueError(f"the schedule is for {kw['schedule'].steps} steps, the run has "
                         f"{kw['steps']}")
    return name, RunSpec(config=config, **kw)


# --------------------------------------------------------------------------- entry points

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
    name, spec = _spec(algorithm, config, overrides, n_workers=n_workers, topology=topology,
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
            outs[rank] = _train(spec, rank, net.transport(rank), ds, shards[rank], progress)
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            errors[rank] = exc
            net.fail(f"worker {rank} raised {type(exc).__name__}: {exc}")

    # Load the kernel backends here: backends.py's lazy loader is not thread-safe (a
    # second thread can see a half-loaded backend), so no worker thread may be first.
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
    return _result(spec, name, ds, outs, network or NetworkModel())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _process_main(rank, specs, port, queue, fault_rank, fault):
    import datetime
    import torch.distributed as dist
    torch.set_num_threads(1)
    k = 0
    try:
        n, timeout = specs[0].n_workers, specs[0].timeout
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                world_size=n, timeout=datetime.timedelta(seconds=timeout))
        transport = gossip.DistTransport(timeout=timeout)
        for k, spec in enumerate(specs):
            ds = data_mod.load(spec.dataset, spec.seed)
            shard = recipe.worker_shards(ds.y_train, n, spec.seed, spec.dirichlet_alpha)[rank]
            out = _train(spec, rank, transport, ds, shard,
                         exit_at=fault if rank == fault_rank else None)
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
                  dirichlet_alpha: Optional[float] = None, _fault_rank: Optional[int] = None,
                  _fault: Optional[tuple] = None):
    """The same run as ``run`` with real processes: gloo over TCP on 127.0.0.1.

    algorithm may be a list of config names: they run one after another in the same
    processes (one process group), and a list of Results is returned.  Call it under
    ``if __name__ == "__main__":`` (processes are spawned).  Raises RuntimeError listing
    each rank's error if any rank fails; once one has failed, the others get ``timeout``
    + 5 s to report, then are killed.  For tests, ``_fault=(step, "exit" | "stall")``
    makes rank ``_fault_rank`` exit abruptly or hang at that step.
    """
    import multiprocessing as mp
    import queue as queue_mod
    names = algorithm if isinstance(algorithm, (list, tuple)) else [algorithm]
    common = dict(n_workers=n_workers, topology=topology, dataset=dataset, model=model,
                  steps=steps, lr=lr, batch_size=batch_size, seed=seed, hidden=hidden,
                  timeout=timeout, schedule=schedule, dirichlet_alpha=dirichlet_alpha)
    named = [_spec(a, config, **common) for a in names]
    specs = [s for _, s in named]
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_process_main, args=(r, specs, port, q, _fault_rank, _fault),
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
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
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
        out.append(_result(spec, name, ds, outs, network or NetworkModel()))
    return out if isinstance(algorithm, (list, tuple)) else out[0]
