"""What every gossip algorithm shares: flat buffers, transport, seeds, byte counts.

Use (any algorithm):

    g = mk.gossip.Moniqua(model, topology="ring", theta=0.05, bits=1)
    for x, y in loader:
        loss_fn(model(x), y).backward()
        opt.step(); opt.zero_grad()
        g.step()                          # communicate and mix, after the local step

or overlap the communication with the backward pass (the mix then uses the model the
gradient was taken at, as D-PSGD's analysis has it):

        g.begin()                         # encode the current model, post sends/recvs
        loss_fn(model(x), y).backward()
        g.end()                           # wait, decode, mix in place
        opt.step(); opt.zero_grad()

Seeds are never sent: ``stream_seed(run_seed, sender, step, purpose)`` derives every
random stream from what both ends know, and every bucket gets its own stream offset.
"""
from __future__ import annotations

import hashlib
import math
from typing import Optional

import numpy as np
import torch

from . import handshake
from . import topology as topology_mod
from .flat import FlatParams
from .transport import DEFAULT_TIMEOUT, DistTransport, Transport

__all__ = ["GossipAlgorithm", "stream_seed", "ring_allreduce_bytes"]

_MASK64 = (1 << 64) - 1

# Purposes keep the streams of one (sender, step) apart.
PURPOSE_PAYLOAD, PURPOSE_MONITOR, PURPOSE_MATCHING = 0, 1, 2


