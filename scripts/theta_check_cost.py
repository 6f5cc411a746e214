"""What the theta checks cost: the share of training time spent in them.

    PYTHONPATH=. python scripts/theta_check_cost.py --workers 4 --steps 2000 --hidden 64 512

Each of --workers gloo processes on localhost trains the digits MLP with
Moniqua(bits=1) defaults (adaptive theta, monitor on) for --steps steps and times every
step (data, forward, backward, optimizer step, gossip) and, inside it, the checks
(Moniqua._measure_spread: the every-coordinate exchange and the max all-reduce).  Prints
the checks' share of the total, per hidden size, worst over ranks.  One intra-op thread
per process.
"""
import argparse
import datetime
import os
import sys
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import moniqua_kernels as mk  # noqa: E402
from moniqua_kernels import data  # noqa: E402
from moniqua_kernels.gossip.moniqua import Moniqua  # noqa: E402


def _worker(rank, world, port, steps, hidden, queue):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world, timeout=datetime.timedelta(seconds=120))
    spent = {"check": 0.0, "checks": 0, "warm": 0.0, "warm_checks": 0}
    measure = Moniqua._measure_spread

    def timed(self, t):
        t0 = time.perf_counter()
        try:
            return measure(self, t)
        finally:
            took = time.perf_counter() - t0
            spent["check"] += took
            spent["checks"] += 1
            if t < self.monitor.every:  # the start's dense checks (0-7, 8, 16, ...)
                spent["warm"] += took
                spent["warm_checks"] += 1
    Moniqua._measure_spread = timed
    ds = data.load("digits", 0)
    shard = data.shard(ds.x_train.shape[0], world, 0)[rank]
    model = data.make_model("mlp", ds.n_features, ds.n_classes, 0, hidden)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    g = mk.gossip.Moniqua(model, "ring", bits=1, timeout=120)
    gen = torch.Generator().manual_seed(rank)
    dist.barrier()
    t0 = time.perf_counter()
    for _ in range(steps):
        idx = shard[torch.randint(shard.numel(), (16,), generator=gen)]
        loss = torch.nn.functional.cross_entropy(model(ds.x_train[idx]), ds.y_train[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        g.step()
    total = time.perf_counter() - t0
    queue.put((rank, total, spent["check"], spent["checks"], g.flat.numel, spent["warm"],
               spent["warm_checks"]))
    dist.destroy_process_group()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--hidden", type=int, nargs="+", default=[64, 512])
    args = ap.parse_args()
    from moniqua_kernels.simulate.processes import free_port
    ctx = mp.get_context("spawn")
    for hidden in args.hidden:
        q = ctx.Queue()
        port = free_port()
        procs = [ctx.Process(target=_worker, args=(r, args.workers, port, args.steps, hidden, q))
                 for r in range(args.workers)]
        for p in procs:
            p.start()
        rows = [q.get(timeout=1800) for _ in procs]
        for p in procs:
            p.join()
        worst = max(rows, key=lambda r: r[2] / r[1])
        total, check, checks, n, warm, warm_checks = (worst[1], worst[2], worst[3], worst[4],
                                                     worst[5], worst[6])
        per_step = sum(r[1] for r in rows) / len(rows) / args.steps
        print(f"hidden {hidden} ({n} parameters), {args.workers} ranks, {args.steps} steps: "
              f"{per_step * 1e3:.2f} ms per step; {checks} checks took {check * 1e3:.1f} ms of "
              f"{total:.2f} s = {100 * check / total:.2f}% (worst rank); after the start "
              f"({checks - warm_checks} checks): {100 * (check - warm) / total:.2f}%; "
              f"one check ~{1e3 * check / checks:.1f} ms", flush=True)


if __name__ == "__main__":
    main()
