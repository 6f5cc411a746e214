"""CHOCO-SGD (Koloskova et al. 2019) and SQuARM-SGD (Singh et al. 2020).

CHOCO-SGD, after the local step x_i^{t+1/2}:
    q_i = C(x_i^{t+1/2} - xhat_i)                 sent to every neighbour
    xhat_j += q_j  for j in N(i) and i             (replicas, kept in sync by all)
    x_i = x_i^{t+1/2} + gamma sum_j W_ij (xhat_j - xhat_i)
Instead of deg + 1 replicas a worker keeps xhat_i and s_i = sum_j W_ij xhat_j (self
included), updated with the same q's: two model-sized buffers whatever the degree.
That needs W fixed, so time-varying topologies are refused.

SQuARM-SGD: the local optimizer is SGD with Nesterov momentum (the caller's
``torch.optim.SGD(..., momentum=beta, nesterov=True)``); step() is called after every
local step but communicates only every H-th ("sync") step, and then only if the
event trigger ||x_i - xhat_i||^2 > threshold * lr^2 fires.  Receivers learn who fired
from a 1-byte flag per neighbour (round 1, counted in bytes_sent); the compressed
payloads follow (round 2).  The consensus update runs at every sync step.  The
compressor is typically Compose(sparsifier, quantizer), e.g. "topk:0.1+qsgd:4".
"""
from __future__ import annotations

import math

import torch

from .. import compressors as comp
from .compressed import CompressedGossip, as_compressor

__all__ = ["Choco", "SQuARM"]

_FLAG_TAG = 1 << 21


class Choco(CompressedGossip):
    """CHOCO-SGD gossip with any compressor (Koloskova et al. 2019, Algorithm 1).

      compressor  a Compressor or a spec ('sign', 'qsgd:4', 'topk:0.1', ...)
      gamma       consensus step size (CHOCO's gamma; smaller for coarser compressors)
    """

    name = "choco"
    _STATE_TENSORS = ("_xhat", "_s")

    def __init__(self, model_or_params, topology="ring", process_group=None, *,
                 compressor="sign", gamma: float = 0.5, **kw):
        super().__init__(model_or_params, topology, process_group, compressor=compressor,
                         gamma=gamma, **kw)
        self._xhat = self._buffers()
        self._s = self._buffers()

    # Choco always sends; SQuARM decides per sync step.
    def _begin(self):
        self._post([b.tensor - xhat for b, xhat in zip(self.buckets, self._xhat)])

    def _end(self):
        self._apply()

    def _apply(self) -> None:
        weight = dict(self._peers)
        for i, (b, xhat, s) in enumerate(zip(self.buckets, self._xhat, self._s)):
            own, theirs = self._collect(i)
            if own is not None:
                xhat.add_(own)
                s.add_(own, alpha=self._w_self)
            for j, q in theirs.items():
                s.add_(q, alpha=weight[j])
            b.tensor.add_(s - xhat, alpha=self.gamma)
        self._done()


