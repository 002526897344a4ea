"""epsilon-empirical noise insensitivity (epsilon-ENI): how much the model's loss moves per
unit of input noise of L-inf size at most epsilon.

Sources: Guo et al., "A Comprehensive Evaluation Framework for Deep Model Robustness"
(arXiv 2101.09617), model-behaviour metric "epsilon-Empirical Noise Insensitivity",
taken from Yu et al., "PDA: Progressive Data Augmentation for General Robustness of Deep
Neural Networks" (arXiv 1909.04839), after the (K, epsilon)-robustness of Xu & Mannor,
"Robustness and Generalization" (Machine Learning 86, 2012); AISafety platform
``EvalBox/Evaluation/eni.py`` (DIG-Beihang).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from robustx import checks
from robustx.modelutil import chunks, frozen_eval, model_device, progress_bar
from robustx.results import Result

__all__ = ["ENIResult", "eps_eni"]


@dataclass
class ENIResult(Result):
    """``value``: mean of ``per_sample`` over the inputs where it is defined.
    ``per_sample`` (N,): mean over the noise draws of |l(x) - l(x')| / ||x - x'||_inf;
    NaN where every draw left the input unchanged (distance 0: the ratio is undefined).
    ``loss_change`` (N,): mean over the draws of |l(x) - l(x')|."""

    value: float
    per_sample: torch.Tensor
    loss_change: torch.Tensor


def eps_eni(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    epsilon: float,
    x_noisy: Optional[torch.Tensor] = None,
    draws: int = 1,
    clip_values: Optional[Tuple[float, float]] = (0.0, 1.0),
    seed: int = 0,
    batch_size: int = 1024,
    progress: bool = True,
) -> ENIResult:
    """epsilon-empirical noise insensitivity. Lower is better (the loss is less sensitive
    to noise).

    ENI_eps = (1 / n) sum_i |l(x_i, y_i) - l(x'_i, y_i)| / ||x_i - x'_i||_inf,
    ||x_i - x'_i||_inf <= eps,

    l = cross-entropy of softmax(f(x)) at the label (natural log), over all n inputs.
    The noisy inputs x' are ``x_noisy`` when given (e.g. adversarial examples inside the
    eps-ball; then ``draws`` must be 1 and no noise is drawn), else x + delta with delta
    uniform in [-eps, eps]^d, clipped to ``clip_values``; with ``draws`` > 1 each input's
    ratio is averaged over that many independent draws. Inputs whose noisy versions all
    equal them (distance 0) have no ratio (NaN) and are left out of the mean.

    Status of the definition: the formula above is this library's reading of Guo et al.
    / Yu et al. (loss difference per unit of L-inf noise, averaged over the samples); the
    papers' text could not be consulted when this was written. The AISafety platform's
    code (eni.py) differs: it takes adversarial examples, the loss of the adversarial
    outputs at the *target* labels, and divides the difference of the *summed* losses
    by the single largest L-inf distance of the whole set (then by n).

    Noise is drawn from a generator seeded with ``seed`` on the model's device, chunk
    after chunk of ``batch_size`` inputs: same seed and batch_size, same result. The model
    runs in eval mode with frozen parameters (both restored).
    """
    net = checks.model(model)
    box = checks.clip_range(clip_values)
    x = checks.images(x, "x", box)
    y = checks.labels(y, x.shape[0])
    epsilon = checks.positive_float(epsilon, "epsilon")
    draws = checks.integer(draws, "draws")
    batch_size = checks.integer(batch_size, "batch_size")
    if x_noisy is not None:
        x_noisy = checks.images(x_noisy, "x_noisy", box)
        if x_noisy.shape != x.shape:
            raise ValueError(f"x_noisy must have the shape of x {tuple(x.shape)}, got {tuple(x_noisy.shape)}")
        if draws != 1:
            raise ValueError(f"draws must be 1 when x_noisy is given, got {draws}")
        if (x_noisy - x).abs().amax() > epsilon * (1 + 1e-6):
            raise ValueError(f"x_noisy must lie within L-inf distance epsilon={epsilon} of x")
    n = x.shape[0]
    device = model_device(net)
    gen = torch.Generator(device=device).manual_seed(checks.seed(seed))
    ratio_sum = torch.zeros(n, dtype=torch.float64)
    ratio_count = torch.zeros(n, dtype=torch.float64)
    change_sum = torch.zeros(n, dtype=torch.float64)
    with frozen_eval(net), torch.no_grad():
        for part in progress_bar(list(chunks(n, batch_size)), progress, "eps-ENI"):
            xb, yb = x[part].to(device), y[part].to(device)
            clean_loss = F.cross_entropy(net(xb), yb, reduction="none").double()
            for _ in range(draws):
                if x_noisy is not None:
                    xn = x_noisy[part].to(device)
                else:
                    delta = (2 * torch.rand(xb.shape, generator=gen, device=device, dtype=xb.dtype) - 1) * epsilon
                    xn = xb + delta if box is None else (xb + delta).clamp(*box)
                change = (F.cross_entropy(net(xn), yb, reduction="none").double() - clean_loss).abs()
                dist = (xn - xb).flatten(1).abs().amax(1).double()
                moved = dist > 0
                ratio_sum[part] += torch.where(moved, change / dist.where(moved, torch.ones_like(dist)), 0.0).cpu()
                ratio_count[part] += moved.double().cpu()
                change_sum[part] += change.cpu()
    per_sample = torch.where(ratio_count > 0, ratio_sum / ratio_count.clamp(min=1), math.nan)
    defined = per_sample[~per_sample.isnan()]
    value = defined.mean().item() if defined.numel() else math.nan
    return ENIResult(value=value, per_sample=per_sample, loss_change=change_sum / draws)
