"""Lp geometry shared by every method: norm names and dual exponents, steepest-ascent
directions, projections onto the eps-ball and the data box, and the logit margin.

Norms are the exponents p in {1, 2, inf}; the dual exponent q satisfies 1/p + 1/q = 1.
Tensor functions work per sample: dimension 0 indexes the batch, the rest is one input.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch

from robustx.checks import parse_norm

__all__ = [
    "parse_norm",
    "dual_norm",
    "norm_name",
    "steepest_ascent",
    "project_ball",
    "project_box",
    "logit_margin",
]


def dual_norm(p: float) -> float:
    """The dual exponent q of p, 1/p + 1/q = 1: 1 -> inf, 2 -> 2, inf -> 1."""
    p = parse_norm(p, "p")
    return {1.0: math.inf, 2.0: 2.0}.get(p, 1.0)


def norm_name(p: float) -> str:
    """The short name of a norm exponent: "1", "2" or "inf"."""
    p = parse_norm(p, "p")
    return "inf" if math.isinf(p) else str(int(p))


def _ball_norm(p) -> float:
    """p as 2.0 or inf, the norms whose balls the gradient methods step in."""
    p = parse_norm(p, "p")
    if p == 1.0:
        raise ValueError("p must be 2 or inf for steepest-ascent steps and ball projections, got 1")
    return p


def _l2_per_sample(t: torch.Tensor) -> torch.Tensor:
    """||t_n||_2 of every sample, shaped (N, 1, ..., 1) to broadcast against t."""
    return t.flatten(1).norm(dim=1).view(-1, *([1] * (t.dim() - 1)))


def steepest_ascent(g: torch.Tensor, p) -> torch.Tensor:
    """d* = argmax_{||d||_p <= 1} <g, d> per sample: sign(g) for p = inf, g / ||g||_2 for p = 2.

    The maximum is <g, d*> = ||g||_q (q the dual exponent). It is also the unit direction
    of a vector g (the FGSM / landscape normalisation); a zero g gives a zero direction.
    """
    if math.isinf(_ball_norm(p)):
        return g.sign()
    return g / _l2_per_sample(g).clamp_min(torch.finfo(g.dtype).tiny)


def project_ball(x: torch.Tensor, x0: torch.Tensor, eps: float, p) -> torch.Tensor:
    """Euclidean projection of x onto B_p(x0, eps) = {x : ||x - x0||_p <= eps}, per sample.

    p = inf: x0 + clamp(x - x0, -eps, eps); p = 2: x0 + (x - x0) * min(1, eps / ||x - x0||_2).
    """
    delta = x - x0
    if math.isinf(_ball_norm(p)):
        return x0 + delta.clamp(-eps, eps)
    return x0 + delta * (eps / _l2_per_sample(delta).clamp_min(torch.finfo(delta.dtype).tiny)).clamp(max=1.0)


def project_box(x: torch.Tensor, clip_values: Optional[Tuple[float, float]]) -> torch.Tensor:
    """Projection onto the data box [lo, hi] = ``clip_values``: clamp(x, lo, hi); None: x."""
    return x if clip_values is None else x.clamp(*clip_values)


def logit_margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """m = Z_y - max_{i != y} Z_i per row of the logits Z (N, C), y (N,) class indices.

    m > 0: classified as y; the zero level set is the decision boundary; higher = farther
    from it. A targeted attack towards t minimises -m(Z, t) = max_{i != t} Z_i - Z_t.
    """
    z_y = logits.gather(1, y[:, None]).squeeze(1)
    return z_y - logits.scatter(1, y[:, None], -math.inf).amax(1)
