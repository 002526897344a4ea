"""Reverse-Weibull MLE: against scipy.stats.weibull_min.fit / kstest on the same data."""
import math

import numpy as np
import pytest
import torch
from scipy.stats import kstest, weibull_min

from robustx.weibull import FALLBACK_REASONS, INITIAL_SHAPES, _nll_derivatives, _profile_nll, fit_reverse_weibull


def reverse_weibull_maxima(shape, loc, scale, size, seed):
    """Maxima m = loc - W with W ~ Weibull(shape, scale): -m ~ weibull_min(shape, -loc, scale)."""
    rng = np.random.default_rng(seed)
    return loc - weibull_min.rvs(shape, scale=scale, size=size, random_state=rng)


def scipy_loglik(m, shape, loc, scale):
    return -weibull_min.nnlf((shape, -loc, scale), -m)


def test_analytic_derivatives_match_autograd():
    gen = torch.Generator().manual_seed(0)
    w = torch.rand(3, 40, generator=gen, dtype=torch.float64) * 3
    w[:, 0] = 0.0
    u0 = torch.tensor([0.3, 1.5, -0.5], dtype=torch.float64)
    v0 = torch.tensor([-1.0, 0.5, 1.2], dtype=torch.float64)
    u, v = u0.clone().requires_grad_(), v0.clone().requires_grad_()
    f_ref, _ = _profile_nll(w, u.exp(), v.exp())
    gu, gv = torch.autograd.grad(f_ref.sum(), (u, v), create_graph=True)
    huu, huv = torch.autograd.grad(gu.sum(), (u, v), retain_graph=True)
    _, hvv = torch.autograd.grad(gv.sum(), (u, v))
    f, grad, a, b, d = _nll_derivatives(w, u0, v0)
    torch.testing.assert_close(f, f_ref.detach())
    torch.testing.assert_close(grad, torch.stack((gu, gv), 1).detach())
    torch.testing.assert_close(torch.stack((a, b, d)), torch.stack((huu, huv, hvv)).detach())


@pytest.mark.parametrize("true_shape", [2.0, 5.0, 12.0])
def test_same_optimum_as_scipy_weibull_min_fit(true_shape):
    m = reverse_weibull_maxima(true_shape, loc=5.0, scale=2.0, size=300, seed=int(true_shape))
    fit = fit_reverse_weibull(torch.tensor(m)[None])
    assert not fit.fallback.item()
    c, neg_loc, scale = weibull_min.fit(-m, 5.0)  # scipy from the start shape 5
    assert c > 1.0  # an interior optimum where scipy converges
    ours = (fit.shape.item(), fit.loc.item(), fit.scale.item())
    np.testing.assert_allclose(ours, (c, -neg_loc, scale), rtol=2e-3)
    ll_ours = scipy_loglik(m, *ours)
    assert ll_ours == pytest.approx(fit.log_likelihood.item(), rel=1e-9)
    assert ll_ours >= scipy_loglik(m, c, -neg_loc, scale) - 1e-6  # at least as good an optimum
    assert fit.loc.item() >= m.max()


@pytest.mark.parametrize("start", [5.0, 20.0, 100.0])
def test_each_start_reaches_the_scipy_optimum(start):
    # (from start 0.1 or 1 both solvers may end at the unbounded shape < 1 corner instead)
    m = reverse_weibull_maxima(4.0, loc=-1.0, scale=0.5, size=200, seed=7)
    fit = fit_reverse_weibull(torch.tensor(m)[None], initial_shapes=(start,))
    c, neg_loc, scale = weibull_min.fit(-m, start)
    assert c > 1.0
    np.testing.assert_allclose((fit.shape.item(), fit.loc.item(), fit.scale.item()), (c, -neg_loc, scale), rtol=2e-3)


def test_ks_pvalue_is_scipy_kstest_of_the_fit():
    m = reverse_weibull_maxima(3.0, loc=10.0, scale=4.0, size=250, seed=3)
    fit = fit_reverse_weibull(torch.tensor(m)[None])
    ref = kstest(-m, "weibull_min", args=(fit.shape.item(), -fit.loc.item(), fit.scale.item())).pvalue
    assert fit.ks_pvalue.item() == pytest.approx(ref, rel=1e-9, abs=1e-12)


