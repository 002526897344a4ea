"""Drop-in, batched replacement for ART 1.20.1's CLEVER (``art.metrics.clever``, ``clever_u``,
``clever_t``): same signatures, defaults and estimator, so ``np.random.seed(s)`` before a
call gives ART's score, computed in a fraction of the time.

ART's estimator (which differs from the paper's, see ``robustx.clever``): for a single
sample x (no batch dimension) with predicted class c and each target j, in this order

1. a pool of P = ``pool_factor * batch_size`` points uniform in the Lp ball B_p(x, R),
   drawn from numpy's global RNG (``art.utils.random_sphere``: p = 1 sorted-uniform
   spacings times random signs, p = 2 Gaussian direction scaled by
   gammainc(d/2, |z|^2/2)^(1/d), p = inf uniform per coordinate), added to x in float64,
   cast to float32, clipped to the classifier's ``clip_values``;
2. ``nb_batches`` bootstrap batches of ``batch_size`` pool indices drawn with replacement
   (``np.random.choice(P, batch_size)`` each);
3. ||grad f_c - grad f_j||_q at every pool point (q dual to p), each batch's maximum;
4. ``scipy.stats.weibull_min.fit(-maxima, c_init, optimizer=scipy.optimize.fmin)``; its
   location estimate a gives the score min(-(f_c - f_j)(x) / a, R) on the model's outputs.

Higher scores mean more robust. ART loops over targets and over batches of
``pool_factor`` points with two backward passes each and fits one Weibull at a time; here
the random draws keep ART's order, the points of all pools of all targets go through the
model in large chunks (one forward and one backward pass each), the dual norms are reduced by
``robustx.ops.grad_norm_batch_max``, and the Weibull fits of all targets run as one
vectorised Nelder-Mead that replicates ``scipy.optimize.fmin`` step by step
(:func:`weibull_min_fit`; bit-identical to scipy on the same data).

Parity: the random draws, the bootstrap and the fit are exactly ART's; the gradients
agree with ART's to float32 rounding only (kernels round differently for different batch
sizes). Scores agree with ART's to < 1e-4 (see tests/compat/test_art.py and
bench/bench_art.py) except where ART's fit explodes (bootstrap maxima of a small pool
hold many tied values; the Lipschitz estimate comes out orders of magnitude above every
sampled norm and the score near 0): there a change in the 7th digit of one norm moves
the optimum far, for ART as here, and a RuntimeWarning says so.

Drop-in without code changes: ``robustx.compat.art.patch()`` puts these functions in
place of ``clever``, ``clever_u`` and ``clever_t`` in ``art.metrics`` and
``art.metrics.metrics``, so unchanged ART code (``art.metrics.clever_u(classifier, ...)``)
runs them; classifiers they do not handle (other frameworks, preprocessing defences) still
go to ART's own functions. ``unpatch()`` restores ART's. Names bound before ``patch()``
(``from art.metrics import clever_u`` at import time) keep ART's functions.
"""
from __future__ import annotations

import functools
import importlib
import numbers
import warnings
from typing import Callable, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from scipy import special
from scipy.stats import FitError
from torch import nn

from robustx import checks, ops
from robustx.modelutil import frozen_eval, progress_bar

__all__ = ["clever", "clever_u", "clever_t", "weibull_min_fit", "patch", "unpatch"]

# --------------------------------------------------------------------------- public API


