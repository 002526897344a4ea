"""EBD on linear models, where the distance along a direction is known in closed form."""
import math

import numpy as np
import pytest
import torch
from torch import nn

from robustx.metrics.boundary import ebd, orthonormal_directions
from toy_models import linear_model

SHAPE = (1, 4, 4)
D = 16


def closed_form(model, x, y, directions, span):
    """min over directions of min over classes j != y with a_j < 0 of g0_j / -a_j, where
    g0_j = (w_y - w_j).x + b_y - b_j and a_j = (w_y - w_j).u; inf beyond the span."""
    w = model[1].weight.detach().numpy()
    b = model[1].bias.detach().numpy()
    xs = x.reshape(len(x), -1).numpy()
    out = []
    for i in range(len(xs)):
        best = math.inf
        for k, u in enumerate(directions[i].numpy().astype(np.float64)):
            for j in range(w.shape[0]):
                if j == y[i]:
                    continue
                g0 = (w[y[i]] - w[j]) @ xs[i] + b[y[i]] - b[j]
                a = (w[y[i]] - w[j]) @ u
                if a < 0 and g0 / -a <= span[i][k]:
                    best = min(best, g0 / -a)
        out.append(best)
    return np.array(out)


def box_span(x, directions, lo, hi):
    """Largest t with x + t u inside [lo, hi]^d, per (input, direction), by NumPy."""
    xs = x.reshape(len(x), -1).numpy()
    spans = []
    for i, xi in enumerate(xs):
        row = []
        for u in directions[i].numpy().astype(np.float64):
            limits = [((hi if uk > 0 else lo) - xk) / uk for xk, uk in zip(xi, u) if uk != 0]
            row.append(max(0.0, min(limits)))
        spans.append(row)
    return spans


def clamped_crossing(w, b, x, y, u, lo, hi, span):
    """First t in (0, span] where some margin g_j(t) = (w_y - w_j).clip(x + t u) + b_y - b_j
    reaches 0, exactly: clip(x + t u) is linear in t between the times coordinates hit the box,
    so each margin is piecewise linear. Returns (t, ||clip(x + t u) - x||), (inf, inf) if none."""
    hits = [((hi if uk > 0 else lo) - xk) / uk for xk, uk in zip(x, u) if uk != 0]
    knots = sorted({0.0, span, *[t for t in hits if 0 < t < span]})
    others = [j for j in range(len(b)) if j != y]
    for t0, t1 in zip(knots[:-1], knots[1:]):
        p0 = np.clip(x + t0 * u, lo, hi)
        slope = np.clip(x + t1 * u, lo, hi) - p0  # over the segment, per unit (t1 - t0)
        # margins are > 0 at t0 (no earlier crossing); one crosses here if it ends <= 0
        margins = [((w[y] - w[j]) @ p0 + b[y] - b[j], (w[y] - w[j]) @ slope) for j in others]
        fractions = [-g0 / gs for g0, gs in margins if g0 + gs <= 0]
        if fractions:
            t = t0 + min(fractions) * (t1 - t0)
            return t, float(np.linalg.norm(np.clip(x + t * u, lo, hi) - x))
    return math.inf, math.inf


def closed_form_clamped(model, x, y, directions, lo, hi, span):
    """Per input: min over its directions of the L2 distance moved at the first crossing."""
    w, b = model[1].weight.detach().numpy(), model[1].bias.detach().numpy()
    xs = x.reshape(len(x), -1).numpy()
    return np.array([min(clamped_crossing(w, b, xs[i], y[i], u, lo, hi, span)[1]
                         for u in directions[i].numpy().astype(np.float64)) for i in range(len(xs))])


