"""robustx.clever: exact on linear models, equal to a naive per-sample reference, invariant
to logit scaling, deterministic, chunking-independent, hygienic with models, strict on input."""
import json
import math
import warnings

import pytest
import torch
from torch import nn

from robustx import ops
from robustx.clever import CleverResult, clever
from robustx.data import digits
from robustx.models import digits_cnn
from robustx.weibull import fit_reverse_weibull

TINY = dict(n_batches=8, n_samples=16, progress=False)


@pytest.fixture(scope="module")
def cnn():
    return digits_cnn()


@pytest.fixture(scope="module")
def images():
    return digits("test")[0][:2]


class Scaled(nn.Module):
    def __init__(self, model, factor):
        super().__init__()
        self.model, self.factor = model, factor

    def forward(self, x):
        return self.model(x) * self.factor


def linear_model(d=12, k=5, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(d, k))


@pytest.mark.parametrize("norm", [1, 2, "inf"])
def test_linear_model_equals_exact_boundary_distance(norm):
    model = linear_model()
    x = torch.randn(4, 1, 3, 4)
    res = clever(model, x, norm=norm, radius=100.0, **TINY)
    w, b = model[1].weight.double(), model[1].bias.double()
    f = x.flatten(1).double() @ w.T + b
    q = ops.dual_norm(ops.parse_norm(norm))
    exact = []
    for i, c in enumerate(f.argmax(1).tolist()):
        dists = [(f[i, c] - f[i, j]) / torch.linalg.vector_norm(w[c] - w[j], ord=q) for j in range(5) if j != c]
        exact.append(min(dists).item())
    torch.testing.assert_close(res.scores, torch.tensor(exact, dtype=torch.float64), rtol=1e-2, atol=0)
    assert res.fallback.all()  # constant gradient norms: the Weibull fit is skipped, flagged


# max_chunk -> passes of (images, batches, targets) with N_b = 6, N_s = 5, T = 2 (60 rows per image):
# None (1024 rows): both images in one pass; 25: 2 batches x 2 targets; 12: 1 batch x 2 targets;
# 7: 1 batch x 1 target; 3: 1 batch x 1 target, each batch in two forward/backward pieces (3 + 2 rows)
PASSES = {None: (17, 6, 2), 25: (1, 2, 2), 12: (1, 1, 2), 7: (1, 1, 1), 3: (1, 1, 1)}