def _splitmix64(z: int) -> int:
    z = (z + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def stream_seed(run_seed: int, sender: int, step: int, purpose: int = 0) -> int:
    """The Philox seed of sender's payload at step: splitmix64 folded over
    (run_seed, sender, step, purpose), as a signed int64.  Receivers call this with the
    sender's rank to regenerate dither, random-k masks and buffer sizes."""
    h = _splitmix64(int(run_seed) & _MASK64)
    for v in (sender, step, purpose):
        h = _splitmix64(h ^ (int(v) & _MASK64))
    return h - (1 << 64) if h >= 1 << 63 else h


def ring_allreduce_bytes(nbytes: int, n: int) -> int:
    """Bytes one worker sends in a bandwidth-optimal ring all-reduce of nbytes:
    2 (n - 1) / n * nbytes, rounded up (the backend may pick another algorithm)."""
    return 0 if n <= 1 else math.ceil(2 * (n - 1) * nbytes / n)


class _AgreeAfterInit(type):
    """Runs ``_after_init`` once the subclass's __init__ has set every field, so the
    handshake sees the whole configuration before anything model-sized travels."""

    def __call__(cls, *args, **kwargs):
        obj = super().__call__(*args, **kwargs)
        obj._after_init()
        return obj


class GossipAlgorithm(metaclass=_AgreeAfterInit):
    """Base class.  Subclasses implement ``_begin`` (encode, post sends) and ``_end``
    (wait, decode, update), call ``self._exchange`` so bytes are counted and
    ``self._wait`` on every pending exchange, and extend ``fingerprint()`` with every
    setting both ends of a message must share.

    Construction ends with a handshake (gossip.handshake): the ranks compare their
    fingerprints and every rank raises ConfigMismatch naming the fields that differ,
    before the initial broadcast or any exchange.

    Arguments shared by all algorithms:
      model_or_params  an nn.Module, an iterable of parameters, or param groups
      topology         a name ('ring', 'torus', 'exponential', 'exp-onepeer',
                       'complete', 'star'), a Topology, or a weight matrix
      process_group    the torch.distributed group (default: the world)
      transport        an explicit transport (the simulator passes an in-memory one);
                       when given, process_group is ignored
      seed             run seed for every random stream (same on all workers)
      bucket_numel     cut the flat buffers into buckets of about this many elements
      per_layer        one bucket per parameter tensor, so a compressor's scale (sign's
                       mean |x|, QSGD's bucket scales, Moniqua's stream) is per layer,
                       as CHOCO-SGD's experiments compress (overrides bucket_numel)
      timeout          seconds any wait may take before PeerError names the peer
      sync_params      broadcast rank 0's parameters at construction (consensus start)
    """

    name = "gossip"
    time_varying_ok = True
    engine = None   # asynchronous AD-PSGD's communication thread (adpsgd.AsyncPairwise)

    def __init__(self, model_or_params, topology="ring", process_group=None, *,
                 transport: Optional[Transport] = None, seed: int = 0,
                 bucket_numel: Optional[int] = None, per_layer: bool = False,
                 timeout: float = DEFAULT_TIMEOUT, sync_params: bool = True):
        self.transport = transport if transport is not None else DistTransport(process_group,
                                                                               timeout)
        self.rank, self.world_size = self.transport.rank, self.transport.world_size
        self.topology = self._make_topology(topology)
        if self.topology.time_varying and not self.time_varying_ok:
            raise topology_mod.TopologyError(
                f"{type(self).__name__} keeps per-neighbour state and needs a static topology, "
                f"got {self.topology.name}")
        self.seed = int(seed)
        self.per_layer = bool(per_layer)
        self.flat = FlatParams(model_or_params, 1 if self.per_layer else bucket_numel)
        self._sync_params = bool(sync_params)
        self.step_count = 0
        self.bytes_sent = 0        # cumulative, this worker
        self.last_bytes_sent = 0   # in the last completed step
        self.last_rounds = 0       # sequential communication rounds in the last step
        self._step_bytes = 0
        self._step_rounds = 0
        self._in_step = False
        self.timer = None          # a timing.StepTimer once enable_timing() ran
        self._slots: dict = {}     # persistent payload buffers, see _slot()

    def _after_init(self) -> None:
        self.agree()
        if self._sync_params and self.world_size > 1:
            with torch.no_grad():
                for buf in self.flat.buffers:
                    self.transport.broadcast_(buf, 0)

    def _make_topology(self, topology):
        return topology_mod.make(topology, self.world_size)

    def fingerprint(self) -> dict:
        """Everything both ends of a message must share.  Subclasses add their own
        fields (bits, rounding, theta schedule, gamma, compressor, ...)."""
        top = self.topology
        w = np.round(np.asarray(top.weights(0), dtype=np.float64), 12)
        digest = hashlib.sha256(w.tobytes()).hexdigest()[:12]
        return {"algorithm": type(self).__name__, "world_size": self.world_size,
                "topology": f"{top.name}, period {top.period}, W sha256:{digest}",
                "seed": self.seed, "step": self.step_count,
                # it decides the start's collectives: the broadcast, or the replicas'
                # fetch (a mismatch gave gloo's size abort or a timeout, not a reason)
                "sync_params": self._sync_params,
                "buckets": [b.numel for b in self.buckets],
                "dtypes": sorted({str(b.tensor.dtype) for b in self.buckets}),
                "device_type": self.buckets[0].tensor.device.type}

    def agree(self, **extra) -> None:
        """The handshake: every rank compares fingerprint() (plus ``extra``) with the
        others' and raises handshake.ConfigMismatch naming what differs.  A collective:
        every rank calls it (construction and load_state_dict do)."""
        handshake.agree(self.transport, {**self.fingerprint(), **extra},
                        device=self.buckets[0].tensor.device)

    # ----------------------------------------------------------------- public API
    @property
    def buckets(self):
        return self.flat.buckets

    def step(self) -> None:
        """begin() then end(): one communication round after the local step."""
        self.begin()
        self.end()

    def begin(self) -> None:
        if self._in_step:
            raise RuntimeError(f"{type(self).__name__}.begin() called twice without end()")
        self._in_step = True
        self._step_bytes, self._step_rounds = 0, 0
        if self.timer is not None:
            self.timer.start("encode")
        with torch.no_grad():
            self._begin()
        if self.timer is not None:
            self.timer.stop()

    def end(self) -> None:
        if not self._in_step:
            raise RuntimeError(f"{type(self).__name__}.end() called without begin()")
        if self.timer is not None:
            self.timer.start("decode_mix")
        with torch.no_grad():
            self._end()
        if self.timer is not None:
            self.timer.stop()
        self._in_step = False
        if self.buckets[0].tensor.is_cuda:
            # The CUDA kernels count non-finite inputs in a device-side flag instead of
            # synchronising per op; end() is where gossip reads it (one synchronisation
            # per step, after the step's kernels are queued).  On CPU the ops raise at
            # once.  Raises KernelInputError naming the op.
            from ..ops import check_errors
            check_errors(self.buckets[0].tensor.device)
        self.last_bytes_sent, self.last_rounds = self._step_bytes, self._step_rounds
        self.bytes_sent += self._step_bytes
        self.step_count += 1

    def enable_timing(self):
        """Time every later step's encode, wire wait and decode+mix (gossip.timing);
        returns the StepTimer whose ``seconds`` accumulate them."""
        from .timing import StepTimer, TimedTransport
        if self.timer is None:
            self.timer = StepTimer()
            self.transport = TimedTransport(self.transport, self.timer)
        return self.timer

    def consensus_distance(self) -> float:
        """(1/n) sum_i ||x_i - x_bar||^2 over all workers: a collective (every worker
        must call it), for diagnostics; its bytes are not counted."""
        x = self.flat.flat().double()
        mean = self.transport.all_reduce_(x.clone(), "sum") / self.world_size
        d = (x - mean).square().sum().reshape(1)  # on x's device: NCCL reduces GPU tensors
        return float(self.transport.all_reduce_(d, "sum")) / self.world_size

    # What carries an algorithm from one step to the next, for checkpoints: counters, and
    # per-bucket tensors (CHOCO's x_hat replicas, D2's previous step).  Subclasses extend
    # these; streams need no state, they derive from (seed, sender, step).
    _STATE_COUNTERS: tuple = ("step_count", "bytes_sent", "last_bytes_sent", "last_rounds")
    _STATE_TENSORS: tuple = ()

    def state_dict(self) -> dict:
        """Counters and per-bucket state tensors (the model itself is the caller's)."""
        if self._in_step:
            raise RuntimeError("state_dict() between begin() and end(): finish the step first")
        tensors = {name: [t.detach().clone() for t in getattr(self, name)]
                   for name in self._STATE_TENSORS if getattr(self, name, None) is not None}
        return {"algorithm": type(self).__name__,
                "counters": {name: getattr(self, name) for name in self._STATE_COUNTERS},
                "tensors": tensors}

    def load_state_dict(self, state: dict, agree: bool = True) -> None:
        """Restore counters and state tensors; then (``agree=True``, a collective) the
        ranks check that they resumed the same configuration at the same step."""
        if state.get("algorithm") != type(self).__name__:
            raise ValueError(f"state of {state.get('algorithm')!r} cannot be loaded into "
                             f"{type(self).__name__}")
        for name, value in state["counters"].items():
            setattr(self, name, value)
        for name, saved in state["tensors"].items():
            current = getattr(self, name)
            if len(saved) != len(current) or any(a.shape != b.shape for a, b in zip(saved, current)):
                raise ValueError(f"{name}: saved bucket shapes do not match this model's")
            with torch.no_grad():
                for dst, src in zip(current, saved):
                    dst.copy_(src)
        if self.engine is not None:
            # before the handshake: no active starts an exchange until every rank is past it
            self.engine.republish()
        if agree:
            self.agree()

    def bits_per_element(self) -> float:
        """Average bits sent per model element per step so far."""
        steps = max(self.step_count, 1)
        return 8.0 * self.bytes_sent / (steps * max(self.flat.numel, 1))

    # ----------------------------------------------------------------- for subclasses
    def _begin(self) -> None:
        raise NotImplementedError

    def _end(self) -> None:
        raise NotImplementedError

    def _wait(self, pending):
        """The one place the algorithms wait for communication."""
        return pending.wait()

    def _slot(self, kind: str, bucket: int, peer: int, nbytes: int,
              like: torch.Tensor) -> torch.Tensor:
        """A uint8 buffer of ``nbytes`` kept from step to step for one (kind, bucket,
        peer): the payloads sent and received reuse their memory, so a step allocates
        nothing model-sized.  A step may write a slot again only after the exchange
        that used it was waited for (end() waits for every exchange of its step)."""
        key = (kind, bucket, peer)
        buf = self._slots.get(key)
        if buf is None or buf.numel() != nbytes or buf.device != like.device:
            buf = self._slots[key] = torch.empty(nbytes, dtype=torch.uint8, device=like.device)
        return buf

    def _recv_slots(self, bucket, peers, nbytes: int) -> list:
        """recvs for _exchange: one persistent receive buffer per peer of a bucket."""
        return [(j, self._slot("recv", bucket.index, j, int(nbytes), bucket.tensor))
                for j in peers]

    def _exchange(self, sends, recvs, tag: int = 0):
        """Post one round; count its exact send bytes."""
        self._step_bytes += sum(int(buf.numel()) * buf.element_size() for _, buf in sends)
        self._step_rounds += 1
        return self.transport.exchange(sends, recvs, tag)

    def _count_collective(self, nbytes: int) -> None:
        self._step_bytes += ring_allreduce_bytes(nbytes, self.world_size)
        self._step_rounds += 2 * (self.world_size - 1)

    def _seed(self, sender: int, step: Optional[int] = None, purpose: int = PURPOSE_PAYLOAD):
        return stream_seed(self.seed, sender, self.step_count if step is None else step,
                           purpose)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(rank={self.rank}/{self.world_size}, "
                f"topology={self.topology.name}, buckets={len(self.buckets)}, "
                f"numel={self.flat.numel})")
