"""What the gossip algorithms with a compressor share (CHOCO-SGD, SQuARM-SGD, DCD-PSGD,
ECD-PSGD, DeepSqueeze): the compressor, a static topology, and one round per step in
which every worker sends C(v_i) of some per-bucket tensor v_i to its out-peers and
decodes what its in-peers sent.

    self._post(values)          # encode values[b] per bucket, post the exchange
    own, got = self._collect(b) # own decoded C(v_i) (None if it sent nothing) and
                                # {j: decoded C(v_j)} for the peers it heard from

Streams: the payload of (sender, step) uses stream_seed(seed, sender, step) at the
bucket's offset, so receivers regenerate random-k masks and buffer sizes.

State (replicas, running sums, error feedback) is float32 for float16 and bfloat16
models (``_buffers``), twice their memory: in the model's dtype the sums rounded apart
between workers.  Payloads travel in the model's dtype.
"""
from __future__ import annotations

from typing import Optional

import torch

from .. import compressors as comp
from .base import GossipAlgorithm
from .handshake import describe

__all__ = ["CompressedGossip", "as_compressor"]


def as_compressor(spec, who: str) -> comp.Compressor:
    c = comp.from_spec(spec) if isinstance(spec, str) else spec
    if not isinstance(c, comp.Compressor):
        raise TypeError(f"compressor must be a Compressor or a spec string, got {type(c)}")
    if c.needs_reference:
        raise ValueError(f"{c.name} decodes against the receiver's own model; {who} sends "
                         "compressed vectors that need no reference, so use qsgd, sign, "
                         "randomk, topk, identity or a composition (for Moniqua use "
                         "gossip.Moniqua)")
    return c


class CompressedGossip(GossipAlgorithm):
    """Base of the algorithms that exchange C(v) with a Compressor (see module doc)."""

    time_varying_ok = False

    def __init__(self, model_or_params, topology="ring", process_group=None, *,
                 compressor="sign", gamma: float = 0.5, **kw):
        self.compressor = as_compressor(compressor, type(self).__name__)
        self.gamma = float(gamma)
        super().__init__(model_or_params, topology, process_group, **kw)
        self.flat.assign_stream_offsets(self.compressor.stream_span)
        self._peers = self.topology.in_peers(self.rank)
        self._out = self.topology.out_peers(self.rank)
        self._w_self = self.topology.self_weight(self.rank)

    def fingerprint(self) -> dict:
        return {**super().fingerprint(), "compressor": describe(self.compressor),
                "gamma": self.gamma}

    def _buffers(self) -> list:
        """One model-sized state buffer per bucket, in float32 for float16 and bfloat16
        models.  The running sums (s_i = sum_j W_ij xhat_j and its kin) are only right
        while every worker's additions round alike; in bfloat16 they drift apart within
        100 steps (4 workers on a ring, identity compressor, CHOCO with gamma 1: the
        workers' mean moved by 5 after 100 steps and 1.4e7 after 1000, D-PSGD's by 9e-3),
        and s - xhat feeds the error back into the models every step."""
        return [torch.zeros_like(b.tensor, dtype=self._state_dtype(b)) for b in self.buckets]

    @staticmethod
    def _state_dtype(b) -> torch.dtype:
        return torch.promote_types(b.tensor.dtype, torch.float32)

    def _post(self, values: Optional[list], senders: Optional[list] = None) -> None:
        """Encode values[b] (None: send nothing this step) and post one exchange per
        bucket; receive from ``senders`` (default: every in-peer)."""
        self._senders = [j for j, _ in self._peers] if senders is None else senders
        self._own_seed = self._seed(self.rank)
        self._own, self._pending = [], []
        c = self.compressor
        for i, b in enumerate(self.buckets):
            sends = []
            if values is not None:
                # on the wire in the model's dtype (the receivers' from_wire assumes it);
                # the float32 state then adds the decoded, identical q on every worker
                p = c.encode(values[i].to(b.tensor.dtype), seed=self._own_seed,
                             offset=b.stream_offset)
                self._own.append(p)
                wire = p.to_wire(out=self._slot("send", b.index, -1, p.nbytes, b.tensor))
                sends = [(k, wire) for k in self._out]
            recvs = [(j, self._slot("recv", b.index, j,
                                    c.nbytes(b.numel, b.tensor.dtype, self._seed(j),
                                             b.stream_offset), b.tensor))
                     for j in self._senders]
            self._pending.append(self._exchange(sends, recvs, tag=b.index) if sends or recvs
                                 else None)

    def _collect(self, i: int) -> tuple:
        """(own decoded payload of bucket i or None, {peer: decoded payload})."""
        b, c = self.buckets[i], self.compressor
        got = self._wait(self._pending[i]) if self._pending[i] is not None else {}
        own = c.decode(self._own[i]) if self._own else None
        theirs = {j: c.decode(c.from_wire(got[j], b.tensor.shape, b.tensor.dtype,
                                          seed=self._seed(j), offset=b.stream_offset))
                  for j in self._senders}
        return own, theirs

    def _done(self) -> None:
        self._own = self._pending = None

    def _start_replicas(self, own: list, mixed: list) -> None:
        """own <- the model, mixed <- sum_j W_ij x_j (self included).  With a common start
        (sync_params, the default) that is the model itself; otherwise the neighbours'
        models are fetched once in full precision (counted in bytes_sent)."""
        for b, x, s in zip(self.buckets, own, mixed):
            x.copy_(b.tensor)
            s.copy_(b.tensor)
        if self._sync_params or self.world_size == 1:
            return
        with torch.no_grad():
            for b, s in zip(self.buckets, mixed):
                wire = b.tensor.detach().reshape(-1).view(torch.uint8)
                got = self._wait(self._exchange([(k, wire) for k in self._out],
                                                [(j, wire.numel()) for j, _ in self._peers],
                                                tag=b.index))
                s.mul_(self._w_self)
                for j, w in self._peers:
                    s.add_(got[j].view(b.tensor.dtype), alpha=w)
        self.bytes_sent += self._step_bytes
        self._step_bytes, self._step_rounds = 0, 0