class SQuARM(Choco):
    """SQuARM-SGD gossip (Singh, Data, George, Diggavi 2020, Algorithm 1).

    The local optimizer must be SGD with Nesterov momentum (``SQuARM.optimizer(params,
    lr)`` makes one: momentum 0.9, the papers' value); with plain SGD this gossip is
    SPARQ-SGD (Singh et al. 2019).  Passing the optimizer as ``lr=`` lets SQuARM read its
    learning rate and refuse one without Nesterov momentum.

      compressor  default Compose(TopK(0.1), QSGD(4), contractive=True): sparsify, quantize
                  the kept values, scale by 1 / (1 + beta) (compressors.Compose)
      gamma       consensus step size
      H           local steps between synchronisations (communicate at every H-th step)
      threshold   c_0 of the trigger ||x_i - xhat_i||^2 > c_t lr^2 (0: send unless equal),
                  with c_t = c_0 (t + 1)^threshold_power, t the step: the papers' increasing
                  sequence (c_t <= c_0 t^(1 - eps), eps > 0, for their convergence rates;
                  power 1 - eps, default 0.5)
      lr          float, callable step -> lr, or the optimizer (its current lr is read)
    """

    name = "squarm"
    _STATE_COUNTERS = Choco._STATE_COUNTERS + ("sync_steps", "triggers")
    MOMENTUM = 0.9

    def __init__(self, model_or_params, topology="ring", process_group=None, *,
                 compressor="topk:0.1+qsgd:4", gamma: float = 0.5, H: int = 1,
                 threshold: float = 0.0, threshold_power: float = 0.5, lr=None,
                 contractive: bool = True, **kw):
        if int(H) < 1:
            raise ValueError(f"H (local steps per sync) must be >= 1, got {H}")
        if not (threshold >= 0 and math.isfinite(threshold)):
            raise ValueError(f"threshold must be finite and >= 0, got {threshold}")
        if not 0 <= threshold_power < 1:
            raise ValueError(f"threshold_power must lie in [0, 1) (c_t <= c_0 t^(1 - eps)), "
                             f"got {threshold_power}")
        self.H, self.threshold, self.threshold_power = int(H), float(threshold), float(threshold_power)
        self._lr = lr
        if self.threshold > 0 and lr is None:
            raise ValueError("a threshold > 0 is scaled by lr^2: pass lr= (float, callable "
                             "or the optimizer)")
        if hasattr(lr, "param_groups"):
            group = lr.param_groups[0]
            if not (group.get("nesterov") and group.get("momentum", 0) > 0):
                raise ValueError(
                    "SQuARM-SGD runs Nesterov momentum locally; this optimizer has momentum="
                    f"{group.get('momentum', 0)}, nesterov={group.get('nesterov', False)} "
                    "(that would be SPARQ-SGD): use SQuARM.optimizer(params, lr)")
        self.triggers = 0       # sync steps at which this worker sent
        self.sync_steps = 0
        compressor = as_compressor(compressor, "SQuARM")
        if contractive and isinstance(compressor, comp.Compose) and not compressor.contractive:
            compressor = comp.Compose(compressor.sparsifier, compressor.quantizer,
                                      contractive=True)
        super().__init__(model_or_params, topology, process_group, compressor=compressor,
                         gamma=gamma, **kw)

    @classmethod
    def optimizer(cls, params, lr: float, momentum: float = MOMENTUM, weight_decay: float = 0.0):
        """The local optimizer SQuARM-SGD assumes: SGD with Nesterov momentum."""
        return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=True,
                               weight_decay=weight_decay)

    def fingerprint(self) -> dict:
        return {**super().fingerprint(), "H": self.H, "threshold": self.threshold,
                "threshold_power": self.threshold_power}

    def threshold_at(self, step: int) -> float:
        return self.threshold * (step + 1) ** self.threshold_power

    def lr(self) -> float:
        if self._lr is None:
            return 1.0
        if hasattr(self._lr, "param_groups"):
            return float(self._lr.param_groups[0]["lr"])
        return float(self._lr(self.step_count)) if callable(self._lr) else float(self._lr)

    def is_sync_step(self, step: int | None = None) -> bool:
        step = self.step_count if step is None else step
        return (step + 1) % self.H == 0

    def _begin(self):
        self._sync = self.is_sync_step()
        if not self._sync:
            return
        self.sync_steps += 1
        sq = sum(float((b.tensor - xhat).double().square().sum())
                 for b, xhat in zip(self.buckets, self._xhat))
        send = sq > self.threshold_at(self.step_count) * self.lr() ** 2
        self.triggers += int(send)
        flag = torch.tensor([int(send)], dtype=torch.uint8, device=self.buckets[0].tensor.device)
        flags = self._wait(self._exchange([(k, flag) for k in self._out],
                                          [(j, 1) for j, _ in self._peers], tag=_FLAG_TAG))
        senders = [j for j, _ in self._peers if int(flags[j][0])]
        self._post([b.tensor - xhat for b, xhat in zip(self.buckets, self._xhat)] if send
                   else None, senders)

    def _end(self):
        if self._sync:
            self._apply()
