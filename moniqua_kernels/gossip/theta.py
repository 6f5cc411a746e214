"""Moniqua's theta: the bound on |x_i - x_j| its modulo decode relies on, and gamma.

If a neighbour's model differs from the receiver's by more than theta in some
coordinate, that coordinate decodes to the wrong value *silently* (it wraps by a
multiple of B).  So theta is (a) a schedule every worker evaluates identically and (b)
checked by ``ThetaMonitor`` (on by default).

Schedules: a float (constant), any callable step -> theta, ``LRProportional`` (the
paper's bound on the model spread is proportional to the learning rate: Lu & De Sa
2020, Lemma 1, |x_i - x_j| = O(alpha G / (1 - rho)), so theta_t = scale * lr_t), or
``Adaptive`` (the default): theta = margin x the measured max |x_i - x_j|.

Checks: at steps 0-7, 8, 16, 32, ... (the spread grows fastest from the common start)
and then every ``every`` steps, all of a worker's values, 8-bit Moniqua codes at a 32 x
theta modulus (the first check: at moduli from a bound, ``bound_look_spread``), go over
each neighbour pair once (|x_i - x_j| is the same from both ends;
Moniqua._measure_spread); the max difference over every coordinate and edge is
max-all-reduced, so every worker sees the same number (and Adaptive gives the same theta
everywhere).

Gamma and margin (``default_gamma``, ``default_margin``).  Moniqua mixes against its own
decoded payload, so a step adds gamma (W_t - I) e to the models, e the decode errors
(uniform in +-eps theta for dither, eps = delta B / theta).  To first order in gamma that
noise alone leaves a spread of variance gamma (eps theta)^2 N / 2 per worker, N =
``Topology.decode_noise()`` = tr(L^+ E[(I - W_t)^T (I - W_t)]) / n, L = I - mean W: 2/3
for every ring with weights 1/3, (n - 1) / n for random pairwise matchings (AD-PSGD's
pattern: 0.75 and 0.875 on rings of 4 and 8); a numpy simulation of the mix gives 0.337,
0.336, 0.445, 0.379 per gamma for ring(8), ring(4) and their matchings against N / 2 =
0.333, 0.333, 0.438, 0.375.  With an adaptive theta = margin x spread that is a feedback
loop of gain ~ eps margin sqrt(gamma N): too high and theta feeds on its own noise, the
spread growing without bound.  The defaults: gamma = min(1, GAMMA_C / (N (eps
margin)^2)), half the gamma where the loop was measured to turn unstable (see GAMMA_C);
the margin as large as a loop gain of MARGIN_GAIN at gamma = 1 allows, between 2 and 4
(a larger margin absorbs the step-to-step bursts of the spread that nearly exact mixing
shows; see the measurements at MARGIN_GAIN), with S = ``Topology.noise_factor()`` =
(1/n) sum over the non-consensus modes of the mean W of 1 / (1 - l) (0.94 for a ring of 4,
1.97 for a ring of 8), the calibration it was measured with.
"""
from __future__ import annotations

import math
import warnings
from typing import TYPE_CHECKING, Callable, Optional, Union

if TYPE_CHECKING:
    import torch

from .. import ops

__all__ = ["Constant", "LRProportional", "Adaptive", "as_schedule", "ThetaMonitor",
           "ThetaViolation", "ThetaViolationError", "default_gamma", "default_margin",
           "check_steps", "bound_look_spread"]


class ThetaViolation(UserWarning):
    """The measured max |x_i - x_j| exceeded theta: decoded values may be wrong."""


class ThetaViolationError(RuntimeError):
    """Theta was violated at several checks in a row: the models are being corrupted."""


# Checks after the start, every CHECK_EVERY steps.  Measured with
# scripts/theta_check_cost.py (4 gloo ranks on this 2-core machine, digits MLP, 1 bit):
# a check costs ~1.3 steps' time; every 128 steps the checks took 1.8% (4810 parameters)
# and 1.5% (38410) of 2000 steps, over the 1% budget; every 256 see docs/theta-checks.md.
CHECK_EVERY = 256


def check_steps(step: int, every: int) -> bool:
    """Every step below 8, then 8, 16, 32, ... below ``every``, then the multiples of
    ``every``: the models spread fastest from their common start (measured: 4 workers
    on random pairwise matchings, 1 bit, the spread at step 7 was 2.5x the spread at
    step 4, above a margin-2 theta set at 4)."""
    if step < min(8, every):
        return True
    if step < every:
        return step & (step - 1) == 0
    return step % every == 0


