"""Training-time defenses: PGD adversarial training (Madry et al. 2018) and Sensitive
Neuron Stabilizing, SNS (Zhang et al., arXiv 1909.06978).

SNS minimises, per batch of benign inputs x_i, their adversarial versions x'_i (PGD by
default; any :class:`robustx.attacks.Attack`) and labels y_i::

    L = CE(f(x'), y) + lambda * sum_l sum_{m in S_l} sigma_l^m(x, x')
    sigma_l^m(x, x') = (1/B) sum_i ||F_l^m(x_i) - F_l^m(x'_i)||_1 / dim(F_l^m)

where S_l, the *sensitive neurons* of layer l, are the top-k neurons of the batch's
sigma_l, re-selected every ``refresh_every`` steps. Unlike the evaluation code, these
functions train the model: they update its parameters in place.
"""
from __future__ import annotations

from typing import Callable, Dict, Iterable, List, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from robustx import attacks, checks
from robustx.attacks import Attack
from robustx.modelutil import LayerOutputs, LayerSpec, frozen_eval, model_device, progress_bar, resolve_layers
from robustx.neurons import default_axis, neuron_view
from robustx.results import deprecated_attribute
from robustx.sensitivity import neuron_distance, top_k_count, top_k_indices

__all__ = ["SNSLoss", "train_adversarial", "train_sns", "METHODS"]

METHODS = ("standard", "pgd", "sns")


