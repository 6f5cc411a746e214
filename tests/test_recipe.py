"""The training recipe: learning-rate schedules, CIFAR augmentation, Dirichlet shards,
topology files, BatchNorm buffer averaging, the torchvision loader's adapter, and the
simulator with a schedule and non-IID shards."""
import math
import sys
import types

import numpy as np
import pytest
import torch

from moniqua_kernels import cifar10, recipe, simulate
from moniqua_kernels.gossip import topology
from moniqua_kernels.gossip.buffers import WithBufferGossip, average_buffers_
from moniqua_kernels.gossip.dpsgd import DPSGD
from moniqua_kernels.recipe import LRSchedule
from test_gossip import run_workers


# ------------------------------------------------------------------ schedules

def test_warmup_then_step_decay():
    s = LRSchedule(0.6, 100, warmup_steps=10, warmup_start=1 / 6, kind="step",
                   milestones=(0.5, 75), decay=0.1)
    assert s.milestone_steps() == [50, 75]
    assert s.lr(0) == pytest.approx(0.1)                  # warmup_start x base
    assert s.lr(5) == pytest.approx(0.1 + 0.5 * 0.5)      # halfway up the line
    assert s.lr(10) == pytest.approx(0.6)
    assert s.lr(49) == pytest.approx(0.6)
    assert s.lr(50) == pytest.approx(0.06)
    assert s.lr(75) == pytest.approx(0.006)
    assert s.lr(99) == pytest.approx(0.006)
    lrs = [s.lr(t) for t in range(10)]
    assert all(b > a for a, b in zip(lrs, lrs[1:]))       # warm-up increases


def test_cosine_after_warmup_and_constant():
    s = LRSchedule(1.0, 110, warmup_steps=10, kind="cosine")
    assert s.lr(10) == pytest.approx(1.0)
    assert s.lr(60) == pytest.approx(0.5)                 # half of the cosine
    assert s.lr(109) == pytest.approx(0.5 * (1 + math.cos(math.pi * 99 / 100)))
    assert LRSchedule(0.3, 5).lr(4) == 0.3
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=123.0)
    assert s.apply(opt, 60) == pytest.approx(0.5) and opt.param_groups[0]["lr"] == \
        pytest.approx(0.5)