# art.metrics.clever's parameters in ART's order (a drop-in), then robustx's keywords.
def clever(
    classifier,
    x,
    nb_batches: int,
    batch_size: int,
    radius: float,
    norm,
    target=None,
    target_sort: bool = False,
    c_init: float = 1.0,
    pool_factor: int = 10,
    verbose: bool = True,
    *,
    clip_values=None,
    max_chunk: Optional[int] = None,
) -> np.ndarray:
    """CLEVER scores of ``x`` for several target classes, as ``art.metrics.clever``.

    ``target``: None (every class but the predicted one, in class order, or with
    ``target_sort`` in ``np.argsort`` order of the prediction without its last entry), a
    class, or a sequence of classes. Returns an array with one score per target class
    (``None`` where the target is the predicted class, making it an object array).
    Higher = more robust. See :func:`clever_u` for the other arguments.
    """
    model, sample, args, logits, pred = _setup(classifier, x, clip_values, nb_batches, batch_size, radius, norm,
                                               c_init, pool_factor)
    if target is None:
        if target_sort:
            classes = list(np.argsort(logits[None])[0][:-1])
        else:
            classes = [j for j in range(model.nb_classes) if j != pred]
    elif isinstance(target, numbers.Integral) and not isinstance(target, bool):
        classes = [target]
    else:
        classes = list(target)
    classes = [checks.integer(j, "target", 0, model.nb_classes - 1) for j in classes]
    scores = _scores(model, sample, logits, pred, [j for j in classes if j != pred], *args, max_chunk, verbose)
    found = iter(scores)
    return np.array([None if j == pred else next(found) for j in classes])


# art.metrics.clever_u's parameters in ART's order (a drop-in), then robustx's keywords.
def clever_u(
    classifier,
    x,
    nb_batches: int,
    batch_size: int,
    radius: float,
    norm,
    c_init: float = 1.0,
    pool_factor: int = 10,
    verbose: bool = True,
    *,
    clip_values=None,
    max_chunk: Optional[int] = None,
) -> np.float64:
    """Untargeted CLEVER score of one sample, as ``art.metrics.clever_u``: the minimum of
    the targeted scores over every class but the predicted one. Higher = more robust.

    classifier: an ART ``PyTorchClassifier`` (its model, ``clip_values``, ``nb_classes``
        and mean/std ``preprocessing`` are used; preprocessing or postprocessing defences
        are refused) or a plain ``nn.Module`` returning (N, K) outputs (then the points
        are clipped only with the keyword ``clip_values=(lo, hi)``, floats or arrays).
    x: one sample without batch dimension (numpy array or tensor, finite, inside the clip
        values); the model sees float32.
    nb_batches (>= 2), batch_size, radius (R > 0), norm (1, 2, np.inf, or "1", "2",
    "inf"), c_init (initial Weibull shape), pool_factor: as in ART.
    verbose: progress bar over the gradient chunks.
    max_chunk: points per forward/backward pass (default: 2^17 input values on CPU,
        2^22 on GPU).

    Warns (RuntimeWarning) when a target's Weibull fit has exploded: its Lipschitz
    estimate -loc is not positive or more than 10 times the largest sampled norm. ART
    returns such scores silently; they are meaningless and change with float rounding.
    """
    model, sample, args, logits, pred = _setup(classifier, x, clip_values, nb_batches, batch_size, radius, norm,
                                               c_init, pool_factor)
    targets = [j for j in range(model.nb_classes) if j != pred]
    return np.min(_scores(model, sample, logits, pred, targets, *args, max_chunk, verbose))


# art.metrics.clever_t's parameters in ART's order (a drop-in), then robustx's keywords.
def clever_t(
    classifier,
    x,
    target_class: int,
    nb_batches: int,
    batch_size: int,
    radius: float,
    norm,
    c_init: float = 1.0,
    pool_factor: int = 10,
    *,
    clip_values=None,
    max_chunk: Optional[int] = None,
) -> np.float64:
    """Targeted CLEVER score of one sample towards ``target_class``, as
    ``art.metrics.clever_t`` (ValueError when it is the predicted class). Higher = more
    robust. Other arguments as in :func:`clever_u`."""
    model, sample, args, logits, pred = _setup(classifier, x, clip_values, nb_batches, batch_size, radius, norm,
                                               c_init, pool_factor)
    target_class = checks.integer(target_class, "target_class", 0, model.nb_classes - 1)
    if target_class == pred:
        raise ValueError(f"target_class={target_class} is the predicted class of x")
    return _scores(model, sample, logits, pred, [target_class], *args, max_chunk, False)[0]


