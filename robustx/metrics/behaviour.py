"""How the model behaves on its successful adversarial examples S (DEEPSEC, Ling et al.
S&P 2019): confidence (ACAC, ACTC), noise tolerance (NTE) and whether the examples
survive a Gaussian blur (RGB) or a JPEG compression (RIC). P = softmax of the logits;
every metric is a mean over S (see :func:`robustx.metrics.success_mask`), NaN with a
RuntimeWarning when S is empty.
"""
from __future__ import annotations

from typing import Optional

import torch

from robustx.checks import labels
from robustx.metrics.arguments import logits as check_logits
from robustx.metrics.arguments import mask, mean_over

__all__ = ["acac", "actc", "nte", "rgb", "ric"]


def _probabilities(logits_adv: torch.Tensor, success: torch.Tensor) -> torch.Tensor:
    """P(x') in float64, after checking the logits and the success mask."""
    check_logits(logits_adv, "logits_adv")
    mask(success, logits_adv.shape[0], "success")
    return torch.softmax(logits_adv.double(), 1)


def acac(logits_adv: torch.Tensor, success: torch.Tensor) -> float:
    """Average confidence of the adversarial class: (1/|S|) sum_{i in S} max_k P(x'_i)_k
    (lower = the model is less sure of its wrong answers)."""
    p = _probabilities(logits_adv, success)
    return mean_over(p.max(1).values, success)


def actc(logits_adv: torch.Tensor, y: torch.Tensor, success: torch.Tensor) -> float:
    """Average confidence of the true class: (1/|S|) sum_{i in S} P(x'_i)_{y_i}
    (higher = the true class keeps more probability)."""
    p = _probabilities(logits_adv, success)
    y = labels(y, p.shape[0], "y", p.shape[1]).to(p.device)
    return mean_over(p.gather(1, y[:, None])[:, 0], success)


def nte(logits_adv: torch.Tensor, success: torch.Tensor) -> float:
    """Noise tolerance estimation: (1/|S|) sum_{i in S} (P(x'_i)_(1) - P(x'_i)_(2)), the gap
    between the largest and second-largest probability (lower = the adversarial class wins
    by less)."""
    p = _probabilities(logits_adv, success)
    top = p.topk(2, 1).values
    return mean_over(top[:, 0] - top[:, 1], success)


def _still_adversarial(logits_transformed, y, success, target) -> float:
    """Fraction of S whose transformed example is still misclassified (untargeted) or still
    classified as ``target`` (targeted)."""
    check_logits(logits_transformed, "logits_transformed")
    n, k = logits_transformed.shape
    mask(success, n, "success")
    predicted = logits_transformed.argmax(1)
    if target is None:
        kept = predicted != labels(y, n, "y", k).to(predicted.device)
    else:
        labels(y, n, "y", k)
        kept = predicted == labels(target, n, "target", k).to(predicted.device)
    return mean_over(kept, success)


def rgb(logits_transformed: torch.Tensor, y: torch.Tensor, success: torch.Tensor,
        target: Optional[torch.Tensor] = None) -> float:
    """Robustness to Gaussian blur: (1/|S|) |{i in S : f(blur(x'_i)) != y_i}| (targeted:
    = target_i), f the argmax of ``logits_transformed``, the model's logits on
    :func:`robustx.metrics.gaussian_blur_8bit` of the adversarial examples (sigma = 0.5).
    Lower = blurring undoes more of the attack, which speaks for the model."""
    return _still_adversarial(logits_transformed, y, success, target)


def ric(logits_transformed: torch.Tensor, y: torch.Tensor, success: torch.Tensor,
        target: Optional[torch.Tensor] = None) -> float:
    """Robustness to image compression: (1/|S|) |{i in S : f(jpeg(x'_i)) != y_i}|
    (targeted: = target_i), f the argmax of ``logits_transformed``, the model's logits on
    :func:`robustx.metrics.jpeg_8bit` of the adversarial examples (quality 90). Lower =
    compression undoes more of the attack, which speaks for the model."""
    return _still_adversarial(logits_transformed, y, success, target)
