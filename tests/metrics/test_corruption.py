"""Corruptions against NumPy / SciPy / scikit-image / Pillow transcriptions of Hendrycks &
Dietterich's make_cifar_c.py and make_imagenet_c.py, and mCE / relative mCE against
hand-computed values. (The imagecorruptions package, a possible oracle, needs OpenCV and
pkg_resources, which this environment lacks; the references below use SciPy instead, and
imagecorruptions' NumPy reimplementation of ImageMagick's motion blur, transcribed.)"""
import functools
import io
import math
from importlib import resources

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage
from skimage import color, filters
from torch import nn
from torch.nn import functional as F

from robustx.metrics.corruption import (
    ALEXNET_CLEAN_ERROR,
    ALEXNET_ERRORS,
    BENCHMARK,
    CORRUPTIONS,
    EXTRA_CORRUPTIONS,
    FROST_PICTURES,
    FROST_SCALE,
    REFERENCE_SIDE,
    SEVERITY_CONSTANTS,
    affine_warp,
    constants_for,
    corrupt,
    corruption_score,
    defocus_disk,
    displace,
    linear_resize_matrix,
    motion_blur,
    motion_blur_kernel,
    plasma_fractal,
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


# Published constants, restated independently of the module: make_cifar_c.py ...
PUBLISHED = {
    "gaussian_noise": [0.04, 0.06, .08, .09, .10],
    "shot_noise": [500, 250, 100, 75, 50],
    "impulse_noise": [.01, .02, .03, .05, .07],
    "defocus_blur": [(0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)],
    "glass_blur": [(0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)],
    "motion_blur": [(6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)],
    "zoom_blur": [(1, 1.06, 0.01), (1, 1.11, 0.01), (1, 1.16, 0.01), (1, 1.21, 0.01), (1, 1.26, 0.01)],
    "snow": [(0.1, 0.2, 1, 0.6, 8, 3, 0.95), (0.1, 0.2, 1, 0.5, 10, 4, 0.9), (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
             (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85), (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8)],
    "frost": [(1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)],
    "fog": [(.2, 3), (.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)],
    "elastic_transform": [(32 * 0, 32 * 0, 32 * 0.08), (32 * 0.05, 32 * 0.2, 32 * 0.07), (32 * 0.08, 32 * 0.06, 32 * 0.06),
                          (32 * 0.1, 32 * 0.04, 32 * 0.05), (32 * 0.1, 32 * 0.03, 32 * 0.03)],
    "gaussian_blur": [.4, .6, 0.7, .8, 1],
    "contrast": [.75, .5, .4, .3, 0.15],
    "brightness": [.05, .1, .15, .2, .3],
    "pixelate": [0.95, 0.9, 0.85, 0.75, 0.65],
    "jpeg_compression": [80, 65, 58, 50, 40],
}
# ... and make_imagenet_c.py
PUBLISHED_IMAGENET = {
    "gaussian_noise": [.08, .12, 0.18, 0.26, 0.38],
    "shot_noise": [60, 25, 12, 5, 3],
    "impulse_noise": [.03, .06, .09, 0.17, 0.27],
    "defocus_blur": [(3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5)],
    "glass_blur": [(0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2)],
    "motion_blur": [(10, 3), (15, 5), (15, 8), (15, 12), (20, 15)],
    "zoom_blur": [(1, 1.11, 0.01), (1, 1.16, 0.01), (1, 1.21, 0.02), (1, 1.26, 0.02), (1, 1.31, 0.03)],
    "snow": [(0.1, 0.3, 3, 0.5, 10, 4, 0.8), (0.2, 0.3, 2, 0.5, 12, 4, 0.7), (0.55, 0.3, 4, 0.9, 12, 8, 0.7),
             (0.55, 0.3, 4.5, 0.85, 12, 8, 0.65), (0.55, 0.3, 2.5, 0.85, 12, 12, 0.55)],
    "frost": [(1, 0.4), (0.8, 0.6), (0.7, 0.7), (0.65, 0.7), (0.6, 0.75)],
    "fog": [(1.5, 2), (2, 2), (2.5, 1.7), (2.5, 1.5), (3, 1.4)],
    "elastic_transform": [(244 * 2, 244 * 0.7, 244 * 0.1), (244 * 2, 244 * 0.08, 244 * 0.2),
                          (244 * 0.05, 244 * 0.01, 244 * 0.02), (244 * 0.07, 244 * 0.01, 244 * 0.02),
                          (244 * 0.12, 244 * 0.01, 244 * 0.02)],
    "gaussian_blur": [1, 2, 3, 4, 6],
    "contrast": [0.4, .3, .2, .1, .05],
    "brightness": [.1, .2, .3, .4, .5],
    "pixelate": [0.6, 0.5, 0.4, 0.3, 0.25],
    "jpeg_compression": [25, 18, 15, 10, 7],
}


# AlexNet's ImageNet-C errors in the benchmark's order, as google-research/augmix imagenet.py
# lists them (ALEXNET_ERR, "Raw AlexNet errors taken from https://github.com/hendrycks/robustness").
PUBLISHED_ALEXNET = [0.886428, 0.894468, 0.922640, 0.819880, 0.826268, 0.785948, 0.798360, 0.866816, 0.826572,
                     0.819324, 0.564592, 0.853204, 0.646056, 0.717840, 0.606500]


def test_constants_are_the_published_ones():
    assert set(CORRUPTIONS) | set(EXTRA_CORRUPTIONS) == set(PUBLISHED) == set(PUBLISHED_IMAGENET)
    assert CORRUPTIONS == BENCHMARK and len(BENCHMARK) == 15  # all 15 run
    for table, published in (("cifar", PUBLISHED), ("imagenet", PUBLISHED_IMAGENET)):
        for name, values in published.items():
            assert list(SEVERITY_CONSTANTS[table][name]) == values, (table, name)
    assert ALEXNET_ERRORS == dict(zip(BENCHMARK, PUBLISHED_ALEXNET))
    # the image sides of make_cifar_c.py / make_imagenet_c.py, and their frost shrinking
    # (cv2.resize(frost, (0, 0), fx=0.2, fy=0.2) in the first, none in the second)
    assert REFERENCE_SIDE == {"cifar": 32, "imagenet": 224} and FROST_SCALE == {"cifar": 0.2, "imagenet": 1.0}
    assert constants_for((3, 32, 32)) == constants_for((1, 64, 40)) == "cifar"
    assert constants_for((3, 224, 224)) == constants_for((3, 65, 20)) == "imagenet"


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
    for name in ("gaussian_noise", "shot_noise", "impulse_noise", "motion_blur", "snow", "frost", "elastic_transform"):
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
        corrupt(x, "spatter", 1)
    with pytest.raises(TypeError, match="name"):
        corrupt(x, 3, 1)
    with pytest.raises(ValueError, match="constants"):
        corrupt(x, "contrast", 1, constants="mnist")
    with pytest.raises(ValueError, match="severity"):
        corrupt(x, "contrast", 6)
    with pytest.raises(TypeError, match="severity"):
        corrupt(x, "contrast", 1.0)
    with pytest.raises(ValueError, match="outside"):
        corrupt(x + 1.5, "contrast", 1)
    with pytest.raises(ValueError, match="shape"):
        corrupt(x[0], "contrast", 1)
    for name in ("brightness", "snow", "frost"):
        with pytest.raises(ValueError, match="channels"):
            corrupt(torch.rand(1, 2, 8, 8), name, 1)
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


# ---- the blur / weather corruptions against SciPy transcriptions of the published code ----

def mirror_correlate(a, kernel):
    """OpenCV filter2D(a, -1, kernel) with BORDER_REFLECT_101 = SciPy correlate, mode 'mirror'."""
    from scipy import ndimage
    return ndimage.correlate(a, kernel, mode="mirror")


def published_disk(radius, alias_blur):
    half = 8 if radius <= 8 else int(radius)
    grid = np.arange(-half, half + 1)
    xx, yy = np.meshgrid(grid, grid)
    disk = ((xx ** 2 + yy ** 2) <= radius ** 2).astype(np.float64)
    disk /= disk.sum()
    size = 3 if radius <= 8 else 5
    g = np.exp(-(np.arange(size) - (size - 1) / 2) ** 2 / (2 * alias_blur ** 2))
    g /= g.sum()
    return mirror_correlate(disk, np.outer(g, g))


@pytest.mark.parametrize("table", ["cifar", "imagenet"])
@pytest.mark.parametrize("severity", SEVERITIES)
def test_defocus_blur_matches_scipy(severity, table):
    radius, alias = SEVERITY_CONSTANTS[table]["defocus_blur"][severity - 1]
    kernel = published_disk(radius, alias)
    np.testing.assert_allclose(defocus_disk(radius, alias).numpy(), kernel, atol=1e-12)
    if radius < 8:  # at radius 8 the disk touches the grid's edge, where the reflected blur adds mass
        assert kernel.sum() == pytest.approx(1.0)
    x = images(h=12, w=10)
    ref = np.stack([[np.clip(mirror_correlate(ch, kernel), 0, 1) for ch in img] for img in x.numpy()])
    np.testing.assert_allclose(corrupt(x, "defocus_blur", severity, constants=table).numpy(), ref, atol=1e-12)


def published_clipped_zoom(img_hwc, z):
    """make_cifar_c.py's clipped_zoom of a square (H, H, C) array: the centre ceil(H / z)
    crop zoomed by z (scipy zoom, order 1), its centre H x H kept."""
    h = img_hwc.shape[0]
    ch = int(np.ceil(h / z))
    top = (h - ch) // 2
    zoomed = ndimage.zoom(img_hwc[top:top + ch, top:top + ch], (z, z, 1), order=1)
    trim = (zoomed.shape[0] - h) // 2
    return zoomed[trim:trim + h, trim:trim + h]


def published_zoom_blur(img_hwc, start, stop, step):
    """make_cifar_c.py's zoom_blur on one square (H, H, C) image."""
    out = np.zeros_like(img_hwc)
    factors = np.arange(start, stop, step)
    for z in factors:
        out += published_clipped_zoom(img_hwc, z)
    return np.clip((img_hwc + out) / (len(factors) + 1), 0, 1)


@pytest.mark.parametrize("table", ["cifar", "imagenet"])
@pytest.mark.parametrize("severity", SEVERITIES)
def test_zoom_blur_matches_scipy_zoom(severity, table):
    x = images(n=2, h=32, w=32)
    c = SEVERITY_CONSTANTS[table]["zoom_blur"][severity - 1]
    ref = np.stack([published_zoom_blur(a, *c) for a in hwc(x)])
    np.testing.assert_allclose(hwc(corrupt(x, "zoom_blur", severity, constants=table)), ref, atol=1e-9)


def published_glass_blur(img, c, draws):
    """make_cifar_c.py's glass_blur on one image, (H, W, C) or (H, W), with the given
    (dx, dy) draws (NumPy's own view semantics decide what the "swap" does)."""
    sigma, d, passes = c
    axis = -1 if img.ndim == 3 else None
    x = np.uint8(filters.gaussian(img, sigma=sigma, channel_axis=axis) * 255)
    k = 0
    for _ in range(passes):
        for h in range(x.shape[0] - d, d, -1):
            for w in range(x.shape[1] - d, d, -1):
                dx, dy = draws[k]
                k += 1
                x[h, w], x[h + dy, w + dx] = x[h + dy, w + dx], x[h, w]
    return np.clip(filters.gaussian(x / 255.0, sigma=sigma, channel_axis=axis), 0, 1)


@pytest.mark.parametrize("channels", [3, 1])
@pytest.mark.parametrize("table, severity", [("cifar", 1), ("cifar", 5), ("imagenet", 4)])
def test_glass_blur_matches_the_published_loop(table, severity, channels):
    x = images(n=2, c=channels, h=11, w=9, seed=4)
    c = SEVERITY_CONSTANTS[table]["glass_blur"][severity - 1]
    sigma, d, passes = c
    g = torch.Generator().manual_seed(6)
    steps = passes * len(range(11 - d, d, -1)) * len(range(9 - d, d, -1))
    draws = torch.stack([torch.randint(-d, d, (2, 2), generator=g) for _ in range(steps)], 1).numpy()
    imgs = hwc(x) if channels == 3 else x[:, 0].numpy()
    ref = np.stack([published_glass_blur(a, c, draws[i]) for i, a in enumerate(imgs)])
    got = hwc(corrupt(x, "glass_blur", severity, seed=6, constants=table))
    np.testing.assert_allclose(got if channels == 3 else got[..., 0], ref, atol=1e-12)


def published_plasma(size, decay, g):
    """make_cifar_c.py's plasma_fractal, its uniform draws taken from the torch generator g."""
    m = np.zeros((size, size))
    step, wibble = size, 100.0

    def wibbled(a):
        return a / 4 + wibble * (wibble * (torch.rand(a.shape, generator=g, dtype=torch.float64).numpy() * 2 - 1))

    while step >= 2:
        half = step // 2
        corner = m[0::step, 0::step]
        acc = corner + np.roll(corner, -1, axis=0)
        acc += np.roll(acc, -1, axis=1)
        m[half::step, half::step] = wibbled(acc)
        dr, ul = m[half::step, half::step], m[0::step, 0::step]
        m[0::step, half::step] = wibbled(dr + np.roll(dr, 1, axis=0) + ul + np.roll(ul, -1, axis=1))
        m[half::step, 0::step] = wibbled(dr + np.roll(dr, 1, axis=1) + ul + np.roll(ul, -1, axis=0))
        step //= 2
        wibble /= decay
    m -= m.min()
    return m / m.max()


@pytest.mark.parametrize("size, decay", [(16, 3), (32, 1.75), (8, 1.4)])
def test_plasma_fractal_matches_the_published_algorithm(size, decay):
    got = plasma_fractal(1, size, decay, torch.Generator().manual_seed(2))[0].numpy()
    np.testing.assert_allclose(got, published_plasma(size, decay, torch.Generator().manual_seed(2)), atol=1e-12)
    assert got.min() == 0.0 and got.max() == 1.0


@pytest.mark.parametrize("table, severity", [("cifar", 1), ("cifar", 5), ("imagenet", 3)])
def test_fog_formula_with_the_generators_fractal(table, severity):
    """fog = clip((u + c F) m / (m + c)), F the plasma fractal of side 32 >= 20 cropped to
    20 x 12 (one per image, shared by the channels), m the image's maximum."""
    x = images(n=2, h=20, w=12, seed=8)
    strength, decay = SEVERITY_CONSTANTS[table]["fog"][severity - 1]
    fractal = plasma_fractal(2, 32, decay, torch.Generator().manual_seed(3))[:, None, :20, :12].numpy()
    a = x.numpy()
    peak = a.max(axis=(1, 2, 3), keepdims=True)
    ref = np.clip((a + strength * fractal) * peak / (peak + strength), 0, 1)
    np.testing.assert_allclose(corrupt(x, "fog", severity, seed=3, constants=table).numpy(), ref, atol=1e-12)


# ---- the summary's name and normalisation ----

def test_corruption_score_names_what_it_computes():
    errors = {"gaussian_noise": [0.5] * 5, "contrast": [0.2, 0.3, 0.4, 0.5, 0.6]}
    small = corruption_score(errors, (3, 32, 32))
    assert small.name == "mean corruption error (unnormalised)" and small.normalisation == "none"
    assert small.value == pytest.approx(0.45, abs=1e-12)
    large = corruption_score(errors, (3, 224, 224))  # AlexNet: 0.5 / 0.886428 and 0.4 / 0.853204
    assert large.normalisation == "AlexNet (published)" and large.name == "mCE over 2 of 15 benchmark corruptions"
    assert large.value == pytest.approx((0.5 / 0.886428 + 0.4 / 0.853204) / 2, rel=1e-12)
    rel = corruption_score(errors, (3, 224, 224), relative=True, clean_error=0.25)
    assert rel.name.startswith("relative mCE") and rel.value == pytest.approx(
        (0.25 / (0.886428 - 0.43478) + 0.15 / (0.853204 - 0.43478)) / 2, rel=1e-12)
    base = {c: [0.8] * 5 for c in errors}
    by_base = corruption_score(errors, (3, 32, 32), base_errors=base)
    assert by_base.normalisation == "baseline model" and by_base.value == pytest.approx((0.5 / 0.8 + 0.4 / 0.8) / 2)
    # three severities only: AlexNet's errors are means over all five, so no normalisation
    assert corruption_score({"contrast": [0.2, 0.3, 0.4]}, (3, 224, 224)).normalisation == "none"
    assert corruption_score(errors, (3, 32, 32), relative=True, clean_error=0.1).name == \
        "relative mean corruption error (unnormalised)"
    with pytest.raises(ValueError, match="clean_error"):
        corruption_score(errors, (3, 32, 32), relative=True)
    assert set(ALEXNET_ERRORS) == set(CORRUPTIONS) and 0 < ALEXNET_CLEAN_ERROR < min(ALEXNET_ERRORS.values())
    assert not math.isnan(large.value)


def test_relative_mce_leaves_out_corruptions_the_baseline_is_immune_to():
    """A baseline whose error under a corruption equals its clean error, up to the rounding
    of 1/6 - 1/6 computed two ways, gives that corruption no relative CE (0/0, not 1e15)."""
    from robustx.metrics.corruption import rmce

    clean_b = 1 / 6
    base = {"fog": (0.5, 0.5), "brightness": (2 / 12, 0.5 / 3)}
    errors = {"fog": (0.3, 0.5), "brightness": (0.4, 0.4)}
    with pytest.warns(RuntimeWarning, match="leaves out brightness"):
        value = rmce(errors, 0.1, base, clean_b)
    assert value == pytest.approx(((0.3 - 0.1) + (0.5 - 0.1)) / ((0.5 - clean_b) * 2))
    with pytest.raises(ValueError, match="does not move under any corruption"):
        rmce({"brightness": (0.4, 0.4)}, 0.1, {"brightness": (2 / 12, 0.5 / 3)}, clean_b)


# ---- motion blur, snow, frost, elastic transform ----
# References: make_cifar_c.py / make_imagenet_c.py transcribed with NumPy / SciPy; their
# ImageMagick motion blur as imagecorruptions reimplements it (corruptions.py: _motion_blur,
# getMotionBlurKernel, shift); OpenCV's affine warp as SciPy affine_transform with mode
# 'mirror' (= BORDER_REFLECT_101). Where the module's random draws are needed, they are
# taken from torch.Generator(seed) in the module's order (documented in its docstrings).

def published_shift(img, dx, dy):
    """imagecorruptions' shift: img moved by dx columns and dy rows (np.roll), the vacated
    columns / rows filled with the nearest remaining one."""
    out = np.roll(img, dx, axis=1)
    if dx > 0:
        out[:, :dx] = out[:, dx:dx + 1]
    elif dx < 0:
        out[:, dx:] = out[:, dx - 1:dx]
    out = np.roll(out, dy, axis=0)
    if dy > 0:
        out[:dy] = out[dy:dy + 1]
    elif dy < 0:
        out[dy:] = out[dy - 1:dy]
    return out


def published_motion_blur(img, radius, sigma, angle):
    """imagecorruptions' _motion_blur on (H, W[, C]): kernel width 2 radius + 1, Gaussian
    exp(-i^2 / 2 sigma^2) / (sqrt(2 pi) sigma) normalised, tap i shifted by
    -ceil(i p / |p| - 0.5), p = width (sin, cos)(angle), stopping at the first tap whose
    shift reaches the image size."""
    width = 2 * radius + 1
    i = np.arange(width)
    kernel = np.exp(-i ** 2 / (2 * sigma ** 2)) / (np.sqrt(2 * np.pi) * sigma)
    kernel /= kernel.sum()
    point = (width * np.sin(np.deg2rad(angle)), width * np.cos(np.deg2rad(angle)))
    norm = math.hypot(*point)
    out = np.zeros(img.shape)
    for k in range(width):
        dy = -math.ceil(k * point[0] / norm - 0.5)
        dx = -math.ceil(k * point[1] / norm - 0.5)
        if abs(dy) >= img.shape[0] or abs(dx) >= img.shape[1]:
            break
        out += kernel[k] * published_shift(img, dx, dy)
    return out


def test_motion_blur_kernel_is_imagemagicks():
    """ImageMagick (effect.c, GetMotionBlurKernel / GetOptimalKernelWidth1D): width
    2 ceil(radius) + 1, weights exp(-i^2 / 2 sigma^2) normalised; at angle 0 a bright
    column at x0 spreads to the columns x0 - i with weight w_i, edge pixels repeated."""
    w = motion_blur_kernel(6, 2).numpy()
    i = np.arange(13)
    np.testing.assert_allclose(w, np.exp(-i ** 2 / 8.0) / np.exp(-i ** 2 / 8.0).sum(), rtol=1e-14)
    assert motion_blur_kernel(9.5, 2.5).numel() == 21
    x = torch.zeros(1, 1, 3, 20, dtype=torch.float64)
    x[..., 15] = 1.0
    out = motion_blur(x, 6, 2, torch.zeros(1))[0, 0].numpy()
    expected = np.zeros(20)
    expected[15 - i] = w
    np.testing.assert_allclose(out, np.tile(expected, (3, 1)), atol=1e-15)
    # at 90 degrees it runs down the rows, and a constant image stays constant (weights sum to 1)
    down = motion_blur(x.transpose(2, 3).contiguous(), 6, 2, torch.tensor([90.0]))[0, 0, :, 0].numpy()
    np.testing.assert_allclose(down, expected, atol=1e-15)
    np.testing.assert_allclose(motion_blur(torch.ones(2, 3, 7, 9, dtype=torch.float64), 15, 5,
                                           torch.tensor([10.0, -30.0])).numpy(), 1.0, atol=1e-14)


@pytest.mark.parametrize("radius, sigma", [(6, 2), (9, 2.5), (20, 15)])
def test_motion_blur_matches_imagecorruptions(radius, sigma):
    x = images(n=4, h=45, w=43, seed=3)
    angles = torch.tensor([-44.3, -12.0, 7.77, 41.5])
    got = motion_blur(x, radius, sigma, angles)
    ref = np.stack([published_motion_blur(a, radius, sigma, float(t)) for a, t in zip(hwc(x), angles)])
    np.testing.assert_allclose(hwc(got), ref, atol=1e-12)


@pytest.mark.parametrize("table, severity", [("cifar", 1), ("cifar", 5), ("imagenet", 2)])
def test_motion_blur_corruption_with_the_generators_angles(table, severity):
    x = images(n=3, h=48, w=48, seed=5)
    radius, sigma = SEVERITY_CONSTANTS[table]["motion_blur"][severity - 1]
    angles = torch.rand(3, generator=torch.Generator().manual_seed(4), dtype=torch.float64) * 90 - 45
    ref = np.stack([np.clip(published_motion_blur(a, radius, sigma, float(t)), 0, 1) for a, t in zip(hwc(x), angles)])
    np.testing.assert_allclose(hwc(corrupt(x, "motion_blur", severity, seed=4, constants=table)), ref, atol=1e-12)


def published_snow(img, c, z, angle):
    """make_cifar_c.py's snow on one (H, H, 3) or (H, H) image, given its standard normal
    draws z (H, H) and blur angle: the layer goes through an 8-bit PNG (truncated) into
    ImageMagick's motion blur, whose 8-bit output is rounded; grey = OpenCV RGB2GRAY."""
    layer = published_clipped_zoom((c[0] + c[1] * z)[..., None], c[2])[..., 0]
    layer[layer < c[3]] = 0
    layer = (np.clip(layer, 0, 1) * 255).astype(np.uint8).astype(np.float64)
    layer = np.round(published_motion_blur(layer, c[4], c[5], angle)) / 255.0
    if img.ndim == 3:
        layer = layer[..., None]
        grey = (img @ np.array([0.299, 0.587, 0.114]))[..., None]
    else:
        grey = img
    x = c[6] * img + (1 - c[6]) * np.maximum(img, grey * 1.5 + 0.5)
    return np.clip(x + layer + np.rot90(layer, k=2), 0, 1)


@pytest.mark.parametrize("channels", [3, 1])
@pytest.mark.parametrize("table, severity", [("cifar", 1), ("cifar", 3), ("cifar", 5), ("imagenet", 4)])
def test_snow_with_the_generators_draws(table, severity, channels):
    x = images(n=3, c=channels, h=40, w=40, seed=6)
    c = SEVERITY_CONSTANTS[table]["snow"][severity - 1]
    g = torch.Generator().manual_seed(9)
    z = torch.randn((3, 1, 40, 40), generator=g, dtype=torch.float64)[:, 0].numpy()
    angles = (torch.rand(3, generator=g, dtype=torch.float64) * 90 - 135).numpy()
    imgs = hwc(x) if channels == 3 else x[:, 0].numpy()
    ref = np.stack([published_snow(a, c, z[i], angles[i]) for i, a in enumerate(imgs)])
    got = corrupt(x, "snow", severity, seed=9, constants=table)
    np.testing.assert_allclose(hwc(got) if channels == 3 else got[:, 0].numpy(), ref, atol=1e-12)


@functools.lru_cache(maxsize=None)
def published_frost_picture(name, shrink):
    """A frost photograph as cv2.imread + [..., [2, 1, 0]] gives it (RGB, alpha dropped),
    shrunk as cv2.resize(fx=fy=0.2) does: its output pixel i samples (i + 0.5) / 0.2 - 0.5
    = 5 i + 2 exactly, so every fifth pixel from the third."""
    with resources.files("robustx.metrics").joinpath("frost", name).open("rb") as f:
        rgb = np.asarray(Image.open(f).convert("RGB")).astype(np.float64)
    return rgb[2::5, 2::5] if shrink else rgb


# make_cifar_c.py draws idx = np.random.randint(5) over frost1..frost6 (so frost6 never);
# frost3.png decodes to frost2.png's pixels, which robustx ships once.
PUBLISHED_FROST = ("frost1.png", "frost2.png", "frost2.png", "frost4.jpg", "frost5.jpg")


def published_frost(img, c, picture, top, left):
    """make_cifar_c.py's frost: clip(a x + b crop) on the 0..255 scale, here on 0..1."""
    h, w = img.shape[:2]
    crop = picture[top:top + h, left:left + w]
    if img.ndim == 2:  # imagecorruptions' grey images: rgb2gray of the crop
        crop = crop @ np.array([0.2989, 0.5870, 0.1140])
    return np.clip(c[0] * img + c[1] * crop / 255.0, 0, 1)


@pytest.mark.parametrize("channels", [3, 1])
@pytest.mark.parametrize("table, severity, side", [("cifar", 1, 32), ("cifar", 5, 32), ("imagenet", 3, 224)])
def test_frost_with_the_generators_crops(table, severity, side, channels):
    assert FROST_PICTURES == PUBLISHED_FROST
    n = 12 if table == "cifar" else 3
    x = images(n=n, c=channels, h=side, w=side, seed=7)
    c = SEVERITY_CONSTANTS[table]["frost"][severity - 1]
    g = torch.Generator().manual_seed(2)
    which = torch.randint(5, (n,), generator=g)
    corner = torch.rand((n, 2), generator=g, dtype=torch.float64)
    imgs = hwc(x) if channels == 3 else x[:, 0].numpy()
    ref = []
    for i, a in enumerate(imgs):
        picture = published_frost_picture(PUBLISHED_FROST[which[i]], table == "cifar")
        top = int(corner[i, 0] * (picture.shape[0] - side))  # uniform in 0 .. h' - side - 1, as randint
        left = int(corner[i, 1] * (picture.shape[1] - side))
        ref.append(published_frost(a, c, picture, top, left))
    got = corrupt(x, "frost", severity, seed=2, constants=table)
    np.testing.assert_allclose(hwc(got) if channels == 3 else got[:, 0].numpy(), np.stack(ref), atol=1e-12)


def test_linear_resize_is_opencvs_and_shrinks_by_taking_every_fifth_pixel():
    """OpenCV INTER_LINEAR and torch's bilinear (align_corners=False, no antialias, the
    given scale) share the half-pixel convention s = (i + 0.5) / f - 0.5, clamped."""
    for n in (600, 900, 315, 560, 350, 527, 495, 660):  # the frost photographs' sides
        m = linear_resize_matrix(n, 0.2)
        assert m.shape == (round(n * 0.2), n)
        assert torch.equal(m, torch.eye(n, dtype=torch.float64)[2::5][: m.shape[0]])
    a = torch.rand(1, 1, 37, 50, dtype=torch.float64)
    for f in (0.3, 0.6, 1.25, 2.5):  # sizes where rounding and flooring agree
        rows, cols = linear_resize_matrix(37, f), linear_resize_matrix(50, f)
        assert rows.shape[0] == math.floor(37 * f) and cols.shape[0] == math.floor(50 * f)
        ref = F.interpolate(a, scale_factor=f, mode="bilinear", align_corners=False, recompute_scale_factor=False)
        np.testing.assert_allclose((rows @ a[0, 0] @ cols.T).numpy(), ref[0, 0].numpy(), atol=1e-12)


def test_frost_at_sizes_beyond_the_photographs():
    """An image larger than a (scaled) photograph enlarges them all just enough: a 64 px
    image with the CIFAR constants (0.2 x 315 = 63 rows < 65) and a 400 x 330 one with the
    ImageNet constants (photographs 315 rows, 527 columns) both get crops, a blend of
    weight b on top of a u with F in [0, 255]."""
    for shape, table in (((2, 3, 64, 64), "cifar"), ((1, 3, 400, 330), "imagenet")):
        x = torch.full(shape, 0.25)
        a, b = SEVERITY_CONSTANTS[table]["frost"][2]
        frost = (corrupt(x, "frost", 3, seed=1, constants=table) - a * 0.25) / b
        assert frost.min() >= -1e-5 and frost.max() <= 1 + 1e-5 and frost.std() > 0.05


def published_elastic(img, c, moves, ux, uy):
    """make_cifar_c.py's elastic_transform on one (H, W, C) image given its affine draws
    moves (3, 2) in [-1, 1) (times c[2]) and uniform fields ux, uy (H, W) in [-1, 1):
    cv2.getAffineTransform solved with NumPy, cv2.warpAffine (BORDER_REFLECT_101, bilinear)
    as SciPy affine_transform(order=1, mode='mirror') in (row, column) coordinates,
    skimage gaussian(mode='reflect', truncate=3) and map_coordinates(order=1, mode='reflect')."""
    h, w = img.shape[:2]
    centre = np.float64([h, w]) // 2
    s = min(h, w) // 3
    pts1 = np.array([centre + s, [centre[0] + s, centre[1] - s], centre - s])
    pts2 = pts1 + c[2] * moves
    forward = np.linalg.solve(np.hstack([pts1, np.ones((3, 1))]), pts2).T  # M (2, 3): M [p, 1] = q
    inverse = np.linalg.inv(np.vstack([forward, [0, 0, 1]]))  # warpAffine samples the source at M^-1 (x, y)
    matrix = np.array([[inverse[1, 1], inverse[1, 0]], [inverse[0, 1], inverse[0, 0]]])
    offset = np.array([inverse[1, 2], inverse[0, 2]])
    warped = np.stack([ndimage.affine_transform(img[..., k], matrix, offset, order=1, mode="mirror")
                       for k in range(img.shape[2])], -1)
    dx = filters.gaussian(ux, sigma=c[1], mode="reflect", truncate=3) * c[0]
    dy = filters.gaussian(uy, sigma=c[1], mode="reflect", truncate=3) * c[0]
    y, x = np.mgrid[:h, :w]
    out = np.stack([ndimage.map_coordinates(warped[..., k], (y + dy, x + dx), order=1, mode="reflect")
                    for k in range(img.shape[2])], -1)
    return np.clip(out, 0, 1)


def test_affine_warp_matches_scipy_mirror():
    x = images(n=2, h=14, w=11, seed=1)
    src = torch.tensor([[9.0, 8.0], [9.0, 2.0], [3.0, 2.0]])
    dst = src + torch.tensor([[[2.5, -3.0], [-1.2, 4.1], [0.3, 0.7]], [[-4.0, 1.5], [6.0, -2.0], [1.0, 5.0]]])
    got = affine_warp(x, src, dst)
    for i in range(2):
        forward = np.linalg.solve(np.hstack([src.numpy(), np.ones((3, 1))]), dst[i].numpy()).T
        inv = np.linalg.inv(np.vstack([forward, [0, 0, 1]]))
        matrix, offset = np.array([[inv[1, 1], inv[1, 0]], [inv[0, 1], inv[0, 0]]]), np.array([inv[1, 2], inv[0, 2]])
        for k in range(3):
            ref = ndimage.affine_transform(x[i, k].numpy(), matrix, offset, order=1, mode="mirror")
            np.testing.assert_allclose(got[i, k].numpy(), ref, atol=1e-12)


def test_displace_matches_map_coordinates_reflect():
    """A fixed displacement field, reaching far beyond the borders (several periods)."""
    x = images(n=2, h=9, w=13, seed=2)
    g = torch.Generator().manual_seed(3)
    dy = (torch.rand(2, 9, 13, generator=g, dtype=torch.float64) - 0.5) * 60
    dx = (torch.rand(2, 9, 13, generator=g, dtype=torch.float64) - 0.5) * 60
    got = displace(x, dy, dx)
    y, xx = np.mgrid[:9, :13]
    for i in range(2):
        for k in range(3):
            ref = ndimage.map_coordinates(x[i, k].numpy(), (y + dy[i].numpy(), xx + dx[i].numpy()), order=1,
                                          mode="reflect")
            np.testing.assert_allclose(got[i, k].numpy(), ref, atol=1e-12)


def elastic_draws(n, h, w, seed):
    g = torch.Generator().manual_seed(seed)
    moves = torch.rand((n, 3, 2), generator=g, dtype=torch.float64) * 2 - 1
    ux = torch.rand((n, h, w), generator=g, dtype=torch.float64) * 2 - 1
    uy = torch.rand((n, h, w), generator=g, dtype=torch.float64) * 2 - 1
    return moves.numpy(), ux.numpy(), uy.numpy()


@pytest.mark.parametrize("table, severity, side", [("cifar", 1, 32), ("cifar", 2, 32), ("cifar", 5, 32),
                                                   ("imagenet", 1, 224), ("imagenet", 4, 224)])
def test_elastic_transform_with_the_generators_draws(table, severity, side):
    x = images(n=2, h=side, w=side, seed=8)
    c = SEVERITY_CONSTANTS[table]["elastic_transform"][severity - 1]
    moves, ux, uy = elastic_draws(2, side, side, 5)
    ref = np.stack([published_elastic(a, c, moves[i], ux[i], uy[i]) for i, a in enumerate(hwc(x))])
    np.testing.assert_allclose(hwc(corrupt(x, "elastic_transform", severity, seed=5, constants=table)), ref, atol=1e-9)


def test_elastic_transform_scales_its_lengths_with_the_image():
    """At 64 px the CIFAR constants are IMSIZE x fraction with IMSIZE = 64, as the authors'
    Tiny-ImageNet-C generator (64 px) writes its own: twice the 32 px lengths."""
    x = images(n=1, h=64, w=64, seed=9)
    c = [2 * v for v in SEVERITY_CONSTANTS["cifar"]["elastic_transform"][3]]
    moves, ux, uy = elastic_draws(1, 64, 64, 6)
    ref = published_elastic(hwc(x)[0], c, moves[0], ux[0], uy[0])
    np.testing.assert_allclose(hwc(corrupt(x, "elastic_transform", 4, seed=6))[0], ref, atol=1e-9)


# The published code's own NumPy draws, in its order, for the distribution test.
def numpy_draws(name, c, shape, rng):
    h, w = shape
    if name == "motion_blur":
        return {"angle": rng.uniform(-45, 45)}
    if name == "snow":
        return {"z": rng.normal(size=(h, w)), "angle": rng.uniform(-135, -45)}
    if name == "frost":
        picture = published_frost_picture(PUBLISHED_FROST[rng.integers(5)], True)
        return {"picture": picture, "top": rng.integers(0, picture.shape[0] - h),
                "left": rng.integers(0, picture.shape[1] - w)}
    return {"moves": rng.uniform(-1, 1, size=(3, 2)), "ux": rng.uniform(-1, 1, size=(h, w)),
            "uy": rng.uniform(-1, 1, size=(h, w))}


PUBLISHED_CORRUPTION = {
    "motion_blur": lambda a, c, d: np.clip(published_motion_blur(a, *c, d["angle"]), 0, 1),
    "snow": lambda a, c, d: published_snow(a, c, d["z"], d["angle"]),
    "frost": lambda a, c, d: published_frost(a, c, d["picture"], d["top"], d["left"]),
    "elastic_transform": lambda a, c, d: published_elastic(a, c, d["moves"], d["ux"], d["uy"]),
}


@pytest.fixture(scope="module")
def cifar_images(aisafety_dir):
    x = torch.from_numpy(np.load(aisafety_dir / "cifar10_100_origin_inputs.npy"))
    y = torch.from_numpy(np.load(aisafety_dir / "cifar10_100_origin_labels.npy")).argmax(1)
    return x, y


@pytest.mark.parametrize("name, severity", [("motion_blur", 5), ("snow", 3), ("frost", 4), ("elastic_transform", 5)])
def test_random_parts_match_the_published_draws_in_distribution(cifar_images, name, severity):
    """Over 40 seeds on 3 real CIFAR images: the mean, the std, the mean absolute change and
    the mean absolute differences between neighbouring rows and between neighbouring
    columns (which see the blur's direction) of each corrupted image, with this module's
    torch draws and with the published code's NumPy draws (np.random.default_rng(seed)),
    agree within 4.5 standard errors."""
    x = cifar_images[0][[3, 41, 77]]
    c = PUBLISHED[name][severity - 1]
    runs = 40

    def stats(u):  # (3 images, 5 statistics)
        return np.stack([u.mean(axis=(1, 2, 3)), u.std(axis=(1, 2, 3)), np.abs(u - hwc(x)).mean(axis=(1, 2, 3)),
                         np.abs(np.diff(u, axis=1)).mean(axis=(1, 2, 3)),
                         np.abs(np.diff(u, axis=2)).mean(axis=(1, 2, 3))], 1)

    ours = np.stack([stats(hwc(corrupt(x, name, severity, seed=s))) for s in range(runs)])
    theirs = []
    for s in range(runs):
        rng = np.random.default_rng(s)
        theirs.append(stats(np.stack([PUBLISHED_CORRUPTION[name](a, c, numpy_draws(name, c, (32, 32), rng))
                                      for a in hwc(x)])))
    theirs = np.stack(theirs)
    se = np.sqrt((ours.var(0, ddof=1) + theirs.var(0, ddof=1)) / runs)
    assert (np.abs(ours.mean(0) - theirs.mean(0)) <= 4.5 * se + 1e-12).all(), (ours.mean(0), theirs.mean(0), se)


def test_severities_grow_the_damage_on_real_images(cifar_images, aisafety_dir):
    """On the 100 real CIFAR images (seed 0): motion blur, snow and frost lower the
    correlation with the clean image severity by severity (CIFAR motion blur's severities
    3 and 4, radius 6 and 8 at sigma 2, differ only by taps of weight e^-18). Elastic
    trades a shrinking affine warp for a growing local deformation, so pixel distances fall
    with severity; its damage is the ResNet-20's error (mean over 4 seeds), which grows
    (severities 1 and 2 within 2 images of noise, as AlexNet's published ImageNet-C errors
    are not monotone there: hendrycks/robustness issue 10)."""
    from robustx.models import resnet20_cifar

    x, y = cifar_images
    x = x.float()

    def decorrelation(xc):
        a, b = (t.flatten(1) - t.flatten(1).mean(1, keepdim=True) for t in (xc, x))
        return 1 - ((a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))).mean().item()

    for name in ("motion_blur", "snow", "frost"):
        damage = [decorrelation(corrupt(x, name, s, seed=0)) for s in SEVERITIES]
        assert all(later >= earlier - 1e-6 for earlier, later in zip(damage, damage[1:])), (name, damage)
        assert damage[-1] > 3 * damage[0], (name, damage)
    model = resnet20_cifar(aisafety_dir / "resnet20_cifar.pt").eval()
    with torch.no_grad():
        errors = [np.mean([(model(corrupt(x, "elastic_transform", s, seed=k)).argmax(1) != y).double().mean().item()
                           for k in range(4)]) for s in SEVERITIES]
    assert all(later >= earlier - 0.02 for earlier, later in zip(errors, errors[1:])), errors
    assert errors[-1] > errors[0] + 0.1, errors


def test_new_corruptions_chunk_independent_errors():
    """corruption_errors draws each chunk's randomness from (seed, corruption, severity,
    offset + start): a part evaluated at its offset gives the whole run's errors."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 12 * 10, 3))
    x = images(n=8).float()
    y = net(x).argmax(1)
    names = ("motion_blur", "snow", "frost", "elastic_transform")
    whole = corruption_errors(net, x, y, corruptions=names, severities=(5,), batch_size=4, progress=False)
    parts = [corruption_errors(net, x[i:i + 4], y[i:i + 4], corruptions=names, severities=(5,), batch_size=4,
                               progress=False, offset=i) for i in (0, 4)]
    for name in names:
        assert whole[name][0] == pytest.approx((parts[0][name][0] + parts[1][name][0]) / 2, abs=1e-12)


def test_motion_blur_angles_are_distributed_as_published():
    """The blur direction of a point of light, from the centroid of its streak, over 300
    images: this module's draws against 300 of np.random.uniform(-45, 45) through the
    published blur (two-sample KS test)."""
    from scipy import stats

    point = torch.zeros(300, 1, 41, 41, dtype=torch.float64)
    point[:, :, 20, 20] = 1.0
    y, x = np.mgrid[:41, :41] - 20

    def direction(streak):
        return np.degrees(np.arctan2(-(streak * y).sum(), -(streak * x).sum()))

    ours = [direction(a) for a in corrupt(point, "motion_blur", 5, seed=1, constants="imagenet")[:, 0].numpy()]
    rng = np.random.default_rng(1)
    theirs = [direction(published_motion_blur(point[0, 0].numpy(), 20, 15, rng.uniform(-45, 45))) for _ in range(300)]
    assert -45 <= min(ours) and max(ours) <= 45
    assert stats.ks_2samp(ours, theirs).pvalue > 1e-3
