"""Small datasets and models for the simulator, the tests and the demo.

Datasets (float32 features, int64 labels, fixed train/test split from ``seed``):
  digits     scikit-learn's 8x8 handwritten digits (1797 samples, 64 features, 10
             classes; needs scikit-learn), pixels scaled to [0, 1] and standardized
             with the training set's statistics; 80/20 split.
  synthetic  a seeded logistic-regression problem: x ~ N(0, I_d), labels drawn from
             sigmoid(x . w*) with a random w*, so the Bayes accuracy is below 100%.
Models: ``mlp`` (Linear-ReLU-Linear) and ``logistic`` (one Linear layer).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["Dataset", "load", "digits", "synthetic", "shard", "make_model", "DATASETS",
           "MODELS"]


@dataclass
class Dataset:
    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    n_classes: int

    @property
    def n_features(self) -> int:
        return self.x_train.shape[1]


def _split(name, x, y, n_classes, seed, test_fraction=0.2) -> Dataset:
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(x.shape[0], generator=g)
    n_test = int(round(test_fraction * x.shape[0]))
    test, train = perm[:n_test], perm[n_test:]
    mean = x[train].mean(0)
    std = x[train].std(0).clamp_min(1e-3)  # constant pixels stay 0, not NaN
    x = (x - mean) / std
    return Dataset(name, x[train].contiguous(), y[train].contiguous(), x[test].contiguous(),
                   y[test].contiguous(), n_classes)


def digits(seed: int = 0) -> Dataset:
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("the digits dataset needs scikit-learn (pip install scikit-learn), "
                          "or use dataset='synthetic'") from exc
    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32) / 16.0
    y = torch.tensor(d.target, dtype=torch.int64)
    return _split("digits", x, y, 10, seed)


def synthetic(seed: int = 0, n_samples: int = 4000, n_features: int = 32,
              margin: float = 4.0) -> Dataset:
    """Binary logistic regression: P(y=1 | x) = sigmoid(margin * x . w*), |w*| = 1."""
    g = torch.Generator().manual_seed(10_000 + seed)
    w = torch.randn(n_features, generator=g)
    w /= w.norm()
    x = torch.randn(n_samples, n_features, generator=g)
    p = torch.sigmoid(margin * (x @ w))
    y = (torch.rand(n_samples, generator=g) < p).long()
    return _split("synthetic", x, y, 2, seed)


DATASETS = {"digits": digits, "synthetic": synthetic}


def load(name: str, seed: int = 0) -> Dataset:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; use one of {', '.join(DATASETS)}")
    return DATASETS[name](seed)


def shard(n: int, n_workers: int, seed: int = 0) -> list[torch.Tensor]:
    """IID shards: a seeded permutation of range(n) cut into n_workers near-equal parts."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(20_000 + seed))
    return list(perm.tensor_split(n_workers))


def make_model(name: str, n_features: int, n_classes: int, seed: int = 0,
               hidden: int = 64) -> torch.nn.Module:
    """A model initialised from ``seed`` without touching the global RNG."""
    g = torch.Generator().manual_seed(30_000 + seed)
    if name == "mlp":
        layers = [torch.nn.Linear(n_features, hidden), torch.nn.ReLU(),
                  torch.nn.Linear(hidden, n_classes)]
    elif name == "logistic":
        layers = [torch.nn.Linear(n_features, n_classes)]
    else:
        raise ValueError(f"unknown model {name!r}; use 'mlp' or 'logistic'")
    model = torch.nn.Sequential(*layers)
    with torch.no_grad():
        for m in model:
            if isinstance(m, torch.nn.Linear):
                bound = 1.0 / m.in_features ** 0.5  # torch's default Linear init range
                m.weight.uniform_(-bound, bound, generator=g)
                m.bias.uniform_(-bound, bound, generator=g)
    return model


MODELS = ("mlp", "logistic")
