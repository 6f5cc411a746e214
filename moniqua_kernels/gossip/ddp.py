"""DistributedDataParallel with a compressed gradient all-reduce, behind the interface of
the gossip algorithms (``step()``, ``bytes_sent``, ``state_dict()``), so that ``train
--algorithm ddp`` and the comparison in docs/ddp-hooks.md run it like the others.

    dp = mk.gossip.DataParallel(model, compressor="topk:0.01")   # after init_process_group
    out = dp.module(x)            # forward through the DDP wrapper: backward communicates
    loss.backward(); opt.step(); dp.step()                        # dp.step() only counts

compressor:
  'none'             DDP's own all-reduce (float32)
  'fp16'             torch's fp16_compress_hook
  On gloo both run as this package's allreduce_hook and fp16_compress_hook (hooks.py):
  the same arithmetic, bit for bit, finished on a Python thread.  DDP's own and torch's
  hook hung at exit in 4 and 5 runs of 20 of a script that destroys the process group
  before its model is freed; these, 0 of 20 each.  torch's PowerSGD hook is torch's;
  its process group is kept until exit (_POWERSGD_GROUPS below).
  'powersgd:R[:S]'   torch's powerSGD_hook, rank R, vanilla all-reduce for the first S
                     steps (default 10; torch's default of 1000 is longer than our runs),
                     error feedback and warm start on (torch's defaults)
  any compressor spec ('qsgd:4', 'sign', 'topk:0.01', 'randomk:0.01', ...): this
                     package's compressed_allreduce_hook (gossip/hooks.py)

Bytes are what this rank sends per step: a ring all-reduce of b bytes sends
2 (n - 1) / n x b (DDP's own, fp16 and PowerSGD's P, Q and uncompressed tensors, counted
from PowerSGDState's own element counts); the package's hooks count their own.
"""
from __future__ import annotations

import atexit
import inspect
import time
import warnings
from typing import Optional

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from . import handshake
from .base import ring_allreduce_bytes
from .hooks import (CompressedHookState, allreduce_hook, fp16_compress_hook,
                    register_compressed_hook)

__all__ = ["DataParallel", "TORCH_HOOKS"]

TORCH_HOOKS = ("none", "fp16", "powersgd:R[:START]")


def is_torch_hook(compressor) -> bool:
    """A spec DataParallel serves with torch's hooks (TORCH_HOOKS), not a compressor."""
    return isinstance(compressor, str) and (compressor in ("none", "fp16")
                                            or compressor.startswith("powersgd"))


def _parse_powersgd(spec: str) -> tuple[int, int]:
    _, *args = spec.split(":")
    try:
        rank = int(args[0]) if args else 1
        start = int(args[1]) if len(args) > 1 else 10
    except ValueError:
        raise ValueError(f"bad PowerSGD spec {spec!r}; use 'powersgd:RANK[:START_STEP]'") from None
    if rank < 1 or start < 2 or len(args) > 2:
        # torch refuses start <= 1 with error feedback (DDP needs two steps to set up)
        raise ValueError(f"bad PowerSGD spec {spec!r}: RANK >= 1 and START_STEP >= 2")
    return rank, start


# Process groups that torch's PowerSGD hook has served on gloo, kept until exit.  Its
# callbacks run on gloo's threads and their closures hold the group: freed with the
# model, the group's last reference could go on one of those threads (its destructor
# then joins itself: "Resource deadlock avoided", abort) or on a thread holding the GIL
# while gloo's thread waits for it (a hang).  Measured, 2 ranks under torchrun of a
# script that destroys the group before freeing its model: 9 of 13 exits aborted or hung
# when nothing else held the group.  At exit the main thread first sleeps, so that a
# gloo thread still waiting for the GIL to release callbacks gets it (a core dump showed
# one releasing the group's last reference during atexit), then drops the groups: with
# the groups dropped at once, 3 of 8 exits aborted; with the sleep, 0 of 20.
_POWERSGD_GROUPS: list = []
_GIL_TO_GLOO_S = 0.05


@atexit.register
def _release_powersgd_groups() -> None:
    if _POWERSGD_GROUPS:
        time.sleep(_GIL_TO_GLOO_S)
        _POWERSGD_GROUPS.clear()


def _keep_until_exit(group) -> None:
    group = dist.distributed_c10d._get_default_group() if group is None else group
    if not any(g is group for g in _POWERSGD_GROUPS):
        _POWERSGD_GROUPS.append(group)


