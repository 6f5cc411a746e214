"""Where a gossip step's time goes: encode, wire wait, decode and mix.

    timer = algorithm.enable_timing()   # off by default; costs two clock reads per wait
    ...                                 # training: algorithm.step() as usual
    timer.seconds                       # {"encode": s, "wire": s, "decode_mix": s}, cumulative

``enable_timing`` wraps the algorithm's transport so that every wait on the network
(an exchange's ``wait()``, a collective, a broadcast) is added to ``wire``, and the base
class times ``begin()`` and ``end()``: what ``begin()`` spends outside network waits is
``encode`` (compressing, snapshotting, posting the sends), what ``end()`` spends outside
them is ``decode_mix``.  The wire time is the wall time spent blocked on the network,
which includes waiting for a slower peer: on a synchronous step that is part of the
cost of the exchange.  A caller adds the local step's time itself (``add``).
"""
from __future__ import annotations

import time

from .transport import Transport

__all__ = ["StepTimer", "TimedTransport", "SECTIONS"]

SECTIONS = ("encode", "wire", "decode_mix")


class StepTimer:
    """Cumulative seconds per section.  ``start(name)`` / ``stop()`` bracket a phase;
    wire time recorded inside the bracket is not counted again in the phase."""

    def __init__(self):
        self.seconds: dict[str, float] = dict.fromkeys(SECTIONS, 0.0)
        self._open = None

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    def start(self, name: str) -> None:
        self._open = (name, time.perf_counter(), self.seconds["wire"])

    def stop(self) -> None:
        if self._open is None:
            return
        name, t0, wire0 = self._open
        self._open = None
        self.add(name, time.perf_counter() - t0 - (self.seconds["wire"] - wire0))

    def reset(self) -> None:
        self.seconds = dict.fromkeys(SECTIONS, 0.0)
        self._open = None


class _TimedPending:
    def __init__(self, pending, timer: StepTimer):
        self._pending, self._timer = pending, timer

    def wait(self):
        t0 = time.perf_counter()
        try:
            return self._pending.wait()
        finally:
            self._timer.add("wire", time.perf_counter() - t0)


class TimedTransport(Transport):
    """A transport whose waits are timed into ``timer.seconds['wire']``."""

    def __init__(self, inner: Transport, timer: StepTimer):
        self.inner, self.timer = inner, timer
        self.rank, self.world_size, self.timeout = inner.rank, inner.world_size, inner.timeout

    def __getattr__(self, name):  # anything else a transport offers, untimed
        return getattr(self.inner, name)

    def _timed(self, fn, *args):
        t0 = time.perf_counter()
        try:
            return fn(*args)
        finally:
            self.timer.add("wire", time.perf_counter() - t0)

    def exchange(self, sends, recvs, tag: int = 0):
        return _TimedPending(self.inner.exchange(sends, recvs, tag), self.timer)

    def all_reduce_async(self, tensor, op="sum"):
        return _TimedPending(self.inner.all_reduce_async(tensor, op), self.timer)

    def all_gather_async(self, tensor):
        return _TimedPending(self.inner.all_gather_async(tensor), self.timer)

    def all_reduce_(self, tensor, op="sum"):
        return self._timed(self.inner.all_reduce_, tensor, op)

    def all_gather(self, tensor):
        return self._timed(self.inner.all_gather, tensor)

    def broadcast_(self, tensor, src=0):
        return self._timed(self.inner.broadcast_, tensor, src)
