"""Parameters viewed into contiguous flat buffers, so a gossip step is a few launches.

``FlatParams(params, bucket_numel)`` groups parameters by (device, dtype), copies each
group into one contiguous buffer and re-points every ``param.data`` at its slice, so
the optimizer (which holds the Parameter objects) updates the flat buffer in place.
Each group is cut into buckets at parameter boundaries, none above ``bucket_numel``
elements unless one parameter is larger (like DDP's bucket_cap); ``bucket_numel=None``
gives one bucket per group.  Every bucket has its own random-stream offset, the sum of
the stream spans of the buckets before it, so no two buckets share random numbers.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

__all__ = ["Bucket", "FlatParams", "as_params"]


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
    return out


class FlatParams:
    def __init__(self, model_or_params, bucket_numel: Optional[int] = None):
        self.params = as_params(model_or_params)
        groups: dict[tuple, list] = {}
        for p in self.params:
            groups.setdefault((p.device, p.dtype), []).append(p)
        self.buffers: list[torch.Tensor] = []
        self.buckets: list[Bucket] = []
        for (device, dtype), ps in groups.items():
            total = sum(p.numel() for p in ps)
            buf = torch.empty(total, dtype=dtype, device=device)
            start, bstart, bsize = 0, 0, 0
            for p in ps:
                n = p.numel()
                if bucket_numel is not None and bsize and bsize + n > bucket_numel:
                    self._add_bucket(buf, bstart, bsize)
                    bstart, bsize = start, 0
                with torch.no_grad():
                    buf[start:start + n].copy_(p.detach().reshape(-1))
                p.data = buf[start:start + n].view_as(p)
                start += n
                bsize += n
            self._add_bucket(buf, bstart, bsize)
            self.buffers.append(buf)

    def _add_bucket(self, buf, start, size):
        if size:
            self.buckets.append(Bucket(len(self.buckets), buf[start:start + size], start))

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
