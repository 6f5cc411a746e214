"""``moniqua-kernels train``: decentralized training on torch.distributed.

Run one process per worker under torchrun, e.g. four workers on this machine:

    torchrun --nproc_per_node 4 -m moniqua_kernels train --algorithm moniqua --bits 1 \\
        --theta 0.05 --dataset digits --steps 500 --checkpoint-dir ckpt

and across machines with torchrun's --nnodes/--rdzv-endpoint.  gloo serves CPU tensors,
NCCL CUDA tensors (--device cuda, one GPU per process from LOCAL_RANK).  Every rank
trains on its own shard; after each local SGD step the chosen algorithm communicates
with the neighbours of --topology.  Rank 0 shows a progress bar, writes the per-step
log (--log-file, JSON lines) and prints a summary (--json writes it).  With --checkpoint-dir
every rank saves its model, optimizer, algorithm state and sampler every
--checkpoint-every steps; --resume continues from the newest checkpoint bit for bit.
"""
from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import sys
import time
from typing import Optional, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F

CHECKPOINT_VERSION = 1


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="moniqua-kernels train",
        description="Decentralized training under torchrun (one process per worker).",
        epilog="example: torchrun --nproc_per_node 4 -m moniqua_kernels train "
               "--algorithm moniqua --bits 1 --theta 0.05 --dataset digits --steps 500")
    a = p.add_argument_group("algorithm")
    a.add_argument("--algorithm", default="moniqua",
                   choices=("dpsgd", "allreduce", "moniqua", "choco", "squarm"))
    a.add_argument("--variant", choices=("dpsgd", "d2", "adpsgd"), help="Moniqua's base algorithm")
    a.add_argument("--topology", default="ring",
                   help="ring, torus, exponential, exp-onepeer, complete or star")
    a.add_argument("--bits", type=int, help="Moniqua bits (1, 2, 4, 8)")
    a.add_argument("--rounding", choices=("stochastic", "nearest", "dither"))
    a.add_argument("--theta", type=float, help="Moniqua's bound on |x_i - x_j| (constant)")
    a.add_argument("--theta-lr-scale", type=float,
                   help="Moniqua's theta as this multiple of the current learning rate")
    a.add_argument("--compressor", help="CHOCO/SQuARM compressor spec, e.g. sign, qsgd:4, "
                                        "topk:0.1+qsgd:4")
    a.add_argument("--gamma", type=float, help="consensus step size")
    a.add_argument("--local-steps", type=int, dest="H", help="SQuARM's local steps H")
    a.add_argument("--threshold", type=float, help="SQuARM's event-trigger threshold")
    t = p.add_argument_group("training")
    t.add_argument("--dataset", default="digits", choices=("digits", "synthetic", "cifar10"))
    t.add_argument("--data-dir", help="folder with cifar-10-batches-py (for cifar10)")
    t.add_argument("--model", default="mlp", choices=("mlp", "logistic", "resnet20"))
    t.add_argument("--hidden", type=int, default=64, help="the MLP's hidden width")
    t.add_argument("--steps", type=int, default=300)
    t.add_argument("--batch-size", type=int, default=32)
    t.add_argument("--lr", type=float, default=0.1)
    t.add_argument("--momentum", type=float, default=0.0)
    t.add_argument("--nesterov", action="store_true")
    t.add_argument("--weight-decay", type=float, default=0.0)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    t.add_argument("--timeout", type=float, default=120.0,
                   help="seconds before a silent peer is reported as failed")
    o = p.add_argument_group("output")
    o.add_argument("--log-file", help="per-step JSON-lines log (rank 0)")
    o.add_argument("--log-every", type=int, default=10)
    o.add_argument("--eval-every", type=int, default=0,
                   help="every K steps (and before the first) log the workers' mean test "
                        "accuracy; the clock stops while they evaluate (0: only at the end)")
    o.add_argument("--timing", action="store_true",
                   help="log where the step time goes: compute, encode, wire, decode_mix")
    o.add_argument("--json", help="final summary as JSON (rank 0)")
    o.add_argument("--checkpoint-dir")
    o.add_argument("--checkpoint-every", type=int, default=100)
    o.add_argument("--resume", action="store_true", help="continue from --checkpoint-dir")
    o.add_argument("--no-progress", action="store_true")
    return p


