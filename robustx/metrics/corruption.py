"""Common corruptions (CIFAR-10-C / ImageNet-C) and the corruption errors mCE and relative mCE.

Hendrycks & Dietterich, "Benchmarking Neural Network Robustness to Common Corruptions and
Perturbations", ICLR 2019. The severity constants are those of the authors' generators in
github.com/hendrycks/robustness: ``ImageNet-C/create_c/make_cifar_c.py`` for inputs whose
larger side is at most :data:`SMALL_INPUT_SIDE` pixels, ``make_imagenet_c.py`` for larger
ones (the formulas and constants carry over; the code here is written anew in torch).

Every corruption works on a batch (N, C, H, W) in the data domain ``clip_values=(lo, hi)``:
the batch is mapped to [0, 1] (the published code's domain), corrupted, clipped to [0, 1]
as the published code does, and mapped back. The published images are then stored as
8-bit (``np.uint8``, truncating); here the output stays floating (only JPEG, whose codec
works on 8-bit images, and glass blur, which the published code quantises in the middle,
are quantised).

Of the 15 benchmark corruptions (:data:`BENCHMARK`), :data:`UNAVAILABLE` names those not
implemented here and why; a mean over fewer than the 15 is not the benchmark's mCE, and
:func:`corruption_score` names it accordingly.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Callable, Dict, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from robustx import checks
from robustx.metrics.transforms import jpeg_8bit
from robustx.modelutil import chunks, frozen_eval, model_device, progress_bar

__all__ = [
    "BENCHMARK",
    "CORRUPTIONS",
    "EXTRA_CORRUPTIONS",
    "UNAVAILABLE",
    "SMALL_INPUT_SIDE",
    "SEVERITY_CONSTANTS",
    "ALEXNET_ERRORS",
    "ALEXNET_CLEAN_ERROR",
    "corrupt",
    "constants_for",
    "rgb_to_hsv",
    "hsv_to_rgb",
    "box_resize_matrix",
    "corruption_errors",
    "mce",
    "rmce",
    "CorruptionScore",
    "corruption_score",
]

#: The 15 benchmark corruptions of Hendrycks & Dietterich (noise, blur, weather, digital),
#: in the order of their tables and of ``ImageNet-C/test.py``.
BENCHMARK: Tuple[str, ...] = (
    "gaussian_noise", "shot_noise", "impulse_noise",
    "defocus_blur", "glass_blur", "motion_blur", "zoom_blur",
    "snow", "frost", "fog", "brightness",
    "contrast", "elastic_transform", "pixelate", "jpeg_compression",
)

#: Benchmark corruptions not implemented here, with the reason.
UNAVAILABLE: Dict[str, str] = {
    "motion_blur": "the published generator calls ImageMagick's MotionBlurImage (Wand); not reimplemented",
    "snow": "its snow layer goes through ImageMagick's MotionBlurImage (Wand); not reimplemented",
    "frost": "needs the frost photographs shipped with the authors' repository, which robustx does not ship",
    "elastic_transform": "not implemented yet (OpenCV affine warp + elastic displacement field)",
}

#: Inputs whose larger side is at most this many pixels use the CIFAR-10-C constants
#: (make_cifar_c.py, 32 x 32 images); larger inputs use the ImageNet-C ones (224 x 224).
SMALL_INPUT_SIDE = 64

#: Per constant set ("cifar": make_cifar_c.py, "imagenet": make_imagenet_c.py) and
#: corruption, the constant c of severities 1..5:
#: gaussian_noise std; shot_noise photon count per unit intensity (Poisson rate u c);
#: impulse_noise salt-and-pepper amount (fraction of elements replaced);
#: defocus_blur (disk radius, Gaussian anti-aliasing sigma of the disk);
#: glass_blur (Gaussian sigma, largest pixel displacement, shuffle iterations);
#: zoom_blur the zoom factors, as numpy.arange(start, stop, step);
#: fog (strength of the plasma fractal, its roughness decay);
#: brightness shift of the HSV value; contrast factor on the deviation from the channel
#: mean; pixelate size factor of the box downsampling; jpeg_compression Pillow quality;
#: gaussian_blur (an extra, not a benchmark corruption) sigma in pixels.
SEVERITY_CONSTANTS: Dict[str, Dict[str, tuple]] = {
    "cifar": {
        "gaussian_noise": (0.04, 0.06, 0.08, 0.09, 0.10),
        "shot_noise": (500, 250, 100, 75, 50),
        "impulse_noise": (0.01, 0.02, 0.03, 0.05, 0.07),
        "defocus_blur": ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)),
        "glass_blur": ((0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)),
        "zoom_blur": ((1, 1.06, 0.01), (1, 1.11, 0.01), (1, 1.16, 0.01), (1, 1.21, 0.01), (1, 1.26, 0.01)),
        "fog": ((0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)),
        "brightness": (0.05, 0.1, 0.15, 0.2, 0.3),
        "contrast": (0.75, 0.5, 0.4, 0.3, 0.15),
        "pixelate": (0.95, 0.9, 0.85, 0.75, 0.65),
        "jpeg_compression": (80, 65, 58, 50, 40),
        "gaussian_blur": (0.4, 0.6, 0.7, 0.8, 1.0),
    },
    "imagenet": {
        "gaussian_noise": (0.08, 0.12, 0.18, 0.26, 0.38),
        "shot_noise": (60, 25, 12, 5, 3),
        "impulse_noise": (0.03, 0.06, 0.09, 0.17, 0.27),
        "defocus_blur": ((3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5)),
        "glass_blur": ((0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2)),
        "zoom_blur": ((1, 1.11, 0.01), (1, 1.16, 0.01), (1, 1.21, 0.02), (1, 1.26, 0.02), (1, 1.31, 0.03)),
        "fog": ((1.5, 2), (2, 2), (2.5, 1.7), (2.5, 1.5), (3, 1.4)),
        "brightness": (0.1, 0.2, 0.3, 0.4, 0.5),
        "contrast": (0.4, 0.3, 0.2, 0.1, 0.05),
        "pixelate": (0.6, 0.5, 0.4, 0.3, 0.25),
        "jpeg_compression": (25, 18, 15, 10, 7),
        "gaussian_blur": (1, 2, 3, 4, 6),
    },
}

#: AlexNet's published ImageNet-C error per benchmark corruption (mean over severities
#: 1..5), the normaliser of the benchmark's mCE: Hendrycks & Dietterich (2019), as
#: transcribed in google-research/augmix ``imagenet.py`` (ALEXNET_ERR, "Raw AlexNet errors
#: taken from https://github.com/hendrycks/robustness"). Only the 11 corruptions
#: implemented here are listed.
ALEXNET_ERRORS: Dict[str, float] = {
    "gaussian_noise": 0.886428, "shot_noise": 0.894468, "impulse_noise": 0.922640,
    "defocus_blur": 0.819880, "glass_blur": 0.826268, "zoom_blur": 0.798360,
    "fog": 0.819324, "brightness": 0.564592, "contrast": 0.853204,
    "pixelate": 0.717840, "jpeg_compression": 0.606500,
}
#: AlexNet's clean ImageNet top-1 error (torchvision's pretrained AlexNet, the model of
#: Hendrycks' ``test.py``: 56.522 % top-1 accuracy), the normaliser of the relative mCE.
ALEXNET_CLEAN_ERROR = 0.43478

#: The benchmark corruptions implemented here, in the benchmark's order (the default of
#: :func:`corruption_errors`).
CORRUPTIONS: Tuple[str, ...] = tuple(c for c in BENCHMARK if c not in UNAVAILABLE)
#: Corruptions of the authors' generators outside the benchmark (their "extra" set).
EXTRA_CORRUPTIONS: Tuple[str, ...] = ("gaussian_blur",)


def _gaussian_noise(u: torch.Tensor, c: float, gen: torch.Generator) -> torch.Tensor:
    """u + N(0, c^2) per element."""
    return u + c * torch.randn(u.shape, generator=gen, device=u.device, dtype=u.dtype)


def _shot_noise(u: torch.Tensor, c: float, gen: torch.Generator) -> torch.Tensor:
    """Poisson(u c) / c per element."""
    return torch.poisson(u * c, generator=gen) / c


def _impulse_noise(u: torch.Tensor, c: float, gen: torch.Generator) -> torch.Tensor:
    """scikit-image ``random_noise(mode='s&p', amount=c)``: each element is replaced with
    probability c, by 1 (salt) or 0 (pepper) with probability 1/2 each."""
    flipped = torch.rand(u.shape, generator=gen, device=u.device) <= c
    salted = torch.rand(u.shape, generator=gen, device=u.device) <= 0.5
    return torch.where(flipped, salted.to(u.dtype), u)


def _gaussian_blur(u: torch.Tensor, c: float, gen: torch.Generator) -> torch.Tensor:
    """scikit-image ``gaussian(sigma=c)`` per channel: separable kernel exp(-k^2 / 2 c^2),
    normalised, radius int(4 c + 0.5) (truncate = 4), edges extended ('nearest')."""
    radius = int(4.0 * c + 0.5)
    k = torch.arange(-radius, radius + 1, device=u.device, dtype=u.dtype)
    kernel = torch.exp(-0.5 * (k / c) ** 2)
    kernel = kernel / kernel.sum()
    channels = u.shape[1]
    padded = F.pad(u, (radius, radius, radius, radius), mode="replicate")
    rows = F.conv2d(padded, kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
    return F.conv2d(rows, kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)


def _reflect_index(n: int, pad: int, device) -> torch.Tensor:
    """Indices of a length-n axis padded by ``pad`` on both sides by reflection without
    repeating the edge (OpenCV BORDER_REFLECT_101, numpy "reflect"), for any pad."""
    i = torch.arange(-pad, n + pad, device=device)
    if n == 1:
        return torch.zeros_like(i)
    period = 2 * (n - 1)
    i = torch.remainder(i, period)
    return torch.where(i > n - 1, period - i, i)


def _filter2d(u: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """OpenCV ``filter2D(u, -1, kernel)`` per channel: correlation with a (2r+1) x (2r+1)
    kernel anchored at its centre, borders BORDER_REFLECT_101."""
    r = kernel.shape[0] // 2
    h, w = u.shape[-2:]
    padded = u[:, :, _reflect_index(h, r, u.device)][:, :, :, _reflect_index(w, r, u.device)]
    channels = u.shape[1]
    return F.conv2d(padded, kernel.to(u.dtype).expand(channels, 1, *kernel.shape), groups=channels)


def _cv2_gaussian_kernel(size: int, sigma: float) -> torch.Tensor:
    """OpenCV ``getGaussianKernel(size, sigma)`` for sigma > 0: exp(-(i - (size-1)/2)^2 / 2 sigma^2), normalised."""
    i = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    k = torch.exp(-i ** 2 / (2 * sigma ** 2))
    return k / k.sum()


def defocus_disk(radius: float, alias_blur: float) -> torch.Tensor:
    """The authors' defocus kernel (``disk``): the disk X^2 + Y^2 <= radius^2 on the grid
    -8..8 (or -radius..radius beyond 8), normalised to sum 1, then anti-aliased by OpenCV
    ``GaussianBlur`` with a 3 x 3 (5 x 5 beyond 8) kernel of sigma ``alias_blur``
    (BORDER_REFLECT_101). Returns a float64 square kernel."""
    half = 8 if radius <= 8 else int(radius)
    grid = torch.arange(-half, half + 1, dtype=torch.float64)
    disk = ((grid[:, None] ** 2 + grid[None, :] ** 2) <= radius ** 2).double()
    disk = disk / disk.sum()
    g = _cv2_gaussian_kernel(3 if radius <= 8 else 5, alias_blur)
    return _filter2d(disk[None, None], g[:, None] * g[None, :])[0, 0]


def _defocus_blur(u: torch.Tensor, c: Tuple[float, float], gen: torch.Generator) -> torch.Tensor:
    """``filter2D`` of each channel with :func:`defocus_disk` (radius, alias sigma) = c."""
    return _filter2d(u, defocus_disk(*c).to(u.device))


def _glass_blur(u: torch.Tensor, c: Tuple[float, int, int], gen: torch.Generator) -> torch.Tensor:
    """Gaussian blur (sigma c[0], as :func:`_gaussian_blur`), quantised to 8 bits by
    truncation, local pixel shuffling, Gaussian blur again. Shuffling: ``c[2]`` passes
    over the pixels (h, w), h from H - d down to d + 1 and w from W - d down to d + 1,
    d = c[1]; each draws (dx, dy) uniform in {-d, ..., d - 1}^2 and sets pixel (h, w) to
    pixel (h + dy, w + dx). The published code writes a swap, but on an RGB array its
    right-hand side holds views, so only this copy happens (a real swap for one channel);
    both behaviours are kept. One draw per pixel for the whole batch at a time."""
    sigma, d, passes = c
    q = torch.floor(_gaussian_blur(u, sigma, gen) * 255.0)
    n, channels, h, w = q.shape
    rows = torch.arange(n, device=q.device)
    for _ in range(passes):
        for i in range(h - d, d, -1):
            for j in range(w - d, d, -1):
                dxy = torch.randint(-d, d, (n, 2), generator=gen, device=q.device)
                ii, jj = i + dxy[:, 1], j + dxy[:, 0]
                here = q[rows, :, i, j]
                q[rows, :, i, j] = q[rows, :, ii, jj]
                if channels == 1:
                    q[rows, :, ii, jj] = here
    return _gaussian_blur(q / 255.0, sigma, gen)


def _zoom_matrix(n: int, factor: float, dtype, device) -> torch.Tensor:
    """(n, n) linear map of the authors' ``clipped_zoom`` along one axis: crop the centre
    ch = ceil(n / factor) pixels (from (n - ch) // 2), zoom them to round(ch factor) by
    linear interpolation as ``scipy.ndimage.zoom(order=1)`` does (output o samples input
    o (ch - 1) / (out - 1)), keep the centre n (from (out - n) // 2)."""
    ch = int(np.ceil(n / factor))
    top = (n - ch) // 2
    out = int(round(ch * factor))
    pos = torch.arange(out, dtype=torch.float64) * ((ch - 1) / (out - 1) if out > 1 else 0.0)
    left = pos.floor().clamp(max=ch - 1)
    frac = pos - left
    right = (left + 1).clamp(max=ch - 1)
    m = torch.zeros(out, n, dtype=torch.float64)
    rows = torch.arange(out)
    m.index_put_((rows, top + left.long()), 1.0 - frac, accumulate=True)
    m.index_put_((rows, top + right.long()), frac, accumulate=True)
    trim = (out - n) // 2
    return m[trim:trim + n].to(dtype=dtype, device=device)


def _zoom_blur(u: torch.Tensor, c: Tuple[float, float, float], gen: torch.Generator) -> torch.Tensor:
    """(u + sum_z clipped_zoom(u, z)) / (1 + #z), z over numpy.arange(*c)."""
    h, w = u.shape[-2:]
    total = u.clone()
    factors = np.arange(*c)
    for z in factors:
        rows, cols = _zoom_matrix(h, z, u.dtype, u.device), _zoom_matrix(w, z, u.dtype, u.device)
        total += rows @ u @ cols.T
    return total / (len(factors) + 1)


def plasma_fractal(n: int, size: int, decay: float, gen: torch.Generator, device=None) -> torch.Tensor:
    """(n, size, size) float64 heightmaps in [0, 1] by the diamond-square algorithm of the
    authors' ``plasma_fractal`` (size a power of two): starting from 0 at the corner and
    a step of ``size``, each pass sets square centres, then diamond centres, to the mean
    of their 4 neighbours (wrapping around) plus wibble * U(-wibble, wibble), wibble = 100
    divided by ``decay`` after every pass, the step halved; finally min-max scaled."""
    maps = torch.zeros(n, size, size, dtype=torch.float64, device=device)
    step, wibble = size, 100.0

    def wibbled(total: torch.Tensor) -> torch.Tensor:
        noise = torch.rand(total.shape, generator=gen, dtype=torch.float64, device=device) * 2 - 1
        return total / 4 + wibble * wibble * noise

    while step >= 2:
        half = step // 2
        corners = maps[:, 0::step, 0::step]
        total = corners + corners.roll(-1, 1)
        maps[:, half::step, half::step] = wibbled(total + total.roll(-1, 2))
        centres, corners = maps[:, half::step, half::step], maps[:, 0::step, 0::step]
        maps[:, 0::step, half::step] = wibbled(centres + centres.roll(1, 1) + corners + corners.roll(-1, 2))
        maps[:, half::step, 0::step] = wibbled(centres + centres.roll(1, 2) + corners + corners.roll(-1, 1))
        step //= 2
        wibble /= decay
    low = maps.amin((1, 2), keepdim=True)
    maps = maps - low
    return maps / maps.amax((1, 2), keepdim=True)


def _fog(u: torch.Tensor, c: Tuple[float, float], gen: torch.Generator) -> torch.Tensor:
    """(u + c[0] F) m / (m + c[0]), F a plasma fractal (roughness decay c[1]) of side the
    next power of two >= max(H, W), cropped to H x W and shared by the channels, m the
    image's largest value."""
    n, _, h, w = u.shape
    side = 1 << (max(h, w) - 1).bit_length()
    fractal = plasma_fractal(n, side, c[1], gen, u.device)[:, None, :h, :w].to(u.dtype)
    peak = u.amax((1, 2, 3), keepdim=True)
    return (u + c[0] * fractal) * peak / (peak + c[0])


def _contrast(u: torch.Tensor, c: float, gen: torch.Generator) -> torch.Tensor:
    """(u - m) c + m with m the mean of each image's channel."""
    means = u.mean(dim=(2, 3), keepdim=True)
    return (u - means) * c + means


def rgb_to_hsv(rgb: torch.Tensor) -> torch.Tensor:
    """RGB (N, 3, H, W) in [0, 1] to HSV with h, s, v in [0, 1] (scikit-image ``rgb2hsv``
    conventions: v = max, s = (max - min) / max, h from the channel holding the max, blue
    before green before red on ties; h = s = 0 where max = min)."""
    r, g, b = rgb.unbind(1)
    value = rgb.amax(1)
    delta = value - rgb.amin(1)
    grey = delta == 0
    safe = torch.where(grey, torch.ones_like(delta), delta)
    hue = torch.where(
        b == value,
        4.0 + (r - g) / safe,
        torch.where(g == value, 2.0 + (b - r) / safe, (g - b) / safe),
    )
    hue = torch.where(grey, torch.zeros_like(hue), torch.remainder(hue / 6.0, 1.0))
    sat = torch.where(grey, torch.zeros_like(delta), delta / torch.where(grey, torch.ones_like(value), value))
    return torch.stack([hue, sat, value], 1)


# Which of (v, q, p, t) each of R, G, B takes in the six hue sectors.
_HSV_SECTORS = torch.tensor([[0, 1, 2, 2, 3, 0], [3, 0, 0, 1, 2, 2], [2, 2, 3, 0, 0, 1]])


def hsv_to_rgb(hsv: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`rgb_to_hsv` (scikit-image ``hsv2rgb``): sector i = floor(6 h) mod 6,
    f = 6 h - floor(6 h), p = v (1 - s), q = v (1 - f s), t = v (1 - (1 - f) s)."""
    hue, sat, value = hsv.unbind(1)
    sector = torch.floor(hue * 6.0)
    f = hue * 6.0 - sector
    candidates = torch.stack(
        [value, value * (1.0 - f * sat), value * (1.0 - sat), value * (1.0 - (1.0 - f) * sat)], 1
    )
    index = _HSV_SECTORS.to(hsv.device)[:, torch.remainder(sector, 6).long()]  # (3, N, H, W)
    return candidates.gather(1, index.transpose(0, 1))


def _brightness(u: torch.Tensor, c: float, gen: torch.Generator) -> torch.Tensor:
    """HSV value v -> clip(v + c, 0, 1), hue and saturation kept (RGB images); for one
    channel (grey, where HSV value = the intensity) u + c."""
    if u.shape[1] == 1:
        return u + c
    if u.shape[1] != 3:
        raise ValueError(f"brightness needs 1 (grey) or 3 (RGB) channels, got {u.shape[1]}")
    hsv = rgb_to_hsv(u)
    hsv = torch.cat([hsv[:, :2], (hsv[:, 2:] + c).clamp(0.0, 1.0)], 1)
    return hsv_to_rgb(hsv)


def box_resize_matrix(n_in: int, n_out: int, dtype=torch.float64, device=None) -> torch.Tensor:
    """(n_out, n_in) weights of Pillow's BOX resampling along one axis.

    Pillow (``Resample.c``, precompute_coeffs): scale = n_in / n_out, support
    s = 0.5 max(scale, 1); output pixel i has centre c_i = (i + 0.5) scale and takes the
    input pixels j in [int(c_i - s + 0.5), int(c_i + s + 0.5)) whose box filter
    value box((j - c_i + 0.5) / max(scale, 1)) is 1 (box(x) = 1 for -0.5 < x <= 0.5),
    all with equal weight.
    """
    scale = n_in / n_out
    filter_scale = max(scale, 1.0)
    support = 0.5 * filter_scale
    centre = (torch.arange(n_out, dtype=torch.float64) + 0.5) * scale
    first = (centre - support + 0.5).floor().clamp(min=0)
    last = (centre + support + 0.5).floor().clamp(max=n_in)
    j = torch.arange(n_in, dtype=torch.float64)
    arg = (j[None, :] - centre[:, None] + 0.5) / filter_scale
    inside = (j[None, :] >= first[:, None]) & (j[None, :] < last[:, None]) & (arg > -0.5) & (arg <= 0.5)
    weights = inside.double()
    return (weights / weights.sum(1, keepdim=True)).to(dtype=dtype, device=device)


def _pixelate(u: torch.Tensor, c: float, gen: torch.Generator) -> torch.Tensor:
    """Pillow BOX resize to (int(W c), int(H c)) and back to (W, H), as linear maps on the
    rows and columns (floating point: no 8-bit rounding between the two resizes)."""
    h, w = u.shape[-2:]
    h_small, w_small = int(h * c), int(w * c)
    rows = box_resize_matrix(h_small, h, u.dtype, u.device) @ box_resize_matrix(h, h_small, u.dtype, u.device)
    cols = box_resize_matrix(w_small, w, u.dtype, u.device) @ box_resize_matrix(w, w_small, u.dtype, u.device)
    return torch.einsum("ij,ncjk,lk->ncil", rows, u, cols)


def _jpeg(u: torch.Tensor, c: float, gen: torch.Generator) -> torch.Tensor:
    """Pillow JPEG at quality c of the 8-bit image round(255 u), decoded and divided by 255
    (:func:`robustx.metrics.transforms.jpeg_8bit`)."""
    return jpeg_8bit(u, int(c))


_CORRUPTION_FUNCTIONS: Dict[str, Callable[[torch.Tensor, object, torch.Generator], torch.Tensor]] = {
    "gaussian_noise": _gaussian_noise,
    "shot_noise": _shot_noise,
    "impulse_noise": _impulse_noise,
    "defocus_blur": _defocus_blur,
    "glass_blur": _glass_blur,
    "zoom_blur": _zoom_blur,
    "fog": _fog,
    "brightness": _brightness,
    "contrast": _contrast,
    "pixelate": _pixelate,
    "jpeg_compression": _jpeg,
    "gaussian_blur": _gaussian_blur,
}


def constants_for(shape: Sequence[int]) -> str:
    """The constant set for inputs of ``shape`` (..., H, W): "cifar" when max(H, W) <=
    :data:`SMALL_INPUT_SIDE`, else "imagenet"."""
    return "cifar" if max(shape[-2:]) <= SMALL_INPUT_SIDE else "imagenet"


def _check_name(name, argument: str) -> str:
    """A corruption name implemented here; unavailable benchmark names say why."""
    if name in UNAVAILABLE:
        raise ValueError(f"{argument}: {name!r} is not available: {UNAVAILABLE[name]}")
    return checks.choice(name, argument, CORRUPTIONS + EXTRA_CORRUPTIONS)


def corrupt(
    x: torch.Tensor,
    name: str,
    severity: int,
    seed: int = 0,
    clip_values: Tuple[float, float] = (0.0, 1.0),
    constants: Optional[str] = None,
) -> torch.Tensor:
    """The corruption ``name`` at ``severity`` (1..5) of a batch x (N, C, H, W).

    u = (x - lo) / (hi - lo); u_c = clip(corruption(u; c_severity), 0, 1);
    returns lo + (hi - lo) u_c in x's dtype. The constants c come from
    :data:`SEVERITY_CONSTANTS`[``constants``], by default :func:`constants_for` x's size
    (CIFAR-10-C's for sides <= 64 px, ImageNet-C's above). Corruptions:

    - gaussian_noise: u + c z, z ~ N(0, 1) per element;
    - shot_noise: Poisson(c u) / c;
    - impulse_noise: each element set to 0 or 1 (equally likely) with probability c;
    - defocus_blur: OpenCV filter2D with the anti-aliased disk :func:`defocus_disk`;
    - glass_blur: blur, 8-bit truncation, local pixel shuffling, blur (:func:`_glass_blur`);
    - zoom_blur: mean of u and its centre zooms by each factor (scipy zoom, order 1);
    - fog: a plasma fractal added, rescaled by the image's maximum (:func:`plasma_fractal`);
    - brightness: HSV value + c (clipped to 1), hue and saturation kept (1 or 3 channels);
    - contrast: (u - m) c + m, m = per-image channel mean;
    - pixelate: Pillow BOX resize to int(c H) x int(c W) and back (float, not 8-bit);
    - jpeg_compression: Pillow JPEG at quality c of round(255 u) (1 or 3 channels);
    - gaussian_blur (extra): Gaussian filter, sigma c, truncated at 4 sigma, nearest edges.

    Random draws (noises, glass shuffling, fog) come from a ``torch.Generator`` seeded
    with ``seed`` on x's device: same seed, same result; they are not the published
    code's NumPy draws, so random corruptions agree with it in distribution only.
    Computed in float32 (float64 for float64 input).
    """
    lo, hi = checks.clip_range(clip_values)
    x = checks.images(x, "x", (lo, hi))
    if x.dim() != 4:
        raise ValueError(f"x must have shape (N, C, H, W), got {tuple(x.shape)}")
    _check_name(name, "name")
    severity = checks.integer(severity, "severity", 1, 5)
    constants = constants_for(x.shape) if constants is None else constants
    checks.choice(constants, "constants", tuple(SEVERITY_CONSTANTS), also="or None")
    gen = torch.Generator(device=x.device).manual_seed(checks.seed(seed))
    work = torch.promote_types(x.dtype, torch.float32)
    u = (x.to(work) - lo) / (hi - lo)
    c = SEVERITY_CONSTANTS[constants][name][severity - 1]
    u_c = _CORRUPTION_FUNCTIONS[name](u, c, gen).clamp(0.0, 1.0)
    return (lo + (hi - lo) * u_c).to(x.dtype)


def _chunk_seed(seed: int, *keys: int) -> int:
    """A seed in [0, 2^63) derived from ``seed`` and integer keys (NumPy SeedSequence)."""
    state = np.random.SeedSequence([seed, *keys]).generate_state(1, np.uint64)[0]
    return int(state) & (2 ** 63 - 1)


def corruption_errors(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    corruptions: Sequence[str] = CORRUPTIONS,
    severities: Sequence[int] = (1, 2, 3, 4, 5),
    batch_size: int = 1000,
    seed: int = 0,
    clip_values: Tuple[float, float] = (0.0, 1.0),
    progress: bool = True,
    offset: int = 0,
) -> Dict[str, Tuple[float, ...]]:
    """Error rates E_{s,c}(f) of ``model`` on x corrupted by each corruption c at each
    severity s: the fraction of inputs with argmax f(corrupt(x, c, s)) != y.

    Returns {c: (E_{s_1,c}, E_{s_2,c}, ...)} in the order of ``severities`` (the input of
    :func:`mce` / :func:`rmce`). Inputs go through the model ``batch_size`` at a time on
    the model's device (eval mode, parameters frozen, both restored). The noise of the
    chunk starting at input i for corruption number k at severity s is drawn with the seed
    derived from (seed, k, s, offset + i): same seed and batch_size, same errors; ``offset``
    is the index of x's first input in a larger set evaluated in parts (a part starting at
    a multiple of batch_size then draws the noise of the whole set's run).
    """
    net = checks.model(model)
    x = checks.images(x, "x", checks.clip_range(clip_values))
    y = checks.labels(y, x.shape[0])
    batch_size = checks.integer(batch_size, "batch_size")
    offset = checks.integer(offset, "offset", 0)
    for name in corruptions:
        _check_name(name, "corruptions")
    severities = [checks.integer(s, "severities", 1, 5) for s in severities]
    if not severities:
        raise ValueError("severities must name at least one severity in 1..5")
    device = model_device(net)
    work = [(k, name, s) for k, name in enumerate(corruptions) for s in severities]
    wrong = torch.zeros(len(work), dtype=torch.long)
    with frozen_eval(net), torch.no_grad():
        for part in progress_bar(list(chunks(x.shape[0], batch_size)), progress, "corruptions"):
            xb, yb = x[part].to(device), y[part].to(device)
            for row, (k, name, s) in enumerate(work):
                xc = corrupt(xb, name, s, _chunk_seed(seed, k, s, offset + part.start), clip_values)
                wrong[row] += (net(xc).argmax(1) != yb).sum().cpu()
    rates = (wrong.double() / x.shape[0]).tolist()
    return {name: tuple(rates[k * len(severities):(k + 1) * len(severities)]) for k, name in enumerate(corruptions)}


def _error_table(errors: Mapping[str, Sequence[float]], name: str, keys=None) -> Dict[str, np.ndarray]:
    """``errors`` as {corruption: float64 array of its per-severity error rates}, checked."""
    if not isinstance(errors, Mapping) or not errors:
        raise TypeError(f"{name} must be a non-empty mapping corruption -> sequence of error rates")
    table = {}
    for c, values in errors.items():
        array = np.asarray(values, dtype=np.float64)
        if array.ndim != 1 or array.size == 0 or not np.isfinite(array).all():
            raise ValueError(f"{name}[{c!r}] must be a non-empty sequence of finite error rates, got {values!r}")
        table[c] = array
    if keys is not None and (set(table) != set(keys) or any(table[c].size != keys[c].size for c in keys)):
        raise ValueError(f"{name} must have the same corruptions and number of severities as errors")
    return table


def _clean_error(value, name: str) -> float:
    """A clean error rate: a finite number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite error rate, got {value!r}")
    return float(value)


def mce(errors: Mapping[str, Sequence[float]], base_errors: Optional[Mapping[str, Sequence[float]]] = None) -> float:
    """Mean corruption error (Hendrycks & Dietterich, ICLR 2019, Sec. 3). Lower is better.

    ``errors``: {corruption c: (E_{1,c}(f), ..., E_{5,c}(f))}, error rates of the model f
    at severities 1..5 (e.g. from :func:`corruption_errors`).

    With a baseline (``base_errors``, same keys and lengths; the paper uses AlexNet):
    CE_c = sum_s E_{s,c}(f) / sum_s E_{s,c}(base); mCE = mean_c CE_c (1 = as the baseline).

    Without a baseline: the unnormalised mCE of the authors' ``ImageNet-C/test.py``,
    mean_c mean_s E_{s,c}(f), in the units of the error rates.
    """
    table = _error_table(errors, "errors")
    if base_errors is None:
        return float(np.mean([e.mean() for e in table.values()]))
    base = _error_table(base_errors, "base_errors", table)
    if any(base[c].sum() == 0 for c in base):
        raise ValueError("base_errors must have a nonzero error sum for every corruption")
    return float(np.mean([table[c].sum() / base[c].sum() for c in table]))


_NO_GAP = 1e-9  # error rates are multiples of 1/N: a smaller baseline gap is rounding, not degradation


def rmce(
    errors: Mapping[str, Sequence[float]],
    clean_error: float,
    base_errors: Optional[Mapping[str, Sequence[float]]] = None,
    base_clean_error: Optional[float] = None,
) -> float:
    """Relative mean corruption error (Hendrycks & Dietterich, ICLR 2019, Sec. 3): the
    degradation from the clean error, relative to a baseline's. Lower is better.

    Relative CE_c = sum_s (E_{s,c}(f) - E_clean(f)) / sum_s (E_{s,c}(base) - E_clean(base));
    relative mCE = mean_c Relative CE_c. The paper typesets the numerator as
    "sum_s E_{s,c} - E_clean"; read with E_clean inside the sum, as here, a model whose
    error does not grow under corruption scores 0 (read outside, it would score
    4 E_clean / ..., which is no degradation measure).

    Without a baseline: mean_c mean_s (E_{s,c}(f) - E_clean(f)), the mean degradation in
    the units of the error rates (the unnormalised counterpart of :func:`mce`).

    A corruption under which the baseline's error does not move (denominator 0, up to the
    rounding of error rates: |gap| <= 1e-9) has no relative CE: it is left out of the
    mean with a RuntimeWarning naming it (a ValueError when that leaves none).
    """
    table = _error_table(errors, "errors")
    clean = _clean_error(clean_error, "clean_error")
    if base_errors is None:
        return float(np.mean([(e - clean).mean() for e in table.values()]))
    base = _error_table(base_errors, "base_errors", table)
    base_clean = _clean_error(base_clean_error, "base_clean_error")
    gaps = {c: (base[c] - base_clean).sum() for c in base}
    flat = sorted(c for c, gap in gaps.items() if abs(gap) <= _NO_GAP)
    if len(flat) == len(gaps):
        raise ValueError("base_errors must differ from base_clean_error in sum for some corruption: the baseline's "
                         "error does not move under any corruption, so no relative CE is defined")
    if flat:
        warnings.warn(f"relative mCE leaves out {', '.join(flat)}: the baseline's error does not move under it "
                      "(relative CE 0/0)", RuntimeWarning, stacklevel=2)
    return float(np.mean([(table[c] - clean).sum() / gaps[c] for c in table if c not in flat]))


@dataclass
class CorruptionScore:
    """A corruption summary and what it is. ``value`` (lower is better); ``name``: "mCE" /
    "relative mCE" when normalised (followed by "over k of 15 benchmark corruptions" when
    not all 15 were run), "mean corruption error (unnormalised)" / "relative mean
    corruption error (unnormalised)" otherwise; ``normalisation``: "baseline model",
    "AlexNet (published)" or "none"; ``corruptions``: the corruptions averaged."""

    value: float
    name: str
    normalisation: str
    corruptions: Tuple[str, ...]


def _alexnet_score(table: Dict[str, np.ndarray], clean: Optional[float]) -> float:
    """mean_c mean_s E_{s,c} / A_c, or with ``clean`` mean_c (mean_s E_{s,c} - clean) / (A_c - A_clean)."""
    if clean is None:
        return float(np.mean([table[c].mean() / ALEXNET_ERRORS[c] for c in table]))
    return float(np.mean([(table[c].mean() - clean) / (ALEXNET_ERRORS[c] - ALEXNET_CLEAN_ERROR) for c in table]))


def corruption_score(
    errors: Mapping[str, Sequence[float]],
    image_shape: Sequence[int],
    *,
    relative: bool = False,
    clean_error: Optional[float] = None,
    base_errors: Optional[Mapping[str, Sequence[float]]] = None,
    base_clean_error: Optional[float] = None,
) -> CorruptionScore:
    """The corruption summary a report should show, named by what it is. Lower is better.

    With a baseline model (``base_errors``, and ``base_clean_error`` when ``relative``):
    :func:`mce` / :func:`rmce` normalised by it. Without one, on inputs of ImageNet size
    (:func:`constants_for` ``image_shape`` is "imagenet") with every corruption run at the
    five severities: normalised by AlexNet's published errors, CE_c = mean_s E_{s,c} /
    A_c (:data:`ALEXNET_ERRORS`; relative: (mean_s E_{s,c} - E_clean) / (A_c - A_clean),
    :data:`ALEXNET_CLEAN_ERROR`). Anywhere else the unnormalised mean, which is not the
    benchmark's mCE and is named "mean corruption error (unnormalised)".
    ``relative`` needs ``clean_error``, the model's clean error rate.
    """
    table = _error_table(errors, "errors")
    if not isinstance(relative, bool):
        raise TypeError(f"relative must be True or False, got {relative!r}")
    clean = _clean_error(clean_error, "clean_error") if relative else None
    names = tuple(table)
    alexnet = (base_errors is None and constants_for(image_shape) == "imagenet"
               and all(c in ALEXNET_ERRORS and table[c].size == 5 for c in table))
    if base_errors is not None:
        value = rmce(errors, clean, base_errors, base_clean_error) if relative else mce(errors, base_errors)
        normalisation = "baseline model"
    elif alexnet:
        value, normalisation = _alexnet_score(table, clean), "AlexNet (published)"
    else:
        value = rmce(errors, clean) if relative else mce(errors)
        kind = "relative mean corruption error" if relative else "mean corruption error"
        return CorruptionScore(value, f"{kind} (unnormalised)", "none", names)
    name = "relative mCE" if relative else "mCE"
    if set(names) != set(BENCHMARK):
        name += f" over {len(names)} of {len(BENCHMARK)} benchmark corruptions"
    return CorruptionScore(value, name, normalisation, names)
