"""``ball_sample``: points uniform in an Lp ball, from a counter-based RNG (Philox)."""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch

from robustx import checks
from robustx.ops import loader
from robustx.ops.philox import MASK32, point_uniforms, radius_uniforms

__all__ = ["ball_sample", "ball_sample_ref"]


def opmath(dtype: torch.dtype) -> torch.dtype:
    """The computation type of the sampler: float64 for float64 centers, else float32."""
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
    key = (seed & MASK32, (seed >> 32) & MASK32)
    om = opmath(centers.dtype)
    sample_ids = torch.arange(offset, offset + n, dtype=torch.int64, device=centers.device)
    n_words = d + (d % 2 if p == 2.0 else 0)
    u = point_uniforms(n_centers, sample_ids, n_words, key, om)
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
        r = radius * torch.exp(torch.log(radius_uniforms(n_centers, sample_ids, key, om)) / d)
        delta = z * (r / z_norm)
    x = centers.to(om)[:, None, :] + delta
    if clip_min is not None or clip_max is not None:
        x = x.clamp(min=clip_min, max=clip_max)
    return x.to(centers.dtype)


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
    P(||delta||_p <= r) = (r / R)^d. NaN centers are an error on the CPU; on a GPU (where
    checking would wait for the device) they give NaN points.
    """
    checks.floating_tensor(centers, "centers")
    p = checks.norm(norm)
    if centers.dim() < 1:
        raise ValueError("centers must have a batch dimension: shape (N, *shape)")
    n = checks.integer(n, "n", 0)
    radius = checks.positive_float(radius, "radius")
    seed = checks.seed(seed)
    offset = checks.integer(offset, "offset", 0)
    clip_min, clip_max = checks.clip_range(clip_values) or (None, None)
    shape = centers.shape[1:]
    flat = centers.reshape(centers.shape[0], math.prod(shape)).contiguous()
    if flat.shape[1] == 0:
        raise ValueError("centers must have at least one coordinate per center")
    if flat.device.type == "cpu" and torch.isnan(flat).any():  # on a GPU the check would wait for it
        raise ValueError("centers contains NaN")
    sample = torch.ops.robustx.ball_sample if loader.compiled() else ball_sample_ref
    out = sample(flat, n, radius, p, clip_min, clip_max, seed, offset)
    return out.reshape(centers.shape[0], n, *shape)


if loader.SOURCE is not None:

    @torch.library.register_fake("robustx::ball_sample")
    def _ball_sample_fake(centers, n, radius, p, clip_min, clip_max, seed, offset):
        return centers.new_empty((centers.shape[0], n, centers.shape[1]))
