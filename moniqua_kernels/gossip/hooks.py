"""DDP communication hooks that compress the gradient all-reduce with any compressor.

    state = mk.gossip.CompressedHookState(compressor="qsgd:4", error_feedback=True)
    mk.gossip.register_compressed_hook(ddp_model, state)   # or, without checkpointable
    ddp_model.register_comm_hook(state, mk.gossip.compressed_allreduce_hook)  # residuals

Convenience states, each the generic state with one compressor:

    QSGDHookState(bits=8)            QSGD (Alistarh et al. 2017), no error feedback
    SignEFHookState()                scaled sign, one scale per tensor, with error
                                     feedback (EF-SignSGD, Karimireddy et al. 2019)
    TopKEFHookState(ratio=0.01)      top-k with error feedback (Stich et al. 2018)
    RandomKHookState(ratio=0.01)     random-k with a mask shared by all ranks

and torch's two plain hooks, done so that a script does not hang at exit on gloo
(``allreduce_hook``, ``fp16_compress_hook``: see "torch's two plain hooks" below).

How the bytes move.  DDP hands the hook one flat bucket of gradients at a time.  Random-k
with a mask all ranks draw from the same seed, and the identity, are linear: the kept
values of all ranks can be summed in transit, so they are all-reduced (bytes per rank:
the ring all-reduce's 2 (n - 1) / n x payload).  Every other compressor's payload cannot
be summed (QSGD codes, signs, top-k indices), so the payloads are all-gathered as uint8
buffers and every rank decodes all n of them in rank order and averages: all ranks get
bit-identical gradients.  Bytes per rank: (n - 1) x payload, the ring all-gather's.
Payloads whose size depends on the data (QSGD with coding="elias") first all-gather
their sizes, then travel padded to the largest: (n - 1) x (the largest payload + 8 bytes
per segment).

Error feedback: the rank compresses g + e and keeps e = (g + e) - C(g + e).  Residuals
are kept per parameter, so they survive DDP's bucket rebuild after the first step;
``state_dict()`` saves them by parameter name (``bind(model)``, done by
``register_compressed_hook``) so a checkpoint does not depend on the bucket layout.

Bucket-aware: seeds differ per rank, step and bucket; with ``per_tensor=True`` (the
default for scaled sign, whose one scale per call would otherwise be shared by all the
layers of a bucket) every parameter of the bucket is compressed on its own, its stream
offset following the previous one's.

Before the first exchange the ranks compare their configuration (compressor,
error feedback, per-tensor, seed, step, bucket size) in one small all-gather and every
rank raises ``ValueError`` naming the field and the ranks that differ, instead of a
collective of mismatched sizes (a C++ abort in gloo).  The process group's timeout
bounds every collective; a failed one raises ``PeerError`` with the bucket and step (a
collective cannot tell which peer failed; gloo's cause names an address when it knows).

gloo (CPU) and NCCL (GPU) both serve the hook: it only uses all_gather / all_reduce on
tensors of the bucket's device.  NCCL has not been run here (no GPU on the machine where
this was written); the gloo path is tested.
"""
import collections
import json
import queue
import threading
import zlib
from typing import Optional

import torch
import torch.distributed as dist

from ..compressors import (Compose, Compressor, Identity, QSGD, RandomK, ScaledSign, TopK,
                           from_spec)
from .base import ring_allreduce_bytes, stream_seed
from .transport import PeerError

__all__ = ["CompressedHookState", "compressed_allreduce_hook", "register_compressed_hook",
           "QSGDHookState", "SignEFHookState", "TopKEFHookState", "RandomKHookState",
           "qsgd_hook", "allreduce_hook", "fp16_compress_hook"]

_PURPOSE_HOOK = 16          # stream_seed purpose: 16 + bucket index
_SHARED_SENDER = -1         # the "sender" of streams every rank draws alike
_FINGERPRINT_BYTES = 1024   # fixed size of the configuration all-gather
STATE_VERSION = 1


def _round4(n: int) -> int:
    return (n + 3) // 4 * 4


def _as_compressor(compressor) -> Compressor:
    if isinstance(compressor, str):
        compressor = from_spec(compressor)
    if not isinstance(compressor, Compressor):
        raise TypeError("compressor must be a moniqua_kernels.compressors.Compressor or a "
                        f"spec string such as 'qsgd:4', got {type(compressor).__name__}")
    if compressor.needs_reference:
        raise ValueError(f"{compressor.name} decodes against the receiver's own tensor (a "
                         "model replica); gradients have none. Use qsgd, sign, topk, "
                         "randomk or a composition of them")
    return compressor