# ------------------------------------------------------------------ patching ART itself

ART_MODULES = ("art.metrics", "art.metrics.metrics")
_ART_ORIGINALS: dict = {}  # (module, name) -> ART's function, while patched


def patch() -> None:
    """Replace ``clever``, ``clever_u`` and ``clever_t`` in ``art.metrics`` and
    ``art.metrics.metrics`` by this module's (same signatures, same numbers, faster).

    Calls with a classifier this module does not handle go to ART's function. Calling it
    again changes nothing; :func:`unpatch` restores ART's functions.
    """
    for module_name in ART_MODULES:
        module = importlib.import_module(module_name)
        for name in ("clever", "clever_u", "clever_t"):
            current = getattr(module, name)
            if not hasattr(current, "__robustx_art__"):
                _ART_ORIGINALS[module_name, name] = current
                setattr(module, name, _drop_in(globals()[name], current))


def unpatch() -> None:
    """Put ART's own ``clever``, ``clever_u`` and ``clever_t`` back (harmless when not patched)."""
    for (module_name, name), original in _ART_ORIGINALS.items():
        setattr(importlib.import_module(module_name), name, original)
    _ART_ORIGINALS.clear()


def _drop_in(ours: Callable, art_fn: Callable) -> Callable:
    """``ours`` for classifiers it handles, ``art_fn`` for the others."""

    @functools.wraps(ours)
    def call(classifier, *args, **kwargs):
        return (ours if _handled(classifier) else art_fn)(classifier, *args, **kwargs)

    call.__robustx_art__ = art_fn
    return call


def _handled(classifier) -> bool:
    """A plain nn.Module, or an ART PyTorchClassifier without defences."""
    if isinstance(classifier, nn.Module):
        return True
    art_classifier = _art_pytorch_classifier()
    if art_classifier is None or not isinstance(classifier, art_classifier) or classifier.postprocessing_defences:
        return False
    try:
        _art_standardisation(classifier, tuple(classifier.input_shape))
    except ValueError:
        return False
    return True


# ------------------------------------------------------------------------ the estimator

_EXPLODED = 10.0  # Lipschitz estimate / largest sampled norm above which a fit has exploded