class SNSLoss:
    """The SNS objective CE(f(x'), y) + lambda * sum over the chosen layers of the batch
    sensitivity of their top-k sensitive neurons (see the module docstring); lambda is
    ``sns_lambda`` (``lam`` is its deprecated name).

    ``loss = SNSLoss(model, layers, sns_lambda=0.1, top_k=0.1, refresh_every=10)(x, x_adv, y)``
    runs the model (in whatever mode it is) on ``x`` and on ``x_adv``; gradients flow
    through both. ``top_k`` is a neuron count or a fraction of each layer's neurons.
    After a call, ``sensitive[name]`` holds the current sensitive-neuron indices and
    ``last`` the float values of "loss", "ce" and "penalty". With ``sns_lambda=0`` the
    loss is exactly the adversarial cross-entropy.
    """

    lam = deprecated_attribute("lam", "sns_lambda")

    @checks.renamed(lam="sns_lambda")
    def __init__(
        self,
        model: nn.Module,
        layers: LayerSpec = None,
        *,
        sns_lambda: float = 0.1,
        top_k: Union[int, float] = 0.1,
        refresh_every: int = 10,
    ) -> None:
        checks.model(model)
        sns_lambda = checks.non_negative_float(sns_lambda, "sns_lambda")
        top_k_count(top_k, 1)  # validates top_k
        self.model = model
        self.modules = resolve_layers(model, layers)
        self.sns_lambda = sns_lambda
        self.top_k = top_k
        self.refresh_every = checks.integer(refresh_every, "refresh_every")
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
        self.sensitive = {n: top_k_indices(s.detach(), top_k_count(self.top_k, s.numel())) for n, s in sigma.items()}

    def __call__(self, x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.shape != x_adv.shape:
            raise ValueError(f"x and x_adv must have the same shape, got {tuple(x.shape)} and {tuple(x_adv.shape)}")
        logits_adv, sigma = self.batch_sensitivity(x, x_adv)
        if self.steps % self.refresh_every == 0:
            self.refresh(sigma)
        self.steps += 1
        ce = F.cross_entropy(logits_adv, y)
        penalty = sum(sigma[n][idx].sum() for n, idx in self.sensitive.items())
        loss = ce + self.sns_lambda * penalty
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


def _check_train_data(train_data):
    """``train_data`` checked: an (x, y) tensor pair (y as int64) or a re-iterable of batches."""
    if isinstance(train_data, (tuple, list)) and len(train_data) == 2 and isinstance(train_data[0], torch.Tensor):
        x, y = train_data
        checks.images(x, "train_data x")
        return x, checks.labels(y, x.shape[0], "train_data y")
    if iter(train_data) is train_data:
        raise TypeError("train_data must be an (x, y) tensor pair or a re-iterable of batches "
                        "(e.g. a DataLoader), not an iterator")
    return train_data


def _attack_maker(attack: Union[str, Attack], settings: dict) -> Callable[[int], Attack]:
    """Batch seed -> the attack to run on that batch. A callable is used as given; a built-in
    name gets the ``settings`` it accepts, no progress bar, and the batch seed if it takes one."""
    if callable(attack):
        return lambda seed: attack
    accepted = attacks.attack_settings(attack)
    fixed = {k: v for k, v in {**settings, "progress": False}.items() if k in accepted}
    if "seed" in accepted:
        return lambda seed: attacks.get_attack(attack, **fixed, seed=seed)
    built = attacks.get_attack(attack, **fixed)
    return lambda seed: built


def _adversarial(model: nn.Module, attack: Attack, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """attack(model, x, y) with the model in eval mode and frozen, detached and shape-checked."""
    with frozen_eval(model):
        x_adv = attack(model, x, y)
    if not isinstance(x_adv, torch.Tensor) or x_adv.shape != x.shape:
        raise ValueError(f"attack must return a tensor of the inputs' shape {tuple(x.shape)}, got "
                         f"{tuple(x_adv.shape) if isinstance(x_adv, torch.Tensor) else type(x_adv).__name__}")
    return x_adv.detach().to(device=x.device, dtype=x.dtype)


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
    attack: Union[str, Attack] = "pgd",
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
    sns_top_k: Union[int, float] = 0.1,
    sns_layers: LayerSpec = None,
    refresh_every: int = 10,
    seed: int = 0,
    progress: bool = True,
) -> List[Dict[str, float]]:
    """Train ``model`` in place and return one record per epoch (mean "loss", "ce",
    "penalty" (SNS only, else NaN) and "accuracy" on the batches it trained on).

    ``method``: "standard" (cross-entropy on the clean inputs), "pgd" (Madry et al.:
    cross-entropy on the adversarial examples of ``attack``) or "sns" (:class:`SNSLoss`
    on the same adversarial examples, with ``sns_lambda``, ``sns_top_k``, ``sns_layers``,
    ``refresh_every``). All three use the same optimiser, batches and epochs, so they
    compare at the same budget.
    ``attack``: a callable ``attack(model, x, y) -> x_adv`` (:class:`robustx.attacks.Attack`,
    e.g. ``robustx.attacks.get_attack("cw", steps=100)``), or the name of a built-in attack
    ("pgd", the default: random start; "fgsm", "deepfool", "cw"), run with those of ``eps``,
    ``norm``, ``steps``, ``step_size``, ``clip_values`` it accepts and a fresh seed per batch.
    Adversarial examples are made with the model in eval mode and frozen, the update in
    train mode; the model's mode is restored at the end.
    ``train_data``: an (x, y) tensor pair (shuffled each epoch from ``seed``) or a
    re-iterable of (x, y) batches such as a DataLoader. Same seed, same model.
    """
    checks.model(model)
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    epochs = checks.integer(epochs, "epochs")
    batch_size = checks.integer(batch_size, "batch_size")
    seed = checks.seed(seed)
    make_attack = _attack_maker(attack, dict(eps=eps, norm=norm, steps=steps, step_size=step_size,
                                             clip_values=clip_values))
    train_data = _check_train_data(train_data)
    opt = _optimizer(model, optimizer, checks.positive_float(lr, "lr"), weight_decay)
    sns = (SNSLoss(model, sns_layers, sns_lambda=sns_lambda, top_k=sns_top_k, refresh_every=refresh_every)
           if method == "sns" else None)
    generator = torch.Generator().manual_seed(seed)
    was_training = model.training
    history: List[Dict[str, float]] = []
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # dropout and other in-model randomness
            for epoch in progress_bar(range(epochs), progress, f"{method} training", epochs):
                batches = _batches(train_data, batch_size, generator)
                record = _epoch(model, batches, opt, None if method == "standard" else make_attack, sns,
                                seed * 1_000_003 + len(history) * 100_003)
                history.append({"epoch": epoch, **record})
    finally:
        model.train(was_training)
    return history


def _epoch(model, batches, opt, make_attack: Optional[Callable[[int], Attack]], sns: Optional[SNSLoss],
           seed: int) -> Dict[str, float]:
    """One pass over ``batches``; returns the epoch means of loss, ce, penalty, accuracy."""
    device = model_device(model)
    sums = {"loss": 0.0, "ce": 0.0, "penalty": 0.0, "accuracy": 0.0}
    n = 0
    for step, (x, y) in enumerate(batches):
        x, y = x.to(device), y.to(device)
        x_train = x if make_attack is None else _adversarial(model, make_attack((seed + step) % 2**63), x, y)
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
