"""CIFAR-10 from a local folder in its standard python-pickle batch format.

The layout is the one of the official ``cifar-10-python.tar.gz``, unpacked:

    ROOT/cifar-10-batches-py/data_batch_1 .. data_batch_5, test_batch, batches.meta

(ROOT may also be that folder itself).  Each batch is a pickled dict with ``b"data"``,
a uint8 array of shape (N, 3072) holding the red, green and blue 32x32 planes of each
image in turn, and ``b"labels"``, N ints in [0, 10).  Nothing is downloaded: this
package never reaches the network.
"""
from __future__ import annotations

import os
import pickle
from typing import Optional

import numpy as np
import torch

TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
FOLDER = "cifar-10-batches-py"
# Per-channel mean and std of the CIFAR-10 training set (the usual normalisation).
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)


def find_root(root: str) -> str:
    """The folder holding the batch files: root itself or root/cifar-10-batches-py."""
    for candidate in (os.path.join(root, FOLDER), root):
        if os.path.isfile(os.path.join(candidate, TEST_BATCH)):
            return candidate
    raise FileNotFoundError(
        f"no CIFAR-10 batches under {root!r}: expected {FOLDER}/test_batch and "
        f"data_batch_1..5 (the unpacked cifar-10-python.tar.gz from "
        "https://www.cs.toronto.edu/~kriz/cifar.html); pass --data-dir to that folder")


class _BatchUnpickler(pickle.Unpickler):
    """Unpickles only what a CIFAR-10 batch holds: dicts, lists, bytes, strings, numbers
    and numpy arrays.  A pickle can name any importable callable and run it while it
    loads; everything but numpy's array reconstruction and the str-to-bytes conversion
    protocol-2 pickles use for bytes (_codecs.encode) is refused by name."""

    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"),
                ("numpy._core.multiarray", "_reconstruct"), ("numpy", "ndarray"),
                ("numpy", "dtype"), ("_codecs", "encode")}

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing {module}.{name}: a CIFAR-10 batch holds only "
                                     "arrays, lists, bytes and numbers")


def read_batch(path: str) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [N, 3, 32, 32], labels int64 [N]) of one batch file."""
    with open(path, "rb") as f:
        try:
            batch = _BatchUnpickler(f, encoding="bytes").load()
        except Exception as exc:
            raise ValueError(f"{path} is not a CIFAR-10 python batch ({exc})") from None
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise ValueError(f"{path} is not a CIFAR-10 python batch: it has no b'data' and "
                         "b'labels' entries")
    data = np.asarray(batch[b"data"], dtype=np.uint8)
    labels = np.asarray(batch[b"labels"], dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
        raise ValueError(f"{path}: expected data of shape (N, 3072) and N labels, got "
                         f"{data.shape} and {len(labels)}")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise ValueError(f"{path}: labels must lie in [0, 10)")
    return data.reshape(-1, 3, 32, 32), labels


def load(root: str, train: bool = True, limit: Optional[int] = None
         ) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised float32 images [N, 3, 32, 32] and int64 labels of the train or test set.

    Train batches that are missing are skipped only if at least one is present (so a
    small local subset works); the test batch is required for train=False.
    """
    folder = find_root(root)
    names = TRAIN_BATCHES if train else (TEST_BATCH,)
    parts = [read_batch(os.path.join(folder, n)) for n in names
             if os.path.isfile(os.path.join(folder, n))]
    if not parts:
        raise FileNotFoundError(f"no training batches (data_batch_1..5) in {folder}")
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    return _normalise(torch.from_numpy(images), torch.from_numpy(labels))


def _normalise(images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 [N, 3, 32, 32] -> float32 normalised with the training set's statistics."""
    x = images.float().div_(255.0)
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return (x - mean) / std, labels.to(torch.int64)


def load_torchvision(root: str, train: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """The same tensors as load(), read by torchvision's CIFAR10 class (download=False:
    it reads ROOT/cifar-10-batches-py and checks each file's MD5 sum against the
    official archive's, so only the real CIFAR-10 files load this way).

    Needs the ``[vision]`` extra (torchvision built for the installed torch)."""
    try:
        from torchvision.datasets import CIFAR10
    except ImportError as exc:
        raise ImportError("the torchvision CIFAR-10 loader needs torchvision: pip install "
                          "'moniqua_kernels[vision]' (a torchvision built for this torch), or "
                          f"use the built-in reader ({type(exc).__name__}: {exc})") from exc
    parent = os.path.dirname(os.path.abspath(find_root(root)))
    try:
        ds = CIFAR10(parent, train=train, download=False)
    except RuntimeError as exc:  # torchvision's "Dataset not found or corrupted"
        raise ValueError(f"torchvision could not read CIFAR-10 under {parent!r}: {exc} "
                         "(its MD5 check accepts only the official files)") from None
    images = torch.as_tensor(np.asarray(ds.data, dtype=np.uint8)).permute(0, 3, 1, 2)  # HWC
    return _normalise(images.contiguous(), torch.as_tensor(ds.targets))


def write_batch(path: str, images: np.ndarray, labels, batch_label: str = "batch") -> None:
    """Write images (uint8 [N, 3, 32, 32]) and labels as a batch file in the same
    format (used by the tests and to make small local subsets)."""
    images = np.asarray(images, dtype=np.uint8)
    batch = {b"batch_label": batch_label.encode(),
             b"labels": [int(v) for v in labels],
             b"data": images.reshape(len(images), 3072),
             b"filenames": [f"img_{i}.png".encode() for i in range(len(images))]}
    with open(path, "wb") as f:
        pickle.dump(batch, f, protocol=2)