@pytest.mark.parametrize("max_chunk", list(PASSES))
def test_matches_a_naive_per_sample_reference(max_chunk):
    import sys

    assert sys.modules["robustx.clever"]._pass_sizes(2, 6, 5, max_chunk or 1024) == PASSES[max_chunk]
    torch.manual_seed(1)
    model = nn.Sequential(nn.Flatten(), nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 4))
    x = torch.rand(2, 1, 2, 3)
    pred = model(x).argmax(1)
    targets = torch.stack([(pred + 1) % 4, (pred + 2) % 4], 1)
    nb, bs, radius, seed = 6, 5, 0.7, 3
    res = clever(model, x, norm=2, radius=radius, n_batches=nb, n_samples=bs, targets=targets,
                 clip_values=(0.0, 1.0), seed=seed, max_chunk=max_chunk, progress=False, on_fallback="max")
    s = nb * bs
    maxima = torch.zeros(2, 2, nb, dtype=torch.float64)
    g0 = torch.zeros(2, 2, dtype=torch.float64)
    for i in range(2):
        pts = ops.ball_sample(x[i : i + 1], s, radius, 2, (0.0, 1.0), seed, offset=i * s)[0]
        c = pred[i]
        for t in range(2):
            j = targets[i, t]
            out0 = model(x[i : i + 1])[0]
            g0[i, t] = (out0[c] - out0[j]).item()
            norms = []
            for k in range(s):
                p = pts[k : k + 1].clone().requires_grad_(True)
                out = model(p)[0]
                (grad,) = torch.autograd.grad(out[c] - out[j], p)
                norms.append(grad.double().norm().item())
            maxima[i, t] = torch.tensor(norms, dtype=torch.float64).view(nb, bs).amax(1)
    fit = fit_reverse_weibull(maxima.view(4, nb))
    torch.testing.assert_close(res.g0, g0, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(res.max_sampled.view(-1), maxima.view(4, nb).amax(1), rtol=1e-6, atol=0)
    # the maxima agree to float32 rounding; a fit on a flat likelihood ridge may amplify that
    torch.testing.assert_close(res.lipschitz.view(-1), fit.estimate, rtol=1e-2, atol=0)
    expected = torch.minimum(g0 / fit.estimate.view(2, 2), torch.tensor(radius, dtype=torch.float64))
    torch.testing.assert_close(res.target_scores, expected, rtol=1e-2, atol=0)
    torch.testing.assert_close(res.scores, res.target_scores.amin(1))
    assert torch.equal(res.targets, targets) and torch.equal(res.predicted, pred)


def test_same_numbers_as_the_per_image_passes_of_version_0_1(cnn):
    """Values of robustx 0.1.0 (one ball_sample call and one op call per image and pass,
    maxima merged in Python) for the digits CNN: the stream (sample s of image i) is unchanged."""
    x = digits("test")[0][:3]
    res = clever(cnn, x, norm="inf", radius=0.7, n_batches=8, n_samples=16, targets="top2",
                 clip_values=(0, 1), seed=3, progress=False, on_fallback="max")
    old_max = [193.5040740966797, 152.98239135742188, 189.17010498046875]
    old_scores = [0.013292332075142027, 0.07752681841364159, 0.05217978505737252]
    torch.testing.assert_close(res.max_sampled.view(-1), torch.tensor(old_max, dtype=torch.float64), rtol=1e-6, atol=0)
    # a fit amplifies float32 rounding of the gradients (batch-size dependent conv kernels)
    torch.testing.assert_close(res.scores, torch.tensor(old_scores, dtype=torch.float64), rtol=1e-3, atol=0)


def test_logit_scaling_leaves_scores_unchanged(cnn, images):
    base = clever(cnn, images, norm=2, radius=2.0, clip_values=(0, 1), **TINY)
    assert (base.scores > 0).all() and (base.scores < 2.0).all()
    # x4 is exact in floating point: every gradient and maximum scales exactly
    exact = clever(Scaled(cnn, 4.0), images, norm=2, radius=2.0, clip_values=(0, 1), **TINY)
    torch.testing.assert_close(exact.scores, base.scores, rtol=1e-12, atol=0)
    torch.testing.assert_close(exact.lipschitz, 4.0 * base.lipschitz, rtol=1e-12, atol=0)
    # x3 rounds the gradients; fits on a flat likelihood ridge (huge shape) amplify that a little
    scaled = clever(Scaled(cnn, 3.0), images, norm=2, radius=2.0, clip_values=(0, 1), **TINY)
    torch.testing.assert_close(scaled.scores, base.scores, rtol=1e-2, atol=0)


def test_same_seed_same_result_and_seed_matters(cnn, images):
    a = clever(cnn, images, norm="inf", radius=0.3, seed=5, **TINY)
    b = clever(cnn, images, norm="inf", radius=0.3, seed=5, **TINY)
    c = clever(cnn, images, norm="inf", radius=0.3, seed=6, **TINY)
    assert torch.equal(a.scores, b.scores) and torch.equal(a.max_sampled, b.max_sampled)
    assert not torch.equal(a.max_sampled, c.max_sampled)


@pytest.mark.parametrize("max_chunk", [2, 7, 40, 120])
def test_chunking_does_not_change_results(max_chunk):
    # 3 targets, 4 batches of 5: pieces of a batch (2), one batch x one target per pass (7),
    # two batches x all targets (40), both images whole in one pass (120)
    torch.manual_seed(2)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 4))
    x = torch.rand(2, 1, 3, 4)
    settings = dict(norm=1, radius=1.0, clip_values=(0, 1), n_batches=4, n_samples=5, progress=False)
    base = clever(model, x, **settings)
    chunked = clever(model, x, max_chunk=max_chunk, **settings)
    torch.testing.assert_close(chunked.max_sampled, base.max_sampled, rtol=1e-5, atol=0)
    torch.testing.assert_close(chunked.scores, base.scores, rtol=1e-2, atol=0)


def test_model_mode_and_flags_restored_no_parameter_grads():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 3))
    model[4].weight.requires_grad_(False)
    x = torch.rand(2, 1, 3, 4)
    eval_result = clever(model.eval(), x, radius=0.5, **TINY)
    model.train()
    train_result = clever(model, x, radius=0.5, **TINY)
    assert model.training and model[3].training
    assert [p.requires_grad for p in model.parameters()] == [True, True, False, True]
    assert all(p.grad is None for p in model.parameters())
    torch.testing.assert_close(train_result.scores, eval_result.scores)  # dropout was off


def test_target_modes(cnn, images):
    logits = cnn(images)
    top2 = clever(cnn, images, radius=1.0, targets="top2", **TINY)
    assert torch.equal(top2.targets[:, 0], logits.argsort(1, descending=True)[:, 1])
    least = clever(cnn, images, radius=1.0, targets="least_likely", **TINY)
    assert torch.equal(least.targets[:, 0], logits.argmin(1))
    rand = clever(cnn, images, radius=1.0, targets="random", seed=4, **TINY)
    again = clever(cnn, images, radius=1.0, targets="random", seed=4, **TINY)
    assert torch.equal(rand.targets, again.targets) and (rand.targets[:, 0] != rand.predicted).all()
    untargeted = clever(cnn, images, radius=1.0, **TINY)
    assert untargeted.targets.shape == (2, 9)
    for i in range(2):
        assert sorted(untargeted.targets[i].tolist()) == [j for j in range(10) if j != untargeted.predicted[i]]
        # same samples for the same image and seed: the untargeted run's entry for the top-2
        # class is the top-2 run's estimate, and the untargeted score is the minimum
        col = untargeted.targets[i] == top2.targets[i, 0]
        torch.testing.assert_close(untargeted.target_scores[i][col], top2.scores[i : i + 1], rtol=1e-4, atol=0)
        assert untargeted.scores[i] == untargeted.target_scores[i].min()
    torch.testing.assert_close(untargeted.g0, logits.gather(1, untargeted.predicted[:, None]).double()
                               - logits.gather(1, untargeted.targets).double(), rtol=1e-6, atol=1e-6)


