"""eps-ENI: the AISafety platform's formula against a hand computation on a 1-D linear
model with closed-form losses; the noise variant against NumPy cross-entropy and the
closed-form derivative of a 1-D model."""
import math

import numpy as np
import pytest
import torch
from torch import nn

from robustx.metrics.eni import eni_from_terms, eni_terms, eps_eni, eps_eni_noise
from toy_models import linear_model

A, B = -3.0, 0.7  # logits (A x + B, 0) of a 1-D input x


def one_d_model() -> nn.Module:
    model = nn.Linear(1, 2).double()
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[A], [0.0]], dtype=torch.float64))
        model.bias.copy_(torch.tensor([B, 0.0], dtype=torch.float64))
    return model


def loss(x: float, label: int) -> float:
    """Cross-entropy of softmax(A x + B, 0): log(1 + e^-(Ax+B)) at label 0, log(1 + e^(Ax+B)) at 1."""
    z = A * x + B
    return math.log1p(math.exp(-z if label == 0 else z))


X, X_ADV, Y = [0.2, 0.5, 0.8], [0.25, 0.45, 0.7], [0, 0, 1]  # distances 0.05, 0.05, 0.1


def tensors(values):
    return torch.tensor(values, dtype=torch.float64)[:, None]


def test_platform_formula_by_hand():
    """|sum_i l(x'_i, t_i) - sum_i l(x_i, y_i)| / (n max_i |x'_i - x_i|): the loss rises on
    inputs 0 and 2 and falls on input 1, so the summed change is smaller than the sum of
    the changes' sizes; t = y untargeted, the given targets otherwise."""
    model, y = one_d_model(), torch.tensor(Y)
    clean = sum(loss(x, label) for x, label in zip(X, Y))
    untargeted = abs(sum(loss(x, label) for x, label in zip(X_ADV, Y)) - clean) / (3 * 0.1)
    res = eps_eni(model, tensors(X), y, tensors(X_ADV), progress=False)
    assert res.value == pytest.approx(untargeted, rel=1e-12)
    changes = [loss(a, label) - loss(x, label) for x, a, label in zip(X, X_ADV, Y)]
    np.testing.assert_allclose(res.loss_change.numpy(), changes, rtol=1e-12)
    np.testing.assert_allclose(res.distance.numpy(), [0.05, 0.05, 0.1], rtol=1e-12)
    assert changes[0] > 0 > changes[1] and changes[2] > 0
    per_input_mean = np.mean(np.abs(changes) / [0.05, 0.05, 0.1])  # the noise variant's averaging
    assert res.value < 0.8 * per_input_mean
    targets = [1, 1, 0]
    targeted = abs(sum(loss(a, t) for a, t in zip(X_ADV, targets)) - clean) / (3 * 0.1)
    res_t = eps_eni(model, tensors(X), y, tensors(X_ADV), torch.tensor(targets), progress=False)
    assert res_t.value == pytest.approx(targeted, rel=1e-12)


def test_a_largest_distance_of_zero_divides_by_one_as_the_platform():
    model, x, y = one_d_model(), tensors(X), torch.tensor(Y)
    assert eps_eni(model, x, y, x.clone(), progress=False).value == 0.0
    targets = [1, 1, 0]
    want = abs(sum(loss(v, t) - loss(v, label) for v, t, label in zip(X, targets, Y))) / 3
    assert eps_eni(model, x, y, x.clone(), torch.tensor(targets), progress=False).value == pytest.approx(want, rel=1e-12)