def _scores(
    model: "_Model",
    x: np.ndarray,
    logits: np.ndarray,
    pred: int,
    targets: List[int],
    nb_batches: int,
    batch_size: int,
    radius: float,
    p: float,
    c_init: float,
    pool_factor: int,
    max_chunk: Optional[int],
    progress: bool,
) -> List[np.float64]:
    """ART's score min(-(f_c - f_j)(x) / a_j, R) for each target j, draws in ART's order."""
    if not targets:
        return []
    pool_size = pool_factor * batch_size
    picks = []

    def pools() -> Iterator[Tuple[int, np.ndarray]]:
        for j in targets:  # ART: a target's pool, then its bootstrap, then the next target
            pool = _ball_pool(x, pool_size, radius, p, model.clip_values)
            picks.append(np.random.randint(0, pool_size, size=(nb_batches, batch_size)))
            yield j, pool

    size = max_chunk or max(1, (2**22 if model.device.type == "cuda" else 2**17) // x.size)  # CPU: stay in cache
    norms = _pool_grad_norms(model, pools(), len(targets) * pool_size, size, pred, ops.dual_norm(p), progress)
    maxima = np.take_along_axis(norms.reshape(len(targets), pool_size), np.stack(picks).reshape(len(targets), -1), 1)
    maxima = maxima.reshape(len(targets), nb_batches, batch_size).max(-1)
    loc = weibull_min_fit(-maxima, c_init)[:, 1]
    _warn_exploded(targets, -loc, maxima.max(1))
    return [np.min([-(logits[pred] - logits[j]) / a, radius]) for j, a in zip(targets, loc)]


def _warn_exploded(targets: List[int], lipschitz: np.ndarray, top: np.ndarray) -> None:
    bad = ~((lipschitz > 0) & (lipschitz <= _EXPLODED * top))
    if bad.any():
        found = zip(np.array(targets)[bad], lipschitz[bad], top[bad])
        details = ", ".join(f"class {j}: {est:.4g} vs {t:.4g}" for j, est, t in found)
        warnings.warn(
            "ART's Weibull fit exploded (Lipschitz estimate vs largest sampled gradient norm: "
            f"{details}); the score, like ART's, is meaningless and sensitive to float rounding",
            RuntimeWarning,
            stacklevel=3,
        )


def _ball_pool(x: np.ndarray, n: int, radius: float, p: float, clip_values) -> np.ndarray:
    """n float32 points uniform in B_p(x, radius), clipped: ART's ``random_sphere`` draws."""
    d = x.size
    if p == 1.0:
        spacings = np.diff(np.sort(np.random.uniform(size=(n, d))), axis=1, prepend=0.0)
        delta = radius * spacings * np.random.choice([-1, 1], (n, d))
    elif p == 2.0:
        z = np.random.randn(n, d)
        sq = np.sum(z**2, axis=1)
        delta = z * (special.gammainc(d / 2.0, sq / 2.0) ** (1 / d) * radius / np.sqrt(sq))[:, None]
    else:
        delta = np.random.uniform(-radius, radius, (n, d))
    pool = (delta.reshape(n, *x.shape) + x).astype(np.float32)
    if clip_values is not None:
        np.clip(pool, clip_values[0], clip_values[1], out=pool)
    return pool


def _pool_grad_norms(
    model: "_Model",
    pools: Iterable[Tuple[int, np.ndarray]],
    n_points: int,
    size: int,
    pred: int,
    q: float,
    progress: bool,
) -> np.ndarray:
    """||grad (f_pred - f_target)||_q at every point of the (target, pool) stream: (n_points,) float32.

    The points go through the model in chunks across pool boundaries, one forward and one
    backward pass each (output gradient e_pred - e_target; ART takes the two class
    gradients in two passes and subtracts them: equal up to float32 rounding); the fused
    op takes the norms. Chunks hold ``size`` points; pools are drawn as chunks need them.
    """
    device = model.device
    norms = []
    first_row = torch.zeros(1, 1, dtype=torch.int64, device=device)
    with frozen_eval(model.module), torch.enable_grad():
        stream = _rechunk(pools, size)
        for points, labels in progress_bar(stream, progress, "CLEVER (ART) gradients", -(-n_points // size)):
            xb = torch.from_numpy(points).to(device).requires_grad_(True)
            out = model.forward(xb)
            model.check_output(out, xb.shape[0])
            weights = torch.zeros_like(out)
            weights[:, pred] = 1.0
            weights.scatter_(1, torch.from_numpy(labels).to(device)[:, None], -1.0)
            grad = torch.autograd.grad(out, xb, weights)[0].reshape(1, xb.shape[0], 1, -1)
            norms.append(ops.grad_norm_batch_max(grad, first_row, q=q, batch_size=1)[0][0, 0].cpu())
    norms = torch.cat(norms).numpy()
    if np.isnan(norms).any():
        raise ValueError("classifier returned NaN gradients inside the ball")
    return norms


def _rechunk(pools: Iterable[Tuple[int, np.ndarray]], size: int) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
    """(points, target labels) in chunks of ``size`` points, cut across pool boundaries."""
    points, labels, filled = [], [], 0
    for j, pool in pools:
        start = 0
        while start < len(pool):
            take = min(size - filled, len(pool) - start)
            points.append(pool[start : start + take])
            labels.append(np.full(take, j, dtype=np.int64))
            filled, start = filled + take, start + take
            if filled == size:
                yield np.concatenate(points), np.concatenate(labels)
                points, labels, filled = [], [], 0
    if filled:
        yield np.concatenate(points), np.concatenate(labels)


# ------------------------------------------------ scipy.stats.weibull_min.fit, vectorised

_NM_MAXFUN = 3 * 200  # fmin's default for 3 parameters (maxiter binds later: >= 1 call per iteration)
_NM_TOL = 1e-4  # fmin's xtol and ftol
_LOG_XMAX = np.log(np.finfo(np.float64).max)  # scipy's penalty per point outside the support is 100x this


def weibull_min_fit(data, c_init: float = 1.0) -> np.ndarray:
    """Row-wise ``scipy.stats.weibull_min.fit(row, c_init, optimizer=scipy.optimize.fmin)``.

    ``data`` (F, n) -> (F, 3) array of (shape c, loc, scale), identical to scipy's results
    (numpy >= 2): the same moment-based start (c = c_init, scale from the variance, loc
    from the mean), the same penalised negative log-likelihood
    n log(scale) - sum log pdf((x - loc) / scale) + 100 log(x_max) per point outside the
    support, and fmin's Nelder-Mead (xtol = ftol = 1e-4, 600 evaluations) run for all rows
    at once. Raises ``scipy.stats.FitError`` where scipy would (c or scale <= 0).
    """
    data = np.ascontiguousarray(data)  # row sums in scipy's (contiguous) order
    if data.ndim != 2 or data.shape[1] < 2:
        raise ValueError(f"data must have shape (F, n) with n >= 2, got {data.shape}")
    if not np.isfinite(data).all():
        raise ValueError("data contains non-finite values")
    start = _weibull_start(data, c_init)
    x64 = data.astype(np.float64)
    with np.errstate(all="ignore"):
        theta = _nelder_mead(lambda t, r: _weibull_nll(t, x64[r]), start)
    if not ((theta[:, 0] > 0) & (theta[:, 2] > 0)).all():
        raise FitError("Optimization converged to parameters that are outside the range allowed by the distribution.")
    return theta


def _weibull_start(data: np.ndarray, c: float) -> np.ndarray:
    """weibull_min.fit's start: scale = sqrt(var / (G(1+2/c) - G(1+1/c)^2)), loc = mean - scale G(1+1/c)."""
    var = np.var(data, axis=1).astype(np.float64)
    scale = np.sqrt(var / (special.gamma(1 + 2 / c) - special.gamma(1 + 1 / c) ** 2))
    loc = np.mean(data, axis=1).astype(np.float64) - scale * special.gamma(1 + 1 / c)
    return np.stack((np.full(data.shape[0], c, dtype=np.float64), loc, scale), 1)


def _weibull_nll(theta: np.ndarray, x: np.ndarray) -> np.ndarray:
    """scipy's penalised negative log-likelihood of weibull_min for rows theta (F, 3) = (c, loc, scale).

    z = (x - loc) / scale; log pdf = log c + (c - 1) log z - z^c; points with z outside
    [0, inf] or a non-finite log pdf are dropped and cost 100 log(x_max) each; + n log(scale);
    inf where c <= 0 or scale <= 0. Sums over exactly the kept points, as scipy does.
    """
    n = x.shape[1]
    c, loc, scale = theta[:, 0:1], theta[:, 1:2], theta[:, 2:3]
    valid = (c[:, 0] > 0) & ~(scale[:, 0] <= 0)
    z = (x - loc) / scale
    log_pdf = np.log(c) + special.xlogy(c - 1, z) - pow(z, c)
    kept = (z >= 0) & np.isfinite(log_pdf)
    n_kept = np.count_nonzero(kept, axis=1)
    total = np.add.reduce(log_pdf, axis=1)
    for r in np.flatnonzero(valid & (n_kept < n)):  # scipy sums the kept points only
        total[r] = np.add.reduce(log_pdf[r][kept[r]])
    out = -total + (n - n_kept) * _LOG_XMAX * 100 + n * np.log(scale[:, 0])
    out[~valid] = np.inf
    return out


def _nelder_mead(fun: Callable[[np.ndarray, np.ndarray], np.ndarray], x0: np.ndarray) -> np.ndarray:
    """``scipy.optimize.fmin`` with its defaults for every row of x0 (F, N) at once.

    ``fun(points (k, N), rows (k,)) -> (k,)`` evaluates the objective of the given rows.
    Each row follows fmin exactly: initial simplex x0 and x0 with one coordinate * 1.05
    (0.00025 if zero); per iteration reflect (1 + rho) xbar - rho x_worst, then expand
    (chi = 2), contract outside / inside (psi = 1/2) or shrink towards the best vertex
    (sigma = 1/2); vertices kept sorted by value; stop when every vertex is within xtol of
    the best and every value within ftol, or after 600 evaluations (counting stops an
    iteration mid-way, as fmin's call limit does). Returns the best vertex of each row.
    """
    n_rows, n = x0.shape
    sim = np.repeat(x0[:, None, :], n + 1, 1)
    for k in range(n):
        v = sim[:, k + 1, k]
        sim[:, k + 1, k] = np.where(v != 0, (1 + 0.05) * v, 0.00025)
    fsim = fun(sim.reshape(-1, n), np.repeat(np.arange(n_rows), n + 1)).reshape(n_rows, n + 1)
    calls = np.full(n_rows, n + 1)
    _sort_simplex(sim, fsim, np.arange(n_rows))
    _sort_simplex(sim, fsim, np.arange(n_rows))
    while True:
        rows = np.flatnonzero(calls < _NM_MAXFUN)
        if not rows.size:
            return sim[:, 0].copy()
        s, f = sim[rows], fsim[rows]
        spread = np.maximum.reduce(np.abs(s[:, 1:] - s[:, :1]).reshape(rows.size, -1), axis=1)
        rows = rows[~((spread <= _NM_TOL) & (np.maximum.reduce(np.abs(f[:, :1] - f[:, 1:]), axis=1) <= _NM_TOL))]
        if not rows.size:
            return sim[:, 0].copy()
        worst = sim[rows, -1]
        xbar = np.add.reduce(sim[rows, :-1], 1) / n
        x_r = 2 * xbar - worst
        f_r = fun(x_r, rows)
        calls[rows] += 1
        f_best, f_second, f_worst = fsim[rows, 0], fsim[rows, -2], fsim[rows, -1]
        expand = f_r < f_best
        accept_r = ~expand & (f_r < f_second)
        outside = ~expand & ~accept_r & (f_r < f_worst)
        new_x, new_f, replace = x_r, f_r, accept_r
        shrink = np.zeros_like(expand)
        second = ~accept_r & (calls[rows] < _NM_MAXFUN)
        if second.any():
            i = np.flatnonzero(second)
            e, o = expand[i, None], outside[i, None]
            contract = np.where(o, 1.5 * xbar[i] - 0.5 * worst[i], 0.5 * xbar[i] + 0.5 * worst[i])
            x_2 = np.where(e, 3 * xbar[i] - 2 * worst[i], contract)
            f_2 = fun(x_2, rows[i])
            calls[rows[i]] += 1
            e, o = e[:, 0], o[:, 0]
            better = np.where(e, f_2 < f_r[i], np.where(o, f_2 <= f_r[i], f_2 < f_worst[i]))
            new_x, new_f, replace = x_r.copy(), f_r.copy(), accept_r.copy()
            new_x[i[better]], new_f[i[better]] = x_2[better], f_2[better]
            replace[i] = e | better
            shrink[i] = ~e & ~better
        sim[rows[replace], -1], fsim[rows[replace], -1] = new_x[replace], new_f[replace]
        _shrink(sim, fsim, rows[shrink], calls, fun)
        _sort_simplex(sim, fsim, rows)


def _shrink(sim: np.ndarray, fsim: np.ndarray, rows: np.ndarray, calls: np.ndarray, fun) -> None:
    """Move vertices 1..N of the given rows halfway to the best one and re-evaluate them.

    fmin moves and evaluates them one after the other until its call limit: vertex j is
    evaluated while calls remain, and the first vertex past the limit is moved only.
    """
    if not rows.size:
        return
    n = sim.shape[1] - 1
    budget = np.minimum(_NM_MAXFUN - calls[rows], n)[:, None]
    vertex = np.arange(1, n + 1)[None, :]
    best = sim[rows, :1]
    moved = best + 0.5 * (sim[rows, 1:] - best)
    sim[rows, 1:] = np.where((vertex <= budget + 1)[..., None], moved, sim[rows, 1:])
    r, j = np.nonzero(vertex <= budget)
    fsim[rows[r], j + 1] = fun(sim[rows[r], j + 1], rows[r])
    calls[rows] += budget[:, 0]


def _sort_simplex(sim: np.ndarray, fsim: np.ndarray, rows: np.ndarray) -> None:
    """Order each row's vertices by value with np.argsort, as fmin does."""
    order = np.argsort(fsim[rows], axis=1)
    fsim[rows] = fsim[rows[:, None], order]
    sim[rows] = sim[rows[:, None], order]


# ------------------------------------------------------------------ classifier handling


class _Model:
    """What the estimator needs from a classifier: a differentiable forward pass with ART's
    preprocessing, ``clip_values`` (float32 arrays or None) and the number of classes."""

    def __init__(
        self,
        module: nn.Module,
        clip_values,
        nb_classes: Optional[int] = None,
        input_shape: Optional[Tuple[int, ...]] = None,
        standardise: Sequence[Tuple[np.ndarray, np.ndarray]] = (),
    ):
        self.module = module
        self.clip_values = clip_values
        self.nb_classes = nb_classes
        self.input_shape = input_shape
        self.device = checks.device(None, module)
        self.standardise = [
            tuple(torch.as_tensor(a, dtype=torch.float32, device=self.device) for a in mean_std)
            for mean_std in standardise
        ]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for mean, std in self.standardise:  # ART's StandardisationMeanStd: (x - mean) / std
            x = (x - mean) / std
        return self.module(x)

    def check_output(self, out, n: int) -> None:
        if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != n or out.shape[1] < 2:
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"classifier must return outputs of shape (N, nb_classes >= 2) for N inputs, got {shape}")
        if self.nb_classes is not None and out.shape[1] != self.nb_classes:
            raise ValueError(f"classifier returned {out.shape[1]} outputs per input but nb_classes={self.nb_classes}")
        if not torch.isfinite(out).all():
            raise ValueError("classifier returned NaN or infinite outputs")

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Outputs (K,) float32 of the single sample x."""
        with frozen_eval(self.module), torch.no_grad():
            out = self.forward(torch.from_numpy(x.astype(np.float32)[None]).to(self.device))
        self.check_output(out, 1)
        if self.nb_classes is None:
            self.nb_classes = out.shape[1]
        return out[0].cpu().numpy()


def _as_model(classifier, clip_values) -> _Model:
    if isinstance(classifier, nn.Module):
        return _Model(classifier, _check_clip_values(clip_values))
    art_classifier = _art_pytorch_classifier()
    if art_classifier is None or not isinstance(classifier, art_classifier):
        raise TypeError(
            f"classifier must be an ART PyTorchClassifier or a torch.nn.Module, got {type(classifier).__name__}"
        )
    if clip_values is not None:
        raise ValueError("clip_values is read from the ART classifier; pass it only with a plain nn.Module")
    if classifier.postprocessing_defences:
        raise ValueError(
            f"classifier has postprocessing defences {classifier.postprocessing_defences}; only classifiers without "
            "them are supported"
        )
    shape = tuple(classifier.input_shape)
    steps = _art_standardisation(classifier, shape)
    return _Model(classifier.model, classifier.clip_values, classifier.nb_classes, shape, steps)


def _art_pytorch_classifier():
    try:
        from art.estimators.classification.pytorch import PyTorchClassifier
    except ImportError:
        return None
    return PyTorchClassifier


def _art_standardisation(classifier, input_shape) -> List[Tuple[np.ndarray, np.ndarray]]:
    """(mean, std) of each mean/std preprocessing step applied at prediction; refuse other steps."""
    from art.preprocessing.standardisation_mean_std.numpy import StandardisationMeanStd
    from art.preprocessing.standardisation_mean_std.pytorch import StandardisationMeanStdPyTorch
    from art.preprocessing.standardisation_mean_std.utils import broadcastable_mean_std

    steps = []
    for op in classifier.preprocessing_operations:
        if not isinstance(op, (StandardisationMeanStd, StandardisationMeanStdPyTorch)):
            raise ValueError(
                f"classifier has the preprocessing step {type(op).__name__}; only mean/std standardisation "
                "(ART's `preprocessing=(mean, std)`) is supported, not preprocessing defences"
            )
        if op.apply_predict:
            steps.append(broadcastable_mean_std(np.empty((1, *input_shape)), op.mean, op.std))
    return steps


# ------------------------------------------------------------------------ input checks


def _check_clip_values(clip_values):
    """Plain-module clip values as ART stores them: a float32 array pair, lo < hi."""
    if clip_values is None:
        return None
    try:
        lo, hi = (np.asarray(v, dtype=np.float32) for v in clip_values)
    except (TypeError, ValueError):
        raise ValueError(
            f"clip_values must be None or a pair (lo, hi) of floats or arrays, got {clip_values!r}"
        ) from None
    if not (np.isfinite(lo).all() and np.isfinite(hi).all() and (lo < hi).all()):
        raise ValueError(f"clip_values must be finite with lo < hi, got {clip_values!r}")
    return lo, hi


def _check_sample(x, model: _Model) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    if not isinstance(x, np.ndarray):
        raise TypeError(f"x must be a numpy array or a torch.Tensor, got {type(x).__name__}")
    if not np.issubdtype(x.dtype, np.floating):
        raise TypeError(f"x must be a floating array, got {x.dtype}")
    if x.ndim == 0:
        raise ValueError("x must be one sample without batch dimension, got a scalar")
    if not np.isfinite(x).all():
        raise ValueError("x contains NaN or infinite values")
    if model.input_shape is not None and x.shape != model.input_shape:
        raise ValueError(
            f"x must be one sample of the classifier's input_shape {model.input_shape} (no batch dimension), "
            f"got {x.shape}"
        )
    if model.clip_values is not None:
        lo, hi = model.clip_values
        if (x < lo).any() or (x > hi).any():
            raise ValueError(f"x has values in [{x.min():.4g}, {x.max():.4g}], outside the classifier's clip_values")
    return x


def _setup(classifier, x, clip_values, *estimator_args) -> Tuple[_Model, np.ndarray, tuple, np.ndarray, int]:
    """What every ART entry point starts from: the model, the checked sample and estimator
    arguments (nb_batches, batch_size, radius, norm, c_init, pool_factor), the sample's
    outputs and its predicted class."""
    model = _as_model(classifier, clip_values)
    sample = _check_sample(x, model)
    args = _check_estimator_args(*estimator_args)
    logits = model.predict(sample)
    return model, sample, args, logits, int(np.argmax(logits))


def _check_estimator_args(nb_batches, batch_size, radius, norm, c_init, pool_factor):
    return (
        checks.integer(nb_batches, "nb_batches", 2),
        checks.integer(batch_size, "batch_size", 1),
        checks.positive_float(radius, "radius"),
        checks.norm(int(norm) if isinstance(norm, np.integer) else norm),
        checks.positive_float(c_init, "c_init"),
        checks.integer(pool_factor, "pool_factor", 1),
    )


