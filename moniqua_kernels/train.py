"""``moniqua-kernels train``: decentralized training on torch.distributed.

Run one process per worker under torchrun, e.g. four workers on this machine:

    torchrun --nproc_per_node 4 -m moniqua_kernels train --algorithm moniqua --bits 1 \\
        --theta 0.05 --dataset digits --steps 500 --checkpoint-dir ckpt

and across machines with torchrun's --nnodes/--rdzv-endpoint.  gloo serves CPU tensors,
NCCL CUDA tensors (--device cuda, one GPU per process from LOCAL_RANK).  Every rank
trains on its own shard; after each local SGD step the chosen algorithm communicates
with the neighbours of --topology.  Rank 0 shows its progress, writes the per-step
log (--log-file, JSON lines) and prints a summary (--json writes it).  With --checkpoint-dir
every rank saves its model, optimizer, algorithm state and sampler every
--checkpoint-every steps; --resume continues from the newest checkpoint bit for bit,
except --algorithm ddp with a compressor that scales or draws per DDP bucket (qsgd,
randomk, powersgd): a fresh DDP's first step has its initial buckets, not the
rebuilt ones of the run it continues, so that step compresses differently (measured:
losses differ from the first resumed step on; sign and the gossip algorithms match).
"""
from __future__ import annotations

import argparse
import datetime
import gc
import json
import math
import os
import sys
import tempfile
import time
from typing import Optional, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F

from .gossip import topology
from .progress import Progress

CHECKPOINT_VERSION = 2  # 2: loads with weights_only=True; records world size and rank
ALGORITHMS = ("dpsgd", "allreduce", "moniqua", "choco", "squarm", "dcd", "ecd", "deepsqueeze",
              "adpsgd", "ddp")
