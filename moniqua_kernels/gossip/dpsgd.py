"""Full-precision baselines: D-PSGD (Lian et al. 2017) and all-reduce averaging."""
from __future__ import annotations

import torch

from .base import GossipAlgorithm

__all__ = ["DPSGD", "AllReduce"]


class DPSGD(GossipAlgorithm):
    """D-PSGD: x_i <- x_i + sum_j W_ij (x_j - s_i), s_i = x_i when begin() ran.

    With step() (no local change between begin and end) this is x_i <- sum_j W_ij x_j.
    Each bucket travels as raw bytes (32 bits per float32 element) to every out-peer.
    Neighbours are summed in ascending rank order, so results are deterministic.
    """

    name = "dpsgd"

    def _begin(self):
        t = self.step_count
        self._peers = self.topology.in_peers(self.rank, t)
        out = self.topology.out_peers(self.rank, t)
        self._snap, self._pending = [], []
        for b in self.buckets:
            # the snapshot is the payload; both live in buffers kept across steps
            nbytes = b.tensor.numel() * b.tensor.element_size()
            wire = self._slot("send", b.index, -1, nbytes, b.tensor)
            self._snap.append(wire.view(b.tensor.dtype).copy_(b.tensor.reshape(-1)))
            recvs = self._recv_slots(b, [j for j, _ in self._peers], nbytes)
            self._pending.append(self._exchange([(k, wire) for k in out], recvs, tag=b.index))

    def _end(self):
        for b, snap, pending in zip(self.buckets, self._snap, self._pending):
            got = self._wait(pending)
            acc = self._slot("acc", b.index, -1, snap.numel() * snap.element_size(),
                             b.tensor).view(snap.dtype).zero_()
            diff = self._slot("diff", b.index, -1, snap.numel() * snap.element_size(),
                              b.tensor).view(snap.dtype)
            for j, w in self._peers:
                torch.sub(got[j].view(snap.dtype), snap, out=diff)
                acc.add_(diff.mul_(w))
            b.tensor.add_(acc.view(b.tensor.shape))
        self._snap = self._pending = None


class AllReduce(GossipAlgorithm):
    """Exact averaging of the models every step (all-reduce SGD's baseline).

    Starting from one model, averaging the models after every plain-SGD step equals
    averaging the gradients.  ``deterministic=False`` (default) uses the backend's
    all-reduce (fast; its summation order is the backend's, so the last bits may
    differ from the simulator's); ``deterministic=True`` all-gathers the models and
    sums them in rank order, bit-identical everywhere at (n - 1) x the bytes.
    Bytes are counted as the ring all-reduce's 2 (n - 1) / n x model bytes, or
    (n - 1) x model bytes for the all-gather.  The topology is ignored.  begin() starts
    the collective on a snapshot, end() waits: x <- average(snapshots) + (x - snapshot).
    """

    name = "allreduce"

    def __init__(self, model_or_params, topology="complete", process_group=None, *,
                 deterministic: bool = False, **kw):
        self.deterministic = bool(deterministic)
        super().__init__(model_or_params, "complete", process_group, **kw)

    def fingerprint(self) -> dict:
        return {**super().fingerprint(), "deterministic": self.deterministic}

    def _begin(self):
        # Post the collectives now so they run during the backward pass.
        self._snap = [b.tensor.detach().clone() for b in self.buckets]
        n = self.world_size
        self._pending = []
        for snap in self._snap:
            nbytes = snap.numel() * snap.element_size()
            if self.deterministic:
                self._pending.append(self.transport.all_gather_async(snap))
                self._step_bytes += (n - 1) * nbytes
                self._step_rounds += n - 1
            else:
                self._pending.append(self.transport.all_reduce_async(snap.clone(), "sum"))
                self._count_collective(nbytes)

    def _end(self):
        for b, snap, pending in zip(self.buckets, self._snap, self._pending):
            got = self._wait(pending)
            if self.deterministic:
                avg = got[0].clone()
                for p in got[1:]:
                    avg += p
            else:
                avg = got
            avg /= self.world_size
            delta = b.tensor - snap  # local change since begin(): zero under step()
            b.tensor.copy_(avg).add_(delta)
        self._snap = self._pending = None