@pytest.mark.parametrize("n_classes", [2, 3])
def test_linear_model_matches_closed_form_inside_the_box(n_classes):
    model = linear_model(n_classes)
    x = torch.rand(6, *SHAPE, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    y = model(x).argmax(1)
    m, steps, bisection, lo, hi = 5, 8, 12, -3.0, 4.0
    res = ebd(model, x, m=m, clip_values=(lo, hi), steps=steps, bisection=bisection, seed=4,
              batch_size=10_000, out_of_box="stop", progress=False)
    directions = orthonormal_directions(6, D, m, torch.Generator().manual_seed(4), torch.float64)
    span = box_span(x, directions, lo, hi)
    ref = closed_form(model, x, y.numpy(), directions, span)
    tol = max(max(s) for s in span) / steps / 2 ** bisection
    assert np.isfinite(ref).sum() >= 3  # the test exercises found boundaries
    got = res.per_sample.numpy()
    assert np.array_equal(np.isinf(got), np.isinf(ref))
    fin = np.isfinite(ref)
    assert np.all(got[fin] >= ref[fin] - 1e-9)
    assert np.all(got[fin] <= ref[fin] + tol)
    assert np.all(res.tolerance.numpy()[fin] <= tol)
    assert res.correct.all()
    assert res.censored == int(np.isinf(ref).sum())
    assert res.averaged == int(fin.sum()) and res.lower_bound == (res.censored > 0)
    assert res.value == pytest.approx(ref[fin].mean(), abs=tol + 1e-9)


@pytest.mark.parametrize("n_classes", [2, 4])
def test_clamp_mode_reports_the_distance_moved_on_linear_models(n_classes):
    """Clamp mode on a linear model: the reported distance is ||clip(x + t* u) - x||, the
    exact piecewise-linear crossing, and it is shorter than t* where pixels saturate."""
    model = linear_model(n_classes, seed=5)
    gen = torch.Generator().manual_seed(2)
    x = torch.rand(8, *SHAPE, dtype=torch.float64, generator=gen)
    x[:, :, :2] = (x[:, :, :2] > 0.5).double()  # half the pixels sit on the box's faces
    y = model(x).argmax(1)
    m, steps, bisection = 4, 16, 14
    res = ebd(model, x, m=m, steps=steps, bisection=bisection, seed=8, out_of_box="clamp", progress=False)
    directions = orthonormal_directions(8, D, m, torch.Generator().manual_seed(8), torch.float64)
    span = math.sqrt(D)  # the box diagonal
    ref = closed_form_clamped(model, x, y.numpy(), directions, 0.0, 1.0, span)
    w, b = model[1].weight.detach().numpy(), model[1].bias.detach().numpy()
    t_star = np.array([min(clamped_crossing(w, b, x[i].flatten().numpy(), int(y[i]), u, 0.0, 1.0, span)[0]
                           for u in directions[i].numpy()) for i in range(8)])
    fin = np.isfinite(ref)
    assert fin.sum() >= 5
    assert (ref[fin] < t_star[fin] - 1e-3).sum() >= 3  # the test tells the distance moved from t
    tol = span / steps / 2 ** bisection
    got = res.per_sample.numpy()
    assert np.array_equal(np.isinf(got), ~fin)
    assert np.all(got[fin] >= ref[fin] - 1e-9) and np.all(got[fin] <= ref[fin] + tol + 1e-9)
    assert res.value == pytest.approx(ref[fin].mean(), abs=tol + 1e-9)


def test_unclipped_rays_with_max_distance_and_misclassified_inputs():
    model = linear_model(3, seed=2)
    x = torch.randn(8, *SHAPE, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    pred = model(x).argmax(1)
    y = pred.clone()
    y[:3] = (y[:3] + 1) % 3  # three inputs outside C
    res = ebd(model, x, y, m=4, clip_values=None, max_distance=2.5, steps=10, bisection=14, seed=9,
              batch_size=10_000, progress=False)
    directions = orthonormal_directions(8, D, 4, torch.Generator().manual_seed(9), torch.float64)
    ref = closed_form(model, x, pred.numpy(), directions, [[2.5] * 4] * 8)
    assert res.correct.tolist() == [False] * 3 + [True] * 5
    assert np.isnan(res.per_sample[:3]).all()
    got = res.per_sample.numpy()[3:]
    np.testing.assert_allclose(got, ref[3:], atol=2.5 / 10 / 2 ** 14 + 1e-9)
    fin = np.isfinite(ref[3:])
    assert 0 < fin.sum() < 5  # some inputs censored, some not
    assert res.value == pytest.approx(ref[3:][fin].mean(), abs=2.5 / 10 / 2 ** 14 + 1e-9)
    assert res.censored == 5 - fin.sum() and res.averaged == fin.sum() and res.lower_bound


def test_clamp_mode_and_censoring():
    class Constant(nn.Module):
        def forward(self, x):
            return torch.tensor([0.0, 1.0], dtype=x.dtype).expand(x.shape[0], 2)

    x = torch.rand(3, *SHAPE)
    with pytest.warns(RuntimeWarning, match="no input of C"):
        res = ebd(Constant(), x, out_of_box="clamp", m=3, steps=4, bisection=2, progress=False)
    assert res.censored == 3 and torch.isinf(res.per_sample).all()
    assert math.isnan(res.value) and res.averaged == 0 and res.lower_bound


def test_clamp_mode_reaches_past_saturated_pixels():
    """With a pixel at the box edge, clipped rays x + t u still move: a threshold model on
    the pixel sum changes class, and the reported point does change the prediction."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(D, 2)).double()
    with torch.no_grad():
        model[1].weight.copy_(torch.stack([torch.zeros(D), torch.ones(D)]).double())
        model[1].bias.copy_(torch.tensor([0.0, -8.0]).double())
    x = torch.full((1, *SHAPE), 0.3, dtype=torch.float64)
    x[0, 0, 0, 0] = 0.0  # saturated at lo: "stop" ends most rays at t = 0
    clamp = ebd(model, x, m=6, steps=8, bisection=8, seed=1, out_of_box="clamp", progress=False)
    assert torch.isfinite(clamp.per_sample).all()
    u = orthonormal_directions(1, D, 6, torch.Generator().manual_seed(1), torch.float64)
    ref = closed_form_clamped(model, x, [0], u, 0.0, 1.0, math.sqrt(D))
    np.testing.assert_allclose(clamp.per_sample.numpy(), ref, atol=math.sqrt(D) / 8 / 2 ** 8)


def test_seeded_and_model_state_restored():
    model = linear_model(3)
    model.train()
    x = torch.rand(4, *SHAPE, dtype=torch.float64)
    a = ebd(model, x, m=3, clip_values=(-2, 3), seed=5, progress=False)
    b = ebd(model, x, m=3, clip_values=(-2, 3), seed=5, progress=False)
    assert torch.equal(a.per_sample, b.per_sample)
    assert model.training and all(p.requires_grad for p in model.parameters())


def test_rejects_bad_arguments():
    model = linear_model(2)
    x = torch.rand(2, *SHAPE, dtype=torch.float64)
    with pytest.raises(ValueError, match="max_distance"):
        ebd(model, x, clip_values=None, progress=False)
    with pytest.raises(ValueError, match="out_of_box"):
        ebd(model, x, out_of_box="wrap", progress=False)
    with pytest.raises(ValueError, match="m must"):
        ebd(model, x, m=D + 1, progress=False)
    with pytest.raises(TypeError, match="steps"):
        ebd(model, x, steps=2.5, progress=False)
    with pytest.raises(ValueError, match="outside"):
        ebd(model, x + 2, progress=False)


def test_real_resnet20_reported_points_change_the_prediction(aisafety_dir):
    """Real CIFAR-10 ResNet-20, clamp mode: every image gets a finite distance d, and at
    d along one of its (rebuilt) directions the clipped point is classified differently."""
    from robustx.data import aisafety_cifar10
    from robustx.models import resnet20_cifar

    x, y = aisafety_cifar10(aisafety_dir)
    x, y = x[:3], y[:3]
    model = resnet20_cifar(aisafety_dir / "resnet20_cifar.pt")
    res = ebd(model, x, y, m=4, steps=4, bisection=4, out_of_box="clamp", seed=6, batch_size=4096, progress=False)
    assert res.correct.all() and torch.isfinite(res.per_sample).all()
    u = orthonormal_directions(3, x[0].numel(), 4, torch.Generator().manual_seed(6)).double()
    xs = x.flatten(1).double()[:, None, :]

    def moved(t):
        return ((xs + t[..., None] * u).clamp(0, 1) - xs).norm(dim=-1)

    # invert the (non-decreasing) distance moved along each ray: t with moved(t) = reported distance
    target = res.per_sample[:, None].expand(3, 4)
    lo, hi = torch.zeros(3, 4, dtype=torch.float64), torch.full((3, 4), 2 * math.sqrt(x[0].numel()))
    for _ in range(80):
        mid = (lo + hi) / 2
        short = moved(mid) < target
        lo, hi = torch.where(short, mid, lo), torch.where(short, hi, mid)
    reached = (moved(hi) - target).abs() < 1e-6
    points = (xs + hi[..., None] * u).clamp(0, 1).float()
    with torch.no_grad():
        pred = model(points.reshape(-1, *x.shape[1:])).argmax(1).view(3, 4)
    assert ((pred != y[:, None]) & reached).any(1).all()
