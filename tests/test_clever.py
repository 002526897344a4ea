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
    res = clever(model, x, norm=norm, radius=100.0, clip_values=None, **TINY)  # the exact distance has no box
    w, b = model[1].weight.double(), model[1].bias.double()
    f = x.flatten(1).double() @ w.T + b
    q = ops.dual_norm(ops.parse_norm(norm))
    exact = []
    for i, c in enumerate(f.argmax(1).tolist()):
        dists = [(f[i, c] - f[i, j]) / torch.linalg.vector_norm(w[c] - w[j], ord=q) for j in range(5) if j != c]
        exact.append(min(dists).item())
    torch.testing.assert_close(res.per_sample, torch.tensor(exact, dtype=torch.float64), rtol=1e-2, atol=0)
    assert res.fallback.all()  # constant gradient norms: the Weibull fit is skipped, flagged


def gradient_budget(monkeypatch, rows, d):
    """Sets the CPU memory budget so that a pass holds ``rows`` gradient rows of d float32."""
    import sys

    mod = sys.modules["robustx.clever"]
    monkeypatch.setattr(mod, "CPU_CHUNK_BYTES", 2 * rows * d * 4)
    return mod


# (gradient rows per pass, points per forward) -> passes of (images, batches, targets) with
# N_b = 6, N_s = 5, T = 2 (60 gradient rows per image): 120: both images in one pass; 25: 2
# batches x 2 targets, forward pieces of 4 + 3 + 3 points; 12: 1 batch x 2 targets, pieces of 2;
# 7: 1 batch x 1 target; 3: 1 batch x 1 target in two pieces (3 + 2 points)
PASSES = {(120, None): (2, 6, 2), (25, 4): (1, 2, 2), (12, 2): (1, 1, 2), (7, 5): (1, 1, 1), (3, 3): (1, 1, 1)}


@pytest.mark.parametrize("gradient_rows, max_chunk", list(PASSES))
def test_matches_a_naive_per_sample_reference(monkeypatch, gradient_rows, max_chunk):
    torch.manual_seed(1)
    model = nn.Sequential(nn.Flatten(), nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 4))
    x = torch.rand(2, 1, 2, 3)
    mod = gradient_budget(monkeypatch, gradient_rows, 6)
    assert mod._pass_sizes(2, 6, 5, mod._gradient_rows(x[:1])) == PASSES[gradient_rows, max_chunk]
    pred = model(x).argmax(1)
    targets = torch.stack([(pred + 1) % 4, (pred + 2) % 4], 1)
    nb, bs, radius, seed = 6, 5, 0.7, 3
    res = clever(model, x, norm=2, radius=radius, n_batches=nb, n_samples=bs, targets=targets,
                 clip_values=(0.0, 1.0), seed=seed, batch_size=max_chunk, progress=False, on_fallback="max")
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
    torch.testing.assert_close(res.per_sample, res.target_scores.amin(1))
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
    torch.testing.assert_close(res.per_sample, torch.tensor(old_scores, dtype=torch.float64), rtol=1e-3, atol=0)


@pytest.mark.parametrize("norm, radius", [(2, 2.0), ("inf", 0.3)])
def test_shared_samples_one_forward_per_point_same_numbers_as_separate_rows(cnn, images, norm, radius):
    """Untargeted (9 targets) on the digits CNN: every sampled point goes through the model
    once, and the maxima and scores equal a reference with a separate forward/backward pass
    per (point, target) row on the same draws (the path before the forward was shared)."""
    nb, ns, seed, chunk = 6, 32, 4, 64
    forward_rows = []

    def count(module, inputs, output):
        if inputs[0].requires_grad:
            forward_rows.append(inputs[0].shape[0])

    hook = cnn.register_forward_hook(count)
    try:
        res = clever(cnn, images, norm=norm, radius=radius, n_batches=nb, n_samples=ns, clip_values=(0, 1),
                     seed=seed, batch_size=chunk, on_fallback="max", progress=False)
    finally:
        hook.remove()
    assert sum(forward_rows) == 2 * nb * ns and max(forward_rows) <= chunk  # not x 9 targets
    q = ops.dual_norm(ops.parse_norm(norm))
    maxima = torch.zeros(2, 9, nb, dtype=torch.float64)
    for i in range(2):
        pts = ops.ball_sample(images[i : i + 1], nb * ns, radius, norm, (0, 1), seed, offset=i * nb * ns)[0]
        for t, j in enumerate(res.targets[i].tolist()):
            p = pts.clone().requires_grad_(True)
            out = cnn(p)
            (grad,) = torch.autograd.grad((out[:, res.predicted[i]] - out[:, j]).sum(), p)
            norms = torch.linalg.vector_norm(grad.flatten(1).double(), ord=q, dim=1)
            maxima[i, t] = norms.view(nb, ns).amax(1)
    fit = fit_reverse_weibull(maxima.view(18, nb))
    # float32 gradients of different batch sizes; the fits may amplify that rounding
    torch.testing.assert_close(res.max_sampled.view(-1), maxima.view(18, nb).amax(1), rtol=1e-5, atol=0)
    torch.testing.assert_close(res.lipschitz.view(-1), fit.estimate, rtol=1e-3, atol=0)
    expected = torch.minimum(res.g0 / fit.estimate.view(2, 9), torch.tensor(radius, dtype=torch.float64))
    torch.testing.assert_close(res.target_scores, expected, rtol=1e-3, atol=0)


