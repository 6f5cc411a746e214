"""Moving uint8 payloads between workers: torch.distributed or in memory.

Both transports have one interface:

    pending = t.exchange(sends=[(peer, buf), ...], recvs=[(peer, nbytes), ...], tag=)
    ...                                   # overlap: compute while the bytes move
    got = pending.wait()                  # {peer: uint8 tensor of nbytes}
    t.all_reduce_(tensor, op="sum"|"max") # collectives (theta monitor, all-reduce);
    t.all_gather(tensor) -> [tensor per rank]   # *_async variants return a pending
    t.broadcast_(tensor, src)

``DistTransport`` runs over a ``torch.distributed`` process group with
``batch_isend_irecv`` (gloo on CPU, NCCL on GPU).  Every wait has a deadline; a peer
that died or stalled raises ``PeerError`` naming it instead of hanging.
``InMemoryTransport`` serves n workers of one process (the simulator runs each in a
thread); its waits have the same deadline and error.

Send buffers are not copied by the dist transport: the caller must not modify them
until ``wait()`` returns (the algorithms keep them alive in their own state).
"""
from __future__ import annotations

import datetime
import threading
import time
from collections import deque
from typing import Optional, Sequence

import torch
import torch.distributed as dist
# Imported here, before any process group exists, on purpose.  torch.distributed.nn's
# functions take ``group=group.WORLD`` as a default argument, evaluated when that module
# is first imported; torch.optim imports it (through torch._dynamo) on the first
# optimizer.  Imported after init_process_group, those defaults keep the default group
# alive after destroy_process_group, so its gloo worker threads (pt_gloo_runloop) are
# never joined; one that is still releasing the last collective's tensors when the
# interpreter finalizes cannot take the GIL and the process dies with "terminate called
# without an active exception" (SIGABRT).  Found with a core dump of
# tests/test_cli.py::test_train_resnet20_on_generated_cifar (1 abort in 25 runs under
# load); tests/test_teardown.py checks that no gloo thread survives train.
import torch.distributed.nn  # noqa: F401,E402

__all__ = ["PeerError", "Transport", "DistTransport", "InMemoryNetwork", "InMemoryTransport"]

DEFAULT_TIMEOUT = 60.0


class PeerError(RuntimeError):
    """Communication with a peer failed or timed out."""

    def __init__(self, rank: int, peers: Sequence[int], what: str, cause: str = ""):
        self.rank, self.peers = rank, list(peers)
        msg = f"rank {rank}: {what} with peer(s) {self.peers} failed"
        super().__init__(msg + (f": {cause}" if cause else ""))


