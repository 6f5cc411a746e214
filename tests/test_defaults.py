"""Moniqua with only bits chosen trains (DESIGN.md 10a): every default configuration, on
digits and the synthetic problem, over two seeds, reaches D-PSGD's accuracy within a
tolerance taken from measured runs, with no theta violation and a bounded spread."""
import statistics
import warnings

import pytest

from moniqua_kernels import simulate

SETTING = dict(n_workers=4, topology="ring", steps=400, lr=0.1, batch_size=16)
PROBLEMS = [("digits", "mlp"), ("synthetic", "logistic")]
SEEDS = (0, 1)
DEFAULTS = ["moniqua-1bit", "moniqua-2bit", "moniqua-4bit", "moniqua-8bit",
            "moniqua-adpsgd-1bit", "moniqua-adpsgd-4bit", "moniqua-d2-4bit"]
# Mean over the two seeds, below D-PSGD's mean.  Measured in this setting (points, gamma
# from the decode noise, theta.GAMMA_C): digits 1 bit -0.14, 2 bits +0.14, AD-PSGD 1 bit
# -0.14, the rest 0.00; synthetic 1 bit -0.06, 2 bits +0.06, AD-PSGD 1 bit +0.12, the rest
# 0.00.  (With the first gamma rule: digits 1 bit -0.14, AD-PSGD 1 bit -0.28.)  The
# tolerance is the 1 point.
TOLERANCE = 0.01


def _run(name, dataset, model, seed):
    with warnings.catch_warnings():
        warnings.simplefilter("error", category=simulate.worker.gossip.ThetaViolation)
        return simulate.run(name, dataset=dataset, model=model, seed=seed, **SETTING)


@pytest.mark.slow
@pytest.mark.parametrize("dataset,model", PROBLEMS)
def test_defaults_train_to_dpsgd_accuracy(dataset, model):
    base = statistics.mean(_run("dpsgd", dataset, model, s).test_accuracy for s in SEEDS)
    gaps = {}
    for name in DEFAULTS:
        runs = [_run(name, dataset, model, s) for s in SEEDS]
        gaps[name] = statistics.mean(r.test_accuracy for r in runs) - base
        for r in runs:
            assert r.theta_violations == 0, (name, r.seed)
            # D-PSGD ~0.003; Moniqua 1 bit ~1-2, falling (the first gamma rule reached 14
            # here, and growing)
            assert r.consensus_distance < 5.0, (name, r.seed, r.consensus_distance)
    print(dataset, {k: round(100 * v, 2) for k, v in gaps.items()})
    bad = {k: round(100 * v, 2) for k, v in gaps.items() if v < -TOLERANCE}
    assert not bad, bad
