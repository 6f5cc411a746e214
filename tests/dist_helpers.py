"""Run a function in n spawned processes that share one gloo process group (tests only).

    results = run_ranks(fn, n, timeout=60)   # fn(rank, world) in every process

fn must live at module level in an importable module (spawned processes import it).
Each rank's return value, or "ExceptionType: message" if it raised, comes back in rank
order; a rank that dies without reporting is "died with exit code N".
"""
import datetime
import multiprocessing as mp
import queue as queue_mod
import time

from moniqua_kernels.simulate.processes import free_port, reap


def _main(fn, rank, world, port, timeout, q):
    import torch
    import torch.distributed as dist
    torch.set_num_threads(1)
    try:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                world_size=world, timeout=datetime.timedelta(seconds=timeout))
        try:
            q.put((rank, fn(rank, world)))
        finally:
            dist.destroy_process_group()
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        q.put((rank, f"{type(exc).__name__}: {exc}"))


def run_ranks(fn, world: int, timeout: float = 60.0) -> list:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_main, args=(fn, r, world, port, timeout, q), daemon=True)
             for r in range(world)]
    for p in procs:
        p.start()
    out = {}
    deadline = time.monotonic() + timeout + 90  # start-up of `world` torch imports
    try:
        while len(out) < world and time.monotonic() < deadline:
            try:
                rank, value = q.get(timeout=1.0)
                out[rank] = value
            except queue_mod.Empty:
                if all(not p.is_alive() for p in procs):
                    break
    finally:
        reap(procs)
    return [out.get(r, f"died with exit code {procs[r].exitcode}") for r in range(world)]
