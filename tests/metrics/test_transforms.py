"""The 8-bit blur and JPEG transforms of RGB / RIC against Pillow itself, one image at a
time: the blur must equal ImageFilter.GaussianBlur level for level (max difference 0),
the JPEG round trip must equal Pillow's encode/decode exactly."""
import io

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

from robustx.metrics import from_8bit, gaussian_blur_8bit, jpeg_8bit, to_8bit


def levels(x, lo=0.0, hi=1.0):
    """8-bit HWC (or HW) arrays of a batch, quantised independently of robustx."""
    q = np.rint((x.double().numpy() - lo) * 255.0 / (hi - lo)).astype(np.uint8)
    q = q.transpose(0, 2, 3, 1)
    return q[..., 0] if q.shape[-1] == 1 else q


def batch(shape, seed=0, smooth=False):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=g)
    if smooth:  # natural-image-like content next to flat and saturated regions
        x = torch.nn.functional.avg_pool2d(x, 3, stride=1, padding=1)
        x[:, :, : shape[2] // 3] = 1.0
    return x


@pytest.mark.parametrize("sigma", [0.5, 1.0, 2.0, 3.7])
@pytest.mark.parametrize("shape", [(3, 3, 32, 32), (2, 1, 8, 8), (2, 3, 5, 9), (2, 1, 2, 3)])
def test_blur_equals_pillow(sigma, shape):
    x = batch(shape, seed=int(sigma * 10), smooth=shape[2] > 4)
    got = to_8bit(gaussian_blur_8bit(x, sigma=sigma))
    assert got.dtype == torch.uint8
    for i, image in enumerate(levels(x)):
        ref = np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(sigma)))
        ours = got[i].permute(1, 2, 0).numpy().reshape(ref.shape)
        assert np.abs(ours.astype(int) - ref.astype(int)).max() == 0


def test_blur_clip_values_dtype_and_range():
    x = batch((2, 3, 10, 10), seed=1)
    lo, hi = -2.0, 2.0
    out = gaussian_blur_8bit((lo + (hi - lo) * x).double(), clip_values=(lo, hi))
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, from_8bit(to_8bit(gaussian_blur_8bit(x)), (lo, hi), torch.float64))
    with pytest.raises(ValueError, match="sigma"):
        gaussian_blur_8bit(x, sigma=0.0)
    with pytest.raises(ValueError, match="outside"):
        gaussian_blur_8bit(x + 1.5)
    with pytest.raises(ValueError, match="N, C, H, W"):
        gaussian_blur_8bit(x[0])


@pytest.mark.parametrize("quality", [90, 50])
@pytest.mark.parametrize("shape", [(3, 3, 32, 32), (2, 1, 8, 8), (2, 3, 13, 7)])
def test_jpeg_equals_pillow(quality, shape):
    x = batch(shape, seed=quality, smooth=True)
    got = to_8bit(jpeg_8bit(x, quality=quality))
    for i, image in enumerate(levels(x)):
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
        ref = np.asarray(Image.open(buffer))
        assert np.array_equal(got[i].permute(1, 2, 0).numpy().reshape(ref.shape), ref)
    assert got.shape == x.shape


def test_jpeg_arguments():
    x = batch((2, 2, 8, 8))
    with pytest.raises(ValueError, match="C = 1 or 3"):
        jpeg_8bit(x)
    with pytest.raises(ValueError, match="quality"):
        jpeg_8bit(x[:, :1], quality=0)
    with pytest.raises(TypeError, match="quality"):
        jpeg_8bit(x[:, :1], quality=90.0)


def test_quantisation_round_trip():
    q = torch.arange(256, dtype=torch.uint8).reshape(1, 1, 16, 16)
    assert torch.equal(to_8bit(from_8bit(q, (-1.0, 1.0)), (-1.0, 1.0)), q)
