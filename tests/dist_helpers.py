"""Start ranks for the multi-process tests (tests only).

    results = run_ranks(fn, n, timeout=60)   # fn(rank, world) in n processes, one gloo group
    results = train_forks(n, ARGS)           # `moniqua-kernels train ARGS` as n ranks, forked
    results = train_ranks(n, ARGS)           # the same as n fresh interpreters
    proc = torchrun(ARGV, cwd)               # `python -m torch.distributed.run ... ARGV`

run_ranks: fn must live at module level in an importable module (each rank imports it).
Each rank's return value, or "ExceptionType: message" if it raised, comes back in rank
order; a rank that dies without reporting is "died with exit code N".

train_forks and train_ranks both return [(exit code, stdout+stderr)] in rank order.
train_ranks pays a torch import per rank (about 3 s of CPU with torch.optim's first
import of dynamo); train_forks runs the same CLI entry point in forks of a server that
has imported everything, so it tests what train does, not how an interpreter exits.
Tests about the exit itself (aborts at teardown) and the README's literal commands use
train_ranks or launch_ranks.
"""
import datetime
import functools
import multiprocessing as mp
import queue as queue_mod
import time

from moniqua_kernels.simulate.processes import free_port, reap


def _main(fn, rank, world, port, timeout, q):  # run_ranks' rank
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


def rank_context():
    """The multiprocessing context the tests start ranks with: a forkserver that has
    imported torch, dynamo (torch.optim imports it on an optimizer's first use) and the
    package once per test process.  Each rank is then a fork of it instead of a fresh
    interpreter importing torch (about 1.4 s of CPU, and 1.4 s more for dynamo, a rank;
    4 ranks a test on a 2-core machine).  Measured: the 4-rank handshake test 4.4 ->
    2.6 s, AD-PSGD's average test 4.2 -> 2.0 s.  Forking after torch's import is what
    DataLoader workers do on Linux; torch's one idle helper thread is not copied."""
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "torch.distributed", "torch._dynamo",
                                "moniqua_kernels", "moniqua_kernels.train"])
    return ctx


def _start_and_collect(target, args, world: int, deadline_s: float) -> tuple:
    """Start target(rank, *args, queue) in `world` forks; each puts (rank, value) once.
    Returns ({rank: value}, processes) after all reported, all died, or the deadline."""
    ctx = rank_context()
    q = ctx.Queue()
    procs = [ctx.Process(target=target, args=(r, *args, q), daemon=True) for r in range(world)]
    for p in procs:
        p.start()
    out = {}
    deadline = time.monotonic() + deadline_s
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
    return out, procs


def run_ranks(fn, world: int, timeout: float = 60.0) -> list:
    port = free_port()
    out, procs = _start_and_collect(functools.partial(_main, fn), (world, port, timeout), world,
                                    timeout + 90)
    return [out.get(r, f"died with exit code {procs[r].exitcode}") for r in range(world)]


def _cli_rank(rank, world, port, argvs, cwd, q):
    """Rank `rank` of `python -m moniqua_kernels argvs[rank]` in a fork: the rendezvous
    environment torchrun gives, the output of fds 1 and 2 (C++ code's too) captured as
    a subprocess's would be, and the exit code the interpreter would give: main's
    return value, a SystemExit's code, or 1 with the traceback printed."""
    import os
    import sys
    import tempfile
    import traceback
    import torch
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)  # what train_ranks' OMP_NUM_THREADS=1 gives an interpreter
    if cwd is not None:
        os.chdir(cwd)
    log = tempfile.TemporaryFile()
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    from moniqua_kernels import cli
    try:
        code = cli.main(argvs[rank])
    except SystemExit as exc:
        code = exc.code
    except BaseException:  # noqa: BLE001 - as the interpreter reports it
        traceback.print_exc()
        code = 1
    if code is not None and not isinstance(code, int):  # sys.exit("message")
        print(code, file=sys.stderr)
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    log.seek(0)
    q.put((rank, (code or 0, log.read().decode(errors="replace"))))


def train_forks(world: int, args, cwd=None, timeout: float = 300.0, rank_args=None) -> list:
    """`moniqua-kernels train --no-progress ARGS` as `world` forked ranks (module
    docstring); rank_args[r], if given, is appended to rank r's arguments."""
    port = free_port()
    argvs = [["train", "--no-progress", *map(str, args),
              *map(str, (rank_args or {}).get(r, ()))] for r in range(world)]
    out, procs = _start_and_collect(_cli_rank, (world, port, argvs, cwd), world, timeout)
    return [out.get(r, (procs[r].exitcode, f"died with exit code {procs[r].exitcode}"))
            for r in range(world)]


def train_ranks(world: int, args, cwd=None, timeout: float = 300.0) -> list:
    """`python -m moniqua_kernels train --no-progress ARGS` as `world` ranks."""
    return launch_ranks(world, ["-m", "moniqua_kernels", "train", "--no-progress", *args],
                        cwd, timeout)


def launch_ranks(world: int, argv, cwd=None, timeout: float = 300.0) -> list:
    """`python ARGV` as `world` ranks, launched the way torchrun launches them (env://
    rendezvous), without torchrun's agent (one torch import less per run).  Returns
    [(exit code, stdout+stderr)] in rank order."""
    import subprocess
    import sys
    port = str(free_port())
    procs = []
    for rank in range(world):
        env = child_env(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                        MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
        procs.append(subprocess.Popen([sys.executable, *map(str, argv)],
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True, env=env, cwd=cwd))
    out = []
    deadline = time.monotonic() + timeout
    for p in procs:
        try:
            text = p.communicate(timeout=max(deadline - time.monotonic(), 1))[0]
            out.append((p.returncode, text))
        except subprocess.TimeoutExpired:
            p.kill()
            out.append((None, p.communicate()[0]))
    for p in procs:
        if p.poll() is None:
            p.kill()
    return out


def torchrun(argv, cwd, timeout: float = 300.0):
    """`python -m torch.distributed.run --nproc_per_node 2 ARGV` in cwd: the real launcher,
    its agent included, for the tests that need it.  Returns the CompletedProcess (output
    as text).  TMPDIR is cwd: the agent makes a log folder (torchelastic_*) in the
    temporary directory and never removes it; with /tmp there, each run of the suite
    left 4 behind."""
    import subprocess
    import sys
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(free_port()), *map(str, argv)]
    return subprocess.run(cmd, capture_output=True, text=True, env=child_env(TMPDIR=str(cwd)),
                          timeout=timeout, cwd=cwd)


def child_env(**extra) -> dict:
    """The environment of a process a test starts: this checkout first on PYTHONPATH, one
    OpenMP thread, and `extra`."""
    import os
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", ""),
            "OMP_NUM_THREADS": "1", **extra}
