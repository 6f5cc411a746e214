"""train under real gloo ranks: resume refuses what it cannot continue (exit 2, every
rank, one message naming the rank and the reason), ranks started with other flags are
refused, and the theta monitor of the defaults speaks up when theta is wrong.

The ranks are forks running the CLI's entry point (dist_helpers.train_forks): these
tests are about what train decides, and a fresh interpreter per rank cost 3 s of CPU
each, 25 ranks here.  The exit of a real interpreter is test_teardown's subject."""
import shutil

import pytest
import torch

from dist_helpers import train_forks

COMMON = ["--algorithm", "moniqua", "--bits", "2", "--dataset", "synthetic",
          "--batch-size", "8", "--seed", "1", "--log-every", "5", "--timeout", "60"]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A 2-rank run with checkpoints at steps 5 and 10 (step 5 kept aside)."""
    root = tmp_path_factory.mktemp("ckpt")
    ckpt = root / "ckpt"
    res = train_forks(2, COMMON + ["--steps", "5", "--checkpoint-dir", ckpt])
    assert all(rc == 0 for rc, _ in res), res
    shutil.copytree(ckpt, root / "at5")
    res = train_forks(2, COMMON + ["--steps", "10", "--checkpoint-dir", ckpt, "--resume"])
    assert all(rc == 0 for rc, _ in res), res
    return root


def _resume_from(folder, world=2, extra=()):
    return train_forks(world, COMMON + ["--steps", "20", "--checkpoint-dir", folder,
                                        "--resume", *extra])


def _broken(checkpoints, tmp_path, damage):
    folder = tmp_path / "ckpt"
    shutil.copytree(checkpoints / "ckpt", folder)
    damage(folder, checkpoints)
    return folder


def _assert_refused(res, *needles):
    for rank, (rc, out) in enumerate(res):
        assert rc == 2, (rank, out[-2000:])
        line = [ln for ln in out.splitlines() if "error:" in ln][-1]
        for needle in needles:
            assert needle in line, (rank, line)
        assert "Traceback" not in out, out[-2000:]


def _truncate(folder, _):
    data = (folder / "rank1.pt").read_bytes()
    (folder / "rank1.pt").write_bytes(data[: len(data) // 2])


def _empty(folder, _):
    (folder / "rank0.pt").write_bytes(b"")


def _foreign(folder, _):
    torch.save({"weights": torch.zeros(3)}, folder / "rank1.pt")


def _runs_code(folder, _):
    class Evil:
        def __reduce__(self):
            return (print, ("this ran",))
    torch.save({"format": Evil()}, folder / "rank0.pt")


def _other_step(folder, checkpoints):
    shutil.copy(checkpoints / "at5" / "rank1.pt", folder / "rank1.pt")


@pytest.mark.parametrize("damage,needles", [
    (_truncate, ["rank1.pt is not a readable checkpoint", "rank 1 has"]),
    (_empty, ["rank0.pt is not a readable checkpoint", "rank 0 has"]),
    (_foreign, ["rank1.pt is not a moniqua_kernels train checkpoint"]),
    (_runs_code, ["rank0.pt is not a readable checkpoint"]),
    (_other_step, ["step: rank 0 has 10; rank 1 has 5"]),
], ids=["truncated", "empty", "foreign", "unsafe-pickle", "ranks-at-other-steps"])
def test_resume_refuses_on_every_rank(checkpoints, tmp_path, damage, needles):
    # the module fixture keeps the pristine copy; each case damages its own
    res = _resume_from(_broken(checkpoints, tmp_path, damage))
    _assert_refused(res, *needles)
    assert all("this ran" not in out for _, out in res)


def test_resume_refuses_another_world_size_and_other_bits(checkpoints):
    _assert_refused(_resume_from(checkpoints / "ckpt", world=3), "of 2; this is rank",
                    "rank 2 has \"no checkpoint")
    res = _resume_from(checkpoints / "ckpt", extra=["--bits", "4"])
    # --bits given twice: the last wins, so this run has 4 bits, the checkpoint 2
    _assert_refused(res, "--bits 2 (now 4)")


def test_resume_without_any_checkpoint_says_so_plainly(tmp_path):
    # every rank lacks its file: one plain reason, not a "disagreement" listing each rank
    res = _resume_from(tmp_path / "empty")
    _assert_refused(res, f"every rank: no checkpoint in {tmp_path / 'empty'}; run without")
    assert all("disagree" not in out for _, out in res)


def _older_flags(folder, _):
    """As written before --overlap existed: its args have no "overlap"."""
    for r in (0, 1):
        state = torch.load(folder / f"rank{r}.pt", weights_only=True)
        del state["args"]["overlap"]
        torch.save(state, folder / f"rank{r}.pt")


def test_resume_takes_a_flag_newer_than_the_checkpoint_at_its_default(checkpoints, tmp_path):
    folder = _broken(checkpoints, tmp_path, _older_flags)
    assert all(rc == 0 for rc, _ in _resume_from(folder))
    _assert_refused(_resume_from(_broken(checkpoints, tmp_path / "b", _older_flags),
                                 extra=["--overlap"]), "--overlap None (now True)")


def test_ranks_with_other_flags_are_refused_before_training(tmp_path):
    """A rank with another --steps would leave the others waiting at the end; another
    --lr would train something else.  Refused by the flag handshake, every rank."""
    res = train_forks(2, COMMON, rank_args={0: ["--steps", "10"], 1: ["--steps", "12"]},
                      timeout=120)
    _assert_refused(res, "ranks disagree on the train flags", "steps: rank 0 has 10; "
                    "rank 1 has 12")


def test_monitor_raises_on_a_theta_far_too_small_and_can_be_switched_off():
    small = COMMON + ["--steps", "30", "--theta", "1e-6"]
    res = train_forks(2, small)
    for rank, (rc, out) in enumerate(res):
        assert rc == 1, (rank, out[-2000:])
        assert "theta bound violated" in out and "3 checks in a row" in out, out[-2000:]
    res = train_forks(2, small + ["--theta-check-every", "0"])
    assert all(rc == 0 for rc, _ in res), res  # the user's choice: silence, at their risk
