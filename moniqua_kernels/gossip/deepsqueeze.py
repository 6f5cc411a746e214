"""DeepSqueeze: error-compensated compression (Tang, Lian, Yu, Zhang, Liu 2019,
"DeepSqueeze: Decentralization Meets Error-Compensated Compression", Algorithm 1).

Workers compress their whole model plus the error their last compression left, and
mix the compressed models.  Step t, after the local optimizer step x_i^{t+1/2}:

    v_i     = x_i^{t+1/2} + delta_i                      (error compensation)
    delta_i = v_i - C(v_i)                               (what C dropped, kept)
    x_i     = x_i^{t+1/2} + eta sum_j (W_ij - I_ij) C(v_j)   (consensus step eta)

One model-sized buffer (delta), no replicas, so any topology works, time-varying ones
too; any compressor, biased ones included (the error feedback carries the bias).
``gamma`` is the paper's consensus step size eta.
"""
from __future__ import annotations

import torch

from .compressed import CompressedGossip

__all__ = ["DeepSqueeze"]


class DeepSqueeze(CompressedGossip):
    """DeepSqueeze gossip with any compressor.

      compressor  a Compressor or a spec (default 'sign')
      gamma       the consensus step size eta (default 0.2)
    """

    name = "deepsqueeze"
    time_varying_ok = True
    _STATE_TENSORS = ("_delta",)

    def __init__(self, model_or_params, topology="ring", process_group=None, *,
                 compressor="sign", gamma: float = 0.2, **kw):
        super().__init__(model_or_params, topology, process_group, compressor=compressor,
                         gamma=gamma, **kw)
        self._delta = self._buffers()

    def _begin(self):
        # A time-varying topology gives this step's peers (the base keeps step 0's).
        t = self.step_count
        self._peers = self.topology.in_peers(self.rank, t)
        self._out = self.topology.out_peers(self.rank, t)
        self._w_self = self.topology.self_weight(self.rank, t)
        self._v = [b.tensor + d for b, d in zip(self.buckets, self._delta)]
        self._post(self._v)

    def _end(self):
        weight = dict(self._peers)
        for i, (b, d, v) in enumerate(zip(self.buckets, self._delta, self._v)):
            own, theirs = self._collect(i)
            torch.sub(v, own, out=d)
            mix = own.to(d.dtype) * (self._w_self - 1)
            for j, q in theirs.items():
                mix.add_(q, alpha=weight[j])
            b.tensor.add_(mix, alpha=self.gamma)
        self._v = None
        self._done()
