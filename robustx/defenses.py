"""Training-time defenses: PGD adversarial training (Madry et al. 2018) and Sensitive
Neuron Stabilizing, SNS (Zhang et al., arXiv 1909.06978).

SNS minimises, per batch of benign inputs x_i, their PGD adversarial versions x'_i and
labels y_i::

    L = CE(f(x'), y) + lambda * sum_l sum_{m in S_l} sigma_l^m(x, x')
    sigma_l^m(x, x') = (1/B) sum_i ||F_l^m(x_i) - F_l^m(x'_i)||_1 / dim(F_l^m)

where S_l, the *sensitive neurons* of layer l, are the top-k neurons of the batch's
sigma_l, re-selected every ``refresh_every`` steps. Unlike the evaluation code, these
functions train the model: they update its parameters in place.
"""
from __future__ import annotations

from typing import Dict, Iterable, List, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from robustx.attacks import pgd
from robustx.modelutil import LayerOutputs, LayerSpec, check_images, model_device, progress_bar, resolve_layers
from robustx.neurons import default_axis, neuron_view
from robustx.sensitivity import neuron_distance, top_k_count, top_k_indices

__all__ = ["SNSLoss", "train_adversarial", "train_sns", "METHODS"]

METHODS = ("standard", "pgd", "sns")


