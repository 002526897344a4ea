"""The compiled operators of robustx, their fake (meta) kernels and pure-PyTorch references.

Three operators live in the C++/CUDA library ``robustx._C`` (``torch.ops.robustx.*``):

* :func:`ball_sample` - points uniform in an Lp ball (Philox counter-based RNG);
* :func:`grad_norm_batch_max` - dual norms of per-class gradient differences, reduced
  to the maximum over each batch of samples (the inner loop of CLEVER);
* :func:`coverage_update` - one pass over a layer's activations that updates every
  neuron-coverage state (k-section bitmap, corner flags, threshold flags, top-k flags).

Each wrapper validates its arguments and calls the compiled op; when ``robustx._C`` cannot
be loaded it warns once and runs the ``*_ref`` reference instead. The references define
the semantics (the tests compare the compiled ops against them) and are written for
clarity, not speed.
"""
from __future__ import annotations

import contextlib
import math
import warnings
from typing import Iterator, Optional, Sequence, Tuple

import torch

from robustx.geometry import dual_norm, parse_norm

__all__ = [
    "compiled",
    "reference_ops",
    "ball_sample",
    "ball_sample_ref",
    "grad_norm_batch_max",
    "grad_norm_batch_max_ref",
    "coverage_update",
    "coverage_update_ref",
    "dual_norm",
    "parse_norm",
    "philox4x32",
]


def _load_library() -> bool:
    try:
        from robustx import _C  # noqa: F401  (registers torch.ops.robustx.*)
    except (ImportError, OSError) as err:
        warnings.warn(
            f"robustx._C could not be loaded ({err}); falling back to the pure-PyTorch "
            "reference operators, which are much slower. Build the extension with "
            "`pip install --no-build-isolation -e .`.",
            RuntimeWarning,
            stacklevel=3,
        )
        return False
    return True


_COMPILED = _load_library()


def compiled() -> bool:
    """True when the compiled operator library ``robustx._C`` is loaded and in use."""
    return _COMPILED


@contextlib.contextmanager
def reference_ops() -> Iterator[None]:
    """Route every wrapper to its pure-PyTorch reference inside the block (for comparisons)."""
    global _COMPILED
    saved, _COMPILED = _COMPILED, False
    try:
        yield
    finally:
        _COMPILED = saved


# --------------------------------------------------------------------------- Philox
_MASK32 = 0xFFFFFFFF
_PHILOX_M0, _PHILOX_M1 = 0xD2511F53, 0xCD9E8D57
_PHILOX_W0, _PHILOX_W1 = 0x9E3779B9, 0xBB67AE85
RADIUS_BLOCK = 0xFFFFFFFF  # counter word 0 of the radius draw (coordinates use blocks 0, 1, ...)


