"""Common corruptions (CIFAR-10-C) and the corruption errors mCE and relative mCE.

Hendrycks & Dietterich, "Benchmarking Neural Network Robustness to Common Corruptions and
Perturbations", ICLR 2019. The severity constants are those of the authors' CIFAR-10-C
generator, ``ImageNet-C/create_c/make_cifar_c.py`` in github.com/hendrycks/robustness
(the formulas and constants carry over; the code here is written anew in torch).

Every corruption works on a batch (N, C, H, W) in the data domain ``clip_values=(lo, hi)``:
the batch is mapped to [0, 1] (the published code's domain), corrupted, clipped to [0, 1]
as the published code does, and mapped back. The published images are then stored as
8-bit (``np.uint8``, truncating); here the output stays floating (only JPEG, whose codec
works on 8-bit images, is quantised: round(255 u)).
"""
from __future__ import annotations

import io
import math
from typing import Callable, Dict, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from robustx import checks
from robustx.modelutil import chunks, frozen_eval, model_device, progress_bar

__all__ = [
    "CORRUPTIONS",
    "SEVERITY_CONSTANTS",
    "corrupt",
    "rgb_to_hsv",
    "hsv_to_rgb",
    "box_resize_matrix",
    "corruption_errors",
    "mce",
    "rmce",
]

#: Per corruption, the constant c of severities 1..5 in make_cifar_c.py:
#: gaussian_noise std; shot_noise photon count per unit intensity (Poisson rate u c);
#: impulse_noise salt-and-pepper amount (fraction of elements replaced);
#: gaussian_blur sigma in pixels; contrast factor on the deviation from the channel mean;
#: brightness shift of the HSV value; pixelate size factor of the box downsampling;
#: jpeg_compression Pillow quality.
SEVERITY_CONSTANTS: Dict[str, Tuple[float, ...]] = {
    "gaussian_noise": (0.04, 0.06, 0.08, 0.09, 0.10),
    "shot_noise": (500, 250, 100, 75, 50),
    "impulse_noise": (0.01, 0.02, 0.03, 0.05, 0.07),
    "gaussian_blur": (0.4, 0.6, 0.7, 0.8, 1.0),
    "contrast": (0.75, 0.5, 0.4, 0.3, 0.15),
    "brightness": (0.05, 0.1, 0.15, 0.2, 0.3),
    "pixelate": (0.95, 0.9, 0.85, 0.75, 0.65),
    "jpeg_compression": (80, 65, 58, 50, 40),
}

#: The corruption names, in the order of the published generator.
CORRUPTIONS: Tuple[str, ...] = tuple(SEVERITY_CONSTANTS)


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


_CORRUPTION_FUNCTIONS: Dict[str, Callable[[torch.Tensor, float, torch.Generator], torch.Tensor]] = {
    "gaussian_noise": _gaussian_noise,
    "shot_noise": _shot_noise,
    "impulse_noise": _impulse_noise,
    "gaussian_blur": _gaussian_blur,
    "contrast": _contrast,
    "brightness": _brightness,
    "pixelate": _pixelate,
    "jpeg_compression": _jpeg,
}


def corrupt(
    x: torch.Tensor,
    name: str,
    severity: int,
    seed: int = 0,
    clip_values: Tuple[float, float] = (0.0, 1.0),
) -> torch.Tensor:
    """The CIFAR-10-C corruption ``name`` at ``severity`` (1..5) of a batch x (N, C, H, W).

    u = (x - lo) / (hi - lo); u_c = clip(corruption(u; c_severity), 0, 1);
    returns lo + (hi - lo) u_c in x's dtype. Corruptions (constants c in
    :data:`SEVERITY_CONSTANTS`, from Hendrycks & Dietterich's ``make_cifar_c.py``):

    - gaussian_noise: u + c z, z ~ N(0, 1) per element;
    - shot_noise: Poisson(c u) / c;
    - impulse_noise: each element set to 0 or 1 (equally likely) with probability c;
    - gaussian_blur: Gaussian filter, sigma c, truncated at 4 sigma, nearest-edge padding;
    - contrast: (u - m) c + m, m = per-image channel mean;
    - brightness: HSV value + c (clipped to 1), hue and saturation kept (1 or 3 channels);
    - pixelate: Pillow BOX resize to int(c H) x int(c W) and back (float, not 8-bit);
    - jpeg_compression: Pillow JPEG at quality c of round(255 u) (1 or 3 channels).

    The noises draw from a ``torch.Generator`` seeded with ``seed`` on x's device: same
    seed, same result. Computed in float32 (float64 for float64 input).
    """
    lo, hi = checks.clip_range(clip_values)
    x = checks.images(x, "x", (lo, hi))
    if x.dim() != 4:
        raise ValueError(f"x must have shape (N, C, H, W), got {tuple(x.shape)}")
    if name not in _CORRUPTION_FUNCTIONS:
        raise ValueError(f"name must be one of {', '.join(CORRUPTIONS)}, got {name!r}")
    severity = checks.integer(severity, "severity", 1, 5)
    gen = torch.Generator(device=x.device).manual_seed(checks.seed(seed))
    work = torch.promote_types(x.dtype, torch.float32)
    u = (x.to(work) - lo) / (hi - lo)
    u_c = _CORRUPTION_FUNCTIONS[name](u, SEVERITY_CONSTANTS[name][severity - 1], gen).clamp(0.0, 1.0)
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
        if name not in _CORRUPTION_FUNCTIONS:
            raise ValueError(f"corruptions must hold names from {', '.join(CORRUPTIONS)}, got {name!r}")
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
    """
    table = _error_table(errors, "errors")
    clean = _clean_error(clean_error, "clean_error")
    if base_errors is None:
        return float(np.mean([(e - clean).mean() for e in table.values()]))
    base = _error_table(base_errors, "base_errors", table)
    base_clean = _clean_error(base_clean_error, "base_clean_error")
    gaps = {c: (base[c] - base_clean).sum() for c in base}
    if any(gap == 0 for gap in gaps.values()):
        raise ValueError("base_errors must differ from base_clean_error in sum for every corruption")
    return float(np.mean([(table[c] - clean).sum() / gaps[c] for c in table]))