def test_terms_of_parts_combine_to_the_whole_set():
    """The set-wide maximum and sum: the terms of two parts, concatenated in order, give
    the whole set's value (same float64 operations per input: rel 1e-12); the mean of the
    parts' own values does not."""
    model = linear_model(4, shape=(3, 2, 2))
    g = torch.Generator().manual_seed(1)
    x = 0.2 + 0.6 * torch.rand(9, 3, 2, 2, generator=g, dtype=torch.float64)
    x_adv = x + 0.1 * (2 * torch.rand(x.shape, generator=g, dtype=torch.float64) - 1)
    y = torch.randint(0, 4, (9,), generator=g)
    whole = eps_eni(model, x, y, x_adv, batch_size=4, progress=False)
    with torch.no_grad():
        terms = [eni_terms(model(x[s]), model(x_adv[s]), x[s], x_adv[s], y[s]) for s in (slice(0, 2), slice(2, 9))]
    joined = eni_from_terms(torch.cat([t[0] for t in terms]), torch.cat([t[1] for t in terms]))
    assert joined == pytest.approx(whole.value, rel=1e-12)
    parts_mean = np.mean([eni_from_terms(*t) for t in terms])
    assert parts_mean != pytest.approx(whole.value, rel=1e-3)


def test_platform_arguments_are_checked():
    model, x, y = one_d_model(), tensors(X), torch.tensor(Y)
    x_adv = tensors(X_ADV)
    with pytest.raises(ValueError, match="x_adv must have the shape"):
        eps_eni(model, x, y, x_adv[:2], progress=False)
    with pytest.raises(ValueError, match="within L-inf distance eps=0.05"):
        eps_eni(model, x, y, x_adv, eps=0.05, progress=False)
    assert eps_eni(model, x, y, x_adv, eps=0.1, progress=False).value > 0
    with pytest.warns(DeprecationWarning, match="'epsilon' is deprecated, use 'eps'"):
        with pytest.raises(ValueError, match="eps=0.05"):
            eps_eni(model, x, y, x_adv, epsilon=0.05, progress=False)
    with pytest.raises(ValueError, match="targets must hold class indices"):
        eps_eni(model, x, y, x_adv, torch.tensor([0, 2, 1]), progress=False)
    probabilities = torch.tensor([[0.5, 0.5]] * 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="logits looks like probabilities"):
        eni_terms(probabilities, probabilities, x, x_adv, y)
    with pytest.raises(ValueError, match="loss_change and distance"):
        eni_from_terms(torch.zeros(3, dtype=torch.float64), torch.zeros(2, dtype=torch.float64))


def np_cross_entropy(logits, y):
    shifted = logits - logits.max(1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(1, keepdims=True))
    return -logp[np.arange(len(y)), y]


def test_given_noisy_inputs_match_numpy():
    model = linear_model(4, shape=(12,))
    g = torch.Generator().manual_seed(1)
    x = 0.2 + 0.6 * torch.rand(7, 3, 2, 2, generator=g, dtype=torch.float64)
    y = torch.randint(0, 4, (7,), generator=g)
    eps = 0.05
    x_noisy = x + eps * (2 * torch.rand(x.shape, generator=g, dtype=torch.float64) - 1)
    x_noisy[2] = x[2]  # distance 0: no ratio
    res = eps_eni_noise(model, x, y, eps, x_noisy=x_noisy, batch_size=3, progress=False)
    w, b = model[1].weight.detach().numpy(), model[1].bias.detach().numpy()
    flat, flat_n = x.reshape(7, -1).numpy(), x_noisy.reshape(7, -1).numpy()
    change = np.abs(np_cross_entropy(flat @ w.T + b, y.numpy()) - np_cross_entropy(flat_n @ w.T + b, y.numpy()))
    dist = np.abs(flat - flat_n).max(1)
    ref = np.where(dist > 0, change / np.where(dist > 0, dist, 1), np.nan)
    np.testing.assert_allclose(res.per_sample.numpy(), ref, rtol=1e-10, equal_nan=True)
    assert res.value == pytest.approx(np.nanmean(ref), rel=1e-10)
    np.testing.assert_allclose(res.loss_change.numpy(), change, rtol=1e-10, atol=1e-15)


