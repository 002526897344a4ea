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
works on 8-bit images, and glass blur and snow's layer, which the published code quantises
in the middle, are quantised).

All 15 benchmark corruptions (:data:`BENCHMARK`) are implemented. Motion blur and snow go
through ImageMagick's MotionBlurImage in the published code; its kernel is reproduced as
defined in ImageMagick's ``effect.c`` and reimplemented by the imagecorruptions package
(Michaelis et al., 2019, github.com/bethgelab/imagecorruptions). Frost blends crops of
the authors' frost photographs, shipped in ``robustx/metrics/frost/`` (Apache-2.0, see
the NOTICE there).
"""
from __future__ import annotations

import functools
import io
import math
import warnings
from dataclasses import dataclass
from importlib import resources
from typing import Callable, Dict, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from robustx import checks
from robustx.modelutil import chunks, frozen_eval, model_device, progress_bar
from robustx.results import Result

__all__ = [
    "BENCHMARK",
    "CORRUPTIONS",
    "EXTRA_CORRUPTIONS",
    "SMALL_INPUT_SIDE",
    "SEVERITY_CONSTANTS",
    "REFERENCE_SIDE",
    "FROST_SCALE",
    "FROST_PICTURES",
    "ALEXNET_ERRORS",
    "ALEXNET_CLEAN_ERROR",
    "corrupt",
    "constants_for",
    "motion_blur_kernel",
    "motion_offsets",
    "motion_blur",
    "affine_warp",
    "displace",
    "linear_resize_matrix",
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

#: Inputs whose larger side is at most this many pixels use the CIFAR-10-C constants
#: (make_cifar_c.py, 32 x 32 images); larger inputs use the ImageNet-C ones (224 x 224).
SMALL_INPUT_SIDE = 64

#: Per constant set ("cifar": make_cifar_c.py, "imagenet": make_imagenet_c.py) and
#: corruption, the constant c of severities 1..5:
#: gaussian_noise std; shot_noise photon count per unit intensity (Poisson rate u c);
#: impulse_noise salt-and-pepper amount (fraction of elements replaced);
#: defocus_blur (disk radius, Gaussian anti-aliasing sigma of the disk);
#: glass_blur (Gaussian sigma, largest pixel displacement, shuffle iterations);
#: motion_blur (ImageMagick radius, sigma); zoom_blur the zoom factors, as
#: numpy.arange(start, stop, step); snow (mean, std of the snow layer's Gaussian draws,
#: its zoom factor, threshold below which it is 0, motion-blur radius, sigma, weight of
#: the image in the whitening blend); frost (weight of the image, weight of the frost);
#: fog (strength of the plasma fractal, its roughness decay);
#: brightness shift of the HSV value; contrast factor on the deviation from the channel
#: mean; elastic_transform (alpha: scale of the displacement, sigma of its Gaussian
#: smoothing, bound of the affine control points' moves), lengths in pixels at
#: :data:`REFERENCE_SIDE`, written as the published code writes them (IMSIZE x fraction,
#: IMSIZE = 32; 244 for ImageNet, where the code notes that 244 "should have been 224");
#: pixelate size factor of the box downsampling; jpeg_compression Pillow quality;
#: gaussian_blur (an extra, not a benchmark corruption) sigma in pixels.
SEVERITY_CONSTANTS: Dict[str, Dict[str, tuple]] = {
    "cifar": {
        "gaussian_noise": (0.04, 0.06, 0.08, 0.09, 0.10),
        "shot_noise": (500, 250, 100, 75, 50),
        "impulse_noise": (0.01, 0.02, 0.03, 0.05, 0.07),
        "defocus_blur": ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)),
        "glass_blur": ((0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)),
        "motion_blur": ((6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)),
        "zoom_blur": ((1, 1.06, 0.01), (1, 1.11, 0.01), (1, 1.16, 0.01), (1, 1.21, 0.01), (1, 1.26, 0.01)),
        "snow": ((0.1, 0.2, 1, 0.6, 8, 3, 0.95), (0.1, 0.2, 1, 0.5, 10, 4, 0.9), (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
                 (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85), (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8)),
        "frost": ((1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)),
        "fog": ((0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)),
        "brightness": (0.05, 0.1, 0.15, 0.2, 0.3),
        "contrast": (0.75, 0.5, 0.4, 0.3, 0.15),
        "elastic_transform": ((32 * 0, 32 * 0, 32 * 0.08), (32 * 0.05, 32 * 0.2, 32 * 0.07),
                              (32 * 0.08, 32 * 0.06, 32 * 0.06), (32 * 0.1, 32 * 0.04, 32 * 0.05),
                              (32 * 0.1, 32 * 0.03, 32 * 0.03)),
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
        "motion_blur": ((10, 3), (15, 5), (15, 8), (15, 12), (20, 15)),
        "zoom_blur": ((1, 1.11, 0.01), (1, 1.16, 0.01), (1, 1.21, 0.02), (1, 1.26, 0.02), (1, 1.31, 0.03)),
        "snow": ((0.1, 0.3, 3, 0.5, 10, 4, 0.8), (0.2, 0.3, 2, 0.5, 12, 4, 0.7), (0.55, 0.3, 4, 0.9, 12, 8, 0.7),
                 (0.55, 0.3, 4.5, 0.85, 12, 8, 0.65), (0.55, 0.3, 2.5, 0.85, 12, 12, 0.55)),
        "frost": ((1, 0.4), (0.8, 0.6), (0.7, 0.7), (0.65, 0.7), (0.6, 0.75)),
        "fog": ((1.5, 2), (2, 2), (2.5, 1.7), (2.5, 1.5), (3, 1.4)),
        "brightness": (0.1, 0.2, 0.3, 0.4, 0.5),
        "contrast": (0.4, 0.3, 0.2, 0.1, 0.05),
        "elastic_transform": ((244 * 2, 244 * 0.7, 244 * 0.1), (244 * 2, 244 * 0.08, 244 * 0.2),
                              (244 * 0.05, 244 * 0.01, 244 * 0.02), (244 * 0.07, 244 * 0.01, 244 * 0.02),
                              (244 * 0.12, 244 * 0.01, 244 * 0.02)),
        "pixelate": (0.6, 0.5, 0.4, 0.3, 0.25),
        "jpeg_compression": (25, 18, 15, 10, 7),
        "gaussian_blur": (1, 2, 3, 4, 6),
    },
}

#: Side (pixels) of the images each constant set was written for. elastic_transform's
#: lengths, which the published code writes as multiples of the image size, are scaled by
#: max(H, W) / this side; every other constant is used as published, at any size (as the
#: authors' 299 px ImageNet-C generator crops the frost photographs unscaled too).
REFERENCE_SIDE: Dict[str, int] = {"cifar": 32, "imagenet": 224}

#: Scale of the frost photographs before cropping: make_cifar_c.py shrinks them with
#: OpenCV ``resize(fx=fy=0.2)``, make_imagenet_c.py crops the originals. Inputs larger than
#: the smallest scaled photograph enlarge them all just enough (:func:`_frost_scale`).
FROST_SCALE: Dict[str, float] = {"cifar": 0.2, "imagenet": 1.0}

#: The photograph of each of the five equally likely draws of the published
#: ``np.random.randint(5)`` (frost1..frost5; frost6 is never drawn, and frost3.png holds
#: frost2.png's pixels), shipped in ``robustx/metrics/frost/``.
FROST_PICTURES: Tuple[str, ...] = ("frost1.png", "frost2.png", "frost2.png", "frost4.jpg", "frost5.jpg")

#: AlexNet's published ImageNet-C error per benchmark corruption (mean over severities
#: 1..5), the normaliser of the benchmark's mCE: Hendrycks & Dietterich (2019), as
#: transcribed in google-research/augmix ``imagenet.py`` (ALEXNET_ERR, "Raw AlexNet errors
#: taken from https://github.com/hendrycks/robustness").
ALEXNET_ERRORS: Dict[str, float] = {
    "gaussian_noise": 0.886428, "shot_noise": 0.894468, "impulse_noise": 0.922640,
    "defocus_blur": 0.819880, "glass_blur": 0.826268, "motion_blur": 0.785948, "zoom_blur": 0.798360,
    "snow": 0.866816, "frost": 0.826572, "fog": 0.819324, "brightness": 0.564592,
    "contrast": 0.853204, "elastic_transform": 0.646056, "pixelate": 0.717840, "jpeg_compression": 0.606500,
}
#: AlexNet's clean ImageNet top-1 error (torchvision's pretrained AlexNet, the model of
#: Hendrycks' ``test.py``: 56.522 % top-1 accuracy), the normaliser of the relative mCE.
ALEXNET_CLEAN_ERROR = 0.43478

#: The corruptions :func:`corruption_errors` runs by default: all of :data:`BENCHMARK`.
CORRUPTIONS: Tuple[str, ...] = BENCHMARK
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


def _gaussian_weights(sigma: float, truncate: float, dtype, device) -> torch.Tensor:
    """SciPy's ``gaussian_filter1d`` kernel: exp(-k^2 / 2 sigma^2) for k = -r..r,
    r = int(truncate sigma + 0.5), normalised to sum 1."""
    radius = int(truncate * sigma + 0.5)
    k = torch.arange(-radius, radius + 1, device=device, dtype=dtype)
    kernel = torch.exp(-0.5 * (k / sigma) ** 2)
    return kernel / kernel.sum()


def _gaussian_blur(u: torch.Tensor, c: float, gen: torch.Generator) -> torch.Tensor:
    """scikit-image ``gaussian(sigma=c)`` per channel: separable kernel exp(-k^2 / 2 c^2),
    normalised, radius int(4 c + 0.5) (truncate = 4), edges extended ('nearest')."""
    kernel = _gaussian_weights(c, 4.0, u.dtype, u.device)
    radius = kernel.numel() // 2
    channels = u.shape[1]
    padded = F.pad(u, (radius, radius, radius, radius), mode="replicate")
    rows = F.conv2d(padded, kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
    return F.conv2d(rows, kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)


def _mirror(i: torch.Tensor, n: int) -> torch.Tensor:
    """Integer indices folded into 0..n-1 by reflection about the edge pixels, which are
    not repeated (OpenCV BORDER_REFLECT_101, SciPy "mirror", NumPy pad "reflect")."""
    if n == 1:
        return torch.zeros_like(i)
    period = 2 * (n - 1)
    i = torch.remainder(i, period)
    return torch.where(i > n - 1, period - i, i)


def _symmetric(i: torch.Tensor, n: int) -> torch.Tensor:
    """Integer indices folded into 0..n-1 by reflection about the outer edges of the edge
    pixels, which are repeated (SciPy "reflect", OpenCV BORDER_REFLECT)."""
    i = torch.remainder(i, 2 * n)
    return torch.where(i > n - 1, 2 * n - 1 - i, i)


def _reflect_index(n: int, pad: int, device) -> torch.Tensor:
    """Indices of a length-n axis padded by ``pad`` on both sides by :func:`_mirror`, for any pad."""
    return _mirror(torch.arange(-pad, n + pad, device=device), n)


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


def motion_blur_kernel(radius: float, sigma: float) -> torch.Tensor:
    """ImageMagick's MotionBlurImage weights: w_i = exp(-i^2 / 2 sigma^2) / sum_j exp(-j^2 /
    2 sigma^2) for the taps i = 0 .. 2 ceil(radius) (GetOptimalKernelWidth1D: width
    2 ceil(radius) + 1, a one-sided Gaussian: the pixel itself weighs most). Float64."""
    i = torch.arange(2 * math.ceil(radius) + 1, dtype=torch.float64)
    kernel = torch.exp(-i ** 2 / (2.0 * sigma ** 2))
    return kernel / kernel.sum()


def motion_offsets(width: int, angle: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """ImageMagick's tap offsets for blur angles ``angle`` (N,) in degrees: (rows, cols),
    each (N, width) int64; tap i reads the pixel ceil(i p_y / |p| - 0.5) rows below and
    ceil(i p_x / |p| - 0.5) columns right of the output pixel, p = width (sin, cos)(angle)
    (rows: p_y = width sin, columns: p_x = width cos)."""
    theta = torch.deg2rad(angle.to(torch.float64))[:, None]
    i = torch.arange(width, dtype=torch.float64, device=angle.device)
    p_y, p_x = width * torch.sin(theta), width * torch.cos(theta)
    norm = torch.hypot(p_y, p_x)
    return torch.ceil(i * p_y / norm - 0.5).long(), torch.ceil(i * p_x / norm - 0.5).long()


def motion_blur(u: torch.Tensor, radius: float, sigma: float, angle: torch.Tensor) -> torch.Tensor:
    """ImageMagick's MotionBlurImage of each image of u (N, C, H, W) at its ``angle`` (N,
    degrees): out(y, x) = sum_i w_i u(clamp(y + r_i), clamp(x + c_i)), w
    :func:`motion_blur_kernel`, (r, c) :func:`motion_offsets`; pixels beyond the border
    repeat the edge pixel (ImageMagick's default virtual pixels; imagecorruptions' shift).
    imagecorruptions drops the taps from the first one whose offset reaches the image's
    size on, which never happens at the published sizes (widths 13..41 on 32 and 224 px)."""
    n, channels, h, w = u.shape
    kernel = motion_blur_kernel(radius, sigma).to(device=u.device, dtype=u.dtype)
    rows, cols = motion_offsets(kernel.numel(), angle.to(u.device))
    y = torch.arange(h, device=u.device)
    x = torch.arange(w, device=u.device)
    out = torch.zeros_like(u)
    for i in range(kernel.numel()):
        at_rows = (y + rows[:, i:i + 1]).clamp(0, h - 1)[:, None, :, None].expand(n, channels, h, w)
        at_cols = (x + cols[:, i:i + 1]).clamp(0, w - 1)[:, None, None, :].expand(n, channels, h, w)
        out += kernel[i] * u.gather(2, at_rows).gather(3, at_cols)
    return out


def _motion_blur(u: torch.Tensor, c: Tuple[float, float], gen: torch.Generator) -> torch.Tensor:
    """:func:`motion_blur` with (radius, sigma) = c at an angle uniform in [-45, 45) degrees per image."""
    angle = torch.rand(u.shape[0], generator=gen, device=u.device, dtype=torch.float64) * 90.0 - 45.0
    return motion_blur(u, *c, angle)


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


def _snow(u: torch.Tensor, c: tuple, gen: torch.Generator) -> torch.Tensor:
    """c = (m, s, z, t, radius, sigma, b): a snow layer L ~ N(m, s^2) per pixel (one per
    image, shared by the channels), zoomed about its centre by z as zoom_blur's
    clipped_zoom, set to 0 where below t, clipped to [0, 1] and truncated to 8 bits;
    :func:`motion_blur` (radius, sigma) at an angle uniform in [-135, -45) degrees, rounded
    to 8 bits (the published code blurs the 8-bit PNG with ImageMagick). Output
    b u + (1 - b) max(u, 1.5 g + 0.5) + L + L rotated by 180 degrees, g = 0.299 R + 0.587 G
    + 0.114 B (OpenCV RGB2GRAY; u itself for one channel)."""
    n, channels, h, w = u.shape
    if channels not in (1, 3):
        raise ValueError(f"snow needs 1 (grey) or 3 (RGB) channels, got {channels}")
    mean, std, zoom, threshold, radius, sigma, blend = c
    layer = mean + std * torch.randn((n, 1, h, w), generator=gen, device=u.device, dtype=u.dtype)
    layer = _zoom_matrix(h, zoom, u.dtype, u.device) @ layer @ _zoom_matrix(w, zoom, u.dtype, u.device).T
    layer = torch.floor(torch.where(layer < threshold, 0.0, layer).clamp(0.0, 1.0) * 255.0)
    angle = torch.rand(n, generator=gen, device=u.device, dtype=torch.float64) * 90.0 - 135.0
    layer = torch.round(motion_blur(layer, radius, sigma, angle)) / 255.0
    grey = u if channels == 1 else 0.299 * u[:, :1] + 0.587 * u[:, 1:2] + 0.114 * u[:, 2:]
    whitened = blend * u + (1.0 - blend) * torch.maximum(u, grey * 1.5 + 0.5)
    return whitened + layer + layer.flip(2, 3)


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


def linear_resize_matrix(n_in: int, factor: float, dtype=torch.float64, device=None) -> torch.Tensor:
    """(round(n_in factor), n_in) weights of OpenCV's ``resize(fx=factor,
    interpolation=INTER_LINEAR)`` along one axis: output pixel i samples the input at
    s = (i + 0.5) / factor - 0.5, clamped to [0, n_in - 1], linearly between floor(s) and
    floor(s) + 1 (no anti-aliasing). At factor 0.2, s = 5 i + 2: make_cifar_c.py's
    shrinking of the frost photographs keeps every fifth pixel. (OpenCV rounds 8-bit
    results and its weights to 11 bits; exact here, and equal where s is an integer.)"""
    n_out = round(n_in * factor)
    pos = ((torch.arange(n_out, dtype=torch.float64) + 0.5) / factor - 0.5).clamp(0, n_in - 1)
    left = pos.floor()
    frac = pos - left
    m = torch.zeros(n_out, n_in, dtype=torch.float64)
    rows = torch.arange(n_out)
    m.index_put_((rows, left.long()), 1.0 - frac, accumulate=True)
    m.index_put_((rows, (left.long() + 1).clamp(max=n_in - 1)), frac, accumulate=True)
    return m.to(dtype=dtype, device=device)


@functools.lru_cache(maxsize=None)
def _frost_photograph(name: str) -> torch.Tensor:
    """A shipped frost photograph as uint8 (3, h, w) RGB (alpha dropped, as ``cv2.imread`` does)."""
    with resources.files(__package__).joinpath("frost", name).open("rb") as f:
        rgb = np.asarray(Image.open(f).convert("RGB"))
    return torch.from_numpy(rgb.copy()).permute(2, 0, 1)


@functools.lru_cache(maxsize=16)
def _frost_texture(name: str, scale: float) -> torch.Tensor:
    """The photograph ``name`` resized by ``scale`` (:func:`linear_resize_matrix`), float32 (3, h', w') in [0, 255]."""
    picture = _frost_photograph(name).to(torch.float64)
    rows = linear_resize_matrix(picture.shape[1], scale)
    cols = linear_resize_matrix(picture.shape[2], scale)
    return (rows @ picture @ cols.T).float()


def _frost_scale(constants: str, h: int, w: int) -> float:
    """:data:`FROST_SCALE` of the constant set, or the smallest scale at which every
    photograph exceeds an H x W image in both sides (the crop needs a free position)."""
    sizes = [_frost_photograph(name).shape[1:] for name in FROST_PICTURES]
    return max(FROST_SCALE[constants], (h + 1) / min(s[0] for s in sizes), (w + 1) / min(s[1] for s in sizes))


def _frost(u: torch.Tensor, c: Tuple[float, float, float], gen: torch.Generator) -> torch.Tensor:
    """c = (a, b, scale): a u + b F / 255, F an H x W crop of one of the photographs
    :data:`FROST_PICTURES` (each with probability 1/5) resized by ``scale``, at a uniform
    position (top uniform in 0..h' - H - 1, left in 0..w' - W - 1, as the published
    ``np.random.randint(0, h' - H)``). One channel: F = 0.2989 R + 0.5870 G + 0.1140 B
    (imagecorruptions' rgb2gray)."""
    n, channels, h, w = u.shape
    if channels not in (1, 3):
        raise ValueError(f"frost needs 1 (grey) or 3 (RGB) channels, got {channels}")
    a, b, scale = c
    which = torch.randint(len(FROST_PICTURES), (n,), generator=gen, device=u.device).cpu()
    corner = torch.rand((n, 2), generator=gen, device=u.device, dtype=torch.float64).cpu()
    frost = torch.empty(n, 3, h, w, dtype=u.dtype, device=u.device)
    for k, name in enumerate(FROST_PICTURES):
        picked = (which == k).nonzero()[:, 0]
        if picked.numel() == 0:
            continue
        texture = _frost_texture(name, scale)
        top = (corner[picked, 0] * (texture.shape[1] - h)).long()
        left = (corner[picked, 1] * (texture.shape[2] - w)).long()
        rows = (top[:, None] + torch.arange(h))[:, :, None]
        cols = (left[:, None] + torch.arange(w))[:, None, :]
        frost[picked.to(u.device)] = texture[:, rows, cols].transpose(0, 1).to(u.device, u.dtype)
    if channels == 1:
        frost = 0.2989 * frost[:, :1] + 0.5870 * frost[:, 1:2] + 0.1140 * frost[:, 2:]
    return a * u + b * frost / 255.0


def _bilinear(u: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, fold) -> torch.Tensor:
    """u (N, C, H, W) sampled at (rows, cols) (N, H, W), linearly between the four
    neighbouring pixels, indices outside the image folded back by ``fold`` (:func:`_mirror`
    or :func:`_symmetric`)."""
    n, channels, h, w = u.shape
    top, left = rows.floor(), cols.floor()
    fy = (rows - top).to(u.dtype)[:, None]
    fx = (cols - left).to(u.dtype)[:, None]
    top, left = top.long(), left.long()
    flat = u.reshape(n, channels, h * w)

    def at(r: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        index = (fold(r, h) * w + fold(c, w)).reshape(n, 1, h * w).expand(n, channels, h * w)
        return flat.gather(2, index).reshape(n, channels, h, w)

    return ((1 - fy) * ((1 - fx) * at(top, left) + fx * at(top, left + 1))
            + fy * ((1 - fx) * at(top + 1, left) + fx * at(top + 1, left + 1)))


def affine_warp(u: torch.Tensor, src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """OpenCV ``warpAffine(u, getAffineTransform(src, dst), (W, H),
    borderMode=BORDER_REFLECT_101)`` per image: the affine map M taking the three points
    ``src`` (3, 2) to ``dst`` (N, 3, 2), points as (x, y) = (column, row); output pixel
    (x, y) is u at M^-1 (x, y), bilinear, taps outside folded by :func:`_mirror`. (OpenCV
    rounds the sampling positions to 1/32 pixel; exact here.)"""
    n, _, h, w = u.shape
    ones = torch.ones(n, 3, 1, dtype=torch.float64, device=u.device)
    inverse = torch.linalg.solve(torch.cat([dst.to(torch.float64), ones], 2),
                                 src.to(torch.float64).expand(n, 3, 2))  # [x y 1] @ inverse = M^-1 (x, y)
    y = torch.arange(h, dtype=torch.float64, device=u.device)[None, :, None]
    x = torch.arange(w, dtype=torch.float64, device=u.device)[None, None, :]
    m = inverse[:, :, None, None, :]
    cols = m[:, 0, ..., 0] * x + m[:, 1, ..., 0] * y + m[:, 2, ..., 0]
    rows = m[:, 0, ..., 1] * x + m[:, 1, ..., 1] * y + m[:, 2, ..., 1]
    return _bilinear(u, rows, cols, _mirror)


def displace(u: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
    """SciPy ``map_coordinates(u, (y + dy, x + dx), order=1, mode='reflect')`` per channel:
    output pixel (y, x) is u at row y + dy, column x + dx (dy, dx (N, H, W)), bilinear,
    taps outside folded by :func:`_symmetric`."""
    h, w = u.shape[-2:]
    y = torch.arange(h, dtype=dy.dtype, device=u.device)[None, :, None]
    x = torch.arange(w, dtype=dx.dtype, device=u.device)[None, None, :]
    return _bilinear(u, y + dy, x + dx, _symmetric)


def _smoothing_matrix(n: int, sigma: float, dtype, device) -> torch.Tensor:
    """(n, n) linear map of SciPy's ``gaussian_filter1d(sigma, mode='reflect',
    truncate=3)`` (:func:`_gaussian_weights`, taps folded by :func:`_symmetric`); the
    identity for sigma = 0, as SciPy skips such an axis."""
    if sigma <= 1e-15:
        return torch.eye(n, dtype=dtype, device=device)
    kernel = _gaussian_weights(sigma, 3.0, torch.float64, None)
    radius = kernel.numel() // 2
    taps = torch.arange(-radius, radius + 1)
    rows = torch.arange(n)[:, None].expand(n, taps.numel())
    m = torch.zeros(n, n, dtype=torch.float64)
    m.index_put_((rows, _symmetric(rows + taps, n)), kernel.expand(n, -1), accumulate=True)
    return m.to(dtype=dtype, device=device)


def _elastic_transform(u: torch.Tensor, c: Tuple[float, float, float], gen: torch.Generator) -> torch.Tensor:
    """c = (alpha, sigma, bound) in pixels: :func:`affine_warp` moving the control points
    (x, y) = (H//2 + s, W//2 + s), (H//2 + s, W//2 - s), (H//2 - s, W//2 - s), s = min(H,
    W) // 3 (as published: the (row, column) centre read as (x, y)), each coordinate by a
    uniform draw in [-bound, bound); then :func:`displace` by dy, dx = alpha G(U), U
    uniform in [-1, 1) per pixel, G SciPy's gaussian_filter (sigma, mode 'reflect',
    truncate 3); one draw of each per image, shared by the channels."""
    n, _, h, w = u.shape
    alpha, sigma, bound = c
    s = min(h, w) // 3
    src = torch.tensor([[h // 2 + s, w // 2 + s], [h // 2 + s, w // 2 - s], [h // 2 - s, w // 2 - s]],
                       dtype=torch.float64, device=u.device)
    moves = torch.rand((n, 3, 2), generator=gen, device=u.device, dtype=torch.float64) * 2.0 - 1.0
    warped = affine_warp(u, src, src + bound * moves)
    rows, cols = _smoothing_matrix(h, sigma, u.dtype, u.device), _smoothing_matrix(w, sigma, u.dtype, u.device)

    def field() -> torch.Tensor:
        noise = torch.rand((n, h, w), generator=gen, device=u.device, dtype=u.dtype) * 2.0 - 1.0
        return alpha * (rows @ noise @ cols.T)

    dx = field()
    dy = field()
    return displace(warped, dy, dx)


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
    """Pillow JPEG at quality c (default 4:2:0 chroma subsampling) of the 8-bit image
    round(255 u), decoded and divided by 255. One Pillow encode/decode per image (the
    codec has no batched form)."""
    channels = u.shape[1]
    if channels not in (1, 3):
        raise ValueError(f"jpeg_compression needs 1 (grey) or 3 (RGB) channels, got {channels}")
    pixels = (u * 255.0).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    mode = "L" if channels == 1 else "RGB"

    def roundtrip(image: np.ndarray) -> np.ndarray:
        buffer = io.BytesIO()
        Image.fromarray(image.squeeze(-1) if channels == 1 else image, mode).save(buffer, "JPEG", quality=int(c))
        return np.asarray(Image.open(buffer)).reshape(image.shape)

    decoded = np.stack([roundtrip(image) for image in pixels])
    return torch.from_numpy(decoded).to(u.device, u.dtype).permute(0, 3, 1, 2) / 255.0


_CORRUPTION_FUNCTIONS: Dict[str, Callable[[torch.Tensor, object, torch.Generator], torch.Tensor]] = {
    "gaussian_noise": _gaussian_noise,
    "shot_noise": _shot_noise,
    "impulse_noise": _impulse_noise,
    "defocus_blur": _defocus_blur,
    "glass_blur": _glass_blur,
    "motion_blur": _motion_blur,
    "zoom_blur": _zoom_blur,
    "snow": _snow,
    "frost": _frost,
    "fog": _fog,
    "brightness": _brightness,
    "contrast": _contrast,
    "elastic_transform": _elastic_transform,
    "pixelate": _pixelate,
    "jpeg_compression": _jpeg,
    "gaussian_blur": _gaussian_blur,
}


def constants_for(shape: Sequence[int]) -> str:
    """The constant set for inputs of ``shape`` (..., H, W): "cifar" when max(H, W) <=
    :data:`SMALL_INPUT_SIDE`, else "imagenet"."""
    return "cifar" if max(shape[-2:]) <= SMALL_INPUT_SIDE else "imagenet"


def _at_size(name: str, c, constants: str, h: int, w: int):
    """The constants c of ``name`` for H x W inputs: elastic_transform's lengths times
    max(H, W) / :data:`REFERENCE_SIDE`; frost's with the scale of its photographs
    appended (:func:`_frost_scale`); the others as published."""
    if name == "elastic_transform":
        return tuple(v * max(h, w) / REFERENCE_SIDE[constants] for v in c)
    if name == "frost":
        return (*c, _frost_scale(constants, h, w))
    return c


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
    (CIFAR-10-C's for sides <= 64 px, ImageNet-C's above), for 32 px and 224 px images.
    At other sizes they are used as published except where the published code ties them
    to the image size: elastic_transform's lengths scale with max(H, W) / 32 or / 224
    (:data:`REFERENCE_SIDE`), and the frost photographs are enlarged when an image is
    larger than one of them (:data:`FROST_SCALE`). Corruptions:

    - gaussian_noise: u + c z, z ~ N(0, 1) per element;
    - shot_noise: Poisson(c u) / c;
    - impulse_noise: each element set to 0 or 1 (equally likely) with probability c;
    - defocus_blur: OpenCV filter2D with the anti-aliased disk :func:`defocus_disk`;
    - glass_blur: blur, 8-bit truncation, local pixel shuffling, blur (:func:`_glass_blur`);
    - motion_blur: ImageMagick's motion blur (:func:`motion_blur`) at a uniform angle in [-45, 45);
    - zoom_blur: mean of u and its centre zooms by each factor (scipy zoom, order 1);
    - snow: a zoomed, thresholded, motion-blurred Gaussian snow layer added twice (once
      rotated by 180 degrees) to the whitened image (:func:`_snow`; 1 or 3 channels);
    - frost: a u + b F, F a random crop of a frost photograph (:func:`_frost`; 1 or 3 channels);
    - fog: a plasma fractal added, rescaled by the image's maximum (:func:`plasma_fractal`);
    - brightness: HSV value + c (clipped to 1), hue and saturation kept (1 or 3 channels);
    - contrast: (u - m) c + m, m = per-image channel mean;
    - elastic_transform: a random affine warp, then a smoothed random displacement field
      (:func:`_elastic_transform`);
    - pixelate: Pillow BOX resize to int(c H) x int(c W) and back (float, not 8-bit);
    - jpeg_compression: Pillow JPEG at quality c of round(255 u) (1 or 3 channels);
    - gaussian_blur (extra): Gaussian filter, sigma c, truncated at 4 sigma, nearest edges.

    Random draws (noises, glass shuffling, angles, crops, fields) come from a ``torch.Generator`` seeded
    with ``seed`` on x's device: same seed, same result; they are not the published
    code's NumPy draws, so random corruptions agree with it in distribution only.
    Computed in float32 (float64 for float64 input).
    """
    lo, hi = checks.clip_range(clip_values)
    x = checks.images(x, "x", (lo, hi))
    if x.dim() != 4:
        raise ValueError(f"x must have shape (N, C, H, W), got {tuple(x.shape)}")
    checks.choice(name, "name", CORRUPTIONS + EXTRA_CORRUPTIONS)
    severity = checks.integer(severity, "severity", 1, 5)
    constants = constants_for(x.shape) if constants is None else constants
    if constants not in SEVERITY_CONSTANTS:
        raise ValueError(f"constants must be one of {', '.join(SEVERITY_CONSTANTS)} or None, got {constants!r}")
    gen = torch.Generator(device=x.device).manual_seed(checks.seed(seed))
    work = torch.promote_types(x.dtype, torch.float32)
    u = (x.to(work) - lo) / (hi - lo)
    c = _at_size(name, SEVERITY_CONSTANTS[constants][name][severity - 1], constants, *x.shape[-2:])
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
        checks.choice(name, "corruptions", CORRUPTIONS + EXTRA_CORRUPTIONS)
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
class CorruptionScore(Result):
    """A corruption summary and what it is. ``value`` (lower is better; ``per_sample`` is
    None: the score summarises error rates over the set); ``name``: "mCE" /
    "relative mCE" when normalised (followed by "over k of 15 benchmark corruptions" when
    not all 15 were run), "mean corruption error (unnormalised)" / "relative mean
    corruption error (unnormalised)" otherwise; ``normalisation``: "baseline model",
    "AlexNet (published)" or "none"; ``corruptions``: the corruptions averaged."""

    value: float
    name: str
    normalisation: str
    corruptions: Tuple[str, ...]
    per_sample = None


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
