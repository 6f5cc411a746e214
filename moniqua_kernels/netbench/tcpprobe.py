"""A bulk TCP transfer that measures a link's goodput (no third-party tool needed).

Run as a script inside the two ends' namespaces (it imports nothing of the package, so
it starts in milliseconds and never loads torch):

    python tcpprobe.py serve ADDR PORT           # prints "ready", then one JSON line
    python tcpprobe.py send ADDR PORT SECONDS    # streams zeros for SECONDS

The receiver reports the payload rate over the transfer after its first ``WARMUP_S``
seconds: the token bucket's initial burst and TCP's slow start would otherwise inflate
or deflate a short measurement (at 100 Mbit/s the first 64 KB pass unshaped, and
slow start takes a few round trips).  What it measures is TCP payload, the same bytes
gloo moves; the shaper counts Ethernet frames, so at MTU 1500 the payload can reach
1448/1514 = 95.6% of the configured rate, no more.
"""
from __future__ import annotations

import json
import socket
import sys
import time

CHUNK = 1 << 20
WARMUP_S = 0.25
IO_TIMEOUT_S = 20.0


def serve(addr: str, port: int) -> dict:
    with socket.create_server((addr, port)) as srv:
        srv.settimeout(IO_TIMEOUT_S)
        print("ready", flush=True)
        conn, _ = srv.accept()
    with conn:
        conn.settimeout(IO_TIMEOUT_S)
        buf = bytearray(CHUNK)
        view = memoryview(buf)
        total, t_first, mark = 0, None, None
        while True:
            n = conn.recv_into(view)
            now = time.perf_counter()
            if n == 0:
                break
            if t_first is None:
                t_first = now
            total += n
            if mark is None and now - t_first >= WARMUP_S:
                mark = (now, total)
            t_last = now
    if t_first is None:
        raise RuntimeError("the sender connected but sent nothing")
    if mark is None or t_last <= mark[0]:
        raise RuntimeError(f"transfer shorter than the {WARMUP_S} s warm-up: send longer")
    steady = (total - mark[1]) * 8 / (t_last - mark[0])
    return {"bytes": total, "seconds": t_last - t_first, "mbit": steady / 1e6,
            "mbit_whole": total * 8 / max(t_last - t_first, 1e-9) / 1e6}


def send(addr: str, port: int, seconds: float) -> dict:
    payload = bytes(CHUNK)
    sent = 0
    with socket.create_connection((addr, port), timeout=IO_TIMEOUT_S) as s:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            s.sendall(payload)
            sent += len(payload)
        s.shutdown(socket.SHUT_WR)
        s.recv(1)  # the receiver closes once it has read everything
    return {"bytes": sent}


def main(argv) -> int:
    if len(argv) >= 3 and argv[0] == "serve":
        print(json.dumps(serve(argv[1], int(argv[2]))), flush=True)
        return 0
    if len(argv) >= 4 and argv[0] == "send":
        print(json.dumps(send(argv[1], int(argv[2]), float(argv[3]))), flush=True)
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