def test_result_to_dict_is_json(cnn, images):
    res = clever(cnn, images, norm="inf", radius=0.3, clip_values=(0, 1), **TINY)
    assert isinstance(res, CleverResult)
    doc = json.loads(json.dumps(res.to_dict()))
    assert doc["settings"]["norm"] == "inf" and doc["settings"]["n_batches"] == 8
    assert len(doc["scores"]) == 2 and len(doc["lipschitz"][0]) == 9
    for name in ("g0", "lipschitz", "loc", "scale", "shape", "ks_pvalue", "fallback", "zero_grad_fraction"):
        assert len(doc[name]) == 2


def test_probability_outputs_warn(images):
    model = nn.Sequential(digits_cnn(), nn.Softmax(dim=1))
    with pytest.warns(RuntimeWarning, match="probabilities"):
        clever(model, images, radius=1.0, **TINY)


def test_zero_gradients_warn_and_score_radius():
    class Quantised(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 3)

        def forward(self, x):
            return self.fc(torch.floor(x.flatten(1) * 4))

    torch.manual_seed(0)
    x = torch.rand(2, 4)
    model = Quantised()
    with pytest.warns(RuntimeWarning, match="zero"):
        res = clever(model, x, radius=0.25, **TINY)
    assert torch.equal(res.zero_grad_fraction, torch.ones(2, 2, dtype=torch.float64))
    assert torch.equal(res.scores, torch.full((2,), 0.25, dtype=torch.float64))


def test_no_warnings_on_a_plain_logit_model(cnn, images):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        clever(cnn, images, radius=1.0, **TINY)


class WrongShape(nn.Module):
    def forward(self, x):
        return x.flatten(1).sum(1)


class OneClass(nn.Module):
    def forward(self, x):
        return x.flatten(1).sum(1, keepdim=True)


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(x=torch.full((2, 1, 8, 8), 1.5), clip_values=(0, 1)), ValueError, "x has values"),
        (dict(x=torch.full((2, 1, 8, 8), math.nan)), ValueError, "NaN"),
        (dict(radius=0.0), ValueError, "radius"),
        (dict(radius=-1.0), ValueError, "radius"),
        (dict(radius=math.nan), ValueError, "radius"),
        (dict(radius="1"), TypeError, "radius"),
        (dict(x=torch.zeros(0, 1, 8, 8)), ValueError, "at least one image"),
        (dict(n_batches=1), ValueError, "n_batches"),
        (dict(n_batches=2.5), TypeError, "n_batches"),
        (dict(n_samples=0), ValueError, "n_samples"),
        (dict(n_samples=16.0), TypeError, "n_samples"),
        (dict(seed=-1), ValueError, "seed"),
        (dict(norm=3), ValueError, "norm"),
        (dict(norm="l3"), ValueError, "norm"),
        (dict(targets="second"), ValueError, "targets"),
        (dict(targets=torch.tensor([1, 2, 3])), ValueError, "targets"),
        (dict(targets=torch.tensor([10, 10])), ValueError, "targets"),
        (dict(targets=[1, 2]), TypeError, "targets"),
        (dict(max_chunk=0), ValueError, "max_chunk"),
        (dict(clip_values=(1, 0)), ValueError, "clip_values"),
        (dict(clip_values=(0, None)), ValueError, "clip_values"),
        (dict(device="meta"), ValueError, "device"),
        (dict(model=WrongShape()), ValueError, "logits"),
        (dict(model=OneClass()), ValueError, "logits"),
        (dict(model=lambda x: x), TypeError, "model"),
    ],
)
def test_bad_inputs(cnn, images, kwargs, exc, match):
    args = dict(model=cnn, x=images, radius=1.0, **TINY)
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        clever(args.pop("model"), args.pop("x"), **args)


def test_target_equal_to_predicted_class_is_an_error(cnn, images):
    pred = cnn(images).argmax(1)
    with pytest.raises(ValueError, match="predicted class"):
        clever(cnn, images, radius=1.0, targets=pred, **TINY)


def test_imagenet_sized_model_is_chunked_within_the_memory_budget():
    import sys

    mod = sys.modules["robustx.clever"]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                          nn.Linear(64, 1000))
    x = torch.rand(1, 3, 224, 224)
    rows = mod._auto_chunk(model, x)
    per_row = 16 * 224 * 224 * 4 + 3 * 224 * 224 * 4  # the conv output (saved by ReLU) and its input
    assert 1 <= rows <= mod.CPU_CHUNK_BYTES // per_row
    res = clever(model, x, radius=1.0, targets="top2", n_batches=2, n_samples=3, progress=False)
    assert res.targets.shape == (1, 1) and torch.isfinite(res.scores).all() and res.scores.item() > 0