def _is_linear(c: Compressor) -> bool:
    """Payloads that may be summed in transit: the same positions on every rank."""
    return isinstance(c, (Identity, RandomK))


def _shared_stream(c: Compressor) -> bool:
    """Compressors whose payload size depends on the seed: all ranks must draw alike."""
    return isinstance(c, RandomK) or (isinstance(c, Compose) and isinstance(c.sparsifier,
                                                                             RandomK))


class CompressedHookState:
    """State of ``compressed_allreduce_hook``: compressor, residuals, counters.

    compressor      a Compressor or a spec ('qsgd:4', 'sign', 'topk:0.01',
                    'randomk:0.01', 'topk:0.01+qsgd:4', ...); Moniqua is refused (its
                    decode needs a replica that gradients do not have)
    error_feedback  keep the compression residual and add it to the next gradient
    process_group   the DDP process group (default: the world)
    seed            run seed of every random stream (the same on all ranks)
    per_tensor      compress each parameter of a bucket on its own (default: True for
                    ScaledSign, False otherwise)

    Counters: ``step`` (completed steps), ``bytes_sent`` (this rank, cumulative),
    ``last_bytes_sent`` (in the last step): the gradients' payloads and their sizes.  The
    configuration check (1 KB to every other rank at the first step and after
    load_state_dict) is a handshake and, like the gossip algorithms', not counted.
    """

    def __init__(self, compressor="qsgd:8", error_feedback: bool = True,
                 process_group=None, *, seed: int = 0, per_tensor: Optional[bool] = None):
        if not isinstance(error_feedback, bool):
            raise TypeError(f"error_feedback must be a bool, got {error_feedback!r}")
        if per_tensor is not None and not isinstance(per_tensor, bool):
            raise TypeError(f"per_tensor must be a bool or None, got {per_tensor!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be an int, got {seed!r}")
        self.compressor = _as_compressor(compressor)
        self.error_feedback = error_feedback
        self.process_group = process_group
        self.seed = seed
        self.per_tensor = (isinstance(self.compressor, ScaledSign) if per_tensor is None
                           else per_tensor)
        self.step = 0
        self.bytes_sent = 0
        self.last_bytes_sent = 0
        self._step_bytes = 0
        self._verified = False
        self._names: dict = {}       # id(param) -> name, from bind()
        self._residuals: dict = {}   # id(param) -> residual (a view into _flat)
        self._flat: dict = {}        # bucket index -> (param ids, flat residual)
        self._pending: dict = {}     # name -> residual loaded from a checkpoint

    # ------------------------------------------------------------------ configuration
    def bind(self, model: torch.nn.Module) -> "CompressedHookState":
        """Name the parameters (the DDP model or its module) so that residuals are saved
        by name in state_dict(), independent of DDP's bucket layout."""
        module = getattr(model, "module", model)
        self._names = {id(p): name for name, p in module.named_parameters()}
        return self

    def config(self) -> dict:
        """What every rank must agree on (compared before the first exchange)."""
        return {"compressor": repr(self.compressor), "error_feedback": self.error_feedback,
                "per_tensor": self.per_tensor, "seed": self.seed}

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        """Counters and error-feedback residuals by parameter name (needs bind())."""
        residuals = {}
        if self._residuals:
            missing = [k for k in self._residuals if k not in self._names]
            if missing:
                raise ValueError("CompressedHookState.state_dict(): the residuals belong to "
                                 "unnamed parameters; call state.bind(model) (or register "
                                 "with mk.gossip.register_compressed_hook) so they can be "
                                 "saved by name")
            residuals = {self._names[k]: v.detach().clone() for k, v in self._residuals.items()}
        residuals.update({k: v for k, v in self._pending.items() if k not in residuals})
        return {"version": STATE_VERSION, "config": self.config(), "step": self.step,
                "bytes_sent": self.bytes_sent, "last_bytes_sent": self.last_bytes_sent,
                "residuals": residuals}

    def load_state_dict(self, state: dict) -> None:
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            raise ValueError("not a CompressedHookState state_dict (version "
                             f"{state.get('version') if isinstance(state, dict) else None!r}, "
                             f"expected {STATE_VERSION})")
        for key, mine in self.config().items():
            if state["config"].get(key) != mine:
                raise ValueError(f"CompressedHookState.load_state_dict: {key} was "
                                 f"{state['config'].get(key)!r} when saved, this state has "
                                 f"{mine!r}")
        self.step = int(state["step"])
        self.bytes_sent = int(state["bytes_sent"])
        self.last_bytes_sent = int(state["last_bytes_sent"])
        self._residuals, self._flat = {}, {}
        self._pending = dict(state["residuals"])
        self._verified = False  # compare the step with the other ranks again

    def __getstate__(self):  # DDP may pickle the state; process groups do not pickle
        return {k: v for k, v in self.__dict__.items() if k != "process_group"}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.process_group = None

    # ------------------------------------------------------------------ per bucket
    def _residual(self, idx: int, params, grad) -> Optional[torch.Tensor]:
        ids = tuple(id(p) for p in params)
        entry = self._flat.get(idx)
        if entry is not None and entry[0] == ids and entry[1].shape == grad.shape:
            return entry[1]
        parts, found = [], 0
        for p in params:  # after a bucket rebuild, or from a checkpoint
            e = self._residuals.get(id(p))
            if e is None and self._names.get(id(p)) in self._pending:
                e = self._pending.pop(self._names[id(p)])
            if e is None or e.numel() != p.numel():
                # no residual yet for this parameter (first step, or one the checkpoint
                # did not have): zero for it alone (one such parameter once dropped the
                # residuals of the whole bucket, already taken from _pending)
                e = torch.zeros(p.numel())
            else:
                found += 1
            parts.append(e.reshape(-1).to(grad.device, grad.dtype))
        return torch.cat(parts) if found else None  # none: the bucket starts without

    def _keep_residual(self, idx: int, params, sizes, residual: torch.Tensor) -> None:
        self._flat[idx] = (tuple(id(p) for p in params), residual)
        for p, view in zip(params, residual.split(sizes)):
            self._residuals[id(p)] = view

    def _verify(self, group, rank: int, world: int, grad: torch.Tensor) -> None:
        """All-gather this rank's configuration and raise on every rank if any differs."""
        mine = dict(self.config(), step=self.step, bucket_numel=grad.numel())
        text = json.dumps(mine, sort_keys=True).encode()
        if len(text) > _FINGERPRINT_BYTES - 8:  # keep it fixed size: compare a checksum
            mine["compressor"] = f"crc32:{zlib.crc32(mine['compressor'].encode()):08x}"
            text = json.dumps(mine, sort_keys=True).encode()
        buf = torch.zeros(_FINGERPRINT_BYTES, dtype=torch.uint8)
        buf[:len(text)] = torch.tensor(list(text), dtype=torch.uint8)
        buf = buf.to(grad.device)
        parts = [torch.empty_like(buf) for _ in range(world)]
        try:
            dist.all_gather(parts, buf, group=group)
        except Exception as exc:
            raise PeerError(rank, [r for r in range(world) if r != rank],
                            "compressed_allreduce_hook's configuration check",
                            f"{type(exc).__name__}: {exc}") from exc
        configs = [json.loads(bytes(p.cpu().tolist()).rstrip(b"\0")) for p in parts]
        for key in mine:
            values = [c.get(key) for c in configs]
            if any(v != values[0] for v in values):
                groups: dict = {}
                for r, v in enumerate(values):
                    groups.setdefault(json.dumps(v), []).append(r)
                detail = "; ".join(f"ranks {rs}: {v}" for v, rs in groups.items())
                raise ValueError(f"rank {rank}: the DDP compression hooks of the ranks "
                                 f"differ in {key} ({detail}); every rank must build the "
                                 "same CompressedHookState")
        self._verified = True


