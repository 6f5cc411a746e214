"""The training recipe of the papers' CIFAR-10 runs, shared by ``train`` and the simulator.

    sched = LRSchedule(base_lr=0.6, steps=14650, warmup_steps=244, warmup_start=1/6,
                       kind="step", milestones=(0.5, 0.75), decay=0.1)
    sched.apply(optimizer, step)          # before each optimizer step
    x = augment_cifar(x, torch.Generator().manual_seed(0))   # random crop + flip
    shards = worker_shards(y_train, n_workers=8, seed=0, alpha=0.1)  # Dirichlet non-IID

Learning rate: linear warm-up from ``warmup_start x base_lr`` to ``base_lr`` over
``warmup_steps`` (Goyal et al. 2017), then constant, step decay by ``decay`` at each
milestone (a fraction of ``steps`` when < 1, else a step number), or cosine to zero
over the steps after the warm-up (Loshchilov & Hutter 2017).  The rate is a pure
function of the step, so a resumed run needs no scheduler state.

Augmentation: each image of the batch gets its own random crop of the image padded by 4
pixels and its own horizontal flip with probability 1/2, as the ResNet paper's CIFAR
recipe (He et al. 2016).  Done with tensor indexing on the batch's device: torchvision's
v2 transforms draw one crop per call, so a batch passed to them whole would share one
crop.  The random numbers come from a CPU generator (the run's sampler), so a resumed
run draws the same crops without saving another generator.

Non-IID shards: for every class, worker proportions are drawn from Dirichlet(alpha) and
the class's samples are split by them (Hsu et al. 2019, the setting of D2's non-IID
experiments); small alpha gives workers few classes each, large alpha approaches IID.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch

__all__ = ["LRSchedule", "augment_cifar", "dirichlet_shards", "worker_shards",
           "SCHEDULES"]

SCHEDULES = ("constant", "step", "cosine")


@dataclass(frozen=True)
class LRSchedule:
    base_lr: float
    steps: int
    warmup_steps: int = 0
    warmup_start: float = 0.1
    kind: str = "constant"
    milestones: Sequence[float] = ()
    decay: float = 0.1

    def __post_init__(self):
        if not (isinstance(self.base_lr, (int, float)) and math.isfinite(self.base_lr)
                and self.base_lr > 0):
            raise ValueError(f"base_lr must be a finite number > 0, got {self.base_lr!r}")
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"steps must be an int >= 1, got {self.steps!r}")
        if not 0 <= self.warmup_steps < self.steps:
            raise ValueError(f"warmup_steps must be in [0, steps), got {self.warmup_steps} "
                             f"with {self.steps} steps")
        if not 0 < self.warmup_start <= 1:
            raise ValueError(f"warmup_start must be in (0, 1], got {self.warmup_start}")
        if self.kind not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.kind!r}; use one of {', '.join(SCHEDULES)}")
        if not 0 < self.decay < 1:
            raise ValueError(f"decay must be in (0, 1), got {self.decay}")
        if self.kind != "step" and self.milestones:
            raise ValueError("milestones apply to the 'step' schedule only")
        steps = self.milestone_steps()
        if self.kind == "step" and not steps:
            raise ValueError("the 'step' schedule needs milestones (fractions of the run "
                             "below 1, or step numbers)")
        if list(steps) != sorted(set(steps)):
            raise ValueError(f"milestones must increase, got {list(self.milestones)}")

    def milestone_steps(self) -> list[int]:
        out = []
        for m in self.milestones:
            if not (isinstance(m, (int, float)) and math.isfinite(m) and m > 0):
                raise ValueError(f"a milestone must be a positive number, got {m!r}")
            s = int(round(m * self.steps)) if m < 1 else int(m)
            if m >= 1 and m != int(m):
                raise ValueError(f"a milestone of 1 or more is a step number, got {m}")
            if s >= self.steps:
                raise ValueError(f"milestone {m} is at step {s}, past the run's {self.steps}")
            out.append(s)
        return out

    def factor(self, step: int) -> float:
        """lr(step) / base_lr, for 0-based step."""
        w = self.warmup_steps
        if step < w:
            return self.warmup_start + (1 - self.warmup_start) * step / w
        if self.kind == "step":
            return self.decay ** sum(step >= m for m in self.milestone_steps())
        if self.kind == "cosine":
            t = (step - w) / max(self.steps - w, 1)
            return 0.5 * (1 + math.cos(math.pi * t))
        return 1.0

    def lr(self, step: int) -> float:
        return self.base_lr * self.factor(step)

    def apply(self, optimizer: torch.optim.Optimizer, step: int) -> float:
        """Set every param group's lr for this step; returns it."""
        lr = self.lr(step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        return lr


def augment_cifar(x: torch.Tensor, generator: torch.Generator, pad: int = 4,
                  fill: Optional[Sequence[float]] = None) -> torch.Tensor:
    """Random crop (padding ``pad``) and horizontal flip, per image, of a batch
    [B, C, H, W] on its own device.  ``fill``: per-channel padding value (default: the
    normalised value of black for CIFAR-10's normalisation, as padding the raw image
    with zeros gives).  ``generator``: a CPU generator; 3 numbers per image."""
    if x.dim() != 4:
        raise ValueError(f"expected a batch of images [B, C, H, W], got shape {tuple(x.shape)}")
    if pad < 0:
        raise ValueError(f"pad must be >= 0, got {pad}")
    b, c, h, w = x.shape
    if fill is None:
        from .cifar10 import MEAN, STD
        if c != len(MEAN):
            raise ValueError(f"the default fill is CIFAR-10's ({len(MEAN)} channels); pass "
                             f"fill= for {c} channels")
        fill = [-m / s for m, s in zip(MEAN, STD)]
    if len(fill) != c:
        raise ValueError(f"fill has {len(fill)} values for {c} channels")
    draws = torch.randint(0, 2 * pad + 1, (2, b), generator=generator)
    flips = torch.randint(0, 2, (b,), generator=generator).bool()
    dev = x.device
    padded = torch.empty(b, c, h + 2 * pad, w + 2 * pad, dtype=x.dtype, device=dev)
    padded.copy_(torch.tensor(fill, dtype=x.dtype, device=dev).view(1, c, 1, 1).expand_as(padded))
    padded[:, :, pad:pad + h, pad:pad + w] = x
    rows = draws[0].to(dev)[:, None] + torch.arange(h, device=dev)          # [B, H]
    cols = draws[1].to(dev)[:, None] + torch.arange(w, device=dev)          # [B, W]
    cols = torch.where(flips.to(dev)[:, None], cols.flip(1), cols)  # flip = reversed columns
    bi = torch.arange(b, device=dev)[:, None, None, None]
    ci = torch.arange(c, device=dev)[None, :, None, None]
    return padded[bi, ci, rows[:, None, :, None], cols[:, None, None, :]]


def dirichlet_shards(labels: torch.Tensor, n_workers: int, alpha: float, seed: int = 0,
                     min_size: int = 1, max_draws: int = 100) -> list[torch.Tensor]:
    """Indices of each worker's samples: per class, Dirichlet(alpha) proportions.

    Draws again (up to ``max_draws`` times) until every worker has ``min_size`` samples;
    each shard's indices are sorted."""
    if not (isinstance(alpha, (int, float)) and math.isfinite(alpha) and alpha > 0):
        raise ValueError(f"the Dirichlet concentration must be a finite number > 0, got {alpha!r}")
    if isinstance(n_workers, bool) or not isinstance(n_workers, int) or n_workers < 1:
        raise ValueError(f"n_workers must be an int >= 1, got {n_workers!r}")
    y = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels)
    if y.ndim != 1:
        raise ValueError(f"labels must be one-dimensional, got shape {y.shape}")
    if min_size * n_workers > len(y):
        raise ValueError(f"{len(y)} samples cannot give {n_workers} workers {min_size} each")
    rng = np.random.default_rng([40_000, seed & 0xFFFFFFFF])
    classes = np.unique(y)
    for _ in range(max_draws):
        parts: list[list[np.ndarray]] = [[] for _ in range(n_workers)]
        for cls in classes:
            idx = np.flatnonzero(y == cls)
            rng.shuffle(idx)
            p = rng.dirichlet(np.full(n_workers, float(alpha)))
            cuts = np.floor(np.cumsum(p)[:-1] * len(idx)).astype(np.int64)
            for worker, piece in enumerate(np.split(idx, cuts)):
                parts[worker].append(piece)
        shards = [np.sort(np.concatenate(p)) for p in parts]
        if min(len(s) for s in shards) >= min_size:
            return [torch.from_numpy(s.astype(np.int64)) for s in shards]
    raise ValueError(f"no Dirichlet({alpha}) split gave every one of {n_workers} workers "
                     f"{min_size} samples in {max_draws} draws; use a larger concentration")


