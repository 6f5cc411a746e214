"""AD-PSGD: asynchronous decentralized SGD (Lian, Zhang, Zhang, Liu, ICML 2018,
"Asynchronous Decentralized Parallel Stochastic Gradient Descent", Algorithm 1).

Each worker repeats, on its own schedule: take a minibatch, compute a gradient at its
(possibly stale) model, average its model with one randomly chosen neighbour,
x_i, x_j <- (x_i + x_j) / 2 atomically, and apply the gradient.  No worker waits for the
others' steps: a slow worker does not slow the rest.

How this module runs it on torch.distributed:

- A background communication thread per worker does the averaging, over its own gloo
  group (``DistTransport.split``), so the training thread never blocks on a peer.
- Deadlock avoidance is the paper's bipartite split (Section 4): the topology's graph
  is 2-coloured; *active* workers (colour 0) start every exchange with a random passive
  neighbour, *passive* workers (colour 1) only answer, one request at a time, from
  whichever active asks first.  Waits never form a cycle.  A graph that is not
  bipartite (an odd ring) is refused.
- The averaging is additive, so it commutes with the local steps: an exchange at
  worker i adds 1/2 (x_j - x_i) to a pending delta (x_i the model as of i's last step()
  plus the deltas since), and ``step()``, called after each local optimizer step, folds
  the pending delta into the model and publishes the result.  The gradient of the next
  step is taken at a model at most one step stale, as AD-PSGD allows.  Both ends add
  opposite halves of the same two vectors, so the average over workers is kept exactly.
- An active starts one exchange per local step and may run at most ``max_lag`` steps
  ahead of its finished exchanges (default 1: the exchange of step t overlaps the
  computation of step t + 1, as in the paper's implementation, where every iteration
  averages once).  It waits only for its own thread, never for other workers' steps;
  without the bound a fast worker ran 5-25 local steps per average and the averaged
  model lost 1-4 points on digits (measured, 4 ranks, 1-bit Moniqua).  Passive workers
  run free: their averaging comes from their active neighbours, however slow.  Streams
  and bytes are deterministic per exchange: exchange k of active a uses
  stream_seed(seed, sender, a << 32 | k).
- With Moniqua's quantized exchange (``Moniqua(variant="adpsgd")``) each side sends
  its model at b bits against a theta both know: the active's, carried in the request.
  Theta adapts per pair: at a pair's exchanges 0-7, 8, 16, ... then every 64 the active
  first measures the pair's spread over every coordinate (the passive sends 8-bit codes
  at 32 theta, or the first time at moduli from a bound on the spread, as the
  synchronous check does; one direction, the active measures), and the pair's theta
  becomes margin x a running max of those spreads.  (One theta per
  active, from whichever neighbour it last checked, let a pair with a lagging passive
  exceed it and the models drift apart: measured, 4 ranks, a 20 ms straggler.)
- ``close()`` stops the thread: an active finishes its exchange and tells its passive
  neighbours "bye"; a passive serves until every active neighbour has said bye.  Any
  failure (a peer that died or stalled past the timeout) is raised in the training
  thread at its next step() or close(), naming the peer.  An active with nothing to
  exchange tells its passives it is alive every third of the timeout, so ranks that
  pause together (evaluation, checkpoints) for longer than the timeout go on.

The synchronous emulation (all pairs of a random matching meet at the same step, no
worker runs ahead) remains for the simulator, where time does not exist:
``ADPSGD(..., asynchronous=False)`` and ``Moniqua(variant="adpsgd", asynchronous=False)``.
"""
from __future__ import annotations

import math
import random
import threading
from typing import Optional

import numpy as np
import torch

from .. import ops
from ..reference.packing import packed_nbytes
from . import theta as theta_mod
from . import topology as topology_mod
from .base import GossipAlgorithm, stream_seed
from .dpsgd import DPSGD
from .transport import DistTransport, PeerError

__all__ = ["ADPSGD", "AsyncPairwise", "bipartite_split"]

_REQ, _BYE, _CHECK, _ALIVE = 1, 2, 3, 4
# An idle active tells its passives it is alive this often (a fraction of the timeout):
# a passive's wait for requests has the failure deadline, and with every rank paused
# together (an evaluation, a checkpoint write) longer than the timeout the passives
# blamed live actives (measured: timeout 3 s, a 5 s pause, "waiting for an AD-PSGD
# request with peer(s) [0] ... Timed out").
_ALIVE_EVERY = 1 / 3
_TAG_REQ, _TAG_ACTIVE, _TAG_PASSIVE, _TAG_STAT = 101, 102, 103, 104
_PURPOSE_ASYNC = 3
_HEADER = 4  # int64: kind, exchange number, theta (float64 bits), reserved


