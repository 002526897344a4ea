"""CLEVER scores (Weng et al., "Evaluating the Robustness of Neural Networks: An Extreme
Value Theory Approach", ICLR 2018) - the paper's estimator, batched.

For an input x0 with predicted class c and a target class j, g(x) = f_c(x) - f_j(x) on
the logits. N_b batches of N_s points are drawn uniformly in the Lp ball B_p(x0, R)
(clipped to the data domain when ``clip_values`` is given); each batch keeps the
maximum of ||grad g||_q (q the dual norm of p, 1/p + 1/q = 1); a reverse Weibull is
fitted to the N_b maxima by maximum likelihood (:mod:`robustx.weibull`) and its
location a-hat estimates the local Lipschitz constant. Then

    CLEVER_j = min(g(x0) / a-hat, R),       untargeted CLEVER = min over j != c.

Larger is more robust: the score estimates the Lp distortion needed to change the
prediction. Differences from IBM ART's ``clever_u`` (see ``robustx.compat.art`` for ART's
exact numbers): fresh samples for every batch instead of bootstrapping one pool, one
gradient of g per target instead of two, logits required (a warning when the outputs
look like probabilities), and a Weibull fit that falls back, with a flag, instead of
returning an exploded location.

Ill-conditioned fits. When every reverse-Weibull fit of a pair is rejected (KS p-value
< 0.001, the Gumbel limit, NaN), the estimate falls back to the largest sampled maximum:
the smallest Lipschitz estimate possible, so the score over-states robustness. By
default such pairs get more batches first (``on_fallback="resample"``); any fallback
left warns, and ``CleverResult.reliable`` is False for its image. A Gumbel-limit fit
itself has no finite end point: a-hat is unbounded and the score goes to 0, the
pessimistic side; the fallback is the optimistic side, hence the warning. Constant
maxima (a linear model: the gradient norm is the Lipschitz constant) are exact and silent.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import NamedTuple, Optional, Tuple

import torch
from torch import nn

from robustx import checks, ops
from robustx.geometry import dual_norm, norm_name
from robustx.modelutil import chunks, frozen_eval, progress_bar
from robustx.results import Result, deprecated_attribute
from robustx.weibull import FALLBACK_REASONS, ReverseWeibullFit, fit_reverse_weibull

__all__ = ["clever", "CleverResult", "TARGET_MODES", "TARGET_SAMPLES", "ON_FALLBACK"]

TARGET_MODES = ("untargeted", "top2", "random", "least_likely")
TARGET_SAMPLES = ("shared", "independent")  # one sample set per image, or per (image, target)
ON_FALLBACK = ("resample", "max", "raise")
RESAMPLE_STRIDE = 1 << 40  # stream offset between the resampled batches of consecutive units
UNRELIABLE = FALLBACK_REASONS.index("ks_rejected")  # reasons from here on are ill-conditioned fits
ZERO_GRAD_WARN_FRACTION = 0.1  # warn (gradient masking?) above this fraction of zero gradients
CPU_CHUNK_BYTES = 512 << 20  # memory of one pass on CPU: half saved activations, half gradients
CUDA_CHUNK_FRACTION = 0.25  # ... and on CUDA, this fraction of the free GPU memory
CPU_MAX_ROWS = 1024  # points per forward chosen automatically, at most, on CPU
DEVICE_MAX_ROWS = 8192  # ... and on accelerators


@dataclass
class CleverResult(Result):
    """CLEVER scores of N images and the estimate behind each (image, target) pair.

    ``value``: the mean CLEVER score over the images (larger = more robust).
    ``per_sample`` (N,): min over the targets of ``target_scores`` (N, T) = min(g0 / lipschitz, R)
    (``scores`` is its deprecated name).
    Per (image, target), shape (N, T): ``targets``, ``g0`` = f_c(x0) - f_j(x0),
    ``lipschitz`` (a-hat, or ``max_sampled`` where ``fallback``), the reverse-Weibull
    ``loc`` (end point a; scipy's weibull_min on the negated maxima has loc = -a),
    ``scale``, ``shape``, ``ks_pvalue``, ``fallback``, ``reason`` (why it fell back: index into
    :data:`robustx.weibull.FALLBACK_REASONS`, 0 = no fallback, 1 = constant maxima, exact),
    ``max_sampled`` (largest batch maximum), ``batches`` (batch maxima fitted: N_b, more
    where resampled) and ``zero_grad_fraction`` (samples with an exactly zero gradient).
    ``reliable`` (N,): no target of the image fell back for a reason other than constant
    maxima; where False the score over-states robustness.
    """

    per_sample: torch.Tensor
    target_scores: torch.Tensor
    predicted: torch.Tensor
    targets: torch.Tensor
    g0: torch.Tensor
    lipschitz: torch.Tensor
    # the fit's fields, as in weibull.ReverseWeibullFit, per (image, target)
    loc: torch.Tensor
    scale: torch.Tensor
    shape: torch.Tensor
    ks_pvalue: torch.Tensor
    fallback: torch.Tensor
    reason: torch.Tensor
    max_sampled: torch.Tensor
    batches: torch.Tensor
    zero_grad_fraction: torch.Tensor
    settings: dict = field(default_factory=dict)
    scores = deprecated_attribute("scores", "per_sample")

    @property
    def value(self) -> float:
        """Mean of ``per_sample`` (larger = more robust)."""
        return float(self.per_sample.double().mean())

    @property
    def reliable(self) -> torch.Tensor:
        """(N,) bool: False where a target's fit fell back other than for constant maxima."""
        return ~(self.reason >= UNRELIABLE).any(1)

    def to_dict(self) -> dict:
        """JSON-ready dict: ``value``, settings, ``reliable`` and every field as nested lists
        (NaN -> None, inf -> "inf")."""
        return {**super().to_dict(), "settings": dict(self.settings), "reliable": self.reliable.tolist()}


@checks.renamed(max_chunk="batch_size")
def clever(
    model: nn.Module,
    x: torch.Tensor,
    *,
    norm=2,
    radius: float,
    n_batches: int = 500,
    n_samples: int = 1024,
    targets="untargeted",
    target_samples: str = "shared",
    on_fallback: str = "resample",
    max_batches: Optional[int] = None,
    clip_values: Optional[Tuple[float, float]] = (0.0, 1.0),
    seed: int = 0,
    device=None,
    batch_size: Optional[int] = None,
    progress: bool = True,
) -> CleverResult:
    """CLEVER scores of the images ``x`` (N, ...) for a model returning logits.

    ``norm`` p in {1, 2, inf} ("1", "2", "inf" too); ``radius`` R > 0 of the sampling
    ball; ``n_batches`` N_b >= 2 batches of ``n_samples`` N_s points each (paper: 500 x
    1024); ``targets``: "untargeted" (all j != c), "top2" (runner-up class), "random" (one
    random j != c per image, from ``seed``), "least_likely", or an integer tensor (N,) or
    (N, T) of target classes (never the predicted class).

    ``target_samples``: "shared" (default) draws one sample set per image and uses it
    for every target, so the untargeted minimum compares targets on common random
    numbers and a target's estimate equals that of a targeted run; "independent" draws
    fresh samples per (image, target), as the paper runs Algorithm 1 once per target.
    Shared samples cost one forward pass per point and one backward pass per (point,
    target); independent ones a forward and a backward per (point, target).

    ``on_fallback``: what happens to a pair whose maxima are not constant and whose every
    fit is ill-conditioned (KS rejected, Gumbel limit, NaN). "resample" (default): draw
    more batches (doubling, up to ``max_batches``, default 4 N_b), refit on all maxima,
    then fall back; "max": fall back to the largest sampled maximum at once; "raise":
    RuntimeError naming the images. Every fallback left emits one RuntimeWarning and
    sets ``reliable`` False for its image: the largest sampled maximum is the smallest
    Lipschitz estimate possible, so its score over-states robustness. (A Gumbel-limit fit
    has no finite end point; taking it would send the score to 0, the honest side.)

    ``clip_values=(lo, hi)`` (default (0, 1)) is the data domain: x must lie inside and
    samples are clipped to it; None: no domain, no clipping. Sampling unit u (image u, or
    pair u = i T + t with independent samples) draws batch b < N_b from point
    ``(u N_b + b) N_s`` of the counter-based stream ``seed``, resampled batches b >= N_b
    from ``(u + 1) 2^40 + (b - N_b) N_s``, so results do not depend on chunking.
    ``device``: where to compute (default: the model's). ``batch_size``: points (inputs)
    per forward pass (each followed by one backward pass per target, the graph retained
    in between); by default sized from the model's measured activation memory. Larger
    scores = more robust.
    """
    checks.model(model)
    p = checks.norm(norm)
    radius = checks.positive_float(radius, "radius")
    n_batches = checks.integer(n_batches, "n_batches", 2)
    n_samples = checks.integer(n_samples, "n_samples", 1)
    max_batches = checks.integer(4 * n_batches if max_batches is None else max_batches, "max_batches", n_batches)
    target_samples = _choice(target_samples, "target_samples", TARGET_SAMPLES)
    on_fallback = _choice(on_fallback, "on_fallback", ON_FALLBACK)
    seed = checks.seed(seed)
    if batch_size is not None:
        batch_size = checks.integer(batch_size, "batch_size", 1)
    clip = checks.clip_range(clip_values)
    dev = checks.device(device, model)
    x = checks.images(x, "x", clip).detach().to(dev)
    if x.shape[0] == 0:
        raise ValueError("x must hold at least one image, got an empty batch")
    with frozen_eval(model):
        logits = _logits(model, x, batch_size or DEVICE_MAX_ROWS)
        predicted = logits.argmax(1)
        tgt = _resolve_targets(targets, logits, predicted, seed)
        g0 = logits.gather(1, predicted[:, None]) - logits.gather(1, tgt)
        rows = _Rows(batch_size or _auto_chunk(model, x[:1]), _gradient_rows(x[:1]))
        ball = _Ball(p, radius, clip, seed, n_batches, n_samples)
        units = _units(x, predicted, tgt, target_samples)
        maxima, zeros = _batch_maxima(model, *units, ball, rows, progress)
        n, t = tgt.shape
        maxima, zeros = maxima.reshape(n * t, n_batches).cpu(), zeros.reshape(n * t).cpu()
        fit = fit_reverse_weibull(maxima)
        batches = torch.full((n * t,), n_batches, dtype=torch.int64)
        if on_fallback == "resample":
            _resample(model, units, ball, rows, maxima, fit, zeros, batches, max_batches)
    as_nt = lambda v: v.reshape(n, t)  # noqa: E731
    zero_fraction = as_nt(zeros / (batches * n_samples))
    _warn_zero_gradients(zero_fraction)
    _report_fallbacks(as_nt(fit.reason), on_fallback, max_batches)
    lipschitz = as_nt(fit.estimate)
    g0 = g0.detach().cpu().to(torch.float64)
    target_scores = _scores(g0, lipschitz, radius)
    settings = dict(norm=norm_name(p), radius=radius, n_batches=n_batches, n_samples=n_samples,
                    targets=targets if isinstance(targets, str) else "given", target_samples=target_samples,
                    on_fallback=on_fallback, max_batches=max_batches, clip_values=clip, seed=seed)
    return CleverResult(
        per_sample=target_scores.amin(1),
        target_scores=target_scores,
        predicted=predicted.cpu(),
        targets=tgt.cpu(),
        g0=g0,
        lipschitz=lipschitz,
        loc=as_nt(fit.loc),
        scale=as_nt(fit.scale),
        shape=as_nt(fit.shape),
        ks_pvalue=as_nt(fit.ks_pvalue),
        fallback=as_nt(fit.fallback),
        reason=as_nt(fit.reason),
        max_sampled=as_nt(fit.max_sampled),
        batches=as_nt(batches),
        zero_grad_fraction=zero_fraction.to(torch.float64),
        settings=settings,
    )


def _choice(value, name: str, allowed: Tuple[str, ...]) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be one of {allowed}, got {type(value).__name__}")
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
    return value


# ------------------------------------------------------------------ logits and targets
def _logits(model: nn.Module, x: torch.Tensor, rows: int) -> torch.Tensor:
    """Logits (N, K) of the clean images, checked: 2-D, K >= 2, finite; probability warning."""
    with torch.no_grad():
        out = torch.cat([_check_output(model(x[s]), s.stop - s.start) for s in chunks(x.shape[0], rows)])
    if not torch.isfinite(out).all():
        raise ValueError("the model returned NaN or infinite outputs on x")
    rows_sum = out.sum(1)
    if (out >= 0).all() and (out <= 1).all() and torch.allclose(rows_sum, torch.ones_like(rows_sum), atol=1e-3):
        warnings.warn(
            "the model's outputs look like probabilities (in [0, 1], rows sum to 1): CLEVER is "
            "defined on logits; remove the final softmax for meaningful scores",
            RuntimeWarning,
            stacklevel=3,
        )
    return out


def _check_output(out, n_rows: int) -> torch.Tensor:
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"the model must return a tensor of logits, got {type(out).__name__}")
    if out.dim() != 2 or out.shape[0] != n_rows or out.shape[1] < 2:
        raise ValueError(
            f"the model must return logits of shape (batch, K) with K >= 2 classes; for a batch "
            f"of {n_rows} it returned {tuple(out.shape)}"
        )
    return out