# No "from __future__ import annotations" in this module: DDP checks that the hook's
# annotations are the real dist.GradBucket / Future[Tensor] objects, not strings.
def compressed_allreduce_hook(state: CompressedHookState, bucket: dist.GradBucket
                              ) -> torch.futures.Future[torch.Tensor]:
    """Average the bucket's gradients over the ranks through state.compressor."""
    group = state.process_group
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    grad = bucket.buffer()
    idx, step, c = bucket.index(), state.step, state.compressor
    if not state._verified:
        state._verify(group, rank, world, grad)
    params = bucket.parameters()
    sizes = [p.numel() for p in params]
    if sum(sizes) != grad.numel():  # not expected from DDP; compress the bucket whole
        sizes, params = [grad.numel()], []  # (its residual is then kept per bucket)
    g = grad.detach()
    if state.error_feedback:
        e = state._residual(idx, params, g)
        g = g + e if e is not None else g.clone()
    segments = sizes if state.per_tensor else [g.numel()]
    linear = _is_linear(c)
    shared = linear or _shared_stream(c)

    def seed_of(r: int) -> int:
        return stream_seed(state.seed, _SHARED_SENDER if shared else r, step,
                           _PURPOSE_HOOK + idx)

    offsets, off = [], 0
    for n in segments:
        offsets.append(off)
        off += _round4(c.stream_span(n))
    own_seed = seed_of(rank)
    payloads = [c.encode(part, seed=own_seed, offset=o)
                for part, o in zip(g.split(segments), offsets)]
    own_decoded = None
    if state.error_feedback or not linear:
        own_decoded = torch.cat([c.decode(p).reshape(-1) for p in payloads])
    if state.error_feedback:
        state._keep_residual(idx, params, sizes, g - own_decoded)
    others = [r for r in range(world) if r != rank]
    if linear:
        what = "all_reduce"
        values = _values_of(payloads)
        work = dist.all_reduce(values, group=group, async_op=True)
        nbytes = ring_allreduce_bytes(values.numel() * values.element_size(), world)
    else:
        what = "all_gather"
        wire = torch.cat([p.to_wire() for p in payloads])
        seg_bytes = None  # every rank's segment sizes, when they depend on the data
        nbytes = 0
        if not c.fixed_size:
            seg_bytes, nbytes = _gather_sizes(payloads, group, rank, world, idx, step, grad)
            wire = torch.cat([wire, wire.new_zeros(max(map(sum, seg_bytes)) - wire.numel())])
        parts = [torch.empty_like(wire) for _ in range(world)]
        work = dist.all_gather(parts, wire, group=group, async_op=True)
        nbytes += (world - 1) * wire.numel()
    state._step_bytes += nbytes
    if bucket.is_last():
        state.last_bytes_sent, state._step_bytes = state._step_bytes, 0
        state.bytes_sent += state.last_bytes_sent
        state.step += 1

    def finish() -> torch.Tensor:
        if linear:
            total = _decode_values(values, payloads, c)
        else:
            total = torch.zeros(grad.shape, dtype=torch.float32, device=grad.device)
            for r, buf in enumerate(parts):  # rank order: the same sum on every rank
                if r == rank:
                    total += own_decoded.float()
                    continue
                total += _decode_wire(buf, c, segments, offsets, grad.dtype, seed_of(r),
                                      seg_bytes[r] if seg_bytes else None).float()
        return grad.copy_(total / world)

    return _after(work, grad, finish, (rank, others, f"compressed_allreduce_hook's {what} "
                                       f"of bucket {idx} at step {step}"))


