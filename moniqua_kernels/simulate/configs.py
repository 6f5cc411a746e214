"""Named algorithm configurations, the run specification and the network model."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Optional

from .. import data as data_mod
from .. import recipe

__all__ = ["NetworkModel", "AlgorithmConfig", "CONFIGS", "ALIASES", "list_configs", "RunSpec",
           "make_spec"]


@dataclass(frozen=True)
class NetworkModel:
    latency_s: float = 50e-6          # per message round
    bandwidth_Bps: float = 1.25e9     # bytes/s per worker link (10 Gbit/s)

    def time(self, nbytes: float, rounds: int) -> float:
        return rounds * self.latency_s + nbytes / self.bandwidth_Bps


@dataclass(frozen=True)
class AlgorithmConfig:
    """A named algorithm setup.  ``kwargs`` go to the algorithm class; a value given
    as ('lr*', c) becomes c * lr of the run (Moniqua's theta, SQuARM's lr)."""
    algorithm: str                   # key of gossip.ALGORITHMS
    kwargs: dict = field(default_factory=dict)
    momentum: float = 0.0
    nesterov: bool = False
    overlap: bool = True             # begin(), backward, end(), opt.step(); else step() after
    description: str = ""


def _lr_scaled(c):
    return ("lr*", float(c))


CONFIGS: dict[str, AlgorithmConfig] = {
    "dpsgd": AlgorithmConfig("dpsgd", {}, description="D-PSGD, full precision (32 bits)"),
    "allreduce": AlgorithmConfig("allreduce", {}, overlap=False,
                                 description="exact model averaging every step"),
    # Moniqua runs its defaults: only bits (and the variant) chosen; theta adaptive, gamma
    # from bits and the topology's decode noise (gossip/theta.py says how and what was
    # measured).
    "moniqua-1bit": AlgorithmConfig("moniqua", {"bits": 1},
                                    description="Moniqua on D-PSGD, 1 bit, defaults"),
    "moniqua-2bit": AlgorithmConfig("moniqua", {"bits": 2},
                                    description="Moniqua on D-PSGD, 2 bits, defaults"),
    "moniqua-4bit": AlgorithmConfig("moniqua", {"bits": 4},
                                    description="Moniqua on D-PSGD, 4 bits, defaults"),
    "moniqua-8bit": AlgorithmConfig("moniqua", {"bits": 8},
                                    description="Moniqua on D-PSGD, 8 bits, defaults"),
    # D2 below 4 bits on a ring of 8 is refused (gossip/moniqua.py, D2_NOISE_LIMIT).
    "moniqua-d2-4bit": AlgorithmConfig(
        "moniqua", {"variant": "d2", "bits": 4}, overlap=False,
        description="Moniqua on D2, 4 bits, defaults (plain SGD; needs >= 4 bits here)"),
    # AD-PSGD in the simulator is its synchronous emulation (time does not exist here);
    # the asynchronous one runs on torch.distributed (gossip/adpsgd.py).
    "adpsgd": AlgorithmConfig("adpsgd", {"asynchronous": False},
                              description="AD-PSGD, full precision (synchronous emulation: "
                                          "random pairwise matchings)"),
    "moniqua-adpsgd-1bit": AlgorithmConfig(
        "moniqua", {"variant": "adpsgd", "bits": 1, "asynchronous": False},
        description="Moniqua on AD-PSGD (synchronous emulation: random pairwise "
                    "matchings), 1 bit, defaults"),
    "moniqua-adpsgd-4bit": AlgorithmConfig(
        "moniqua", {"variant": "adpsgd", "bits": 4, "asynchronous": False},
        description="Moniqua on AD-PSGD (synchronous emulation), 4 bits, defaults"),
    # CHOCO's consensus step size is tuned per compressor, as the CHOCO-SGD paper tunes
    # it by grid search (its theoretical value is far smaller); these two were picked on
    # digits seed 0 and kept fixed everywhere else.
    "choco-sign": AlgorithmConfig("choco", {"compressor": "sign", "gamma": 0.2}, overlap=False,
                                  description="CHOCO-SGD, scaled sign (1 bit + scale)"),
    "choco-qsgd4": AlgorithmConfig("choco", {"compressor": "qsgd:4", "gamma": 0.8},
                                   overlap=False, description="CHOCO-SGD, QSGD 4 bits"),
    # SQuARM: the class defaults (Nesterov 0.9, contractive top-10% + QSGD 4 bits, c_t =
    # c_0 sqrt(t + 1)) with H = 2, c_0 = 0.01 and gamma 0.5 picked on digits seed 0.
    "squarm": AlgorithmConfig(
        "squarm", {"gamma": 0.5, "H": 2, "threshold": 0.01, "lr": _lr_scaled(1.0)},
        momentum=0.9, nesterov=True, overlap=False,
        description="SQuARM-SGD: Nesterov 0.9, H=2, contractive top-10% + QSGD 4 bits, "
                    "trigger c_t = 0.01 sqrt(t+1)"),
}
# The baselines of Moniqua's paper (Tang et al. 2018: DCD-PSGD, ECD-PSGD; Tang et al.
# 2019: DeepSqueeze), at about 1 bit (sign; ECD needs an unbiased compressor, so its
# smallest here is ternary QSGD, 2 bits) and at 4 bits (QSGD).  DCD and ECD have no step
# size of their own; DeepSqueeze's consensus step eta was picked on digits seed 0 from
# {0.05, 0.2} per compressor (0.2 with ternary QSGD or sign let the models drift apart).
for _bits, _spec in ((1, "sign"), (4, "qsgd:4")):
    CONFIGS[f"dcd-{_spec.replace(':', '')}"] = AlgorithmConfig(
        "dcd", {"compressor": _spec}, overlap=False,
        description=f"DCD-PSGD (difference compression), {_spec}")
    CONFIGS[f"deepsqueeze-{_spec.replace(':', '')}"] = AlgorithmConfig(
        "deepsqueeze", {"compressor": _spec, "gamma": 0.05 if _bits == 1 else 0.2},
        overlap=False, description=f"DeepSqueeze (error-compensated), {_spec}, eta "
                                   f"{0.05 if _bits == 1 else 0.2}")
for _spec in ("qsgd:2", "qsgd:4"):
    CONFIGS[f"ecd-{_spec.replace(':', '')}"] = AlgorithmConfig(
        "ecd", {"compressor": _spec}, overlap=False,
        description=f"ECD-PSGD (extrapolation compression), {_spec}")
# Bare algorithm names run their default config.
ALIASES = {"moniqua": "moniqua-1bit", "choco": "choco-sign", "dcd": "dcd-qsgd4",
           "ecd": "ecd-qsgd4", "deepsqueeze": "deepsqueeze-sign"}


def list_configs() -> dict[str, str]:
    """Config name -> one-line description."""
    return {k: v.description for k, v in CONFIGS.items()}


@dataclass
class RunSpec:
    """Everything a worker needs (picklable, sent to processes)."""
    config: AlgorithmConfig
    n_workers: int = 8
    topology: str = "ring"
    dataset: str = "digits"
    model: str = "mlp"
    steps: int = 500
    lr: float = 0.1
    batch_size: int = 16
    seed: int = 0
    hidden: int = 64
    timeout: float = 60.0
    schedule: Optional[recipe.LRSchedule] = None   # learning rate per step (recipe.py)
    dirichlet_alpha: Optional[float] = None        # non-IID shards; None: IID


def make_spec(algorithm, config, overrides=None, **kw) -> tuple[str, RunSpec]:
    if config is None:
        if isinstance(algorithm, AlgorithmConfig):
            name, config = algorithm.algorithm, algorithm
        elif algorithm in CONFIGS or algorithm in ALIASES:
            name, config = algorithm, CONFIGS[ALIASES.get(algorithm, algorithm)]
        else:
            raise ValueError(f"unknown algorithm config {algorithm!r}; use one of "
                             f"{', '.join(list(CONFIGS) + list(ALIASES))} or pass "
                             "config=AlgorithmConfig(...)")
    else:
        name = algorithm if isinstance(algorithm, str) else config.algorithm
    if overrides:
        config = dataclasses.replace(config, kwargs={**config.kwargs, **overrides})
    if kw.get("dataset") not in data_mod.DATASETS:
        raise ValueError(f"unknown dataset {kw.get('dataset')!r}; use one of "
                         f"{', '.join(data_mod.DATASETS)}")
    if kw.get("model") not in data_mod.MODELS:
        raise ValueError(f"unknown model {kw.get('model')!r}; use one of "
                         f"{', '.join(data_mod.MODELS)}")
    if kw["n_workers"] < 1 or kw["steps"] < 1 or kw["batch_size"] < 1:
        raise ValueError("n_workers, steps and batch_size must be >= 1")
    if kw.get("schedule") is not None and kw["schedule"].steps != kw["steps"]:
        raise ValueError(f"the schedule is for {kw['schedule'].steps} steps, the run has "
                         f"{kw['steps']}")
    return name, RunSpec(config=config, **kw)