def _gloo(group) -> bool:
    return dist.get_backend(group) == "gloo"


def _one_bucket(ddp_kwargs: dict) -> dict:
    """DDP arguments for a single gradient bucket, for torch's PowerSGD hook on gloo.

    That hook issues its all-reduces of P and Q from future callbacks, which gloo runs
    on its own threads: with two or more buckets the ranks can issue collectives in
    different orders.  Measured with 4 gloo ranks on ResNet-20 (two buckets): gloo
    aborted with "Received data size doesn't match" in 2 runs of 2; with one bucket, 3
    runs of 3 completed.  (This package's hook issues its one collective per bucket
    from the hook itself, so bucket order is the same on every rank.)"""
    if "bucket_cap_mb" in ddp_kwargs or "bucket_cap_mb_list" in ddp_kwargs:
        return ddp_kwargs  # the caller chose the buckets
    if "bucket_cap_mb_list" in inspect.signature(DDP.__init__).parameters:
        return dict(ddp_kwargs, bucket_cap_mb_list=[1 << 20])
    warnings.warn("torch's powerSGD_hook on gloo with several DDP buckets can issue "
                  "collectives in different orders on different ranks; this torch has no "
                  "bucket_cap_mb_list to force one bucket", RuntimeWarning, stacklevel=3)
    return ddp_kwargs