COMPRESSED = ("choco", "squarm", "dcd", "ecd", "deepsqueeze", "ddp")  # take --compressor
# Whose paper updates x_{t+1} = mix(x_t) - lr g(x_t): the exchange of x_t can run while
# g(x_t) is computed (train --overlap).
OVERLAP = ("dpsgd", "moniqua")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="moniqua-kernels train",
        description="Decentralized training under torchrun (one process per worker).",
        epilog="example: torchrun --nproc_per_node 4 -m moniqua_kernels train "
               "--algorithm moniqua --bits 1 --theta 0.05 --dataset digits --steps 500")
    a = p.add_argument_group("algorithm")
    a.add_argument("--algorithm", default="moniqua", choices=ALGORITHMS,
                   help="ddp: data-parallel (DistributedDataParallel) with --compressor "
                        "on the gradient all-reduce")
    a.add_argument("--variant", choices=("dpsgd", "d2", "adpsgd"), help="Moniqua's base algorithm")
    a.add_argument("--topology", default="ring",
                   help=topology.SPEC_HELP)
    a.add_argument("--bits", type=int, help="Moniqua bits (1, 2, 4, 8)")
    a.add_argument("--rounding", choices=("stochastic", "nearest", "dither"))
    a.add_argument("--theta", type=float, help="Moniqua's bound on |x_i - x_j| (constant)")
    a.add_argument("--theta-lr-scale", type=float,
                   help="Moniqua's theta as this multiple of the current learning rate")
    a.add_argument("--compressor", help="CHOCO/SQuARM compressor spec, e.g. sign, qsgd:4, "
                                        "topk:0.1+qsgd:4; for ddp also none (default), fp16 "
                                        "or powersgd:RANK[:START_STEP] (torch's hooks)")
    a.add_argument("--error-feedback", action=argparse.BooleanOptionalAction, default=None,
                   help="ddp with this package's compressors: keep the compression residual "
                        "(default on)")
    a.add_argument("--gamma", type=float,
                   help="consensus step size (Moniqua: default from bits and the topology)")
    a.add_argument("--theta-check-every", type=int, default=None, metavar="K",
                   help="Moniqua's theta monitor: check the models' spread at steps 0-7, "
                        "8, 16, ... then every K steps (default 256); 0 turns it off")
    a.add_argument("--per-layer", action="store_true",
                   help="compress each parameter tensor on its own (one scale per layer, "
                        "as CHOCO-SGD's experiments do)")
    a.add_argument("--overlap", action="store_true",
                   help="dpsgd and moniqua: exchange x_t while its gradient is computed "
                        "(begin() before the forward pass, end() after backward, then the "
                        "optimizer step): x_{t+1} = mix(x_t) - lr g(x_t), the update as "
                        "their papers write it; the network time hides behind the compute. "
                        "Default: the optimizer step first, then the exchange of its result")
    a.add_argument("--local-steps", type=int, dest="H", help="SQuARM's local steps H")
    a.add_argument("--threshold", type=float, help="SQuARM's event-trigger threshold c_0")
    t = p.add_argument_group("training")
    t.add_argument("--dataset", default="digits", choices=("digits", "synthetic", "cifar10"))
    t.add_argument("--data-dir", help="folder with cifar-10-batches-py (for cifar10)")
    t.add_argument("--model", default="mlp", choices=("mlp", "logistic", "resnet20"))
    t.add_argument("--hidden", type=int, default=64, help="the MLP's hidden width")
    t.add_argument("--steps", type=int, default=300)
    t.add_argument("--batch-size", type=int, default=32)
    t.add_argument("--lr", type=float, default=0.1)
    t.add_argument("--momentum", type=float, default=None,
                   help="SGD momentum (default 0; squarm: 0.9 with Nesterov, the paper's)")
    t.add_argument("--nesterov", action="store_true")
    t.add_argument("--weight-decay", type=float, default=0.0)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    t.add_argument("--timeout", type=float, default=120.0,
                   help="seconds before a silent peer is reported as failed")
    from .recipe import add_arguments
    add_arguments(p)  # learning-rate schedule, augmentation, shards, BatchNorm (recipe.py)
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
    """Every refusal happens here, before any work (exit 2, one line)."""
    for name in ("steps", "batch_size", "log_every", "checkpoint_every", "hidden"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    positive = ("lr", "timeout", "theta", "theta_lr_scale")
    for name in positive:
        value = getattr(args, name)
        if value is not None and not (math.isfinite(value) and value > 0):
            p.error(f"--{name.replace('_', '-')} must be a finite number > 0, got {value}")
    for name, low, high in (("gamma", 0.0, 1.0), ("momentum", 0.0, 1.0)):
        value = getattr(args, name)
        if value is not None and not (math.isfinite(value) and low <= value <= high
                                      and (name != "gamma" or value > 0)):
            p.error(f"--{name} must lie in {'(' if name == 'gamma' else '['}{low:g}, "
                    f"{high:g}], got {value}")
    for name in ("weight_decay", "threshold"):
        value = getattr(args, name)
        if value is not None and not (math.isfinite(value) and value >= 0):
            p.error(f"--{name.replace('_', '-')} must be a finite number >= 0, got {value}")
    if args.theta_check_every is not None and args.theta_check_every < 0:
        p.error(f"--theta-check-every must be >= 0 (0: off), got {args.theta_check_every}")
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
    moniqua_only = ("variant", "bits", "rounding", "theta", "theta_lr_scale",
                    "theta_check_every")
    for name in moniqua_only:
        if getattr(args, name) is not None and args.algorithm != "moniqua":
            p.error(f"--{name.replace('_', '-')} applies to --algorithm moniqua only")
    if args.gamma is not None and args.algorithm in ("dpsgd", "allreduce", "dcd", "ecd",
                                                     "adpsgd", "ddp"):
        p.error(f"--gamma: {args.algorithm} has no consensus step size")
    if args.compressor is not None and args.algorithm not in COMPRESSED:
        p.error(f"--compressor applies to --algorithm {', '.join(COMPRESSED)}")
    if args.error_feedback is not None and args.algorithm != "ddp":
        p.error("--error-feedback applies to --algorithm ddp")
    for name in ("H", "threshold"):
        if getattr(args, name) is not None and args.algorithm != "squarm":
            p.error("--local-steps and --threshold apply to --algorithm squarm")
    if args.algorithm == "squarm" and (args.momentum == 0 or args.momentum is not None
                                       and not args.nesterov):
        p.error("--algorithm squarm runs Nesterov momentum (0.9 by default); with "
                f"--momentum {args.momentum} and{'' if args.nesterov else ' no'} --nesterov "
                "it would be SPARQ-SGD: drop --momentum or add --nesterov")
    if args.overlap and (args.algorithm not in OVERLAP or args.variant not in (None, "dpsgd")):
        p.error(f"--overlap applies to --algorithm {' and '.join(OVERLAP)} (Moniqua's dpsgd "
                "variant): the others gossip the model after the local step (CHOCO, SQuARM, "
                "DCD, ECD, DeepSqueeze, D2), average it (allreduce), or exchange on their own "
                "(adpsgd, ddp)")
    if args.nesterov and args.algorithm != "squarm" and not args.momentum:
        p.error("--nesterov needs --momentum > 0")
    if args.per_layer and args.algorithm not in COMPRESSED:
        # a scale per layer means nothing to the others (it was accepted and changed
        # nothing: identical runs with and without it)
        p.error(f"--per-layer applies to --algorithm {', '.join(COMPRESSED)} (the "
                "compressors' scales)")
    if args.timing and args.algorithm == "ddp":
        p.error("--timing times the gossip algorithms' steps; with --algorithm ddp the "
                "exchange runs inside backward, where it cannot be taken apart")
    _check_specs(p, args)
    for flag, path in (("--log-file", args.log_file), ("--json", args.json)):
        if path is not None:
            problem = unwritable(path)
            if problem:
                p.error(f"{flag} {path!r}: {problem}")
    if args.checkpoint_dir and not args.resume:
        problem = unwritable(os.path.join(args.checkpoint_dir, "rank0.pt"))
        if problem:
            p.error(f"--checkpoint-dir {args.checkpoint_dir!r}: {problem}")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda but no CUDA device is visible; use --device cpu")
    from .recipe import check_arguments
    check_arguments(p, args)
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        p.error("train runs one process per worker under torchrun, e.g. "
                "`torchrun --nproc_per_node 4 -m moniqua_kernels train ...` "
                "(RANK and WORLD_SIZE are not set)")


def _check_specs(p: argparse.ArgumentParser, args) -> None:
    """The values the gossip objects would refuse only after the ranks had started:
    bits, rounding, compressor and topology (the topology for WORLD_SIZE workers)."""
    from .compressors import from_spec
    from .gossip.ddp import TORCH_HOOKS, is_torch_hook
    from .ops import _validate
    try:
        if args.bits is not None:
            _validate.check_bits(args.bits, _validate.MONIQUA_BITS, "--bits")
        if args.rounding is not None:
            _validate.check_rounding(args.rounding, 1 if args.bits is None else args.bits)
        if args.compressor is not None:
            torch_hook = args.algorithm == "ddp" and is_torch_hook(args.compressor)
            if torch_hook and args.error_feedback is not None:
                raise ValueError(f"--error-feedback applies to this package's compressors, "
                                 f"not to torch's {args.compressor!r} hook")
            if not torch_hook:
                from_spec(args.compressor)
    except (TypeError, ValueError) as exc:
        p.error(str(exc) + ("" if args.algorithm != "ddp" else
                            f" (ddp also takes torch's hooks: {', '.join(TORCH_HOOKS)})"))
    world = os.environ.get("WORLD_SIZE", "")
    if world.isdigit() and args.algorithm not in ("allreduce", "ddp"):
        try:
            topology.make(args.topology, int(world))
        except ValueError as exc:   # TopologyError
            p.error(f"--topology {args.topology!r}: {exc}")


def unwritable(path: str) -> Optional[str]:
    """Why a file cannot be written at path (its folders may not exist yet), or None.
    Tried, not inferred from permission bits (root passes those even on /proc): a
    temporary file, or folder where folders are missing, is made and removed."""
    if os.path.isdir(path):
        return "is a folder"
    folder = os.path.dirname(os.path.abspath(path))
    existing = folder
    while not os.path.exists(existing) and os.path.dirname(existing) != existing:
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        return f"{existing!r} is not a folder"
    try:
        if existing == folder:
            fd, tmp = tempfile.mkstemp(dir=folder)
            os.close(fd)
            os.remove(tmp)
        else:
            os.rmdir(tempfile.mkdtemp(dir=existing))
    except OSError as exc:
        return f"cannot write in {existing!r} ({exc.strerror})"
    if os.path.exists(path) and not os.access(path, os.W_OK):
        return "not writable"
    return None


def _dataset(args):
    from . import data
    if args.dataset != "cifar10":
        ds = data.load(args.dataset, args.seed)
        if args.model == "resnet20":  # digits as 1-channel 8x8 pictures
            ds.x_train, ds.x_test = ds.x_train.view(-1, 1, 8, 8), ds.x_test.view(-1, 1, 8, 8)
        return ds
    from . import cifar10
    load = cifar10.load_torchvision if args.cifar_loader == "torchvision" else cifar10.load
    x_train, y_train = load(args.data_dir, train=True)
    x_test, y_test = load(args.data_dir, train=False)
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


def _optimizer(args, model):
    # SQuARM-SGD's local steps are Nesterov momentum (0.9 in the paper); the others run
    # plain SGD unless asked.
    momentum, nesterov = args.momentum, args.nesterov
    if args.algorithm == "squarm":
        momentum, nesterov = (0.9 if momentum is None else momentum), True
    return torch.optim.SGD(model.parameters(), lr=args.lr, momentum=momentum or 0.0,
                           nesterov=nesterov, weight_decay=args.weight_decay)


def _algorithm(args, model, optimizer):
    from . import gossip
    if args.algorithm == "ddp":
        return gossip.DataParallel(
            model, args.compressor or "none", error_feedback=args.error_feedback,
            seed=args.seed, per_tensor=args.per_layer or None, device_ids=[next(model.parameters()).device] if args.device == "cuda" else None)
    kwargs = {"topology": args.topology, "seed": args.seed, "timeout": args.timeout,
              "per_layer": args.per_layer}
    for name in ("variant", "bits", "rounding", "compressor", "gamma", "H", "threshold"):
        value = getattr(args, name)
        if value is not None:
            kwargs[name] = value
    if args.theta is not None:
        kwargs["theta"] = args.theta
    elif args.theta_lr_scale is not None:
        kwargs["theta"] = gossip.LRProportional(args.theta_lr_scale, optimizer)
    if args.theta_check_every is not None:
        kwargs["monitor"] = args.theta_check_every or None
    if args.algorithm == "squarm":
        kwargs.setdefault("lr", optimizer)
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


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed (missing, corrupt, foreign, or from another
    configuration, world size or step than the other ranks')."""


# What the training run is, as far as resuming it must not change it: every flag but the
# output ones and --steps (a resumed run may go further).
_NOT_CONFIG = ("resume", "steps", "log_file", "log_every", "json", "checkpoint_dir",
               "checkpoint_every", "no_progress", "data_dir", "timeout", "eval_every",
               "timing")


def _config(args) -> dict:
    return {k: v for k, v in sorted(vars(args).items()) if k not in _NOT_CONFIG}


def _save(args, rank, world, step, model, optimizer, algorithm, sampler, history) -> None:
    os.makedirs(args.checkpoint_dir, exist_ok=True)
    # Plain tensors, numbers, strings, lists and dicts only, so that resuming can load
    # with weights_only=True (no code from the file runs).
    state = {"version": CHECKPOINT_VERSION, "format": "moniqua_kernels.train",
             "world_size": world, "rank": rank, "step": step,
             "model": model.state_dict(), "optimizer": optimizer.state_dict(),
             "sampler": sampler.get_state(), "algorithm": algorithm.state_dict(),
             "history": history, "args": _config(args)}
    path = _ckpt_path(args.checkpoint_dir, rank)
    torch.save(state, path + ".tmp")
    os.replace(path + ".tmp", path)  # never leave a half-written checkpoint


_KEYS = {"version": int, "format": str, "world_size": int, "rank": int, "step": int,
         "model": dict, "optimizer": dict, "sampler": torch.Tensor, "algorithm": dict,
         "history": list, "args": dict}


def read_checkpoint(path: str, args, rank: int, world: int) -> dict:
    """The checkpoint at path, checked against this run; raises CheckpointError saying
    what is wrong (nothing in the file is executed: weights_only=True)."""
    if not os.path.isfile(path):
        raise CheckpointError(f"no checkpoint {path}; run without --resume first, or point "
                              "--checkpoint-dir at an earlier run")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, empty, not a torch file, or unsafe content
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path} is not a readable checkpoint ({type(exc).__name__}: "
                              f"{first[:200]})") from None
    if not isinstance(state, dict) or state.get("format") != "moniqua_kernels.train":
        raise CheckpointError(f"{path} is not a moniqua_kernels train checkpoint")
    for key, kind in _KEYS.items():
        if not isinstance(state.get(key), kind):
            raise CheckpointError(f"{path}: entry {key!r} is missing or not a {kind.__name__}")
    if state["version"] != CHECKPOINT_VERSION:
        raise CheckpointError(f"{path} has checkpoint version {state['version']}, this "
                              f"package reads {CHECKPOINT_VERSION}")
    if state["world_size"] != world or state["rank"] != rank:
        raise CheckpointError(f"{path} was written by rank {state['rank']} of "
                              f"{state['world_size']}; this is rank {rank} of {world}")
    # a flag newer than the checkpoint counts as given at its default
    defaults = vars(build_parser().parse_args([]))
    changed = [k for k, v in _config(args).items() if state["args"].get(k, defaults.get(k)) != v]
    if changed:
        raise CheckpointError("the checkpoint was made with other settings: " + ", ".join(
            f"--{k.replace('_', '-')} {state['args'].get(k)} (now {getattr(args, k)})"
            for k in changed))
    if not 0 <= state["step"] <= args.steps:
        raise CheckpointError(f"{path} is at step {state['step']}, beyond --steps {args.steps}")
    return state


def _resume(args, rank, world, model, optimizer, algorithm, sampler):
    """Every rank reads its checkpoint; then the ranks agree (one all-gather) that every
    read succeeded and all resume the same step, before anything is loaded.  A failure
    on any rank raises CheckpointError on every rank, naming the ranks and why."""
    from .gossip import DistTransport, handshake
    state, problem = None, "ok"
    path = _ckpt_path(args.checkpoint_dir, rank)
    try:
        state = read_checkpoint(path, args, rank, world)
    except CheckpointError as exc:
        # a missing file is worded without the rank, so that ranks that all lack one
        # agree and get one plain message instead of a "disagreement" listing each rank
        problem = (f"no checkpoint in {args.checkpoint_dir}; run without --resume first, "
                   "or point --checkpoint-dir at an earlier run"
                   if not os.path.isfile(path) else str(exc))
    try:
        # (a transport of its own: --algorithm ddp has no gossip transport)
        handshake.agree(DistTransport(timeout=args.timeout),
                        {"checkpoint": problem, "step": state["step"] if state else None},
                        what="the checkpoints to resume from",
                        device=next(model.parameters()).device,
                        advice="Fix or remove the checkpoints named, or run without --resume.")
    except handshake.ConfigMismatch as exc:
        raise CheckpointError(str(exc)) from None
    if state is None:  # every rank failed the same way
        raise CheckpointError(f"every rank: {problem}" if world > 1 else problem)
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        sampler.set_state(state["sampler"])
    except (RuntimeError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"rank {rank}: the checkpoint does not fit this model or "
                              f"optimizer: {str(exc).splitlines()[0][:200]}") from None
    algorithm.load_state_dict(state["algorithm"])  # and the ranks agree on it again
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
        from .gossip import DistTransport, handshake
        # Ranks started with other flags would fail later and less clearly (a rank with
        # fewer --steps leaves the others waiting): compare them first.
        handshake.agree(DistTransport(timeout=args.timeout),
                        {**_config(args), "steps": args.steps, "world_size": world,
                         # collectives on chosen steps: every rank must make the same ones
                         "eval_every": args.eval_every, "timing": args.timing},
                        what="the train flags", device=device)
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
    ds = _dataset(args)
    from . import recipe
    from .gossip import DistTransport
    from .gossip.buffers import WithBufferGossip, average_buffers_, floating_buffers
    shard = recipe.worker_shards(ds.y_train, world, args.seed, args.dirichlet_alpha)[rank]
    x_train, y_train = ds.x_train[shard].to(device), ds.y_train[shard].to(device)
    x_test, y_test = ds.x_test.to(device), ds.y_test.to(device)
    model = _model(args, ds).to(device)
    optimizer = _optimizer(args, model)
    algorithm = _algorithm(args, model, optimizer)
    bn_sync = args.bn_sync or ("none" if args.algorithm == "ddp" or not floating_buffers(model)
                               else "eval" if args.algorithm == "allreduce" else "neighbours")
    if bn_sync == "neighbours":
        algorithm = WithBufferGossip(algorithm, model)
    schedule = recipe.LRSchedule(args.lr, args.steps, args.warmup_steps, args.warmup_start,
                                 args.lr_schedule, args.lr_milestones, args.lr_decay)
    forward = getattr(algorithm, "module", model)  # ddp: the DDP wrapper communicates
    sampler = torch.Generator().manual_seed(10_000 * (args.seed + 1) + rank)
    start, history = 0, []
    if args.resume:
        start, history = _resume(args, rank, world, model, optimizer, algorithm, sampler)
    progress = Progress(args.steps, rank == 0 and not args.no_progress, initial=start,
                        label=f"{args.algorithm} x{world}")
    log = None
    if rank == 0 and args.log_file:
        os.makedirs(os.path.dirname(os.path.abspath(args.log_file)), exist_ok=True)
        log = open(args.log_file, "a" if args.resume else "w")  # a fresh run starts it
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

    # Asynchronous AD-PSGD: no rank waits for another's steps, so the logged numbers are
    # rank 0's own, and the communication thread stops (close) before the evaluation.
    asynchronous = getattr(algorithm, "engine", None) is not None
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
            if args.augment:
                xb = recipe.augment_cifar(xb, sampler)
            schedule.apply(optimizer, step)
            optimizer.zero_grad(set_to_none=True)
            if args.overlap:
                t_gossip = time.perf_counter()
                algorithm.begin()      # x_t goes out while its gradient is computed
                gossip_s = time.perf_counter() - t_gossip
            out = forward(xb)
            loss = F.cross_entropy(out, yb)
            loss.backward()
            if args.overlap:
                t_gossip = time.perf_counter()
                algorithm.end()        # mix(x_t); the optimizer then subtracts lr g(x_t)
                gossip_s += time.perf_counter() - t_gossip
            optimizer.step()
            if timer is not None:
                # the gossip's own parts (encode, wire, decode_mix) are timed inside it
                timer.add("compute", time.perf_counter() - t_step
                          - (gossip_s if args.overlap else 0.0))
            if not args.overlap:
                algorithm.step()
            evaluating = args.eval_every and (step + 1) % args.eval_every == 0
            if (step + 1) % args.log_every == 0 or step + 1 == args.steps or evaluating:
                stats = torch.tensor([loss.item(), (out.argmax(1) == yb).float().mean().item(),
                                      float(algorithm.last_bytes_sent)], dtype=torch.float64)
                if not asynchronous:  # asynchronous ranks never wait for each other
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
            progress.update(loss.detach())
            if args.checkpoint_dir and ((step + 1) % args.checkpoint_every == 0
                                        or step + 1 == args.steps):
                _save(args, rank, world, step + 1, model, optimizer, algorithm, sampler,
                      history)
    finally:
        progress.close()
        if log is not None:
            log.close()
    wall = time.perf_counter() - t0 - paused
    if hasattr(algorithm, "close"):
        algorithm.close()
    timing = None
    if timer is not None:  # mean over the ranks
        names = sorted(timer.seconds)
        sums = torch.tensor([timer.seconds[k] for k in names], dtype=torch.float64)
        dist.all_reduce(sums)
        timing = {k: v / world for k, v in zip(names, sums.tolist())}
    if bn_sync == "eval":
        average_buffers_(model, DistTransport(timeout=args.timeout))
    workers_acc, _ = _test_mean(model, x_test, y_test, world)
    # The averaged model: what consensus converges to.
    # parameters and BatchNorm statistics alike
    averaged = [t.detach().clone() for t in (*model.parameters(), *floating_buffers(model))]
    for t in averaged:
        dist.all_reduce(t)
        t /= world
    summary = None
    if rank == 0:
        state = (*model.parameters(), *floating_buffers(model))
        original = [t.detach().clone() for t in state]
        with torch.no_grad():
            for p, t in zip(state, averaged):
                p.copy_(t)
            avg_acc, avg_loss = _evaluate(model, x_test, y_test)
            for p, t in zip(state, original):
                p.copy_(t)
        n_params = sum(p.numel() for p in model.parameters())
        summary = {"algorithm": args.algorithm, "workers": world, "topology": args.topology,
                   "dataset": args.dataset, "model": args.model, "steps": args.steps,
                   "resumed_from": start, "n_params": n_params,
                   "test_accuracy_averaged_model": avg_acc, "test_loss_averaged_model": avg_loss,
                   "test_accuracy_workers_mean": workers_acc,
                   "bytes_sent_rank0": algorithm.bytes_sent,
                   # bytes_sent resumes from the checkpoint: it covers every step
                   "bits_per_param_per_step": 8 * algorithm.bytes_sent / n_params / args.steps,
                   "wall_time_s": wall, "eval_time_s": paused, "timing_s": timing}
        print(f"\n{args.algorithm} on {world} workers ({args.topology}), {args.dataset}/"
              f"{args.model}, {args.steps} steps: test accuracy {100 * avg_acc:.2f}% "
              f"(averaged model), {100 * workers_acc:.2f}% (mean over workers); "
              f"rank 0 sent {algorithm.bytes_sent / 1e6:.3f} MB; {wall:.1f} s")
        if args.json:
            os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
            with open(args.json, "w") as f:
                json.dump({"summary": summary, "history": history}, f, indent=2)
    return summary or {}


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Exit 0 on success; 2 for a configuration the ranks disagree on, a checkpoint that
    cannot be resumed or another refused setting; 1 when a peer failed or the theta
    monitor gave up (one line each, the same on every rank that saw it)."""
    from .gossip import PeerError
    from .gossip.theta import ThetaViolationError
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_args(parser, args)
    try:
        run(args)
    except (FileNotFoundError, ValueError) as exc:  # CheckpointError, ConfigMismatch too
        print(f"moniqua-kernels train: error: {exc}", file=sys.stderr)
        return 2
    except (PeerError, ThetaViolationError) as exc:
        print(f"moniqua-kernels train: error: {exc}", file=sys.stderr)
        return 1
    return 0
