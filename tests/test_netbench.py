"""netbench: namespaces built and removed (also after Ctrl-C and SIGKILL), the link
measurement against the configured rate, and a --quick run end to end.

Everything that builds namespaces needs root with ip and tc; elsewhere those tests
skip with the reason ``netns.preflight()`` gives.  The flag checks run everywhere.
"""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from moniqua_kernels.netbench import command as nb_main
from moniqua_kernels.netbench import netns, report, runner
from moniqua_kernels.netbench.measure import measure_link, measure_ring

# Serial (scripts/test.sh runs these alone): some compare the whole list of this
# package's namespaces (and sweep_stale's result) before and after, and the measured
# bandwidths would bend under another test's load.
pytestmark = pytest.mark.serial

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WHY_NOT = netns.preflight()
needs_netns = pytest.mark.skipif(WHY_NOT is not None, reason=f"netbench: {WHY_NOT}")


def _env():
    return dict(os.environ, OMP_NUM_THREADS="1",
                PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))


def _netbench(*argv, timeout=240, **kw):
    return subprocess.run([sys.executable, "-m", "moniqua_kernels", "netbench", *argv],
                          capture_output=True, text=True, env=_env(), timeout=timeout, **kw)


def _as_a_foreground_job() -> None:  # runs in the child between fork and exec
    """SIGINT at its default, as a shell leaves it for a foreground job (Ctrl-C comes
    from a terminal).  A shell without job control starts `cmd &` with SIGINT ignored,
    exec keeps it ignored and Python then installs no KeyboardInterrupt handler: a test
    session started that way (`bash -c 'bash .ci/run' &`) made netbench ignore the
    test's SIGINT and train to the end (exit 0).  Started through `timeout`, which
    catches SIGINT and so hands its child the default, it passed."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _signal_state(pid: int) -> str:
    """Which of pending/blocked/ignored/caught hold for SIGINT in process pid."""
    with open(f"/proc/{pid}/status") as f:
        masks = dict(ln.split(":\t") for ln in f
                     if ln.startswith(("SigPnd", "ShdPnd", "SigBlk", "SigIgn", "SigCgt")))
    bit = 1 << (signal.SIGINT - 1)
    return " ".join(f"{k}={bool(int(v, 16) & bit)}" for k, v in masks.items())


def _namespaces_of(pid: int) -> list[str]:
    return [n for n in netns.own_namespaces() if n.startswith(f"{netns.PREFIX}-{pid}-")]


def _host_links() -> str:
    return subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout


def _alive(pid: int) -> bool:
    return netns._start_time(pid) is not None and not netns._is_zombie(pid)


# ----------------------------------------------------------------------- flags, anywhere

@pytest.mark.parametrize("argv,needle", [
    (["--rate", "100"], "give a positive number with a unit"),
    (["--rate", "0mbit"], "give a positive number with a unit"),
    (["--delay", "1"], "give a number with a unit"),
    (["--algorithms", "dpsgd,gzip"], "unknown algorithm(s) gzip"),
    (["--algorithms", "dpsgd,dpsgd"], "lists a name twice"),
    (["--algorithms", "choco-sign+overlap"], "train --overlap applies to dpsgd and moniqua"),
    (["--algorithms", "moniqua-d2-4bit+overlap"], "train --overlap applies to dpsgd"),
    (["--workers", "1"], "--workers must be >= 2"),
    (["--target-accuracy", "1.5"], "--target-accuracy must be in (0, 1]"),
    (["--model", "resnet20", "--dataset", "synthetic"], "needs image data"),
    (["--probe-seconds", "0.1"], "--probe-seconds must be >= 0.5"),
    (["--steps", "0"], "positive integer"),
    (["--topology", "hypercube"], "--topology hypercube"),
    (["--quick", "--rate", "1gbit", "10gbit"], "--quick runs one rate"),
])
def test_bad_flags_exit_2_before_any_work(argv, needle, capsys):
    before = netns.own_namespaces() if WHY_NOT is None else []
    with pytest.raises(SystemExit) as info:
        nb_main.main(argv)
    assert info.value.code == 2
    assert needle in capsys.readouterr().err
    if WHY_NOT is None:
        assert netns.own_namespaces() == before


def test_refuses_without_root_or_tools(monkeypatch, capsys):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert "needs root" in netns.preflight()
    with pytest.raises(SystemExit) as info:
        nb_main.main(["--quick"])
    assert info.value.code == 2 and "refused" in capsys.readouterr().err
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(netns.shutil, "which", lambda tool: None if tool == "tc" else "/x")
    assert "tc not found" in netns.preflight()


def test_rates_delays_and_tc_commands():
    assert nb_main.parse_rate("100mbit") == 1e8
    assert nb_main.parse_rate("1.5Gbit") == 1.5e9
    assert nb_main.parse_delay("1ms") == pytest.approx(1e-3)
    assert nb_main.parse_delay("0") == 0
    tbf = netns.LinkSpec(1e8).tc_commands("eth0")
    assert tbf == [["qdisc", "add", "dev", "eth0", "root", "handle", "10:", "tbf", "rate",
                    "100000000bit", "burst", "65536", "limit", str(4 << 20)]]
    htb = netns.LinkSpec(1e10, qdisc="htb").tc_commands("eth0")
    assert htb[1][-4:] == ["burst", "1250000", "cburst", "1250000"]  # 1 ms at 10 Gbit/s
    delayed = netns.LinkSpec(1e8, delay_s=1e-3).tc_commands("eth0")
    assert delayed[0][4:10] == ["root", "handle", "1:", "netem", "delay", "1000us"]
    assert delayed[1][4:6] == ["parent", "1:1"]
    with pytest.raises(ValueError, match="rate"):
        netns.LinkSpec(0)


def test_every_default_algorithm_maps_to_train_flags():
    for name in nb_main.DEFAULT_ALGORITHMS:
        flags = runner.algorithm_flags(name)
        assert flags[0] == "--algorithm"
    # Moniqua runs its defaults: only the bit width is chosen (gamma and theta follow)
    assert runner.algorithm_flags("moniqua-1bit") == ["--algorithm", "moniqua", "--bits", "1"]
    assert "--nesterov" in runner.algorithm_flags("squarm")
    # NAME+overlap: the same run with train --overlap (dpsgd and Moniqua on D-PSGD only)
    assert runner.algorithm_flags("moniqua-1bit+overlap") == \
        ["--algorithm", "moniqua", "--bits", "1", "--overlap"]
    assert "dpsgd+overlap" in runner.known_algorithms()
    assert "choco-sign+overlap" not in runner.known_algorithms()


def test_time_to_target_reads_the_first_evaluation_at_or_above_it():
    history = [{"step": 0, "wall_s": 0.0, "test_accuracy_workers_mean": 0.1},
               {"step": 5, "wall_s": 1.0, "loss": 1.0},
               {"step": 10, "wall_s": 2.5, "test_accuracy_workers_mean": 0.91},
               {"step": 20, "wall_s": 5.0, "test_accuracy_workers_mean": 0.95}]
    assert report.time_to_target(history, 0.9) == 2.5
    assert report.time_to_target(history, 0.99) is None


# ----------------------------------------------------------------------- namespaces (root)

@needs_netns
def test_refusals_that_ask_the_kernel(capsys):
    with pytest.raises(SystemExit) as info:
        nb_main.main(["--quick", "--congestion-control", "nosuch"])
    assert info.value.code == 2 and "nosuch" in capsys.readouterr().err
    if netns.netem_available() is not None:  # this kernel: no netem, so --delay is refused
        with pytest.raises(SystemExit) as info:
            nb_main.main(["--quick", "--delay", "1ms"])
        assert info.value.code == 2 and "no netem qdisc" in capsys.readouterr().err


@needs_netns
def test_testbed_connects_ranks_and_leaves_nothing_behind():
    host_before = _host_links()
    with netns.Testbed(3) as bed:
        names = bed.namespaces
        assert set(names) <= set(netns.own_namespaces())
        # rank 0 reaches rank 2 through the bridge, by the namespace-only address
        probe = ("import socket; s = socket.create_server(('10.77.0.3', 7000)); "
                 "print('ready', flush=True); c, _ = s.accept(); c.sendall(b'hi')")
        server = subprocess.Popen(bed.exec_argv(2, [sys.executable, "-c", probe]),
                                  stdout=subprocess.PIPE, text=True)
        assert server.stdout.readline().strip() == "ready"
        got = subprocess.run(bed.exec_argv(0, [sys.executable, "-c",
                             "import socket; print(socket.create_connection(('10.77.0.3', "
                             "7000), timeout=10).recv(2))"]), capture_output=True, text=True,
                             timeout=30)
        assert got.stdout.strip() == "b'hi'"
        server.wait(timeout=10)
        # the addresses exist only inside the run's namespaces
        host_addrs = subprocess.run(["ip", "-o", "addr", "show"], capture_output=True,
                                    text=True).stdout
        assert netns.SUBNET not in host_addrs
        assert _host_links() == host_before  # nothing added to the host's interfaces
        sleeper = subprocess.Popen(bed.exec_argv(1, ["sleep", "600"]))
    assert not set(names) & set(netns.own_namespaces())
    assert sleeper.wait(timeout=10) != 0  # teardown killed what ran inside
    assert _host_links() == host_before


@needs_netns
def test_failure_while_building_removes_what_was_built(monkeypatch):
    real = netns._run
    calls = []

    def failing(argv, check=True):
        calls.append(argv)
        if len(calls) == 9:
            raise netns.NetnsError("injected")
        return real(argv, check)

    bed = netns.Testbed(2)
    monkeypatch.setattr(netns, "_run", failing)
    with pytest.raises(netns.NetnsError, match="injected"):
        bed.up()
    monkeypatch.setattr(netns, "_run", real)
    assert not set(bed.namespaces) & set(netns.own_namespaces())


_KILLED_OWNER = textwrap.dedent("""
    import subprocess, sys, time
    from moniqua_kernels.netbench import netns, procs
    bed = netns.Testbed(2).up()
    child = subprocess.Popen(bed.exec_argv(0, ["sleep", "600"]), **procs.child_kwargs())
    print(child.pid, flush=True)
    time.sleep(600)
