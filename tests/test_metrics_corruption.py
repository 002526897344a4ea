"""Corruptions against NumPy / SciPy / scikit-image / Pillow transcriptions of Hendrycks &
Dietterich's make_cifar_c.py and make_imagenet_c.py, and mCE / relative mCE against
hand-computed values. (The imagecorruptions package, a possible oracle, needs OpenCV and
pkg_resources, which this environment lacks; the references below use SciPy instead.)"""
import io
import math

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import color, filters
from torch import nn

from robustx.metrics.corruption import (
    ALEXNET_CLEAN_ERROR,
    ALEXNET_ERRORS,
    BENCHMARK,
    CORRUPTIONS,
    EXTRA_CORRUPTIONS,
    SEVERITY_CONSTANTS,
    UNAVAILABLE,
    constants_for,
    corrupt,
    corruption_score,
    defocus_disk,
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
    "zoom_blur": [(1, 1.06, 0.01), (1, 1.11, 0.01), (1, 1.16, 0.01), (1, 1.21, 0.01), (1, 1.26, 0.01)],
    "fog": [(.2, 3), (.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)],
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
    "zoom_blur": [(1, 1.11, 0.01), (1, 1.16, 0.01), (1, 1.21, 0.02), (1, 1.26, 0.02), (1, 1.31, 0.03)],
    "fog": [(1.5, 2), (2, 2), (2.5, 1.7), (2.5, 1.5), (3, 1.4)],
    "gaussian_blur": [1, 2, 3, 4, 6],
    "contrast": [0.4, .3, .2, .1, .05],
    "brightness": [.1, .2, .3, .4, .5],
    "pixelate": [0.6, 0.5, 0.4, 0.3, 0.25],
    "jpeg_compression": [25, 18, 15, 10, 7],
}


def test_constants_are_the_published_ones():
    assert set(CORRUPTIONS) | set(EXTRA_CORRUPTIONS) == set(PUBLISHED) == set(PUBLISHED_IMAGENET)
    assert set(CORRUPTIONS) | set(UNAVAILABLE) == set(BENCHMARK) and len(BENCHMARK) == 15
    for table, published in (("cifar", PUBLISHED), ("imagenet", PUBLISHED_IMAGENET)):
        for name, values in published.items():
            assert list(SEVERITY_CONSTANTS[table][name]) == values, (table, name)
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
        corrupt(x, "spatter", 1)
    with pytest.raises(ValueError, match="frost.*not available"):
        corrupt(x, "frost", 1)
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


def published_zoom_blur(img_hwc, start, stop, step):
    """make_cifar_c.py's zoom_blur on one square (H, H, C) image (clipped_zoom with its trim)."""
    from scipy.ndimage import zoom
    h = img_hwc.shape[0]
    out = np.zeros_like(img_hwc)
    factors = np.arange(start, stop, step)
    for z in factors:
        ch = int(np.ceil(h / z))
        top = (h - ch) // 2
        zoomed = zoom(img_hwc[top:top + ch, top:top + ch], (z, z, 1), order=1)
        trim = (zoomed.shape[0] - h) // 2
        out += zoomed[trim:trim + h, trim:trim + h]
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