def bipartite_split(topology) -> list[int]:
    """0 (active) / 1 (passive) per rank: a 2-colouring of the topology's undirected graph
    by breadth-first search.  Raises TopologyError naming an odd cycle's edge if there is
    none."""
    w = np.asarray(topology.weights(0))
    n = w.shape[0]
    adj = (w > 0) | (w.T > 0)
    np.fill_diagonal(adj, False)
    colour = [-1] * n
    for start in range(n):
        if colour[start] >= 0:
            continue
        colour[start] = 0
        queue = [start]
        while queue:
            u = queue.pop(0)
            for v in np.nonzero(adj[u])[0]:
                v = int(v)
                if colour[v] < 0:
                    colour[v] = 1 - colour[u]
                    queue.append(v)
                elif colour[v] == colour[u]:
                    raise topology_mod.TopologyError(
                        f"asynchronous AD-PSGD pairs active with passive workers (the bipartite "
                        f"split of Lian et al. 2018), but {topology.name} is not bipartite: "
                        f"workers {u} and {v} are neighbours of the same side (an odd cycle). "
                        "Use an even ring, an even torus, or asynchronous=False")
    return colour


class _PlainCodec:
    """Full precision: the float32 values themselves."""
    needs_theta = False

    def nbytes(self, n: int) -> int:
        return 4 * n

    def encode(self, x, theta, seed, offset):
        return x.detach().float().contiguous().view(torch.uint8)

    def decode(self, buf, reference, theta, seed, offset):
        return buf.view(torch.float32).to(reference.dtype)


class _MoniquaCodec:
    needs_theta = True

    def __init__(self, bits: int, rounding: str):
        self.bits, self.rounding = bits, rounding

    def nbytes(self, n: int) -> int:
        return (n * self.bits + 7) // 8

    def encode(self, x, theta, seed, offset):
        return ops.moniqua_encode(x, ops.moniqua_modulus(theta, self.bits, self.rounding),
                                  self.bits, self.rounding, seed, offset)

    def decode(self, buf, reference, theta, seed, offset):
        return ops.moniqua_decode(buf, reference, ops.moniqua_modulus(theta, self.bits,
                                                                     self.rounding),
                                  self.bits, self.rounding, seed, offset)


CHECK_MODULUS = 32.0  # as Moniqua's synchronous check: exact up to 16 theta, to theta / 16


