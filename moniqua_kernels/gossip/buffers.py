"""BatchNorm running statistics in decentralized training.

A gossip algorithm mixes the parameters; the buffers (BatchNorm's running mean and
variance) would stay each worker's own, estimated on its own shard only, and the
averaged model would be evaluated with one worker's statistics.  Two remedies:

``WithBufferGossip(algorithm, model)``: after every step of ``algorithm``, the floating
buffers are mixed with the neighbours at full precision by D-PSGD over the same topology
and transport (x_i <- sum_j W_ij x_j): a convex combination, so variances stay positive.
Its bytes are counted with the algorithm's.  ResNet-20 has 1,568 BatchNorm floats
(6,272 bytes to each neighbour per step; 1-bit Moniqua sends ~34,000 per neighbour).

``average_buffers_(model, transport)``: all-reduce the floating buffers to their mean,
once, e.g. before evaluating the averaged model (what ``train --bn-sync eval`` does).

Integer buffers (``num_batches_tracked``) are left alone: with a momentum set, BatchNorm
does not read them.
"""
from __future__ import annotations

import torch

from .dpsgd import DPSGD

__all__ = ["WithBufferGossip", "average_buffers_", "floating_buffers"]


def floating_buffers(model: torch.nn.Module) -> list[torch.Tensor]:
    return [b for b in model.buffers() if b.is_floating_point()]


def average_buffers_(model: torch.nn.Module, transport) -> None:
    """Replace every floating buffer by its mean over all workers (a collective)."""
    bufs = floating_buffers(model)
    if not bufs:
        return
    flat = torch.cat([b.detach().reshape(-1) for b in bufs])
    transport.all_reduce_(flat, "sum")
    flat /= transport.world_size
    start = 0
    with torch.no_grad():
        for b in bufs:
            b.copy_(flat[start:start + b.numel()].view_as(b))
            start += b.numel()


class WithBufferGossip:
    """``algorithm`` plus full-precision neighbour averaging of model's floating buffers.

    Everything the training loop uses (step, begin/end, bytes, state_dict) covers both;
    other attributes are the algorithm's."""

    def __init__(self, algorithm, model: torch.nn.Module):
        bufs = floating_buffers(model)
        if not bufs:
            raise ValueError("the model has no floating-point buffers to average")
        self.algorithm = algorithm
        # The buffers' own D-PSGD on the algorithm's topology and transport: messages
        # go after the algorithm's, in the same order on every worker.
        self.buffers = DPSGD(bufs, algorithm.topology, transport=algorithm.transport,
                             seed=algorithm.seed, sync_params=False)

    def __getattr__(self, name):
        return getattr(self.__dict__["algorithm"], name)

    def begin(self) -> None:
        self.algorithm.begin()

    def end(self) -> None:
        self.algorithm.end()
        self.buffers.step()

    def step(self) -> None:
        self.algorithm.step()
        self.buffers.step()

    @property
    def bytes_sent(self) -> int:
        return self.algorithm.bytes_sent + self.buffers.bytes_sent

    @property
    def last_bytes_sent(self) -> int:
        return self.algorithm.last_bytes_sent + self.buffers.last_bytes_sent

    def state_dict(self) -> dict:
        return {"algorithm": self.algorithm.state_dict(),
                "buffer_gossip": self.buffers.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if "buffer_gossip" not in state:
            raise ValueError("this checkpoint was saved without BatchNorm buffer gossip; "
                             "resume with the same --bn-sync")
        self.algorithm.load_state_dict(state["algorithm"])
        self.buffers.load_state_dict(state["buffer_gossip"])
