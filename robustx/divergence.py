"""Prediction-divergence robustness metric (Yu et al., IJCAI 2019, arXiv 1905.04270).

For input x and p(x) = softmax(Z(x)) the metric is the largest divergence of the
prediction inside the eps-ball:

    psi(x) = max_{||delta||_p <= eps} D(p(x) || p(x + delta)),   D = KL (or JS),

estimated from below by projected gradient ascent on D from random starts uniform in the
ball (``robustx.ops.ball_sample``): every visited point is a feasible delta, so the
largest D seen over all iterates and restarts is a lower bound of psi(x). The model's
score is the mean over a data set. **Lower = more robust.**
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

__all__ = ["DivergenceResult", "divergence_bound", "kl_divergence", "js_divergence"]

DIVERGENCES = ("kl", "js")


@dataclass
class DivergenceResult:
    """``per_sample`` (N,): max divergence found per input; ``per_restart`` (R, N): the max of
    each restart; ``history`` (R, steps + 1, N): D at every visited point (the random start,
    then each iterate); ``iterates`` (R, steps + 1, N, *shape) when requested, else None."""

    per_sample: torch.Tensor
    per_restart: torch.Tensor
    history: torch.Tensor
    iterates: Optional[torch.Tensor]
    eps: float
    norm: float
    divergence: str

    @property
    def mean(self) -> float:
        """The model's score: mean of ``per_sample`` (lower = more robust)."""
        return float(self.per_sample.mean())

    def to_dict(self) -> dict:
        """JSON-ready dict: the score, settings and every tensor as nested lists (norm as "2" / "inf")."""
        return {
            "mean": self.mean,
            "per_sample": self.per_sample.tolist(),
            "per_restart": self.per_restart.tolist(),
            "history": self.history.tolist(),
            "iterates": None if self.iterates is None else self.iterates.tolist(),
            "eps": self.eps,
            "norm": norm_name(self.norm),
            "divergence": self.divergence,
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


def _ascend(model, x, log_p, start, *, eps, p, steps, step_size, clip_values, div_fn, keep_iterates):
    """Projected gradient ascent on D(p(x) || p(x')) from x'_0 = ``start`` for one chunk:
    x'_{t+1} = clip(P_eps(x'_t + step_size * s(grad D))), s the steepest-ascent direction,
    P_eps the projection onto B_p(x, eps), clip onto the box (when given).

    Returns the divergence at each visited point (steps + 1, n) and the points if asked."""
    point = start.clone()
    history, visited = [], []
    for t in range(steps + 1):
        point.requires_grad_(t < steps)
        d = div_fn(log_p, F.log_softmax(model(point), dim=1))
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
    clip_values: Optional[Tuple[float, float]] = None,
    seed: int = 0,
    batch_size: int = 256,
    progress: bool = True,
    return_iterates: bool = False,
) -> DivergenceResult:
    """Lower estimate of max_{||delta||_p <= eps} D(p(x) || p(x + delta)) for each input.

    ``norm`` 2 or inf; ``steps`` (>= 0) ascent steps of ``step_size`` (default 2.5 eps / steps,
    Madry et al.) from each of ``restarts`` random starts uniform in the ball (restart r
    uses ``ball_sample(x, 1, eps, norm, clip_values, seed, offset=r)``, so results do not
    depend on ``batch_size``). With ``clip_values`` every point is clipped to the data
    domain. ``divergence`` "kl" (the paper) or "js". Lower = more robust.
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
            log_p = torch.cat([F.log_softmax(model(x[sl]), dim=1) for sl in chunks(n, batch_size)])
        jobs = [(r, sl) for r in range(restarts) for sl in chunks(n, batch_size)]
        for r, sl in progress_bar(jobs, progress, "divergence bound"):
            if sl.start == 0:
                starts = ball_sample(x, 1, eps, p, clip_values, seed, offset=r)[:, 0]
            h, v = _ascend(model, x[sl], log_p[sl], starts[sl], eps=eps, p=p, steps=steps, step_size=step_size,
                           clip_values=clip_values, div_fn=div_fn, keep_iterates=return_iterates)
            history[r, :, sl] = h.double().cpu()
            if return_iterates:
                iterates[r, :, sl] = v.cpu()
    per_restart = history.amax(1)
    return DivergenceResult(per_restart.amax(0), per_restart, history, iterates, eps, p, divergence)