def _after(work, tensor, finish, failed) -> torch.futures.Future[torch.Tensor]:
    """The future DDP waits on: finish() once work is done, or PeerError(*failed, cause)
    if it failed.  CPU tensors finish on _FINISHER.  CUDA tensors keep the callback:
    NCCL marks a work's future completed when it enqueues the collective (CUDA events
    order the rest), so the callback runs on the hook's thread, in the streams the future
    sets up for it (not run here: no GPU with two ranks)."""
    def waited(wait) -> torch.Tensor:
        try:
            wait()
        except Exception as exc:
            raise PeerError(*failed, f"{type(exc).__name__}: {exc}") from exc
        return finish()

    if tensor.device.type == "cpu":
        return _FINISHER.submit(work, waited)
    return work.get_future().then(lambda fut: waited(fut.wait))


_KEPT_WORKS = 8  # finished works the finisher thread keeps (_Finisher)


class _Finisher:
    """One daemon thread that waits for each CPU bucket's collective, decodes, and
    completes the future DDP waits on; gloo's own threads then run no Python.

    gloo runs a work on its worker thread, completes the work's future there, and drops
    its reference there.  Anything released on that thread that holds a Python object
    takes the GIL: the callback of ``work.get_future().then(finish)``, and the work
    itself when its last reference goes (its thread-local state holds one).  A script
    that frees its DDP model within a few milliseconds of the last backward (Python lets
    a thread wait 5 ms before it asks for the GIL) runs the process group's destructor,
    which joins that worker while holding the GIL: a deadlock at exit.  Measured on this
    2-core box, 2 ranks of a script that trains 50 steps, evaluates and returns: with
    ``.then(finish)`` 7 exits of 25 hung (both ranks in ~ProcessGroupGloo, the worker in
    take_gil releasing the callback); with this thread but the work released here right
    after its wait, 9 of 25 (the worker releasing the work).  So this thread also keeps
    the last ``_KEPT_WORKS`` works: one is released here only after that many newer
    collectives, long after gloo's thread dropped it.  With both, 0 of 42 hung.  The
    thread starts at the first hook call, and again in a forked child."""

    def __init__(self):
        self._lock = threading.Lock()
        self._thread = None
        self._queue = None

    def submit(self, work, finish) -> torch.futures.Future:
        """finish(work.wait)'s result, or its exception, as a future DDP reads."""
        outcome = torch.futures.Future()
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._queue = queue.SimpleQueue()
                self._thread = threading.Thread(target=self._run, args=(self._queue,),
                                                name="moniqua-hook-finisher", daemon=True)
                self._thread.start()
            self._queue.put((work, finish, outcome))
        # DDP reads the future in C++, where only a callback's exception is an error
        # (set_exception stores the exception as the value: "Unable to cast ... to
        # Tensor"); the callback runs on this class's thread, in set_result
        return outcome.then(_result_or_raise)

    @staticmethod
    def _run(jobs) -> None:
        kept = collections.deque(maxlen=_KEPT_WORKS)
        while True:
            work, finish, outcome = jobs.get()
            try:
                done = (finish(work.wait), None)
            except BaseException as exc:  # noqa: BLE001 - DDP raises it in backward
                done = (None, exc)
            outcome.set_result(done)
            kept.append(work)  # (the oldest kept work is released here, by this thread)
            del work, finish, outcome, done


