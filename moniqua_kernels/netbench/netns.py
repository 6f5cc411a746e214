"""A throwaway network of Linux namespaces: one per rank, joined by a bridge.

    with Testbed(4) as bed:                  # ranks 10.77.0.1 .. 10.77.0.4
        bed.shape(LinkSpec(rate_bit=100e6))  # tbf on every rank's egress
        subprocess.run(bed.exec_argv(0, ["ping", "-c1", bed.address(1)]))
    # everything is gone here, also after an exception or Ctrl-C

Layout of one run (nothing is created in the host's namespace: every veth pair is
created inside a rank's namespace with its peer end placed directly in the bridge's):

    netns <run>-r0 : lo, eth0 10.77.0.1/24 --veth-- p0 \\
    netns <run>-r1 : lo, eth0 10.77.0.2/24 --veth-- p1  >- br0 in netns <run>-br
    ...                                                  /

``<run>`` is ``mknb-<pid>-<start>-<token>``: the pid and the kernel start time of the
process that owns the run, and a random token, so two runs never collide and a later
run can tell a dead owner's leftovers (``sweep_stale``) from a live run's.  The
addresses exist only inside these namespaces (each has its own routing table), so they
cannot clash with the host's.  Teardown kills every process still inside a namespace
and deletes the namespaces; the veth pairs and the bridge die with them.

Shaping: each rank's egress (its eth0) gets ``tbf`` (default) or ``htb`` at the
configured rate; a rank's ingress is bounded by its peers' egress.  Delay needs the
``netem`` qdisc: ``netem_available()`` asks the kernel (in a scratch namespace) and
callers refuse ``--delay`` when it is missing.
"""
from __future__ import annotations

import dataclasses
import os
import re
import secrets
import shutil
import signal
import subprocess
import threading
import time
from typing import Optional, Sequence

__all__ = ["NetnsError", "LinkSpec", "Testbed", "preflight", "netem_available",
           "sweep_stale", "own_namespaces", "congestion_controls", "PREFIX"]

PREFIX = "mknb"
SUBNET = "10.77.0"
_NAME_RE = re.compile(rf"^{PREFIX}-(\d+)-(\d+)-([0-9a-f]+)-(r\d+|br|probe)$")
_CMD_TIMEOUT = 15.0
_STAT_KEYS = ("bytes", "packets", "dropped", "overlimits", "requeues")
_STAT_RE = re.compile(r"Sent (\d+) bytes (\d+) pkt \(dropped (\d+), overlimits (\d+) "
                      r"requeues (\d+)\)")


class NetnsError(RuntimeError):
    """A namespace, link or qdisc command failed (the message has the command)."""


def preflight() -> Optional[str]:
    """Why this machine cannot build the testbed, or None if it can."""
    if os.name != "posix" or not os.path.isdir("/proc/self/ns"):
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "creating network namespaces and qdiscs needs root (run as root or with sudo)"
    missing = [tool for tool in ("ip", "tc") if shutil.which(tool) is None]
    if missing:
        return (f"{' and '.join(missing)} not found on PATH: install iproute2 "
                "(Debian/Ubuntu: apt-get install iproute2)")
    return None


def _run(argv: Sequence[str], check: bool = True) -> subprocess.CompletedProcess:
    try:
        proc = subprocess.run(list(argv), capture_output=True, text=True,
                              timeout=_CMD_TIMEOUT)
    except subprocess.TimeoutExpired as exc:
        raise NetnsError(f"`{' '.join(argv)}` did not finish in {_CMD_TIMEOUT:g} s") from exc
    if check and proc.returncode != 0:
        raise NetnsError(f"`{' '.join(argv)}` failed ({proc.returncode}): "
                         f"{(proc.stderr or proc.stdout).strip()}")
    return proc