""")


@needs_netns
def test_killed_run_is_swept_by_the_next_and_its_children_die():
    owner = subprocess.Popen([sys.executable, "-c", _KILLED_OWNER], stdout=subprocess.PIPE,
                             text=True, env=_env())
    child = int(owner.stdout.readline())
    mine = _namespaces_of(owner.pid)
    try:
        assert len(mine) == 3
        with netns.Testbed(2) as live:  # a live run's namespaces survive the sweep
            assert not set(netns.sweep_stale()) & set(mine)  # the owner lives: not stale
            owner.kill()
            owner.wait()
            deadline = time.monotonic() + 10
            while _alive(child) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert not _alive(child), "a child outlived its killed parent"
            assert _namespaces_of(owner.pid) == mine  # SIGKILL: no cleanup ran ...
            assert sorted(netns.sweep_stale()) == sorted(mine)  # ... the next run sweeps
            assert _namespaces_of(owner.pid) == []
            assert set(live.namespaces) <= set(netns.own_namespaces())
    finally:
        owner.kill()
        owner.wait()
        netns.sweep_stale()


@needs_netns
def test_ctrl_c_removes_everything(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "moniqua_kernels", "netbench", "--quick",
                             "--algorithms", "dpsgd", "--steps", "2000", "--logs",
                             str(tmp_path)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_env(),
                            preexec_fn=_as_a_foreground_job)
    deadline = time.monotonic() + 120
    # wait until training runs inside the namespaces
    while not list(tmp_path.glob("*/dpsgd/rank1.log")) and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(1.0)
    inside = [p for ns in _namespaces_of(proc.pid) for p in netns._ns_pids(ns)]
    assert inside, "no rank process found inside the namespaces"
    state = _signal_state(proc.pid)  # for the failure message
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, f"SIGINT: {state}; stderr: {err[-300:]}"
    assert _namespaces_of(proc.pid) == []
    assert not [p for p in inside if _alive(p)]


@needs_netns
@pytest.mark.parametrize("qdisc", ["tbf", "htb"])
def test_link_measurement_within_20_percent_of_the_rate(qdisc):
    with netns.Testbed(2) as bed:
        bed.shape(netns.LinkSpec(50e6, qdisc=qdisc))
        for mbit in measure_ring(bed, 1.0):
            assert 40 <= mbit <= 60, mbit
        bed.shape(netns.LinkSpec(200e6, qdisc=qdisc))
        assert 160 <= measure_link(bed, 0, 1, 1.0)["mbit"] <= 240


@needs_netns
def test_quick_run_end_to_end(tmp_path):
    js, png = tmp_path / "nb.json", tmp_path / "nb.png"
    before = set(netns.own_namespaces())
    t0 = time.monotonic()
    proc = _netbench("--quick", "--algorithms", "dpsgd,moniqua-1bit", "--json", str(js),
                     "--plot", str(png), "--congestion-control", "reno")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert time.monotonic() - t0 < 60
    out = json.loads(js.read_text())
    (link,) = out["links"]
    assert link["rate_mbit"] == 100 and link["delay_ms"] == 0
    assert link["tcp_congestion_control"] == "reno"
    assert 80 <= link["measured_mbit"] <= 120
    rows = {r["algorithm"]: r for r in out["results"]}
    assert list(rows) == ["dpsgd", "moniqua-1bit"]
    keys = {"algorithm", "rate_mbit", "delay_ms", "workers", "steps", "wall_s", "steps_per_s",
            "time_to_target_s", "final_test_accuracy", "bytes_per_worker_step", "breakdown_s"}
    for r in rows.values():
        assert keys <= set(r)
        assert r["workers"] == 2 and r["steps"] == 10
        assert set(r["breakdown_s"]) == {"compute", "encode", "wire", "decode_mix"}
        assert r["steps_per_s"] > 0 and 0 < r["final_test_accuracy"] <= 1
        assert sum(r["breakdown_s"].values()) <= 1.05 * r["wall_s"] / r["steps"]
    # float32 against 1 bit per parameter, plus Moniqua's theta checks: a float32 first
    # check and 8-bit checks at steps 1-7 dominate a 10-step run (measured 3.0x; at 150
    # steps they add about 1 bit per parameter per step)
    assert rows["dpsgd"]["bytes_per_worker_step"] > 2.5 * rows["moniqua-1bit"][
        "bytes_per_worker_step"]
    assert png.stat().st_size > 10_000
    assert "dpsgd" in proc.stdout and "Mbit/s" in proc.stdout
    assert set(netns.own_namespaces()) <= before