def _check_args(p: argparse.ArgumentParser, args) -> None:
    for name in ("steps", "batch_size", "log_every", "checkpoint_every", "hidden"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if not args.lr > 0:
        p.error(f"--lr must be > 0, got {args.lr}")
    if args.dataset == "cifar10" and not args.data_dir:
        p.error("--dataset cifar10 needs --data-dir pointing at the unpacked "
                "cifar-10-batches-py folder (nothing is downloaded)")
    if args.data_dir and not os.path.isdir(args.data_dir):
        p.error(f"--data-dir {args.data_dir!r} is not a folder")
    if args.eval_every < 0:
        p.error(f"--eval-every must be >= 0, got {args.eval_every}")
    if args.model == "resnet20" and args.dataset not in ("cifar10", "digits"):
        p.error("--model resnet20 needs image data: use --dataset cifar10 or digits")
    if args.resume and not args.checkpoint_dir:
        p.error("--resume needs --checkpoint-dir")
    if args.theta is not None and args.theta_lr_scale is not None:
        p.error("give --theta or --theta-lr-scale, not both")
    moniqua_only = ("variant", "bits", "rounding", "theta", "theta_lr_scale")
    for name in moniqua_only:
        if getattr(args, name) is not None and args.algorithm != "moniqua":
            p.error(f"--{name.replace('_', '-')} applies to --algorithm moniqua only")
    if args.compressor is not None and args.algorithm not in ("choco", "squarm"):
        p.error("--compressor applies to --algorithm choco or squarm")
    for name in ("H", "threshold"):
        if getattr(args, name) is not None and args.algorithm != "squarm":
            p.error("--local-steps and --threshold apply to --algorithm squarm")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda but no CUDA device is visible; use --device cpu")
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        p.error("train runs one process per worker under torchrun, e.g. "
                "`torchrun --nproc_per_node 4 -m moniqua_kernels train ...` "
                "(RANK and WORLD_SIZE are not set)")


def _dataset(args):
    from . import data
    if args.dataset != "cifar10":
        ds = data.load(args.dataset, args.seed)
        if args.model == "resnet20":  # digits as 1-channel 8x8 pictures
            ds.x_train, ds.x_test = ds.x_train.view(-1, 1, 8, 8), ds.x_test.view(-1, 1, 8, 8)
        return ds
    from . import cifar10
    x_train, y_train = cifar10.load(args.data_dir, train=True)
    x_test, y_test = cifar10.load(args.data_dir, train=False)
    if args.model != "resnet20":
        x_train, x_test = x_train.flatten(1), x_test.flatten(1)
    return data.Dataset("cifar10", x_train, y_train, x_test, y_test, 10)


def _model(args, ds):
    from . import data
    if args.model == "resnet20":
        from .models import ResNet20
        torch.manual_seed(30_000 + args.seed)  # the same initial model on every rank
        return ResNet20(ds.n_classes, ds.x_train.shape[1])
    return data.make_model(args.model, ds.x_train[0].numel(), ds.n_classes, args.seed,
                           args.hidden)


def _algorithm(args, model, optimizer):
    from . import gossip
    kwargs = {"topology": args.topology, "seed": args.seed, "timeout": args.timeout}
    for name in ("variant", "bits", "rounding", "compressor", "gamma", "H", "threshold"):
        value = getattr(args, name)
        if value is not None:
            kwargs[name] = value
    if args.theta is not None:
        kwargs["theta"] = args.theta
    elif args.theta_lr_scale is not None:
        kwargs["theta"] = gossip.LRProportional(args.theta_lr_scale, optimizer)
    if args.algorithm == "squarm":
        kwargs.setdefault("lr", args.lr)
    if args.algorithm == "allreduce":
        kwargs.pop("topology")
    return gossip.ALGORITHMS[args.algorithm](model, **kwargs)


def _evaluate(model, x, y, batch: int = 1000) -> tuple[float, float]:
    model.eval()
    correct, loss = 0, 0.0
    with torch.no_grad():
        for i in range(0, x.shape[0], batch):
            out = model(x[i:i + batch])
            loss += float(F.cross_entropy(out, y[i:i + batch], reduction="sum"))
            correct += int((out.argmax(1) == y[i:i + batch]).sum())
    model.train()
    n = max(x.shape[0], 1)
    return correct / n, loss / n


def _test_mean(model, x, y, world: int) -> tuple[float, float]:
    """Test accuracy and loss of every rank's own model, averaged over the ranks."""
    t = torch.tensor(_evaluate(model, x, y), dtype=torch.float64)
    dist.all_reduce(t)
    return t[0].item() / world, t[1].item() / world


def _ckpt_path(folder: str, rank: int) -> str:
    return os.path.join(folder, f"rank{rank}.pt")


def _save(args, rank, step, model, optimizer, algorithm, sampler, history) -> None:
    os.makedirs(args.checkpoint_dir, exist_ok=True)
    state = {"version": CHECKPOINT_VERSION, "step": step, "model": model.state_dict(),
             "optimizer": optimizer.state_dict(), "sampler": sampler.get_state(),
             "algorithm": algorithm.state_dict(), "history": history,
             "args": {k: v for k, v in vars(args).items() if k != "resume"}}
    path = _ckpt_path(args.checkpoint_dir, rank)
    torch.save(state, path + ".tmp")
    os.replace(path + ".tmp", path)  # never leave a half-written checkpoint


def _load(args, rank, model, optimizer, algorithm, sampler):
    path = _ckpt_path(args.checkpoint_dir, rank)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--resume: no checkpoint {path}; run without --resume "
                                "first, or point --checkpoint-dir at an earlier run")
    state = torch.load(path, weights_only=False)
    for key in ("algorithm", "topology", "dataset", "model", "seed"):
        if state["args"].get(key) != getattr(args, key):
            raise ValueError(f"--resume: the checkpoint was made with --{key} "
                             f"{state['args'].get(key)}, this run has {getattr(args, key)}")
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    algorithm.load_state_dict(state["algorithm"])
    sampler.set_state(state["sampler"])
    return state["step"], state["history"]