class SNSLoss:
    """The SNS objective CE(f(x'), y) + lambda * sum over the chosen layers of the batch
    sensitivity of their top-k sensitive neurons (see the module docstring).

    ``loss = SNSLoss(model, layers, lam=0.1, k=0.1, refresh_every=10)(x, x_adv, y)``
    runs the model (in whatever mode it is) on ``x`` and on ``x_adv``; gradients flow
    through both. ``k`` is a neuron count or a fraction of each layer's neurons.
    After a call, ``sensitive[name]`` holds the current sensitive-neuron indices and
    ``last`` the float values of "loss", "ce" and "penalty". With ``lam=0`` the loss is
    exactly the adversarial cross-entropy.
    """

    def __init__(
        self,
        model: nn.Module,
        layers: LayerSpec = None,
        *,
        lam: float = 0.1,
        k: Union[int, float] = 0.1,
        refresh_every: int = 10,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not lam >= 0:
            raise ValueError(f"lam must be a number >= 0, got {lam!r}")
        if isinstance(refresh_every, bool) or not isinstance(refresh_every, int) or refresh_every < 1:
            raise ValueError(f"refresh_every must be a positive int, got {refresh_every!r}")
        top_k_count(k, 1)  # validates k
        self.model = model
        self.modules = resolve_layers(model, layers)
        self.lam = float(lam)
        self.k = k
        self.refresh_every = refresh_every
        self.steps = 0
        self.sensitive: Dict[str, torch.Tensor] = {}
        self.last: Dict[str, float] = {}
        self.logits_adv: Optional[torch.Tensor] = None

    def batch_sensitivity(self, x: torch.Tensor, x_adv: torch.Tensor) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """Logits on ``x_adv`` and, per layer, the batch's per-neuron sigma (C,), with graph."""
        with LayerOutputs(self.modules) as rec:
            self.model(x)
            benign = {n: neuron_view(rec.get(n), default_axis(m), n) for n, m in self.modules.items()}
            logits_adv = self.model(x_adv)
            sigma = {
                n: neuron_distance(benign[n], neuron_view(rec.get(n), default_axis(m), n)).mean(dim=0)
                for n, m in self.modules.items()
            }
        return logits_adv, sigma

    def refresh(self, sigma: Dict[str, torch.Tensor]) -> None:
        """Re-select each layer's sensitive neurons: the top-k of ``sigma``."""
        self.sensitive = {n: top_k_indices(s.detach(), top_k_count(self.k, s.numel())) for n, s in sigma.items()}

    def __call__(self, x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.shape != x_adv.shape:
            raise ValueError(f"x and x_adv must have the same shape, got {tuple(x.shape)} and {tuple(x_adv.shape)}")
        logits_adv, sigma = self.batch_sensitivity(x, x_adv)
        if self.steps % self.refresh_every == 0:
            self.refresh(sigma)
        self.steps += 1
        ce = F.cross_entropy(logits_adv, y)
        penalty = sum(sigma[n][idx].sum() for n, idx in self.sensitive.items())
        loss = ce + self.lam * penalty
        self.last = {"loss": loss.item(), "ce": ce.item(), "penalty": float(penalty.detach())}
        self.logits_adv = logits_adv.detach()
        return loss


def _batches(train_data, batch_size: int, generator: torch.Generator) -> Iterable:
    """Shuffled (x, y) batches of a tensor pair, or the user's iterable of batches."""
    if isinstance(train_data, (tuple, list)) and len(train_data) == 2 and isinstance(train_data[0], torch.Tensor):
        x, y = train_data
        order = torch.randperm(x.shape[0], generator=generator)
        return [(x[order[s:s + batch_size]], y[order[s:s + batch_size]]) for s in range(0, x.shape[0], batch_size)]
    return train_data


def _check_train_data(train_data) -> None:
    if isinstance(train_data, (tuple, list)) and len(train_data) == 2 and isinstance(train_data[0], torch.Tensor):
        x, y = train_data
        check_images(x, "train_data x")
        if not isinstance(y, torch.Tensor) or y.dtype != torch.long or y.shape != x.shape[:1]:
            raise ValueError("train_data must be (x, y) with y an int64 tensor of shape (N,), "
                             "or an iterable of such batches")
    elif iter(train_data) is train_data:
        raise TypeError("train_data must be an (x, y) tensor pair or a re-iterable of batches "
                        "(e.g. a DataLoader), not an iterator")


def _optimizer(model: nn.Module, name: str, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    raise ValueError(f"optimizer must be 'adam' or 'sgd', got {name!r}")


def train_adversarial(
    model: nn.Module,
    train_data,
    *,
    method: str = "pgd",
    epochs: int = 10,
    lr: float = 1e-3,
    batch_size: int = 64,
    optimizer: str = "adam",
    weight_decay: float = 0.0,
    eps: float = 0.1,
    norm="inf",
    steps: int = 10,
    step_size: Optional[float] = None,
    clip_values: Tuple[float, float] = (0.0, 1.0),
    sns_lambda: float = 0.1,
    sns_k: Union[int, float] = 0.1,
    sns_layers: LayerSpec = None,
    refresh_every: int = 10,
    seed: int = 0,
    progress: bool = False,
) -> List[Dict[str, float]]:
    """Train ``model`` in place and return one record per epoch (mean "loss", "ce",
    "penalty" (SNS only, else NaN) and "accuracy" on the batches it trained on).

    ``method``: "standard" (cross-entropy on the clean inputs), "pgd" (Madry et al.:
    cross-entropy on PGD adversarial examples with ``eps``, ``norm``, ``steps``,
    ``step_size``, random start) or "sns" (:class:`SNSLoss` on the same PGD examples,
    with ``sns_lambda``, ``sns_k``, ``sns_layers``, ``refresh_every``). All three use the
    same optimiser, batches and epochs, so they compare at the same budget. Adversarial
    examples are made with the model in eval mode (``robustx.attacks.pgd``), the update
    in train mode; the model's mode is restored at the end.
    ``train_data``: an (x, y) tensor pair (shuffled each epoch from ``seed``) or a
    re-iterable of (x, y) batches such as a DataLoader. Same seed, same model.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    for name, value in (("epochs", epochs), ("batch_size", batch_size), ("steps", steps)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    _check_train_data(train_data)
    opt = _optimizer(model, optimizer, lr, weight_decay)
    sns = SNSLoss(model, sns_layers, lam=sns_lambda, k=sns_k, refresh_every=refresh_every) if method == "sns" else None
    generator = torch.Generator().manual_seed(seed)
    attack = None if method == "standard" else dict(
        eps=eps, norm=norm, steps=steps, step_size=step_size, clip_values=clip_values)
    was_training = model.training
    history: List[Dict[str, float]] = []
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # dropout and other in-model randomness
            for epoch in progress_bar(range(epochs), progress, f"{method} training", epochs):
                batches = _batches(train_data, batch_size, generator)
                record = _epoch(model, batches, opt, attack, sns, seed * 1_000_003 + len(history) * 100_003)
                history.append({"epoch": epoch, **record})
    finally:
        model.train(was_training)
    return history


def _epoch(model, batches, opt, attack: Optional[dict], sns: Optional[SNSLoss], seed: int) -> Dict[str, float]:
    """One pass over ``batches``; returns the epoch means of loss, ce, penalty, accuracy."""
    device = model_device(model)
    sums = {"loss": 0.0, "ce": 0.0, "penalty": 0.0, "accuracy": 0.0}
    n = 0
    for step, (x, y) in enumerate(batches):
        x, y = x.to(device), y.to(device)
        x_train = x if attack is None else pgd(model, x, y, **attack, seed=(seed + step) % 2**63)
        model.train()
        if sns is None:
            logits = model(x_train)
            loss = F.cross_entropy(logits, y)
            record = {"loss": loss.item(), "ce": loss.item(), "penalty": float("nan")}
        else:
            loss = sns(x, x_train, y)
            logits, record = sns.logits_adv, sns.last
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        record = {**record, "accuracy": (logits.argmax(dim=1) == y).float().mean().item()}
        for key in sums:
            sums[key] += record[key] * y.shape[0]
        n += y.shape[0]
    if n == 0:
        raise ValueError("train_data yielded no batches")
    return {key: v / n for key, v in sums.items()}


def train_sns(model: nn.Module, train_data, **kwargs) -> List[Dict[str, float]]:
    """Sensitive Neuron Stabilizing training: :func:`train_adversarial` with
    ``method="sns"`` (same keyword arguments)."""
    return train_adversarial(model, train_data, method="sns", **kwargs)
