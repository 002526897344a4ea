"""ALD_p, SSIM/ASS and PSD against independent references: NumPy loops written from the
formulas, scikit-image's structural_similarity, and a 4x4 case worked out by hand."""
import math

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from robustx.metrics import ald, ass, psd, ssim


def pair(shape, seed=0, scale=0.05, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=g, dtype=dtype)
    x_adv = (x + scale * torch.randn(shape, generator=g, dtype=dtype)).clamp(0, 1)
    return x, x_adv


SUCCESS = torch.tensor([True, False, True, True, False, True])


def reference_ald(x, x_adv, success, p):
    vals = []
    for i in np.flatnonzero(success.numpy()):
        a, b = x[i].numpy().ravel(), x_adv[i].numpy().ravel()
        if p == 0:
            vals.append(np.mean(np.round(255 * a) != np.round(255 * b)))
        elif p == 2:
            vals.append(math.sqrt(sum((u - v) ** 2 for u, v in zip(a, b))))
        else:
            vals.append(max(abs(u - v) for u, v in zip(a, b)))
    return float(np.mean(vals))


@pytest.mark.parametrize("p", [0, 2, "inf", math.inf])
def test_ald_matches_loops(p):
    x, x_adv = pair((6, 3, 5, 5))
    ref = reference_ald(x, x_adv, SUCCESS, 0 if p == 0 else (2 if p == 2 else "inf"))
    assert ald(x, x_adv, SUCCESS, p) == pytest.approx(ref, rel=1e-12)


def test_ald_0_uses_clip_values():
    x, x_adv = pair((6, 3, 5, 5))
    lo, hi = -1.0, 3.0
    got = ald(lo + (hi - lo) * x, lo + (hi - lo) * x_adv, SUCCESS, 0, clip_values=(lo, hi))
    assert got == pytest.approx(reference_ald(x, x_adv, SUCCESS, 0), rel=1e-12)
    with pytest.raises(ValueError, match="x_adv"):
        ald(x, x_adv + 2.0, SUCCESS, 0)


@pytest.mark.parametrize("shape", [(4, 3, 32, 32), (4, 1, 8, 8), (4, 3, 8, 11), (4, 1, 7, 7)])
def test_ssim_matches_scikit_image(shape):
    for scale in (0.01, 0.2):
        x, x_adv = pair(shape, seed=int(scale * 100), scale=scale)
        got = ssim(x, x_adv, data_range=1.0)
        for i in range(shape[0]):
            ref = structural_similarity(x[i].numpy(), x_adv[i].numpy(), channel_axis=0, data_range=1.0,
                                        gaussian_weights=False, use_sample_covariance=True)
            assert got[i].item() == pytest.approx(ref, abs=1e-10)


def test_ass_is_the_mean_over_success_with_data_range():
    x, x_adv = pair((6, 3, 9, 9), seed=3, scale=0.1)
    x, x_adv = 255 * x, 255 * x_adv
    ref = np.mean([structural_similarity(x[i].numpy(), x_adv[i].numpy(), channel_axis=0, data_range=255.0)
                   for i in range(6) if SUCCESS[i]])
    assert ass(x, x_adv, SUCCESS, data_range=255.0) == pytest.approx(ref, abs=1e-10)
    assert ass(x, x, SUCCESS, data_range=255.0) == pytest.approx(1.0, abs=1e-12)


def test_ssim_float32_input_close_to_float64():
    x, x_adv = pair((3, 3, 16, 16), seed=5, dtype=torch.float32)
    ref = [structural_similarity(x[i].double().numpy(), x_adv[i].double().numpy(), channel_axis=0, data_range=1.0)
           for i in range(3)]
    np.testing.assert_allclose(ssim(x, x_adv).numpy(), ref, atol=1e-6)