def run(args) -> dict:
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    device = torch.device("cpu")
    if args.device == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=args.timeout))
    try:
        return _run(args, rank, world, device)
    finally:
        dist.destroy_process_group()
        # Collect now what _run left in reference cycles: gloo's threads must stop
        # while the interpreter is alive.  At exit a gloo thread that needs the GIL is
        # ended by the finalizing interpreter and the process aborts ("terminate
        # called without an active exception": 5 of 25 two-rank netbench runs; 0 of
        # 30 with this collect).
        gc.collect()


def _run(args, rank, world, device) -> dict:
    from . import data
    ds = _dataset(args)
    shard = data.shard(ds.x_train.shape[0], world, args.seed)[rank]
    x_train, y_train = ds.x_train[shard].to(device), ds.y_train[shard].to(device)
    x_test, y_test = ds.x_test.to(device), ds.y_test.to(device)
    model = _model(args, ds).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum,
                                nesterov=args.nesterov, weight_decay=args.weight_decay)
    algorithm = _algorithm(args, model, optimizer)
    sampler = torch.Generator().manual_seed(10_000 * (args.seed + 1) + rank)
    start, history = 0, []
    if args.resume:
        start, history = _load(args, rank, model, optimizer, algorithm, sampler)
    bar = None
    if rank == 0 and not args.no_progress:
        try:
            from tqdm import tqdm
            bar = tqdm(total=args.steps, initial=start, unit="step", file=sys.stderr,
                       desc=f"{args.algorithm} x{world}")
        except ImportError:
            bar = None
    log = open(args.log_file, "a") if (rank == 0 and args.log_file) else None
    timer = algorithm.enable_timing() if args.timing else None
    paused = 0.0  # seconds spent on --eval-every evaluations, kept off the clock

    def write(row):
        history.append(row)
        if log is not None:
            log.write(json.dumps(row) + "\n")
            log.flush()

    def evaluate(row):
        nonlocal paused
        t_eval = time.perf_counter()
        row["test_accuracy_workers_mean"], row["test_loss_workers_mean"] = _test_mean(
            model, x_test, y_test, world)
        paused += time.perf_counter() - t_eval

    t0 = time.perf_counter()
    try:
        if args.eval_every and start == 0:
            row = {"step": 0, "wall_s": 0.0}
            evaluate(row)
            write(row)
        for step in range(start, args.steps):
            t_step = time.perf_counter()
            idx = torch.randint(0, x_train.shape[0], (args.batch_size,), generator=sampler)
            xb, yb = x_train[idx.to(device)], y_train[idx.to(device)]
            optimizer.zero_grad(set_to_none=True)
            out = model(xb)
            loss = F.cross_entropy(out, yb)
            loss.backward()
            optimizer.step()
            if timer is not None:
                timer.add("compute", time.perf_counter() - t_step)
            algorithm.step()
            evaluating = args.eval_every and (step + 1) % args.eval_every == 0
            if (step + 1) % args.log_every == 0 or step + 1 == args.steps or evaluating:
                stats = torch.tensor([loss.item(), (out.argmax(1) == yb).float().mean().item(),
                                      float(algorithm.last_bytes_sent)], dtype=torch.float64)
                dist.all_reduce(stats)  # a scalar reduction, only on logging steps
                stats /= world
                row = {"step": step + 1, "loss": stats[0].item(),
                       "batch_accuracy": stats[1].item(),
                       "bytes_per_worker_step": stats[2].item(),
                       "bytes_sent_rank0": algorithm.bytes_sent,
                       "lr": optimizer.param_groups[0]["lr"]}
                if timer is not None or args.eval_every:  # (rows stay reproducible without)
                    row["wall_s"] = time.perf_counter() - t0 - paused
                if timer is not None:
                    row["timing_s"] = dict(timer.seconds)
                if evaluating:
                    evaluate(row)
                write(row)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
            if args.checkpoint_dir and ((step + 1) % args.checkpoint_every == 0
                                        or step + 1 == args.steps):
                _save(args, rank, step + 1, model, optimizer, algorithm, sampler, history)
    finally:
        if bar is not None:
            bar.close()
        if log is not None:
            log.close()
    wall = time.perf_counter() - t0 - paused
    timing = None
    if timer is not None:  # mean over the ranks
        names = sorted(timer.seconds)
        sums = torch.tensor([timer.seconds[k] for k in names], dtype=torch.float64)
        dist.all_reduce(sums)
        timing = {k: v / world for k, v in zip(names, sums.tolist())}
    workers_acc, _ = _test_mean(model, x_test, y_test, world)
    # The averaged model: what consensus converges to.
    averaged = [p.detach().clone() for p in model.parameters()]
    for t in averaged:
        dist.all_reduce(t)
        t /= world
    summary = None
    if rank == 0:
        original = [p.detach().clone() for p in model.parameters()]
        with torch.no_grad():
            for p, t in zip(model.parameters(), averaged):
                p.copy_(t)
            avg_acc, avg_loss = _evaluate(model, x_test, y_test)
            for p, t in zip(model.parameters(), original):
                p.copy_(t)
        n_params = sum(p.numel() for p in model.parameters())
        steps_run = max(args.steps - start, 1)
        summary = {"algorithm": args.algorithm, "workers": world, "topology": args.topology,
                   "dataset": args.dataset, "model": args.model, "steps": args.steps,
                   "resumed_from": start, "n_params": n_params,
                   "test_accuracy_averaged_model": avg_acc, "test_loss_averaged_model": avg_loss,
                   "test_accuracy_workers_mean": workers_acc,
                   "bytes_sent_rank0": algorithm.bytes_sent,
                   "bits_per_param_per_step": 8 * algorithm.bytes_sent / n_params / steps_run
                   if start == 0 else None,
                   "wall_time_s": wall, "eval_time_s": paused, "timing_s": timing}
        print(f"\n{args.algorithm} on {world} workers ({args.topology}), {args.dataset}/"
              f"{args.model}, {args.steps} steps: test accuracy {100 * avg_acc:.2f}% "
              f"(averaged model), {100 * workers_acc:.2f}% (mean over workers); "
              f"rank 0 sent {algorithm.bytes_sent / 1e6:.3f} MB; {wall:.1f} s")
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"summary": summary, "history": history}, f, indent=2)
    return summary or {}


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_args(parser, args)
    try:
        run(args)
    except (FileNotFoundError, ValueError) as exc:
        print(f"moniqua-kernels train: error: {exc}", file=sys.stderr)
        return 2
    return 0