# Looks at 8-bit codes, nearest rounding: a coordinate decodes to within modulus / 512
# (CHECK_RESOLUTION), and cannot wrap while |x_i - x_j| + modulus / 512 < modulus / 2.
CHECK_RESOLUTION = 1 / 512
# bound_look_spread: a modulus 2 x bound x FINE_HEADROOM leaves modulus / 130 between
# the bound and the wrap, above the codes' modulus / 512.
FINE_HEADROOM = 1 + 2 ** -6
# ... and no modulus below FINE_FLOOR x max|x|: x / modulus then stays below 2^8, where
# float32 keeps 2^-15 of the fraction, well inside the codes' 2^-9 (at 2^-20, the floor
# of Adaptive's theta, x / modulus reaches 2^20 and the fraction keeps 2^-3).
FINE_FLOOR = 2.0 ** -8


def bound_look_spread(bound: float, scale: float,
                      look: Callable[[float], float]) -> tuple[float, float]:
    """(spread, resolution): max |x_i - x_j| over every coordinate and edge, given a
    ``bound`` it cannot exceed (2 max|x| where nothing better is known: |x_i - x_j| <=
    |x_i| + |x_j|) and ``scale`` = max|x|, all the same on every worker.

    ``look(modulus)`` compares 8-bit codes at ``modulus`` and returns the max difference
    read (the same on every worker).  A modulus above twice the bound cannot wrap, so
    each look is exact to its resolution, and the spread read plus that resolution is a
    bound again, tighter: look until the resolution is at most an eighth of the spread
    (a check at CHECK_MODULUS x theta, theta = 2-4 x the spread, resolves 1/8-1/4 of it)
    or the modulus reaches FINE_FLOOR x scale.  Each look shrinks the modulus 28x or
    more, so at most three looks (one or two where the models differ); this replaces
    sending float32 values, 4 bytes per element, with 1 byte per look."""
    if scale == 0:
        return 0.0, 0.0   # every model is all zeros
    floor = FINE_FLOOR * scale
    while True:
        modulus = max(2 * bound * FINE_HEADROOM, floor)
        spread = look(modulus)
        resolution = modulus * CHECK_RESOLUTION
        if spread >= 8 * resolution or modulus == floor:
            return spread, resolution
        bound = spread + resolution


def _check_every(every) -> int:
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ValueError(f"every must be an int >= 1, got {every!r}")
    return every


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

    def __repr__(self):
        return f"LRProportional({self.scale:g}, floor={self.floor:g})"


class Adaptive:
    """theta = margin x the largest spread max |x_i - x_j| seen at the recent checks.

    The measurement is of the values about to be encoded at the checked step, over every
    coordinate, so that step's theta holds by construction; between checks theta stays,
    and the margin covers the growth until the next check.  The spread fluctuates from
    step to step with the minibatches, so theta follows a running max of the checks'
    spreads that decays by ``decay`` per check (it still comes down when the spread
    does, e.g. after a learning-rate drop).  Checks at 0-7, 8, 16, ... then every
    ``every`` steps (``check_steps``).  With ``lr`` (an optimizer or callable step -> lr),
    theta also follows a learning rate that grew since the check (warm-up).
    """

    measures = True

    def __init__(self, margin: float = 2.0, every: int = CHECK_EVERY, decay: float = 0.5,
                 lr=None):
        margin, decay = float(margin), float(decay)
        if not math.isfinite(margin) or margin < 1:
            raise ValueError(f"margin must be a finite number >= 1, got {margin!r}")
        if not 0 <= decay <= 1:
            raise ValueError(f"decay must lie in [0, 1], got {decay!r}")
        self.margin, self.every, self.decay = margin, _check_every(every), decay
        self._lr = lr
        self._spread: Optional[float] = None
        self._theta: Optional[float] = None
        self._lr_at_check: Optional[float] = None
        self._check_step: Optional[int] = None

    def due(self, step: int) -> bool:
        return check_steps(step, self.every)

    def _lr_now(self, step: int) -> Optional[float]:
        if self._lr is None:
            return None
        if hasattr(self._lr, "param_groups"):
            return float(self._lr.param_groups[0]["lr"])
        return float(self._lr(step))

    def update(self, step: int, spread: float, scale: float) -> None:
        """A check measured ``spread`` >= max |x_i - x_j| and ``scale`` = max |x|."""
        held = 0.0 if self._spread is None else self.decay * self._spread
        self._spread = max(spread, held)
        # Identical models (spread 0, e.g. the first step) still need a theta > 0; 2^-20
        # of the largest value keeps x / B within float32's exact integers (2^24).
        self._theta = max(self.margin * self._spread, scale * 2.0 ** -20, 1e-30)
        self._lr_at_check = self._lr_now(step)
        self._check_step = step

    def __call__(self, step: int) -> float:
        if self._theta is None:
            raise RuntimeError("Adaptive theta has no measurement yet: the first step "
                               "must be a check (step 0)")
        theta = self._theta
        lr = self._lr_now(step)
        if lr is not None and self._lr_at_check and lr > self._lr_at_check:
            theta *= lr / self._lr_at_check
        return theta

    def state_dict(self) -> dict:
        return {"spread": self._spread, "theta": self._theta, "lr_at_check": self._lr_at_check,
                "check_step": self._check_step}

    def load_state_dict(self, state: dict) -> None:
        self._spread, self._theta = state["spread"], state["theta"]
        self._lr_at_check, self._check_step = state["lr_at_check"], state["check_step"]

    def __repr__(self):
        return f"Adaptive(margin={self.margin:g}, every={self.every}, decay={self.decay:g})"