def test_logit_scaling_leaves_scores_unchanged(cnn, images):
    base = clever(cnn, images, norm=2, radius=2.0, clip_values=(0, 1), **TINY)
    assert (base.per_sample > 0).all() and (base.per_sample < 2.0).all()
    # x4 is exact in floating point: every gradient and maximum scales exactly
    exact = clever(Scaled(cnn, 4.0), images, norm=2, radius=2.0, clip_values=(0, 1), **TINY)
    torch.testing.assert_close(exact.per_sample, base.per_sample, rtol=1e-12, atol=0)
    torch.testing.assert_close(exact.lipschitz, 4.0 * base.lipschitz, rtol=1e-12, atol=0)
    # x3 rounds the gradients; fits on a flat likelihood ridge (huge shape) amplify that a little
    scaled = clever(Scaled(cnn, 3.0), images, norm=2, radius=2.0, clip_values=(0, 1), **TINY)
    torch.testing.assert_close(scaled.per_sample, base.per_sample, rtol=1e-2, atol=0)


def test_same_seed_same_result_and_seed_matters(cnn, images):
    a = clever(cnn, images, norm="inf", radius=0.3, seed=5, **TINY)
    b = clever(cnn, images, norm="inf", radius=0.3, seed=5, **TINY)
    c = clever(cnn, images, norm="inf", radius=0.3, seed=6, **TINY)
    assert torch.equal(a.per_sample, b.per_sample) and torch.equal(a.max_sampled, b.max_sampled)
    assert not torch.equal(a.max_sampled, c.max_sampled)


@pytest.mark.parametrize("gradient_rows, max_chunk", [(5, 2), (15, 7), (40, 40), (120, 120)])
def test_chunking_does_not_change_results(monkeypatch, gradient_rows, max_chunk):
    # 3 targets, 4 batches of 5: one batch x one target per pass in pieces of 2 points (5, 2),
    # one batch x all targets in pieces of 5 (15, 7), two batches x all targets (40),
    # both images whole in one pass (120)
    torch.manual_seed(2)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 4))
    x = torch.rand(2, 1, 3, 4)
    settings = dict(norm=1, radius=1.0, clip_values=(0, 1), n_batches=4, n_samples=5, progress=False)
    base = clever(model, x, **settings)
    gradient_budget(monkeypatch, gradient_rows, 12)
    chunked = clever(model, x, batch_size=max_chunk, **settings)
    torch.testing.assert_close(chunked.max_sampled, base.max_sampled, rtol=1e-5, atol=0)
    torch.testing.assert_close(chunked.per_sample, base.per_sample, rtol=1e-2, atol=0)


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
    torch.testing.assert_close(train_result.per_sample, eval_result.per_sample)  # dropout was off


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
        torch.testing.assert_close(untargeted.target_scores[i][col], top2.per_sample[i : i + 1], rtol=1e-4, atol=0)
        assert untargeted.per_sample[i] == untargeted.target_scores[i].min()
    torch.testing.assert_close(untargeted.g0, logits.gather(1, untargeted.predicted[:, None]).double()
                               - logits.gather(1, untargeted.targets).double(), rtol=1e-6, atol=1e-6)


def test_result_to_dict_is_json(cnn, images):
    res = clever(cnn, images, norm="inf", radius=0.3, clip_values=(0, 1), **TINY)
    assert isinstance(res, CleverResult)
    doc = json.loads(json.dumps(res.to_dict()))
    assert doc["settings"]["norm"] == "inf" and doc["settings"]["n_batches"] == 8
    assert len(doc["per_sample"]) == 2 and len(doc["lipschitz"][0]) == 9
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
    assert torch.equal(res.per_sample, torch.full((2,), 0.25, dtype=torch.float64))


