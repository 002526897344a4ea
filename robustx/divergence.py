"""Prediction-divergence robustness metric (Yu et al., IJCAI 2019, arXiv 1905.04270).

For input x and p(x) = softmax(Z(x)) the metric is the largest divergence of the
prediction inside the eps-ball:

    psi(x) = max_{||delta||_p <= eps} D(p(x) || p(x + delta)),   D = KL (or JS),

estimated from below by projected gradient ascent on D from random starts uniform in the
ball (``robustx.ops.ball_sample``): every visited point is a feasible delta, so the
largest D seen over all iterates and restarts is a lower bound of psi(x). The model's
score is the mean over a data set. **Lower = more robust.**

Invariance to the logit scale (reconstruction). The paper states that its evaluation is
adjusted to stay consistent under model reparameterization (Dinh et al. 2017) and that
it gives "a uniformed evaluation to models with different structures and parameter
scales"; the text of that adjustment was not reachable here. With plain softmax, a model
whose logits are multiplied by c > 0 makes the same decisions but gets another score
(the digits CNN, eps = 0.1 in L-inf: mean KL 1.23 for Z, 3.61 for 3 Z). By default (``normalize=True``)
both distributions are therefore taken at a temperature fixed per input from the clean
logits,

    p(x') = softmax(Z(x') / tau(x)),   tau(x) = std_k Z_k(x) = ||Z(x) - mean_k Z_k(x)||_2 / sqrt(K),

so Z -> c Z + b (c > 0, b the same for every class) leaves psi unchanged. This choice is
ours, not the paper's.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from robustx import checks
from robustx.geometry import norm_name, project_ball, project_box, steepest_ascent
from robustx.modelutil import chunks, frozen_eval, model_device, progress_bar
from robustx.ops import ball_sample
from robustx.results import Result, deprecated_attribute

__all__ = ["DivergenceResult", "divergence_bound", "kl_divergence", "js_divergence", "logit_temperature"]

DIVERGENCES = ("kl", "js")


@dataclass
class DivergenceResult(Result):
    """``value``: the model's score, the mean of ``per_sample`` (lower = more robust).
    ``per_sample`` (N,): max divergence found per input; ``per_restart`` (R, N): the max of
    each restart; ``history`` (R, steps + 1, N): D at every visited point (the random start,
    then each iterate); ``iterates`` (R, steps + 1, N, *shape) when requested, else None."""

    per_sample: torch.Tensor
    per_restart: torch.Tensor
    history: torch.Tensor
    iterates: Optional[torch.Tensor]
    eps: float
    norm: float
    divergence: str
    temperature: torch.Tensor
    normalized: bool
    mean = deprecated_attribute("mean", "value")

    @property
    def value(self) -> float:
        """The model's score: mean of ``per_sample`` (lower = more robust)."""
        return float(self.per_sample.mean())

    def to_dict(self) -> dict:
        """JSON-ready dict: the score, settings and every tensor as nested lists (norm as "2" / "inf")."""
        return {
            "value": self.value,
            "per_sample": self.per_sample.tolist(),
            "per_restart": self.per_restart.tolist(),
            "history": self.history.tolist(),
            "iterates": None if self.iterates is None else self.iterates.tolist(),
            "eps": self.eps,
            "norm": norm_name(self.norm),
            "divergence": self.divergence,
            "temperature": self.temperature.tolist(),
            "normalized": self.normalized,
        }


