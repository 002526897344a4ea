"""Prediction-divergence bound: the exact maximum on binary linear models, zero for a constant
model, growth with eps, lower bound of the visited points, chunking, seeds and bad input."""
import json
import math

import numpy as np
import pytest
import torch
from scipy.spatial.distance import jensenshannon
from scipy.stats import entropy
from torch import nn

from robustx.divergence import divergence_bound, js_divergence, kl_divergence
from robustx.ops import ball_sample
from toy_models import linear_model, small_cnn


class Constant(nn.Module):
    def __init__(self):
        super().__init__()
        self.logits = nn.Parameter(torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64))

    def forward(self, x):
        return self.logits.expand(x.shape[0], -1) + 0.0 * x.flatten(1).sum(1, keepdim=True)


def images(n: int, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, 1, 4, 4, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def clean_std(model, x) -> np.ndarray:
    """The temperature of the default normalisation: numpy's std of each clean logit row."""
    with torch.no_grad():
        return np.std(model(x).numpy(), axis=1)


def probs(model, x, tau) -> np.ndarray:
    """softmax(Z(x) / tau) per row."""
    with torch.no_grad():
        return torch.softmax(model(x) / torch.as_tensor(tau)[:, None], 1).numpy()


def binary_extremes(model, x, eps, q, normalize):
    """Class-1 probabilities at x and at the two ends of the logit-gap range over the ball:
    s' = s +- eps ||w_1 - w_0||_q (divided by the temperature |s| / 2, the std of two logits
    whose gap is s, when normalised); KL and JS are convex in s', so their max is at an end."""
    w, b = model[1].weight, model[1].bias
    s = (x.flatten(1) @ (w[1] - w[0]) + b[1] - b[0]).detach()
    reach = eps * (w[1] - w[0]).norm(p=q).item()
    tau = s.abs() / 2 if normalize else torch.ones_like(s)
    return [torch.sigmoid(t / tau).numpy() for t in (s, s + reach, s - reach)]


def bernoulli(p1: np.ndarray) -> np.ndarray:
    return np.stack([1 - p1, p1], axis=0)


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("norm, q, steps, step_size", [("inf", 1, 20, None), (2, 2, 60, 0.15)])
def test_binary_linear_model_reaches_the_exact_maximum_kl(norm, q, steps, step_size, normalize):
    # normalised, the clean gap is +-2 and the ball's reach is divided by |s| / 2: a smaller eps
    # keeps the exact KL where float64 sigmoids still resolve it
    model, x, eps = linear_model(2), images(6), 0.03 if normalize else 0.3
    result = divergence_bound(model, x, eps=eps, norm=norm, steps=steps, step_size=step_size, restarts=8,
                              clip_values=None, progress=False, normalize=normalize)  # the exact maximum has no box
    p, up, down = binary_extremes(model, x, eps, q, normalize)
    exact = np.maximum(entropy(bernoulli(p), bernoulli(up)), entropy(bernoulli(p), bernoulli(down)))
    np.testing.assert_allclose(result.per_sample.numpy(), exact, rtol=1e-3 if norm == 2 else 1e-9)
    assert result.value == pytest.approx(exact.mean(), rel=1e-3)


def test_binary_linear_model_reaches_the_exact_maximum_js():
    model, x, eps = linear_model(2, seed=3), images(6), 0.2
    result = divergence_bound(model, x, eps=eps, divergence="js", steps=20, restarts=8, clip_values=None,
                              progress=False)
    p, up, down = binary_extremes(model, x, eps, 1, True)
    js = [jensenshannon(bernoulli(p), bernoulli(end)) ** 2 for end in (up, down)]
    exact = np.maximum(*js)
    np.testing.assert_allclose(result.per_sample.numpy(), exact, rtol=1e-9)


def test_divergence_formulas_match_scipy():
    gen = torch.Generator().manual_seed(0)
    log_p = torch.log_softmax(torch.randn(4, 6, generator=gen, dtype=torch.float64), 1)
    log_q = torch.log_softmax(torch.randn(4, 6, generator=gen, dtype=torch.float64), 1)
    p, q = log_p.exp().numpy(), log_q.exp().numpy()
    np.testing.assert_allclose(kl_divergence(log_p, log_q).numpy(), entropy(p, q, axis=1), rtol=1e-12)
    np.testing.assert_allclose(js_divergence(log_p, log_q).numpy(), jensenshannon(p, q, axis=1) ** 2, rtol=1e-10)


@pytest.mark.parametrize("divergence", ["kl", "js"])
def test_constant_model_has_zero_divergence(divergence):
    result = divergence_bound(Constant(), images(3), eps=0.5, steps=3, restarts=2, divergence=divergence,
                              progress=False)
    assert torch.equal(result.per_sample, torch.zeros(3, dtype=torch.float64))
    assert result.value == 0.0


def test_bound_grows_with_eps():
    model, x = small_cnn().double(), images(8)
    means = [divergence_bound(model, x, eps=eps, steps=10, progress=False).value for eps in (0.02, 0.1, 0.5)]
    assert 0 < means[0] < means[1] < means[2]


@pytest.mark.parametrize("norm", ["inf", 2])
def test_bound_dominates_every_visited_point_and_random_points(norm):
    model, x, eps = small_cnn().double(), images(5), 0.4
    result = divergence_bound(model, x, eps=eps, norm=norm, steps=6, restarts=2, clip_values=(0, 1),
                              return_iterates=True, progress=False)
    it = result.iterates  # (R, steps + 1, N, 1, 4, 4)
    assert it.shape == (2, 7, 5, 1, 4, 4)
    dist = (it - x).flatten(3).norm(p=math.inf if norm == "inf" else 2, dim=3)
    assert dist.max() <= eps + 1e-12 and it.min() >= 0 and it.max() <= 1
    tau = clean_std(model, x)
    np.testing.assert_allclose(result.temperature.numpy(), tau, rtol=1e-12)
    p = probs(model, x, tau)
    visited = np.stack([[entropy(p.T, probs(model, it[r, t], tau).T) for t in range(7)] for r in range(2)])
    np.testing.assert_allclose(result.history.numpy(), visited, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(result.per_sample.numpy(), visited.max(axis=(0, 1)), rtol=1e-9)
    # projected ascent beats 400 uniform random points of the same ball
    pts = ball_sample(x, 400, eps, norm, clip_values=(0, 1), seed=9)
    random_kl = np.stack([entropy(p.T, probs(model, pts[:, s], tau).T) for s in range(400)]).max(0)
    assert (result.per_sample.numpy() >= random_kl).all()


def test_chunking_and_seeds():
    model, x = small_cnn().double(), images(7)
    kwargs = dict(eps=0.2, steps=4, restarts=2, progress=False, seed=4)
    whole = divergence_bound(model, x, batch_size=256, **kwargs)
    pieces = divergence_bound(model, x, batch_size=3, **kwargs)
    torch.testing.assert_close(pieces.history, whole.history, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(pieces.per_restart, whole.per_restart, rtol=1e-12, atol=1e-14)
    other = divergence_bound(model, x, batch_size=3, **{**kwargs, "seed": 5})
    assert not torch.equal(other.history[:, 0], whole.history[:, 0])
    assert whole.iterates is None and whole.per_restart.shape == (2, 7)


def test_to_dict_is_json_with_the_same_numbers():
    model, x = small_cnn().double(), images(3)
    result = divergence_bound(model, x, eps=0.2, norm=2, steps=2, restarts=2, return_iterates=True, progress=False)
    doc = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    assert doc["norm"] == "2" and doc["eps"] == 0.2 and doc["divergence"] == "kl" and doc["normalized"] is True
    assert doc["value"] == pytest.approx(sum(doc["per_sample"]) / 3, rel=1e-12)
    for name in ("per_sample", "per_restart", "history", "iterates", "temperature"):
        torch.testing.assert_close(torch.tensor(doc[name], dtype=torch.float64), getattr(result, name).double())
    assert divergence_bound(model, x, eps=0.2, steps=1, progress=False).to_dict()["iterates"] is None


def test_model_state_is_restored():
    model = small_cnn().double().train()
    divergence_bound(model, images(2), eps=0.1, steps=2, progress=False)
    assert model.training
    assert all(p.requires_grad and p.grad is None for p in model.parameters())


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(eps=0.0), ValueError, "eps"),
        (dict(eps=-0.1), ValueError, "eps"),
        (dict(eps=0.1, norm=1), ValueError, "norm"),
        (dict(eps=0.1, norm="l3"), ValueError, "norm"),
        (dict(eps=0.1, divergence="hellinger"), ValueError, "divergence"),
        (dict(eps=0.1, steps=-1), ValueError, "steps"),
        (dict(eps=0.1, steps=1.5), TypeError, "steps"),
        (dict(eps=0.1, seed=-1), ValueError, "seed"),
        (dict(eps=0.1, restarts=0), ValueError, "restarts"),
        (dict(eps=0.1, batch_size=0), ValueError, "batch_size"),
        (dict(eps=0.1, step_size=0.0), ValueError, "step_size"),
        (dict(eps=0.1, clip_values=(0.2, 1.0)), ValueError, "clip_values"),
        (dict(eps=0.1, normalize=1), TypeError, "normalize"),
    ],
)
def test_bad_input(kwargs, error, match):
    with pytest.raises(error, match=match):
        divergence_bound(small_cnn().double(), images(2), progress=False, **kwargs)
    with pytest.raises(TypeError, match="x must be a floating"):
        divergence_bound(small_cnn().double(), torch.zeros(2, 1, 4, 4, dtype=torch.int64), eps=0.1, progress=False)


