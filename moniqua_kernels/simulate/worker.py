"""One worker's training loop, and the Result assembled from all workers' outputs.

The same loop runs in the simulator's threads and in run_processes' processes; the
transport decides which.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from .. import data as data_mod
from .. import gossip
from .configs import NetworkModel, RunSpec

__all__ = ["Result", "train_worker", "make_result"]


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

def _resolve(value, opt: torch.optim.Optimizer):
    """A config value; ("lr*", c) is c times the optimizer's learning rate, read when
    used (as train passes the optimizer): a fixed number once ignored the schedule, and
    SQuARM's trigger then compared against the first step's lr."""
    if isinstance(value, tuple) and len(value) == 2 and value[0] == "lr*":
        c = float(value[1])
        return opt if c == 1.0 else (lambda step: c * float(opt.param_groups[0]["lr"]))
    return value


def _build(spec: RunSpec, rank: int, transport, ds: data_mod.Dataset):
    model = data_mod.make_model(spec.model, ds.n_features, ds.n_classes, spec.seed, spec.hidden)
    cfg = spec.config
    opt = torch.optim.SGD(model.parameters(), lr=spec.lr, momentum=cfg.momentum,
                          nesterov=cfg.nesterov)
    kwargs = {k: _resolve(v, opt) for k, v in cfg.kwargs.items()}
    cls = gossip.ALGORITHMS[cfg.algorithm]
    topology = "complete" if cfg.algorithm == "allreduce" else spec.topology
    alg = cls(model, topology, transport=transport, seed=spec.seed, timeout=spec.timeout,
              **kwargs)
    return model, opt, alg


def train_worker(spec: RunSpec, rank: int, transport, ds: data_mod.Dataset, shard: torch.Tensor,
                 progress: Optional[Callable] = None) -> dict:
    model, opt, alg = _build(spec, rank, transport, ds)
    gen = torch.Generator().manual_seed(spec.seed * 7919 + rank)
    loss_fn = torch.nn.functional.cross_entropy
    losses, sent, rounds = [], [], []
    overlap = spec.config.overlap
    t0 = time.perf_counter()
    for t in range(spec.steps):
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


def make_result(spec: RunSpec, name: str, ds, outs: list[dict], network: NetworkModel) -> Result:
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
