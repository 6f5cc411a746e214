"""The step-time breakdown: gossip's StepTimer (encode / wire / decode_mix) and train's
--timing, --eval-every and --hidden flags."""
import json
import threading
import time

import pytest
import torch

from dist_helpers import torchrun
from moniqua_kernels import data, gossip


def _run(cls, steps, timed, delay_rank=None, delay_s=0.0, **kw):
    """Two in-memory workers; rank delay_rank sleeps delay_s before each step."""
    net = gossip.InMemoryNetwork(2, timeout=30)
    models = [data.make_model("mlp", 8, 3, seed=1, hidden=16) for _ in range(2)]
    algs, timers, errors = [None, None], [None, None], []

    def work(r):
        try:
            # each worker builds its own (construction is a handshake with the other)
            algs[r] = cls(models[r], "ring", transport=net.transport(r), seed=5, **kw)
            timers[r] = algs[r].enable_timing() if timed else None
            for t in range(steps):
                with torch.no_grad():
                    for p in models[r].parameters():
                        p.add_(0.01 * (r + 1) * (t + 1))
                if r == delay_rank:
                    time.sleep(delay_s)
                algs[r].step()
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)
            net.fail(str(exc))

    threads = [threading.Thread(target=work, args=(r,)) for r in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors
    return [a.flat.flat().clone() for a in algs], timers


@pytest.mark.parametrize("cls,kw", [(gossip.DPSGD, {}),
                                    (gossip.Moniqua, {"theta": 0.5, "bits": 1}),
                                    (gossip.Choco, {"compressor": "sign"})])
def test_timing_changes_nothing_and_counts_every_section(cls, kw):
    plain, _ = _run(cls, 3, timed=False, **kw)
    timed, timers = _run(cls, 3, timed=True, **kw)
    assert all(torch.equal(a, b) for a, b in zip(plain, timed))
    for timer in timers:
        assert set(timer.seconds) == {"encode", "wire", "decode_mix"}
        assert timer.seconds["encode"] > 0 and timer.seconds["decode_mix"] > 0
        assert timer.seconds["wire"] >= 0


def test_waiting_for_a_slow_peer_is_wire_time_not_encode_or_mix():
    _, timers = _run(gossip.DPSGD, 3, timed=True, delay_rank=1, delay_s=0.2)
    fast = timers[0].seconds
    assert fast["wire"] >= 3 * 0.2 * 0.8           # rank 0 waited for rank 1 every step
    assert fast["encode"] + fast["decode_mix"] < 0.2  # and none of it leaked elsewhere
    assert timers[1].seconds["wire"] < 0.3          # the late rank found its message there


def test_enable_timing_is_idempotent_and_wraps_collectives():
    net = gossip.InMemoryNetwork(1)
    model = data.make_model("mlp", 4, 2, hidden=4)
    alg = gossip.AllReduce(model, transport=net.transport(0))
    timer = alg.enable_timing()
    assert alg.enable_timing() is timer
    alg.step()
    assert timer.seconds["wire"] > 0  # the all-reduce's wait



def test_train_timing_eval_and_hidden_flags(tmp_path):
    out = tmp_path / "s.json"
    proc = torchrun(["-m", "moniqua_kernels", "train", "--no-progress", "--algorithm",
                     "moniqua", "--bits", "1", "--theta-lr-scale", "3", "--gamma", "0.05",
                     "--hidden", "40", "--steps", "12", "--log-every", "4", "--eval-every",
                     "6", "--timing", "--json", out], tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads(out.read_text())
    s, history = res["summary"], res["history"]
    assert s["n_params"] == 64 * 40 + 40 + 40 * 10 + 10
    assert [r["step"] for r in history] == [0, 4, 6, 8, 12]
    evaluated = [r["step"] for r in history if "test_accuracy_workers_mean" in r]
    assert evaluated == [0, 6, 12]
    assert all(0 <= r["test_accuracy_workers_mean"] <= 1 for r in history if r["step"] in (0, 6))
    walls = [r["wall_s"] for r in history]
    assert walls == sorted(walls) and walls[0] == 0.0
    assert set(s["timing_s"]) == {"compute", "encode", "wire", "decode_mix"}
    assert 0 < sum(s["timing_s"].values()) <= s["wall_time_s"] * 1.05
    assert s["eval_time_s"] > 0
    assert history[-1]["timing_s"]["compute"] > 0