def test_multi_start_keeps_the_best_pvalue_among_valid_fits():
    m = torch.tensor(reverse_weibull_maxima(6.0, loc=2.0, scale=1.0, size=200, seed=11))[None]
    best = fit_reverse_weibull(m)
    assert best.reason.tolist() == [0] and FALLBACK_REASONS[0] == "none"
    singles = [fit_reverse_weibull(m, initial_shapes=(c,)) for c in INITIAL_SHAPES]
    valid = [s.ks_pvalue.item() for s in singles if not s.fallback.item()]
    assert best.ks_pvalue.item() == pytest.approx(max(valid), rel=1e-12)


def test_batched_rows_equal_one_at_a_time_and_scale_equivariance():
    sets = [reverse_weibull_maxima(c, loc=3.0, scale=1.5, size=150, seed=i) for i, c in enumerate((1.5, 3.0, 8.0))]
    m = torch.tensor(np.stack(sets))
    fit = fit_reverse_weibull(m)
    for i in range(3):
        one = fit_reverse_weibull(m[i : i + 1])
        torch.testing.assert_close(fit.estimate[i : i + 1], one.estimate, rtol=1e-7, atol=0)
    scaled = fit_reverse_weibull(m * 7.0)
    torch.testing.assert_close(scaled.estimate, fit.estimate * 7.0, rtol=1e-7, atol=0)
    torch.testing.assert_close(scaled.shape, fit.shape, rtol=1e-6, atol=0)


def test_constant_maxima_fall_back_to_the_maximum():
    m = torch.full((2, 50), 3.25, dtype=torch.float64)
    m[1] += torch.linspace(0, 1e-6, 50, dtype=torch.float64)  # float32-level noise of a linear model
    fit = fit_reverse_weibull(m)
    assert fit.fallback.all()
    assert [FALLBACK_REASONS[r] for r in fit.reason.tolist()] == ["constant", "constant"]
    torch.testing.assert_close(fit.estimate, m.amax(1))
    assert torch.isnan(fit.loc).all()


def test_ill_conditioned_fits_fall_back_and_are_flagged():
    # two tight clusters: no reverse Weibull fits (every KS p-value < 0.001)
    rng = np.random.default_rng(0)
    bimodal = np.concatenate([1.0 + 0.01 * rng.random(100), 5.0 + 0.01 * rng.random(100)])
    # Gumbel-distributed maxima: the likelihood grows toward the Gumbel limit (no finite end point)
    gumbel = rng.gumbel(size=200)
    fit = fit_reverse_weibull(torch.tensor(np.stack([bimodal, gumbel])))
    assert fit.fallback.tolist() == [True, True]
    assert [FALLBACK_REASONS[r] for r in fit.reason.tolist()] == ["ks_rejected", "gumbel_limit"]
    assert fit.ks_pvalue[0].item() < 1e-3
    torch.testing.assert_close(fit.estimate, torch.tensor([bimodal.max(), gumbel.max()], dtype=torch.float64))


def test_shape_below_one_ends_at_the_largest_maximum():
    # shape < 1: the likelihood is unbounded as a -> max m; the end point sits at the maximum
    m = reverse_weibull_maxima(0.7, loc=4.0, scale=1.0, size=200, seed=5)
    fit = fit_reverse_weibull(torch.tensor(m)[None])
    assert fit.loc.item() >= m.max()
    assert fit.loc.item() - m.max() < 1e-6 * m.std()
    assert fit.shape.item() < 1.0


@pytest.mark.parametrize(
    "bad, exc",
    [
        (torch.tensor([[1.0, float("nan"), 2.0]]), ValueError),
        (torch.tensor([1.0, 2.0, 3.0]), ValueError),
        (torch.tensor([[1.0]]), ValueError),
        (np.ones((2, 5)), TypeError),
        (torch.ones(2, 5, dtype=torch.int64), TypeError),
    ],
)
def test_bad_maxima(bad, exc):
    with pytest.raises(exc, match="maxima"):
        fit_reverse_weibull(bad)


@pytest.mark.parametrize("shapes, exc", [((), ValueError), ((0.0, 1.0), ValueError), ((math.inf,), ValueError),
                                         ("abc", TypeError), (("1",), TypeError), (5.0, TypeError)])
def test_bad_initial_shapes(shapes, exc):
    with pytest.raises(exc, match="initial_shapes"):
        fit_reverse_weibull(torch.rand(1, 10, dtype=torch.float64), initial_shapes=shapes)


@pytest.mark.parametrize("max_iter, exc", [(0, ValueError), (2.0, TypeError), (True, TypeError)])
def test_bad_max_iter(max_iter, exc):
    with pytest.raises(exc, match="max_iter"):
        fit_reverse_weibull(torch.rand(1, 10, dtype=torch.float64), max_iter=max_iter)
