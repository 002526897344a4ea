"""Empirical boundary distance (EBD): how far the decision boundary lies from correctly
classified inputs along random orthonormal directions.

Source: Yu et al., "PDA: Progressive Data Augmentation for General Robustness of Deep
Neural Networks" (arXiv 1909.04839), used as a model-behaviour metric by Guo et al.,
"A Comprehensive Evaluation Framework for Deep Model Robustness" (arXiv 2101.09617) and
their AISafety platform (``EvalBox/Evaluation/bd.py``).
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Optional, Tuple

import torch
from torch import nn

from robustx import checks
from robustx.modelutil import chunks, frozen_eval, model_device, progress_bar
from robustx.results import Result, deprecated_attribute

__all__ = ["EBDResult", "orthonormal_directions", "ebd"]


@dataclass
class EBDResult(Result):
    """``value``: mean of ``per_sample`` over the inputs of C whose prediction changed (NaN
    when none did; higher = more robust). ``per_sample`` (N,; ``distances`` is its
    deprecated name): per input, the smallest L2 distance actually moved,
    ||clip(x + t* u) - x||, over its directions (see :func:`ebd`); NaN for inputs outside C
    (misclassified when clean), inf for censored inputs (no direction changed the
    prediction within its searched range). ``correct`` (N,) bool: membership of C.
    ``censored``: the number of censored inputs, excluded from ``value``; ``averaged``: the
    number of inputs ``value`` averages over (|C| - censored). ``lower_bound``: True when
    any input is censored: each of them lies farther than the search reached, so the mean
    over all of C is at least ``value``. ``tolerance`` (N,): bound on the error of each
    reported distance (the largest bisection bracket width of its directions)."""

    value: float
    per_sample: torch.Tensor
    correct: torch.Tensor
    censored: int
    averaged: int
    lower_bound: bool
    tolerance: torch.Tensor
    distances = deprecated_attribute("distances", "per_sample")


@checks.renamed(n="n_images")
def orthonormal_directions(n_images: int, d: int, m: int, generator: torch.Generator,
                           dtype=torch.float32) -> torch.Tensor:
    """(n_images, m, d): for each of n_images inputs, m orthonormal directions in R^d, the
    columns of Q in the QR decomposition of a d x m standard Gaussian matrix (one per
    input, batched)."""
    if m > d:
        raise ValueError(f"m must be <= the input dimension {d} (orthonormal directions), got {m}")
    gauss = torch.randn(n_images, d, m, generator=generator, dtype=torch.float64, device=generator.device)
    q, _ = torch.linalg.qr(gauss)
    return q.transpose(1, 2).to(dtype)


def _box_exit(x: torch.Tensor, u: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """For rays x + t u (x (n, d), u (n, m, d)): the largest t >= 0 with x + t u in [lo, hi]^d."""
    xe = x[:, None, :]
    bound = torch.where(u > 0, (hi - xe) / u, torch.where(u < 0, (lo - xe) / u, torch.full_like(u, math.inf)))
    return bound.amin(-1).clamp(min=0.0)


def _changed(net: nn.Module, points: torch.Tensor, labels: torch.Tensor, batch_size: int) -> torch.Tensor:
    """argmax net(points) != labels, ``batch_size`` points per forward pass."""
    out = torch.empty(points.shape[0], dtype=torch.bool, device=points.device)
    for part in chunks(points.shape[0], batch_size):
        out[part] = net(points[part]).argmax(1) != labels[part]
    return out


def ebd(
    model: nn.Module,
    x: torch.Tensor,
    y: Optional[torch.Tensor] = None,
    m: int = 10,
    clip_values: Optional[Tuple[float, float]] = (0.0, 1.0),
    max_distance: Optional[float] = None,
    steps: int = 16,
    bisection: int = 10,
    out_of_box: str = "clamp",
    seed: int = 0,
    batch_size: int = 1024,
    progress: bool = True,
) -> EBDResult:
    """Empirical boundary distance. Higher is better (the boundary is farther).

    EBD = (1 / |F|) sum_{i in F} min_{j = 1..m} ||pi(x_i + t*_ij u_ij) - x_i||_2,
    t*_ij = min {t > 0 : argmax f(pi(x_i + t u_ij)) != y_i},

    C = {i : argmax f(x_i) = y_i} (y = the model's own predictions when None, so C = all),
    F = the inputs of C with a finite t*_ij for some j; pi = clip to [lo, hi] in
    ``out_of_box="clamp"`` mode, the identity otherwise (then the distance moved is t*, the
    directions having unit L2 norm); u_i1..u_im orthonormal random directions per input
    (:func:`orthonormal_directions`). Each ray is searched on t in (0, T_ij]: a grid of
    ``steps`` equal steps finds the first grid point whose prediction differs, then
    ``bisection`` halvings of that bracket; t*_ij is the bracket's upper end (a point where
    the prediction does change), within T_ij / steps / 2^bisection of the boundary
    crossing, and so is the distance moved (pi is 1-Lipschitz).

    The search range T_ij: with ``out_of_box="clamp"`` (default) the points are
    clip(x + t u, lo, hi), so every evaluated point lies inside the clip box (as the
    AISafety platform does), and T = ``max_distance``, by default the box diagonal
    (hi - lo) sqrt(d). With ``out_of_box="stop"`` the ray ends where it leaves the box
    [lo, hi]^d (and at ``max_distance`` when given); an input with any element at lo or hi
    then has T ~ 0 along almost every random direction (17 of 20 real CIFAR images found
    no boundary that way, bench/RESULTS.md), which is why it is not the default.
    Without ``clip_values``, ``max_distance`` is required and points are not clipped.

    Inputs of C where no direction changes the prediction are censored: distance inf,
    counted in ``censored``, excluded from ``value``, which is then flagged as a lower bound
    (``lower_bound``); when every input of C is censored ``value`` is NaN (RuntimeWarning).

    Directions are drawn from a generator seeded with ``seed`` on the model's device,
    chunk after chunk of max(1, batch_size // (m steps)) inputs: same seed and batch_size,
    same result. The model runs in eval mode with frozen parameters (both restored),
    ``batch_size`` points per forward pass; the grid of a chunk is m steps points per input.

    Differences from the AISafety platform (bd.py): it reports the *largest* distance over
    10 shared directions (scaled to norm sqrt(d)) on a fixed grid of 8-bit magnitudes
    0..126/255 without bisection, clamping to [0, 1]; here the minimum over per-input
    directions, as the paper defines it, of the L2 distance actually moved.
    """
    net = checks.model(model)
    box = checks.clip_range(clip_values)
    x = checks.images(x, "x", box)
    m = checks.integer(m, "m")
    steps = checks.integer(steps, "steps")
    bisection = checks.integer(bisection, "bisection", 0)
    batch_size = checks.integer(batch_size, "batch_size")
    if out_of_box not in ("stop", "clamp"):
        raise ValueError(f"out_of_box must be 'stop' or 'clamp', got {out_of_box!r}")
    if max_distance is not None:
        max_distance = checks.positive_float(max_distance, "max_distance")
    elif box is None:
        raise ValueError("max_distance is required when clip_values is None (no box ends the rays)")
    n, d = x.shape[0], x[0].numel()
    device = model_device(net)
    gen = torch.Generator(device=device).manual_seed(checks.seed(seed))
    distances = torch.full((n,), math.nan, dtype=torch.float64)
    tolerance = torch.full((n,), math.nan, dtype=torch.float64)
    correct = torch.zeros(n, dtype=torch.bool)
    fractions = torch.arange(1, steps + 1, device=device, dtype=torch.float64) / steps
    per_chunk = max(1, batch_size // (m * steps))
    with frozen_eval(net), torch.no_grad():
        if y is None:
            y = torch.cat([net(x[part].to(device)).argmax(1).cpu() for part in chunks(n, batch_size)])
        y = checks.labels(y, n)
        for part in progress_bar(list(chunks(n, per_chunk)), progress, "EBD"):
            xb = x[part].to(device).flatten(1)
            yb = y[part].to(device)
            u = orthonormal_directions(xb.shape[0], d, m, gen, xb.dtype)
            if box is not None and out_of_box == "stop":
                span = _box_exit(xb.double(), u.double(), *box)
                if max_distance is not None:
                    span = span.clamp(max=max_distance)
            else:
                span = torch.full(u.shape[:2], max_distance or (box[1] - box[0]) * math.sqrt(d),
                                  dtype=torch.float64, device=device)

            def points(t: torch.Tensor) -> torch.Tensor:
                """x + t u for t (b, m, k): (b m k, input shape), clipped in clamp mode."""
                p = xb[:, None, None, :] + t[..., None].to(xb.dtype) * u[:, :, None, :]
                if box is not None and out_of_box == "clamp":
                    p = p.clamp(*box)
                return p.reshape(-1, *x.shape[1:])

            labels = yb[:, None, None].expand(-1, m, steps).reshape(-1)
            clean_ok = net(xb.reshape(-1, *x.shape[1:])).argmax(1) == yb
            grid = span[..., None] * fractions  # (b, m, steps)
            hit = _changed(net, points(grid), labels, batch_size).view(-1, m, steps)
            found = hit.any(-1)
            first = hit.double().argmax(-1)  # first changed grid index (0 when none)
            upper = torch.gather(grid, 2, first[..., None]).squeeze(-1)
            lower = upper - span / steps
            ray_labels = yb[:, None].expand(-1, m).reshape(-1)
            for _ in range(bisection):
                mid = (lower + upper) / 2
                change = _changed(net, points(mid[..., None]), ray_labels, batch_size).view(-1, m)
                upper = torch.where(change, mid, upper)
                lower = torch.where(change, lower, mid)
            moved = (points(upper[..., None]).view(*upper.shape, -1).double() - xb[:, None, :].double()).norm(dim=-1)
            best = torch.where(found, moved, torch.full_like(moved, math.inf)).amin(1)
            width = (span / steps / 2 ** bisection).amax(1)
            distances[part] = torch.where(clean_ok, best, torch.full_like(best, math.nan)).cpu()
            reported = torch.isfinite(best) & clean_ok
            tolerance[part] = torch.where(reported, width, torch.full_like(width, math.nan)).cpu()
            correct[part] = clean_ok.cpu()
    in_c = distances[correct]
    censored = int(torch.isinf(in_c).sum())
    flipped = in_c[torch.isfinite(in_c)]
    if flipped.numel():
        value = flipped.mean().item()
    else:
        warnings.warn("EBD: no input of C changed its prediction within the searched range; value is NaN",
                      RuntimeWarning, stacklevel=2)
        value = math.nan
    return EBDResult(value=value, per_sample=distances, correct=correct, censored=censored,
                     averaged=int(flipped.numel()), lower_bound=censored > 0, tolerance=tolerance)
