"""Argument checks and the averaging rule shared by the metrics of :mod:`robustx.metrics`.

They extend :mod:`robustx.checks` with the metric-specific inputs: logits (not
probabilities), boolean masks such as the success mask S, and the mean over a mask that
may be empty.
"""
from __future__ import annotations

import math
import warnings
from typing import Optional

import torch

from robustx.checks import PROBABILITY_TOLERANCE, floating_tensor, images, not_probabilities

__all__ = ["PROBABILITY_TOLERANCE", "logits", "mask", "image_pair", "empty", "mean_over"]


def logits(value, name: str = "logits", n: Optional[int] = None) -> torch.Tensor:
    """Finite floating logits of shape (N, K), K >= 2, N = ``n`` when given.

    Probabilities are refused: a non-empty tensor whose entries all lie in [0, 1] and
    whose rows all sum to 1 within :data:`PROBABILITY_TOLERANCE` raises ``ValueError``
    (:func:`robustx.checks.not_probabilities`, the rule CLEVER warns by; the metrics
    apply the softmax themselves).
    """
    floating_tensor(value, name)
    if value.dim() != 2 or value.shape[1] < 2:
        raise ValueError(f"{name} must have shape (N, K) with K >= 2 classes, got {tuple(value.shape)}")
    if n is not None and value.shape[0] != n:
        raise ValueError(f"{name} must have {n} rows to match the other inputs, got {value.shape[0]}")
    if not torch.isfinite(value).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return not_probabilities(value, name)


def mask(value, n: int, name: str = "success") -> torch.Tensor:
    """A boolean tensor of shape (n,), e.g. the success mask S of an attack."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a bool torch.Tensor of shape ({n},), got {type(value).__name__}")
    if value.dtype != torch.bool:
        raise TypeError(f"{name} must be a bool tensor (e.g. from success_mask()), got {value.dtype}")
    if value.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},) to match the inputs, got {tuple(value.shape)}")
    return value


def image_pair(x, x_adv, clip_values=None, min_size: int = 1) -> None:
    """Clean images ``x`` and adversarial ``x_adv``: (N, C, H, W) floating, finite, same
    shape, inside ``clip_values`` when given, with H and W >= ``min_size``."""
    images(x, "x", clip_values)
    images(x_adv, "x_adv", clip_values)
    if x.dim() != 4:
        raise ValueError(f"x must have shape (N, C, H, W), got {tuple(x.shape)}")
    if x_adv.shape != x.shape:
        raise ValueError(f"x_adv must have the shape of x {tuple(x.shape)}, got {tuple(x_adv.shape)}")
    if min(x.shape[2:]) < min_size:
        raise ValueError(f"x must be at least {min_size}x{min_size} pixels here, got {tuple(x.shape[2:])}")


def empty(over: torch.Tensor, what: str = "success") -> bool:
    """True, with a ``RuntimeWarning`` naming the mask, when the mask ``over`` selects
    nothing: the metrics then return NaN (the mean over an empty set is undefined)."""
    if bool(over.any()):
        return False
    warnings.warn(f"the mask {what} is empty: the metric is undefined and returned as NaN",
                  RuntimeWarning, stacklevel=3)
    return True


def mean_over(values: torch.Tensor, over: torch.Tensor, what: str = "success") -> float:
    """Mean of ``values`` (N,) over the True entries of the mask ``over`` (N,), in float64;
    NaN (see :func:`empty`) when the mask is empty."""
    over = over.to(values.device)
    if empty(over, what):
        return math.nan
    return float(values[over].double().mean())
