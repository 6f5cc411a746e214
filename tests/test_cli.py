"""The command line: demo end to end, train under 2-process gloo with resume, the
CIFAR-10 loader on generated files, and bad flags (exit code 2 with a message)."""
import io
import json
import os
import pickle
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from dist_helpers import child_env, torchrun, train_forks
from moniqua_kernels import cifar10
from moniqua_kernels.cli import DEMO_ALGORITHMS, main
from moniqua_kernels.progress import Progress

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_demo_quick_json_has_every_algorithm(tmp_path):
    out, plot = tmp_path / "demo.json", tmp_path / "demo.png"
    rc = main(["demo", "--quick", "--json", str(out), "--plot", str(plot), "--no-progress"])
    assert rc == 0
    rows = json.loads(out.read_text())["results"]
    assert [r["algorithm"] for r in rows] == list(DEMO_ALGORITHMS)
    by_name = {r["algorithm"]: r for r in rows}
    for r in rows:
        assert 0.5 < r["test_accuracy"] <= 1.0, r  # 10 classes: chance is 0.1
        assert r["bytes_per_worker_step"] > 0 and r["wall_time_s"] > 0
    assert by_name["dpsgd"]["bits"] == pytest.approx(64.0)  # 32 bits to each of 2 peers
    # 1 bit per parameter to each of 2 peers, plus the theta checks (13 in 150 steps:
    # two float32 (the first, and the one after identical models) and eleven 8-bit
    # copies to each peer: ~2 bits per parameter per step over so short a run)
    assert 2.0 < by_name["moniqua-1bit"]["bits"] < 2.0 + (2 * 64 + 11 * 16) / 150 + 0.05
    assert by_name["moniqua-1bit"]["bytes_per_worker_step"] * 10 < \
        by_name["dpsgd"]["bytes_per_worker_step"]
    assert plot.stat().st_size > 10_000  # a real PNG was drawn


def test_progress_off_a_terminal_prints_a_line_per_tenth():
    # In a file tqdm's redraws were one line of 47,000 characters for the demo.
    out = io.StringIO()
    progress = Progress(200, file=out, label="dpsgd")
    assert progress.bar is None
    for step in range(200):
        if step == 100:
            progress.label("moniqua-1bit")
        progress.update(torch.tensor(0.5) if step % 2 else 0.5)  # train passes tensors
    progress.close()
    assert "\r" not in out.getvalue()
    lines = out.getvalue().splitlines()
    assert len(lines) == 10
    assert lines[0] == "dpsgd: step 20/200, loss 0.500"
    assert lines[-1] == "moniqua-1bit: step 200/200, loss 0.500"


def test_progress_on_a_terminal_is_tqdm_and_can_be_off():
    pytest.importorskip("tqdm")

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    out = Terminal()
    progress = Progress(10, file=out, initial=4, label="moniqua x4")
    assert progress.bar is not None and progress.bar.n == 4
    progress.update(1.0)
    progress.close()
    assert "moniqua x4" in out.getvalue() and "5/10" in out.getvalue()
    quiet = io.StringIO()
    for off in (Progress(10, False, file=quiet), Progress(10, file=quiet, initial=10)):
        off.update(1.0)  # disabled, or resumed at the end: nothing to show
        off.close()
    assert quiet.getvalue() == ""


def test_demo_list_and_bad_flags(capsys):
    assert main(["demo", "--list"]) == 0
    assert "moniqua-1bit" in capsys.readouterr().out
    for argv, needle in [(["demo", "--workers", "0"], "positive integer"),
                         (["demo", "--dataset", "imagenet"], "invalid choice"),
                         (["demo", "--algorithms", "gzip"], "unknown configuration"),
                         (["frobnicate"], "invalid choice")]:
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 2
        assert needle in capsys.readouterr().err