def _result_or_raise(outcome):
    result, exc = outcome.value()
    if exc is not None:
        raise exc
    return result


_FINISHER = _Finisher()


# ------------------------------------------------------------------ torch's two plain hooks
# DDP without a hook, torch's allreduce_hook and its fp16_compress_hook leave each
# bucket's work to gloo's thread, which releases it last: the same hang at exit as above,
# since every backward stashes a Python object (a contextvars copy) in the thread-local
# state that each collective launched from it captures.  Measured on this 2-core box,
# 2 ranks under torchrun of a script that destroys the process group and then frees its
# model (mk.gossip.DataParallel): DDP without a hook hung 4 exits of 20, torch's
# fp16_compress_hook 5 of 20.  These two do the same arithmetic (the division first, as
# torch's do: an fp16 sum could overflow) and finish on _FINISHER; DataParallel uses them
# on CPU.

def allreduce_hook(process_group, bucket: dist.GradBucket
                   ) -> torch.futures.Future[torch.Tensor]:
    """torch's ``default_hooks.allreduce_hook`` (DDP's mean, bit for bit); on CPU the
    collective is finished on this module's thread (the exit hang above).

        ddp_model.register_comm_hook(None, mk.gossip.allreduce_hook)   # None: WORLD"""
    return _mean_allreduce(process_group, bucket, None, "allreduce_hook")


def fp16_compress_hook(process_group, bucket: dist.GradBucket
                       ) -> torch.futures.Future[torch.Tensor]:
    """torch's ``default_hooks.fp16_compress_hook`` (the bucket / world as float16,
    all-reduced, cast back in place), finished like ``allreduce_hook``."""
    return _mean_allreduce(process_group, bucket, torch.float16, "fp16_compress_hook")


def _mean_allreduce(group, bucket, dtype, name: str) -> torch.futures.Future[torch.Tensor]:
    group = dist.group.WORLD if group is None else group
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    buffer, idx = bucket.buffer(), bucket.index()
    sent = buffer.div_(world) if dtype is None else buffer.to(dtype).div_(world)
    work = dist.all_reduce(sent, group=group, async_op=True)
    return _after(work, buffer, lambda: buffer if sent is buffer else buffer.copy_(sent),
                  (rank, [r for r in range(world) if r != rank],
                   f"{name}'s all_reduce of bucket {idx}"))


def _values_of(payloads) -> torch.Tensor:
    """The summable part of linear payloads: their values, in one fresh tensor."""
    return torch.cat([p.tensors["values"].reshape(-1) for p in payloads])