def test_no_warnings_on_a_plain_logit_model(cnn, images):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        clever(cnn, images, radius=1.0, clip_values=None, **TINY)


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
        (dict(batch_size=0), ValueError, "batch_size"),
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
    per_row = 16 * 224 * 224 * 4 + 2 * 224 * 224 * 4  # the conv output (saved by ReLU), the input, its copy
    # half the budget for the graph retained through the backward passes, half for the gradients
    assert 1 <= rows <= mod.CPU_CHUNK_BYTES // 2 // per_row
    assert mod._gradient_rows(x) * 3 * 224 * 224 * 4 <= mod.CPU_CHUNK_BYTES // 2
    res = clever(model, x, radius=1.0, targets="top2", n_batches=2, n_samples=3, progress=False)
    assert res.targets.shape == (1, 1) and torch.isfinite(res.per_sample).all() and res.per_sample.item() > 0


# ------------------------------------------------------------------ the MLE and the fallback policy
class Quadratic(nn.Module):
    """Logits [0.5 x^T diag(3, 1) x + 2, 1] on 2-vectors: g = 0.5 (3 x1^2 + x2^2) + 1,
    ||grad g||_2 = sqrt(9 x1^2 + x2^2), whose maximum over the unit disc is 3 at (+-1, 0).
    Near it P(||grad g|| > 3 - e) ~ e^1.5 for uniform samples: a reverse Weibull of shape 1.5."""

    def forward(self, x):
        f0 = 0.5 * (3 * x[:, 0] ** 2 + x[:, 1] ** 2) + 2
        return torch.stack((f0, torch.ones_like(f0)), 1)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_weibull_mle_finds_the_unsampled_end_point(seed):
    res = clever(Quadratic(), torch.zeros(1, 2), radius=1.0, n_batches=200, n_samples=128, seed=seed,
                 on_fallback="raise", progress=False)
    assert not res.fallback.any() and res.reliable.all() and res.batches.item() == 200
    loc, top = res.loc.item(), res.max_sampled.item()
    assert top < 3.0 - 1e-3  # the samples do not reach the end point...
    assert abs(loc - 3.0) < 2e-3 and abs(loc - 3.0) < 3.0 - top  # ...the fit gets closer
    assert 1.25 < res.shape.item() < 1.75 and res.ks_pvalue.item() > 0.1
    assert res.per_sample.item() == pytest.approx(1 / 3, rel=1e-3)  # g0 / L = 1 / 3


class ExpMargin(nn.Module):
    """Logits [exp(w.x), 0]: ||grad g||_2 = ||w|| exp(w.x), far above the samples in 3x32x32."""

    def __init__(self, w):
        super().__init__()
        self.register_buffer("w", w.flatten())

    def forward(self, x):
        margin = torch.exp(x.flatten(1) @ self.w)
        return torch.stack((margin, torch.zeros_like(margin)), 1)


@pytest.fixture(scope="module")
def exp_case():
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(3 * 32 * 32, generator=gen)
    return ExpMargin(2.0 * z / z.norm()), torch.rand(3, 3, 32, 32, generator=gen)


EXP = dict(norm=2, radius=2.0, n_batches=20, n_samples=16, clip_values=None, progress=False)


def test_fallback_max_warns_and_marks_the_image_unreliable(exp_case):
    model, x = exp_case
    with pytest.warns(RuntimeWarning, match=r"1 of 3 .* 1 Gumbel limit.* images \[2\]"):
        res = clever(model, x, on_fallback="max", **EXP)
    assert res.reliable.tolist() == [True, True, False] and res.reason[2, 0].item() == 3
    assert res.lipschitz[2, 0] == res.max_sampled[2, 0] and res.batches.flatten().tolist() == [20, 20, 20]
    true_lipschitz = model.w.norm() * torch.exp(x[2].flatten() @ model.w + 2.0 * model.w.norm())
    assert true_lipschitz > 30 * res.max_sampled[2, 0]  # the fallback's score is far too optimistic
    doc = res.to_dict()
    assert doc["reliable"] == [True, True, False] and doc["reason"][2] == [3]


def test_fallback_raise_names_the_images(exp_case):
    model, x = exp_case
    with pytest.raises(RuntimeError, match=r"images \[2\]"):
        clever(model, x, on_fallback="raise", **EXP)


