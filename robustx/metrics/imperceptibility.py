"""Imperceptibility of adversarial examples: ALD_p, ASS and PSD (DEEPSEC, Ling et al.
S&P 2019; Guo et al.). Each is a mean over the successful examples S (see
:func:`robustx.metrics.success_mask`) of a per-example distance between the clean image
x and the adversarial image x'; images are (N, C, H, W). Higher ALD / PSD and lower ASS
mean the attack had to change the image more visibly, which speaks for the model.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F

from robustx.checks import clip_range, positive_float, renamed
from robustx.geometry import parse_norm
from robustx.metrics.arguments import empty, image_pair, mask
from robustx.metrics.transforms import to_8bit

__all__ = ["ald", "ald_per_sample", "ssim", "ass", "psd", "psd_per_sample", "SSIM_WINDOW", "SSIM_K1", "SSIM_K2"]

#: scikit-image's SSIM defaults: uniform window side, K1, K2.
SSIM_WINDOW = 7
SSIM_K1 = 0.01
SSIM_K2 = 0.03
_CHUNK = 1024  # images per batched filter call (bounds the float64 temporaries)


def _successful(x, x_adv, success, clip_values=None, min_size: int = 1):
    """Checked (x[S], x_adv[S]), or None (NaN result, warned) when S is empty."""
    image_pair(x, x_adv, clip_values, min_size)
    success = mask(success, x.shape[0], "success").to(x.device)
    if empty(success, "success"):
        return None
    return x[success], x_adv[success]


def _order(norm, clip_values):
    """(order, box): the order of ``norm`` (0.0 for ALD_0) and, for ALD_0 only, the checked
    ``clip_values`` that define the 8-bit levels."""
    l0 = not isinstance(norm, bool) and (norm == 0 or (isinstance(norm, str) and norm.strip() in ("0", "l0")))
    return (0.0, clip_range(clip_values)) if l0 else (parse_norm(norm, "norm"), None)


def _distortion(a: torch.Tensor, b: torch.Tensor, order: float, box) -> torch.Tensor:
    """Per image (N,) float64: ||b - a||_order, or for order 0 the fraction of 8-bit levels changed."""
    if order == 0.0:
        return (to_8bit(a, box) != to_8bit(b, box)).flatten(1).double().mean(1)
    return torch.linalg.vector_norm((b.double() - a.double()).flatten(1), ord=order, dim=1)


def ald_per_sample(x: torch.Tensor, x_adv: torch.Tensor, norm, *, clip_values=(0.0, 1.0)) -> torch.Tensor:
    """Per image (N,) float64, the term of :func:`ald`: ||x'_i - x_i||_p (p = ``norm``) in data
    units, or for ``norm`` = 0 the fraction of elements whose 8-bit level changes (``clip_values``
    as in :func:`ald`)."""
    order, box = _order(norm, clip_values)
    image_pair(x, x_adv, box)
    return _distortion(x, x_adv, order, box)


@renamed(p="norm")
def ald(x: torch.Tensor, x_adv: torch.Tensor, success: torch.Tensor, norm, *, clip_values=(0.0, 1.0)) -> float:
    """Average Lp distortion over the successful examples S (higher = the attack needs more).

    ALD_p = (1/|S|) sum_{i in S} ||x'_i - x_i||_p for ``norm`` p in {1, 2, inf} ("inf",
    math.inf), in data units (DEEPSEC divides by ||x_i||_p; the design here does not).
    ALD_0 (``norm`` = 0) = (1/|S|) sum_{i in S} |{j : q(x'_i)_j != q(x_i)_j}| / d, the
    fraction of the d elements whose 8-bit level q(v) = round(255 (v - lo) / (hi - lo)) changes, with
    (lo, hi) = ``clip_values`` (both images must lie inside it). NaN with a RuntimeWarning
    when S is empty. Per image: :func:`ald_per_sample`.
    """
    order, box = _order(norm, clip_values)
    pair = _successful(x, x_adv, success, box)
    if pair is None:
        return math.nan
    return float(_distortion(*pair, order, box).mean())


def ssim(x: torch.Tensor, x_adv: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Per-image SSIM (N,) in float64 with scikit-image ``structural_similarity``
    semantics (defaults, ``channel_axis`` = C, given ``data_range`` = L).

    With 7x7 uniform means mu, sample (co)variances s = 49/48 (mean(uv) - mu_u mu_v),
    C1 = (K1 L)^2, C2 = (K2 L)^2, K1 = 0.01, K2 = 0.03:
        SSIM map = (2 mu_x mu_x' + C1)(2 s_xx' + C2) / ((mu_x^2 + mu_x'^2 + C1)(s_xx + s_x'x' + C2)),
    averaged over the windows lying wholly inside the image (scikit-image's crop of the
    3-pixel border) and over the channels. H and W must be >= 7.
    """
    image_pair(x, x_adv, None, SSIM_WINDOW)
    data_range = positive_float(data_range, "data_range")
    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2
    n_win = SSIM_WINDOW * SSIM_WINDOW
    unbiased = n_win / (n_win - 1.0)
    out = []
    for a, b in zip(torch.split(x.double(), _CHUNK), torch.split(x_adv.double(), _CHUNK)):
        moments = F.avg_pool2d(torch.cat((a, b, a * a, b * b, a * b), 1), SSIM_WINDOW, stride=1)
        mu_a, mu_b, aa, bb, ab = moments.chunk(5, 1)
        mu_ab = mu_a * mu_b
        mu_sq = mu_a.square().add_(mu_b.square())
        numerator = (2 * mu_ab + c1).mul_(ab.sub_(mu_ab).mul_(2 * unbiased).add_(c2))  # (2 s_xx' + C2)
        denominator = (mu_sq + c1).mul_(aa.add_(bb).sub_(mu_sq).mul_(unbiased).add_(c2))  # (s_xx + s_x'x' + C2)
        out.append(numerator.div_(denominator).mean((1, 2, 3)))
    return torch.cat(out) if out else x.new_zeros(0, dtype=torch.float64)


def ass(x: torch.Tensor, x_adv: torch.Tensor, success: torch.Tensor, data_range: float = 1.0) -> float:
    """Average structural similarity over S: (1/|S|) sum_{i in S} SSIM(x_i, x'_i), SSIM as
    in :func:`ssim` with ``data_range`` = hi - lo (lower = the attack is more visible,
    which speaks for the model). NaN with a RuntimeWarning when S is empty."""
    pair = _successful(x, x_adv, success, None, SSIM_WINDOW)
    if pair is None:
        return math.nan
    return float(ssim(*pair, data_range=data_range).mean())


def _psd_terms(a: torch.Tensor, b: torch.Tensor, tau: float) -> torch.Tensor:
    """Per image (N,) float64: sum_j |b_j - a_j| / max(std_j, tau), std_j over the 3x3
    reflect-padded neighbourhood of a_j in its channel (see :func:`psd`)."""
    total = []
    for a_, b_ in zip(torch.split(a.double(), _CHUNK), torch.split(b.double(), _CHUNK)):
        padded = F.pad(a_, (1, 1, 1, 1), mode="reflect")
        moments = F.avg_pool2d(torch.cat((padded, padded * padded), 1), 3, stride=1)
        mean, square = moments.chunk(2, 1)
        std = (square - mean * mean).clamp_min(0.0).sqrt()
        total.append(((b_ - a_).abs() / std.clamp_min(tau)).sum((1, 2, 3)))
    return torch.cat(total) if total else a.new_zeros(0, dtype=torch.float64)


def _tau(data_range, std_floor) -> float:
    data_range = positive_float(data_range, "data_range")
    return data_range / 255 if std_floor is None else positive_float(std_floor, "std_floor")


def psd_per_sample(x: torch.Tensor, x_adv: torch.Tensor, data_range: float = 1.0, *,
                   std_floor: Optional[float] = None) -> torch.Tensor:
    """Per image (N,) float64, the term of :func:`psd`: sum_j |x'_ij - x_ij| Sen(x_ij)."""
    tau = _tau(data_range, std_floor)
    image_pair(x, x_adv, None, 2)
    return _psd_terms(x, x_adv, tau)


def psd(x: torch.Tensor, x_adv: torch.Tensor, success: torch.Tensor, data_range: float = 1.0, *,
        std_floor: Optional[float] = None) -> float:
    """Perturbation sensitivity distance over S (Luo et al., AAAI 2018; higher = the
    attack needs more visible changes).

    PSD = (1/|S|) sum_{i in S} sum_j |x'_ij - x_ij| Sen(x_ij), Sen(x_ij) = 1 / max(std_j, tau),
    std_j the population standard deviation of the 3x3 neighbourhood of element j in its
    own channel of the clean image, the border extended by reflection (without repeating
    the edge: numpy/torch "reflect"), tau = ``std_floor``.

    std = 0 (flat neighbourhoods, e.g. saturated regions) would give Sen = inf: the floor
    tau caps Sen at 1 / tau. By default tau = ``data_range`` / 255, one 8-bit level of the
    data's range hi - lo (as :func:`ass`), so PSD does not depend on the data's units: the
    same images in [0, 255] or in [0, 1] give the same PSD. Every neighbourhood with
    std >= tau counts with the paper's 1 / std exactly. H and W must be >= 2. Per image:
    :func:`psd_per_sample`.
    """
    tau = _tau(data_range, std_floor)
    pair = _successful(x, x_adv, success, None, 2)
    if pair is None:
        return math.nan
    return float(_psd_terms(*pair, tau).mean())
