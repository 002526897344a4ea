"""robustx.coverage: hand-computed values, an independent pure-PyTorch reference, parity
with dnn-tip, merge / persistence, bad input."""
import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from robustx.coverage import NeuronCoverage, corner_tolerance
from robustx.modelutil import LayerOutputs, resolve_layers


# ----------------------------------------------------------------------------- helpers
def linear_model(weight, bias=None):
    lin = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    with torch.no_grad():
        lin.weight.copy_(weight)
        if bias is not None:
            lin.bias.copy_(bias)
    return nn.Sequential(lin)


class Nested(nn.Module):
    """Conv stem, a nested block and a head: layers at several depths."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(2, 4, 3, padding=1)
        self.block = nn.Sequential(nn.ReLU(), nn.Sequential(nn.Conv2d(4, 5, 3, stride=2), nn.Tanh()))
        self.head = nn.Linear(5 * 3 * 3, 6)

    def forward(self, x):
        return self.head(self.block(self.stem(x)).flatten(1))


def neuron_values(model, layers, x, neuron):
    """Independent neuron values per layer: (N, M) float64 and the raw outputs (N, -1)."""
    modules = resolve_layers(model, layers)
    with LayerOutputs(modules) as rec, torch.no_grad():
        model.eval()(x)
    out = {}
    for name in modules:
        o = rec.outputs[name].double()
        raw = o.reshape(o.shape[0], -1)
        if neuron == "channel" and o.dim() > 2:
            v = o.reshape(o.shape[0], o.shape[1], -1).mean(-1)
        else:
            v = raw
        out[name] = (v, raw)
    return out


FLOAT32_TOL = 1024 * 2.0 ** -23  # documented corner tolerance of float32 activations, relative to max(|low|, |high|)


def reference_metrics(model, layers, x_profile, x_test, neuron, k, top_k, threshold):
    """Straightforward definitions (DeepGauge / DeepXplore), computed from scratch, with the
    documented rounding tolerance at the profiled bounds (float32 models)."""
    prof = neuron_values(model, layers, x_profile, neuron)
    test = neuron_values(model, layers, x_test, neuron)
    sec = up = lo = nc = tk = total = 0
    patterns = [[] for _ in range(x_test.shape[0])]
    for name, (v, raw) in test.items():
        low, high = prof[name][0].amin(0), prof[name][0].amax(0)
        tol = FLOAT32_TOL * torch.maximum(low.abs(), high.abs())
        m = v.shape[1]
        total += m
        for n in range(m):
            edges = [low[n] + (high[n] - low[n]) * i / k for i in range(k + 1)]
            hit = set()
            for val in v[:, n]:
                if high[n] < val <= high[n] + tol[n]:
                    val = high[n]  # within rounding noise of a bound: at the bound
                if low[n] - tol[n] <= val < low[n]:
                    val = low[n]
                for i in range(k):
                    if edges[i] <= val < edges[i + 1] or (i == k - 1 and val == high[n]):
                        hit.add(i)
            sec += len(hit)
        up += int((v > high + tol).any(0).sum())
        lo += int((v < low - tol).any(0).sum())
        rmin, rmax = raw.amin(1, keepdim=True), raw.amax(1, keepdim=True)
        scaled_mean = (v - rmin) / (rmax - rmin)
        nc += int((scaled_mean > threshold).any(0).sum())
        top = torch.topk(v, min(top_k, m), dim=1).indices
        tk += len(set(top.flatten().tolist()))
        for i in range(x_test.shape[0]):
            patterns[i].append(frozenset(top[i].tolist()))
    return {
        "KMNC": sec / (k * total), "NBC": (up + lo) / (2 * total), "SNAC": up / total,
        "NC": nc / total, "TKNC": tk / total, "TKNP": len({tuple(p) for p in patterns}),
    }


def assert_metrics(got, want):
    for key, value in want.items():
        if key == "TKNP":
            assert getattr(got, key) == value, key
        else:
            assert getattr(got, key) == pytest.approx(value, abs=1e-12), key


# ------------------------------------------------------------------- hand computed
def test_hand_computed_linear_layer():
    # neurons (x1, x2, x1 + x2); profile {(0,0), (1,1)}: low = (0, 0, 0), high = (1, 1, 2)
    model = linear_model(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
    cov = NeuronCoverage(model, sections=2, top_k=1, threshold=0.8)
    cov.profile(torch.tensor([[0.0, 0.0], [1.0, 1.0]]))
    stats = cov.profile_stats()["0"]
    assert stats["low"].tolist() == [0, 0, 0] and stats["high"].tolist() == [1, 1, 2]
    assert stats["mean"].tolist() == [0.5, 0.5, 1.0] and stats["std"].tolist() == [0.5, 0.5, 1.0]
    # v = (0.25, 1, 1.25): sections n0:0, n1:1 (== high -> last), n2:1; scaled (0, .75, 1) -> n2; top n2
    # v = (2, -1, 1):      n0 upper, n1 lower, n2: section 1;        scaled (1, 0, 2/3) -> n0; top n0
    # v = (.1, .2, .3):    sections n0:0, n1:0, n2:0;               scaled (0, .5, 1) -> n2;  top n2
    r = cov.assess(torch.tensor([[0.25, 1.0], [2.0, -1.0], [0.1, 0.2]]))
    assert r.KMNC == pytest.approx(5 / 6)
    assert r.NBC == pytest.approx(2 / 6)
    assert r.SNAC == pytest.approx(1 / 3)
    assert r.NC == pytest.approx(2 / 3)
    assert r.TKNC == pytest.approx(2 / 3)
    assert r.TKNP == 2 and isinstance(r.TKNP, int)
    assert r.inputs == 3 and r.neurons == 3
    assert r.layers["0"].KMNC == pytest.approx(5 / 6)


def test_result_to_dict_is_json():
    import json

    model = linear_model(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    r = NeuronCoverage(model, sections=2, top_k=1).profile(torch.tensor([[0.0, 0.0], [1.0, 1.0]]))
    d = json.loads(json.dumps(r.assess(torch.tensor([[0.25, 2.0]])).to_dict()))
    # n0: section 0 of 2, n1 above high; scaled (0, 1) -> n1 above 0.5; top n1
    # value: NC, the headline of every result object
    assert d == {"value": 0.5, "NC": 0.5, "KMNC": 0.25, "NBC": 0.25, "SNAC": 0.5, "TKNC": 0.5, "TKNP": 1,
                 "inputs": 1, "neurons": 2,
                 "layers": {"0": {"value": 0.5, "NC": 0.5, "KMNC": 0.25, "NBC": 0.25, "SNAC": 0.5, "TKNC": 0.5,
                                  "neurons": 2, "source": "0"}}}


def test_kmnc_section_edges_are_inclusive():
    # one neuron, profile range [0, 1], k = 4: 0 -> section 0, 1 -> section 3, 0.5 -> 2, outside -> none
    model = linear_model(torch.tensor([[1.0]]))
    cov = NeuronCoverage(model, sections=4, top_k=1)
    cov.profile(torch.tensor([[0.0], [1.0]]))
    assert cov.assess(torch.tensor([[0.0], [1.0]])).KMNC == pytest.approx(2 / 4)
    assert cov.assess(torch.tensor([[0.5], [1.5], [-0.5]])).KMNC == pytest.approx(3 / 4)
    r = cov.result()
    assert r.NBC == pytest.approx(1.0) and r.SNAC == pytest.approx(1.0)


# ---------------------------------------------------------- rounding noise at the bounds
@pytest.mark.parametrize("neuron", ["channel", "element"])
def test_profiled_inputs_in_other_batch_splits_are_no_corner_cases(neuron):
    """The profile's own inputs assessed in other batches (a conv / Linear output's last bits
    depend on the batch shape): no corner case, and every neuron's lowest and highest KMNC
    section is hit, by the inputs that gave its profiled min and max."""
    torch.manual_seed(7)
    model = Nested()
    x = torch.randn(24, 2, 7, 7)
    state = NeuronCoverage(model, neuron=neuron, position="pre", sections=4, batch_size=24).profile(x).state_dict()
    for batch_size in (1, 5, 7, 24):
        cov = NeuronCoverage(model, neuron=neuron, position="pre", sections=4, batch_size=batch_size)
        r = cov.load_state_dict(state, coverage=False).assess(x)
        assert r.NBC == 0 and r.SNAC == 0, batch_size
        for name, states in cov.state_dict()["coverage"]["states"].items():
            assert states["sections"][:, 0].all() and states["sections"][:, -1].all(), (batch_size, name)


def test_values_within_rounding_noise_of_a_bound_are_at_the_bound():
    # identity Linear: the neuron values are the inputs, exactly; low = (0.5, -2), high = (3, 1)
    model = linear_model(torch.eye(2), torch.zeros(2))
    cov = NeuronCoverage(model, sections=4, top_k=1).profile(torch.tensor([[0.5, 1.0], [3.0, -2.0]]))
    low, high = torch.tensor([0.5, -2.0]), torch.tensor([3.0, 1.0])
    inf = torch.tensor(math.inf)
    above = torch.nextafter(torch.nextafter(high, inf), inf)  # 2 float32 ulps above the max
    below = torch.nextafter(low, -inf)  # 1 ulp below the min
    r = cov.assess(torch.stack([above, below]))
    # no corner case; each neuron hits its top section (at high) and its bottom one (at low)
    assert (r.NBC, r.SNAC, r.KMNC) == (0.0, 0.0, 4 / 8)

    tol = 1024 * 2.0 ** -23 * torch.tensor([3.0, 2.0])  # the documented float32 tolerance, max(|low|, |high|)
    r = cov.reset().assess(torch.stack([high + 0.9 * tol, low - 0.9 * tol]))
    assert (r.NBC, r.SNAC, r.KMNC) == (0.0, 0.0, 4 / 8)
    r = cov.reset().assess(torch.stack([high + 1.1 * tol, low - 1.1 * tol]))
    assert (r.NBC, r.SNAC, r.KMNC) == (1.0, 1.0, 0.0)
    # clearly outside (1e-3 relative): counted, as in DeepGauge
    r = cov.reset().assess(torch.stack([high * (1 + 1e-3), torch.tensor([3.0, -2.0 * (1 + 1e-3)])]))
    assert (r.NBC, r.SNAC) == (3 / 4, 1.0)


def test_corner_tolerance_by_dtype():
    low, high = torch.tensor([-1.0, 0.0, 2.0], dtype=torch.float64), torch.tensor([0.5, 0.0, 4.0], dtype=torch.float64)
    scale = torch.tensor([1.0, 0.0, 4.0], dtype=torch.float64)
    for dtype, rtol in ((torch.float32, 1024 * 2.0 ** -23), (torch.float64, 1024 * 2.0 ** -52),
                        (torch.float16, 4 * 2.0 ** -10), (torch.bfloat16, 4 * 2.0 ** -7)):
        torch.testing.assert_close(corner_tolerance(low, high, dtype), rtol * scale, rtol=1e-15, atol=0)


@pytest.mark.filterwarnings("ignore:KMNC, NBC and SNAC need")
def test_nc_scales_over_raw_elements():
    # identity 1x1 conv; channel 0 = [0, 4] (mean 2), channel 1 = [1, 1] (mean 1); raw min 0, max 4
    conv = nn.Conv2d(2, 2, 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.eye(2).reshape(2, 2, 1, 1))
    model = nn.Sequential(conv)
    x = torch.tensor([[[[0.0, 4.0]], [[1.0, 1.0]]]])
    # DeepXplore: scaled channel means (2-0)/4 = .5 and (1-0)/4 = .25 (scaling the means instead
    # of the raw elements would give 1 and 0, and NC = 0.5 at t = 0.2)
    assert NeuronCoverage(model, threshold=0.2, top_k=1).update(x).result().NC == 1.0
    assert NeuronCoverage(model, threshold=0.3, top_k=1).update(x).result().NC == 0.5
    # element neurons: scaled (0, 1, .25, .25) -> 3 of 4 above 0.2
    assert NeuronCoverage(model, neuron="element", threshold=0.2, top_k=1).update(x).result().NC == 0.75


@pytest.mark.filterwarnings("ignore:KMNC, NBC and SNAC need")
def test_top_k_larger_than_a_layer_takes_the_whole_layer():
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 1))
    cov = NeuronCoverage(model, top_k=2)
    r = cov.update(torch.randn(5, 3)).result()
    assert r.layers["1"].TKNC == 1.0 and r.layers["0"].TKNC >= 0.5


# ------------------------------------------------------------------ reference check
@pytest.mark.parametrize("neuron", ["channel", "element"])
def test_matches_reference_on_random_model(neuron, backend):
    torch.manual_seed(1)
    model = Nested()
    x_profile = torch.randn(40, 2, 7, 7)
    # the test data reuse part of the profile data, so values equal to low / high occur
    x_test = torch.cat([x_profile[:10], 1.3 * torch.randn(30, 2, 7, 7)])
    for layers, k, top_k, t in ((None, 5, 2, 0.5), (["stem", "block.1", "head"], 3, 3, 0.3)):
        # one batch of 40 each, as in the reference (float32 rounding can depend on the batch)
        cov = NeuronCoverage(model, layers, neuron=neuron, position="pre", sections=k, top_k=top_k, threshold=t, batch_size=40)
        cov.profile(x_profile)
        got = cov.assess(x_test)
        want = reference_metrics(model, layers, x_profile, x_test, neuron, k, top_k, t)
        assert_metrics(got, want)
        assert 0 < got.KMNC <= 1 and 0 < got.NBC < 1 and got.TKNP > 1


def test_profile_streams_exact_statistics():
    torch.manual_seed(2)
    model = Nested()
    x = torch.randn(57, 2, 7, 7)
    cov = NeuronCoverage(model, position="pre", batch_size=10)
    cov.profile(x[:30]).profile([(x[30:], torch.zeros(27))])  # two calls, a loader of (x, y)
    # same batches as the profile (a float32 GEMM's rounding depends on the batch size)
    starts = [(i, min(i + 10, end)) for begin, end in ((0, 30), (30, 57)) for i in range(begin, end, 10)]
    parts = [neuron_values(model, None, x[i:j], "channel") for i, j in starts]
    for name, s in cov.profile_stats().items():
        v = torch.cat([p[name][0] for p in parts]).numpy()
        np.testing.assert_array_equal(s["low"].numpy(), v.min(0))
        np.testing.assert_array_equal(s["high"].numpy(), v.max(0))
        np.testing.assert_allclose(s["mean"].numpy(), v.mean(0), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(s["std"].numpy(), v.std(0), rtol=1e-10, atol=1e-12)


# ------------------------------------------------------------------- dnn-tip parity
def test_parity_with_dnn_tip():
    """dnn-tip on the same channel-mean activations and the same bounds. Conventions mapped:
    dnn-tip does no spatial reduction (we pass it the (N, M) channel means); NBC / SNAC with
    scaler = 0 (bounds = min / max); its KMNC sections are half-open and its NBC / SNAC
    comparisons inclusive, which agrees with ours when no test value equals a bound (checked);
    coverage = any over inputs of its per-input profiles; TKNC ties are absent (checked)."""
    nc = pytest.importorskip("dnn_tip.neuron_coverage")
    from robustx.data import digits
    from robustx.models import digits_cnn

    model = digits_cnn()
    x_train, _ = digits("train")
    x_test, _ = digits("test")
    k, top_k = 6, 3
    cov = NeuronCoverage(model, position="pre", sections=k, top_k=top_k, batch_size=len(x_train))  # the reference's batches
    cov.profile(x_train)
    got = cov.assess(x_test)

    train = neuron_values(model, None, x_train, "channel")
    test = neuron_values(model, None, x_test, "channel")
    names = list(train)
    mins = [train[n][0].amin(0).numpy() for n in names]
    maxs = [train[n][0].amax(0).numpy() for n in names]
    for n, lo, hi in zip(names, mins, maxs):
        np.testing.assert_array_equal(cov.profile_stats()[n]["low"].numpy(), lo)
        np.testing.assert_array_equal(cov.profile_stats()[n]["high"].numpy(), hi)
    acts = [test[n][0].numpy() for n in names]
    for a, lo, hi in zip(acts, mins, maxs):
        assert not np.isin(a, np.concatenate([lo, hi])).any()
        srt = np.sort(a, axis=1)
        assert (np.diff(srt, axis=1) != 0).all()
    zeros = [np.zeros_like(m) for m in mins]

    def covered(method):
        return method(acts)[1].any(axis=0).mean()

    assert got.KMNC == pytest.approx(covered(nc.KMNC(mins, maxs, k)), abs=1e-12)
    assert got.NBC == pytest.approx(covered(nc.NBC(mins, maxs, zeros, 0.0)), abs=1e-12)
    assert got.SNAC == pytest.approx(covered(nc.SNAC(maxs, zeros, 0.0)), abs=1e-12)
    assert got.TKNC == pytest.approx(covered(nc.TKNC(top_k)), abs=1e-12)
    assert 0 < got.SNAC < got.KMNC < 1


# ------------------------------------------------------------------ layer positions
@pytest.mark.filterwarnings("ignore:KMNC, NBC and SNAC need")
def test_post_position_uses_following_activation():
    from robustx.models import digits_cnn, resnet20_cifar

    torch.manual_seed(3)
    model = digits_cnn()
    x = torch.rand(20, 1, 8, 8)
    post = NeuronCoverage(model, position="post", top_k=3).update(x).result()
    sources = {n: d.source for n, d in post.layers.items()}
    assert sources == {
        "features.0": "features.1", "features.2": "features.3",
        "classifier.1": "classifier.2", "classifier.3": "classifier.3",
    }
    relu = NeuronCoverage(model, ["features.1", "features.3", "classifier.2"], top_k=3).update(x).result()
    for pre_name, relu_name in (("features.0", "features.1"), ("classifier.1", "classifier.2")):
        assert post.layers[pre_name].NC == relu.layers[relu_name].NC
        assert post.layers[pre_name].TKNC == relu.layers[relu_name].TKNC

    # ResNet-20 reuses one nn.ReLU per block: one layer per call, conv1 of a block -> relu#0
    net = resnet20_cifar()
    xs = torch.rand(6, 3, 32, 32)
    by_relu = NeuronCoverage(net, nn.ReLU, top_k=1).update(xs).result().layers
    assert len(by_relu) == 1 + 9 * 2 and "layer2.1.relu#1" in by_relu
    by_post = NeuronCoverage(net, position="post", top_k=1).update(xs).result().layers
    assert by_post["layer2.1.conv1"].source == "layer2.1.relu#0"
    assert by_post["layer2.1.conv2"].source == "layer2.1.conv2"  # addition before the ReLU
    assert by_post["layer2.1.conv1"].NC == by_relu["layer2.1.relu#0"].NC
    assert by_post["layer2.1.conv1"].TKNC == by_relu["layer2.1.relu#0"].TKNC


# ------------------------------------------------------------- merge and persistence
def test_merge_equals_one_pass_over_the_union():
    torch.manual_seed(4)
    model = Nested()
    x_profile, x_test = torch.randn(30, 2, 7, 7), torch.randn(50, 2, 7, 7)
    whole = NeuronCoverage(model, sections=4, top_k=2, batch_size=7).profile(x_profile)
    state = whole.state_dict()
    whole.update(x_test)
    shards = []
    # shards cut at a batch boundary: the same batches of 7 as the one pass, so the neuron values
    # are the same computation and the merged bitmaps must equal its bitmaps exactly
    for part in (x_test[:21], x_test[21:]):
        shard = NeuronCoverage(model, sections=4, top_k=2, batch_size=7).load_state_dict(state)
        shards.append(shard.update(part))
    merged = NeuronCoverage(model, sections=4, top_k=2).merge(shards[0]).merge(shards[1])
    got, want = merged.result(), whole.result()
    assert got == want and want.TKNP > 1 and got.inputs == 50
    assert merged.patterns == whole.patterns
    a, b = merged.state_dict()["coverage"]["states"], whole.state_dict()["coverage"]["states"]
    for name in a:
        for s in a[name]:
            assert torch.equal(a[name][s], b[name][s])
    # a shard alone covers less than the union
    assert shards[0].result().TKNP < want.TKNP


def test_state_dict_round_trip(tmp_path):
    torch.manual_seed(5)
    model = Nested()
    x_profile, x1, x2 = torch.randn(30, 2, 7, 7), torch.randn(20, 2, 7, 7), torch.randn(20, 2, 7, 7)
    cov = NeuronCoverage(model, sections=3).profile(x_profile).update(x1)
    torch.save(cov.state_dict(), tmp_path / "cov.pt")
    loaded = NeuronCoverage(model, sections=3).load_state_dict(torch.load(tmp_path / "cov.pt", weights_only=True))
    assert loaded.result() == cov.result()
    assert loaded.update(x2).result() == cov.update(x2).result()
    # profile only, reused with another k
    prof = NeuronCoverage(model, sections=7).load_state_dict(cov.state_dict(), coverage=False)
    fresh = NeuronCoverage(model, sections=7).profile(x_profile)
    assert prof.assess(x1) == fresh.assess(x1)
    for name, s in prof.profile_stats().items():
        for key in s:
            assert torch.equal(s[key], fresh.profile_stats()[name][key])


def test_loader_and_tensor_give_the_same_result():
    torch.manual_seed(6)
    model = Nested()
    x, y = torch.randn(33, 2, 7, 7), torch.zeros(33, dtype=torch.long)
    # loader batches of 10 chunked by batch_size 5 make the tensor's batches (5, ..., 5, 3): the same
    # computations, so the results are equal exactly (other batches could move values by rounding)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=10)
    a = NeuronCoverage(model, batch_size=5).profile(loader).assess(loader)
    b = NeuronCoverage(model, batch_size=5).profile(x).assess(x)
    assert a == b


def test_model_state_is_restored():
    model = Nested().train()
    flags = [p.requires_grad for p in model.parameters()]
    NeuronCoverage(model).profile(torch.randn(4, 2, 7, 7)).assess(torch.randn(4, 2, 7, 7))
    assert model.training and [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())
    assert not any(m._forward_hooks for m in model.modules())


# ---------------------------------------------------------------------- bad input
def test_bad_arguments():
    model = Nested()
    with pytest.raises(ValueError, match="no module named 'nope'"):
        NeuronCoverage(model, layers=["stem", "nope"])
    for kwargs, name in (
        (dict(sections=0), "sections"), (dict(top_k=0), "top_k"), (dict(batch_size=0), "batch_size"),
        (dict(neuron="unit"), "neuron"), (dict(position="after"), "position"), (dict(threshold=math.nan), "threshold"),
    ):
        with pytest.raises(ValueError, match=name):
            NeuronCoverage(model, **kwargs)
    wrong_types = ((dict(sections=2.5), "sections"), (dict(top_k="2"), "top_k"), (dict(threshold="a"), "threshold"))
    for kwargs, name in wrong_types:
        with pytest.raises(TypeError, match=name):
            NeuronCoverage(model, **kwargs)
    with pytest.raises(TypeError, match="model"):
        NeuronCoverage("model")
    cov = NeuronCoverage(model)
    with pytest.raises(TypeError, match="x must be"):
        cov.update([1, 2])
    with pytest.raises(ValueError, match="NaN"):
        cov.update(torch.full((2, 2, 7, 7), math.nan))
    with pytest.raises(RuntimeError, match="nothing counted"):
        cov.result()


def test_counting_before_profiling():
    model = Nested()
    x = torch.randn(10, 2, 7, 7)
    cov = NeuronCoverage(model).update(x)
    with pytest.warns(UserWarning, match="profile"):
        r = cov.result()
    assert r.KMNC is None and r.NBC is None and r.SNAC is None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = NeuronCoverage(model).profile(x).update(x).result()
    assert (r.NC, r.TKNC, r.TKNP) == (ref.NC, ref.TKNC, ref.TKNP)
    with pytest.raises(RuntimeError, match="reset"):
        cov.profile(x)
    assert cov.reset().profile(x).update(x).result() == ref


def test_layer_output_changing_shape():
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Conv2d(3, 2, 3))
    cov = NeuronCoverage(model).profile(torch.rand(4, 1, 8, 8))
    with pytest.raises(ValueError, match="shape changed"):
        cov.update(torch.rand(4, 1, 6, 6))


def test_incompatible_merge_and_load():
    torch.manual_seed(7)
    model = Nested()
    x = torch.randn(10, 2, 7, 7)
    a = NeuronCoverage(model, sections=3).profile(x).update(x)
    with pytest.raises(ValueError, match="sections differs"):
        a.merge(NeuronCoverage(model, sections=4).profile(x).update(x))
    with pytest.raises(ValueError, match="different profiles"):
        a.merge(NeuronCoverage(model, sections=3).profile(x[:5]).update(x))
    with pytest.raises(ValueError, match="sections=3"):
        NeuronCoverage(model, sections=4).load_state_dict(a.state_dict())
    other = nn.Sequential(nn.Linear(3, 2))
    with pytest.raises(ValueError, match="do not exist"):
        NeuronCoverage(other).load_state_dict(a.state_dict(), coverage=False)
    # same module names, different shapes: caught on the first forward pass
    wide = Nested()
    wide.head = nn.Linear(45, 7)
    loaded = NeuronCoverage(wide, sections=3).load_state_dict(a.state_dict())
    with pytest.raises(ValueError, match="does not match"):
        loaded.update(x)


def test_default_counts_activation_outputs_as_deepxplore():
    """Default position "post": a Conv/Linear layer's neurons are the outputs of the ReLU that
    follows it (through BatchNorm), the logits layer keeps its own output."""
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 6 * 6, 4)).eval()
    x = torch.randn(12, 1, 8, 8)
    with pytest.warns(UserWarning, match="need the neurons' profiled ranges"):
        default = NeuronCoverage(model, top_k=1, progress=False).update(x).result()
    assert [layer.source for layer in default.layers.values()] == ["2", "4"]
    relu_out = model[:3](x).mean((2, 3))
    logits = model(x)
    scaled = lambda v, out: ((v - out.amin(1, keepdim=True)) / (out.amax(1, keepdim=True) - out.amin(1, keepdim=True)))  # noqa: E731
    covered = (scaled(relu_out, model[:3](x).flatten(1)) > 0.5).any(0).sum() + (scaled(logits, logits) > 0.5).any(0).sum()
    assert default.NC == pytest.approx(covered.item() / 7)


@pytest.mark.parametrize("row", [[3e38, 3e38], [3e38, -3e38]], ids=["inf", "nan (inf - inf)"])
def test_non_finite_activations_name_the_layer(row):
    """Finite inputs whose activations overflow: the error names the layer instead of letting
    NaN into the top-k sets."""
    model = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 2))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([row, [1.0, 1.0]]))
    with pytest.raises(ValueError, match="layer '0' .*NaN or infinite activations"):
        NeuronCoverage(model, top_k=1, progress=False).update(torch.full((3, 2), 10.0))
