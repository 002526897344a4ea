"""Utility of a defense: how a defended model's clean predictions compare with the
original model's (DEEPSEC, Ling et al. S&P 2019, "utility performance of defenses")."""
from __future__ import annotations

from typing import Dict

import torch

from robustx.checks import labels
from robustx.divergence import js_divergence
from robustx.metrics.arguments import logits as check_logits
from robustx.metrics.arguments import mean_over

__all__ = ["defense_utility"]


def defense_utility(logits_original: torch.Tensor, logits_defended: torch.Tensor,
                    y: torch.Tensor) -> Dict[str, float]:
    """CAV, CRR, CSR, CCV and COS of a defended model against the original on n clean inputs.

    With P_o, P_d the softmax of the original and defended logits, f_o, f_d their argmax:
        CAV = CA(defended) - CA(original)                                  (higher is better)
        CRR = |{i : f_o(x_i) != y_i, f_d(x_i) = y_i}| / n (rectified)      (higher is better)
        CSR = |{i : f_o(x_i) = y_i, f_d(x_i) != y_i}| / n (sacrificed)     (lower is better)
        CCV = mean over B of |max_k P_d(x_i)_k - max_k P_o(x_i)_k|         (lower is better)
        COS = mean over B of JS(P_d(x_i), P_o(x_i)), natural log, <= ln 2  (lower is better)
    B = {i : both models right}. CCV and COS are NaN with a RuntimeWarning when B is empty.
    Returns {"CAV", "CRR", "CSR", "CCV", "COS"}: floats.
    """
    check_logits(logits_original, "logits_original")
    check_logits(logits_defended, "logits_defended", logits_original.shape[0])
    n, k = logits_original.shape
    if n == 0:
        raise ValueError("logits_original must have at least one row")
    if logits_defended.shape[1] != k:
        raise ValueError(f"logits_defended must have {k} classes like logits_original, got {logits_defended.shape[1]}")
    y = labels(y, n, "y", k).to(logits_original.device)
    log_o = torch.log_softmax(logits_original.double(), 1)
    log_d = torch.log_softmax(logits_defended.double().to(log_o.device), 1)
    right_o = log_o.argmax(1) == y
    right_d = log_d.argmax(1) == y
    both = right_o & right_d
    confidence_gap = (log_d.max(1).values.exp() - log_o.max(1).values.exp()).abs()
    return {
        "CAV": float(right_d.double().mean() - right_o.double().mean()),
        "CRR": float((~right_o & right_d).double().mean()),
        "CSR": float((right_o & ~right_d).double().mean()),
        "CCV": mean_over(confidence_gap, both, "B (both models right)"),
        "COS": mean_over(js_divergence(log_d, log_o), both, "B (both models right)"),
    }
