"""simulate.run: the Result, determinism, progress, the network model, refusals."""
import pytest
import torch

from moniqua_kernels import data, simulate
from moniqua_kernels.compressors import QSGD

SMALL = dict(n_workers=4, dataset="synthetic", model="logistic", steps=30, lr=0.1,
             batch_size=8, seed=1)


def test_result_fields_and_network_model():
    calls = []
    net = simulate.NetworkModel(latency_s=1e-3, bandwidth_Bps=1e6)
    r = simulate.run("choco-sign", network=net, progress=lambda *a: calls.append(a), **SMALL)
    assert len(r.losses) == 30 and all(l > 0 for l in r.losses)
    assert [c[0] for c in calls] == list(range(1, 31)) and calls[-1][1] == 30
    n_params = 32 * 2 + 2
    assert r.n_params == n_params
    payload = 4 + (n_params + 7) // 8                     # scale + sign bits
    assert r.bytes_sent == [30 * 2 * payload] * 4          # two ring neighbours
    assert r.bytes_per_worker_per_step == 2 * payload
    assert r.bits_per_element == pytest.approx(8 * 2 * payload / n_params)
    # one round per step: latency + bytes / bandwidth, summed over steps
    assert r.est_comm_time_s == pytest.approx(30 * (1e-3 + 2 * payload / 1e6))
    assert 0.5 < r.test_accuracy <= 1 and len(r.test_accuracy_workers) == 4
    assert r.summary()["config"] == "choco-sign"


def test_same_seed_same_run_and_other_seed_differs():
    a = simulate.run("moniqua-1bit", **SMALL)
    b = simulate.run("moniqua-1bit", **SMALL)
    c = simulate.run("moniqua-1bit", **{**SMALL, "seed": 2})
    assert all(torch.equal(x, y) for x, y in zip(a.params, b.params))
    assert a.losses == b.losses
    assert not torch.equal(a.params[0], c.params[0])


def test_every_registered_config_runs():
    for name in simulate.CONFIGS:
        r = simulate.run(name, **{**SMALL, "steps": 4})
        assert len(r.losses) == 4 and r.bytes_per_worker_per_step > 0, name


def test_custom_config_and_refusals():
    cfg = simulate.AlgorithmConfig("moniqua", {"bits": 4, "theta": 1.0, "gamma": 0.5})
    r = simulate.run("mine", config=cfg, **SMALL)
    assert r.config == "mine" and r.algorithm == "moniqua"
    r = simulate.run("choco", compressor="qsgd:8", gamma=0.9, **SMALL)
    assert r.bytes_sent[0] == 30 * 2 * QSGD(8).nbytes(r.n_params)
    with pytest.raises(TypeError, match="unexpected keyword"):
        simulate.run("choco", not_an_argument=1, **SMALL)
    with pytest.raises(ValueError, match="unknown algorithm config"):
        simulate.run("moniqua-3bit", **SMALL)
    with pytest.raises(ValueError, match="unknown dataset"):
        simulate.run("dpsgd", **{**SMALL, "dataset": "mnist"})
    with pytest.raises(ValueError, match="unknown model"):
        simulate.run("dpsgd", **{**SMALL, "model": "resnet"})


def test_a_failing_worker_fails_the_run_with_its_own_error():
    cfg = simulate.AlgorithmConfig("moniqua", {"bits": 3})   # refused in every worker
    with pytest.raises(ValueError, match="bits=3"):
        simulate.run("bad", config=cfg, **SMALL)


def test_data_is_seeded_and_sharded():
    a, b = data.synthetic(seed=4), data.synthetic(seed=4)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    shards = data.shard(100, 3, 0)
    assert sorted(torch.cat(shards).tolist()) == list(range(100))
    m1 = data.make_model("mlp", 8, 3, seed=5)
    m2 = data.make_model("mlp", 8, 3, seed=5)
    assert all(torch.equal(p, q) for p, q in zip(m1.parameters(), m2.parameters()))


def test_digits_dataset():
    pytest.importorskip("sklearn")
    d = data.digits(seed=0)
    assert d.n_features == 64 and d.n_classes == 10
    assert d.x_train.shape[0] + d.x_test.shape[0] == 1797


def test_learning_rate_scaled_settings_follow_the_schedule():
    # ("lr*", c) was resolved once to a number: SQuARM's trigger compared against the
    # first step's lr under any schedule, where train passes the optimizer
    from moniqua_kernels.simulate.worker import _resolve
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    assert _resolve(("lr*", 1.0), opt) is opt
    scaled = _resolve(("lr*", 2.0), opt)
    opt.param_groups[0]["lr"] = 0.05
    assert scaled(7) == pytest.approx(0.1)
    assert _resolve(0.3, opt) == 0.3
