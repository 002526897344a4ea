"""Neuron sensitivity and neuron uncertainty against hand-computed values and a
straightforward per-sample, per-neuron NumPy reference."""
import collections

import numpy as np
import pytest
import torch
from torch import nn

from robustx.models import DigitsCNN, ResNet20
from robustx.sensitivity import (
    merge_moments,
    moments_uncertainty,
    neuron_moments,
    neuron_sensitivity,
    neuron_sensitivity_stream,
    neuron_uncertainty,
    neuron_uncertainty_stream,
    top_k_count,
)
from toy_images import ink, png_pixels



def conv_linear_model() -> nn.Sequential:
    """1x1 conv with channel weights (1, -3) on a 2x2 image, then the sum of its outputs."""
    conv = nn.Conv2d(1, 2, 1, bias=True)
    fc = nn.Linear(8, 1, bias=True)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([1.0, -3.0]).view(2, 1, 1, 1))
        conv.bias.copy_(torch.tensor([0.5, 2.0]))
        fc.weight.fill_(1.0)
        fc.bias.fill_(-1.0)
    return nn.Sequential(conv, nn.Flatten(), fc)


def test_hand_computed_conv_and_linear():
    model = conv_linear_model()
    x = torch.zeros(2, 1, 2, 2)
    x_adv = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]], [[[0.0, 0.0], [0.0, 0.5]]]])
    sens = neuron_sensitivity(model, x, x_adv)
    # pair 1: channel 0 moves by 1 on 2 of 4 pixels, channel 1 by 3; the sum moves by 2 - 6 = -4
    # pair 2: channel 0 by 0.5 on 1 pixel, channel 1 by 1.5; the sum by 0.5 - 1.5 = -1
    assert list(sens) == ["0", "2"]
    torch.testing.assert_close(sens["0"], torch.tensor([(0.5 + 0.125) / 2, (1.5 + 0.375) / 2], dtype=torch.float64))
    torch.testing.assert_close(sens["2"], torch.tensor([(4.0 + 1.0) / 2], dtype=torch.float64))
    assert sens.n_inputs == 2
    assert sens.layer_means() == pytest.approx({"0": 1.25 / 2, "2": 2.5})


def digits_layer_outputs(model: DigitsCNN, x: torch.Tensor) -> dict:
    """The four Conv/Linear outputs of DigitsCNN, by calling the submodules in order."""
    f, c = model.features, model.classifier
    h0 = f[0](x)
    h2 = f[2](f[1](h0))
    h5 = c[1](c[0](f[4](f[3](h2))))
    h8 = c[3](c[2](h5))
    return {"features.0": h0, "features.2": h2, "classifier.1": h5, "classifier.3": h8}


def reference_sensitivity(model, x, x_adv) -> dict:
    """sigma = mean over pairs of sum |a - b| / size, one neuron and one pair at a time."""
    with torch.no_grad():
        a = {k: v.numpy() for k, v in digits_layer_outputs(model, x).items()}
        b = {k: v.numpy() for k, v in digits_layer_outputs(model, x_adv).items()}
    out = {}
    for name in a:
        n, c = a[name].shape[:2]
        sigma = np.zeros(c)
        for m in range(c):
            for i in range(n):
                diff = a[name][i, m] - b[name][i, m]
                sigma[m] += np.abs(diff).sum() / diff.size
        out[name] = sigma / n
    return out


@pytest.fixture
def digits_pairs():
    torch.manual_seed(1)
    model = DigitsCNN().double()
    x = torch.rand(23, 1, 8, 8, dtype=torch.float64)
    x_adv = (x + 0.2 * torch.randn_like(x)).clamp(0, 1)
    return model, x, x_adv


def test_agrees_with_reference(digits_pairs):
    model, x, x_adv = digits_pairs
    sens = neuron_sensitivity(model, x, x_adv, batch_size=5)
    ref = reference_sensitivity(model, x, x_adv)
    assert list(sens) == list(ref)
    for name in ref:
        assert sens[name].shape == (ref[name].size,)
        np.testing.assert_allclose(sens[name].numpy(), ref[name], rtol=1e-12, atol=0)


def test_zero_when_adversarial_equals_benign(digits_pairs):
    model, x, _ = digits_pairs
    sens = neuron_sensitivity(model, x, x.clone())
    for name in sens:
        assert torch.equal(sens[name], torch.zeros_like(sens[name]))