class AsyncPairwise:
    """The communication thread and pending state of one asynchronous worker (see the
    module docstring).  ``alg`` is the GossipAlgorithm whose buckets it averages."""

    def __init__(self, alg: GossipAlgorithm, codec, base_topology, *, theta=None,
                 margin: float = 2.0, check_every: int = 64, monitor=None,
                 weight: float = 0.5, max_lag: Optional[int] = 1):
        if base_topology.time_varying:
            # both ends of a pair must read the same graph: a passive waits for the
            # neighbours of step 0 while the active's may differ (exp-onepeer: ranks timed
            # out waiting for live peers)
            raise topology_mod.TopologyError(
                f"asynchronous AD-PSGD picks a random neighbour of a fixed graph; "
                f"{base_topology.name} changes from step to step: use a static topology "
                "(ring, torus, exponential, ...) or asynchronous=False")
        if not isinstance(alg.transport, DistTransport):
            raise ValueError("asynchronous AD-PSGD runs over torch.distributed (a background "
                             "thread talks to peers on its own schedule); in the simulator, "
                             "where time does not exist, pass asynchronous=False for the "
                             "synchronous emulation")
        if any(b.tensor.device.type != "cpu" for b in alg.buckets):
            raise ValueError("asynchronous AD-PSGD exchanges over gloo: keep the model on the "
                             "CPU, or use asynchronous=False")
        self.alg, self.codec = alg, codec
        self.rank = alg.rank
        self.colour = bipartite_split(base_topology)
        self.active = self.colour[self.rank] == 0
        self.peers = [j for j, _ in base_topology.in_peers(self.rank)
                      if self.colour[j] != self.colour[self.rank]]
        self.theta_schedule = theta if theta is None or callable(theta) else (lambda t, v=float(theta): v)
        self.margin, self.check_every, self.monitor = float(margin), int(check_every), monitor
        self.weight = float(weight)  # 1/2: AD-PSGD's average; Moniqua: gamma / 2
        # Adaptive theta, per pair (an active's neighbours can be far apart: a straggler
        # lags the others): the running max of the pair's checked spreads, the pair's
        # exchange count and the count at its last check.
        self._running: dict = {}
        self._pair_count: dict = {}
        self._last_check: dict = {}
        self._pair_theta: dict = {}
        self.theta: Optional[float] = None   # the theta of the last exchange
        self.net = alg.transport.split()  # collective: every rank builds its engine now
        self.timeout = self.net.timeout
        self._lock = threading.Lock()
        self._pending = [torch.zeros_like(b.tensor) for b in alg.buckets]
        self._published = [b.tensor.detach().clone() for b in alg.buckets]
        self._trigger = threading.Event()
        self._stop = threading.Event()
        self.max_lag = max_lag
        self._done = threading.Condition()
        self._finished = 0        # exchanges this active completed
        self._error: Optional[BaseException] = None
        self.exchanges = 0        # exchanges this worker took part in
        self.bytes_sent = 0       # by the thread since the last step()
        self._steps = 0
        self._rng = random.Random(stream_seed(alg.seed, self.rank, 0, _PURPOSE_ASYNC))
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name=f"adpsgd-{'active' if self.active else 'passive'}"
                                             f"-{self.rank}")
        self._thread.start()

    # ------------------------------------------------------------- training thread
    def step(self) -> int:
        """Fold the averaging done since the last call into the model, publish it, and
        (active) ask for an exchange.  Returns the bytes the thread sent meanwhile."""
        self._raise()
        if self.active and self.max_lag is not None and self.peers:
            with self._done:
                if not self._done.wait_for(lambda: self._finished >= self._steps - self.max_lag
                                           or self._error is not None, self.timeout):
                    raise PeerError(self.rank, self.peers, "an AD-PSGD exchange",
                                    f"no exchange finished within {self.timeout:g} s")
            self._raise()
        with self._lock, torch.no_grad():
            for b, pend, pub in zip(self.alg.buckets, self._pending, self._published):
                b.tensor.add_(pend)
                pend.zero_()
                pub.copy_(b.tensor)
            sent, self.bytes_sent = self.bytes_sent, 0
        self._steps += 1
        if self.active:
            self._trigger.set()
        return sent

    def republish(self) -> None:
        """The model was replaced outside step() (load_state_dict on resume): answer
        exchanges with it from now on, and drop the averaging of the model it replaced.
        Until this ran a passive answered with the model of its construction until its
        first step(): a resumed pair of models at 10 and 20 ended at 5 and 25."""
        with self._lock, torch.no_grad():
            for b, pend, pub in zip(self.alg.buckets, self._pending, self._published):
                pend.zero_()
                pub.copy_(b.tensor)

    def close(self) -> int:
        """Stop and join the thread (see the module docstring); fold the last averaging
        into the model.  Raises the thread's error, naming the peer, if it had one."""
        self._stop.set()
        self._trigger.set()
        self._thread.join(self.timeout + 10)
        if self._thread.is_alive() and self._error is None:
            self._error = PeerError(self.rank, self.peers, "closing AD-PSGD",
                                    "the communication thread did not stop in time")
        with self._lock, torch.no_grad():
            for b, pend in zip(self.alg.buckets, self._pending):
                b.tensor.add_(pend)
                pend.zero_()
            sent, self.bytes_sent = self.bytes_sent, 0
        self._raise()
        return sent

    def _raise(self):
        if self._error is not None:
            err = self._error
            raise err

    # ------------------------------------------------------------- the thread
    def _run(self):
        try:
            torch.set_num_threads(1)
            with torch.no_grad():
                (self._active_loop if self.active else self._passive_loop)()
        except BaseException as exc:  # noqa: BLE001 - handed to the training thread
            self._error = exc
            with self._done:
                self._done.notify_all()

    def _belief(self) -> list:
        """The model as of the last step() plus the averaging since (a copy)."""
        with self._lock:
            return [pub + pend for pub, pend in zip(self._published, self._pending)]

    def _add(self, deltas) -> None:
        with self._lock:
            for pend, d in zip(self._pending, deltas):
                pend.add_(d)

    def _active_loop(self):
        k = 0
        while True:
            if not self._trigger.wait(self.timeout * _ALIVE_EVERY):
                for peer in self.peers:
                    self._send_header(peer, torch.tensor([_ALIVE, k, 0, 0], dtype=torch.int64))
                continue
            self._trigger.clear()
            if self._stop.is_set():
                break
            if not self.peers:
                continue
            peer = self.peers[self._rng.randrange(len(self.peers))]
            n = self._pair_count.get(peer, 0)
            if self.codec.needs_theta and self.theta_schedule is None and \
                    theta_mod.check_steps(n, self.check_every):
                self._check(peer, k)
            theta = self._theta_now(peer)
            header = torch.tensor([_REQ, k, _f2i(theta), 0], dtype=torch.int64)
            self._send_header(peer, header)
            self._exchange(peer, k, theta, active=True)
            self._pair_count[peer] = n + 1
            k += 1
            with self._done:
                self._finished = k
                self._done.notify_all()
        for peer in self.peers:
            self._send_header(peer, torch.tensor([_BYE, k, 0, 0], dtype=torch.int64))

    def _passive_loop(self):
        waiting = set(self.peers)
        while waiting:
            pending = self.net.recv_any(8 * _HEADER, _TAG_REQ, sorted(waiting),
                                        what="waiting for an AD-PSGD request")
            header = pending.wait().view(torch.int64).clone()
            peer = pending.source()
            kind, k = int(header[0]), int(header[1])
            if kind == _BYE:
                waiting.discard(peer)
            elif kind == _ALIVE:
                continue
            elif kind == _CHECK:
                self._answer_check(peer)
            else:
                self._exchange(peer, k, _i2f(int(header[2])), active=False)

    def _send_header(self, peer, header):
        self._count(header.numel() * 8)
        self.net.send(peer, header.view(torch.uint8), _TAG_REQ, "sending an AD-PSGD request").wait()

    def _count(self, nbytes):
        with self._lock:
            self.bytes_sent += nbytes

    def _exchange(self, peer, k, theta, active: bool):
        """One pairwise average: both send their belief (encoded), both add half the
        difference of the decoded pair."""
        a = self.rank if active else peer            # the exchange's id: (active, k)
        exchange = (a << 32) | k
        mine = self._belief()
        own_seed = stream_seed(self.alg.seed, self.rank, exchange, _PURPOSE_ASYNC)
        their_seed = stream_seed(self.alg.seed, peer, exchange, _PURPOSE_ASYNC)
        send_tag, recv_tag = (_TAG_ACTIVE, _TAG_PASSIVE) if active else (_TAG_PASSIVE, _TAG_ACTIVE)
        deltas = []
        for b, x in zip(self.alg.buckets, mine):
            wire = self.codec.encode(x, theta, own_seed, b.stream_offset)
            recv = self.net.recv(peer, self.codec.nbytes(b.numel), recv_tag + 8 * b.index,
                                 "an AD-PSGD exchange")
            send = self.net.send(peer, wire, send_tag + 8 * b.index, "an AD-PSGD exchange")
            got = recv.wait()
            send.wait()
            self._count(wire.numel())
            theirs = self.codec.decode(got, x, theta, their_seed, b.stream_offset)
            own = self.codec.decode(wire, x, theta, own_seed, b.stream_offset)
            deltas.append((theirs - own) * self.weight)
        self._add(deltas)
        with self._lock:
            self.exchanges += 1

    # ------------------------------------------------------------- Moniqua's theta
    def _theta_now(self, peer) -> float:
        if not self.codec.needs_theta:
            return 0.0
        if self.theta_schedule is not None:
            self.theta = float(self.theta_schedule(self._steps))
        else:
            self.theta = self._pair_theta[peer]
        return self.theta

    def _check(self, peer, k):
        """Active: measure the pair's spread over every coordinate; the pair's theta
        follows it.  As the synchronous check (Moniqua._measure_spread), with the active
        measuring: the passive (``_answer_check``) sends its max |x|, then its values as
        8-bit codes at each modulus the active asks for (CHECK_MODULUS x the pair's theta;
        where there is no theta yet, the last check found identical models, or the codes
        read above a quarter of their range, looks from the bound |x_a - x_p| <= max|x_a|
        + max|x_p|, theta.bound_look_spread), until the active asks for modulus 0.
        |x_a - x_p| is the same from both ends, so one direction is enough."""
        mine = self._belief()
        theta = self._pair_theta.get(peer, 0.0)
        self._send_header(peer, torch.tensor([_CHECK, k, 0, 0], dtype=torch.int64))
        scale = _max_abs(mine)
        theirs = self._recv_scalar(peer)
        if not (math.isfinite(scale) and math.isfinite(theirs)):
            self._send_scalar(peer, 0.0)
            raise FloatingPointError(f"rank {self.rank}: non-finite model at an AD-PSGD check "
                                     f"with {peer} (diverged)")
        spread = None
        if theta > 0 and self._running.get(peer, 0.0) > 0:
            modulus = CHECK_MODULUS * theta
            spread = self._look(peer, mine, modulus)
            resolution = modulus * theta_mod.CHECK_RESOLUTION
            if spread > CHECK_MODULUS / 4 * theta:   # a wrap is plausible
                spread = None
        if spread is None:
            spread, resolution = theta_mod.bound_look_spread(
                scale + theirs, max(scale, theirs), lambda m: self._look(peer, mine, m))
        self._send_scalar(peer, 0.0)
        spread += resolution
        # The pair's exchanges since its last check used that check's theta; right after a
        # check none used a theta that was not just measured.
        n = self._pair_count.get(peer, 0)
        if self.monitor is not None and peer in self._pair_theta and \
                n - self._last_check.get(peer, -1) > 1:
            self.monitor.record(k, spread, self._pair_theta[peer], self.rank, speak=True)
        self._last_check[peer] = n
        held = 0.5 * self._running.get(peer, 0.0)
        self._running[peer] = max(spread, held)
        self._pair_theta[peer] = max(self.margin * self._running[peer], scale * 2.0 ** -20,
                                     1e-30)

    def _answer_check(self, peer) -> None:
        """Passive: the other end of the active's ``_check``."""
        mine = self._belief()
        self._send_scalar(peer, _max_abs(mine))
        while True:
            modulus = self._recv_scalar(peer)
            if modulus == 0:
                return
            for b, x in zip(self.alg.buckets, mine):
                wire = ops.moniqua_encode(x, modulus, 8, "nearest")
                self.net.send(peer, wire, _TAG_STAT + 8 * (b.index + 1),
                              "an AD-PSGD check").wait()
                self._count(wire.numel())

    def _look(self, peer, mine, modulus: float) -> float:
        """Active: ask the passive for its codes at ``modulus`` and read the max
        difference from its own values."""
        self._send_scalar(peer, modulus)
        spread = 0.0
        for b, x in zip(self.alg.buckets, mine):
            got = self.net.recv(peer, packed_nbytes(b.numel, 8), _TAG_STAT + 8 * (b.index + 1),
                                "an AD-PSGD check").wait()
            theirs = ops.moniqua_decode(got, x, modulus, 8, "nearest")
            spread = max(spread, float((theirs.float() - x.float()).abs().max()))
        return spread

    def _send_scalar(self, peer, value: float) -> None:
        self.net.send(peer, torch.tensor([value], dtype=torch.float64).view(torch.uint8),
                      _TAG_STAT, "an AD-PSGD check").wait()
        self._count(8)

    def _recv_scalar(self, peer) -> float:
        return float(self.net.recv(peer, 8, _TAG_STAT, "an AD-PSGD check").wait()
                     .view(torch.float64)[0])


