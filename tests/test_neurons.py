"""robustx.neurons: the neuron-axis rule (and the same neurons in coverage and sensitivity),
the (N, C, L) view, and RunningMoments against torch.var."""
import pytest
import torch
from torch import nn

from robustx.coverage import NeuronCoverage
from robustx.neurons import RunningMoments, default_axis, neuron_axes, neuron_view
from robustx.sensitivity import neuron_sensitivity, neuron_uncertainty


def test_default_axis_by_module_type():
    assert default_axis(nn.Linear(3, 2)) == -1
    assert default_axis(nn.LazyLinear(2)) == -1  # a subclass of Linear
    for module in (nn.Conv2d(1, 2, 3), nn.Conv1d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU(), nn.Sequential()):
        assert default_axis(module) == 1


def test_neuron_axes_override():
    modules = {"conv": nn.Conv2d(1, 2, 3), "fc": nn.Linear(3, 2)}
    assert neuron_axes(modules) == {"conv": 1, "fc": -1}
    assert neuron_axes(modules, 2) == {"conv": 2, "fc": 2}
    assert neuron_axes(modules, {"fc": 1}) == {"conv": 1, "fc": 1}
    with pytest.raises(ValueError, match="not chosen"):
        neuron_axes(modules, {"head": 1})
    with pytest.raises(ValueError, match="batch axis"):
        neuron_axes(modules, 0)
    with pytest.raises(TypeError, match=r"axis\['fc'\]"):
        neuron_axes(modules, {"fc": 1.0})


def test_neuron_view_moves_the_axis_and_flattens_the_rest():
    out = torch.arange(2 * 3 * 4 * 5).reshape(2, 3, 4, 5)
    assert torch.equal(neuron_view(out, 1, "l"), out.reshape(2, 3, 20))
    # neuron c of axis -1 holds out[n, :, :, c] in order
    v = neuron_view(out, -1, "l")
    assert v.shape == (2, 5, 12) and torch.equal(v[1, 4], out[1, :, :, 4].flatten())
    assert neuron_view(out[:, :, 0, 0], -1, "l").shape == (2, 3, 1)
    with pytest.raises(ValueError, match="'l'.*axis 4"):
        neuron_view(out, 4, "l")
    with pytest.raises(ValueError, match="axis -4"):
        neuron_view(out, -4, "l")  # the batch axis
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        neuron_view(torch.zeros(2), 1, "l")


def test_running_moments_match_torch_var_over_uneven_chunks():
    torch.manual_seed(0)
    x = 3.0 + 2.0 * torch.randn(101, 4, 3, dtype=torch.float64)
    sizes = [1, 37, 2, 50, 11]
    one = RunningMoments()
    for part in x.split(sizes):
        one.update(part)
    torch.testing.assert_close(one.variance(), torch.var(x, dim=0, correction=0), rtol=1e-12, atol=0)
    torch.testing.assert_close(one.mean, x.mean(0), rtol=1e-12, atol=0)
    assert one.n == 101
    # merge of two streams fed with uneven chunks == one stream
    a, b = RunningMoments(), RunningMoments()
    for part in x[:30].split([7, 23]):
        a.update(part)
    for part in x[30:].split([3, 60, 8]):
        b.update(part)
    merged = a.merge(b).merge(RunningMoments())
    torch.testing.assert_close(merged.variance(), torch.var(x, dim=0, correction=0), rtol=1e-12, atol=0)
    assert RunningMoments().merge(b).n == 71
    # float32 input is accumulated in float64
    f32 = RunningMoments().update(x.float())
    assert f32.mean.dtype == torch.float64
    with pytest.raises(ValueError, match="no values"):
        RunningMoments().variance()


class TokenModel(nn.Module):
    """A Linear applied to tokens: (N, T, 3) -> (N, T, 4) -> logits (N, 2)."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 4)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        return self.head(self.fc(x).mean(1))


@pytest.mark.filterwarnings("ignore:KMNC, NBC and SNAC need")
def test_token_linear_layer_has_the_same_neurons_in_coverage_and_sensitivity():
    torch.manual_seed(0)
    model = TokenModel().double()
    x = torch.randn(6, 5, 3, dtype=torch.float64)
    x_adv = x + 0.1 * torch.randn_like(x)
    with torch.no_grad():
        h, h_adv = model.fc(x), model.fc(x_adv)  # (6, 5, 4): 4 units, 5 tokens each
    sens = neuron_sensitivity(model, x, x_adv, ["fc"], progress=False)
    torch.testing.assert_close(sens["fc"], (h - h_adv).abs().mean(dim=(0, 1)))
    unc = neuron_uncertainty(model, x, ["fc"], progress=False)
    torch.testing.assert_close(unc["fc"], h.reshape(-1, 4).var(dim=0, correction=0))  # over inputs and tokens
    cov = NeuronCoverage(model, ["fc"], top_k=1, progress=False).profile(x)
    stats = cov.profile_stats()["fc"]
    torch.testing.assert_close(stats["low"], h.mean(1).amin(0))  # unit value = mean over its tokens
    torch.testing.assert_close(stats["high"], h.mean(1).amax(0))
    r = cov.assess(x)
    assert r.neurons == sens["fc"].numel() == unc["fc"].numel() == 4
    # TKNC with top-1: the units that are the largest token mean for some input
    assert r.TKNC == len(set(h.mean(1).argmax(1).tolist())) / 4
    # an explicit axis: the 5 tokens as neurons, in both metrics
    by_token = neuron_sensitivity(model, x, x_adv, ["fc"], axis=1, progress=False)
    torch.testing.assert_close(by_token["fc"], (h - h_adv).abs().mean(dim=(0, 2)))
    assert NeuronCoverage(model, ["fc"], axis={"fc": 1}, progress=False).assess(x).neurons == 5