def test_psd_hand_computed_4x4():
    x = torch.zeros(1, 1, 4, 4, dtype=torch.float64)
    x[0, 0, 1, 1] = 0.9
    x_adv = x.clone()
    x_adv[0, 0, 0, 0] += 0.1    # neighbourhood (reflect): four 0.9, five 0 -> std = sqrt(0.2)
    x_adv[0, 0, 1, 1] -= 0.05   # one 0.9, eight 0 -> std = 0.9 sqrt(8) / 9
    x_adv[0, 0, 3, 3] += 0.002  # all 0 -> std = 0, floored at 1/255
    expected = 0.1 / math.sqrt(0.2) + 0.05 * 9 / (0.9 * math.sqrt(8)) + 0.002 * 255
    assert expected == pytest.approx(0.9103834930466158, rel=1e-12)
    assert psd(x, x_adv, torch.tensor([True])) == pytest.approx(expected, rel=1e-12)
    # a lower floor only changes the flat pixel's weight
    assert psd(x, x_adv, torch.tensor([True]), std_floor=1e-3) == pytest.approx(expected - 0.51 + 2.0, rel=1e-12)


def reference_psd(x, x_adv, success, floor=1 / 255):
    total = []
    for i in [j for j in range(x.shape[0]) if success[j]]:
        s = 0.0
        for c in range(x.shape[1]):
            img = np.pad(x[i, c].numpy(), 1, mode="reflect")
            for r in range(x.shape[2]):
                for q in range(x.shape[3]):
                    std = np.std(img[r:r + 3, q:q + 3])
                    s += abs(x_adv[i, c, r, q].item() - x[i, c, r, q].item()) / max(std, floor)
        total.append(s)
    return float(np.mean(total))


def test_psd_matches_loop():
    x, x_adv = pair((6, 3, 6, 5), seed=7)
    x[0, 0, :3, :3] = 1.0  # a flat patch
    assert psd(x, x_adv, SUCCESS) == pytest.approx(reference_psd(x, x_adv, SUCCESS), rel=1e-10)


def test_psd_is_the_same_in_8bit_units():
    """The floor follows the data range: 255 x in [0, 255] gives the PSD of x in [0, 1] (the
    images include flat patches, where the floor decides Sen), and both match the loop with
    its floor of one 8-bit level; a fixed floor of 1/255 in [0, 255] units would not."""
    x, x_adv = pair((6, 3, 6, 5), seed=3)
    x[:, :, :3, :3] = 1.0
    x[:, :, 3:, 3:] = 0.0
    unit = psd(x, x_adv, SUCCESS)
    assert unit == pytest.approx(reference_psd(x, x_adv, SUCCESS, floor=1 / 255), rel=1e-10)
    scaled = psd(255 * x, 255 * x_adv, SUCCESS, data_range=255.0)
    assert scaled == pytest.approx(unit, rel=1e-12)
    assert reference_psd(255 * x, 255 * x_adv, SUCCESS, floor=1 / 255) > 1.5 * unit


METRICS = [lambda x, a, s: ald(x, a, s, 2), ass, psd]
IMAGES = pair((6, 3, 8, 8))


@pytest.mark.parametrize("fn", METRICS)
def test_empty_success_is_nan_with_warning(fn):
    x, x_adv = IMAGES
    with pytest.warns(RuntimeWarning, match="success"):
        assert math.isnan(fn(x, x_adv, torch.zeros(6, dtype=torch.bool)))


@pytest.mark.parametrize("fn", METRICS)
def test_bad_inputs_name_the_argument(fn):
    x, x_adv = IMAGES
    with pytest.raises(ValueError, match="x_adv"):
        fn(x, x_adv[:, :, :7], SUCCESS)
    with pytest.raises(TypeError, match="success"):
        fn(x, x_adv, SUCCESS.long())
    with pytest.raises(ValueError, match="success"):
        fn(x, x_adv, SUCCESS[:5])
    with pytest.raises(TypeError, match="x"):
        fn(x.numpy(), x_adv, SUCCESS)


def test_bad_norm_and_sizes():
    x, x_adv = pair((6, 3, 6, 6))
    with pytest.raises(ValueError, match="norm must"):
        ald(x, x_adv, SUCCESS, 3)
    with pytest.raises(ValueError, match="7x7"):
        ass(x, x_adv, SUCCESS)
    with pytest.raises(ValueError, match="data_range"):
        ssim(*pair((2, 1, 8, 8)), data_range=0.0)
    with pytest.raises(ValueError, match="std_floor"):
        psd(x, x_adv, SUCCESS, std_floor=-1.0)
    with pytest.raises(ValueError, match="data_range"):
        psd(x, x_adv, SUCCESS, data_range=0.0)
