"""Lp geometry: norm names and duals, steepest-ascent directions, ball and box projections and
the logit margin, against hand-computed values."""
import math

import pytest
import torch

from robustx.geometry import (
    dual_norm,
    logit_margin,
    norm_name,
    parse_norm,
    project_ball,
    project_box,
    steepest_ascent,
)


def test_norm_names_and_duals():
    assert [parse_norm(v) for v in (1, "2", "inf", "Linf", math.inf, 2.0)] == [1.0, 2.0, math.inf, math.inf,
                                                                              math.inf, 2.0]
    assert [dual_norm(p) for p in (1, 2, "inf")] == [math.inf, 2.0, 1.0]
    assert [norm_name(p) for p in (1.0, 2, math.inf)] == ["1", "2", "inf"]
    for bad in (3, 0.5, "fro", -math.inf):
        with pytest.raises(ValueError, match="norm must be one of 1, 2, inf"):
            parse_norm(bad)
    for bad in (True, None):
        with pytest.raises(TypeError, match="norm must be"):
            parse_norm(bad)


@pytest.mark.parametrize("p, q", [("inf", 1), (2, 2)])
def test_steepest_ascent_attains_the_dual_norm_and_beats_the_unit_ball(p, q):
    gen = torch.Generator().manual_seed(0)
    g = torch.randn(5, 3, 4, generator=gen, dtype=torch.float64)
    d = steepest_ascent(g, p)
    best = (g * d).flatten(1).sum(1)
    torch.testing.assert_close(best, g.flatten(1).norm(p=q, dim=1), rtol=1e-12, atol=0)
    torch.testing.assert_close(d.flatten(1).norm(p=math.inf if p == "inf" else 2, dim=1),
                               torch.ones(5, dtype=torch.float64), rtol=1e-12, atol=0)
    # 2000 random points of the unit ball (directions on its sphere) never do better
    v = torch.randn(2000, 5, 12, generator=gen, dtype=torch.float64)
    v = v.sign() if p == "inf" else v / v.norm(dim=2, keepdim=True)
    assert ((v * g.flatten(1)).sum(2) <= best + 1e-12).all()


def test_steepest_ascent_hand_values_and_zero_gradient():
    g = torch.tensor([[3.0, -4.0], [0.0, 0.0]])
    assert steepest_ascent(g, "inf").tolist() == [[1.0, -1.0], [0.0, 0.0]]
    torch.testing.assert_close(steepest_ascent(g, 2), torch.tensor([[0.6, -0.8], [0.0, 0.0]]))
    tiny = torch.tensor([[3e-15, 4e-15]])  # norm below a 1e-12 floor: still a unit vector
    torch.testing.assert_close(steepest_ascent(tiny, 2), torch.tensor([[0.6, 0.8]]))
    with pytest.raises(ValueError, match="p must be 2 or inf"):
        steepest_ascent(g, 1)


def test_project_ball_hand_values():
    x0 = torch.tensor([[1.0, 1.0], [0.0, 0.0]], dtype=torch.float64)
    x = torch.tensor([[4.0, 5.0], [0.1, -0.2]], dtype=torch.float64)
    # L2: (3, 4) from x0 has length 5 -> scaled to length 1; the second point is inside
    torch.testing.assert_close(project_ball(x, x0, 1.0, 2), torch.tensor([[1.6, 1.8], [0.1, -0.2]],
                                                                          dtype=torch.float64))
    # L-inf: each coordinate of x - x0 clamped to [-0.5, 0.5]
    torch.testing.assert_close(project_ball(x, x0, 0.5, "inf"), torch.tensor([[1.5, 1.5], [0.1, -0.2]],
                                                                               dtype=torch.float64))
    with pytest.raises(ValueError, match="p must be 2 or inf"):
        project_ball(x, x0, 1.0, "1")


@pytest.mark.parametrize("p", ["inf", 2])
def test_project_ball_is_the_nearest_point_of_the_ball(p):
    """The projection is in the ball and no random point of the ball is closer (in L2)."""
    gen = torch.Generator().manual_seed(1)
    x0 = torch.randn(1, 6, generator=gen, dtype=torch.float64)
    x = x0 + 2.0 * torch.randn(1, 6, generator=gen, dtype=torch.float64)
    proj = project_ball(x, x0, 0.7, p)
    order = math.inf if p == "inf" else 2
    assert (proj - x0).norm(p=order).item() == pytest.approx(0.7, rel=1e-12)
    u = torch.rand(5000, 6, generator=gen, dtype=torch.float64) * 2 - 1
    if p == 2:
        u = u / u.norm(dim=1, keepdim=True) * torch.rand(5000, 1, generator=gen, dtype=torch.float64)
    candidates = x0 + 0.7 * u
    assert (candidates - x).norm(dim=1).min() >= (proj - x).norm() - 1e-12


def test_project_box():
    x = torch.tensor([[-0.5, 0.3, 1.7]])
    assert project_box(x, (0.0, 1.0)).tolist() == [[0.0, pytest.approx(0.3), 1.0]]
    assert project_box(x, None) is x


def test_logit_margin_hand_values():
    z = torch.tensor([[1.0, 3.0, 2.0], [5.0, -1.0, 0.0], [2.0, 2.0, 0.0]])
    y = torch.tensor([1, 2, 0])
    # 3 - max(1, 2) = 1 (classified as y); 0 - 5 = -5 (not); a tie is on the boundary
    assert logit_margin(z, y).tolist() == [1.0, -5.0, 0.0]
