"""Small built-in data sets: scikit-learn's 8x8 digits and the AISafety CIFAR-10 sample.

* :func:`digits` - the 1,797 handwritten digits bundled with scikit-learn (no download),
  as (N, 1, 8, 8) float32 images in [0, 1] with a fixed stratified 80/20 train/test split.
* :func:`aisafety_cifar10` - the 100 real CIFAR-10 test images (10 per class) published
  with the AISafety platform, read from a local folder (never shipped with robustx).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Tuple, Union

import numpy as np
import torch

from robustx import checks

__all__ = ["digits", "aisafety_cifar10", "aisafety_dir", "DIGITS_SPLIT_SEED", "DIGITS_TEST_FRACTION"]

DIGITS_SPLIT_SEED = 0
DIGITS_TEST_FRACTION = 0.2
_SPLITS = ("train", "test")


def _digits_test_mask(y: np.ndarray) -> np.ndarray:
    """Stratified split: a fixed-seed permutation of each class, its first 20 % is test."""
    rng = np.random.default_rng(DIGITS_SPLIT_SEED)
    test = np.zeros(y.shape[0], dtype=bool)
    for label in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == label))
        test[idx[: int(round(DIGITS_TEST_FRACTION * idx.size))]] = True
    return test


def digits(split: str = "train") -> Tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's digits: x float32 (N, 1, 8, 8) = pixel / 16 in [0, 1], y int64 in 0..9.

    ``split`` is "train" (1,438 images) or "test" (359 images); the split is stratified
    by class and the same on every call.
    """
    checks.choice(split, "split", _SPLITS)
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = bunch.images.astype(np.float32) / 16.0
    labels = bunch.target.astype(np.int64)
    test = _digits_test_mask(labels)
    keep = test if split == "test" else ~test
    x = torch.from_numpy(images[keep].reshape(-1, 1, 8, 8).copy())
    y = torch.from_numpy(labels[keep].copy())
    return x, y


def aisafety_dir(root: Optional[Union[str, os.PathLike]] = None) -> Path:
    """Folder of the AISafety CIFAR-10 files: ``root``, else $ROBUSTX_AISAFETY_DIR, else
    ``../shared/data/aisafety-cifar10`` next to the repository holding this package."""
    if root is not None:
        return Path(root)
    env = os.environ.get("ROBUSTX_AISAFETY_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "shared" / "data" / "aisafety-cifar10"


def aisafety_cifar10(root: Optional[Union[str, os.PathLike]] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """The 100 AISafety CIFAR-10 test images: x float32 (100, 3, 32, 32) in [0, 1], y int64.

    Labels are decoded from the stored one-hot rows. See :func:`aisafety_dir` for ``root``.
    """
    folder = aisafety_dir(root)
    x_path = folder / "cifar10_100_origin_inputs.npy"
    y_path = folder / "cifar10_100_origin_labels.npy"
    for path in (x_path, y_path):
        if not path.is_file():
            raise FileNotFoundError(
                f"AISafety CIFAR-10 file not found: {path} (pass root= or set ROBUSTX_AISAFETY_DIR)"
            )
    x = torch.from_numpy(np.load(x_path).astype(np.float32))
    y = torch.from_numpy(np.load(y_path).argmax(axis=1).astype(np.int64))
    return x, y