@pytest.mark.parametrize("kwargs, needle", [
    ({"kind": "step"}, "needs milestones"),
    ({"kind": "step", "milestones": (0.75, 0.5)}, "must increase"),
    ({"kind": "step", "milestones": (100,)}, "past the run"),
    ({"kind": "step", "milestones": (2.5,)}, "step number"),
    ({"milestones": (0.5,)}, "'step' schedule only"),
    ({"warmup_steps": 100}, "warmup_steps"),
    ({"kind": "linear"}, "unknown schedule"),
    ({"decay": 1.5, "kind": "step", "milestones": (0.5,)}, "decay"),
])
def test_bad_schedules_are_refused(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        LRSchedule(0.1, 100, **kwargs)
    with pytest.raises(ValueError, match="base_lr"):
        LRSchedule(float("inf"), 100)


# ------------------------------------------------------------------ augmentation

def test_augment_is_a_per_image_crop_and_flip_of_the_padded_batch():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(64, 3, 32, 32)
    out = recipe.augment_cifar(x, g)
    assert out.shape == x.shape and out.dtype == x.dtype
    fill = torch.tensor([-m / s for m, s in zip(cifar10.MEAN, cifar10.STD)])
    padded = fill.view(1, 3, 1, 1).expand(64, 3, 40, 40).clone()
    padded[:, :, 4:36, 4:36] = x
    # replay the generator: two offsets per image, then one flip bit per image
    g2 = torch.Generator().manual_seed(3)
    offsets = torch.randint(0, 9, (2, 64), generator=g2)
    flips = torch.randint(0, 2, (64,), generator=g2).bool()
    for i in range(64):
        oy, ox = int(offsets[0, i]), int(offsets[1, i])
        want = padded[i, :, oy:oy + 32, ox:ox + 32]
        assert torch.equal(out[i], want.flip(2) if flips[i] else want), i
    # over 64 images both flips and several offsets occur; the padding is black
    assert 0 < int(flips.sum()) < 64 and len(set(offsets[0].tolist())) > 3
    assert torch.equal(recipe.augment_cifar(x, torch.Generator().manual_seed(3)), out)


def test_augment_refuses_bad_input():
    g = torch.Generator()
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        recipe.augment_cifar(torch.zeros(3, 32, 32), g)
    with pytest.raises(ValueError, match="pass fill="):
        recipe.augment_cifar(torch.zeros(2, 1, 8, 8), g)
    out = recipe.augment_cifar(torch.zeros(2, 1, 8, 8), g, pad=2, fill=[7.0])
    assert out.shape == (2, 1, 8, 8) and set(out.unique().tolist()) <= {0.0, 7.0}


# ------------------------------------------------------------------ Dirichlet shards

def test_dirichlet_shards_partition_and_skew():
    labels = torch.arange(10).repeat_interleave(500)  # 5000 samples, 10 classes
    shards = recipe.dirichlet_shards(labels, 8, alpha=0.1, seed=1)
    everything = torch.cat(shards).sort().values
    assert torch.equal(everything, torch.arange(5000))  # a partition
    again = recipe.dirichlet_shards(labels, 8, alpha=0.1, seed=1)  # seeded
    assert all(torch.equal(a, b) for a, b in zip(shards, again))
    # Small alpha: each worker holds few classes; large alpha: close to IID.
    def top_class_share(alpha):
        out = recipe.dirichlet_shards(labels, 8, alpha=alpha, seed=1)
        return np.mean([np.bincount(labels[s].numpy(), minlength=10).max() / len(s)
                        for s in out])
    # measured (seed 1): 0.56 at alpha 0.1, 0.105 at alpha 1000; IID shards give ~0.1
    assert top_class_share(0.1) > 0.4
    assert top_class_share(1000.0) < 0.15


def test_dirichlet_refusals_and_iid_default():
    labels = torch.arange(10).repeat(10)
    assert [len(s) for s in recipe.worker_shards(labels, 4)] == [25] * 4  # IID: data.shard
    with pytest.raises(ValueError, match="concentration"):
        recipe.dirichlet_shards(labels, 4, alpha=0.0)
    with pytest.raises(ValueError, match="cannot give"):
        recipe.dirichlet_shards(labels, 4, alpha=1.0, min_size=30)
    with pytest.raises(ValueError, match="larger concentration"):
        recipe.dirichlet_shards(labels, 8, alpha=0.01, min_size=12, max_draws=3)


# ------------------------------------------------------------------ topology files

def test_topology_from_weight_and_edge_files(tmp_path):
    ring = topology.ring(4)
    wfile = tmp_path / "w.txt"
    wfile.write_text("# a ring\n" + "\n".join(", ".join(f"{v:.17g}" for v in row)
                                             for row in ring.weights()))
    t = topology.make(f"weights:{wfile}", 4)
    assert np.allclose(t.weights(), ring.weights()) and t.name == "weights:w.txt"
    np.save(tmp_path / "w.npy", ring.weights())
    assert np.allclose(topology.make(f"weights:{tmp_path / 'w.npy'}", 4).weights(),
                       ring.weights())
    efile = tmp_path / "ring.edges"
    efile.write_text("0 1\n1 2\n2 3  # wrap below\n3 0\n")
    assert np.allclose(topology.make(f"edges:{efile}", 4).weights(), ring.weights())


@pytest.mark.parametrize("kind, text, needle", [
    ("weights", "0.5 0.5\n0.5 0.5\n", "2x2 weight matrix for 4"),
    ("weights", "1 0 0 0\n0 1 0\n", "differ in length"),
    ("weights", "a b\n", "expected numbers"),
    ("weights", "0.9 0.1 0 0\n0.1 0.9 0 0\n0 0 1 0\n0 0 0 1\n", "not connected"),
    ("edges", "0 1\n1 2\n", "not connected"),
    ("edges", "0 1\n1 7\n", "outside 0..3"),
    ("edges", "0 1 2\n", "two ranks"),
])
def test_bad_topology_files_are_refused(tmp_path, kind, text, needle):
    f = tmp_path / "t.txt"
    f.write_text(text)
    with pytest.raises(topology.TopologyError, match=needle):
        topology.make(f"{kind}:{f}", 4)
    with pytest.raises(topology.TopologyError, match="does not exist"):
        topology.make(f"{kind}:{tmp_path / 'missing'}", 4)


# ------------------------------------------------------------------ BatchNorm buffers

def _bn_model(seed):
    """Statistics from a local generator: the workers build theirs in threads."""
    g = torch.Generator().manual_seed(seed)
    m = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    with torch.no_grad():
        m[0].weight.copy_(torch.randn(3, 4, generator=g))
        m[1].running_mean.copy_(torch.randn(3, generator=g))
        m[1].running_var.copy_(torch.rand(3, generator=g) + 0.5)
    return m


def test_buffer_gossip_mixes_with_the_neighbours_and_counts_bytes():
    n = 4
    start = [_bn_model(r) for r in range(n)]
    stats = torch.stack([torch.cat([m[1].running_mean, m[1].running_var]) for m in start])
    W = torch.tensor(topology.ring(n).weights(), dtype=torch.float32)

    def worker(rank, transport):
        model = _bn_model(rank)
        alg = DPSGD(model, "ring", transport=transport, seed=0)
        both = WithBufferGossip(alg, model)
        both.step()
        bn = model[1]
        return (torch.cat([bn.running_mean, bn.running_var]), both.last_bytes_sent,
                alg.last_bytes_sent, int(bn.num_batches_tracked), both.state_dict())
    out = run_workers(n, worker)
    for rank, (got, total, alg_bytes, tracked, state) in enumerate(out):
        assert torch.allclose(got, W[rank] @ stats, atol=1e-6)  # x_i <- sum_j W_ij x_j
        assert total == alg_bytes + 2 * 6 * 4  # 6 floats to each of 2 neighbours
        assert tracked == 0                    # integer buffers untouched
        assert set(state) == {"algorithm", "buffer_gossip"}
    # positive variances stay positive (a convex combination)
    assert all(bool((o[0][3:] > 0).all()) for o in out)


def test_average_buffers_is_the_mean_over_workers():
    n = 3

    def worker(rank, transport):
        model = _bn_model(rank)
        average_buffers_(model, transport)
        return model[1].running_mean.clone()
    out = run_workers(n, worker)
    want = torch.stack([_bn_model(r)[1].running_mean for r in range(n)]).mean(0)
    for got in out:
        assert torch.allclose(got, want, atol=1e-6)


def test_buffer_gossip_needs_buffers():
    def worker(rank, transport):
        model = torch.nn.Linear(2, 2)
        WithBufferGossip(DPSGD(model, "ring", transport=transport), model)
    with pytest.raises(ValueError, match="no floating-point buffers"):
        run_workers(1, worker)


# ------------------------------------------------------------------ torchvision adapter

def test_torchvision_loader_adapter_and_missing_extra(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    hwc = rng.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    (tmp_path / "cifar-10-batches-py").mkdir()
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(b"")
    seen = {}

    class FakeCIFAR10:  # torchvision's documented attributes: data (N, 32, 32, 3), targets
        def __init__(self, root, train, download):
            seen.update(root=root, train=train, download=download)
            self.data, self.targets = hwc, [1, 2, 3, 4, 5]
    fake = types.ModuleType("torchvision")
    fake.datasets = types.SimpleNamespace(CIFAR10=FakeCIFAR10)
    monkeypatch.setitem(sys.modules, "torchvision", fake)
    monkeypatch.setitem(sys.modules, "torchvision.datasets", fake.datasets)
    x, y = cifar10.load_torchvision(str(tmp_path), train=False)
    assert seen == {"root": str(tmp_path), "train": False, "download": False}
    assert x.shape == (5, 3, 32, 32) and y.tolist() == [1, 2, 3, 4, 5]
    red = torch.from_numpy(hwc[..., 0].astype(np.float32)) / 255
    assert torch.allclose(x[:, 0], (red - cifar10.MEAN[0]) / cifar10.STD[0], atol=1e-6)
    monkeypatch.setitem(sys.modules, "torchvision", None)  # not installed
    monkeypatch.setitem(sys.modules, "torchvision.datasets", None)
    with pytest.raises(ImportError, match=r"moniqua_kernels\[vision\]"):
        cifar10.load_torchvision(str(tmp_path))


# ------------------------------------------------------------------ simulator

def test_simulator_with_schedule_and_dirichlet_shards():
    steps = 60
    sched = LRSchedule(0.2, steps, warmup_steps=10, kind="cosine")
    kw = dict(n_workers=4, dataset="synthetic", steps=steps, batch_size=16, seed=0)
    iid = simulate.run("dpsgd", **kw)
    same = simulate.run("dpsgd", lr=0.2, schedule=sched, dirichlet_alpha=None, **kw)
    skewed = simulate.run("dpsgd", lr=0.2, schedule=sched, dirichlet_alpha=0.1, **kw)
    # different schedules and shards give different runs; all of them learn
    assert not torch.equal(iid.params[0], same.params[0])
    assert not torch.equal(same.params[0], skewed.params[0])
    for r in (iid, same, skewed):
        assert r.test_accuracy > 0.65  # measured: 0.853, 0.848, 0.759 (chance: 0.5)
    with pytest.raises(ValueError, match="schedule is for 60 steps"):
        simulate.run("dpsgd", schedule=sched, **dict(kw, steps=30))
