"""Accuracies (CA, AA_W, AA_B) and the success mask S of an attack.

CA, AA_W and AA_B are all :func:`accuracy` of one model's logits: on the clean inputs
(CA), on adversarial examples made against that model (AA_W, white box), or on
adversarial examples made against a surrogate model and transferred (AA_B, black box;
:func:`transfer_examples` makes them). Higher is better for all three.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import nn

from robustx.attacks import run_attack
from robustx.checks import labels, model
from robustx.metrics.arguments import logits as check_logits

__all__ = ["accuracy", "success_mask", "transfer_examples"]


def accuracy(logits: torch.Tensor, y: torch.Tensor) -> float:
    """(1/n) |{i : argmax_k logits_ik = y_i}| over n >= 1 inputs (higher is better).

    CA with clean logits, AA_W with the logits of white-box adversarial examples, AA_B
    with the logits of transferred ones (:func:`transfer_examples`).
    """
    check_logits(logits, "logits")
    if logits.shape[0] == 0:
        raise ValueError("logits must have at least one row")
    y = labels(y, logits.shape[0], "y", logits.shape[1]).to(logits.device)
    return float((logits.argmax(1) == y).double().mean())


def success_mask(logits_clean: torch.Tensor, logits_adv: torch.Tensor, y: torch.Tensor,
                 target: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The successful adversarial examples S as a bool tensor (N,).

    C = {i : f(x_i) = y_i} (correct when clean), f = argmax of the logits;
    untargeted: S = {i in C : f(x'_i) != y_i}; targeted (``target`` given, class
    indices (N,)): S = {i in C : f(x'_i) = target_i}.
    """
    check_logits(logits_clean, "logits_clean")
    check_logits(logits_adv, "logits_adv", logits_clean.shape[0])
    if logits_adv.shape[1] != logits_clean.shape[1]:
        raise ValueError(f"logits_adv must have {logits_clean.shape[1]} classes like logits_clean, "
                         f"got {logits_adv.shape[1]}")
    n, k = logits_clean.shape
    y = labels(y, n, "y", k).to(logits_clean.device)
    correct = logits_clean.argmax(1) == y
    predicted = logits_adv.argmax(1).to(logits_clean.device)
    if target is None:
        return correct & (predicted != y)
    target = labels(target, n, "target", k).to(logits_clean.device)
    return correct & (predicted == target)


def transfer_examples(attack: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor],
                      surrogate: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Adversarial examples for a black-box evaluation: ``attack(surrogate, x, y)``.

    ``attack`` is any callable (model, x, y) -> x_adv (e.g. ``functools.partial`` of an
    attack of :mod:`robustx.attacks` with its settings); it only ever sees the
    ``surrogate`` (:func:`robustx.attacks.run_attack`: frozen, the result's shape checked).
    AA_B of a target model f is then ``accuracy(f(x_adv), y)``.
    """
    model(surrogate, "surrogate")
    return run_attack(attack, surrogate, x, y)