def worker_shards(labels: torch.Tensor, n_workers: int, seed: int = 0,
                  alpha: Optional[float] = None, min_size: int = 1) -> list[torch.Tensor]:
    """IID shards (``data.shard``) when alpha is None, else Dirichlet(alpha) shards."""
    if alpha is None:
        from .data import shard
        return shard(len(labels), n_workers, seed)
    return dirichlet_shards(labels, n_workers, alpha, seed, min_size)


# ------------------------------------------------------------------ train's flags

BN_SYNC = ("neighbours", "eval", "none")


def add_arguments(parser) -> None:
    """The recipe's flags for ``train`` (one group)."""
    r = parser.add_argument_group("recipe")
    r.add_argument("--lr-schedule", choices=SCHEDULES, default="constant",
                   help="after the warm-up: constant, step (decay at --lr-milestones) or "
                        "cosine to zero")
    r.add_argument("--lr-milestones", type=_milestones, default=(),
                   help="comma-separated: fractions of --steps below 1 or step numbers, "
                        "e.g. 0.5,0.75")
    r.add_argument("--lr-decay", type=float, default=0.1, help="factor at each milestone")
    r.add_argument("--warmup-steps", type=int, default=0,
                   help="linear learning-rate warm-up over this many steps")
    r.add_argument("--warmup-start", type=float, default=0.1,
                   help="warm-up starts at this fraction of --lr")
    r.add_argument("--augment", action="store_true",
                   help="cifar10: random crop (padding 4) and horizontal flip per image")
    r.add_argument("--dirichlet-alpha", type=float, default=None,
                   help="non-IID shards: Dirichlet concentration per class (small = "
                        "few classes per worker); default IID")
    r.add_argument("--bn-sync", choices=BN_SYNC, default=None,
                   help="BatchNorm running statistics: averaged with the neighbours every "
                        "step (default for models with BatchNorm), all-reduced once "
                        "before evaluation, or left per worker")
    r.add_argument("--cifar-loader", choices=("builtin", "torchvision"), default="builtin",
                   help="read cifar10 with this package's reader or torchvision's CIFAR10 "
                        "(pip install 'moniqua_kernels[vision]')")


