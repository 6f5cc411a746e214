"""Why full-precision D-PSGD used half of a shaped link: gloo's send order.

D-PSGD's exchange alone (every rank sends N bytes to both ring neighbours and receives
N from each), over gloo, in netbench's namespaces with tbf on every egress, in orders:

  sends-first   isend to both, then irecv from both (what DistTransport did)
  recvs-first   irecv from both, then isend to both (what it does now)
  one-peer      one isend and one irecv: each link carries half the bytes (reference)
  raw-tcp       the same bytes over plain sockets, no gloo (the link's ceiling)

Run as root from a checkout:  python benchmarks/gloo_send_order.py --rate 100mbit
Prints seconds per exchange for each step and the goodput against the probe's rate.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import socket
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))


def _gloo_worker(mode: str, nbytes: int, steps: int) -> list[float]:
    import torch
    import torch.distributed as dist
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=300))
    r, n = dist.get_rank(), dist.get_world_size()
    left, right = (r - 1) % n, (r + 1) % n
    send = torch.zeros(nbytes, dtype=torch.uint8)
    got = [torch.empty_like(send), torch.empty_like(send)]
    times = []
    for _ in range(steps):
        dist.barrier()
        t0 = time.perf_counter()
        recvs = [dist.P2POp(dist.irecv, got[0], left), dist.P2POp(dist.irecv, got[1], right)]
        sends = [dist.P2POp(dist.isend, send, right), dist.P2POp(dist.isend, send, left)]
        ops = {"sends-first": sends + recvs, "recvs-first": recvs + sends,
               "one-peer": [recvs[0], sends[0]]}[mode]
        for work in dist.batch_isend_irecv(ops):
            work.wait()
        times.append(time.perf_counter() - t0)
    dist.barrier()
    dist.destroy_process_group()
    return times


def _tcp_worker(nbytes: int, steps: int) -> list[float]:
    """One TCP connection per neighbour pair (as gloo has), both directions at once."""
    r, n = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    addr = os.environ["ADDRS"].split(",")
    left, right = (r - 1) % n, (r + 1) % n
    srv = socket.create_server((addr[r], 7100))
    conns = {}
    accept = threading.Thread(target=lambda: conns.__setitem__(left, srv.accept()[0]))
    accept.start()
    for _ in range(200):
        try:
            conns[right] = socket.create_connection((addr[right], 7100))
            break
        except OSError:
            time.sleep(0.05)
    accept.join()
    payload = bytes(nbytes)

    def recv(c):
        view, got = memoryview(bytearray(nbytes)), 0
        while got < nbytes:
            got += c.recv_into(view[got:])

    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        threads = [threading.Thread(target=f, args=(conns[p],))
                   for f in (lambda c: c.sendall(payload), recv) for p in (left, right)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        times.append(time.perf_counter() - t0)
        time.sleep(0.2)  # let the slowest rank finish: the next step starts together
    return times


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rate", default="100mbit")
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--mbytes", type=float, default=9.84, help="per neighbour (D-PSGD's "
                   "2.46M-parameter MLP: 9.84 MB)")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--modes", default="sends-first,recvs-first,one-peer,raw-tcp")
    p.add_argument("--congestion-control")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    nbytes = int(args.mbytes * 1e6)
    if args.worker:
        times = (_tcp_worker(nbytes, args.steps) if args.worker == "raw-tcp"
                 else _gloo_worker(args.worker, nbytes, args.steps))
        print(json.dumps(times))
        return 0

    from moniqua_kernels.netbench import command, netns, procs
    from moniqua_kernels.netbench.measure import measure_ring
    why = netns.preflight()
    if why:
        print(f"refused: {why}", file=sys.stderr)
        return 2
    with netns.Testbed(args.workers) as bed:
        cc = bed.tcp_congestion_control(args.congestion_control)
        bed.shape(netns.LinkSpec(command.parse_rate(args.rate)))
        link = sum(measure_ring(bed, 2.0)) / args.workers
        print(f"{args.workers} ranks on a ring, {args.rate} tbf egress, TCP {cc}; "
              f"probe {link:.1f} Mbit/s; {args.mbytes:g} MB to each neighbour")
        addrs = ",".join(bed.address(r) for r in range(args.workers))
        for k, mode in enumerate(args.modes.split(",")):
            children = []
            for r in range(args.workers):
                env = dict(os.environ, RANK=str(r), WORLD_SIZE=str(args.workers),
                           MASTER_ADDR=bed.address(0), MASTER_PORT=str(29300 + k),
                           GLOO_SOCKET_IFNAME=bed.dev, OMP_NUM_THREADS="1", ADDRS=addrs)
                children.append(subprocess.Popen(
                    bed.exec_argv(r, [sys.executable, __file__, "--worker", mode,
                                      "--mbytes", str(args.mbytes), "--steps",
                                      str(args.steps)]),
                    env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                    **procs.child_kwargs()))
            outs = [c.communicate(timeout=600)[0] for c in children]
            times = [max(step) for step in zip(*(json.loads(o) for o in outs))]
            sent = nbytes * (1 if mode == "one-peer" else 2)
            best = min(times)
            print(f"  {mode:12s} s per exchange {' '.join(f'{t:.3f}' for t in times)}; "
                  f"median goodput {8 * sent / sorted(times)[len(times) // 2] / 1e6:.1f} "
                  f"Mbit/s (best {8 * sent / best / 1e6:.1f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
