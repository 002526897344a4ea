"""Adversarial attacks on classifiers that return logits, batched over inputs.

* :func:`fgsm` - fast gradient sign method (Goodfellow et al. 2015) and its L2 variant;
* :func:`pgd` - projected gradient descent (Madry et al. 2018), L-inf and L2, random
  starts and restarts;
* :func:`deepfool` - minimal L2 perturbation to the nearest linearised boundary
  (Moosavi-Dezfooli et al. 2016);
* :func:`carlini_wagner_l2` - Carlini & Wagner (2017) L2 attack;
* :func:`robustx.autoattack.autoattack` - AutoAttack (Croce & Hein 2020), the field's
  reference, through its authors' code (the optional ``pyautoattack`` package).

Every attack returns adversarial examples with the shape, dtype and device of ``x``. The
model runs in eval mode with frozen parameters (:func:`robustx.modelutil.frozen_eval`);
gradients are taken w.r.t. the inputs only. Inputs are processed in chunks of
``batch_size``; each input's result does not depend on the chunking.

**The attack protocol.** Code that needs adversarial examples (adversarial training,
evaluation) takes an :class:`Attack`: any callable ``attack(model, x, y) -> x_adv``.
:func:`get_attack` turns a built-in attack, named in :data:`ATTACKS`, and its settings
into one: ``get_attack("pgd", eps=8 / 255, steps=10)``.
"""
from __future__ import annotations

import functools
import inspect
import math
from typing import Callable, Dict, Optional, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from robustx import checks, ops
from robustx.autoattack import autoattack
from robustx.geometry import logit_margin, project_ball, project_box, steepest_ascent
from robustx.modelutil import chunks, frozen_eval, model_device, progress_bar

__all__ = ["Attack", "ATTACKS", "get_attack", "attack_settings", "fgsm", "pgd", "deepfool", "carlini_wagner_l2"]

_TINY = 1e-12  # floor of DeepFool's gradient-difference norms before dividing by them
DEEPFOOL_MARGIN = 1e-4  # added to each DeepFool step's length so it crosses the linearised boundary
ATTACK_NORMS = (2.0, math.inf)


class Attack(Protocol):
    """An attack: ``attack(model, x, y) -> x_adv`` with the shape, dtype and device of x
    (y: the labels, or the targets of a targeted attack)."""

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor: ...


# ------------------------------------------------------------------------- helpers
def _n_classes(model: nn.Module, x: torch.Tensor) -> int:
    """Number of logits the model outputs (one forward pass on the first input)."""
    with torch.no_grad():
        return model(x[:1]).shape[1]


def _objective(logits: torch.Tensor, y: torch.Tensor, targeted: bool) -> torch.Tensor:
    """Per-sample attack objective to maximise: CE(f(x), y), or -CE towards target y."""
    loss = F.cross_entropy(logits, y, reduction="none")
    return -loss if targeted else loss


def _objective_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor, targeted: bool) -> torch.Tensor:
    x = x.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(_objective(model(x), y, targeted).sum(), x)
    return grad


def _chunked(fn: Callable, batch_size: int, *tensors: torch.Tensor) -> torch.Tensor:
    """fn applied to consecutive chunks of the tensors (split on dim 0), results concatenated."""
    return torch.cat([fn(*(t[s] for t in tensors)) for s in chunks(tensors[0].shape[0], batch_size)])


# ---------------------------------------------------------------------- FGSM / PGD
def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *, norm="inf",
         clip_values=(0.0, 1.0), targeted: bool = False, batch_size: int = 256) -> torch.Tensor:
    """Fast gradient method: one step of size ``eps`` along the steepest-ascent direction.

    x' = clip(x + eps * s), s = sign(grad_x J) for L-inf (FGSM), grad_x J / ||grad_x J||_2
    for L2 (FGM); J = CE(f(x), y), or -CE(f(x), y) with ``targeted=True`` (y = targets).
    Equal to :func:`pgd` with ``steps=1, step_size=eps, random_start=False``. Returns x'
    with the shape, dtype and device of x.
    """
    return pgd(model, x, y, eps, norm=norm, steps=1, step_size=eps, random_start=False,
               clip_values=clip_values, targeted=targeted, batch_size=batch_size, progress=False)


def pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *, norm="inf", steps: int = 10,
        step_size: Optional[float] = None, random_start: bool = True, restarts: int = 1,
        clip_values=(0.0, 1.0), seed: int = 0, targeted: bool = False, batch_size: int = 256,
        progress: bool = True) -> torch.Tensor:
    """Projected gradient ascent on the cross-entropy inside the Lp ball (Madry et al. 2018).

    x_0 = x (or uniform in B_p(x, eps), clipped, with ``random_start``), then ``steps`` times
            x_{t+1} = clip(P_eps(x_t + alpha * s(grad_x J(x_t)))),
    s the steepest-ascent direction (:func:`robustx.geometry.steepest_ascent`: sign for L-inf,
    g / ||g||_2 for L2), P_eps the projection onto B_p(x, eps), clip onto the box, J as in
    :func:`fgsm`, alpha = ``step_size`` (default 2.5 eps / steps). With ``restarts`` > 1
    (random starts only) every input keeps its first successful result (misclassified, or
    classified as the target), else the one with the highest J. Random starts come from
    :func:`robustx.ops.ball_sample` (seed ``seed``, sample index = restart number).
    """
    checks.model(model)
    p = checks.norm(norm, allowed=ATTACK_NORMS)
    eps = checks.positive_float(eps, "eps")
    steps = checks.integer(steps, "steps")
    alpha = 2.5 * eps / steps if step_size is None else checks.positive_float(step_size, "step_size")
    restarts = checks.integer(restarts, "restarts")
    if restarts > 1 and not random_start:
        raise ValueError("restarts > 1 needs random_start=True (restarts from x itself are identical)")
    seed = checks.seed(seed)
    batch_size = checks.integer(batch_size, "batch_size")
    clip_values = checks.clip_range(clip_values)
    checks.images(x, "x", clip_values)
    device = model_device(model)
    x0 = x.detach().to(device)

    def run(xs, starts, ys):
        xa = starts
        for _ in progress_bar(range(steps), progress, "pgd"):
            xa = xa + alpha * steepest_ascent(_objective_gradient(model, xa, ys, targeted), p)
            xa = project_box(project_ball(xa, xs, eps, p), clip_values)
        return xa.detach()

    def logits_of(xs):
        with torch.no_grad():
            return model(xs)

    with frozen_eval(model), torch.enable_grad():
        y = checks.labels(y, x.shape[0], n_classes=_n_classes(model, x0)).to(device)
        best = x0.clone()
        best_obj = torch.full((x0.shape[0],), -math.inf, device=device, dtype=torch.float64)
        done = torch.zeros(x0.shape[0], dtype=torch.bool, device=device)
        for r in range(restarts):
            start = ops.ball_sample(x0, 1, eps, norm=p, clip_values=clip_values, seed=seed, offset=r)[:, 0] \
                if random_start else x0
            idx = (~done).nonzero().squeeze(1)
            xa = _chunked(run, batch_size, x0[idx], start[idx], y[idx])
            logits = _chunked(logits_of, batch_size, xa)
            success = (logits.argmax(1) == y[idx]) if targeted else (logits.argmax(1) != y[idx])
            obj = _objective(logits, y[idx], targeted).double()
            take = success | (obj > best_obj[idx])
            best[idx[take]] = xa[take]
            best_obj[idx] = torch.maximum(obj, best_obj[idx])
            done[idx] = success
            if done.all():
                break
    return best.to(device=x.device, dtype=x.dtype)


