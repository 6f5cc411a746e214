"""Run ``moniqua-kernels train`` once per algorithm, one process per rank, each inside
its rank's namespace, over gloo on the shaped links."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from typing import Optional

from .netns import Testbed
from .procs import child_kwargs, stop

# simulate.CONFIGS keyword -> train flag (values passed as they are)
_FLAGS = {"bits": "--bits", "rounding": "--rounding", "gamma": "--gamma",
          "compressor": "--compressor", "H": "--local-steps", "threshold": "--threshold",
          "variant": "--variant"}
# Ignored: a configuration's monitor setting; train runs Moniqua's default theta checks
# (their bytes are counted, docs/theta-checks.md).
_IGNORED = {"monitor"}


class RankFailed(RuntimeError):
    """A training rank exited with an error (the message names it and quotes its log)."""


@dataclasses.dataclass
class TrainSpec:
    """What every algorithm's run shares (same seed, data and model for all)."""
    workers: int
    dataset: str = "digits"
    model: str = "mlp"
    hidden: int = 32768
    steps: int = 150
    batch_size: int = 32
    lr: float = 0.1
    seed: int = 0
    topology: str = "ring"
    eval_every: int = 5
    log_every: int = 5
    timeout: float = 120.0
    threads: int = 1
    data_dir: Optional[str] = None


OVERLAP_SUFFIX = "+overlap"


def overlap_refusal(name: str) -> Optional[str]:
    """Why ``name`` + OVERLAP_SUFFIX cannot run (train --overlap), or None."""
    from .. import simulate
    from ..train import OVERLAP
    cfg = simulate.CONFIGS[simulate.ALIASES.get(name, name)]
    if cfg.algorithm in OVERLAP and cfg.kwargs.get("variant", "dpsgd") == "dpsgd":
        return None
    return (f"{name}{OVERLAP_SUFFIX}: train --overlap applies to "
            f"{' and '.join(OVERLAP)} (Moniqua's dpsgd variant) only")


def algorithm_flags(name: str) -> list[str]:
    """train's flags for a named configuration of ``simulate.CONFIGS``; a name ending in
    OVERLAP_SUFFIX runs that configuration with train --overlap (the exchange of x_t
    during its gradient's computation)."""
    from .. import simulate
    if name.endswith(OVERLAP_SUFFIX):
        base = name[:-len(OVERLAP_SUFFIX)]
        problem = overlap_refusal(base)
        if problem:
            raise ValueError(problem)
        return algorithm_flags(base) + ["--overlap"]
    cfg = simulate.CONFIGS[simulate.ALIASES.get(name, name)]
    flags = ["--algorithm", cfg.algorithm]
    for key, value in cfg.kwargs.items():
        if key in _IGNORED:
            continue
        lr_scaled = isinstance(value, tuple) and value[:1] == ("lr*",)
        if key == "theta":
            flags += ["--theta-lr-scale", str(value[1])] if lr_scaled else ["--theta", str(value)]
        elif key == "lr" and lr_scaled and value[1] == 1.0:
            continue  # train gives SQuARM the run's lr itself
        elif key in _FLAGS:
            flags += [_FLAGS[key], str(value)]
        else:
            raise ValueError(f"configuration {name!r}: train has no flag for {key}={value!r}")
    if cfg.momentum:
        flags += ["--momentum", str(cfg.momentum)]
    if cfg.nesterov:
        flags.append("--nesterov")
    return flags


def known_algorithms() -> list[str]:
    """Configurations that train can run (those with a flag for every argument), and
    those that can overlap with OVERLAP_SUFFIX."""
    from .. import simulate
    names = []
    for name in simulate.CONFIGS:
        try:
            algorithm_flags(name)
        except ValueError:
            continue
        names.append(name)
    return names + [n + OVERLAP_SUFFIX for n in names if overlap_refusal(n) is None]


def _train_argv(spec: TrainSpec, name: str, rank: int, folder: str) -> list[str]:
    argv = [sys.executable, "-m", "moniqua_kernels", "train", *algorithm_flags(name),
            "--topology", spec.topology, "--dataset", spec.dataset, "--model", spec.model,
            "--hidden", str(spec.hidden), "--steps", str(spec.steps),
            "--batch-size", str(spec.batch_size), "--lr", str(spec.lr),
            "--seed", str(spec.seed), "--timeout", str(spec.timeout),
            "--eval-every", str(spec.eval_every), "--log-every", str(spec.log_every),
            "--timing", "--no-progress"]
    if spec.data_dir:
        argv += ["--data-dir", spec.data_dir]
    if rank == 0:
        argv += ["--json", os.path.join(folder, "summary.json")]
    return argv


def _env(spec: TrainSpec, bed: Testbed, rank: int, port: int) -> dict:
    env = dict(os.environ)
    env.update({"RANK": str(rank), "WORLD_SIZE": str(spec.workers), "LOCAL_RANK": "0",
                "LOCAL_WORLD_SIZE": "1", "MASTER_ADDR": bed.address(0),
                "MASTER_PORT": str(port), "GLOO_SOCKET_IFNAME": bed.dev,
                "OMP_NUM_THREADS": str(spec.threads), "PYTHONUNBUFFERED": "1"})
    return env


def _tail(path: str, lines: int = 15) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:]).rstrip()
    except OSError:
        return "(no log)"


def run_algorithm(bed: Testbed, spec: TrainSpec, name: str, folder: str, port: int,
                  deadline_s: float) -> dict:
    """Train ``name`` on every rank; returns rank 0's summary and history
    (``{"summary": ..., "history": [...]}``).  Raises RankFailed naming the first rank
    that failed (and quoting its log), or TimeoutError after deadline_s."""
    os.makedirs(folder, exist_ok=True)
    procs, logs = [], []
    try:
        for rank in range(spec.workers):
            log_path = os.path.join(folder, f"rank{rank}.log")
            logs.append(log_path)
            with open(log_path, "w") as log:
                procs.append(subprocess.Popen(
                    bed.exec_argv(rank, _train_argv(spec, name, rank, folder)),
                    env=_env(spec, bed, rank, port), stdout=log, stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL, **child_kwargs()))
        end = time.monotonic() + deadline_s
        failed_at = None
        while any(p.poll() is None for p in procs):
            codes = [p.poll() for p in procs]
            if failed_at is None and any(c not in (None, 0) for c in codes):
                failed_at = time.monotonic()
            # Once one rank failed the others report a PeerError within their timeout.
            if failed_at is not None and time.monotonic() > failed_at + spec.timeout + 10:
                break
            if time.monotonic() > end:
                raise TimeoutError(f"{name}: training did not finish within {deadline_s:.0f} s "
                                   f"(ranks still running: "
                                   f"{[r for r, p in enumerate(procs) if p.poll() is None]})")
            time.sleep(0.2)
        codes = [p.poll() for p in procs]
        bad = [r for r, c in enumerate(codes) if c != 0]
        if bad:
            # The first rank to fail on its own is the cause; PeerErrors follow from it.
            first = next((r for r in bad if "PeerError" not in _tail(logs[r])), bad[0])
            raise RankFailed(f"{name}: rank {first} exited with {codes[first]} "
                             f"(ranks {bad} failed); its log ({logs[first]}):\n"
                             f"{_tail(logs[first])}")
    finally:
        stop(procs)
    with open(os.path.join(folder, "summary.json")) as f:
        return json.load(f)