def _start_time(pid: int) -> Optional[int]:
    """The process's start time in clock ticks since boot (field 22 of /proc/pid/stat),
    or None if there is no such process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses: split after it.
    return int(text.rsplit(")", 1)[1].split()[19])


def congestion_controls() -> list[str]:
    """The TCP congestion controls a new namespace may choose (available and allowed)."""
    def read(name):
        try:
            with open(f"/proc/sys/net/ipv4/{name}") as f:
                return f.read().split()
        except OSError:
            return []
    allowed = read("tcp_allowed_congestion_control")
    return [c for c in read("tcp_available_congestion_control") if c in allowed]


def own_namespaces() -> list[str]:
    """Every namespace this module may have created (any run, live or dead)."""
    if not os.path.isdir("/run/netns"):
        return []
    return sorted(n for n in os.listdir("/run/netns") if _NAME_RE.match(n))


def _ns_pids(ns: str) -> list[int]:
    proc = _run(["ip", "netns", "pids", ns], check=False)
    return [int(p) for p in proc.stdout.split() if p.isdigit()]


def _kill_inside(namespaces: Sequence[str], grace_s: float = 3.0) -> None:
    """SIGTERM every process inside the namespaces, then SIGKILL the survivors."""
    pids = {p for ns in namespaces for p in _ns_pids(ns)}
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for p in pids:
            try:
                os.kill(p, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace_s
        while pids and time.monotonic() < deadline:
            pids = {p for p in pids if _start_time(p) is not None and not _is_zombie(p)}
            if pids:
                time.sleep(0.05)
        if not pids:
            return


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def _delete(namespaces: Sequence[str]) -> list[str]:
    """Delete the namespaces (killing what runs inside); returns those still present."""
    present = [ns for ns in namespaces if os.path.exists(f"/run/netns/{ns}")]
    if not present:
        return []
    _kill_inside(present)
    for ns in present:
        _run(["ip", "netns", "delete", ns], check=False)
    return [ns for ns in present if os.path.exists(f"/run/netns/{ns}")]


def sweep_stale() -> list[str]:
    """Delete the namespaces of runs whose owning process is gone (a run killed with
    SIGKILL cannot clean up after itself).  Live runs' namespaces are left alone.
    Returns the names removed."""
    stale = []
    for ns in own_namespaces():
        pid, start = (int(g) for g in _NAME_RE.match(ns).groups()[:2])
        if _start_time(pid) != start:
            stale.append(ns)
    left = _delete(stale)
    return [ns for ns in stale if ns not in left]


@dataclasses.dataclass(frozen=True)
class LinkSpec:
    """How every rank's egress is shaped.

    rate_bit   bits per second (tbf/htb count whole Ethernet frames, so TCP's payload
               goodput tops out near 1448/1514 = 95.6% of it at MTU 1500)
    delay_s    one-way delay added by netem (needs the netem qdisc)
    qdisc      'tbf' or 'htb'
    burst      bucket size in bytes (None: see ``burst_bytes``)
    limit      tbf queue in bytes (None: see ``limit_bytes``)
    """
    rate_bit: float
    delay_s: float = 0.0
    qdisc: str = "tbf"
    burst: Optional[int] = None
    limit: Optional[int] = None

    def __post_init__(self):
        if not self.rate_bit > 0:
            raise ValueError(f"rate must be > 0 bit/s, got {self.rate_bit}")
        if self.delay_s < 0:
            raise ValueError(f"delay must be >= 0, got {self.delay_s}")
        if self.qdisc not in ("tbf", "htb"):
            raise ValueError(f"qdisc must be 'tbf' or 'htb', got {self.qdisc!r}")

    @property
    def rate_mbit(self) -> float:
        return self.rate_bit / 1e6

    def burst_bytes(self) -> int:
        # One millisecond of line rate, at least 64 KB: the bucket must hold a whole
        # GSO segment (veth hands tbf up to 64 KB at once; a smaller bucket makes tbf
        # split it) and a 1 ms refill keeps the qdisc's timer rate near 1 kHz even at
        # 10 Gbit/s.  At 100 Mbit/s this lets 64 KB (5 ms of traffic) pass unshaped
        # after an idle period, which a transfer of megabytes does not notice.
        return self.burst if self.burst is not None else max(int(self.rate_bit / 8e3), 65536)

    def limit_bytes(self) -> int:
        # 50 ms of line rate, at least 4 MB: more than TCP lets one socket queue below
        # it (net.ipv4.tcp_limit_output_bytes), so the qdisc applies backpressure to
        # the sockets instead of dropping their packets.
        return self.limit if self.limit is not None else max(int(self.rate_bit / 8 * 0.05),
                                                             4 << 20)

    def tc_commands(self, dev: str) -> list[list[str]]:
        """The tc argument lists (after ``tc -n NS``) that shape dev's egress."""
        rate = f"{int(self.rate_bit)}bit"
        burst, limit = str(self.burst_bytes()), str(self.limit_bytes())
        cmds: list[list[str]] = []
        parent = ["root"]
        if self.delay_s > 0:
            # netem delays, its child shapes: the rate applies to what leaves the delay line.
            usec = f"{int(round(self.delay_s * 1e6))}us"
            cmds.append(["qdisc", "add", "dev", dev, "root", "handle", "1:", "netem",
                         "delay", usec, "limit", "100000"])
            parent = ["parent", "1:1"]
        if self.qdisc == "tbf":
            cmds.append(["qdisc", "add", "dev", dev, *parent, "handle", "10:", "tbf",
                         "rate", rate, "burst", burst, "limit", limit])
        else:
            cmds.append(["qdisc", "add", "dev", dev, *parent, "handle", "10:", "htb",
                         "default", "1"])
            cmds.append(["class", "add", "dev", dev, "parent", "10:", "classid", "10:1", "htb",
                         "rate", rate, "ceil", rate, "burst", burst, "cburst", burst])
        return cmds