class Transport:
    rank: int
    world_size: int
    timeout: float

    def exchange(self, sends, recvs, tag: int = 0):
        """Post one round: sends [(peer, uint8 tensor)], recvs [(peer, nbytes or a
        uint8 tensor to receive into)].  Returns a pending whose wait() gives
        {peer: received bytes} (the given tensor where one was given)."""
        raise NotImplementedError

    def all_reduce_(self, tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
        raise NotImplementedError

    def all_gather(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        raise NotImplementedError

    def broadcast_(self, tensor: torch.Tensor, src: int = 0) -> torch.Tensor:
        raise NotImplementedError


# --------------------------------------------------------------------------- torch.distributed

class _DistPending:
    """Work handles of one exchange or collective; wait() applies the deadline."""

    def __init__(self, transport, works, ops, result, what, collective=False):
        self._t, self._works, self._ops, self._recv, self._what = (
            transport, works, ops, result, what)
        self._collective = collective

    def wait(self):
        t = self._t
        deadline = time.monotonic() + t.timeout
        # gloo returns one work per op; NCCL may coalesce them into one, in which case
        # the failure can only be narrowed to the whole batch of peers.  A collective
        # cannot tell which peer stalled it: all others are named.
        per_op = len(self._works) == len(self._ops) and not self._collective
        for k, work in enumerate(self._works):
            if self._collective:
                peers = self._ops[0][1]
            else:
                peers = [self._ops[k][1]] if per_op else sorted({p for _, p in self._ops})
            left = max(deadline - time.monotonic(), 0.001)
            try:
                ok = work.wait(datetime.timedelta(seconds=left))
            except Exception as exc:  # gloo: connection closed / timed out; NCCL: watchdog
                raise PeerError(t.rank, peers, self._what, f"{type(exc).__name__}: {exc}") from exc
            if ok is False:
                raise PeerError(t.rank, peers, self._what, f"no completion within {t.timeout:g} s")
        return self._recv


class DistTransport(Transport):
    """Point-to-point exchange over a torch.distributed process group.

    Ranks in every call are ranks *within* ``group``; they are translated to global
    ranks for the P2P calls.  timeout (seconds) bounds every wait; for gloo, pass the
    same or a larger timeout to ``init_process_group`` so its own deadline does not
    fire first with a less specific message.
    """

    def __init__(self, group=None, timeout: float = DEFAULT_TIMEOUT):
        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError("torch.distributed is not initialized: call "
                               "dist.init_process_group(...) first, or use the simulator")
        self.group = group
        self.rank = dist.get_rank(group)
        self.world_size = dist.get_world_size(group)
        self.timeout = float(timeout)
        self._global = None if group is None or group == dist.GroupMember.WORLD else [
            dist.get_global_rank(group, r) for r in range(self.world_size)]

    def _g(self, r: int) -> int:
        return r if self._global is None else self._global[r]

    def exchange(self, sends, recvs, tag: int = 0):
        ops, meta, out = [], [], {}
        # Receives are posted before sends.  gloo sends a payload only once the receiver
        # has said it is ready, and says so on the same TCP stream as its own payloads:
        # a rank that starts sending first makes its "ready" wait behind megabytes of
        # data, and the two directions of a link take turns.  Measured on netbench's
        # 4-rank ring at 100 Mbit/s, 9.8 MB to each neighbour: sends first, 1.66-3.25 s
        # per exchange (alternating); receives first, 1.67-1.69 s (98% of the link).
        for peer, slot in recvs:
            buf = slot if isinstance(slot, torch.Tensor) else torch.empty(
                int(slot), dtype=torch.uint8, device=self._device(sends))
            out[peer] = buf
            ops.append(dist.P2POp(dist.irecv, buf, self._g(peer), self.group, tag))
            meta.append(("recv", peer))
        for peer, buf in sends:
            ops.append(dist.P2POp(dist.isend, buf, self._g(peer), self.group, tag))
            meta.append(("send", peer))
        if not ops:
            return _DistPending(self, [], [], out, "exchange")
        try:
            works = dist.batch_isend_irecv(ops)
        except Exception as exc:
            raise PeerError(self.rank, sorted({p for _, p in meta}), "posting an exchange",
                            f"{type(exc).__name__}: {exc}") from exc
        return _DistPending(self, works, meta, out, "exchange")

    def _device(self, sends):
        if sends:
            return sends[0][1].device
        backend = dist.get_backend(self.group)
        return torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else "cpu"

    def _collective_async(self, what, fn, result):
        others = [r for r in range(self.world_size) if r != self.rank]
        try:
            work = fn()
        except Exception as exc:
            raise PeerError(self.rank, others, what, f"{type(exc).__name__}: {exc}") from exc
        return _DistPending(self, [work], [(what, others)], result, what, collective=True)

    def _collective(self, what, fn):
        self._collective_async(what, fn, None).wait()

    def all_reduce_async(self, tensor, op="sum"):
        """Start an in-place all-reduce; ``.wait()`` returns the tensor."""
        rop = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}[op]
        return self._collective_async(
            f"all_reduce({op})",
            lambda: dist.all_reduce(tensor, rop, group=self.group, async_op=True), tensor)

    def all_reduce_(self, tensor, op="sum"):
        return self.all_reduce_async(tensor, op).wait()

    def all_gather_async(self, tensor):
        """Start an all-gather; ``.wait()`` returns the list of tensors in rank order."""
        out = [torch.empty_like(tensor) for _ in range(self.world_size)]
        return self._collective_async(
            "all_gather", lambda: dist.all_gather(out, tensor, group=self.group, async_op=True),
            out)

    def all_gather(self, tensor):
        return self.all_gather_async(tensor).wait()

    def broadcast_(self, tensor, src=0):
        self._collective("broadcast", lambda: dist.broadcast(tensor, self._g(src),
                                                             group=self.group, async_op=True))
        return tensor

    # ------------------------------------------------ asynchronous gossip (AD-PSGD)
    def split(self) -> "DistTransport":
        """A transport over a new gloo group of the same ranks (a collective: every rank
        calls it), for traffic another thread drives: the training thread's collectives
        and the communication thread's messages then never interleave in one group."""
        ranks = [self._g(r) for r in range(self.world_size)]
        try:
            group = dist.new_group(ranks=ranks, backend="gloo",
                                   timeout=datetime.timedelta(seconds=self.timeout))
        except Exception as exc:
            raise PeerError(self.rank, [r for r in range(self.world_size) if r != self.rank],
                            "creating a process group", f"{type(exc).__name__}: {exc}") from exc
        return DistTransport(group, self.timeout)

    def send(self, peer: int, buf: torch.Tensor, tag: int, what: str = "send"):
        """Post one send; ``.wait()`` completes it (the buffer must live until then)."""
        return self._p2p(what, [peer], lambda: dist.isend(buf, self._g(peer), self.group, tag),
                         buf)

    def recv(self, peer: int, nbytes: int, tag: int, what: str = "receive"):
        """Post one receive of nbytes from peer; ``.wait()`` returns the uint8 buffer."""
        buf = torch.empty(int(nbytes), dtype=torch.uint8)
        return self._p2p(what, [peer], lambda: dist.irecv(buf, self._g(peer), self.group, tag),
                         buf)

    def recv_any(self, nbytes: int, tag: int, expected: Sequence[int], what: str = "receive"):
        """Post a receive from whichever rank sends first with this tag; ``.wait()``
        returns the buffer and ``.source()`` the sender (a rank within the group).
        ``expected`` names the peers a timeout blames."""
        buf = torch.empty(int(nbytes), dtype=torch.uint8)
        pending = self._p2p(what, list(expected), lambda: self._group().recv_anysource([buf], tag),
                            buf)
        return pending

    def _group(self):
        return self.group if self.group is not None else dist.distributed_c10d._get_default_group()

    def _p2p(self, what, peers, post, result):
        try:
            work = post()
        except Exception as exc:
            raise PeerError(self.rank, peers, what, f"{type(exc).__name__}: {exc}") from exc
        return _P2PPending(self, work, peers, result, what)


class _P2PPending:
    """One posted send or receive; wait(timeout) applies the deadline (the transport's
    by default) and names the peer(s) on failure."""

    def __init__(self, transport, work, peers, result, what):
        self._t, self._work, self._peers, self._result, self._what = (
            transport, work, peers, result, what)

    def wait(self, timeout: Optional[float] = None):
        t = self._t
        limit = t.timeout if timeout is None else timeout
        try:
            ok = self._work.wait(datetime.timedelta(seconds=max(limit, 0.001)))
        except Exception as exc:
            raise PeerError(t.rank, self._peers, self._what, f"{type(exc).__name__}: {exc}") from exc
        if ok is False:
            raise PeerError(t.rank, self._peers, self._what, f"no completion within {limit:g} s")
        return self._result

    def source(self) -> int:
        """The sender of a completed receive-from-any (a rank within the group)."""
        return int(self._work._source_rank())


# --------------------------------------------------------------------------- in memory

class InMemoryNetwork:
    """Mailboxes between n in-process workers.  ``fail(reason)`` wakes every waiter
    with an error (a worker thread that raised must not leave the others waiting)."""

    def __init__(self, n: int, timeout: float = DEFAULT_TIMEOUT):
        self.n, self.timeout = n, float(timeout)
        self._boxes: dict[tuple[int, int, int], deque] = {}
        self._cond = threading.Condition()
        self.failed: Optional[str] = None
        self.messages = 0

    def transport(self, rank: int) -> "InMemoryTransport":
        return InMemoryTransport(self, rank)

    def fail(self, reason: str) -> None:
        with self._cond:
            if self.failed is None:
                self.failed = reason
            self._cond.notify_all()

    def _put(self, src, dst, tag, buf):
        with self._cond:
            self._boxes.setdefault((src, dst, tag), deque()).append(buf)
            self.messages += 1
            self._cond.notify_all()

    def _get(self, src, dst, tag, deadline, what):
        with self._cond:
            while True:
                box = self._boxes.get((src, dst, tag))
                if box:
                    return box.popleft()
                if self.failed is not None:
                    raise PeerError(dst, [src], what, f"network failed: {self.failed}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise PeerError(dst, [src], what, f"no message within {self.timeout:g} s")
                self._cond.wait(left)


class _MemPending:
    def __init__(self, transport, recvs, tag, what):
        self._t, self._recvs, self._tag, self._what = transport, list(recvs), tag, what

    def wait(self) -> dict[int, torch.Tensor]:
        t = self._t
        deadline = time.monotonic() + t.timeout
        out = {}
        for peer, slot in self._recvs:
            buf = t.network._get(peer, t.rank, self._tag, deadline, self._what)
            nbytes = slot.numel() if isinstance(slot, torch.Tensor) else int(slot)
            if buf.numel() != nbytes:
                raise PeerError(t.rank, [peer], self._what,
                                f"expected {nbytes} bytes, got {buf.numel()}")
            out[peer] = slot.copy_(buf) if isinstance(slot, torch.Tensor) else buf
        return out


class _MemGather:
    def __init__(self, transport, own):
        self._t, self._own = transport, own

    def wait(self) -> list[torch.Tensor]:
        t = self._t
        deadline = time.monotonic() + t.timeout
        return [self._own if r == t.rank else
                t.network._get(r, t.rank, _TAG_GATHER, deadline, "all_gather")
                for r in range(t.world_size)]


class _MemReduce:
    """Sums (or maxes) the gathered tensors in rank order: deterministic."""

    def __init__(self, gather, tensor, op):
        self._g, self._tensor, self._op = gather, tensor, op

    def wait(self) -> torch.Tensor:
        parts = self._g.wait()
        acc = parts[0].clone()
        for p in parts[1:]:
            if self._op == "sum":
                acc += p
            else:
                torch.maximum(acc, p, out=acc)
        return self._tensor.copy_(acc)


# Tags for the in-memory collectives, apart from the algorithms' exchange tags.
_TAG_GATHER, _TAG_BCAST = -1, -2


class InMemoryTransport(Transport):
    """One worker's end of an InMemoryNetwork (same interface as DistTransport).

    Payloads are copied when sent, as if they had left the process.  Collectives sum
    in rank order, so they are deterministic."""

    def __init__(self, network: InMemoryNetwork, rank: int):
        if not 0 <= rank < network.n:
            raise ValueError(f"rank {rank} outside [0, {network.n})")
        self.network, self.rank, self.world_size = network, rank, network.n
        self.timeout = network.timeout

    def exchange(self, sends, recvs, tag: int = 0):
        for peer, buf in sends:
            self.network._put(self.rank, peer, tag, buf.detach().clone())
        return _MemPending(self, recvs, tag, "exchange")

    def all_gather_async(self, tensor):
        for r in range(self.world_size):
            if r != self.rank:
                self.network._put(self.rank, r, _TAG_GATHER, tensor.detach().clone())
        return _MemGather(self, tensor.detach().clone())

    def all_gather(self, tensor):
        return self.all_gather_async(tensor).wait()

    def all_reduce_async(self, tensor, op="sum"):
        return _MemReduce(self.all_gather_async(tensor), tensor, op)

    def all_reduce_(self, tensor, op="sum"):
        return self.all_reduce_async(tensor, op).wait()

    def broadcast_(self, tensor, src=0):
        if self.rank == src:
            for r in range(self.world_size):
                if r != src:
                    self.network._put(src, r, _TAG_BCAST, tensor.detach().clone())
        else:
            tensor.copy_(self.network._get(src, self.rank, _TAG_BCAST,
                                           time.monotonic() + self.timeout, "broadcast"))
        return tensor