def as_schedule(theta) -> Callable[[int], float]:
    if isinstance(theta, bool):
        raise TypeError("theta must be a float, a callable step -> float or None (adaptive)")
    if theta is None:
        return Adaptive()
    if isinstance(theta, (int, float)):
        return Constant(theta)
    if callable(theta):
        return theta
    raise TypeError(f"theta must be a float, a callable step -> float or None (adaptive), "
                    f"got {type(theta).__name__}")


# GAMMA_C: half the gamma where the adaptive loop turns unstable at 1 bit (eps = 1,
# margin 2), where gamma is smallest.  Measured with the simulator, digits MLP, lr 0.1,
# batch 16, 600 steps, 8 workers, seeds 0 1 2 (consensus distance at the end, accuracy
# of the averaged model; D-PSGD's distance ~0.003, accuracy 97.12%):
#   ring(8):  gamma 0.0127: 1.8 / 1.5 / 2.1, 96.47%;  0.0199 (this default): 2.3 / 1.8 /
#             2.3, 96.66%;  0.022: 2.8 / 2.3 / 3.5, 96.66%;  0.030: 7.2 / 3.8 / 5.2;
#             0.045: 24 / 37 / 23;  0.060: 86 / 121 / 100
#   its random matching:  0.0081: 3.3 / 2.5 / 3.3, 96.01%;  0.0151 (this default): 2.9 /
#             2.3 / 2.9, 96.47%;  0.0163: 2.9 / 2.3 / 2.8, 96.38%;  0.020: 3.4 / 2.7 /
#             3.5, 96.56%;  0.030: 7.4 / 4.7 / 6.6;  0.045: 16 / 17 / 29;  0.060: 66 /
#             112 / 72
#   ring(4), 400 steps, seed 0:  0.0255: 2.0 (1.7 after 1000);  0.0417: 14 (33 after 1000)
# The spread grows from gamma ~0.03 on both 8-worker graphs and on the ring of 4 (a numpy
# model of the loop with heavy-tailed gradients blows up at 0.044-0.048 on all four), so
# the onset hardly depends on N here (2/3 to 0.875); GAMMA_C = 0.053 puts 1-bit gamma at
# 0.020 on rings and 0.015 on the 8-worker matching, about half of it, where accuracy had
# stopped improving.  The rule it replaces, GAMMA_C = 0.1 over S, was fitted on the
# consensus distance of rings (S counts slow mixing as noise: it gave the matching of 8
# 0.0081, -1.11 points against D-PSGD, and a ring of 8 half a ring of 4's gamma).  2 bits
# (eps 1/3): gamma 0.18 on rings; measured on ring(8) 0.110: 0.21 (0.05 after 1500),
# 0.220: 0.44 (0.29), on ring(4) 0.23: 0.60, 0.375: 5.2 (9.8, unstable).
GAMMA_C = 0.053
# The adaptive margin: the loop gain eps x margin x sqrt(S) at gamma = 1 held at
# MARGIN_GAIN, clipped to MARGIN_RANGE.  Measured at gamma 1 (4 bits, ring of 8, S = 1.97,
# digits MLP, seed 0; consensus distance after 600 / 1500 steps): gain 0.19 (margin 2)
# 0.011 / 0.003; 0.28 (margin 3) 0.11 / 0.03; 0.31 (3.3) 0.51 / 0.61; 0.37 (4) 14 / 187.
# At least 2: a spread that doubles between two early checks stays inside theta.  At
# most 4: 8 bits, gamma 1, margin 2: the spread exceeded the theta in use at 126 of 600
# steps (bursts of nearly exact mixing, which follow the last few minibatches); with
# margin 4 at none.
MARGIN_GAIN = 0.19
MARGIN_RANGE = (2.0, 4.0)