_NETEM_CACHE: dict[str, Optional[str]] = {}


def netem_available() -> Optional[str]:
    """None if this kernel has the netem qdisc, else the reason it cannot add delay.
    Asked once per process, in a scratch namespace (the host's devices are not touched)."""
    if "netem" in _NETEM_CACHE:
        return _NETEM_CACHE["netem"]
    ns = _run_name("probe")
    _run(["ip", "netns", "add", ns])
    try:
        proc = _run(["tc", "-n", ns, "qdisc", "add", "dev", "lo", "root", "netem",
                     "delay", "1ms"], check=False)
        reason = None
        if proc.returncode != 0:
            reason = ("this kernel has no netem qdisc (`tc qdisc add ... netem delay 1ms` "
                      f"says: {(proc.stderr or proc.stdout).strip()}), so link delay cannot "
                      "be emulated; run without --delay, or on a kernel with sch_netem")
    finally:
        _delete([ns])
    _NETEM_CACHE["netem"] = reason
    return reason


_RUN_ID: dict[str, str] = {}


def _run_name(suffix: str) -> str:
    """A namespace name unique to this process and call: mknb-<pid>-<start>-<token>-suffix."""
    pid = os.getpid()
    return f"{PREFIX}-{pid}-{_start_time(pid)}-{secrets.token_hex(3)}-{suffix}"