# -------------------------------------------------------------------------- DeepFool
def deepfool(model: nn.Module, x: torch.Tensor, *, steps: int = 50, overshoot: float = 0.02,
             candidates: int = 10, clip_values=(0.0, 1.0), batch_size: int = 128,
             progress: bool = True) -> torch.Tensor:
    """DeepFool, L2 (Moosavi-Dezfooli et al. 2016, Algorithm 2): the smallest step to the
    nearest boundary of the model linearised at the current iterate, repeated.

    k0 = argmax f(x). At iterate x_i, over the ``candidates`` top classes k != k0 of f(x):
        w'_k = grad f_k(x_i) - grad f_k0(x_i),   f'_k = f_k(x_i) - f_k0(x_i),
        l = argmin_k |f'_k| / ||w'_k||_2,        r_i = (|f'_l| / ||w'_l||_2 + 1e-4) * w'_l / ||w'_l||_2,
        x_{i+1} = clip(x + (1 + overshoot) * sum_{j <= i} r_j),
    until argmax f(x_{i+1}) != k0 or ``steps`` steps (then the last iterate is returned).
    For a linear model one step suffices: ||x' - x||_2 = (1 + overshoot) *
    (min_k |f_k0 - f_k| / ||w_k0 - w_k||_2 + 1e-4). Smaller is less robust.
    """
    checks.model(model)
    steps = checks.integer(steps, "steps")
    overshoot = checks.non_negative_float(overshoot, "overshoot")
    candidates = checks.integer(candidates, "candidates", minimum=2)
    batch_size = checks.integer(batch_size, "batch_size")
    clip_values = checks.clip_range(clip_values)
    checks.images(x, "x", clip_values)
    x0 = x.detach().to(model_device(model))

    def run(xs):
        with torch.no_grad():
            logits = model(xs)
        if logits.shape[1] < 2:
            raise ValueError(f"model must output at least 2 logits, got {logits.shape[1]}")
        classes = logits.topk(min(candidates, logits.shape[1]), dim=1).indices  # column 0: k0
        r_total = torch.zeros_like(xs)
        xa = xs.clone()
        active = torch.ones(xs.shape[0], dtype=torch.bool, device=xs.device)
        for _ in progress_bar(range(steps), progress, "deepfool"):
            idx = active.nonzero().squeeze(1)
            xi = xa[idx].requires_grad_(True)
            f = model(xi)
            still = f.argmax(1) == classes[idx, 0]
            active[idx[~still]] = False
            if not still.any():
                break
            f = f.gather(1, classes[idx])
            grads = torch.stack([torch.autograd.grad(f[:, j].sum(), xi, retain_graph=j + 1 < f.shape[1])[0]
                                 for j in range(f.shape[1])], 1)
            idx, f, grads = idx[still], f[still].detach(), grads[still]
            w = grads[:, 1:] - grads[:, :1]  # (m, C-1, *shape)
            f_diff = (f[:, 1:] - f[:, :1]).abs()
            w_norm = w.flatten(2).norm(dim=2).clamp_min(_TINY)
            best = (f_diff / w_norm).argmin(1)
            rows = torch.arange(idx.shape[0], device=xs.device)
            scale = (f_diff[rows, best] / w_norm[rows, best] + DEEPFOOL_MARGIN) / w_norm[rows, best]
            r_total[idx] += scale.view(-1, *([1] * (xs.dim() - 1))) * w[rows, best]
            xa[idx] = project_box(xs[idx] + (1.0 + overshoot) * r_total[idx], clip_values)
        return xa

    with frozen_eval(model), torch.enable_grad():
        out = _chunked(run, batch_size, x0)
    return out.to(device=x.device, dtype=x.dtype)


# ------------------------------------------------------------------- Carlini-Wagner
def carlini_wagner_l2(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, targeted: bool = False,
                      c_init: float = 1e-3, binary_steps: int = 9, steps: int = 1000, lr: float = 1e-2,
                      confidence: float = 0.0, abort_early: bool = True, clip_values=(0.0, 1.0),
                      batch_size: int = 128, progress: bool = True) -> torch.Tensor:
    """Carlini & Wagner (2017) L2 attack: the smallest-L2 adversarial example found.

    With lo, hi = ``clip_values`` and x'(w) = lo + (hi - lo)(tanh(w) + 1) / 2 (always in
    the box), Adam (``lr``, ``steps`` steps from x'(w) = x) minimises per input
        ||x'(w) - x||_2^2 + c * max(margin(Z(x'(w))), -kappa)
    (x as reconstructed through the tanh map, so the search starts at distance 0),
    margin = Z_y - max_{i != y} Z_i (:func:`robustx.geometry.logit_margin`; targeted, towards
    t = y: max_{i != t} Z_i - Z_t),
    kappa = ``confidence``, Z the logits. A binary search over c per input (``binary_steps``
    rounds, starting at ``c_init``: c *= 10 until an adversarial example is found, then
    bisection) keeps the smallest-L2 x' whose margin is <= -kappa. ``abort_early``: an input
    stops its round when its objective has not dropped by 0.01 % over a tenth of the steps
    (per input rather than over the batch, so chunking does not change results). Inputs
    never attacked successfully are returned unchanged. Smaller distortion = less robust.
    """
    checks.model(model)
    c_init = checks.positive_float(c_init, "c_init")
    binary_steps = checks.integer(binary_steps, "binary_steps")
    steps = checks.integer(steps, "steps")
    lr = checks.positive_float(lr, "lr")
    confidence = checks.non_negative_float(confidence, "confidence")
    batch_size = checks.integer(batch_size, "batch_size")
    if clip_values is None:
        raise ValueError("clip_values must be a pair (lo, hi) of finite bounds for this attack, got None")
    lo, hi = checks.clip_range(clip_values)
    checks.images(x, "x", (lo, hi))
    device = model_device(model)
    x0 = x.detach().to(device)
    check_every = math.ceil(steps / 10)

    def to_box(w):
        return lo + (hi - lo) * (torch.tanh(w) + 1) / 2

    def run(xs, ys):
        n = xs.shape[0]
        w0 = torch.atanh(((xs - lo) / (hi - lo) * 2 - 1) * (1 - 1e-6))
        x_rec = to_box(w0)
        c = torch.full((n,), c_init, dtype=torch.float64, device=device)
        c_low = torch.zeros_like(c)
        c_high = torch.full_like(c, math.inf)
        best = xs.clone()
        best_l2 = torch.full((n,), math.inf, dtype=torch.float64, device=device)
        for _ in progress_bar(range(binary_steps), progress, "carlini-wagner"):
            w, m, v = w0.clone(), torch.zeros_like(w0), torch.zeros_like(w0)
            c_t = c.to(xs.dtype)
            found = torch.zeros(n, dtype=torch.bool, device=device)
            active = torch.ones(n, dtype=torch.bool, device=device)
            previous = torch.full((n,), math.inf, dtype=torch.float64, device=device)
            for t in range(1, steps + 1):
                w.requires_grad_(True)
                xa = to_box(w)
                logits = model(xa)
                margin = -logit_margin(logits, ys) if targeted else logit_margin(logits, ys)
                objective = (xa - x_rec).flatten(1).pow(2).sum(1) + c_t * margin.clamp(min=-confidence)
                (grad,) = torch.autograd.grad(objective.sum(), w)
                w = w.detach()
                with torch.no_grad():
                    l2 = (xa - xs).flatten(1).norm(dim=1).double()
                    success = active & (margin <= -confidence)
                    found |= success
                    better = success & (l2 < best_l2)
                    best[better] = xa[better]
                    best_l2 = torch.where(better, l2, best_l2)
                    if abort_early and (t - 1) % check_every == 0:
                        stalled = objective.double() > 0.9999 * previous
                        active &= ~stalled
                        previous = objective.double()
                    if not active.any():
                        break
                    m = 0.9 * m + 0.1 * grad
                    v = 0.999 * v + 0.001 * grad * grad
                    step = lr * (m / (1 - 0.9 ** t)) / ((v / (1 - 0.999 ** t)).sqrt() + 1e-8)
                    w = torch.where(active.view(-1, *([1] * (w.dim() - 1))), w - step, w)
            c_high = torch.where(found, torch.minimum(c_high, c), c_high)
            c_low = torch.where(found, c_low, torch.maximum(c_low, c))
            c = torch.where(torch.isinf(c_high), c * 10, (c_low + c_high) / 2)
        return best

    with frozen_eval(model), torch.enable_grad():
        y = checks.labels(y, x.shape[0], n_classes=_n_classes(model, x0)).to(device)
        out = _chunked(run, batch_size, x0, y)
    return out.to(device=x.device, dtype=x.dtype)