def test_invariant_to_batch_order_and_chunking(digits_pairs):
    model, x, x_adv = digits_pairs
    perm = torch.randperm(x.shape[0])
    base = neuron_sensitivity(model, x, x_adv, batch_size=64)
    permuted = neuron_sensitivity(model, x[perm], x_adv[perm], batch_size=4)
    # other batches round the float64 convolutions differently (last bits): rtol 1e-12
    for name in base:
        torch.testing.assert_close(permuted[name], base[name], rtol=1e-12, atol=0)


def test_stream_from_dataloader_matches_tensors(digits_pairs):
    model, x, x_adv = digits_pairs
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, x_adv), batch_size=6)
    streamed = neuron_sensitivity_stream(model, loader, ["features.2", "classifier.3"])
    direct = neuron_sensitivity(model, x, x_adv, ["classifier.3", "features.2"])
    assert list(streamed) == ["features.2", "classifier.3"] == list(direct)  # model order
    for name in direct:  # batches of 6 vs one of 23: float64 rounding of another batch shape, rtol 1e-12
        torch.testing.assert_close(streamed[name], direct[name], rtol=1e-12, atol=0)


def test_dotted_names_and_non_conv_modules():
    torch.manual_seed(0)
    model = ResNet20().eval()
    x = torch.rand(3, 3, 32, 32)
    x_adv = (x + 0.03).clamp(0, 1)
    sens = neuron_sensitivity(model, x, x_adv, ["layer2.0.downsample.0", "layer3.2", "fc"])
    assert {n: tuple(s.shape) for n, s in sens.items()} == {
        "layer2.0.downsample.0": (32,), "layer3.2": (64,), "fc": (10,)}
    with torch.no_grad():  # a whole block's output: its channels are the neurons
        a, b = model.layer1(model.relu(model.bn1(model.conv1(torch.cat([x, x_adv]))))).split(3)
        ref = model.layer3(model.layer2(a)), model.layer3(model.layer2(b))
    expected = (ref[0] - ref[1]).abs().mean(dim=(2, 3)).double().mean(dim=0)
    torch.testing.assert_close(sens["layer3.2"], expected, rtol=1e-5, atol=1e-7)


def test_linear_neurons_on_last_axis():
    torch.manual_seed(0)
    fc = nn.Linear(3, 2)
    x = torch.rand(4, 5, 3, dtype=torch.float64)
    x_adv = torch.rand(4, 5, 3, dtype=torch.float64)
    fc = fc.double()
    sens = neuron_sensitivity(nn.Sequential(fc), x, x_adv)
    with torch.no_grad():
        expected = (fc(x) - fc(x_adv)).abs().mean(dim=(0, 1))
    torch.testing.assert_close(sens["0"], expected)


def test_model_state_restored_and_no_parameter_grads(digits_pairs):
    model, x, x_adv = digits_pairs
    model.train()
    neuron_sensitivity(model, x, x_adv)
    neuron_uncertainty(model, x)
    assert model.training and all(p.requires_grad and p.grad is None for p in model.parameters())


def test_bad_input(digits_pairs):
    model, x, x_adv = digits_pairs
    with pytest.raises(ValueError, match="x_adv"):
        neuron_sensitivity(model, x, x_adv[:-1])
    with pytest.raises(ValueError, match="no module named 'features.9'"):
        neuron_sensitivity(model, x, x_adv, ["features.9"])
    bad = x_adv.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="x_adv"):
        neuron_sensitivity(model, x, bad)
    with pytest.raises(TypeError, match="x_adv"):
        neuron_sensitivity(model, x, (x_adv > 0.5))
    with pytest.raises(ValueError, match="batch_size"):
        neuron_sensitivity(model, x, x_adv, batch_size=0)
    with pytest.raises(TypeError, match="pairs"):
        neuron_sensitivity_stream(model, [x])
    with pytest.raises(ValueError, match="no inputs"):
        neuron_sensitivity_stream(model, [])


def test_output_changed_in_place_is_refused():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(inplace=True), nn.Flatten(), nn.Linear(144, 3))
    x = torch.rand(5, 1, 8, 8)
    x_adv = (x + 0.1).clamp(0, 1)
    with pytest.raises(ValueError, match="'0' is modified in place"):
        neuron_sensitivity(model, x, x_adv)
    with pytest.raises(ValueError, match="in place"):
        neuron_uncertainty(model, x, nn.Conv2d)
    sens = neuron_sensitivity(model, x, x_adv, ["1", "3"])  # the ReLU's own output is fine
    with torch.no_grad():
        expected = (model[0](x).relu() - model[0](x_adv).relu()).abs().mean(dim=(0, 2, 3))
    torch.testing.assert_close(sens["1"], expected.double(), rtol=1e-5, atol=1e-8)


