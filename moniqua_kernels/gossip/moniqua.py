"""Moniqua (Lu & De Sa, ICML 2020): gossip with modulo-quantized models.

Worker i sends q_i = Q((x_i / B) mod 1) at b bits per element; a receiver decodes it
against its *own* model (|x_i - x_j| <= theta makes the wrap unambiguous) and the mix
x_i <- x_i + gamma sum_j W_ij (dec(q_j; x_i) - dec(q_i; x_i)) runs fused in place
(``moniqua_mix_``): no model-sized buffer beyond the payloads.

Variants (``variant=``):
  dpsgd   Moniqua on D-PSGD (Algorithm 1 of the paper).
  d2      Moniqua on D2 (Tang et al. 2018): the quantized gossip acts on
          z_t = y_t + x_t - y_{t-1}, y = the model after the local optimizer step, which
          for plain SGD is D2's 2 x_t - x_{t-1} - lr (g_t - g_{t-1}).  Needs plain SGD and
          W's smallest eigenvalue > -1/3; keeps two model-sized buffers.
  adpsgd  Moniqua on AD-PSGD (Lian et al. 2018): pairwise averaging.  asynchronous=True
          (default; torch.distributed): a background thread averages with a random
          neighbour whenever the worker stepped, active/passive bipartite split, no
          barrier, a slow worker does not slow the others; theta adapts per pair
          (gossip/adpsgd.py).  asynchronous=False: the synchronous emulation for the
          simulator: weights 1/2 over a random matching of the topology's edges, a new
          matching every step from the shared seed, the pairs of a step meeting at the
          same step (no worker runs ahead).
"""
from __future__ import annotations

import math

import torch

from .. import ops
from ..reference.packing import packed_nbytes
from . import theta as theta_mod
from . import topology as topology_mod
from .handshake import describe
from .base import GossipAlgorithm
from .theta import ThetaMonitor, as_schedule

__all__ = ["Moniqua"]

VARIANTS = ("dpsgd", "d2", "adpsgd")
_MONITOR_TAG = 1 << 20
# The theta checks compare 8-bit codes at modulus CHECK_MODULUS x theta: exact for
# spreads up to 16 theta, to within theta / 16 (see Moniqua._measure_spread).
CHECK_MODULUS = 32.0


# Moniqua-D2's limit on the decode error: eps x margin <= D2_NOISE_LIMIT x (1 - rho).
# D2 gossips 2 x_t - x_{t-1} - ..., so last step's decode error enters twice; on a mode of
# W with eigenvalue l the noise follows the AR(2) recursion n' = l (2 n - n_prev) + e,
# whose variance gain ~ 1 / (2 (1 - l)^2) against D-PSGD's ~ 1 / (2 (1 - l)): gamma
# scales the injected noise and the damping alike and cancels, so the noise-driven
# spread is ~ eps theta / (1 - rho) whatever gamma is, and it must stay below theta /
# margin.  Measured (8 workers, ring, 1 - rho = 0.195, digits MLP, seed 0): eps x margin
# = 0.13 (4 bits, margin 2) trained to D-PSGD's 97.21%; 0.27 (4 bits, margin 4) reached
# 91.6%; 0.67 and 2.0 (2 and 1 bit) diverged (60% and 76%, the spread 20x theta).
D2_NOISE_LIMIT = 0.75


def check_d2(bits: int, rounding: str, spectral_gap: float, topology: str) -> None:
    """Refuse Moniqua-D2 where its decode noise cannot settle (see D2_NOISE_LIMIT)."""
    eps = theta_mod.relative_error(bits, rounding)
    if eps * 2.0 <= D2_NOISE_LIMIT * spectral_gap:
        return
    ok = [b for b in (1, 2, 4, 8)  # Moniqua's bit widths, with the default rounding
          if theta_mod.relative_error(b, "dither") * 2.0 <= D2_NOISE_LIMIT * spectral_gap]
    raise ValueError(
        f"Moniqua on D2 cannot train at {bits} bit(s) ({rounding}) on {topology}: D2 gossips "
        f"2 x_t - x_(t-1), which amplifies the decode error (eps = {eps:.3g} theta) by "
        f"1 / (1 - rho) = {1 / max(spectral_gap, 1e-12):.3g} whatever gamma is, so the "
        f"models' spread outgrows theta; it needs eps x 2 <= {D2_NOISE_LIMIT} (1 - rho). "
        + (f"Use bits={ok[0]} or more, " if ok else "No bit width is enough here: use ")
        + "a better connected topology, or variant='dpsgd' (which trains at every bit width).")


