"""Parameters viewed into contiguous flat buffers, so a gossip step is a few launches.

``FlatParams(params, bucket_numel)`` groups parameters by (device, dtype), copies each
group into one contiguous buffer and re-points every ``param.data`` at its slice, so
the optimizer (which holds the Parameter objects) updates the flat buffer in place.
Each group is cut into buckets at parameter boundaries, none above ``bucket_numel``
elements unless one parameter is larger (like DDP's bucket_cap); ``bucket_numel=None``
gives one bucket per group.  Every bucket has its own random-stream offset, the sum of
the stream spans of the buckets before it, so no two buckets share random numbers.

Every bucket starts on a 16-byte boundary of its buffer, with a few zero elements
between buckets that no bucket holds (they never travel): the GPU kernels take their
128-bit paths only on aligned views (checked per launch), and a cut at a parameter
boundary lands anywhere, every parameter's with ``per_layer``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from ..ops._validate import byte_range

__all__ = ["Bucket", "FlatParams", "as_params"]

ALIGN_BYTES = 16  # a bucket's start: the width of the kernels' vector loads


@dataclass
class Bucket:
    index: int
    tensor: torch.Tensor  # a view into its group's flat buffer
    start: int            # element offset in the group buffer
    stream_offset: int = 0

    @property
    def numel(self) -> int:
        return self.tensor.numel()


def as_params(model_or_params) -> list[torch.nn.Parameter]:
    if isinstance(model_or_params, torch.nn.Module):
        params = [p for p in model_or_params.parameters()]
    else:
        params = list(model_or_params)
        if params and isinstance(params[0], dict):  # optimizer-style param groups
            params = [p for g in params for p in g["params"]]
    seen, out = set(), []
    for p in params:
        if not isinstance(p, torch.Tensor):
            raise TypeError(f"expected parameters (tensors), got {type(p).__name__}")
        if id(p) not in seen:  # tied weights appear once
            seen.add(id(p))
            out.append(p)
    if not out:
        raise ValueError("no parameters to gossip")
    _refuse_overlaps(out)
    return out


def _refuse_overlaps(params: list) -> None:
    """Two Parameter objects over the same memory (a weight tied by sharing ``.data``,
    or one a view of the other) would each get a slot of their own in the flat buffer,
    untying them silently; refuse, saying how to tie them."""
    spans = sorted((*byte_range(p), i) for i, p in enumerate(params) if p.numel())
    for (mem_a, _, end_a, i), (mem_b, start_b, _, j) in zip(spans, spans[1:]):
        if mem_a == mem_b and start_b < end_a:
            i, j = sorted((i, j))
            raise ValueError(
                f"parameters {i} {tuple(params[i].shape)} and {j} {tuple(params[j].shape)} "
                "share memory (a weight tied through .data, or a view of another "
                "parameter): gossip copies every parameter into a flat buffer of its own, "
                "which would untie them; tie them as one Parameter object instead "
                "(module_b.weight = module_a.weight)")


class FlatParams:
    def __init__(self, model_or_params, bucket_numel: Optional[int] = None):
        self.params = as_params(model_or_params)
        groups: dict[tuple, list] = {}
        for p in self.params:
            groups.setdefault((p.device, p.dtype), []).append(p)
        self.buffers: list[torch.Tensor] = []
        self.buckets: list[Bucket] = []
        for (device, dtype), ps in groups.items():
            runs, run, size = [], [], 0  # each bucket's parameters
            for p in ps:
                if bucket_numel is not None and size and size + p.numel() > bucket_numel:
                    runs.append(run)
                    run, size = [], 0
                run.append(p)
                size += p.numel()
            runs.append(run)
            align = max(1, ALIGN_BYTES // torch.empty(0, dtype=dtype).element_size())
            starts, end = [], 0
            for run in runs:
                starts.append(-(-end // align) * align)
                end = starts[-1] + sum(p.numel() for p in run)
            buf = torch.zeros(end, dtype=dtype, device=device)
            for run, start in zip(runs, starts):
                at = start
                for p in run:
                    n = p.numel()
                    with torch.no_grad():
                        buf[at:at + n].copy_(p.detach().reshape(-1))
                    p.data = buf[at:at + n].view_as(p)
                    at += n
                if at > start:
                    self.buckets.append(Bucket(len(self.buckets), buf[start:at], start))
            self.buffers.append(buf)

    def assign_stream_offsets(self, span) -> None:
        """Give buckets consecutive non-overlapping stream offsets; span(n) -> positions."""
        off = 0
        for b in self.buckets:
            b.stream_offset = off
            off += (int(span(b.numel)) + 3) // 4 * 4

    @property
    def numel(self) -> int:
        return sum(b.numel for b in self.buckets)

    def flat(self) -> torch.Tensor:
        """All parameters as one float32 vector (a copy), in bucket order."""
        return torch.cat([b.tensor.detach().reshape(-1).float() for b in self.buckets])

    def load_flat_(self, vec: torch.Tensor) -> None:
        start = 0
        for b in self.buckets:
            b.tensor.copy_(vec[start:start + b.numel])
            start += b.numel