def _resolve_targets(targets, logits: torch.Tensor, predicted: torch.Tensor, seed: int) -> torch.Tensor:
    """Target classes (N, T): all j != c, runner-up, random j != c, least likely, or given."""
    n, k = logits.shape
    dev = logits.device
    if isinstance(targets, str):
        if targets == "untargeted":
            others = torch.arange(k, device=dev).expand(n, k)
            return others[others != predicted[:, None]].reshape(n, k - 1)
        if targets == "top2":
            return logits.topk(2, dim=1).indices[:, 1:]
        if targets == "least_likely":
            return logits.argmin(1, keepdim=True)
        if targets == "random":
            gen = torch.Generator().manual_seed(seed)
            r = torch.randint(0, k - 1, (n, 1), generator=gen).to(dev)
            return r + (r >= predicted[:, None]).long()
        raise ValueError(f"targets must be one of {TARGET_MODES} or an integer tensor, got {targets!r}")
    if not isinstance(targets, torch.Tensor) or targets.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"targets must be one of {TARGET_MODES} or an integer tensor (N,) or (N, T)")
    tgt = targets.to(dev, torch.int64)
    tgt = tgt[:, None] if tgt.dim() == 1 else tgt
    if tgt.dim() != 2 or tgt.shape[0] != n or tgt.shape[1] < 1:
        raise ValueError(f"targets must have shape (N,) or (N, T) with N={n}, got {tuple(targets.shape)}")
    if int(tgt.min()) < 0 or int(tgt.max()) >= k:
        raise ValueError(f"targets must be classes in [0, {k}), got values in [{int(tgt.min())}, {int(tgt.max())}]")
    clash = (tgt == predicted[:, None]).any(1)
    if clash.any():
        i = int(clash.nonzero()[0])
        raise ValueError(
            f"targets of image {i} include its predicted class {int(predicted[i])}; CLEVER's "
            "g = f_c - f_j needs a target j different from the predicted class c"
        )
    return tgt