def test_resample_draws_the_next_batches_of_the_stream_and_warns_for_what_is_left(exp_case):
    model, x = exp_case
    with pytest.warns(RuntimeWarning, match=r"after resampling up to 80 batches.* images \[2\]"):
        res = clever(model, x, max_batches=80, **EXP)
    assert res.reliable.tolist() == [True, True, False]
    assert res.batches.flatten().tolist() == [20, 20, 80]  # 20 -> 40 -> 80, only the ill-conditioned pair
    # the maxima fitted: batches 0..19 at (u N_b) N_s, batches 20..79 at (u + 1) 2^40 (u = 2)
    pts = torch.cat([ops.ball_sample(x[2:], 20 * 16, 2.0, 2, offset=2 * 20 * 16)[0],
                     ops.ball_sample(x[2:], 60 * 16, 2.0, 2, offset=3 << 40)[0]])
    norms = model.w.double().norm() * torch.exp(pts.flatten(1).double() @ model.w.double())
    fit = fit_reverse_weibull(norms.view(1, 80, 16).amax(2))
    torch.testing.assert_close(res.max_sampled[2, 0], norms.max(), rtol=1e-5, atol=0)
    torch.testing.assert_close(res.ks_pvalue[2, :], fit.ks_pvalue, rtol=1e-3, atol=0)
    torch.testing.assert_close(res.shape[2, :], fit.shape, rtol=1e-3, atol=0)


def test_resample_repairs_a_fit_that_more_batches_make_well_conditioned(exp_case):
    model, x = exp_case
    settings = dict(EXP, n_batches=100, n_samples=128)
    with pytest.warns(RuntimeWarning, match=r"images \[1\]"):
        before = clever(model, x[:2], on_fallback="max", **settings)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        after = clever(model, x[:2], **settings)
    assert after.reliable.all() and after.batches.flatten().tolist() == [100, 400]
    assert after.ks_pvalue[1, 0] > 1e-3 and not after.fallback.any()
    assert after.lipschitz[1, 0] > before.lipschitz[1, 0]  # the fit's end point lies above the samples
    assert torch.equal(after.per_sample[0], before.per_sample[0])


class SquaredNorm(nn.Module):
    """Logits [||x||^2, 0, 0]: targets 1 and 2 have the same g, ||grad g||_2 = 2 ||x||."""

    def forward(self, x):
        f0 = x.flatten(1).pow(2).sum(1)
        return torch.stack((f0, torch.zeros_like(f0), torch.zeros_like(f0)), 1)


@pytest.mark.filterwarnings("ignore:.*ill-conditioned")
def test_independent_target_samples_follow_the_paper():
    x = torch.tensor([[1.0, 0.5, 0.0], [0.0, -1.0, 2.0]])
    settings = dict(norm=2, radius=0.5, n_batches=4, n_samples=8, seed=9, on_fallback="max",
                    clip_values=None, progress=False)
    shared = clever(SquaredNorm(), x, **settings)
    paper = clever(SquaredNorm(), x, target_samples="independent", **settings)
    assert torch.equal(shared.max_sampled[:, 0], shared.max_sampled[:, 1])  # one sample set per image
    assert (paper.max_sampled[:, 0] != paper.max_sampled[:, 1]).all()  # one per (image, target)
    for i in range(2):
        for t in range(2):
            unit = i * 2 + t  # pair (i, t) draws points (unit N_b + b) N_s of the stream
            pts = ops.ball_sample(x[i : i + 1], 32, 0.5, 2, seed=9, offset=unit * 32)[0]
            torch.testing.assert_close(paper.max_sampled[i, t], 2 * pts.double().norm(dim=1).max(), rtol=1e-6, atol=0)
        pts = ops.ball_sample(x[i : i + 1], 32, 0.5, 2, seed=9, offset=i * 32)[0]
        torch.testing.assert_close(shared.max_sampled[i, 0], 2 * pts.double().norm(dim=1).max(), rtol=1e-6, atol=0)
    assert paper.settings["target_samples"] == "independent" and shared.settings["target_samples"] == "shared"


@pytest.mark.parametrize(
    "kwargs, exc",
    [(dict(on_fallback="ignore"), ValueError), (dict(on_fallback=None), TypeError),
     (dict(target_samples="paper"), ValueError), (dict(target_samples=1), TypeError),
     (dict(max_batches=7), ValueError), (dict(max_batches=16.0), TypeError)],
)
def test_bad_policy_arguments(cnn, images, kwargs, exc):
    name = next(iter(kwargs))
    with pytest.raises(exc, match=name):
        clever(cnn, images, radius=1.0, **TINY, **kwargs)
