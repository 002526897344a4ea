"""Corruptions against NumPy / scikit-image / Pillow transcriptions of Hendrycks &
Dietterich's make_cifar_c.py, and mCE / relative mCE against hand-computed values."""
import io

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import color, filters
from torch import nn

from robustx.metrics.corruption import (
    CORRUPTIONS,
    SEVERITY_CONSTANTS,
    corrupt,
    corruption_errors,
    hsv_to_rgb,
    mce,
    rgb_to_hsv,
    rmce,
)

SEVERITIES = range(1, 6)


def images(n=3, c=3, h=12, w=10, seed=0, levels=None):
    """Random images in [0, 1] (float64); ``levels`` quantises them (forces ties)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, c, h, w, generator=g, dtype=torch.float64)
    return (x * levels).round() / levels if levels else x


def hwc(x):
    return x.permute(0, 2, 3, 1).numpy()


def chw(a):
    return torch.from_numpy(np.ascontiguousarray(a)).permute(0, 3, 1, 2)


# Published constants (make_cifar_c.py), restated independently of the module.
PUBLISHED = {
    "gaussian_noise": [0.04, 0.06, .08, .09, .10],
    "shot_noise": [500, 250, 100, 75, 50],
    "impulse_noise": [.01, .02, .03, .05, .07],
    "gaussian_blur": [.4, .6, 0.7, .8, 1],
    "contrast": [.75, .5, .4, .3, 0.15],
    "brightness": [.05, .1, .15, .2, .3],
    "pixelate": [0.95, 0.9, 0.85, 0.75, 0.65],
    "jpeg_compression": [80, 65, 58, 50, 40],
}


def test_constants_are_the_published_ones():
    assert set(CORRUPTIONS) == set(PUBLISHED)
    for name, values in PUBLISHED.items():
        assert list(SEVERITY_CONSTANTS[name]) == values


NOISE_REFERENCES = {
    # the published formula applied to draws of the generator corrupt() seeds
    "gaussian_noise": lambda x, c, g: np.clip(
        x.numpy() + torch.randn(x.shape, generator=g, dtype=x.dtype).numpy() * c, 0, 1),
    "shot_noise": lambda x, c, g: np.clip(torch.poisson(x * c, generator=g).numpy() / c, 0, 1),
}


@pytest.mark.parametrize("severity", SEVERITIES)
@pytest.mark.parametrize("name", sorted(NOISE_REFERENCES))
def test_gaussian_and_shot_noise_with_the_generators_draws(name, severity):
    x = images()
    ref = NOISE_REFERENCES[name](x, PUBLISHED[name][severity - 1], torch.Generator().manual_seed(7))
    np.testing.assert_allclose(corrupt(x, name, severity, seed=7).numpy(), ref, atol=1e-12)


@pytest.mark.parametrize("severity", SEVERITIES)
def test_impulse_noise_with_the_generators_draws(severity):
    x = images()
    amount = PUBLISHED["impulse_noise"][severity - 1]
    g = torch.Generator().manual_seed(5)
    flipped = torch.rand(x.shape, generator=g).numpy() <= amount
    salted = torch.rand(x.shape, generator=g).numpy() <= 0.5
    ref = x.numpy().copy()
    ref[flipped & salted] = 1.0
    ref[flipped & ~salted] = 0.0
    np.testing.assert_array_equal(corrupt(x, "impulse_noise", severity, seed=5).numpy(), ref)


@pytest.mark.parametrize("severity", SEVERITIES)
def test_noise_statistics_match_the_constants(severity):
    """Mid-grey images (no clipping): residual mean 0, variance c^2 (Gaussian), u / c
    (Poisson); impulse: a fraction ``amount`` replaced, half by 1."""
    x = torch.full((4, 3, 64, 64), 0.5)
    n = x.numel()
    r = (corrupt(x, "gaussian_noise", severity, seed=1) - x).double()
    c = PUBLISHED["gaussian_noise"][severity - 1]
    assert abs(r.mean()) < 4 * c / n ** 0.5
    assert abs(r.var() / c ** 2 - 1) < 4 * (2 / n) ** 0.5
    r = (corrupt(x, "shot_noise", severity, seed=1) - x).double()
    lam = PUBLISHED["shot_noise"][severity - 1]
    assert abs(r.mean()) < 4 * (0.5 / lam / n) ** 0.5
    assert abs(r.var() / (0.5 / lam) - 1) < 0.05
    out = corrupt(x, "impulse_noise", severity, seed=1)
    amount = PUBLISHED["impulse_noise"][severity - 1]
    changed = (out != x).double()
    assert abs(changed.mean() - amount) < 4 * (amount * (1 - amount) / n) ** 0.5
    assert set(out[out != x].unique().tolist()) <= {0.0, 1.0}
    assert abs((out == 1).double().sum() / changed.sum() - 0.5) < 0.05


def test_noise_seeded():
    x = images()
    for name in ("gaussian_noise", "shot_noise", "impulse_noise"):
        assert torch.equal(corrupt(x, name, 3, seed=11), corrupt(x, name, 3, seed=11))
        assert not torch.equal(corrupt(x, name, 3, seed=11), corrupt(x, name, 3, seed=12))


@pytest.mark.parametrize("severity", SEVERITIES)
def test_gaussian_blur_matches_skimage(severity):
    x = images(h=20, w=15)
    c = PUBLISHED["gaussian_blur"][severity - 1]
    ref = np.stack([np.clip(filters.gaussian(a, sigma=c, channel_axis=-1), 0, 1) for a in hwc(x)])
    np.testing.assert_allclose(hwc(corrupt(x, "gaussian_blur", severity)), ref, atol=1e-12)


@pytest.mark.parametrize("severity", SEVERITIES)
def test_contrast_formula(severity):
    x = images()
    c = PUBLISHED["contrast"][severity - 1]
    a = hwc(x)
    means = a.mean(axis=(1, 2), keepdims=True)
    ref = np.clip((a - means) * c + means, 0, 1)
    np.testing.assert_allclose(hwc(corrupt(x, "contrast", severity)), ref, atol=1e-12)


def test_hsv_roundtrip_matches_skimage():
    x = images(n=4, h=9, w=9, levels=4)  # many ties between channels, greys, zeros
    x[0] = 0.0
    hsv = rgb_to_hsv(x)
    np.testing.assert_allclose(hwc(hsv), np.stack([color.rgb2hsv(a) for a in hwc(x)]), atol=1e-12)
    np.testing.assert_allclose(hwc(hsv_to_rgb(hsv)), np.stack([color.hsv2rgb(a) for a in hwc(hsv)]), atol=1e-12)
    np.testing.assert_allclose(hsv_to_rgb(hsv), x, atol=1e-12)


@pytest.mark.parametrize("severity", SEVERITIES)
@pytest.mark.parametrize("levels", [None, 3])
def test_brightness_matches_skimage(severity, levels):
    x = images(levels=levels)
    c = PUBLISHED["brightness"][severity - 1]
    ref = []
    for a in hwc(x):
        hsv = color.rgb2hsv(a)
        hsv[:, :, 2] = np.clip(hsv[:, :, 2] + c, 0, 1)
        ref.append(np.clip(color.hsv2rgb(hsv), 0, 1))
    np.testing.assert_allclose(hwc(corrupt(x, "brightness", severity)), np.stack(ref), atol=1e-12)
    np.testing.assert_allclose(hwc(corrupt(x.float(), "brightness", severity)), np.stack(ref), atol=1e-6)


@pytest.mark.parametrize("severity", SEVERITIES)
@pytest.mark.parametrize("size", [(32, 32), (17, 23)])
def test_pixelate_matches_pillow_box(severity, size):
    """Pillow BOX resize of each channel as a 32-bit float image, down and back up."""
    h, w = size
    x = images(n=2, h=h, w=w).float()
    c = PUBLISHED["pixelate"][severity - 1]
    ref = np.empty(x.shape, dtype=np.float32)
    for i, j in np.ndindex(*x.shape[:2]):
        small = Image.fromarray(x[i, j].numpy(), "F").resize((int(w * c), int(h * c)), Image.BOX)
        ref[i, j] = np.asarray(small.resize((w, h), Image.BOX))
    np.testing.assert_allclose(corrupt(x, "pixelate", severity).numpy(), np.clip(ref, 0, 1), atol=1e-6)


@pytest.mark.parametrize("severity", SEVERITIES)
def test_jpeg_matches_pillow(severity):
    x = images(h=16, w=16)
    q = PUBLISHED["jpeg_compression"][severity - 1]
    ref = []
    for a in hwc(x):
        buf = io.BytesIO()
        Image.fromarray(np.uint8(np.round(a * 255)), "RGB").save(buf, "JPEG", quality=q)
        ref.append(np.asarray(Image.open(buf)) / 255.0)
    np.testing.assert_allclose(hwc(corrupt(x, "jpeg_compression", severity)), np.stack(ref), atol=1e-12)
    grey = corrupt(x[:, :1], "jpeg_compression", severity)
    assert grey.shape == x[:, :1].shape


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_clip_values_map_the_domain(name):
    x = images().float()
    lo, hi = -2.0, 3.0
    out = corrupt(lo + (hi - lo) * x, name, 4, seed=2, clip_values=(lo, hi))
    ref = lo + (hi - lo) * corrupt(x, name, 4, seed=2)
    np.testing.assert_allclose(out.numpy(), ref.numpy(), atol=1e-5)
    assert out.dtype == torch.float32


def test_corrupt_rejects_bad_arguments():
    x = images()
    with pytest.raises(ValueError, match="name"):
        corrupt(x, "fog", 1)
    with pytest.raises(ValueError, match="severity"):
        corrupt(x, "contrast", 6)
    with pytest.raises(TypeError, match="severity"):
        corrupt(x, "contrast", 1.0)
    with pytest.raises(ValueError, match="outside"):
        corrupt(x + 1.5, "contrast", 1)
    with pytest.raises(ValueError, match="shape"):
        corrupt(x[0], "contrast", 1)
    with pytest.raises(ValueError, match="channels"):
        corrupt(torch.rand(1, 2, 8, 8), "brightness", 1)
    with pytest.raises(TypeError, match="x"):
        corrupt(x.numpy(), "contrast", 1)


# ---- mCE / relative mCE ----

ERR = {"gaussian_noise": [0.2, 0.3, 0.4, 0.5, 0.6], "contrast": [0.1, 0.1, 0.2, 0.2, 0.4]}
BASE = {"gaussian_noise": [0.4, 0.5, 0.6, 0.7, 0.8], "contrast": [0.2, 0.3, 0.3, 0.4, 0.8]}


def test_mce_hand_computed():
    # CE_gauss = 2.0 / 3.0, CE_contrast = 1.0 / 2.0
    assert mce(ERR, BASE) == pytest.approx((2.0 / 3.0 + 0.5) / 2, abs=1e-12)
    # unnormalised: mean over corruptions of the mean over severities: (0.4 + 0.2) / 2
    assert mce(ERR) == pytest.approx(0.3, abs=1e-12)
    assert mce(BASE, BASE) == pytest.approx(1.0, abs=1e-12)


def test_rmce_hand_computed():
    # f clean 0.1: gaps 2.0 - 0.5 = 1.5 and 1.0 - 0.5 = 0.5; base clean 0.2: 3.0 - 1.0 = 2.0, 2.0 - 1.0 = 1.0
    assert rmce(ERR, 0.1, BASE, 0.2) == pytest.approx((1.5 / 2.0 + 0.5 / 1.0) / 2, abs=1e-12)
    assert rmce(ERR, 0.1) == pytest.approx(((0.4 - 0.1) + (0.2 - 0.1)) / 2, abs=1e-12)
    flat = {c: [0.1] * 5 for c in ERR}  # no degradation under corruption
    assert rmce(flat, 0.1, BASE, 0.2) == 0.0


def test_mce_rejects_bad_tables():
    with pytest.raises(ValueError, match="base_errors"):
        mce(ERR, {"contrast": BASE["contrast"]})
    with pytest.raises(ValueError, match="errors"):
        mce({"contrast": [0.1, float("nan")]})
    with pytest.raises(TypeError):
        mce([0.1, 0.2])
    with pytest.raises(ValueError, match="clean_error"):
        rmce(ERR, None)
    with pytest.raises(ValueError, match="nonzero"):
        mce(ERR, {c: [0.0] * 5 for c in ERR})


class ConstantModel(nn.Module):
    """Always predicts class 0."""

    def forward(self, x):
        return torch.tensor([1.0, 0.0]).expand(x.shape[0], 2)


def test_always_right_model_has_zero_errors():
    x = images(n=5).float()
    errors = corruption_errors(ConstantModel(), x, torch.zeros(5, dtype=torch.long), batch_size=2, progress=False)
    assert set(errors) == set(CORRUPTIONS)
    assert all(e == (0.0,) * 5 for e in errors.values())
    assert mce(errors) == 0.0
    assert rmce(errors, 0.0) == 0.0


def test_corruption_errors_match_a_manual_count():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 12 * 10, 3))
    x = images(n=9).float()
    y = net(x).argmax(1)
    y[::3] = (y[::3] + 1) % 3  # some wrong already when clean
    names = ("contrast", "gaussian_blur", "pixelate", "brightness")
    errors = corruption_errors(net, x, y, corruptions=names, severities=(2, 5), batch_size=4, progress=False)
    for name in names:
        manual = [(net(corrupt(x, name, s)).argmax(1) != y).double().mean().item() for s in (2, 5)]
        assert errors[name] == pytest.approx(manual, abs=1e-12)
    noisy = corruption_errors(net, x, y, corruptions=("gaussian_noise",), batch_size=4, progress=False)
    assert noisy == corruption_errors(net, x, y, corruptions=("gaussian_noise",), batch_size=4, progress=False)
    assert net.training
