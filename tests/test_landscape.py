"""Input-space landscapes: analytic planes on linear models, the loss at the origin, chunking,
directions, plots, JSON form, command line and bad input."""
import dataclasses
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustx.landscape import (
    Landscape,
    _boundary_mask,
    _zero_crossings,
    adversarial_direction,
    input_landscape,
    random_direction,
)
from robustx.cli import main
from toy_models import linear_model, small_cnn


def images(n: int, dtype=torch.float64, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, 1, 4, 4, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def weight_gap(model: nn.Module, y: torch.Tensor):
    """w_y - w_o and b_y - b_o of a two-class linear model, per image."""
    w, b = model[1].weight, model[1].bias
    return w[y] - w[1 - y], b[y] - b[1 - y]


@pytest.mark.parametrize("norm", ["inf", 2])
def test_linear_two_class_margin_is_the_analytic_plane(norm):
    model = linear_model(2)
    x = images(3)
    y = torch.tensor([0, 1, 0])
    land = input_landscape(model, x, y, span=0.7, steps=9, surface="margin", norm=norm,
                           clip_values=None, progress=False)  # the analytic plane has no box
    dw, db = weight_gap(model, y)
    m0 = (dw * x.flatten(1)).sum(1) + db
    # The CE gradient of a 2-class linear model is -(1 - p_y)(w_y - w_o): the adversarial
    # direction lowers the margin at rate ||w_y - w_o||_q (q = 1 for L-inf steps, 2 for L2).
    slope1 = -dw.norm(p=1 if norm == "inf" else 2, dim=1)
    slope2 = (dw * land.directions[1].flatten(1)).sum(1)
    a = land.axis
    expected = m0[:, None, None] + slope1[:, None, None] * a[None, :, None] + slope2[:, None, None] * a[None, None, :]
    torch.testing.assert_close(land.values, expected, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(land.margin, expected, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(land.slices[0], m0[:, None] + slope1[:, None] * a, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(land.slices[1], m0[:, None] + slope2[:, None] * a, rtol=1e-10, atol=1e-10)


def test_multiclass_linear_margin_matches_direct_evaluation():
    model = linear_model(4)
    x = images(2)
    y = torch.tensor([3, 1])
    d1, d2 = torch.randn(2, 2, 1, 4, 4, dtype=torch.float64)
    land = input_landscape(model, x, y, span=2.0, steps=7, directions=(d1, d2), surface="margin", clip_values=None,
                           progress=False)  # compared with unclipped points
    w, b = model[1].weight, model[1].bias
    for n in range(2):
        for i, alpha in enumerate(land.axis):
            for j, beta in enumerate(land.axis):
                z = w @ (x[n] + alpha * d1[n] + beta * d2[n]).flatten() + b
                others = torch.cat([z[: y[n]], z[y[n] + 1:]])
                assert land.values[n, i, j].item() == pytest.approx((z[y[n]] - others.max()).item(), abs=1e-10)
    assert land.direction_names == ("given", "given")


def test_loss_at_origin_equals_model_loss_and_grid_matches_direct_points():
    model = small_cnn().float()
    x = images(4, torch.float32)
    y = torch.tensor([0, 1, 2, 3])
    land = input_landscape(model, x, y, span=0.3, steps=11, clip_values=None, progress=False)  # unclipped points
    with torch.no_grad():
        ce = F.cross_entropy(model(x), y, reduction="none").double()
    torch.testing.assert_close(land.values[:, 5, 5], ce, rtol=1e-5, atol=1e-6)
    d1, d2 = land.directions
    for n, i, j in [(0, 0, 10), (1, 3, 7), (3, 10, 0)]:
        point = x[n : n + 1] + land.axis[i].float() * d1[n] + land.axis[j].float() * d2[n]
        with torch.no_grad():
            expected = F.cross_entropy(model(point), y[n : n + 1]).item()
        assert land.values[n, i, j].item() == pytest.approx(expected, rel=1e-5, abs=1e-6)


def test_slices_equal_the_middle_row_and_column_for_odd_steps():
    model = small_cnn().double()
    land = input_landscape(model, images(3), torch.tensor([0, 1, 4]), span=1.0, steps=9, progress=False)
    torch.testing.assert_close(land.slices[0], land.values[:, :, 4], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(land.slices[1], land.values[:, 4, :], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(land.slice_margins[0], land.margin[:, :, 4], rtol=1e-12, atol=1e-12)


def test_chunking_does_not_change_values():
    model = small_cnn().double()
    x, y = images(3), torch.tensor([1, 2, 3])
    kwargs = dict(span=0.5, steps=6, surface="loss", progress=False, seed=5)
    big = input_landscape(model, x, y, batch_size=4096, **kwargs)
    small = input_landscape(model, x, y, batch_size=7, **kwargs)
    torch.testing.assert_close(small.values, big.values, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(small.margin, big.margin, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(small.slices, big.slices, rtol=1e-12, atol=1e-12)


def test_axis_spans_minus_to_plus_span():
    land = input_landscape(small_cnn().double(), images(1), torch.tensor([0]), span=0.25, steps=5, progress=False)
    torch.testing.assert_close(land.axis, torch.tensor([-0.25, -0.125, 0.0, 0.125, 0.25], dtype=torch.float64))
    assert land.values.shape == (1, 5, 5) and land.directions.shape == (2, 1, 1, 4, 4)


def test_adversarial_direction_is_the_normalised_gradient():
    model = small_cnn().double()
    x, y = images(2), torch.tensor([0, 3])
    grads = []
    for n in range(2):
        xn = x[n : n + 1].clone().requires_grad_(True)
        grads.append(torch.autograd.grad(F.cross_entropy(model(xn), y[n : n + 1]), xn)[0][0])
    grads = torch.stack(grads)
    torch.testing.assert_close(adversarial_direction(model, x, y, "inf"), grads.sign())
    unit = adversarial_direction(model, x, y, 2)
    torch.testing.assert_close(unit, grads / grads.flatten(1).norm(dim=1)[:, None, None, None])
    assert all(p.grad is None for p in model.parameters())


def test_random_directions_are_unit_and_seeded():
    rad = random_direction((3, 1, 4, 4), "inf", seed=2)
    assert set(rad.unique().tolist()) == {-1.0, 1.0}
    assert 0.3 < (rad > 0).double().mean() < 0.7
    gauss = random_direction((3, 1, 4, 4), 2, seed=2, dtype=torch.float64)
    torch.testing.assert_close(gauss.flatten(1).norm(dim=1), torch.ones(3, dtype=torch.float64))
    torch.testing.assert_close(random_direction((3, 1, 4, 4), 2, seed=2, dtype=torch.float64), gauss)
    assert not torch.equal(random_direction((3, 1, 4, 4), 2, seed=3, dtype=torch.float64), gauss)
    land = input_landscape(small_cnn().double(), images(3), torch.tensor([0, 1, 2]), span=1.0, steps=3,
                           directions=("random", "random"), seed=2, progress=False)
    assert not torch.equal(land.directions[0], land.directions[1])  # seed and seed + 1


def test_clip_values_clamp_the_grid_points():
    model = small_cnn().double()
    x, y = images(1), torch.tensor([2])
    land = input_landscape(model, x, y, span=2.0, steps=3, surface="margin", clip_values=(0.0, 1.0), progress=False)
    d1, d2 = land.directions
    corner = (x + 2.0 * d1 - 2.0 * d2).clamp(0, 1)
    with torch.no_grad():
        z = model(corner)[0]
    expected = z[2] - torch.cat([z[:2], z[3:]]).max()
    assert land.values[0, 2, 0].item() == pytest.approx(expected.item(), abs=1e-12)


def test_labels_default_to_predictions_and_model_state_is_restored():
    model = small_cnn().double().train()
    model[0].weight.requires_grad_(True)
    land = input_landscape(model, images(4), span=0.5, steps=3, surface="margin", progress=False)
    assert (land.margin[:, 1, 1] >= 0).all()
    assert model.training and model[0].weight.requires_grad and model[0].weight.grad is None


def test_plots_write_pngs(tmp_path):
    land = input_landscape(small_cnn().double(), images(2), torch.tensor([0, 1]), span=3.0, steps=7, progress=False)
    paths = [
        land.plot(tmp_path / "c.png", "contour", [0, 1]),
        land.plot(tmp_path / "sub" / "s.png", "surface", 1),
        land.plot_slices(tmp_path / "sl.png", 0),
    ]
    for path in paths:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="kind"):
        land.plot(tmp_path / "x.png", "heatmap")
    with pytest.raises(ValueError, match="index"):
        land.plot(tmp_path / "x.png", "contour", 2)


def test_plot_text_is_drawn_literally(tmp_path):
    land = input_landscape(small_cnn().double(), images(2), torch.tensor([0, 1]), span=1.0, steps=3, progress=False)
    land = dataclasses.replace(land, direction_names=("conv$^$", "$_$"))
    titles = ["a$\\foo$", "$x^$"]
    paths = [land.plot(tmp_path / f"{kind}.png", kind, [0, 1], titles=titles) for kind in ("contour", "surface")]
    paths.append(land.plot_slices(tmp_path / "slices.png", [0, 1], titles=titles))
    for path in paths:  # mathtext would fail on every one of these strings
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_boundary_helpers_locate_sign_changes():
    import numpy as np

    assert _zero_crossings(np.array([-1.0, 0.0, 1.0]), np.array([1.0, -1.0, -3.0])) == [-0.5]
    margin = np.array([[1.0, 1.0, -1.0], [1.0, -1.0, -1.0], [-1.0, -1.0, -1.0]])
    edge = _boundary_mask(margin)
    assert edge.tolist() == [[False, True, False], [True, False, False], [False, False, False]]


def test_command_line_writes_plots(tmp_path, capsys):
    from robustx.models import DigitsCNN

    weights = tmp_path / "w.pt"
    torch.manual_seed(0)
    torch.save(DigitsCNN().state_dict(), weights)
    status = main(["landscape", "--weights", str(weights), "--images", "0", "3", "--steps", "5",
                   "--surface", "margin", "--out", str(tmp_path / "out"), "--no-progress"])
    assert status == 0
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == sorted(f"digits_{i}_margin_{k}.png" for i in (0, 3) for k in ("contour", "surface", "slices"))
    assert sorted(capsys.readouterr().out.split()) == sorted(str(p) for p in (tmp_path / "out").iterdir())
    with pytest.raises(SystemExit) as err:
        main(["landscape", "--images", "400", "--out", str(tmp_path / "bad"), "--no-progress"])
    assert err.value.code == 2 and "images must be an int in [0, 358]" in capsys.readouterr().err


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(span=0.0), ValueError, "span"),
        (dict(span=-1.0), ValueError, "span"),
        (dict(span=float("nan")), ValueError, "span"),
        (dict(span=1.0, steps=1), ValueError, "steps"),
        (dict(span=1.0, steps=2.5), TypeError, "steps"),
        (dict(span=1.0, surface="accuracy"), ValueError, "surface"),
        (dict(span=1.0, directions=("adversarial", "pca")), ValueError, "directions"),
        (dict(span=1.0, directions=("random",)), ValueError, "directions"),
        (dict(span=1.0, directions=(torch.zeros(2, 2), "random")), ValueError, "directions"),
        (dict(span=1.0, norm=1), ValueError, "norm"),
        (dict(span=1.0, norm="fro"), ValueError, "norm"),
        (dict(span=1.0, batch_size=0), ValueError, "batch_size"),
        (dict(span=1.0, seed=-1), ValueError, "seed"),
    ],
)
def test_bad_input(kwargs, error, match):
    with pytest.raises(error, match=match):
        input_landscape(small_cnn().double(), images(2), torch.tensor([0, 1]), progress=False, **kwargs)
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        input_landscape(lambda t: t, images(2), span=1.0, progress=False)


def test_to_dict_is_json_with_the_same_numbers():
    land = input_landscape(small_cnn().double(), images(2), torch.tensor([0, 1]), span=1.0, steps=3, norm=2,
                           progress=False)
    doc = json.loads(json.dumps(land.to_dict(), allow_nan=False))
    assert doc["norm"] == "2" and doc["surface"] == "loss" and doc["direction_names"] == ["adversarial", "random"]
    for name in ("axis", "values", "margin", "slices", "slice_margins", "directions"):
        torch.testing.assert_close(torch.tensor(doc[name], dtype=torch.float64), getattr(land, name).double())


def test_bad_labels_and_images():
    model = small_cnn().double()
    with pytest.raises(ValueError, match="y must have shape"):
        input_landscape(model, images(2), torch.tensor([0]), span=1.0, progress=False)
    with pytest.raises(TypeError, match="y must hold integer"):
        input_landscape(model, images(2), torch.tensor([0.0, 1.0]), span=1.0, progress=False)
    with pytest.raises(ValueError, match="x contains NaN"):
        input_landscape(model, images(2) * float("nan"), torch.tensor([0, 1]), span=1.0, progress=False)
    land = input_landscape(model, images(1), torch.tensor([0]), span=1.0, steps=2, progress=False)
    assert isinstance(land, Landscape) and land.values.shape == (1, 2, 2)
