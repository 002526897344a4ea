"""epsilon-ENI against NumPy cross-entropy and the closed-form derivative of a 1-D model."""
import numpy as np
import pytest
import torch
from torch import nn

from robustx.metrics.eni import eps_eni
from toy_models import linear_model


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
    res = eps_eni(model, x, y, eps, x_noisy=x_noisy, batch_size=3, progress=False)
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
    a, b = -3.0, 0.7
    model = nn.Linear(1, 2).double()
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[a], [0.0]], dtype=torch.float64))
        model.bias.copy_(torch.tensor([b, 0.0], dtype=torch.float64))
    x = torch.linspace(0.1, 0.9, 9, dtype=torch.float64)[:, None]
    y = torch.zeros(9, dtype=torch.long)
    res = eps_eni(model, x, y, 1e-6, draws=3, seed=2, progress=False)
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
    a = eps_eni(model, x, y, 0.1, draws=2, seed=3, progress=False)
    clean, noisy = model.seen[0], torch.cat(model.seen[1:])
    assert torch.equal(clean, x)
    delta = noisy - x.repeat(2, 1, 1, 1)
    assert delta.abs().max() <= 0.1 and delta.abs().max() > 0.09
    assert noisy.min() >= 0 and noisy.max() <= 1
    b = eps_eni(model, x, y, 0.1, draws=2, seed=3, progress=False)
    c = eps_eni(model, x, y, 0.1, draws=2, seed=4, progress=False)
    assert torch.equal(a.per_sample, b.per_sample) and not torch.equal(a.per_sample, c.per_sample)


def test_model_state_restored_and_bad_arguments():
    model = linear_model(3, shape=(12,))
    model.train()
    x = torch.rand(2, 3, 2, 2, dtype=torch.float64)
    y = torch.zeros(2, dtype=torch.long)
    eps_eni(model, x, y, 0.1, progress=False)
    assert model.training and all(p.requires_grad for p in model.parameters())
    with pytest.raises(ValueError, match="epsilon"):
        eps_eni(model, x, y, 0.0, progress=False)
    with pytest.raises(ValueError, match="x_noisy"):
        eps_eni(model, x, y, 0.1, x_noisy=x[:1], progress=False)
    with pytest.raises(ValueError, match="within"):
        eps_eni(model, x, y, 0.01, x_noisy=(x + 0.5).clamp(0, 1), progress=False)
    with pytest.raises(ValueError, match="draws"):
        eps_eni(model, x, y, 0.1, x_noisy=x, draws=2, progress=False)
    with pytest.raises(TypeError, match="y"):
        eps_eni(model, x, y.double(), 0.1, progress=False)