class DataParallel:
    """DDP over ``model`` with the chosen gradient compression (see the module doc)."""

    name = "ddp"

    def __init__(self, model: torch.nn.Module, compressor: str = "none", *,
                 error_feedback: Optional[bool] = None, process_group=None, seed: int = 0,
                 per_tensor: Optional[bool] = None, device_ids=None, **ddp_kwargs):
        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError("DataParallel needs torch.distributed: call "
                               "dist.init_process_group(...) first")
        spec = compressor if isinstance(compressor, str) else None
        if error_feedback is not None and is_torch_hook(compressor):
            raise ValueError(f"error_feedback applies to this package's compressors, not "
                             f"to {spec!r}")
        self.world_size = dist.get_world_size(process_group)
        self.rank = dist.get_rank(process_group)
        self.compressor = compressor
        # Ranks must hook the same compression: otherwise their all-reduces differ in
        # size (gloo aborts the process: "Received data size doesn't match") or they time
        # out without a reason.  DDP itself checks the parameters' shapes.
        from .transport import DistTransport
        handshake.agree(DistTransport(process_group),
                        {"compressor": spec or handshake.describe(compressor),
                         "error_feedback": error_feedback, "per_tensor": per_tensor,
                         "seed": seed},
                        what="the DDP compression", device=next(model.parameters()).device)
        if (spec or "").startswith("powersgd") and _gloo(process_group):
            ddp_kwargs = _one_bucket(ddp_kwargs)
            _keep_until_exit(process_group)
        self.module = DDP(model, device_ids=device_ids, process_group=process_group,
                          **ddp_kwargs)
        params = [p for p in model.parameters() if p.requires_grad]
        self.numel = sum(p.numel() for p in params)
        self._grad_bytes = sum(p.numel() * p.element_size() for p in params)
        self.hook_state = None
        self.powersgd = None
        self.step_count = 0
        self.bytes_sent = 0
        self.last_bytes_sent = 0
        # bytes counted by the PowerSGD hook since the last step(), in a list the hook adds
        # to: DDP's C++ Reducer holds the hook, and a hook holding self would make a
        # cycle through C++ that gc never frees (the model, and with it its process
        # group, lived until exit)
        self._counted = [0]
        if spec == "none":
            if _gloo(process_group):  # DDP's own mean, finished off gloo's threads
                self.module.register_comm_hook(process_group, allreduce_hook)
            self._per_step = ring_allreduce_bytes(self._grad_bytes, self.world_size)
        elif spec == "fp16":
            from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
            self.module.register_comm_hook(process_group, fp16_compress_hook if _gloo(
                process_group) else default_hooks.fp16_compress_hook)
            self._per_step = ring_allreduce_bytes(2 * self.numel, self.world_size)
        elif spec is not None and spec.split(":")[0] == "powersgd":
            self._setup_powersgd(process_group, *_parse_powersgd(spec), seed)
            self._per_step = 0
        else:
            kwargs = {} if error_feedback is None else {"error_feedback": error_feedback}
            self.hook_state = register_compressed_hook(
                self.module, CompressedHookState(compressor, process_group=process_group,
                                                 seed=seed, per_tensor=per_tensor, **kwargs))
            self._per_step = 0

    def _setup_powersgd(self, group, rank: int, start: int, seed: int) -> None:
        from torch.distributed.algorithms.ddp_comm_hooks import powerSGD_hook as psgd
        state = psgd.PowerSGDState(process_group=group, matrix_approximation_rank=rank,
                                   start_powerSGD_iter=start, random_seed=seed)
        self.powersgd = state
        itemsize = next(p for p in self.module.parameters()).element_size()
        counted, world = self._counted, self.world_size

        def counting_hook(st, bucket):
            vanilla = st.iter < st.start_powerSGD_iter
            before = st.total_numel_after_compression
            fut = psgd.powerSGD_hook(st, bucket)
            # PowerSGDState adds each all-reduced element (P, Q, uncompressed) to
            # total_numel_after_compression while the hook runs; before the start step
            # the whole bucket is all-reduced.
            numel = bucket.buffer().numel() if vanilla else \
                st.total_numel_after_compression - before
            counted[0] += ring_allreduce_bytes(numel * itemsize, world)
            return fut

        self.module.register_comm_hook(state, counting_hook)

    # ------------------------------------------------------------------ the interface
    def begin(self) -> None:
        """Nothing to start: DDP communicates during backward."""

    def end(self) -> None:
        self.step()

    def step(self) -> None:
        """Close the step's byte count (call once per optimizer step)."""
        if self.hook_state is not None:
            sent = self.hook_state.bytes_sent - self.bytes_sent
        else:
            sent = self._per_step + self._counted[0]
        self._counted[0] = 0
        self.last_bytes_sent = sent
        self.bytes_sent += sent
        self.step_count += 1

    def consensus_distance(self) -> float:
        return 0.0  # DDP keeps identical replicas

    def bits_per_element(self) -> float:
        return 8.0 * self.bytes_sent / (max(self.step_count, 1) * max(self.numel, 1))

    def state_dict(self) -> dict:
        state = {"algorithm": "DataParallel", "compressor": str(self.compressor),
                 "counters": {"step_count": self.step_count, "bytes_sent": self.bytes_sent,
                              "last_bytes_sent": self.last_bytes_sent}}
        if self.hook_state is not None:
            state["hook"] = self.hook_state.state_dict()
        if self.powersgd is not None:
            state["powersgd"] = _powersgd_state(self.powersgd)
        return state

    def load_state_dict(self, state: dict) -> None:
        if state.get("algorithm") != "DataParallel":
            raise ValueError(f"state of {state.get('algorithm')!r} cannot be loaded into "
                             "DataParallel")
        if state["compressor"] != str(self.compressor):
            raise ValueError(f"DataParallel state was saved with compressor "
                             f"{state['compressor']!r}, this one has {self.compressor!r}")
        for name, value in state["counters"].items():
            setattr(self, name, int(value))
        if self.hook_state is not None:
            self.hook_state.load_state_dict(state["hook"])
        if self.powersgd is not None:
            _load_powersgd_state(self.powersgd, state["powersgd"])

    def __repr__(self) -> str:
        return (f"DataParallel(rank={self.rank}/{self.world_size}, "
                f"compressor={self.compressor!r}, numel={self.numel})")


# PowerSGDState pickles a numpy RandomState; a checkpoint keeps plain tensors and numbers
# instead, so that it loads with torch.load(weights_only=True).
_POWERSGD_TENSOR_DICTS = ("error_dict", "p_memory_dict", "q_memory_dict")
_POWERSGD_NUMBERS = ("iter", "total_numel_before_compression",
                     "total_numel_after_compression")


def _powersgd_state(st) -> dict:
    name, keys, pos, has_gauss, gauss = st.rng.get_state()
    out = {k: {int(i): t.detach().clone() for i, t in getattr(st, k).items()}
           for k in _POWERSGD_TENSOR_DICTS}
    out.update({k: getattr(st, k) for k in _POWERSGD_NUMBERS})
    out["rng"] = {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)}
    return out


def _load_powersgd_state(st, saved: dict) -> None:
    for k in _POWERSGD_TENSOR_DICTS:
        setattr(st, k, dict(saved[k]))
    for k in _POWERSGD_NUMBERS:
        setattr(st, k, saved[k])
    r = saved["rng"]
    st.rng.set_state(("MT19937", r["keys"].numpy().astype(np.uint32), r["pos"],
                      r["has_gauss"], r["gauss"]))
