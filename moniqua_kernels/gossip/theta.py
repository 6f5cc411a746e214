"""Moniqua's theta: the bound on |x_i - x_j| its modulo decode relies on.

If a neighbour's model differs from the receiver's by more than theta in some
coordinate, that coordinate decodes to the wrong value *silently* (it wraps by a
multiple of B).  So theta is (a) a schedule every worker evaluates identically and (b)
checked now and then by ``ThetaMonitor``.

Schedules: a float (constant), any callable step -> theta, or ``LRProportional``: the
paper's bound on the model spread is proportional to the learning rate (Lu & De Sa
2020, Lemma 1: |x_i - x_j| = O(alpha G / (1 - rho))), so theta_t = scale * lr_t.
"""
from __future__ import annotations

import math
import warnings
from typing import Callable, Optional, Union

import torch

__all__ = ["Constant", "LRProportional", "as_schedule", "ThetaMonitor", "ThetaViolation"]


class ThetaViolation(UserWarning):
    """The measured max |x_i - x_j| exceeded theta: decoded values may be wrong."""


class Constant:
    def __init__(self, theta: float):
        theta = float(theta)
        if not math.isfinite(theta) or theta <= 0:
            raise ValueError(f"theta must be finite and > 0, got {theta!r}")
        self.theta = theta

    def __call__(self, step: int) -> float:
        return self.theta

    def __repr__(self):
        return f"Constant({self.theta:g})"


class LRProportional:
    """theta_t = max(floor, scale * lr_t); lr from an optimizer's first param group
    (read at call time, so LR schedulers are followed) or a callable step -> lr."""

    def __init__(self, scale: float, lr: Union["torch.optim.Optimizer", Callable[[int], float]],
                 floor: float = 0.0):
        self.scale, self.floor, self._lr = float(scale), float(floor), lr

    def lr(self, step: int) -> float:
        if hasattr(self._lr, "param_groups"):
            return float(self._lr.param_groups[0]["lr"])
        return float(self._lr(step))

    def __call__(self, step: int) -> float:
        theta = max(self.floor, self.scale * self.lr(step))
        if not theta > 0:
            raise ValueError(f"theta schedule gave {theta!r} at step {step}; set floor > 0")
        return theta


def as_schedule(theta) -> Callable[[int], float]:
    if isinstance(theta, (int, float)):
        return Constant(theta)
    if callable(theta):
        return theta
    raise TypeError(f"theta must be a float or a callable step -> float, got {type(theta)}")


class ThetaMonitor:
    """Every ``every`` steps, measure max |x_i - x_j| between neighbours.

    Each worker sends ``sample`` coordinates per bucket (all of them for smaller
    buckets; otherwise positions drawn from a generator seeded by the step, the same on
    every worker) in full precision to its neighbours, takes the max difference, and
    one scalar max all-reduce makes every worker see the same number.  A sample can miss
    a violation confined to unsampled coordinates; ``sample=None`` checks them all.
    The bytes are counted in the algorithm's bytes_sent.
    """

    def __init__(self, every: int = 100, sample: Optional[int] = 4096, warn: bool = True,
                 seed: int = 0):
        if every < 1:
            raise ValueError("every must be >= 1")
        self.every, self.sample, self.warn, self.seed = int(every), sample, bool(warn), seed
        self.history: list[tuple[int, float, float]] = []  # (step, max diff, theta)
        self.violations = 0

    def due(self, step: int) -> bool:
        return step % self.every == 0

    def indices(self, numel: int, step: int, bucket: int, device) -> Optional[torch.Tensor]:
        if self.sample is None or numel <= self.sample:
            return None
        g = torch.Generator().manual_seed((self.seed * 1000003 + step * 131 + bucket) & (2**63 - 1))
        return torch.randint(numel, (self.sample,), generator=g).to(device)

    def record(self, step: int, max_diff: float, theta: float, rank: int) -> bool:
        self.history.append((step, max_diff, theta))
        if max_diff > theta:
            self.violations += 1
            if self.warn and rank == 0:
                warnings.warn(
                    f"Moniqua theta bound violated at step {step}: max |x_i - x_j| = "
                    f"{max_diff:.4g} > theta = {theta:.4g}; decoded models are corrupted. "
                    "Raise theta (or its scale), lower the learning rate, or use more bits.",
                    ThetaViolation, stacklevel=4)
            return False
        return True