def test_top_k_summaries(digits_pairs):
    model, x, x_adv = digits_pairs
    sens = neuron_sensitivity(model, x, x_adv)
    top = sens.top_k(3)
    for name, s in sens.items():
        order = np.argsort(-s.numpy(), kind="stable")[:3]
        np.testing.assert_array_equal(top[name].indices.numpy(), order)
        torch.testing.assert_close(top[name].values, s[order])
    assert sens.top_k(0.25)["classifier.1"].indices.numel() == 16  # 25 % of 64 units
    assert sens.value == pytest.approx(torch.cat(list(sens.values())).mean().item())
    assert top_k_count(0.1, 10) == 1 and top_k_count(0.01, 10) == 1 and top_k_count(50, 10) == 10
    for bad in (0, 1.5, -0.1, "3"):
        with pytest.raises((ValueError, TypeError), match="top_k must be"):
            top_k_count(bad, 10)


def test_top_k_ties_go_to_lower_index():
    model = nn.Sequential(nn.Linear(2, 4, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, 0.0], [2.0, 0.0], [2.0, 0.0], [1.0, 0.0]]))
    sens = neuron_sensitivity(model, torch.zeros(1, 2), torch.ones(1, 2))
    assert sens.top_k(3)["0"].indices.tolist() == [1, 2, 0]


def test_to_dict_is_json(digits_pairs):
    import json

    model, x, x_adv = digits_pairs
    sens = neuron_sensitivity(model, x, x_adv, progress=False)
    d = json.loads(json.dumps(sens.to_dict()))
    assert d["quantity"] == "sensitivity" and d["n_inputs"] == 23
    every_neuron = torch.cat([sens[n] for n in sens])
    assert d["value"] == pytest.approx(every_neuron.mean().item(), rel=1e-12) and d["value"] == sens.value
    assert d["layer_means"] == pytest.approx(sens.layer_means())
    assert {n: len(v) for n, v in d["scores"].items()} == {"features.0": 16, "features.2": 32,
                                                           "classifier.1": 64, "classifier.3": 10}
    assert d["scores"]["classifier.3"] == pytest.approx(sens["classifier.3"].tolist(), rel=0, abs=0)


def test_plot_writes_png(tmp_path, digits_pairs):
    model, x, x_adv = digits_pairs
    path = neuron_sensitivity(model, x, x_adv).plot(tmp_path / "sens.png")
    pixels = png_pixels(path.read_bytes())
    assert min(pixels.shape[:2]) >= 100 and ink(pixels) > 0.05, (pixels.shape, ink(pixels))