class ScaledLogits(nn.Module):
    """``model`` with its logits multiplied by ``c`` (and shifted by ``shift`` for every class)."""

    def __init__(self, model: nn.Module, c: float, shift: float = 0.0):
        super().__init__()
        self.model, self.c, self.shift = model, c, shift

    def forward(self, x):
        return self.c * self.model(x) + self.shift


def digits_inputs(n: int) -> torch.Tensor:
    from robustx.data import digits
    x, _ = digits("test")
    return x[:n].double()


@pytest.mark.parametrize("norm", ["inf", 2])
@pytest.mark.parametrize("c, shift", [(0.5, 0.0), (3.0, 0.0), (3.0, -7.0)])
def test_invariant_to_the_logit_scale_on_the_digits_cnn(c, shift, norm):
    """DIV(c Z + b) = DIV(Z) within 1e-6 relative on the pretrained digits CNN, while the plain
    softmax (normalize=False) moves by far more than that under the same rescaling."""
    from robustx.models import digits_cnn
    net, x = digits_cnn(pretrained=True).double(), digits_inputs(12)
    kwargs = dict(eps=0.1, norm=norm, steps=10, restarts=2, clip_values=(0.0, 1.0), progress=False, seed=3)
    base = divergence_bound(net, x, **kwargs)
    scaled = divergence_bound(ScaledLogits(net, c, shift), x, **kwargs)
    assert base.value > 1e-4
    np.testing.assert_allclose(scaled.per_sample.numpy(), base.per_sample.numpy(), rtol=1e-6, atol=0)
    np.testing.assert_allclose(scaled.temperature.numpy(), c * base.temperature.numpy(), rtol=1e-9)
    plain = [divergence_bound(m, x, normalize=False, **kwargs).value for m in (net, ScaledLogits(net, c, shift))]
    assert abs(plain[1] / plain[0] - 1) > 0.1