def _milestones(text: str) -> tuple:
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        import argparse
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") \
            from None


def schedule_from_args(parser, args) -> LRSchedule:
    """The LRSchedule the flags describe; a bad combination exits 2 with the reason."""
    try:
        return LRSchedule(args.lr, args.steps, args.warmup_steps, args.warmup_start,
                          args.lr_schedule, args.lr_milestones, args.lr_decay)
    except ValueError as exc:
        parser.error(f"learning-rate schedule: {exc}")


def check_arguments(parser, args) -> None:
    schedule_from_args(parser, args)
    if args.augment and args.dataset != "cifar10":
        parser.error("--augment applies to --dataset cifar10 (images)")
    if args.cifar_loader != "builtin" and args.dataset != "cifar10":
        parser.error("--cifar-loader applies to --dataset cifar10")
    if args.dirichlet_alpha is not None and not (math.isfinite(args.dirichlet_alpha)
                                                 and args.dirichlet_alpha > 0):
        parser.error(f"--dirichlet-alpha must be a finite number > 0, got "
                     f"{args.dirichlet_alpha}")
    if args.bn_sync == "neighbours" and args.algorithm in ("ddp", "allreduce"):
        parser.error(f"--bn-sync neighbours applies to gossip algorithms; --algorithm "
                     f"{args.algorithm} keeps one model (ddp broadcasts rank 0's buffers)")
    if args.cifar_loader == "torchvision":
        try:
            import torchvision  # noqa: F401
        except ImportError as exc:
            parser.error("--cifar-loader torchvision needs torchvision: pip install "
                         f"'moniqua_kernels[vision]' (import failed: {exc})")
