"""DCD-PSGD: difference compression (Tang, Gan, Zhang, Zhang, Liu, NeurIPS 2018,
"Communication Compression for Decentralized Training", Algorithm 1).

Every worker's model is public: its neighbours hold an exact replica x^(j) of it,
because the model only ever changes by the compressed difference it sends.  Step t,
after the local optimizer step (for SGD x'_i = x_i - lr g_i):

    x_i^{t+1/2} = sum_j W_ij x_t^(j) - lr g_i          (Algorithm 1, line 4)
    z_i        = x_i^{t+1/2} - x_t^(i)                  (line 5; compressed, sent)
    x_{t+1}^(j) = x_t^(j) + C(z_j)  for j in N(i) and i (lines 6-7: every replica)

so the model becomes x_{t+1}^(i) = x_t^(i) + C(z_i).  A worker keeps its own public model
x^(i) and s_i = sum_j W_ij x^(j) (self included), updated with the same C(z)'s: two
model-sized buffers whatever the degree, and W must be fixed.  In terms of the model the
optimizer stepped, x_i^{t+1/2} = s_i + (x'_i - x^(i)).

DCD needs the compression error to shrink with the difference it compresses (the
paper's condition on the compression's signal-to-noise ratio, Theorem 1): the differences
z include the whole gossip step, so an aggressive compressor (1-bit sign, few-level
QSGD) injects errors that the next step's z carries again, and DCD diverges where
CHOCO-SGD, ECD-PSGD, DeepSqueeze and Moniqua still train (the paper's Figure 3 and our
tests/test_baselines.py show it; docs/convergence.md has the numbers).
"""
from __future__ import annotations

from .compressed import CompressedGossip

__all__ = ["DCD"]


class DCD(CompressedGossip):
    """DCD-PSGD gossip with any compressor (unbiased ones, e.g. 'qsgd:8', per the paper).

      compressor  a Compressor or a spec; gamma is unused (DCD has no consensus step)
    """

    name = "dcd"
    _STATE_TENSORS = ("_x", "_s")

    def __init__(self, model_or_params, topology="ring", process_group=None, *,
                 compressor="qsgd:8", **kw):
        super().__init__(model_or_params, topology, process_group, compressor=compressor,
                         gamma=1.0, **kw)
        self._x, self._s = self._buffers(), self._buffers()

    def _after_init(self) -> None:
        super()._after_init()
        self._start_replicas(self._x, self._s)

    def _begin(self):
        # z = s + (x' - x) - x: the gossip average with this step's local update, minus
        # the public model
        self._post([s + b.tensor - 2 * x for b, x, s in zip(self.buckets, self._x, self._s)])

    def _end(self):
        weight = dict(self._peers)
        for i, (b, x, s) in enumerate(zip(self.buckets, self._x, self._s)):
            own, theirs = self._collect(i)
            x.add_(own)
            s.add_(own, alpha=self._w_self)
            for j, q in theirs.items():
                s.add_(q, alpha=weight[j])
            b.tensor.copy_(x)
        self._done()