def relative_error(bits: int, rounding: str) -> float:
    """eps = delta B / theta, the decode error as a fraction of theta."""
    delta = ops.moniqua_delta(bits, rounding)
    return 2.0 * delta / (1.0 - 2.0 * delta)


def default_margin(bits: int, rounding: str, noise_factor: float) -> float:
    """MARGIN_GAIN / (eps sqrt(S)) clipped to MARGIN_RANGE: the largest margin whose
    feedback at gamma = 1 stays at MARGIN_GAIN (module docstring); S from
    Topology.noise_factor()."""
    eps = relative_error(bits, rounding)
    low, high = MARGIN_RANGE
    return float(min(high, max(low, MARGIN_GAIN / (eps * math.sqrt(max(noise_factor, 1e-6))))))


def default_gamma(bits: int, rounding: str, decode_noise: float, margin: float = 2.0,
                  c: float = None) -> float:
    """min(1, c / (N (eps margin)^2)): half the consensus step size at which the decode
    noise drives an adaptive theta up (module docstring); N from Topology.decode_noise()."""
    c = GAMMA_C if c is None else c
    eps = relative_error(bits, rounding)
    return float(min(1.0, c / (max(decode_noise, 1e-6) * (eps * margin) ** 2)))


class ThetaMonitor:
    """Checks that max |x_i - x_j| between neighbours stays below theta.

    At ``check_steps(step, every)`` every coordinate is compared (the module docstring
    says how); one max all-reduce makes every worker see the same number.  The bytes
    (one per element per neighbour pair per check) are counted in bytes_sent.

    A violation warns (ThetaViolation, on rank 0: every rank sees the same measurement)
    with the measured spread and what to change; ``raise_after`` violations at
    consecutive checks raise ThetaViolationError on every rank (none is left waiting).
    """

    def __init__(self, every: int = CHECK_EVERY, warn: bool = True,
                 raise_after: Optional[int] = 3):
        self.every, self.warn = _check_every(every), bool(warn)
        if raise_after is not None and (isinstance(raise_after, bool) or int(raise_after) < 1):
            raise ValueError(f"raise_after must be None or an int >= 1, got {raise_after!r}")
        self.raise_after = raise_after
        self.history: list[tuple[int, float, float]] = []  # (step, max diff, theta)
        self.violations = 0
        self._in_a_row = 0

    def due(self, step: int) -> bool:
        return check_steps(step, self.every)

    def record(self, step: int, max_diff: float, theta: float, rank: int,
               speak: Optional[bool] = None) -> bool:
        """Record a check; warn (rank 0, or where ``speak``) and raise as documented."""
        self.history.append((step, max_diff, theta))
        if max_diff <= theta:
            self._in_a_row = 0
            return True
        self.violations += 1
        self._in_a_row += 1
        what = (f"Moniqua theta bound violated at step {step}: max |x_i - x_j| "
                f"= {max_diff:.4g} > theta = {theta:.4g}, so coordinates beyond theta decoded "
                "to wrong values. Raise theta (or its scale), use the adaptive default "
                "(theta=None), lower the learning rate or gamma, or use more bits.")
        if self.raise_after is not None and self._in_a_row >= self.raise_after:
            raise ThetaViolationError(f"{what} ({self._in_a_row} checks in a row)")
        if self.warn and (rank == 0 if speak is None else speak):
            warnings.warn(what, ThetaViolation, stacklevel=4)
        return False

    def state_dict(self) -> dict:
        return {"violations": self.violations, "in_a_row": self._in_a_row,
                "history": [list(h) for h in self.history]}

    def load_state_dict(self, state: dict) -> None:
        self.violations, self._in_a_row = state["violations"], state["in_a_row"]
        self.history = [tuple(h) for h in state["history"]]