def _mulhilo32(a: int, b: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(hi, lo) 32-bit halves of the 64-bit product a*b, exact in int64 arithmetic."""
    a_hi, a_lo = a >> 16, a & 0xFFFF
    lo_part = b * a_lo  # < 2^48
    mid = b * a_hi  # < 2^48
    hi = (mid + (lo_part >> 16)) >> 16
    lo = (((mid & 0xFFFF) << 16) + lo_part) & _MASK32
    return hi & _MASK32, lo


def philox4x32(counter: Sequence[torch.Tensor], key: Tuple[int, int]) -> Tuple[torch.Tensor, ...]:
    """Philox4x32-10 (Salmon et al., SC 2011) on int64 tensors holding 32-bit words."""
    c0, c1, c2, c3 = (torch.as_tensor(c, dtype=torch.int64) & _MASK32 for c in counter)
    k0, k1 = key[0] & _MASK32, key[1] & _MASK32
    for r in range(10):
        if r:
            k0, k1 = (k0 + _PHILOX_W0) & _MASK32, (k1 + _PHILOX_W1) & _MASK32
        hi0, lo0 = _mulhilo32(_PHILOX_M0, c0)
        hi1, lo1 = _mulhilo32(_PHILOX_M1, c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return c0, c1, c2, c3


def _uniform_from_bits(bits: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Top 24 bits, forced odd, over 2^24: uniform in [2^-24, 1 - 2^-24], exact in float32."""
    return ((bits >> 8) | 1).to(dtype) * (2.0 ** -24)


def _point_uniforms(n_centers: int, sample_ids: torch.Tensor, n_words: int, key) -> torch.Tensor:
    """Uniforms u[i, s, w] of word w of point (center i, sample s): counter (w // 4, s_lo, s_hi, i)."""
    blocks = (n_words + 3) // 4
    j = torch.arange(blocks, dtype=torch.int64, device=sample_ids.device)[None, None, :]
    i = torch.arange(n_centers, dtype=torch.int64, device=sample_ids.device)[:, None, None]
    s = sample_ids[None, :, None]
    shape = (n_centers, sample_ids.numel(), blocks)
    words = philox4x32(
        (j.expand(shape), (s & _MASK32).expand(shape), (s >> 32).expand(shape), i.expand(shape)), key
    )
    return torch.stack(words, dim=-1).reshape(n_centers, sample_ids.numel(), blocks * 4)[..., :n_words]


def _opmath(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def ball_sample_ref(
    centers: torch.Tensor,
    n: int,
    radius: float,
    p: float,
    clip_min: Optional[float],
    clip_max: Optional[float],
    seed: int,
    offset: int,
) -> torch.Tensor:
    """Reference of ``torch.ops.robustx.ball_sample`` on flat centers (N, d) -> (N, n, d).

    Point (i, s) uses the Philox stream key = (seed_lo, seed_hi), counter =
    (block, s_lo, s_hi, i) with s = offset + sample index; word w of the stream is
    uniform u_w. Coordinates (computed in float32, or float64 for float64 centers):
    L-inf  delta_k = R (2 u_k - 1);
    L2     z_k = Box-Muller of (u_2m, u_2m+1), m = k // 2 (cos for even k, sin for odd);
    L1     z_k = Laplace(u_k) = log(2u) if u < 1/2 else -log(2 - 2u);
    L1/L2  delta = z / ||z||_p * R * U^(1/d), U from word 0 of block 0xFFFFFFFF.
    Then x = center + delta, clipped to [clip_min, clip_max] where given.
    """
    n_centers, d = centers.shape
    key = (seed & _MASK32, (seed >> 32) & _MASK32)
    om = _opmath(centers.dtype)
    sample_ids = torch.arange(offset, offset + n, dtype=torch.int64, device=centers.device)
    n_words = d + (d % 2 if p == 2.0 else 0)
    u = _uniform_from_bits(_point_uniforms(n_centers, sample_ids, n_words, key), om)
    if math.isinf(p):
        delta = radius * (2.0 * u - 1.0)
    else:
        if p == 2.0:
            pairs = u.reshape(n_centers, n, n_words // 2, 2)
            rho = torch.sqrt(-2.0 * torch.log(pairs[..., 0]))
            theta = (2.0 * math.pi) * pairs[..., 1]
            z = torch.stack((rho * torch.cos(theta), rho * torch.sin(theta)), -1).reshape(n_centers, n, n_words)[..., :d]
            z_norm = torch.sqrt((z * z).sum(-1, keepdim=True))
        else:
            z = torch.where(u < 0.5, torch.log(2.0 * u), -torch.log(2.0 - 2.0 * u))
            z_norm = z.abs().sum(-1, keepdim=True)
        i = torch.arange(n_centers, dtype=torch.int64, device=centers.device)[:, None, None]
        s = sample_ids[None, :, None]
        shape = (n_centers, n, 1)
        radius_bits = philox4x32(
            (torch.full(shape, RADIUS_BLOCK, device=centers.device), (s & _MASK32).expand(shape), (s >> 32).expand(shape), i.expand(shape)),
            key,
        )[0]
        big_u = _uniform_from_bits(radius_bits, om)
        r = radius * torch.exp(torch.log(big_u) / d)
        delta = z * (r / z_norm)
    x = centers.to(om)[:, None, :] + delta
    if clip_min is not None or clip_max is not None:
        x = x.clamp(min=clip_min, max=clip_max)
    return x.to(centers.dtype)


def _check_float_tensor(t, name: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        raise TypeError(f"{name} must be a floating tensor (float16, bfloat16, float32, float64), got {t.dtype}")


def ball_sample(
    centers: torch.Tensor,
    n: int,
    radius: float,
    norm=2,
    clip_values: Optional[Tuple[float, float]] = None,
    seed: int = 0,
    offset: int = 0,
) -> torch.Tensor:
    """Draw ``n`` points uniformly in the Lp ball of radius ``radius`` around each center.

    ``centers`` (N, *shape) -> (N, n, *shape) in the centers' dtype and device. The norm is
    p in {1, 2, inf}; with ``clip_values=(lo, hi)`` every point is clipped to [lo, hi].
    The points are a pure function of (centers, radius, norm, seed, sample index
    ``offset + s``, center index): drawing samples ``[0, n)`` in one call or in chunks with
    ``offset`` gives the same points. Uniformity: the radius of a sample satisfies
    P(||delta||_p <= r) = (r / R)^d.
    """
    _check_float_tensor(centers, "centers")
    p = parse_norm(norm)
    if centers.dim() < 1:
        raise ValueError("centers must have a batch dimension: shape (N, *shape)")
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative int, got {n!r}")
    radius = float(radius)
    if not math.isfinite(radius) or radius <= 0:
        raise ValueError(f"radius must be a finite number > 0, got {radius!r}")
    if not isinstance(seed, int) or not 0 <= seed < 2 ** 63:
        raise ValueError(f"seed must be an int in [0, 2^63), got {seed!r}")
    if not isinstance(offset, int) or offset < 0:
        raise ValueError(f"offset must be a non-negative int, got {offset!r}")
    clip_min, clip_max = _parse_clip(clip_values)
    shape = centers.shape[1:]
    flat = centers.reshape(centers.shape[0], math.prod(shape)).contiguous()
    if flat.shape[1] == 0:
        raise ValueError("centers must have at least one coordinate per center")
    if torch.isnan(flat).any():
        raise ValueError("centers contains NaN")
    if _COMPILED:
        out = torch.ops.robustx.ball_sample(flat, n, radius, p, clip_min, clip_max, seed, offset)
    else:
        out = ball_sample_ref(flat, n, radius, p, clip_min, clip_max, seed, offset)
    return out.reshape(centers.shape[0], n, *shape)


def _parse_clip(clip_values) -> Tuple[Optional[float], Optional[float]]:
    if clip_values is None:
        return None, None
    try:
        lo, hi = clip_values
    except (TypeError, ValueError):
        raise ValueError(f"clip_values must be None or a pair (lo, hi), got {clip_values!r}") from None
    lo = None if lo is None else float(lo)
    hi = None if hi is None else float(hi)
    if lo is not None and hi is not None and not lo < hi:
        raise ValueError(f"clip_values must satisfy lo < hi, got {clip_values!r}")
    return lo, hi


# ----------------------------------------------------------- gradient norm reduction
def grad_norm_batch_max_ref(
    jac: torch.Tensor,
    source: Optional[torch.Tensor],
    targets: torch.Tensor,
    q: float,
    batch_size: int,
    return_norms: bool,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Reference of ``torch.ops.robustx.grad_norm_batch_max``.

    jac (M, S, K, D): gradients of K rows for S samples of M images. With ``source``
    (M,) the row of class c: g_t = jac[m, s, source[m]] - jac[m, s, targets[m, t]]; with
    ``source=None`` the rows already are gradients of g: g_t = jac[m, s, targets[m, t]].
    Returns maxima (M, T, S // batch_size) of ||g_t||_q over each batch of ``batch_size``
    consecutive samples (NaN propagates), and the norms (M, T, S) if ``return_norms``
    (else an empty tensor). Accumulation and outputs in float32 (float64 for float64).
    """
    m, s, _, d = jac.shape
    t = targets.shape[1]
    om = _opmath(jac.dtype)
    g = jac.to(om).gather(2, targets[:, None, :, None].expand(m, s, t, d))
    if source is not None:
        g = jac.to(om).gather(2, source[:, None, None, None].expand(m, s, 1, d)) - g
    norms = torch.linalg.vector_norm(g, ord=q, dim=-1).transpose(1, 2)  # (M, T, S)
    maxima = norms.reshape(m, t, s // batch_size, batch_size).amax(-1)
    return maxima, (norms.contiguous() if return_norms else norms.new_empty(0))


def grad_norm_batch_max(
    jac: torch.Tensor,
    targets: torch.Tensor,
    *,
    q,
    batch_size: int,
    source: Optional[torch.Tensor] = None,
    return_norms: bool = False,
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Per-batch maxima of the q-norm of per-class gradient (differences), in one pass.

    ``jac`` (M, S, K, D) holds gradients (rows of the Jacobian, or of g = f_c - f_j) of
    K rows for S = n_batches * batch_size samples of each of M images; ``targets`` (M, T)
    picks rows; ``source`` (M,) optionally picks the row of the predicted class c, and
    then the norm is taken of jac[source] - jac[target] without materialising the
    difference. Returns ``(maxima (M, T, n_batches), norms (M, T, S) or None)``.
    For CLEVER with an Lp ball use q = dual of p (``dual_norm``).
    """
    _check_float_tensor(jac, "jac")
    q = parse_norm(q, "q")
    if jac.dim() != 4:
        raise ValueError(f"jac must have shape (M, S, K, D), got {tuple(jac.shape)}")
    m, s, k, d = jac.shape
    if d == 0:
        raise ValueError("jac must have at least one gradient coordinate (D >= 1)")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if s % batch_size:
        raise ValueError(f"the number of samples S={s} must be a multiple of batch_size={batch_size}")
    targets = _check_rows(targets, "targets", m, k, jac.device, dim=2)
    if source is not None:
        source = _check_rows(source, "source", m, k, jac.device, dim=1)
    jac = jac.contiguous()
    if _COMPILED:
        maxima, norms = torch.ops.robustx.grad_norm_batch_max(jac, source, targets, q, batch_size, return_norms)
    else:
        maxima, norms = grad_norm_batch_max_ref(jac, source, targets, q, batch_size, return_norms)
    return maxima, (norms if return_norms else None)


def _check_rows(idx, name: str, m: int, k: int, device, dim: int) -> torch.Tensor:
    if not isinstance(idx, torch.Tensor) or idx.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"{name} must be an integer tensor")
    if idx.dim() != dim or idx.shape[0] != m:
        raise ValueError(f"{name} must have {dim} dims with first size M={m}, got {tuple(idx.shape)}")
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= k):
        raise ValueError(f"{name} must index rows in [0, K={k})")
    return idx.to(device=device, dtype=torch.int64).contiguous()


# ------------------------------------------------------------------ coverage counting
def coverage_update_ref(
    act: torch.Tensor,
    low: torch.Tensor,
    high: torch.Tensor,
    k: int,
    threshold: float,
    top_k: int,
    sections: torch.Tensor,
    upper: torch.Tensor,
    lower: torch.Tensor,
    above: torch.Tensor,
    topk_hit: torch.Tensor,
) -> torch.Tensor:
    """Reference of ``torch.ops.robustx.coverage_update`` (updates the states in place).

    act (N, M, L): neuron m of input n has value v[n, m] = mean over L (accumulated in
    float64). low, high (M,) float64 profile bounds. Updates, OR-ing into the states:
    sections (M, k) bool - section floor((v - low) k / (high - low)) when low <= v <= high
                     (v == high hits section k - 1; high == low hits section 0);
    upper / lower (M,) - v > high / v < low;
    above (M,) - (v - min_n) / (max_n - min_n) > threshold, min_n / max_n over all
                 M*L raw elements of input n (DeepXplore's per-input scaling; 0 when equal);
    topk_hit (M,) - neuron among the top_k largest v of some input (ties: lower index).
    Returns the top-k indices (N, top_k) int64, in descending order of value.
    """
    n = act.shape[0]
    v = act.to(torch.float64).mean(-1)
    inside = (v >= low) & (v <= high)
    width = high - low
    idx = torch.where(width > 0, torch.floor((v - low) * k / torch.where(width > 0, width, 1.0)), 0.0)
    idx = idx.clamp(0, k - 1).to(torch.int64)
    hits = torch.zeros_like(sections)
    hits.view(-1).index_fill_(0, (idx + torch.arange(v.shape[1], device=v.device) * k)[inside], True)
    sections |= hits
    upper |= (v > high).any(0)
    lower |= (v < low).any(0)
    flat = act.reshape(n, act.shape[1] * act.shape[2]).to(torch.float64)
    lo_n, hi_n = flat.amin(1, keepdim=True), flat.amax(1, keepdim=True)
    span = hi_n - lo_n
    scaled = torch.where(span > 0, (v - lo_n) / torch.where(span > 0, span, 1.0), 0.0)
    above |= (scaled > threshold).any(0)
    order = torch.sort(v, dim=1, descending=True, stable=True).indices[:, :top_k]
    topk_hit.index_fill_(0, order.reshape(-1), True)
    return order


def coverage_update(
    act: torch.Tensor,
    low: torch.Tensor,
    high: torch.Tensor,
    *,
    k: int,
    threshold: float,
    top_k: int,
    sections: torch.Tensor,
    upper: torch.Tensor,
    lower: torch.Tensor,
    above: torch.Tensor,
    topk_hit: torch.Tensor,
) -> torch.Tensor:
    """Update every coverage state of one layer from its activations, in one pass.

    ``act`` (N, M, L): M neurons, each the mean of L elements (a conv channel's feature
    map: L = H*W; element-wise neurons or Linear units: L = 1). ``low``/``high`` (M,)
    float64 are the profiled bounds. The bool states ``sections`` (M, k), ``upper``,
    ``lower``, ``above``, ``topk_hit`` (M,) are OR-updated in place (see
    :func:`coverage_update_ref` for the exact rules); states merge across batches and
    processes with OR. Returns each input's top-k neuron indices (N, top_k).
    """
    _check_float_tensor(act, "act")
    if act.dim() != 3:
        raise ValueError(f"act must have shape (N, M, L), got {tuple(act.shape)}")
    _, m, length = act.shape
    if length == 0:
        raise ValueError("act must have at least one element per neuron (L >= 1)")
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be an int >= 1, got {k!r}")
    if not isinstance(top_k, int) or not 1 <= top_k <= m:
        raise ValueError(f"top_k must be an int in [1, M={m}], got {top_k!r}")
    for name, t in (("low", low), ("high", high)):
        if not isinstance(t, torch.Tensor) or t.dtype != torch.float64 or t.shape != (m,):
            raise ValueError(f"{name} must be a float64 tensor of shape ({m},)")
    for name, t, shape in (
        ("sections", sections, (m, k)),
        ("upper", upper, (m,)),
        ("lower", lower, (m,)),
        ("above", above, (m,)),
        ("topk_hit", topk_hit, (m,)),
    ):
        if not isinstance(t, torch.Tensor) or t.dtype != torch.bool or tuple(t.shape) != shape:
            raise ValueError(f"{name} must be a bool tensor of shape {shape}")
        if not t.is_contiguous():
            raise ValueError(f"{name} must be contiguous (it is updated in place)")
    act = act.contiguous()
    if _COMPILED:
        return torch.ops.robustx.coverage_update(
            act, low.contiguous(), high.contiguous(), k, float(threshold), top_k, sections, upper, lower, above, topk_hit
        )
    return coverage_update_ref(act, low, high, k, float(threshold), top_k, sections, upper, lower, above, topk_hit)


# ------------------------------------------------------------------- fake kernels
if _COMPILED:

    @torch.library.register_fake("robustx::ball_sample")
    def _ball_sample_fake(centers, n, radius, p, clip_min, clip_max, seed, offset):
        return centers.new_empty((centers.shape[0], n, centers.shape[1]))

    @torch.library.register_fake("robustx::grad_norm_batch_max")
    def _grad_norm_batch_max_fake(jac, source, targets, q, batch_size, return_norms):
        m, s = jac.shape[0], jac.shape[1]
        t = targets.shape[1]
        om = _opmath(jac.dtype)
        maxima = jac.new_empty((m, t, s // batch_size), dtype=om)
        norms = jac.new_empty((m, t, s) if return_norms else (0,), dtype=om)
        return maxima, norms

    @torch.library.register_fake("robustx::coverage_update")
    def _coverage_update_fake(act, low, high, k, threshold, top_k, sections, upper, lower, above, topk_hit):
        return act.new_empty((act.shape[0], top_k), dtype=torch.int64)
