"""A test transport that injects faults into multi-process runs (never the library's
job): wrap a rank's transport so that it exits abruptly or stalls at its k-th exchange.

    simulate.run_processes(..., wrap_transport=functools.partial(faults.inject, rank=2,
                                                                 at_exchange=3, fault="exit"))
"""
import os
import time

EXIT_CODE = 3


class FaultyTransport:
    """Delegates everything to the wrapped transport; ``exchange`` number ``at_exchange``
    (counting from 0) either exits the process (``"exit"``: a crashed peer, its sockets
    close) or sleeps far past every deadline (``"stall"``: alive but silent)."""

    def __init__(self, inner, at_exchange: int, fault: str):
        if fault not in ("exit", "stall"):
            raise ValueError(f"fault must be 'exit' or 'stall', got {fault!r}")
        self._inner, self._at, self._fault, self._count = inner, at_exchange, fault, 0

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def exchange(self, sends, recvs, tag=0):
        if self._count == self._at:
            if self._fault == "exit":
                os._exit(EXIT_CODE)
            time.sleep(10 * self._inner.timeout)
        self._count += 1
        return self._inner.exchange(sends, recvs, tag)


def inject(transport, rank_of_transport, *, rank: int, at_exchange: int, fault: str):
    """wrap_transport hook: the faulty rank gets a FaultyTransport, the others their own."""
    if rank_of_transport != rank:
        return transport
    return FaultyTransport(transport, at_exchange, fault)