# ------------------------------------------------------------------ attack protocol
def _deepfool_attack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, **kwargs) -> torch.Tensor:
    """:func:`deepfool` in the protocol's form: it moves away from the predicted class, y is unused."""
    return deepfool(model, x, **kwargs)


# the built-in attacks by name; get_attack puts one, with its settings, in the protocol form
ATTACKS = {"fgsm": fgsm, "pgd": pgd, "deepfool": deepfool, "cw": carlini_wagner_l2, "autoattack": autoattack}


def attack_settings(name: str) -> Dict[str, inspect.Parameter]:
    """The settings of the built-in attack ``name``: its parameters besides model, x and y, by name."""
    if not isinstance(name, str):
        raise TypeError(f"attack must be a name in {tuple(ATTACKS)} or a callable attack(model, x, y), "
                        f"got {type(name).__name__}")
    if name not in ATTACKS:
        raise ValueError(f"attack must be one of {tuple(ATTACKS)} or a callable attack(model, x, y), got {name!r}")
    params = inspect.signature(ATTACKS[name]).parameters
    return {k: v for k, v in params.items() if k not in ("model", "x", "y")}


def get_attack(name: str, **settings) -> Attack:
    """The built-in attack ``name`` (a key of :data:`ATTACKS`: "fgsm", "pgd", "deepfool",
    "cw" for :func:`carlini_wagner_l2`, or "autoattack") with ``settings`` fixed, as an :class:`Attack`
    ``attack(model, x, y) -> x_adv``. Unknown or missing settings raise TypeError naming them.

    ``get_attack("pgd", eps=0.1, steps=20)(model, x, y)`` is ``pgd(model, x, y, eps=0.1, steps=20)``.
    """
    accepted = attack_settings(name)
    unknown = sorted(set(settings) - set(accepted))
    if unknown:
        raise TypeError(f"attack {name!r} has no setting(s) {unknown}; it accepts {sorted(accepted)}")
    missing = [k for k, v in accepted.items() if v.default is inspect.Parameter.empty and k not in settings]
    if missing:
        raise TypeError(f"attack {name!r} needs the setting(s) {missing}")
    return functools.partial(_deepfool_attack if name == "deepfool" else ATTACKS[name], **settings)