class Moniqua(GossipAlgorithm):
    """Moniqua gossip.  With only ``bits`` chosen it trains (DESIGN.md 10a):

      theta     None (default): ``theta.Adaptive()``, margin x the measured max
                |x_i - x_j|; or a float, or a callable step -> float (e.g.
                theta.LRProportional(scale, optimizer)).  B = moniqua_modulus(theta, ...)
      bits      1, 2, 4 or 8 bits per element on the wire
      rounding  'dither' (default; unbiased at 1 bit, shared randomness), 'stochastic'
                (bits >= 2) or 'nearest'
      gamma     consensus step size; None (default): ``theta.default_gamma`` from bits,
                rounding and the decode noise the topology leaves in the models (1.0 is
                the paper's D-PSGD update, which the decode noise of 1-2 bits does not
                survive): 0.020 on a ring at 1 bit, 0.18 at 2 bits, 1 from 4 bits
      variant   'dpsgd' | 'd2' | 'adpsgd'
      monitor   True (default): a ThetaMonitor (checks at steps 0-7, 8, 16, ..., then
                every 256 steps; warns on a violation, raises after 3 in a row); an int
                K (every K steps); a ThetaMonitor; or None/False to switch it off (an
                adaptive theta still measures on its own schedule)
    """

    name = "moniqua"
    _STATE_TENSORS = ("_d",)  # D2's previous update; absent for the other variants

    def __init__(self, model_or_params, topology="ring", process_group=None, *, theta=None,
                 bits: int = 1, rounding: str = "dither", gamma=None,
                 variant: str = "dpsgd", monitor=True, asynchronous: bool = True, **kw):
        if variant not in VARIANTS:
            raise ValueError(f"variant={variant!r}; use one of {', '.join(VARIANTS)}")
        self.variant = variant
        self.asynchronous = variant == "adpsgd" and bool(asynchronous)
        self.engine = None
        self._matching_seed = int(kw.get("seed", 0))
        ops.moniqua_modulus(1.0, bits, rounding)  # validates bits and rounding
        self.bits, self.rounding = bits, rounding
        as_schedule(theta)  # refuses a bad theta before anything is built
        if gamma is not None:
            gamma = float(gamma)
            if not (math.isfinite(gamma) and 0 < gamma <= 1):
                raise ValueError(f"gamma must lie in (0, 1], got {gamma!r}")
        super().__init__(model_or_params, topology, process_group, **kw)
        self.flat.assign_stream_offsets(lambda n: (n + 3) // 4 * 4)
        noise_top = self.topology
        if self.asynchronous and self.world_size > 1 and not self._base.time_varying:
            # The asynchronous exchanges are random pairwise averages on the ring's edges
            # (weight gamma / 2, as in the synchronous emulation), not the static ring's
            # mix: gamma and margin follow the matching's decode noise and noise factor, so
            # both modes of variant='adpsgd' get the same defaults.  (The asynchronous pattern, where a
            # passive may average with two actives in one step, has N = 0.91 on a ring of
            # 8 and 0.81 on a ring of 4 against the matching's 0.875 and 0.75:
            # Topology.decode_noise.)
            noise_top = topology_mod.random_matching(self._base, self._matching_seed)
        noise = noise_top.noise_factor()
        if variant == "d2":
            check_d2(bits, rounding, self.topology.spectral_gap(), self.topology.name)
        if theta is None:
            margin = 2.0 if variant == "d2" else theta_mod.default_margin(bits, rounding, noise)
            theta = theta_mod.Adaptive(margin=margin)
        self.theta_schedule = as_schedule(theta)
        self._adaptive = bool(getattr(self.theta_schedule, "measures", False))
        if gamma is None:
            margin = getattr(self.theta_schedule, "margin", 2.0)
            gamma = theta_mod.default_gamma(bits, rounding, noise_top.decode_noise(), margin)
            if variant == "d2":
                # 3/4 of the largest gamma D2's eigenvalue condition allows (below)
                gamma = min(gamma, 0.75 * (4.0 / 3.0) / (1.0 - self.topology.min_eigenvalue()))
        self.gamma = gamma
        if monitor is True:
            monitor = ThetaMonitor()
        elif isinstance(monitor, int) and not isinstance(monitor, bool):
            monitor = ThetaMonitor(every=monitor)
        elif monitor is False:
            monitor = None
        if monitor is not None and not isinstance(monitor, ThetaMonitor):
            raise TypeError(f"monitor must be True, False, None, an int or a ThetaMonitor, "
                            f"got {type(monitor).__name__}")
        self.monitor = monitor
        self.theta = None  # the theta of the last step
        self._last_check = None
        self._last_spread = None
        if variant == "d2":
            if self.topology.time_varying:
                raise topology_mod.TopologyError("Moniqua D2 needs a static topology")
            # D2 needs the mixing matrix it applies, I + gamma (W - I), to have its
            # smallest eigenvalue above -1/3 (Tang et al. 2018), else it diverges.
            lam = 1.0 - self.gamma * (1.0 - self.topology.min_eigenvalue())
            if lam <= -1.0 / 3 + 1e-9:
                raise topology_mod.TopologyError(
                    f"D2 needs the smallest eigenvalue of I + gamma (W - I) above -1/3; with "
                    f"{self.topology.name} and gamma={self.gamma:g} it is {lam:.4f}: lower "
                    "gamma (e.g. 0.5) or add self weight to W")
            self._d = [torch.zeros_like(b.tensor) for b in self.buckets]

    def _make_topology(self, topology):
        base = topology_mod.make(topology, self.world_size)
        self._base = base
        if self.variant == "adpsgd" and not self.asynchronous:
            return topology_mod.random_matching(base, self._matching_seed)
        return base

    def _after_init(self) -> None:
        super()._after_init()
        if self.asynchronous:
            from .adpsgd import AsyncPairwise, _MoniquaCodec
            # theta=None: pairwise adaptive (each active measures its pairs); otherwise
            # the schedule, evaluated at the active's step
            schedule = None if self._adaptive else self.theta_schedule
            self.engine = AsyncPairwise(self, _MoniquaCodec(self.bits, self.rounding),
                                        self._base, theta=schedule,
                                        margin=getattr(self.theta_schedule, "margin", 2.0),
                                        monitor=self.monitor, weight=0.5 * self.gamma)

    def close(self) -> None:
        """Stop the asynchronous communication thread (variant='adpsgd'); a no-op
        otherwise."""
        if self.engine is not None:
            self.bytes_sent += self.engine.close()

    def fingerprint(self) -> dict:
        return {**super().fingerprint(), "variant": self.variant, "bits": self.bits,
                "asynchronous": self.asynchronous,
                "rounding": self.rounding, "gamma": self.gamma,
                "theta": describe(self.theta_schedule),
                "monitor": None if self.monitor is None else self.monitor.every}

    @property
    def modulus(self) -> float:
        return ops.moniqua_modulus(self.theta_schedule(self.step_count), self.bits, self.rounding)

    def _begin(self):
        if self.engine is not None:
            return
        t = self.step_count
        if self.variant == "d2":
            # y_t = the model after the local step; z_t = y_t + (x_t - y_{t-1}) is gossiped.
            self._y = [b.tensor.detach().clone() for b in self.buckets]
            for b, d in zip(self.buckets, self._d):
                b.tensor.add_(d)
        monitor_due = self.monitor is not None and self.monitor.due(t)
        if monitor_due or (self._adaptive and self.theta_schedule.due(t)):
            spread, resolution, scale = self._measure_spread(t)
            if self._adaptive:
                # Steps last+1 .. t-1 used the last check's theta; a spread above it now
                # means the last of them likely exceeded it.  Right after a check
                # (t = last + 1) no step has used a theta it did not measure.
                after = self._last_check is not None and t - self._last_check > 1
                in_use = self.theta if after else None
                self.theta_schedule.update(t, spread + resolution, scale)
            else:
                in_use = float(self.theta_schedule(t))
            if monitor_due and in_use is not None:
                self.monitor.record(t, spread, in_use, self.rank)
            self._last_check = t
        self.theta = float(self.theta_schedule(t))
        self._B = ops.moniqua_modulus(self.theta, self.bits, self.rounding)
        self._peers = self.topology.in_peers(self.rank, t)
        out = self.topology.out_peers(self.rank, t)
        self._own_seed = self._seed(self.rank)
        self._own, self._pending = [], []
        for b in self.buckets:
            nbytes = packed_nbytes(b.numel, self.bits)
            q = ops.moniqua_encode(b.tensor, self._B, self.bits, self.rounding, self._own_seed,
                                   b.stream_offset, out=self._slot("send", b.index, -1, nbytes,
                                                                   b.tensor))
            self._own.append(q)
            recvs = self._recv_slots(b, [j for j, _ in self._peers], nbytes)
            self._pending.append(self._exchange([(k, q) for k in out], recvs, tag=b.index))

    def _end(self):
        if self.engine is not None:
            self._step_bytes += self.engine.step()
            self.theta = self.engine.theta
            return
        seeds = [self._seed(j) for j, _ in self._peers] + [self._own_seed]
        weights = [w for _, w in self._peers]
        for b, q, pending in zip(self.buckets, self._own, self._pending):
            got = self._wait(pending)
            if self._peers:
                ops.moniqua_mix_(b.tensor, [got[j] for j, _ in self._peers], weights, q,
                                 self._B, self.bits, self.rounding, self.gamma, seeds,
                                 [b.stream_offset] * len(seeds))
        if self.variant == "d2":
            for b, d, y in zip(self.buckets, self._d, self._y):
                torch.sub(b.tensor, y, out=d)  # x_{t+1} - y_t, used at the next step
            self._y = None
        self._own = self._pending = None

    def _measure_spread(self, t: int) -> tuple[float, float, float]:
        """(max |x_i - x_j| over every coordinate and edge, its resolution, max |x|), the
        same on every worker (one 2-element max all-reduce).

        Every coordinate is compared, not a sample: the spread is heavy-tailed (digits
        MLP, 8 workers, 8 bits: the largest |x_i - x_j| of the output layer's weights was
        12x its 99th percentile, 100x its median), and a 256-element sample missed it at
        496 of 600 steps.  So each worker sends its values Moniqua-encoded at 8 bits,
        nearest rounding, modulus CHECK_MODULUS x theta in use: the receiver decodes them
        against its own values exactly while |x_i - x_j| < CHECK_MODULUS / 2 x theta, to
        within CHECK_MODULUS / 512 x theta, and a larger spread still reads as above theta
        (wrapped, it lands anywhere in +-CHECK_MODULUS / 2 x theta).  The first check (no
        theta yet), one after identical models and one that reads above CHECK_MODULUS / 4
        x theta (a wrap is then plausible) look at a modulus no spread can wrap instead,
        from |x_i - x_j| <= 2 max|x| and tightened look by look
        (``theta.bound_look_spread``; 1-2 bytes per element where float32 took 4).
        |x_i - x_j| is the same seen from either end, so each pair of neighbours compares
        once (``Topology.compare_peers``: on a ring each worker sends to its successor
        only), half the bytes of sending to every neighbour.  Cost: one byte per element
        per pair per look.  Measured with netbench (4 ranks on a ring, 100 Mbit/s links,
        2.46M parameters): sending both ways, the checks took half of 1-bit Moniqua's
        10.6 s to 92% accuracy; one way, it took 7.2 s, and its first 10 steps 3.8 s;
        without float32, 3.4 s.
        """
        peers = self.topology.compare_peers(self.rank, t)
        # Codes at a multiple of theta say nothing when theta was set from identical
        # models (the first step of begin()-before-backward): look from the bound at once.
        if self.theta is not None and self._last_spread:
            modulus = CHECK_MODULUS * self.theta
            spread, scale = self._look(t, peers, modulus)
            # Above a quarter of the check's range a wrapped coordinate is plausible
            # (early steps, when the spread grows by orders of magnitude): look again
            # from the bound.
            if spread <= CHECK_MODULUS / 4 * self.theta:
                self._last_spread = spread
                return spread, modulus * theta_mod.CHECK_RESOLUTION, scale
        else:
            scale = self._max_abs(t)
        spread, resolution = theta_mod.bound_look_spread(
            2 * scale, scale, lambda modulus: self._look(t, peers, modulus)[0])
        self._last_spread = spread
        return spread, resolution, scale

    def _max_abs(self, t: int) -> float:
        """max |x| over every coordinate of every worker (one max all-reduce)."""
        local = self._local_max_abs().reshape(1)
        self._raise_if_not_finite(local, t)
        self.transport.all_reduce_(local, "max")
        self._count_collective(local.numel() * local.element_size())
        return float(local)

    def _local_max_abs(self) -> torch.Tensor:
        """max |x| over this worker's buckets (a float32 scalar on the model's device)."""
        return torch.stack([b.tensor.detach().abs().max().float() for b in self.buckets]).max()

    def _raise_if_not_finite(self, values, t: int) -> None:
        if not torch.isfinite(values).all():
            raise FloatingPointError(f"rank {self.rank}: the model holds non-finite values at "
                                     f"step {t} (diverged)")

    def _look(self, t, peers, modulus: float) -> tuple[float, float]:
        """One look: 8-bit codes at ``modulus`` over each pair (sends, receives); returns
        (the max difference read, max |x|), all-reduced."""
        sends, recvs = peers
        wire = torch.cat([ops.moniqua_encode(b.tensor, modulus, 8, "nearest")
                          for b in self.buckets])
        got = self._wait(self._exchange([(k, wire) for k in sends],
                                        [(j, wire.numel()) for j in recvs],
                                        tag=_MONITOR_TAG))
        stats = torch.zeros(2, dtype=torch.float32, device=self.buckets[0].tensor.device)
        stats[1] = self._local_max_abs()
        for j in recvs:
            start = 0
            for b in self.buckets:
                q = got[j][start:start + b.numel]
                start += b.numel
                theirs = ops.moniqua_decode(q, b.tensor.detach(), modulus, 8, "nearest")
                stats[0] = torch.maximum(stats[0], (theirs - b.tensor).abs().max().float())
        self._raise_if_not_finite(stats, t)
        self.transport.all_reduce_(stats, "max")
        self._count_collective(stats.numel() * stats.element_size())
        spread, scale = stats.tolist()
        return spread, scale

    def state_dict(self) -> dict:
        state = super().state_dict()
        extra = {"theta": self.theta, "last_check": self._last_check,
                 "last_spread": self._last_spread}
        if hasattr(self.theta_schedule, "state_dict"):
            extra["schedule"] = self.theta_schedule.state_dict()
        if self.monitor is not None:
            extra["monitor"] = self.monitor.state_dict()
        state["extra"] = extra
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        extra = state.get("extra", {})
        self.theta = extra.get("theta")
        self._last_check = extra.get("last_check")
        self._last_spread = extra.get("last_spread")
        if "schedule" in extra and hasattr(self.theta_schedule, "load_state_dict"):
            self.theta_schedule.load_state_dict(extra["schedule"])
        if "monitor" in extra and self.monitor is not None:
            self.monitor.load_state_dict(extra["monitor"])
