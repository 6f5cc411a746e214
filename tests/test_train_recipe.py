"""train with the recipe's flags: the whole pipeline on generated CIFAR-10 files of the
real shape (ResNet-20, augmentation, warm-up and step decay, Dirichlet shards, a
topology from an edge file, BatchNorm statistics gossiped), and bad combinations
refused with exit code 2 before any work."""
import json

import pytest

from moniqua_kernels import train
from moniqua_kernels.gossip.buffers import floating_buffers
from moniqua_kernels.models import ResNet20
from test_cli import _torchrun, _write_fake_cifar


def test_resnet20_pipeline_on_generated_cifar(tmp_path):
    _write_fake_cifar(str(tmp_path / "cifar-10-batches-py"), n_train=64, n_test=8)
    edges = tmp_path / "pair.edges"
    edges.write_text("0 1\n")
    log = tmp_path / "log.jsonl"
    _torchrun(["--algorithm", "dpsgd", "--dataset", "cifar10", "--data-dir", str(tmp_path),
               "--model", "resnet20", "--steps", "4", "--batch-size", "4", "--lr", "0.4",
               "--momentum", "0.9", "--nesterov", "--weight-decay", "1e-4",
               "--warmup-steps", "2", "--warmup-start", "0.25", "--lr-schedule", "step",
               "--lr-milestones", "3", "--augment", "--dirichlet-alpha", "1.0",
               "--topology", f"edges:{edges}", "--bn-sync", "neighbours",
               "--log-every", "1", "--log-file", str(log),
               "--json", str(tmp_path / "r.json")], tmp_path)
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    # the rate logged after each step: warm-up 0.1, 0.25 (0.25 x 0.4 rising to 0.4), 0.4, then x0.1
    assert [round(r["lr"], 6) for r in rows] == [0.1, 0.25, 0.4, 0.04]
    summary = json.loads((tmp_path / "r.json").read_text())["summary"]
    n_bn = sum(b.numel() for b in floating_buffers(ResNet20()))
    assert n_bn == 1568
    # D-PSGD sends the float32 model, and the BatchNorm statistics, to its one neighbour
    assert rows[-1]["bytes_per_worker_step"] == 4 * (summary["n_params"] + n_bn)
    assert summary["topology"] == f"edges:{edges}"


@pytest.mark.parametrize("argv, needle", [
    (["--augment"], "--augment applies to --dataset cifar10"),
    (["--lr-schedule", "step"], "needs milestones"),
    (["--lr-schedule", "cosine", "--warmup-steps", "500", "--steps", "100"], "warmup_steps"),
    (["--lr-milestones", "0.5,x"], "comma-separated numbers"),
    (["--dirichlet-alpha", "-1"], "--dirichlet-alpha must be"),
    (["--algorithm", "ddp", "--bn-sync", "neighbours"], "applies to gossip algorithms"),
    (["--algorithm", "dpsgd", "--error-feedback"], "--error-feedback applies to"),
    (["--cifar-loader", "torchvision"], "--cifar-loader applies to --dataset cifar10"),
])
def test_bad_recipe_flags_exit_2(argv, needle, capsys, monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(SystemExit) as info:
        train.main(argv)
    assert info.value.code == 2
    assert needle in capsys.readouterr().err