def test_train_bad_flags_exit_2():
    """Through the real entry point (`python -m moniqua_kernels train`): exit 2 and the
    reason on stderr.  The other refusals are checked in-process below (same code path,
    without a torch import per case)."""
    env = {k: v for k, v in child_env().items() if k not in ("RANK", "WORLD_SIZE")}
    proc = subprocess.run([sys.executable, "-m", "moniqua_kernels", "train", "--steps", "0"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "--steps must be >= 1" in proc.stderr, proc.stderr


@pytest.mark.parametrize("argv,needle", [
    (["--dataset", "cifar10"], "needs --data-dir"),
    (["--algorithm", "dpsgd", "--bits", "1"], "applies to --algorithm moniqua"),
    (["--resume"], "--resume needs --checkpoint-dir"),
    ([], "under torchrun"),
    (["--lr", "inf"], "--lr must be a finite number > 0, got inf"),
    (["--lr", "nan"], "--lr must be a finite number > 0"),
    (["--timeout", "-5"], "--timeout must be a finite number > 0, got -5"),
    (["--theta", "0"], "--theta must be a finite number > 0"),
    (["--gamma", "2"], "--gamma must lie in (0, 1], got 2"),
    (["--momentum", "1.5"], "--momentum must lie in [0, 1]"),
    (["--weight-decay", "-1"], "--weight-decay must be a finite number >= 0"),
    (["--theta-check-every", "-1"], "--theta-check-every must be >= 0"),
    (["--algorithm", "squarm", "--momentum", "0"], "would be SPARQ-SGD"),
    (["--algorithm", "squarm", "--momentum", "0.5"], "would be SPARQ-SGD"),
    (["--algorithm", "dpsgd", "--nesterov"], "--nesterov needs --momentum > 0"),
    (["--algorithm", "dpsgd", "--theta-check-every", "5"], "applies to --algorithm moniqua"),
    (["--json", "/proc/nope/out.json"], "--json '/proc/nope/out.json': "),
    (["--log-file", "/"], "is a folder"),
    (["--algorithm", "choco", "--overlap"], "--overlap applies to --algorithm dpsgd and moniqua"),
    (["--variant", "d2", "--overlap"], "--overlap applies to --algorithm dpsgd and moniqua"),
    # refused only once the ranks had started, or (ddp --timing) crashed
    (["--algorithm", "ddp", "--timing"], "--timing times the gossip algorithms' steps"),
    (["--algorithm", "moniqua", "--bits", "3"], "--bits: bits=3 is not supported"),
    (["--algorithm", "moniqua", "--rounding", "stochastic"], "needs bits >= 2"),
    (["--algorithm", "choco", "--compressor", "randomk:0.1:rescaled"], "'rescale'"),
    (["--algorithm", "ddp", "--compressor", "fp16", "--error-feedback"], "torch's 'fp16'"),
    (["--algorithm", "dpsgd", "--per-layer"], "--per-layer applies to --algorithm choco"),
])
def test_train_refuses_bad_values_before_any_work(argv, needle, capsys, monkeypatch):
    """Checked right after parsing: one line on stderr, exit 2, nothing started (no
    process group: RANK and WORLD_SIZE are not even set)."""
    from moniqua_kernels import train
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(SystemExit) as info:
        train.main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert needle in err, err


def test_train_and_demo_refuse_a_bad_topology_before_any_work(capsys, monkeypatch):
    from moniqua_kernels import train
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.setenv("WORLD_SIZE", "5")     # torchrun sets it; the odd ring is fine here
    for run in (lambda: train.main(["--topology", "torus:2x2"]),
                lambda: main(["demo", "--topology", "bogus", "--no-progress"])):
        with pytest.raises(SystemExit) as info:
            run()
        assert info.value.code == 2
        assert "--topology '" in capsys.readouterr().err


def test_demo_refuses_an_unwritable_json_before_running(capsys):
    t0 = time.monotonic()
    with pytest.raises(SystemExit) as info:
        main(["demo", "--quick", "--json", "/proc/nope/demo.json", "--no-progress"])
    assert info.value.code == 2
    assert "--json '/proc/nope/demo.json'" in capsys.readouterr().err
    assert time.monotonic() - t0 < 5  # refused before the runs (a quick demo takes ~15 s)



def _torchrun(args, tmp_path, timeout=300):
    proc = torchrun(["-m", "moniqua_kernels", "train", "--no-progress", *args], tmp_path,
                    timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _train_2_ranks(args, tmp_path):
    """Two forked ranks of train (dist_helpers.train_forks): the resume tests compare
    what train computes; torchrun itself runs in test_train_resnet20_on_generated_cifar,
    test_teardown and test_gossip_timing."""
    res = train_forks(2, args, cwd=tmp_path)
    for rank, (rc, out) in enumerate(res):
        assert rc == 0, (rank, out[-3000:])


def test_train_two_process_gloo_and_resume(tmp_path):
    common = ["--algorithm", "moniqua", "--bits", "2", "--theta-lr-scale", "2.0",
              "--dataset", "digits", "--batch-size", "16", "--lr", "0.1", "--seed", "3",
              "--log-every", "5"]
    ckpt = tmp_path / "ckpt"
    # One run of 40 steps straight through (its --json in a folder made for it) ...
    full_json = tmp_path / "new" / "folder" / "full.json"
    _train_2_ranks(common + ["--steps", "40", "--json", str(full_json)], tmp_path)
    # ... equals 20 steps, a stop, and 20 more resumed from the checkpoint.  The fresh
    # run starts its --log-file (it appended to an old one), the resumed run appends.
    (tmp_path / "log.jsonl").write_text("stale line of an earlier run\n")
    _train_2_ranks(common + ["--steps", "20", "--checkpoint-dir", str(ckpt),
                             "--checkpoint-every", "10",
                             "--log-file", str(tmp_path / "log.jsonl")], tmp_path)
    assert (ckpt / "rank0.pt").exists() and (ckpt / "rank1.pt").exists()
    _train_2_ranks(common + ["--steps", "40", "--checkpoint-dir", str(ckpt), "--resume",
                             "--json", str(tmp_path / "resumed.json"),
                             "--log-file", str(tmp_path / "log.jsonl")], tmp_path)
    full = json.loads(full_json.read_text())
    resumed = json.loads((tmp_path / "resumed.json").read_text())
    assert resumed["summary"]["resumed_from"] == 20
    # bytes_sent resumes from the checkpoint, so the resumed run has the rate too
    assert resumed["summary"]["bits_per_param_per_step"] == \
        full["summary"]["bits_per_param_per_step"] > 0
    assert resumed["summary"]["test_accuracy_averaged_model"] == \
        full["summary"]["test_accuracy_averaged_model"]
    assert resumed["history"] == full["history"]  # every logged step identical
    assert full["summary"]["test_accuracy_averaged_model"] > 0.5
    lines = (tmp_path / "log.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == list(range(5, 41, 5))


def test_train_overlap_is_mix_of_x_t_minus_its_gradient(tmp_path):
    """--overlap exchanges x_t while g(x_t) is computed: x_1 = mix(x_0) - lr g_i(x_0).  On a
    ring of 2 (W = 1/2 everywhere) from a common x_0 that is x_0 - lr g_i, different on
    the two ranks, where the default order gives mix(x_0 - lr g_i) = x_0 - lr mean(g),
    the same on both: the overlapped ranks' mean is the default's model."""
    models = {}
    for overlap in (False, True):
        ckpt = tmp_path / f"overlap{overlap}"
        _train_2_ranks(["--algorithm", "dpsgd", "--dataset", "digits", "--steps", "1",
                        "--lr", "0.5", "--checkpoint-dir", ckpt, "--checkpoint-every", "1",
                        *(["--overlap"] if overlap else [])], tmp_path)
        models[overlap] = [torch.load(ckpt / f"rank{r}.pt", weights_only=True)["model"]
                           for r in (0, 1)]
    for name, default in models[False][0].items():
        # x_i + w (x_j - x_i) on each rank: equal up to float32 rounding
        torch.testing.assert_close(default, models[False][1][name], rtol=0, atol=1e-6)
        a, b = models[True][0][name], models[True][1][name]
        torch.testing.assert_close((a + b) / 2, default, rtol=0, atol=1e-6)
    assert max(float((models[True][0][k] - models[True][1][k]).abs().max())
               for k in models[True][0]) > 1e-3


def _write_fake_cifar(folder, n_train=20, n_test=10, seed=0):
    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    for name, n in [("data_batch_1", n_train), ("test_batch", n_test)]:
        images = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
        labels = rng.integers(0, 10, n)
        cifar10.write_batch(os.path.join(folder, name), images, labels, name)
    return images, labels


def test_cifar10_loader_reads_standard_format(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    images, labels = _write_fake_cifar(str(folder))
    x, y = cifar10.load(str(tmp_path), train=False)
    assert x.shape == (10, 3, 32, 32) and x.dtype == torch.float32
    assert y.tolist() == [int(v) for v in labels]
    # Channel planes in order: red plane first; normalisation as documented.
    red = torch.from_numpy(images[:, 0].astype(np.float32)) / 255
    assert torch.allclose(x[:, 0], (red - cifar10.MEAN[0]) / cifar10.STD[0], atol=1e-6)
    xt, yt = cifar10.load(str(folder), train=True)  # the batches folder itself works too
    assert xt.shape == (20, 3, 32, 32) and yt.shape == (20,)
    with pytest.raises(FileNotFoundError, match="no CIFAR-10 batches"):
        cifar10.load(str(tmp_path / "nowhere"))
    (folder / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match="not a CIFAR-10 python batch"):
        cifar10.load(str(folder), train=False)
    # A pickle that would run code while it loads is refused before it runs any.
    marker = tmp_path / "ran"
    (folder / "test_batch").write_bytes(pickle.dumps(_RunsCode(str(marker))))
    with pytest.raises(ValueError, match="refusing .*system"):
        cifar10.load(str(folder), train=False)
    assert not marker.exists()


class _RunsCode:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def test_train_resnet20_on_generated_cifar(tmp_path):
    _write_fake_cifar(str(tmp_path / "cifar-10-batches-py"), n_train=32, n_test=8)
    _torchrun(["--algorithm", "choco", "--compressor", "sign", "--dataset", "cifar10",
               "--data-dir", str(tmp_path), "--model", "resnet20", "--steps", "2",
               "--batch-size", "4", "--json", str(tmp_path / "r.json")], tmp_path)
    summary = json.loads((tmp_path / "r.json").read_text())["summary"]
    assert summary["model"] == "resnet20" and summary["n_params"] > 250_000
    assert summary["bytes_sent_rank0"] > 0