class Testbed:
    """n rank namespaces behind one bridge (see the module docstring).

    ``up()`` (or entering the context) builds it; on any failure while building, what
    was created is removed before the error propagates.  ``down()`` removes everything
    and is idempotent; the context manager calls it on every exit path."""

    def __init__(self, n: int, mtu: int = 1500):
        if not 2 <= n <= 250:
            raise ValueError(f"a testbed needs 2..250 ranks, got {n}")
        self.n, self.mtu = int(n), int(mtu)
        base = _run_name("x")[:-2]
        self.ranks = [f"{base}-r{i}" for i in range(n)]
        self.bridge = f"{base}-br"
        self.dev = "eth0"
        self.link: Optional[LinkSpec] = None
        self._created: list[str] = []

    @property
    def namespaces(self) -> list[str]:
        return [*self.ranks, self.bridge]

    def address(self, rank: int) -> str:
        return f"{SUBNET}.{rank + 1}"

    def exec_argv(self, rank: int, argv: Sequence[str]) -> list[str]:
        """argv run inside rank's namespace (``ip netns exec`` execs it: same pid)."""
        return ["ip", "netns", "exec", self.ranks[rank], *argv]

    def up(self) -> "Testbed":
        try:
            self._build()
        except BaseException:
            self.down()
            raise
        return self

    def _build(self) -> None:
        for ns in self.namespaces:
            _run(["ip", "netns", "add", ns])
            self._created.append(ns)
            _run(["ip", "-n", ns, "link", "set", "lo", "up"])
        br = self.bridge
        _run(["ip", "-n", br, "link", "add", "br0", "type", "bridge"])
        for i, ns in enumerate(self.ranks):
            port = f"p{i}"
            # Created inside the rank's namespace with the peer end placed directly in
            # the bridge's: no interface ever appears in the host namespace.
            _run(["ip", "-n", ns, "link", "add", self.dev, "mtu", str(self.mtu), "type", "veth",
                  "peer", "name", port, "netns", br])
            _run(["ip", "-n", br, "link", "set", port, "mtu", str(self.mtu), "master", "br0",
                  "up"])
            _run(["ip", "-n", ns, "addr", "add", f"{self.address(i)}/24", "dev", self.dev])
            _run(["ip", "-n", ns, "link", "set", self.dev, "up"])
        _run(["ip", "-n", br, "link", "set", "br0", "up"])

    def shape(self, link: Optional[LinkSpec]) -> None:
        """Replace every rank's egress qdisc (None: unshaped)."""
        for ns in self.ranks:
            _run(["tc", "-n", ns, "qdisc", "del", "dev", self.dev, "root"], check=False)
            if link is not None:
                for cmd in link.tc_commands(self.dev):
                    _run(["tc", "-n", ns, *cmd])
        self.link = link

    def tcp_congestion_control(self, name: Optional[str] = None) -> str:
        """Set the ranks' TCP congestion control (a per-namespace sysctl; None leaves
        the kernel's default) and return the one in use."""
        key = "net.ipv4.tcp_congestion_control"
        if name is not None:
            for ns in self.ranks:
                _run(["ip", "netns", "exec", ns, "sysctl", "-q", "-w", f"{key}={name}"])
        return _run(["ip", "netns", "exec", self.ranks[0], "sysctl", "-n", key]).stdout.strip()

    def qdisc_stats(self) -> list[dict]:
        """Per rank, the shaping qdisc's counters (bytes and packets sent, dropped,
        overlimits, requeues) from ``tc -s qdisc show``; zeros when unshaped."""
        out = []
        for ns in self.ranks:
            text = _run(["tc", "-n", ns, "-s", "qdisc", "show", "dev", self.dev]).stdout
            stats = dict.fromkeys(_STAT_KEYS, 0)
            # Blocks start with "qdisc <kind> <handle>"; the shaper is handle 10: (a
            # netem parent's counters would count the same packets again).
            for block in re.split(r"(?m)^(?=qdisc )", text):
                m = _STAT_RE.search(block)
                if block.split()[2:3] == ["10:"] and m:
                    stats = dict(zip(_STAT_KEYS, (int(v) for v in m.groups())))
            out.append(stats)
        return out

    def down(self) -> list[str]:
        """Kill what runs inside, delete every namespace; returns any that survived.
        A second Ctrl-C while this runs is ignored, so it cannot cut the cleanup short."""
        main = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if main else None
        try:
            left = _delete(self._created)
        finally:
            if main:
                signal.signal(signal.SIGINT, previous)
        self._created = left
        return left

    def __enter__(self) -> "Testbed":
        return self.up()

    def __exit__(self, *exc) -> None:
        left = self.down()
        if left and exc[0] is None:
            raise NetnsError(f"could not delete namespaces {left}")
