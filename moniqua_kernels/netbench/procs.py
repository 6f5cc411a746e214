"""Child processes that cannot outlive the benchmark.

Every child (link probes, training ranks) starts in its own session, so a Ctrl-C at the
terminal reaches only the benchmark, which then stops them in order and removes the
namespaces; and with ``PR_SET_PDEATHSIG`` the kernel kills a child whose parent died
without cleaning up (SIGKILL), so nothing keeps running inside a stale namespace.
"""
from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import time

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child between fork and exec
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def child_kwargs() -> dict:
    """Popen keyword arguments for a child tied to this process's life."""
    return {"start_new_session": True, "preexec_fn": _die_with_parent}


def stop(procs: list[subprocess.Popen], grace_s: float = 3.0) -> None:
    """SIGTERM each live child's session, SIGKILL what is left after grace_s."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        live = [p for p in procs if p.poll() is None]
        for p in live:
            try:
                os.killpg(p.pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        deadline = time.monotonic() + grace_s
        while live and time.monotonic() < deadline:
            live = [p for p in live if p.poll() is None]
            time.sleep(0.05)
        if not live:
            return
