"""Reverse-Weibull maximum-likelihood fits of many sets of batch maxima at once.

CLEVER (Weng et al., ICLR 2018) models the maxima m_1..m_n of gradient norms as draws
of a reverse Weibull distribution with an upper end point a (the local Lipschitz
estimate):

    G(m) = exp(-((a - m) / scale) ** shape)   for m <= a.

This is scipy's ``weibull_min`` fitted to the negated maxima: ``weibull_min.fit(-m)``
returns ``(shape, -a, scale)``. Here the three parameters are free and estimated by
maximum likelihood for B sets at once (a tensor (B, n)), in float64 torch, without a
scipy call per set: the scale is profiled out (scale^shape = mean((a - m)^shape)) and a
Levenberg-Marquardt Newton solver maximises the profile likelihood over
(log shape, log (a - max m)) for all sets and all initial shapes together. Because the
end point is kept above the largest maximum, every fit has all data in its support.

Robustness (docs/design.md, "Metric definitions"): every set is fitted from several initial shapes (0.1, 1, 5, 10,
20, 50, 100, with the method-of-moments location and scale scipy starts from), and the
fit with the best Kolmogorov-Smirnov p-value (scipy's exact ``kstwo`` distribution, as
``scipy.stats.kstest``) is kept. A fit is ill-conditioned when its p-value is below
``min_pvalue`` (0.001), anything is NaN, a < max m, or the likelihood has no finite
maximum (the solver runs to shape 1e4 or a - max m = 1e6 standard deviations: the Gumbel
limit, a -> infinity, which small or unbounded-looking samples produce; scipy's
Nelder-Mead stops somewhere on that ridge and returns a huge a). When every fit of a set
is ill-conditioned, or the maxima are constant (spread below 1e-5 relative, e.g. a
linear model), the estimate falls back to the largest sampled maximum and ``fallback``
is set; ``reason`` says why (:data:`FALLBACK_REASONS`).

A Gumbel-limit fit has no finite end point: its a-hat is unbounded and a CLEVER score
g0 / a-hat goes to 0, which under-states robustness. The fallback to the largest sampled
maximum is the optimistic side instead (the smallest Lipschitz estimate possible), so
:func:`robustx.clever` resamples, warns and marks such images unreliable.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Sequence

import torch
from scipy.stats import kstwo

from robustx import checks

__all__ = ["FALLBACK_REASONS", "INITIAL_SHAPES", "ReverseWeibullFit", "fit_reverse_weibull"]

# ``reason`` codes: no fallback; constant maxima (exact, e.g. a linear model); every fit
# rejected by the KS test; the likelihood grows toward the Gumbel limit; NaN or no convergence
FALLBACK_REASONS = ("none", "constant", "ks_rejected", "gumbel_limit", "nan")

INITIAL_SHAPES = (0.1, 1.0, 5.0, 10.0, 20.0, 50.0, 100.0)
MIN_PVALUE = 1e-3
CONSTANT_RTOL = 1e-5  # maxima spread (max - min) below this times |max|: treated as constant

_U_BOUNDS = (math.log(1e-3), math.log(1e4))  # shape
_V_BOUNDS = (math.log(1e-11), math.log(1e6))  # gap (a - max m) / std(m)
_MAX_STEP = 2.0  # largest Newton step in (log shape, log gap)
_GRAD_TOL = 1e-10  # gradient of the per-sample NLL in (log shape, log gap) at convergence


@dataclass
class ReverseWeibullFit:
    """Fitted reverse-Weibull parameters of B sets of maxima (every field has shape (B,)).

    ``loc`` is the end point a (scipy's ``weibull_min`` fitted to -m has loc = -a);
    ``estimate`` is a, or the largest sampled maximum where ``fallback`` is set.
    ``log_likelihood`` is that of the maxima under the fit (scipy: -nnlf). ``reason``
    (int64) indexes :data:`FALLBACK_REASONS`: 0 where the fit is used, else why not.
    """

    loc: torch.Tensor
    scale: torch.Tensor
    shape: torch.Tensor
    ks_pvalue: torch.Tensor
    log_likelihood: torch.Tensor
    fallback: torch.Tensor
    estimate: torch.Tensor
    max_sampled: torch.Tensor
    reason: torch.Tensor


def fit_reverse_weibull(
    maxima: torch.Tensor,
    initial_shapes: Sequence[float] = INITIAL_SHAPES,
    *,
    min_pvalue: float = MIN_PVALUE,
    max_iter: int = 200,
) -> ReverseWeibullFit:
    """Fit G(m) = exp(-((a - m)/scale)^shape) to each row of ``maxima`` (B, n) by MLE.

    Returns a :class:`ReverseWeibullFit`; ``estimate`` (B,) is the CLEVER Lipschitz
    estimate a-hat (larger a-hat = steeper model = smaller CLEVER score).
    """
    m = _check_maxima(maxima)
    shapes = _check_shapes(initial_shapes)
    if not 0.0 <= min_pvalue <= 1.0:
        raise ValueError(f"min_pvalue must be in [0, 1], got {min_pvalue!r}")
    max_iter = checks.integer(max_iter, "max_iter", 1)
    b, n = m.shape
    top = m.amax(1)
    spread = top - m.amin(1)
    constant = spread <= CONSTANT_RTOL * top.abs()
    std = torch.where(constant, torch.ones_like(top), m.std(1, correction=0))
    w = ((top[:, None] - m) / std[:, None]).repeat_interleave(len(shapes), 0)  # (B*R, n), min 0
    c0 = torch.tensor(shapes, dtype=torch.float64, device=m.device).repeat(b)
    u, v, at_limit, unfinished = _solve(w, *_initial_point(w, c0), max_iter)
    c, t = u.exp(), v.exp()
    nll, log_scale = _profile_nll(w, c, t)
    pvalue = _ks_pvalue(w, c, t, log_scale)
    r = len(shapes)
    loc = top[:, None] + t.view(b, r) * std[:, None]
    scale = log_scale.exp().view(b, r) * std[:, None]
    shape = c.view(b, r)
    loglik = -n * (nll.view(b, r) + std.log()[:, None])
    pvalue = pvalue.view(b, r)
    ok = torch.isfinite(loc) & torch.isfinite(scale) & torch.isfinite(shape) & torch.isfinite(loglik)
    ok &= ~(at_limit | unfinished).view(b, r)
    valid = ok & (pvalue >= min_pvalue) & (loc >= top[:, None]) & ~constant[:, None]
    # report the best p-value among valid fits, else among converged ones, else among all
    rank = pvalue.nan_to_num(-1.0) + 2.0 * ok + 4.0 * valid
    best = rank.argmax(1, keepdim=True)  # ties: the first, i.e. the smallest initial shape
    pick = lambda x: x.gather(1, best).squeeze(1)  # noqa: E731
    fallback = ~valid.any(1)
    nan = torch.full_like(top, float("nan"))
    return ReverseWeibullFit(
        loc=torch.where(constant, nan, pick(loc)),
        scale=torch.where(constant, nan, pick(scale)),
        shape=torch.where(constant, nan, pick(shape)),
        ks_pvalue=torch.where(constant, nan, pick(pvalue)),
        log_likelihood=torch.where(constant, nan, pick(loglik)),
        fallback=fallback,
        estimate=torch.where(fallback, top, pick(loc)),
        max_sampled=top,
        reason=_reason(fallback, constant, ok, at_limit.view(b, r)),
    )


def _reason(fallback, constant, ok, at_limit) -> torch.Tensor:
    """Index into FALLBACK_REASONS per set: constant first, then a converged fit the KS
    test rejected, then a fit run to the Gumbel limit, else NaN or no convergence."""
    code = torch.full(fallback.shape, FALLBACK_REASONS.index("nan"), dtype=torch.int64, device=fallback.device)
    code = torch.where(at_limit.any(1), FALLBACK_REASONS.index("gumbel_limit"), code)
    code = torch.where(ok.any(1), FALLBACK_REASONS.index("ks_rejected"), code)
    code = torch.where(constant, FALLBACK_REASONS.index("constant"), code)
    return torch.where(fallback, code, 0)


def _check_maxima(maxima) -> torch.Tensor:
    if not isinstance(maxima, torch.Tensor) or not maxima.is_floating_point():
        raise TypeError("maxima must be a floating torch.Tensor of shape (B, n)")
    if maxima.dim() != 2 or maxima.shape[1] < 2:
        raise ValueError(f"maxima must have shape (B, n) with n >= 2 maxima per set, got {tuple(maxima.shape)}")
    if not torch.isfinite(maxima).all():
        raise ValueError("maxima contains NaN or infinite values")
    return maxima.to(torch.float64)


def _check_shapes(initial_shapes) -> tuple:
    """A non-empty sequence of finite shapes c > 0."""
    if isinstance(initial_shapes, str) or not isinstance(initial_shapes, Iterable):
        raise TypeError(f"initial_shapes must be a sequence of numbers, got {initial_shapes!r}")
    shapes = tuple(initial_shapes)
    if not shapes:
        raise ValueError("initial_shapes must be a non-empty sequence of positive numbers, got an empty one")
    return tuple(checks.positive_float(c, "initial_shapes") for c in shapes)


def _initial_point(w: torch.Tensor, c0: torch.Tensor):
    """scipy's start for a given shape: method-of-moments scale and location.

    Data here are w = (max m - m)/std >= 0 with unit variance; the gap t = a - max m (in
    std units) is scale * Gamma(1 + 1/c) - mean(w). Where that start lies inside the data
    (t <= 0) the gap starts at a tenth of a standard deviation.
    """
    g1 = torch.lgamma(1 + 1 / c0)
    var_factor = torch.exp(torch.lgamma(1 + 2 / c0)) - torch.exp(2 * g1)
    t0 = torch.exp(g1) / var_factor.sqrt() - w.mean(1)
    t0 = torch.where(torch.isfinite(t0) & (t0 > 0.1), t0, torch.full_like(t0, 0.1))
    u = c0.log().clamp(*_U_BOUNDS)
    v = t0.log().clamp(*_V_BOUNDS)
    return u, v


def _profile_nll(w: torch.Tensor, c: torch.Tensor, t: torch.Tensor):
    """Profile negative log-likelihood per sample F(c, t) and log of the profiled scale.

    With z = w + t: scale^c = mean(z^c) and
    F = -(log c - log mean(z^c) + (c - 1) mean(log z) - 1).
    """
    log_z = torch.log(w + t[:, None])
    cl = c[:, None] * log_z
    k = cl.amax(1)
    log_a0 = torch.log(torch.exp(cl - k[:, None]).mean(1)) + k
    nll = -(c.log() - log_a0 + (c - 1) * log_z.mean(1) - 1)
    return nll, log_a0 / c


def _nll_derivatives(w: torch.Tensor, u: torch.Tensor, v: torch.Tensor):
    """F, its gradient and Hessian in (u, v) = (log c, log t), analytic, overflow-safe."""
    c, t = u.exp(), v.exp()
    z = w + t[:, None]
    log_z = z.log()
    cl = c[:, None] * log_z
    k = cl.amax(1)
    e = torch.exp(cl - k[:, None])  # z^c / exp(k)
    e0 = e.mean(1)
    inv_z = 1 / z
    a1 = (e * log_z).mean(1) / e0
    a2 = (e * log_z * log_z).mean(1) / e0
    b0 = (e * inv_z).mean(1) / e0
    b1 = (e * log_z * inv_z).mean(1) / e0
    cc0 = (e * inv_z * inv_z).mean(1) / e0
    s1 = inv_z.mean(1)
    s2 = (inv_z * inv_z).mean(1)
    mean_log = log_z.mean(1)
    ll = c.log() - (e0.log() + k) + (c - 1) * mean_log - 1
    l_c = 1 / c - a1 + mean_log
    l_t = -c * b0 + (c - 1) * s1
    l_cc = -1 / c**2 - (a2 - a1 * a1)
    l_ct = -(c * b1 + b0) + c * a1 * b0 + s1
    l_tt = -c * (c - 1) * cc0 + (c * b0) ** 2 - (c - 1) * s2
    grad = torch.stack((-c * l_c, -t * l_t), 1)
    h_uu = -(c * c * l_cc + c * l_c)
    h_vv = -(t * t * l_tt + t * l_t)
    h_uv = -c * t * l_ct
    return -ll, grad, h_uu, h_uv, h_vv


def _solve(w: torch.Tensor, u: torch.Tensor, v: torch.Tensor, max_iter: int):
    """Levenberg-Marquardt minimisation of F over (u, v), all rows at once, within bounds.

    Coordinates at a bound with the gradient pointing outward are held there (projected
    gradient; the gap reaches its lower bound when shape < 1, where the likelihood is
    unbounded as a -> max m). A row stops when its projected gradient vanishes or no step
    improves F any more (an optimum at machine precision); stopped rows are dropped. Returns
    u, v, ``at_limit``: rows with no finite optimum (at the upper bound of the shape or the
    gap: the likelihood keeps growing toward the Gumbel limit, a -> infinity), and
    ``unfinished``: rows still moving after ``max_iter`` steps.
    """
    f, grad, huu, huv, hvv = _nll_derivatives(w, u, v)
    lam = torch.full_like(u, 1e-3)
    active = torch.arange(u.shape[0], device=u.device)
    for _ in range(max_iter):
        if active.numel() == 0:
            break
        ua, va, lam_a = u[active], v[active], lam[active]
        g, a, b, d = grad[active], huu[active], huv[active], hvv[active]
        pinned = _pinned(ua, va, g)
        g = g.masked_fill(pinned, 0.0)
        b = b.masked_fill(pinned.any(1), 0.0)
        min_eig = (a + d) / 2 - torch.sqrt(((a - d) / 2) ** 2 + b * b)
        mu = lam_a + torch.clamp(-min_eig, min=0) * 1.01
        a, d = a + mu, d + mu
        det = a * d - b * b
        du = -(d * g[:, 0] - b * g[:, 1]) / det
        dv = -(a * g[:, 1] - b * g[:, 0]) / det
        step = torch.stack((du, dv), 1)
        norm = step.norm(dim=1, keepdim=True)
        step = torch.where(norm > _MAX_STEP, step * (_MAX_STEP / norm), step)
        step = torch.nan_to_num(step)
        u_new = (ua + step[:, 0]).clamp(*_U_BOUNDS)
        v_new = (va + step[:, 1]).clamp(*_V_BOUNDS)
        f_new, g_new, huu_new, huv_new, hvv_new = _nll_derivatives(w[active], u_new, v_new)
        f_old = f[active]
        accept = torch.isfinite(f_new) & (f_new <= f_old)
        idx = active[accept]
        u[idx], v[idx], f[idx] = u_new[accept], v_new[accept], f_new[accept]
        grad[idx], huu[idx], huv[idx], hvv[idx] = g_new[accept], huu_new[accept], huv_new[accept], hvv_new[accept]
        lam[active] = torch.where(accept, (lam_a / 3).clamp(min=1e-12), lam_a * 4)
        g = grad[active].masked_fill(_pinned(u[active], v[active], grad[active]), 0.0)
        flat = g.abs().amax(1) <= _GRAD_TOL
        stuck = lam[active] > 1e12
        active = active[~(flat | stuck)]
    at_limit = (u >= _U_BOUNDS[1]) | (v >= _V_BOUNDS[1])
    unfinished = torch.zeros_like(at_limit)
    unfinished[active] = True
    return u, v, at_limit, unfinished


def _pinned(u: torch.Tensor, v: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """(rows, 2) mask of coordinates held at a bound by a gradient pointing outward."""
    lower = torch.stack((u <= _U_BOUNDS[0], v <= _V_BOUNDS[0]), 1)
    upper = torch.stack((u >= _U_BOUNDS[1], v >= _V_BOUNDS[1]), 1)
    return (lower & (grad > 0)) | (upper & (grad < 0))


def _ks_pvalue(w: torch.Tensor, c: torch.Tensor, t: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """Two-sided one-sample KS p-value of each row under its fit, as ``scipy.stats.kstest``.

    In the rows' coordinates z = w + t >= t the fitted law is Weibull: 1 - exp(-(z/scale)^c),
    the mirror image of the reverse Weibull of the maxima (same statistic D).
    p = kstwo.sf(D, n) (scipy's exact distribution), one vectorised call for all rows.
    """
    n = w.shape[1]
    z = torch.sort(w + t[:, None], dim=1).values
    cdf = -torch.expm1(-torch.exp(c[:, None] * (z.log() - log_scale[:, None])))
    i = torch.arange(1, n + 1, dtype=z.dtype, device=z.device)
    d_plus = (i / n - cdf).amax(1)
    d_minus = (cdf - (i - 1) / n).amax(1)
    d = torch.maximum(d_plus, d_minus)
    p = kstwo.sf(d.cpu().numpy(), n).clip(0.0, 1.0)
    return torch.as_tensor(p, dtype=torch.float64).to(d.device).where(torch.isfinite(d), torch.nan)
