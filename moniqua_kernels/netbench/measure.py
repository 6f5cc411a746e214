"""Link throughput before training: one short TCP transfer per rank's egress."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from .netns import NetnsError, Testbed
from .procs import child_kwargs

PROBE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tcpprobe.py")
PROBE_PORT = 5201


def measure_link(bed: Testbed, src: int, dst: int, seconds: float) -> dict:
    """TCP goodput from rank src to rank dst (Mbit/s of payload, see tcpprobe)."""
    addr = bed.address(dst)
    server = subprocess.Popen(
        bed.exec_argv(dst, [sys.executable, PROBE, "serve", addr, str(PROBE_PORT)]),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **child_kwargs())
    try:
        line = server.stdout.readline().strip()
        if line != "ready":
            raise NetnsError(f"link probe server in rank {dst}'s namespace did not start: "
                             f"{line or server.stderr.read().strip()}")
        client = subprocess.run(
            bed.exec_argv(src, [sys.executable, PROBE, "send", addr, str(PROBE_PORT),
                                str(seconds)]),
            capture_output=True, text=True, timeout=seconds + 30, **child_kwargs())
        if client.returncode != 0:
            raise NetnsError(f"link probe rank {src} -> rank {dst} failed: "
                             f"{client.stderr.strip()}")
        out, err = server.communicate(timeout=30)
        if server.returncode != 0:
            raise NetnsError(f"link probe receiver (rank {dst}) failed: {err.strip()}")
        return json.loads(out.strip().splitlines()[-1])
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


def measure_ring(bed: Testbed, seconds: float) -> list[float]:
    """Goodput of every rank's egress (rank i -> rank i+1), one link at a time so the
    transfers do not share the CPU; Mbit/s per rank."""
    return [measure_link(bed, i, (i + 1) % bed.n, seconds)["mbit"] for i in range(bed.n)]