# ------------------------------------------------------------------ sampling and gradients
class _Rows(NamedTuple):
    """Chunk sizes: ``points`` per forward pass, ``gradients`` (point x target rows) per pass."""

    points: int
    gradients: int


def _budget(device: torch.device) -> int:
    """Bytes of one pass: 512 MiB on CPU, a quarter of the free memory on CUDA."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0] * CUDA_CHUNK_FRACTION)
    return CPU_CHUNK_BYTES


def _auto_chunk(model: nn.Module, x1: torch.Tensor) -> int:
    """Points per forward pass: half the memory budget over the bytes a point keeps alive.

    The activations the model saves for backward (the difference of the bytes saved by
    batches of 2 and 1 points) stay alive through the backward pass of every target, plus
    the point and its copy; the other half of the budget holds the pass's gradients
    (:func:`_gradient_rows`). At most 1024 points on CPU (larger passes ran 1.5-2.7x
    slower per row on the digits CNN) and 8192 elsewhere.
    """
    per_row = max(_saved_bytes(model, x1.expand(2, *x1.shape[1:])) - _saved_bytes(model, x1), 1)
    per_row += 2 * x1.numel() * x1.element_size()
    cap = CPU_MAX_ROWS if x1.device.type == "cpu" else DEVICE_MAX_ROWS
    return int(min(max(_budget(x1.device) // 2 // per_row, 1), cap))


def _gradient_rows(x1: torch.Tensor) -> int:
    """Gradient rows (point x target) one pass holds: half the memory budget over one row."""
    return max(1, _budget(x1.device) // 2 // (x1.numel() * x1.element_size()))


def _saved_bytes(model: nn.Module, rows: torch.Tensor) -> int:
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(rows.clone().requires_grad_(True))
    return total


def _units(x, predicted, tgt, target_samples: str):
    """Sampling units (images, their classes c, their targets (U, T_u)): the images with all
    their targets (shared samples), or one unit per (image, target) pair (independent)."""
    if target_samples == "shared":
        return x, predicted, tgt
    t = tgt.shape[1]
    return x.repeat_interleave(t, 0), predicted.repeat_interleave(t), tgt.reshape(-1, 1)


@dataclass(frozen=True)
class _Ball:
    """The sampling design: N_b batches of N_s points uniform in B_p(x0, R), clipped to ``clip``."""

    p: float
    radius: float
    clip: Optional[Tuple[float, float]]
    seed: int
    n_batches: int
    n_samples: int

    def offset(self, unit: int, batch: int) -> int:
        """Stream index of the first point of batch ``batch`` of sampling unit ``unit``."""
        if batch < self.n_batches:
            return (unit * self.n_batches + batch) * self.n_samples
        return (unit + 1) * RESAMPLE_STRIDE + (batch - self.n_batches) * self.n_samples

    def points(self, x: torch.Tensor, units: slice, batches: slice, first_unit: int) -> torch.Tensor:
        """The points of ``batches`` (all below N_b, or all above) of rows ``units`` of x,
        units ``first_unit + row``: (M, batches * N_s, ...), from center 0 of the stream
        (one ball_sample call per unit: the op numbers the centers of every call from 0)."""
        n = (batches.stop - batches.start) * self.n_samples
        return torch.cat([
            ops.ball_sample(x[i : i + 1], n, self.radius, self.p, self.clip, self.seed,
                            offset=self.offset(first_unit + i, batches.start))
            for i in range(units.start, units.stop)
        ])


def _pass_sizes(n_targets: int, n_batches: int, n_samples: int, rows: int) -> Tuple[int, int, int]:
    """(images, batches, targets) covered by one pass of about ``rows`` gradient rows (point x target).

    A pass always holds whole batches of N_s points, so the op's batch maxima are final;
    it takes all targets when their gradients fit (every point then goes through the
    model once), and all N_b batches of several images when one image's rows do not fill it.
    """
    group = min(n_targets, max(1, rows // n_samples))
    batches = min(n_batches, max(1, rows // (n_samples * group)))
    whole_images = batches == n_batches and group == n_targets
    images = max(1, rows // (n_batches * n_samples * n_targets)) if whole_images else 1
    return images, batches, group


def _batch_maxima(model, x, predicted, tgt, ball: _Ball, sizes: _Rows, progress: bool,
                  batches: Optional[range] = None, first_unit: int = 0):
    """Batch maxima (U, T, B) of ||grad g_j||_q over ``batches`` (default the N_b first) of
    the units x (U, ...), numbered from ``first_unit``, and their zero gradients (U, T).

    Each pass samples whole batches of M units once and, per group of T' targets (all T
    when ``sizes.gradients`` allows), feeds every point once through the model and
    backpropagates each target's g from it; ``grad_norm_batch_max`` reduces the
    (M, S, T', D) gradients to final batch maxima in one call.
    """
    n, t = tgt.shape
    batches = batches or range(ball.n_batches)
    q = dual_norm(ball.p)
    m_pass, b_pass, t_pass = _pass_sizes(t, len(batches), ball.n_samples, sizes.gradients)
    rows = sizes.points  # per forward pass
    maxima = torch.zeros(n, t, len(batches), device=x.device, dtype=torch.float64)
    zeros = torch.zeros(n, t, device=x.device, dtype=torch.float64)
    work = [(im, bs) for im in chunks(n, m_pass) for bs in chunks(len(batches), b_pass)]
    for im, bs in progress_bar(work, progress, "CLEVER", total=len(work)):
        pts = ball.points(x, im, slice(batches.start + bs.start, batches.start + bs.stop), first_unit)
        for ts in chunks(t, t_pass):
            grads = _target_gradients(model, pts, predicted[im], tgt[im, ts], rows)
            pick = torch.arange(grads.shape[2]).expand(grads.shape[0], -1)  # on the CPU: checked without a sync
            mx, norms = ops.grad_norm_batch_max(grads, pick, q=q, batch_size=ball.n_samples, return_norms=True)
            maxima[im, ts, bs] = mx.to(torch.float64)
            zeros[im, ts] += (norms == 0).sum(2).to(torch.float64)
    if not torch.isfinite(maxima).all():
        raise ValueError("the model produced NaN or infinite gradients inside the sampling ball")
    return maxima, zeros


def _resample(model, units, ball: _Ball, rows: _Rows, maxima, fit: ReverseWeibullFit, zeros, batches,
              max_batches: int) -> None:
    """Refit ill-conditioned pairs on twice the batches, again, up to ``max_batches``.

    Updates ``fit``, ``zeros`` and ``batches`` (P,) in place for the pairs p = u T_u + k
    (unit u, its target k) whose maxima are not constant and whose fit fell back; each round
    draws the next batches of their units and fits all their maxima.
    """
    x, predicted, tgt = units
    t = tgt.shape[1]
    have = ball.n_batches
    redo = torch.arange(maxima.shape[0])
    while have < max_batches:
        keep = fit.reason[redo] >= UNRELIABLE
        redo, maxima = redo[keep], maxima[keep]
        if redo.numel() == 0:
            return
        more = range(have, min(2 * have, max_batches))
        extra = []
        for u in redo.div(t, rounding_mode="floor").unique().tolist():
            cols = redo[redo.div(t, rounding_mode="floor") == u] % t
            mx, zs = _batch_maxima(model, x[u : u + 1], predicted[u : u + 1], tgt[u : u + 1, cols.to(tgt.device)],
                                   ball, rows, False, more, u)
            extra.append(mx[0].cpu())
            zeros[u * t + cols] += zs[0].cpu()
        maxima = torch.cat([maxima, torch.cat(extra)], 1)
        refit = fit_reverse_weibull(maxima)
        for name in fit.__dataclass_fields__:
            getattr(fit, name)[redo] = getattr(refit, name)
        batches[redo] = have = more.stop


def _report_fallbacks(reason: torch.Tensor, on_fallback: str, max_batches: int) -> None:
    """One RuntimeWarning (RuntimeError with "raise") for the ill-conditioned fallbacks (N, T)."""
    bad = reason >= UNRELIABLE
    if not bad.any():
        return
    images = bad.any(1).nonzero().flatten().tolist()
    labels = ("KS rejected", "Gumbel limit", "NaN or no convergence")
    why = ", ".join(f"{int((reason == k).sum())} {label}" for k, label in enumerate(labels, UNRELIABLE))
    after = f" after resampling up to {max_batches} batches" if on_fallback == "resample" else ""
    shown = ", ".join(map(str, images[:20])) + (", ..." if len(images) > 20 else "")
    msg = (f"{int(bad.sum())} of {bad.numel()} (image, target) Weibull fits were ill-conditioned ({why}){after} "
           f"and fell back to the largest sampled gradient norm, the smallest Lipschitz estimate possible: the "
           f"scores of images [{shown}] over-state robustness (reliable=False)")
    if on_fallback == "raise":
        raise RuntimeError(msg)
    warnings.warn(msg, RuntimeWarning, stacklevel=3)


def _target_gradients(model: nn.Module, pts: torch.Tensor, c: torch.Tensor, tgt: torch.Tensor, rows: int):
    """Gradients (M, S, T, D) of g_t = f_{c_m} - f_{j_mt} at the points ``pts`` (M, S, ...).

    The M S points go through the model in equal pieces of at most ``rows`` points, one
    forward pass per piece and one backward pass per target from it.
    """
    m, s, t = pts.shape[0], pts.shape[1], tgt.shape[1]
    inputs = pts.reshape(m * s, *pts.shape[2:])
    c_rows = c[:, None].expand(m, s).reshape(-1)
    j_rows = tgt[:, None, :].expand(m, s, t).reshape(m * s, t)
    grads = inputs.new_empty(m * s, t, inputs[0].numel())
    pieces = -(-inputs.shape[0] // rows)
    for r in chunks(inputs.shape[0], -(-inputs.shape[0] // pieces)):
        _g_gradients(model, inputs[r], c_rows[r], j_rows[r], grads[r])
    return grads.reshape(m, s, t, -1)


def _g_gradients(model: nn.Module, inputs: torch.Tensor, c: torch.Tensor, j: torch.Tensor, out: torch.Tensor):
    """Writes to ``out`` (P, T, D) the gradient of g_t = f_c - f_{j_t} of each row of
    ``inputs`` (P, ...): one forward pass, then one backward pass per target with the
    graph retained (measured fastest on CPU, against a batched backward and torch.func)."""
    rows = inputs.clone().requires_grad_(True)
    t = j.shape[1]
    with torch.enable_grad():
        logits = _check_output(model(rows), rows.shape[0])
        if not logits.requires_grad:
            raise ValueError(
                "the model's output does not depend differentiably on its input; CLEVER needs input gradients"
            )
        g = logits.gather(1, c[:, None]) - logits.gather(1, j)
        for k in range(t):
            (grad,) = torch.autograd.grad(g[:, k].sum(), rows, retain_graph=k < t - 1, allow_unused=True)
            out[:, k] = 0 if grad is None else grad.reshape(rows.shape[0], -1)


# ------------------------------------------------------------------ scores and reporting
def _scores(g0: torch.Tensor, lipschitz: torch.Tensor, radius: float) -> torch.Tensor:
    """min(g0 / a-hat, R); R where a-hat = 0 (flat g) and 0 where g0 = 0 (on the boundary)."""
    ratio = torch.where(lipschitz > 0, g0 / lipschitz.clamp(min=torch.finfo(torch.float64).tiny), math.inf)
    return torch.where(g0 > 0, ratio.clamp(max=radius), torch.zeros_like(g0))


def _warn_zero_gradients(fraction: torch.Tensor) -> None:
    overall = float(fraction.mean()) if fraction.numel() else 0.0
    if overall > ZERO_GRAD_WARN_FRACTION:
        warnings.warn(
            f"{overall:.0%} of the sampled gradients of g = f_c - f_j are exactly zero: the model "
            "may mask gradients (saturated or non-differentiable layers), and CLEVER then "
            "over-estimates robustness",
            RuntimeWarning,
            stacklevel=3,
        )