def kl_divergence(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) = sum_i p_i (log p_i - log q_i) per row, from log-probabilities (rounding
    below 0 clamped to 0)."""
    return (log_p.exp() * (log_p - log_q)).sum(-1).clamp_min(0.0)


def js_divergence(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """JS(p, q) = (KL(p || m) + KL(q || m)) / 2 with m = (p + q) / 2, per row (<= log 2)."""
    log_m = torch.logsumexp(torch.stack((log_p, log_q)), 0) - math.log(2.0)
    return 0.5 * (kl_divergence(log_p, log_m) + kl_divergence(log_q, log_m))


_DIVERGENCE_FNS = {"kl": kl_divergence, "js": js_divergence}


def logit_temperature(logits: torch.Tensor) -> torch.Tensor:
    """tau = std_k Z_k per row (population std over the K classes), (N, K) -> (N,): the
    temperature making softmax(Z / tau) invariant to Z -> c Z + b, c > 0. A row whose
    logits are all equal has tau = 0 and gets tau = 1 (plain softmax)."""
    tau = logits.std(dim=1, correction=0)
    return torch.where(tau > 0, tau, torch.ones_like(tau))


def _ascend(model, x, log_p, tau, start, *, eps, p, steps, step_size, clip_values, div_fn, keep_iterates):
    """Projected gradient ascent on D(p(x) || p(x')), p(x') = softmax(Z(x') / tau), from
    x'_0 = ``start`` for one chunk:
    x'_{t+1} = clip(P_eps(x'_t + step_size * s(grad D))), s the steepest-ascent direction,
    P_eps the projection onto B_p(x, eps), clip onto the box (when given).

    Returns the divergence at each visited point (steps + 1, n) and the points if asked."""
    point = start.clone()
    history, visited = [], []
    for t in range(steps + 1):
        point.requires_grad_(t < steps)
        d = div_fn(log_p, F.log_softmax(model(point) / tau[:, None], dim=1))
        history.append(d.detach())
        if keep_iterates:
            visited.append(point.detach().clone())
        if t == steps:
            break
        (grad,) = torch.autograd.grad(d.sum(), point)
        with torch.no_grad():
            point = project_box(project_ball(point + step_size * steepest_ascent(grad, p), x, eps, p), clip_values)
    return torch.stack(history), (torch.stack(visited) if keep_iterates else None)


def divergence_bound(
    model: nn.Module,
    x: torch.Tensor,
    *,
    eps: float,
    norm="inf",
    steps: int = 20,
    step_size: Optional[float] = None,
    restarts: int = 1,
    divergence: str = "kl",
    clip_values: Optional[Tuple[float, float]] = (0.0, 1.0),
    seed: int = 0,
    batch_size: int = 256,
    progress: bool = True,
    return_iterates: bool = False,
    normalize: bool = True,
) -> DivergenceResult:
    """Lower estimate of max_{||delta||_p <= eps} D(p(x) || p(x + delta)) for each input.

    ``norm`` 2 or inf; ``steps`` (>= 0) ascent steps of ``step_size`` (default 2.5 eps / steps,
    Madry et al.) from each of ``restarts`` random starts uniform in the ball (restart r
    uses ``ball_sample(x, 1, eps, norm, clip_values, seed, offset=r)``, so results do not
    depend on ``batch_size``). ``clip_values`` (default (0, 1); None: no domain) is the
    data domain: x must lie inside and every point is clipped to it. ``divergence`` "kl"
    (the paper) or "js". ``normalize`` (default True) divides the logits of x and of every
    x' by tau(x) (:func:`logit_temperature`; module docstring: a reconstruction making the
    score invariant to the logit scale); False is the plain softmax. Lower = more robust.
    """
    checks.model(model)
    clip_values = checks.clip_range(clip_values)
    checks.images(x, "x", clip_values)
    eps = checks.positive_float(eps, "eps")
    p = checks.norm(norm, allowed=(2.0, math.inf))
    steps = checks.integer(steps, "steps", minimum=0)
    restarts = checks.integer(restarts, "restarts")
    batch_size = checks.integer(batch_size, "batch_size")
    seed = checks.seed(seed)
    if not isinstance(normalize, bool):
        raise TypeError(f"normalize must be True or False, got {normalize!r}")
    if divergence not in DIVERGENCES:
        raise ValueError(f"divergence must be one of {DIVERGENCES}, got {divergence!r}")
    step_size = 2.5 * eps / max(steps, 1) if step_size is None else checks.positive_float(step_size, "step_size")
    div_fn = _DIVERGENCE_FNS[divergence]
    device = model_device(model)
    x = x.detach().to(device)
    n = x.shape[0]
    history = torch.empty(restarts, steps + 1, n, dtype=torch.float64)
    iterates = torch.empty(restarts, steps + 1, *x.shape, dtype=x.dtype) if return_iterates else None
    with frozen_eval(model):
        with torch.no_grad():
            logits = torch.cat([model(x[sl]) for sl in chunks(n, batch_size)])
            tau = logit_temperature(logits) if normalize else torch.ones(n, dtype=logits.dtype, device=device)
            log_p = F.log_softmax(logits / tau[:, None], dim=1)
        jobs = [(r, sl) for r in range(restarts) for sl in chunks(n, batch_size)]
        for r, sl in progress_bar(jobs, progress, "divergence bound"):
            if sl.start == 0:
                starts = ball_sample(x, 1, eps, p, clip_values, seed, offset=r)[:, 0]
            h, v = _ascend(model, x[sl], log_p[sl], tau[sl], starts[sl], eps=eps, p=p, steps=steps, step_size=step_size,
                           clip_values=clip_values, div_fn=div_fn, keep_iterates=return_iterates)
            history[r, :, sl] = h.double().cpu()
            if return_iterates:
                iterates[r, :, sl] = v.cpu()
    per_restart = history.amax(1)
    return DivergenceResult(per_restart.amax(0), per_restart, history, iterates, eps, p, divergence,
                            tau.double().cpu(), normalize)