def _decode_values(summed: torch.Tensor, payloads, c) -> torch.Tensor:
    out, start = [], 0
    for p in payloads:
        k = p.tensors["values"].numel()
        p.tensors = {"values": summed[start:start + k]}
        start += k
        out.append(c.decode(p).reshape(-1).float())
    return torch.cat(out)


def _gather_sizes(payloads, group, rank, world, idx, step, grad):
    """Every rank's payload size per segment (for data-dependent sizes, QSGD elias):
    a small all-gather, waited for here so the bucket's collectives keep their order
    on every rank.  Returns (sizes per rank, bytes this rank sent for them)."""
    mine = torch.tensor([p.nbytes for p in payloads], dtype=torch.int64, device=grad.device)
    parts = [torch.empty_like(mine) for _ in range(world)]
    try:
        dist.all_gather(parts, mine, group=group)
    except Exception as exc:
        raise PeerError(rank, [r for r in range(world) if r != rank],
                        f"compressed_allreduce_hook's size all_gather of bucket {idx} at step "
                        f"{step}", f"{type(exc).__name__}: {exc}") from exc
    return [p.tolist() for p in parts], (world - 1) * mine.numel() * mine.element_size()


def _decode_wire(buf, c, segments, offsets, dtype, seed, sizes=None) -> torch.Tensor:
    """Decode one rank's wire buffer, segment by segment (sizes: the segments' bytes
    when they depend on the data, else the compressor's nbytes)."""
    out, start = [], 0
    for k, (n, off) in enumerate(zip(segments, offsets)):
        size = sizes[k] if sizes is not None else c.nbytes(n, dtype, seed, off)
        piece = buf[start:start + size]
        if start % 8:  # from_wire views bytes as float32/int64: needs an aligned start
            piece = piece.clone()
        payload = c.from_wire(piece, n, dtype, seed=seed, offset=off)
        out.append(c.decode(payload).reshape(-1))
        start += size
    return torch.cat(out)


def register_compressed_hook(ddp_model, state=None, **kwargs) -> CompressedHookState:
    """Bind state to ddp_model's parameter names and register the hook; returns state.

    ``register_compressed_hook(ddp, compressor="topk:0.01")`` builds the state from
    CompressedHookState's arguments."""
    if state is None:
        state = CompressedHookState(**kwargs)
    elif kwargs:
        raise TypeError("give a state or CompressedHookState arguments, not both")
    state.bind(ddp_model)
    ddp_model.register_comm_hook(state, compressed_allreduce_hook)
    return state


# ------------------------------------------------------------------ convenience states

class QSGDHookState(CompressedHookState):
    """QSGD as published: bucketed stochastic quantization, no error feedback."""

    def __init__(self, process_group=None, bits: int = 8, bucket_size: int = 512,
                 norm: str = "max", error_feedback: bool = False, seed: int = 0):
        super().__init__(QSGD(bits, bucket_size, norm), error_feedback, process_group,
                         seed=seed)


class SignEFHookState(CompressedHookState):
    """Scaled sign (mean |g| x sign, one scale per tensor) with error feedback:
    EF-SignSGD (Karimireddy et al. 2019), 1 bit per element plus a float per tensor."""

    def __init__(self, process_group=None, error_feedback: bool = True, seed: int = 0,
                 per_tensor: bool = True):
        super().__init__(ScaledSign(), error_feedback, process_group, seed=seed,
                         per_tensor=per_tensor)


class TopKEFHookState(CompressedHookState):
    """Top-k of each bucket with error feedback (Stich et al. 2018): indices + values."""

    def __init__(self, process_group=None, ratio: float = 0.01, error_feedback: bool = True,
                 seed: int = 0, per_tensor: bool = False):
        super().__init__(TopK(ratio), error_feedback, process_group, seed=seed,
                         per_tensor=per_tensor)


class RandomKHookState(CompressedHookState):
    """Random-k with one mask for all ranks (so the kept values are all-reduced), with
    error feedback by default; ``rescale=True`` makes it unbiased instead."""

    def __init__(self, process_group=None, ratio: float = 0.01, error_feedback: bool = True,
                 rescale: bool = False, seed: int = 0):
        super().__init__(RandomK(ratio, rescale), error_feedback, process_group, seed=seed)


# The name of the earlier QSGD-only hook: the generic hook serves its state.
qsgd_hook = compressed_allreduce_hook
