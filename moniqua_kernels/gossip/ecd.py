"""ECD-PSGD: extrapolation compression (Tang, Gan, Zhang, Zhang, Liu, NeurIPS 2018,
"Communication Compression for Decentralized Training", Algorithm 2).

Every worker keeps estimates y^(j) of its neighbours' models (and of its own, which its
neighbours hold too) and mixes those.  Step t = 1, 2, ... (the paper's iteration index):

    x_{t+1}^(i) = sum_j W_ij y_t^(j) - lr g_i               (Algorithm 2, lines 4-5)
    z_{t+1}^(i) = (1 - t/2) x_t^(i) + (t/2) x_{t+1}^(i)      (line 6; compressed, sent)
    y_{t+1}^(j) = (1 - 2/t) y_t^(j) + (2/t) C(z_{t+1}^(j))   (line 7; every estimate)

Extrapolating z this way makes y an unbiased estimate of x when C is unbiased, and the
compression noise in y averages out as 1/t (the paper's Lemma 2), which is why ECD
tolerates more aggressive compression than DCD.  A worker keeps its previous model x_t
and s_i = sum_j W_ij y^(j) (the update of y is linear, so s follows it with the same
C(z)'s): two model-sized buffers, W fixed.  With the model the optimizer stepped from x_t,
x'_i = x_t - lr g_i, line 5 is x_{t+1} = s_i + (x'_i - x_t).

The compressor must be unbiased (QSGD, random-k with rescaling, ...): the estimates
average C(z) over time, so a biased C leaves its bias in them.  Note |z| grows with t
(z ~ (t/2) (x_{t+1} - x_t)): with a fixed learning rate the noise the estimates carry
grows with it (ChocoSGD's reproduction, Koloskova et al. 2019, saw ECD lag too).
"""
from __future__ import annotations

from .compressed import CompressedGossip

__all__ = ["ECD"]


class ECD(CompressedGossip):
    """ECD-PSGD gossip (unbiased compressors; default 'qsgd:4')."""

    name = "ecd"
    _STATE_TENSORS = ("_prev", "_s")

    def __init__(self, model_or_params, topology="ring", process_group=None, *,
                 compressor="qsgd:4", **kw):
        super().__init__(model_or_params, topology, process_group, compressor=compressor,
                         gamma=1.0, **kw)
        if not self.compressor.unbiased:
            raise ValueError(f"ECD-PSGD averages its compressed extrapolations over time, so "
                             f"its compressor must be unbiased; {self.compressor.name} is "
                             "not (use qsgd, randomk:RATIO:rescale or identity)")
        self._prev, self._s = self._buffers(), self._buffers()

    def _after_init(self) -> None:
        super()._after_init()
        self._start_replicas(self._prev, self._s)   # y_1^(j) = x_1^(j)

    def _begin(self):
        t = self.step_count + 1
        values = []
        for b, prev, s in zip(self.buckets, self._prev, self._s):
            b.tensor.add_(s - prev)                  # x_{t+1} = s + (x' - x_t)
            values.append(prev * (1 - t / 2) + b.tensor * (t / 2))
        self._post(values)

    def _end(self):
        t = self.step_count + 1
        keep, new = 1 - 2 / t, 2 / t
        weight = dict(self._peers)
        for i, (b, prev, s) in enumerate(zip(self.buckets, self._prev, self._s)):
            own, theirs = self._collect(i)
            s.mul_(keep).add_(own, alpha=new * self._w_self)
            for j, q in theirs.items():
                s.add_(q, alpha=new * weight[j])
            prev.copy_(b.tensor)
        self._done()
