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
  adpsgd  Moniqua on AD-PSGD: pairwise averaging (weights 1/2) over a random matching of
          the topology's edges, a new matching every step from the shared seed, with the
          begin()/backward/end() order giving AD-PSGD's "average, then apply the gradient
          of the model before averaging".  On torch.distributed this is a synchronous
          emulation: the pairs of a step meet at the same step; there is no staleness
          beyond that one step and no worker runs ahead of the others.
"""
from __future__ import annotations

import torch

from .. import ops
from . import topology as topology_mod
from .base import GossipAlgorithm
from .theta import ThetaMonitor, as_schedule

__all__ = ["Moniqua"]

VARIANTS = ("dpsgd", "d2", "adpsgd")
_MONITOR_TAG = 1 << 20


class Moniqua(GossipAlgorithm):
    """Moniqua gossip.  Hyperparameters:

      theta     bound on |x_i - x_j| (float, or callable step -> float, e.g.
                theta.LRProportional(scale, optimizer)); B = moniqua_modulus(theta, ...)
      bits      1, 2, 4 or 8 bits per element on the wire
      rounding  'dither' (default; unbiased at 1 bit, shared randomness), 'stochastic'
                (bits >= 2) or 'nearest'
      gamma     consensus step size (1.0 is the paper's D-PSGD update)
      variant   'dpsgd' | 'd2' | 'adpsgd'
      monitor   None, an int K (check every K steps), or a ThetaMonitor
    """

    name = "moniqua"
    _STATE_TENSORS = ("_d",)  # D2's previous update; absent for the other variants

    def __init__(self, model_or_params, topology="ring", process_group=None, *, theta=1.0,
                 bits: int = 1, rounding: str = "dither", gamma: float = 1.0,
                 variant: str = "dpsgd", monitor=None, **kw):
        if variant not in VARIANTS:
            raise ValueError(f"variant={variant!r}; use one of {', '.join(VARIANTS)}")
        self.variant = variant
        self._matching_seed = int(kw.get("seed", 0))
        ops.moniqua_modulus(1.0, bits, rounding)  # validates bits and rounding
        self.bits, self.rounding, self.gamma = bits, rounding, float(gamma)
        self.theta_schedule = as_schedule(theta)
        super().__init__(model_or_params, topology, process_group, **kw)
        self.flat.assign_stream_offsets(lambda n: (n + 3) // 4 * 4)
        if isinstance(monitor, int) and not isinstance(monitor, bool):
            monitor = ThetaMonitor(every=monitor, seed=self.seed)
        self.monitor = monitor
        self.theta = None  # the theta of the last step
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
        if self.variant == "adpsgd":
            return topology_mod.random_matching(base, self._matching_seed)
        return base

    @property
    def modulus(self) -> float:
        return ops.moniqua_modulus(self.theta_schedule(self.step_count), self.bits, self.rounding)

    def _begin(self):
        t = self.step_count
        self.theta = float(self.theta_schedule(t))
        self._B = ops.moniqua_modulus(self.theta, self.bits, self.rounding)
        if self.variant == "d2":
            # y_t = the model after the local step; z_t = y_t + (x_t - y_{t-1}) is gossiped.
            self._y = [b.tensor.detach().clone() for b in self.buckets]
            for b, d in zip(self.buckets, self._d):
                b.tensor.add_(d)
        if self.monitor is not None and self.monitor.due(t):
            self._check_theta(t)
        self._peers = self.topology.in_peers(self.rank, t)
        out = self.topology.out_peers(self.rank, t)
        self._own_seed = self._seed(self.rank)
        self._own, self._pending = [], []
        for b in self.buckets:
            q = ops.moniqua_encode(b.tensor, self._B, self.bits, self.rounding, self._own_seed,
                                   b.stream_offset)
            self._own.append(q)
            recvs = [(j, q.numel()) for j, _ in self._peers]
            self._pending.append(self._exchange([(k, q) for k in out], recvs, tag=b.index))

    def _end(self):
        seeds = [self._seed(j) for j, _ in self._peers] + [self._own_seed]
        weights = [w for _, w in self._peers]
        for b, q, pending in zip(self.buckets, self._own, self._pending):
            got = pending.wait()
            if self._peers:
                ops.moniqua_mix_(b.tensor, [got[j] for j, _ in self._peers], weights, q,
                                 self._B, self.bits, self.rounding, self.gamma, seeds,
                                 [b.stream_offset] * len(seeds))
        if self.variant == "d2":
            for b, d, y in zip(self.buckets, self._d, self._y):
                torch.sub(b.tensor, y, out=d)  # x_{t+1} - y_t, used at the next step
            self._y = None
        self._own = self._pending = None

    def _check_theta(self, t: int) -> None:
        """ThetaMonitor's measurement on the values about to be encoded."""
        mon = self.monitor
        peers = self.topology.in_peers(self.rank, t)
        out = self.topology.out_peers(self.rank, t)
        worst = torch.zeros(1, dtype=torch.float32)
        for b in self.buckets:
            idx = mon.indices(b.numel, t, b.index, b.tensor.device)
            mine = (b.tensor if idx is None else b.tensor[idx]).detach().float().contiguous()
            wire = mine.view(torch.uint8)
            got = self._exchange([(k, wire) for k in out], [(j, wire.numel()) for j, _ in peers],
                                 tag=_MONITOR_TAG + b.index).wait()
            for j, _ in peers:
                diff = (got[j].view(torch.float32) - mine).abs().max().cpu().reshape(1)
                worst = torch.maximum(worst, diff)
        worst = worst.to(self.buckets[0].tensor.device)
        self.transport.all_reduce_(worst, "max")
        self._count_collective(worst.numel() * worst.element_size())
        mon.record(t, float(worst), self.theta, self.rank)
