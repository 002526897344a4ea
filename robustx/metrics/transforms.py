"""The 8-bit image transforms behind RGB and RIC, batched in torch.

Data in ``clip_values`` = (lo, hi) is quantised to the 8-bit image a viewer would save,
q = round(255 (x - lo) / (hi - lo)) (torch rounding: halves to even), transformed, and
mapped back to data units, lo + q (hi - lo) / 255. Images are (N, C, H, W).

* :func:`gaussian_blur_8bit` reproduces Pillow's ``ImageFilter.GaussianBlur`` exactly
  (same 8-bit output): Pillow approximates the Gaussian of standard deviation sigma by
  three passes of an *extended* box blur (Gwosdek et al., SSVM 2011) along the rows, then
  three along the columns, each pass in 24-bit fixed point and rounded to 8 bits, with
  edge pixels repeated beyond the border.
* :func:`jpeg_8bit` encodes and decodes each image with Pillow's JPEG codec.
"""
from __future__ import annotations

import io
from typing import Tuple

import numpy as np
import torch
import torch.nn.functional as F

from robustx.checks import clip_range, images, integer, positive_float

__all__ = ["to_8bit", "from_8bit", "gaussian_blur_8bit", "jpeg_8bit", "BLUR_PASSES"]

#: Box-blur passes per direction in Pillow's Gaussian blur.
BLUR_PASSES = 3
_FIXED_ONE = 1 << 24  # Pillow's fixed-point unit for box weights


def to_8bit(x: torch.Tensor, clip_values=(0.0, 1.0)) -> torch.Tensor:
    """uint8 levels round(255 (x - lo) / (hi - lo)) of data ``x`` inside ``clip_values``."""
    lo, hi = clip_range(clip_values)
    images(x, "x", (lo, hi))
    return torch.round((x.double() - lo) * (255.0 / (hi - lo))).clamp_(0, 255).to(torch.uint8)


def from_8bit(q: torch.Tensor, clip_values=(0.0, 1.0), dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Data values lo + q (hi - lo) / 255 of 8-bit levels ``q``, as ``dtype``."""
    lo, hi = clip_range(clip_values)
    return (lo + q.double() * ((hi - lo) / 255.0)).to(dtype)


def _extended_box(sigma: float) -> Tuple[int, int, int]:
    """Pillow's extended box for one of ``BLUR_PASSES`` passes approximating a Gaussian of
    standard deviation ``sigma``: (integer radius r, centre weight w, far weight f) in
    units of 2^-24, computed in float32 as Pillow does.

    Box length L = sqrt(12 sigma^2 / passes + 1), r = floor((L - 1) / 2), fractional
    radius a = (2r + 1)(r(r + 1) - 3 s2) / (6 (s2 - (r + 1)^2)), s2 = sigma^2 / passes;
    each of the 2r + 1 inner taps weighs w = floor(2^24 / (2 (r + a) + 1)) and each of the
    two outer taps f = floor((2^24 - (2r + 1) w) / 2).
    """
    f32 = np.float32
    s2 = f32(sigma) * f32(sigma) / f32(BLUR_PASSES)
    length = f32(np.sqrt(12.0 * np.float64(s2) + 1.0))
    r = f32(np.floor((np.float64(length) - 1.0) / 2.0))
    a = (f32(2) * r + f32(1)) * (r * (r + f32(1)) - f32(3) * s2)
    a = a / (f32(6) * (s2 - (r + f32(1)) * (r + f32(1))))
    radius = f32(r + a)
    w = int(f32(_FIXED_ONE) / (radius * f32(2) + f32(1)))
    f = (_FIXED_ONE - (2 * int(radius) + 1) * w) // 2
    return int(radius), w, f


def _box_pass(q: torch.Tensor, r: int, w: int, f: int) -> torch.Tensor:
    """One extended-box pass along the last axis of 8-bit levels ``q`` (float64, N C H W):
    out_x = floor((w sum_{|k| <= r} q_{x+k} + f (q_{x-r-1} + q_{x+r+1}) + 2^23) / 2^24),
    indices clamped to the row (edge pixels repeated). Every intermediate is a multiple of
    2^-24 below 2^9 (33 significant bits), so float64 holds Pillow's 32-bit integer
    arithmetic exactly."""
    width = q.shape[-1]
    padded = F.pad(q, (r + 1, r + 1, 0, 0), mode="replicate")
    inner = padded[..., 1: 1 + width].clone()
    for k in range(2, 2 * r + 2):
        inner += padded[..., k: k + width]
    far = padded[..., :width] + padded[..., 2 * r + 2:]
    # (inner w + far f + 2^23) / 2^24 with the exact power-of-two scalings folded in
    return inner.mul_(w / _FIXED_ONE).add_(far, alpha=f / _FIXED_ONE).add_(0.5).floor_()


def gaussian_blur_8bit(x: torch.Tensor, sigma: float = 0.5, clip_values=(0.0, 1.0)) -> torch.Tensor:
    """x blurred as Pillow's ``ImageFilter.GaussianBlur(sigma)`` blurs its 8-bit image.

    The 8-bit levels of ``x`` (see the module docstring) get ``BLUR_PASSES`` passes of
    Pillow's extended box blur (see :func:`_extended_box`) along the width, then as many
    along the height, each rounded to 8 bits; every channel is blurred on its own. The
    result equals Pillow's level for level (tests compare whole images) and comes back in
    data units with the dtype of ``x``. ``sigma`` is the Gaussian's standard deviation in
    pixels (Pillow's ``radius``).
    """
    sigma = positive_float(sigma, "sigma")
    q = to_8bit(x, clip_values).double()
    if q.dim() != 4:
        raise ValueError(f"x must have shape (N, C, H, W), got {tuple(x.shape)}")
    r, w, f = _extended_box(sigma)
    for _ in range(BLUR_PASSES):
        q = _box_pass(q, r, w, f)
    q = q.transpose(-1, -2).contiguous()
    for _ in range(BLUR_PASSES):
        q = _box_pass(q, r, w, f)
    return from_8bit(q.transpose(-1, -2), clip_values, x.dtype)


def jpeg_8bit(x: torch.Tensor, quality: int = 90, clip_values=(0.0, 1.0)) -> torch.Tensor:
    """x after a JPEG round trip of its 8-bit image through Pillow at ``quality``.

    Each image (C = 1: mode "L", C = 3: mode "RGB") is saved with Pillow's defaults for
    that quality (4:2:0 chroma subsampling for RGB, standard tables) and decoded again;
    the result is in data units with the dtype and device of ``x``.
    """
    from PIL import Image

    quality = integer(quality, "quality", 1, 100)
    q = to_8bit(x, clip_values)
    if q.dim() != 4 or q.shape[1] not in (1, 3):
        raise ValueError(f"x must have shape (N, C, H, W) with C = 1 or 3 channels (grey or RGB) for JPEG, "
                         f"got {tuple(x.shape)}")
    pixels = q.permute(0, 2, 3, 1).cpu().numpy()
    if pixels.shape[-1] == 1:
        pixels = pixels[..., 0]
    decoded = []
    for image in pixels:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
        decoded.append(np.asarray(Image.open(buffer)))
    out = torch.from_numpy(np.stack(decoded)).reshape(q.shape[0], q.shape[2], q.shape[3], q.shape[1])
    return from_8bit(out.permute(0, 3, 1, 2), clip_values, x.dtype).to(x.device)