def test_plot_draws_layer_names_literally(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(collections.OrderedDict([("conv$^$", nn.Conv2d(1, 2, 3)), ("$_$", nn.ReLU()),
                                                   ("flat", nn.Flatten()), ("a$\\foo$", nn.Linear(2 * 6 * 6, 3))]))
    x = torch.rand(4, 1, 8, 8)
    sens = neuron_sensitivity(model, x, (x + 0.1).clamp(0, 1))
    assert list(sens) == ["conv$^$", "a$\\foo$"]
    path = sens.plot(tmp_path / "sens.png", title="NS of $x^$")
    pixels = png_pixels(path.read_bytes())
    assert min(pixels.shape[:2]) >= 100 and ink(pixels) > 0.05, (pixels.shape, ink(pixels))


def test_uncertainty_hand_computed():
    model = conv_linear_model()
    x = torch.tensor([[[[0.0, 0.0], [0.0, 0.0]]], [[[2.0, 0.0], [0.0, 0.0]]], [[[1.0, 1.0], [1.0, 1.0]]]])
    unc = neuron_uncertainty(model, x)
    # channel 0 (weight 1): the 12 values of its 2x2 map over the 3 inputs, 0 x4, (2, 0, 0, 0),
    # 1 x4 (plus the bias): mean 1/2, mean square 8/12, variance 2/3 - 1/4 = 5/12; channel 1: 9 x that
    var0 = 5 / 12
    torch.testing.assert_close(unc["0"], torch.tensor([var0, 9 * var0], dtype=torch.float64))
    # the Linear output is sum(x + 0.5) + sum(-3x + 2) - 1 = -2 sum(x) + const: (0, -4, -8) + const
    torch.testing.assert_close(unc["2"], torch.tensor([32 / 3], dtype=torch.float64))
    assert unc.layer_means()["0"] == pytest.approx(5 * var0)


def test_uncertainty_streaming_is_stable_and_matches_numpy():
    torch.manual_seed(0)
    model = DigitsCNN().double()
    with torch.no_grad():  # offset 1e8: a sum-of-squares formula would cancel completely
        model.features[0].bias.add_(1e8)
    x = torch.rand(37, 1, 8, 8, dtype=torch.float64)
    unc = neuron_uncertainty(model, x, ["features.0", "classifier.3"], batch_size=5)
    with torch.no_grad():
        outs = digits_layer_outputs(model, x)
    for name in unc:
        a = outs[name].numpy()
        ref = [np.var([a[i, c] for i in range(37)]) for c in range(a.shape[1])]  # neuron c's maps over the inputs
        np.testing.assert_allclose(unc[name].numpy(), ref, rtol=1e-6)
    labelled = torch.utils.data.TensorDataset(x, torch.zeros(37, dtype=torch.long))
    loader = torch.utils.data.DataLoader(labelled, batch_size=8)
    streamed = neuron_uncertainty_stream(model, loader, ["features.0", "classifier.3"])
    for name in unc:
        torch.testing.assert_close(streamed[name], unc[name], rtol=1e-6, atol=0)
    # the same input 5 times: each neuron's variance is that of its one map over its positions
    # (0 for a Linear unit), up to the rounding of batched float64 convs
    net = DigitsCNN().double()
    constant = neuron_uncertainty(net, x[:1].expand(5, -1, -1, -1).contiguous(), ["features.0", "classifier.3"])
    with torch.no_grad():
        one = digits_layer_outputs(net, x[:1])
    for name in constant:
        ref = one[name][0].reshape(one[name].shape[1], -1).var(dim=1, correction=0)
        torch.testing.assert_close(constant[name], ref, rtol=1e-9, atol=1e-28)
    assert constant["classifier.3"].abs().max() < 1e-28


def test_uncertainty_states_of_parts_merge_to_the_whole():
    """merge_moments of the moments of uneven parts (in order) gives the whole set's
    uncertainty: Chan et al.'s pairwise update is exact up to float64 rounding (rel 1e-12)."""
    torch.manual_seed(1)
    model = DigitsCNN().double()
    x = torch.rand(23, 1, 8, 8, dtype=torch.float64)
    whole = neuron_uncertainty(model, x, progress=False)
    parts = [neuron_moments(model, x[a:b], batch_size=4) for a, b in ((0, 1), (1, 12), (12, 23))]
    merged = merge_moments(parts)
    assert int(merged["n"]) == 23 and int(merged["count:features.0"]) == 23 * 8 * 8
    merged_u = moments_uncertainty(merged)
    assert list(merged_u) == list(whole)
    for name in whole:
        torch.testing.assert_close(merged_u[name], whole[name], rtol=1e-12, atol=0)


def test_real_cifar_models_agree_with_the_papers_claims(aisafety_dir):
    """Zhang et al.: neurons move more under adversarial than under random noise of the
    same size, and adversarial training lowers neuron sensitivity (5.1 -> 1.0 measured
    on all 100 images, bench/exp_sensitivity.py)."""
    from robustx.attacks import pgd
    from robustx.data import aisafety_cifar10
    from robustx.models import resnet20_cifar

    x, y = aisafety_cifar10(aisafety_dir)
    x, y = x[::5], y[::5]
    eps = 8 / 255
    sigma = {}
    for name in ("resnet20_cifar.pt", "CIFAR10_PAT_enhanced.pt"):
        model = resnet20_cifar(aisafety_dir / name)
        x_adv = pgd(model, x, y, eps, steps=5, step_size=2 / 255, seed=0)
        sigma[name] = neuron_sensitivity(model, x, x_adv).value
        if name == "resnet20_cifar.pt":
            sign = torch.randint(0, 2, x.shape, generator=torch.Generator().manual_seed(0)) * 2 - 1
            noise = neuron_sensitivity(model, x, (x + eps * sign).clamp(0, 1)).value
            assert sigma[name] > 1.2 * noise  # 4.5 vs 2.9 on these 20 images
    assert sigma["CIFAR10_PAT_enhanced.pt"] < 0.5 * sigma["resnet20_cifar.pt"]
