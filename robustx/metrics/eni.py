"""epsilon-empirical noise insensitivity (eps-ENI): how much the model's loss moves per
unit of L-inf perturbation.

Sources: Guo et al., "A Comprehensive Evaluation Framework for Deep Model Robustness"
(arXiv 2101.09617), model-behaviour metric "epsilon-Empirical Noise Insensitivity",
taken from Yu et al., "PDA: Progressive Data Augmentation for General Robustness of Deep
Neural Networks" (arXiv 1909.04839), after the (K, epsilon)-robustness of Xu & Mannor,
"Robustness and Generalization" (Machine Learning 86, 2012).

:func:`eps_eni` is the AISafety platform's definition (DIG-Beihang/AISafety,
``EvalBox/Evaluation/eni.py``, class ``ENI``; Guo et al.'s own platform), computed from
adversarial examples. :func:`eps_eni_noise` is this library's earlier reading of the
papers, on uniform noise inside the eps-ball: a per-input ratio averaged over the inputs,
which needs no attack.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from robustx import checks
from robustx.metrics.arguments import logits as check_logits
from robustx.modelutil import chunks, frozen_eval, model_device, progress_bar
from robustx.results import Result

__all__ = ["ENIResult", "NoiseENIResult", "eni_terms", "eni_from_terms", "eps_eni", "eps_eni_noise"]


@dataclass
class ENIResult(Result):
    """The platform's eps-ENI of n inputs: ``value`` (see :func:`eni_from_terms`);
    ``loss_change`` (N,) float64, l(x'_i, t_i) - l(x_i, y_i); ``distance`` (N,) float64,
    ||x'_i - x_i||_inf."""

    value: float
    loss_change: torch.Tensor
    distance: torch.Tensor
    per_sample = None  # a set-wide value: no per-input values


def eni_terms(logits: torch.Tensor, logits_adv: torch.Tensor, x: torch.Tensor, x_adv: torch.Tensor,
              y: torch.Tensor, targets: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """The per-input terms of the platform's eps-ENI, in float64 on the CPU:
    (l(x'_i, t_i) - l(x_i, y_i), ||x'_i - x_i||_inf), l = cross-entropy of softmax(logits)
    (natural log), t = ``targets`` (a targeted attack's target labels) or ``y``."""
    check_logits(logits, "logits")
    n, k = logits.shape
    check_logits(logits_adv, "logits_adv", n)
    checks.images(x, "x")
    checks.images(x_adv, "x_adv")
    if x.shape[0] != n or x_adv.shape != x.shape:
        raise ValueError(f"x and x_adv must have the same shape with {n} rows (one per logits row), got "
                         f"{tuple(x.shape)} and {tuple(x_adv.shape)}")
    y = checks.labels(y, n, "y", k).cpu()
    t = y if targets is None else checks.labels(targets, n, "targets", k).cpu()
    clean = F.cross_entropy(logits.detach().double().cpu(), y, reduction="none")
    adversarial = F.cross_entropy(logits_adv.detach().double().cpu(), t, reduction="none")
    distance = (x_adv.detach() - x.detach()).flatten(1).abs().amax(1).double().cpu()
    return adversarial - clean, distance


def eni_from_terms(loss_change: torch.Tensor, distance: torch.Tensor) -> float:
    """ENI_eps = |sum_i (l(x'_i, t_i) - l(x_i, y_i))| / (n D), D = max_i ||x'_i - x_i||_inf
    over the whole set (the platform replaces D = 0 by its MIN_COMPENSATION, 1). Lower is
    better: the model's loss moves less per unit of perturbation."""
    checks.floating_tensor(loss_change, "loss_change")
    checks.floating_tensor(distance, "distance")
    if loss_change.dim() != 1 or loss_change.numel() == 0 or distance.shape != loss_change.shape:
        raise ValueError(f"loss_change and distance must be non-empty (N,) tensors of one shape, got "
                         f"{tuple(loss_change.shape)} and {tuple(distance.shape)}")
    largest = float(distance.double().max())
    return abs(float(loss_change.double().sum())) / (loss_change.numel() * (largest if largest > 0 else 1.0))


def _within(x: torch.Tensor, x_other: torch.Tensor, eps: float, name: str) -> None:
    """``x_other`` within L-inf distance ``eps`` of ``x`` (up to float rounding), else ValueError."""
    if (x_other - x).abs().amax() > eps * (1 + 1e-6):
        raise ValueError(f"{name} must lie within L-inf distance eps={eps} of x")


@checks.renamed(epsilon="eps")
def eps_eni(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    x_adv: torch.Tensor,
    targets: Optional[torch.Tensor] = None,
    *,
    eps: Optional[float] = None,
    batch_size: int = 1024,
    progress: bool = True,
) -> ENIResult:
    """eps-empirical noise insensitivity as the AISafety platform computes it, from the
    adversarial examples ``x_adv`` of all n inputs ``x`` (not only the successful ones).
    Lower is better::

        ENI_eps = | sum_i l(x_i, y_i) - sum_i l(x'_i, t_i) | / max_i ||x_i - x'_i||_inf / n

    l = cross-entropy of softmax(f(x)) (natural log); t = ``targets`` for a targeted
    attack, else the labels ``y``. The summed losses are compared (not each input's), and
    divided by the single largest L-inf distance of the whole set, then by n; the platform
    replaces a largest distance of 0 by 1. ``eps``, when given, is the budget the examples
    must respect (ValueError if some x'_i lies farther than eps from x_i in L-inf).

    Read from DIG-Beihang/AISafety ``EvalBox/Evaluation/eni.py`` (``ENI.evaluate``:
    ``CrossEntropyLoss(reduction="sum")`` of the clean outputs at ``cln_ys`` and of the
    adversarial outputs at ``target_preds``, ``MIN_COMPENSATION = 1`` from
    ``EvalBox/Evaluation/evaluation.py``); ``target_preds`` are the labels of the attacked
    set (``EvalBox/Analysis/evaluation_base.py``, ``get_origin_ys``): the true labels of
    an untargeted attack, the targets of a targeted one. Because of the set-wide maximum
    the value is not a mean of per-input values: the result keeps the per-input terms
    (:func:`eni_terms`) and :func:`eni_from_terms` combines any union of them.

    The model runs ``batch_size`` inputs at a time in eval mode with frozen parameters
    (both restored).
    """
    net = checks.model(model)
    x = checks.images(x, "x")
    x_adv = checks.images(x_adv, "x_adv")
    if x_adv.shape != x.shape:
        raise ValueError(f"x_adv must have the shape of x {tuple(x.shape)}, got {tuple(x_adv.shape)}")
    if eps is not None:
        _within(x, x_adv, checks.positive_float(eps, "eps"), "x_adv")
    size = checks.integer(batch_size, "batch_size")
    device = model_device(net)
    clean, adversarial = [], []
    with frozen_eval(net), torch.no_grad():
        for part in progress_bar(list(chunks(x.shape[0], size)), progress, "eps-ENI"):
            clean.append(net(x[part].to(device)))
            adversarial.append(net(x_adv[part].to(device)))
    loss_change, distance = eni_terms(torch.cat(clean), torch.cat(adversarial), x, x_adv, y, targets)
    return ENIResult(eni_from_terms(loss_change, distance), loss_change, distance)


@dataclass
class NoiseENIResult(Result):
    """``value``: mean of ``per_sample`` over the inputs where it is defined.
    ``per_sample`` (N,): mean over the noise draws of |l(x) - l(x')| / ||x - x'||_inf;
    NaN where every draw left the input unchanged (distance 0: the ratio is undefined).
    ``loss_change`` (N,): mean over the draws of |l(x) - l(x')|."""

    value: float
    per_sample: torch.Tensor
    loss_change: torch.Tensor


@checks.renamed(epsilon="eps")
def eps_eni_noise(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    x_noisy: Optional[torch.Tensor] = None,
    draws: int = 1,
    clip_values: Optional[Tuple[float, float]] = (0.0, 1.0),
    seed: int = 0,
    batch_size: int = 1024,
    progress: bool = True,
) -> NoiseENIResult:
    """eps-ENI on uniform noise (this library's reading of Guo et al. / Yu et al., not the
    platform's definition, which is :func:`eps_eni`): the loss change per unit of L-inf
    noise, per input, averaged over the inputs. Lower is better. Needs no attack::

        ENI_eps = (1 / n) sum_i |l(x_i, y_i) - l(x'_i, y_i)| / ||x_i - x'_i||_inf,
        ||x_i - x'_i||_inf <= eps,

    l = cross-entropy of softmax(f(x)) at the label (natural log), over all n inputs.
    The noisy inputs x' are ``x_noisy`` when given (then ``draws`` must be 1 and no noise
    is drawn), else x + delta with delta uniform in [-eps, eps]^d, clipped to
    ``clip_values``; with ``draws`` > 1 each input's ratio is averaged over that many
    independent draws. Inputs whose noisy versions all equal them (distance 0) have no
    ratio (NaN) and are left out of the mean.

    Noise is drawn from a generator seeded with ``seed`` on the model's device, chunk
    after chunk of ``batch_size`` inputs: same seed and batch_size, same result. The model
    runs in eval mode with frozen parameters (both restored).
    """
    net = checks.model(model)
    box = checks.clip_range(clip_values)
    x = checks.images(x, "x", box)
    y = checks.labels(y, x.shape[0])
    eps = checks.positive_float(eps, "eps")
    draws = checks.integer(draws, "draws")
    batch_size = checks.integer(batch_size, "batch_size")
    if x_noisy is not None:
        x_noisy = checks.images(x_noisy, "x_noisy", box)
        if x_noisy.shape != x.shape:
            raise ValueError(f"x_noisy must have the shape of x {tuple(x.shape)}, got {tuple(x_noisy.shape)}")
        if draws != 1:
            raise ValueError(f"draws must be 1 when x_noisy is given, got {draws}")
        _within(x, x_noisy, eps, "x_noisy")
    n = x.shape[0]
    device = model_device(net)
    gen = torch.Generator(device=device).manual_seed(checks.seed(seed))
    ratio_sum = torch.zeros(n, dtype=torch.float64)
    ratio_count = torch.zeros(n, dtype=torch.float64)
    change_sum = torch.zeros(n, dtype=torch.float64)
    with frozen_eval(net), torch.no_grad():
        for part in progress_bar(list(chunks(n, batch_size)), progress, "eps-ENI (noise)"):
            xb, yb = x[part].to(device), y[part].to(device)
            clean_loss = F.cross_entropy(net(xb), yb, reduction="none").double()
            for _ in range(draws):
                if x_noisy is not None:
                    xn = x_noisy[part].to(device)
                else:
                    delta = (2 * torch.rand(xb.shape, generator=gen, device=device, dtype=xb.dtype) - 1) * eps
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
    return NoiseENIResult(value=value, per_sample=per_sample, loss_change=change_sum / draws)
