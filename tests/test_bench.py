"""The benchmark harness runs end to end (quick mode, tiny size) and reports bandwidth
beside the copy baseline, with the reason for every provider it could not time."""
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _load_bench():
    from moniqua_kernels import bench
    return bench


def test_bench_quick_writes_bandwidth_and_copy(tmp_path):
    pytest.importorskip("matplotlib")
    bench = _load_bench()
    doc = bench.main(["--quick", "--sizes", "1024", "--ops", "moniqua_encode,sign_encode",
                      "--out", str(tmp_path)])
    files = sorted(p.name for p in tmp_path.iterdir())
    stem = "ops_cpu-quick" if doc["environment"]["device"] == "cpu" else "ops_"
    assert any(f.endswith(".json") for f in files) and any(f.endswith(".md") for f in files)
    assert any(f.endswith(".png") for f in files)
    on_disk = json.loads(next(tmp_path.glob("*.json")).read_text())
    env = on_disk["environment"]
    assert env["device_name"] and env["versions"]["torch"] and env["threads"] >= 1
    assert stem in next(tmp_path.glob("*.json")).name
    rows = on_disk["results"]
    timed = [r for r in rows if r.get("seconds")]
    for op in ("moniqua_encode", "sign_encode"):
        copy = [r for r in timed if r["op"] == op and r["provider"] == "copy"]
        # a copy moves its input twice (read + write): that is its bandwidth's byte count
        assert all(r["bytes"] == 2 * 4 * r["n"] for r in copy)
        eager = [r for r in timed if r["op"] == op and r["provider"] == "eager"]
        assert copy and eager, op
        for r in eager:
            base = [c for c in copy if c["bits"] == r["bits"] and c["dtype"] == r["dtype"]]
            assert len(base) == 1
            assert r["gbps"] > 0 and r["bytes"] > 0
            assert r["gbps"] == pytest.approx(r["bytes"] / r["seconds"] / 1e9)
            assert r["frac_of_copy"] == pytest.approx(r["gbps"] / base[0]["gbps"])
            assert r["x_eager"] == pytest.approx(1.0)
    # every backend appears, timed or with the reason it could not run
    for name in ("reference", "cpu", "cuda", "triton"):
        entries = [r for r in rows if r["provider"] == name]
        assert entries and all(r.get("seconds") or r.get("reason") for r in entries), name
    if env["device"] == "cpu":
        triton_rows = [r for r in rows if r["provider"] == "triton"]
        assert all(r["seconds"] is None and "TRITON_INTERPRET" in r["reason"]
                   for r in triton_rows)
        assert any(r["provider"] == "numpy.packbits" and r.get("gbps") for r in rows)
    assert "| provider |" in next(tmp_path.glob("*.md")).read_text()


def test_compile_timeout_bounds_the_first_call():
    """--compile-timeout: a first call (where torch.compile compiles) that runs past its
    bound raises CompileTimeout, found also behind the error inductor wraps it in, and
    the alarm is cleared after (a later call runs unbounded)."""
    import time
    bench = _load_bench()
    t0 = time.monotonic()
    with pytest.raises(bench.CompileTimeout, match="more than 0.2 s"):
        bench._first_call(lambda: time.sleep(30), 0.2)
    assert time.monotonic() - t0 < 5
    bench._first_call(lambda: time.sleep(0.4), None)  # no alarm left behind
    try:
        try:
            bench._first_call(lambda: time.sleep(30), 0.1)
        except bench.CompileTimeout as inner:
            raise RuntimeError("InductorError: lowering failed") from inner
    except RuntimeError as wrapped:
        assert isinstance(bench._compile_timeout_in(wrapped), bench.CompileTimeout)
    assert bench._compile_timeout_in(RuntimeError("other")) is None


def test_results_are_written_after_every_case(tmp_path, monkeypatch):
    """A run killed after its first case (a phase timeout on a lent GPU) leaves that
    case's rows on disk."""
    bench = _load_bench()
    real, calls = bench._time_case, []

    def time_case(*args, **kwargs):
        calls.append(args[0])
        if len(calls) == 2:
            raise KeyboardInterrupt  # the kill, as the second case starts
        return real(*args, **kwargs)
    monkeypatch.setattr(bench, "_time_case", time_case)
    with pytest.raises(KeyboardInterrupt):
        bench.main(["--quick", "--sizes", "1024", "--ops", "moniqua_encode,sign_encode",
                    "--bits", "1", "--roundings", "dither", "--out", str(tmp_path)])
    rows = json.loads(next(tmp_path.glob("*.json")).read_text())["results"]
    assert {r["op"] for r in rows} == {"moniqua_encode"}
    assert any(r["provider"] == "copy" and r.get("frac_of_copy") for r in rows)