def _max_abs(tensors) -> float:
    return max((float(x.abs().max()) for x in tensors), default=0.0)


def _f2i(value: float) -> int:
    return int(np.array([value], dtype=np.float64).view(np.int64)[0])


def _i2f(value: int) -> float:
    return float(np.array([value], dtype=np.int64).view(np.float64)[0])


class ADPSGD(DPSGD):
    """AD-PSGD without quantization.

    asynchronous=True (default; torch.distributed, CPU tensors): the background thread
    of ``AsyncPairwise`` (module docstring).  Call ``step()`` after every local
    optimizer step (``begin()`` does nothing, ``end()`` folds in the averaging) and
    ``close()`` when training ends.

    asynchronous=False: the synchronous emulation for the simulator: D-PSGD over a random
    matching of the topology's edges (weights 1/2), a new matching every step from the
    shared seed.
    """

    name = "adpsgd"

    def __init__(self, model_or_params, topology="ring", process_group=None, *,
                 asynchronous: bool = True, **kw):
        self.asynchronous = bool(asynchronous)
        self.engine = None
        self._matching_seed = int(kw.get("seed", 0))
        super().__init__(model_or_params, topology, process_group, **kw)

    def _make_topology(self, topology):
        self._base = topology_mod.make(topology, self.world_size)
        if self.asynchronous:
            return self._base
        return topology_mod.random_matching(self._base, self._matching_seed)

    def fingerprint(self) -> dict:
        return {**super().fingerprint(), "asynchronous": self.asynchronous}

    def _after_init(self) -> None:
        super()._after_init()
        if self.asynchronous:
            self.engine = AsyncPairwise(self, _PlainCodec(), self._base)

    def _begin(self):
        if self.engine is None:
            super()._begin()

    def _end(self):
        if self.engine is None:
            super()._end()
        else:
            self._step_bytes += self.engine.step()

    def close(self) -> None:
        """Stop the communication thread (asynchronous); a no-op otherwise."""
        if self.engine is not None:
            self.bytes_sent += self.engine.close()
