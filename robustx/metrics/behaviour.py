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

__all__ = ["acac", "actc", "nte", "rgb", "ric", "acac_per_sample", "actc_per_sample", "nte_per_sample",
           "still_adversarial"]


def _probabilities(logits_adv: torch.Tensor) -> torch.Tensor:
    """P(x') in float64, after checking the logits."""
    check_logits(logits_adv, "logits_adv")
    return torch.softmax(logits_adv.double(), 1)


def acac_per_sample(logits_adv: torch.Tensor) -> torch.Tensor:
    """Per example (N,) float64, the term of :func:`acac`: max_k P(x'_i)_k."""
    return _probabilities(logits_adv).max(1).values


def actc_per_sample(logits_adv: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per example (N,) float64, the term of :func:`actc`: P(x'_i)_{y_i}."""
    p = _probabilities(logits_adv)
    y = labels(y, p.shape[0], "y", p.shape[1]).to(p.device)
    return p.gather(1, y[:, None])[:, 0]


def nte_per_sample(logits_adv: torch.Tensor) -> torch.Tensor:
    """Per example (N,) float64, the term of :func:`nte`: P(x'_i)_(1) - P(x'_i)_(2)."""
    top = _probabilities(logits_adv).topk(2, 1).values
    return top[:, 0] - top[:, 1]


def acac(logits_adv: torch.Tensor, success: torch.Tensor) -> float:
    """Average confidence of the adversarial class: (1/|S|) sum_{i in S} max_k P(x'_i)_k
    (lower = the model is less sure of its wrong answers)."""
    return mean_over(acac_per_sample(logits_adv), mask(success, logits_adv.shape[0], "success"))


def actc(logits_adv: torch.Tensor, y: torch.Tensor, success: torch.Tensor) -> float:
    """Average confidence of the true class: (1/|S|) sum_{i in S} P(x'_i)_{y_i}
    (higher = the true class keeps more probability)."""
    return mean_over(actc_per_sample(logits_adv, y), mask(success, logits_adv.shape[0], "success"))


def nte(logits_adv: torch.Tensor, success: torch.Tensor) -> float:
    """Noise tolerance estimation: (1/|S|) sum_{i in S} (P(x'_i)_(1) - P(x'_i)_(2)), the gap
    between the largest and second-largest probability (lower = the adversarial class wins
    by less)."""
    return mean_over(nte_per_sample(logits_adv), mask(success, logits_adv.shape[0], "success"))


def still_adversarial(logits_transformed: torch.Tensor, y: torch.Tensor,
                      target: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Per example (N,) bool, the term of :func:`rgb` / :func:`ric`: the transformed example
    is still misclassified (untargeted: f != y_i) or still classified as ``target`` (targeted)."""
    check_logits(logits_transformed, "logits_transformed")
    n, k = logits_transformed.shape
    predicted = logits_transformed.argmax(1)
    if target is None:
        return predicted != labels(y, n, "y", k).to(predicted.device)
    labels(y, n, "y", k)
    return predicted == labels(target, n, "target", k).to(predicted.device)


def _still_adversarial(logits_transformed, y, success, target) -> float:
    """Fraction of S whose transformed example is still adversarial (:func:`still_adversarial`)."""
    kept = still_adversarial(logits_transformed, y, target)
    return mean_over(kept, mask(success, logits_transformed.shape[0], "success"))


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