def test_small_noise_on_one_input_gives_the_loss_derivative():
    """d = 1, logits (a x + b, 0), label 0: l = log(1 + exp(-(a x + b))), so for small
    eps |l(x + delta) - l(x)| / |delta| -> |l'(x)| = |a| sigmoid(-(a x + b))."""
    a, b, model = A, B, one_d_model()
    x = torch.linspace(0.1, 0.9, 9, dtype=torch.float64)[:, None]
    y = torch.zeros(9, dtype=torch.long)
    res = eps_eni_noise(model, x, y, 1e-6, draws=3, seed=2, progress=False)
    z = a * x[:, 0].numpy() + b
    deriv = abs(a) / (1 + np.exp(z))
    np.testing.assert_allclose(res.per_sample.numpy(), deriv, rtol=1e-5)
    assert res.value == pytest.approx(deriv.mean(), rel=1e-5)


class Recorder(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net, self.seen = net, []

    def forward(self, x):
        self.seen.append(x.clone())
        return self.net(x)


def test_noise_lies_in_the_ball_and_the_box_and_is_seeded():
    model = Recorder(linear_model(3, shape=(12,)))
    x = torch.rand(5, 3, 2, 2, dtype=torch.float64)
    x[0] = 0.0  # at the box edge: noise clipped
    y = torch.zeros(5, dtype=torch.long)
    a = eps_eni_noise(model, x, y, 0.1, draws=2, seed=3, progress=False)
    clean, noisy = model.seen[0], torch.cat(model.seen[1:])
    assert torch.equal(clean, x)
    delta = noisy - x.repeat(2, 1, 1, 1)
    assert delta.abs().max() <= 0.1 and delta.abs().max() > 0.09
    assert noisy.min() >= 0 and noisy.max() <= 1
    b = eps_eni_noise(model, x, y, eps=0.1, draws=2, seed=3, progress=False)
    c = eps_eni_noise(model, x, y, 0.1, draws=2, seed=4, progress=False)
    assert torch.equal(a.per_sample, b.per_sample) and not torch.equal(a.per_sample, c.per_sample)


def test_model_state_restored_and_bad_arguments():
    model = linear_model(3, shape=(12,))
    model.train()
    x = torch.rand(2, 3, 2, 2, dtype=torch.float64)
    y = torch.zeros(2, dtype=torch.long)
    eps_eni_noise(model, x, y, 0.1, progress=False)
    assert model.training and all(p.requires_grad for p in model.parameters())
    with pytest.raises(ValueError, match="eps must"):
        eps_eni_noise(model, x, y, 0.0, progress=False)
    with pytest.raises(ValueError, match="x_noisy"):
        eps_eni_noise(model, x, y, 0.1, x_noisy=x[:1], progress=False)
    with pytest.raises(ValueError, match="within"):
        eps_eni_noise(model, x, y, 0.01, x_noisy=(x + 0.5).clamp(0, 1), progress=False)
    with pytest.raises(ValueError, match="draws"):
        eps_eni_noise(model, x, y, 0.1, x_noisy=x, draws=2, progress=False)
    with pytest.raises(TypeError, match="y"):
        eps_eni_noise(model, x, y.double(), 0.1, progress=False)
    with pytest.warns(DeprecationWarning, match="'epsilon' is deprecated"):
        old = eps_eni_noise(model, x, y, epsilon=0.1, seed=5, progress=False)
    torch.testing.assert_close(old.per_sample, eps_eni_noise(model, x, y, eps=0.1, seed=5, progress=False).per_sample)


def test_a_config_table_takes_the_old_key_with_a_warning():
    from robustx.pipeline.config import check_config

    with pytest.warns(DeprecationWarning, match=r"\[eps-eni_noise\] epsilon is deprecated, use eps"):
        assert check_config({"eps-eni_noise": {"epsilon": 0.1}}) == {"eps-eni_noise": {"eps": 0.1}}
