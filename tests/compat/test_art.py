"""robustx.compat.art against the real ART 1.20.1 CLEVER functions (same seed, same score)."""
import sys
import warnings

import numpy as np
import pytest
import torch
from torch import nn

art_metrics = pytest.importorskip("art.metrics.metrics")
from art.defences.postprocessor import ReverseSigmoid  # noqa: E402
from art.defences.preprocessor import FeatureSqueezing  # noqa: E402
from art.estimators.classification import PyTorchClassifier  # noqa: E402
from scipy.optimize import fmin  # noqa: E402
from scipy.stats import weibull_min  # noqa: E402

from robustx.compat import art as rart  # noqa: E402
from robustx.data import digits  # noqa: E402
from robustx.models import digits_cnn  # noqa: E402

NB, BS = 10, 10  # small ART parameters: ART's clever_u then takes about a second
RTOL = 1e-4



@pytest.fixture(scope="module")
def model():
    return digits_cnn()


@pytest.fixture(scope="module")
def images():
    return digits("test")[0][:8].numpy()


def classifier(model, clip=(0.0, 1.0), **kwargs):
    return PyTorchClassifier(
        model, loss=nn.CrossEntropyLoss(), input_shape=(1, 8, 8), nb_classes=10, clip_values=clip, **kwargs
    )


def seeded(fn, seed, *args, **kwargs):
    """fn(*args) after np.random.seed(seed), and the global RNG's next draw afterwards."""
    np.random.seed(seed)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = fn(*args, **kwargs)
    exploded = [str(w.message) for w in caught if "exploded" in str(w.message)]
    assert not exploded, f"parity case with an exploded fit is meaningless: {exploded}"
    return out, np.random.random()


def predicted(model, x):
    with torch.no_grad():
        return int(model(torch.from_numpy(x[None])).argmax())


@pytest.mark.parametrize("norm, radius, image", [(1, 2.0, 0), (2, 1.0, 1), (np.inf, 0.2, 2)])
def test_clever_u_matches_art(model, images, norm, radius, image):
    clf = classifier(model)
    ref, ref_next = seeded(art_metrics.clever_u, image, clf, images[image], NB, BS, radius, norm, verbose=False)
    got, got_next = seeded(rart.clever_u, image, clf, images[image], NB, BS, radius, norm, verbose=False)
    assert got_next == ref_next  # the same number of draws from numpy's global RNG
    assert isinstance(got, np.floating)
    np.testing.assert_allclose(got, ref, rtol=RTOL)


@pytest.mark.parametrize("norm, radius, image", [(1, 3.0, 3), (2, 2.0, 4), (np.inf, 0.3, 5)])
def test_clever_t_matches_art_without_clip_values(model, images, norm, radius, image):
    clf = classifier(model, clip=None)
    target = (predicted(model, images[image]) + 3) % 10
    ref, ref_next = seeded(art_metrics.clever_t, 7, clf, images[image], target, NB, BS, radius, norm, pool_factor=5)
    got, got_next = seeded(rart.clever_t, 7, clf, images[image], target, NB, BS, radius, norm, pool_factor=5)
    assert got_next == ref_next
    np.testing.assert_allclose(got, ref, rtol=RTOL)


def test_clever_target_list_and_sort_match_art(model, images):
    clf = classifier(model)
    x = images[6]
    pred = predicted(model, x)
    targets = [(pred + 1) % 10, pred, (pred + 5) % 10]
    ref, _ = seeded(art_metrics.clever, 3, clf, x, NB, BS, 1.5, 2, target=targets, c_init=2.0, verbose=False)
    got, _ = seeded(rart.clever, 3, clf, x, NB, BS, 1.5, 2, target=targets, c_init=2.0, verbose=False)
    assert got[1] is None and ref[1] is None
    np.testing.assert_allclose(got[[0, 2]].astype(float), ref[[0, 2]].astype(float), rtol=RTOL)
    ref, _ = seeded(art_metrics.clever, 2, clf, x, NB, BS, 1.5, 2, target_sort=True, verbose=False)
    got, _ = seeded(rart.clever, 2, clf, x, NB, BS, 1.5, 2, target_sort=True, verbose=False)
    assert got.shape == (9,)
    np.testing.assert_allclose(got.astype(float), ref.astype(float), rtol=RTOL)


def test_mean_std_preprocessing_matches_art(model, images):
    clf = classifier(model, preprocessing=(0.1, 0.8))
    ref, _ = seeded(art_metrics.clever_u, 3, clf, images[7], NB, BS, 1.0, 2, verbose=False)
    got, _ = seeded(rart.clever_u, 3, clf, images[7], NB, BS, 1.0, 2, verbose=False)
    np.testing.assert_allclose(got, ref, rtol=RTOL)


def test_linear_model_gives_exact_boundary_distance():
    """f = Wx + b: every gradient norm is ||w_c - w_j||_q, the score min_j (f_c - f_j)(x) / ||w_c - w_j||_q."""
    torch.manual_seed(0)
    linear = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    x = np.random.RandomState(0).rand(1, 8, 8).astype(np.float32)
    w = linear[1].weight.detach().double().numpy()
    logits = linear(torch.from_numpy(x[None])).detach().double().numpy()[0]
    c = int(logits.argmax())
    for norm, q in ((1, np.inf), (2, 2), (np.inf, 1)):
        exact = min((logits[c] - logits[j]) / np.linalg.norm(w[c] - w[j], q) for j in range(10) if j != c)
        ref, _ = seeded(art_metrics.clever_u, 0, classifier(linear, clip=None), x, NB, BS, 50.0, norm, verbose=False)
        got, _ = seeded(rart.clever_u, 0, linear, x, NB, BS, 50.0, norm, verbose=False)
        np.testing.assert_allclose(got, exact, rtol=1e-5)
        np.testing.assert_allclose(got, ref, rtol=RTOL)


def test_plain_module_and_tensor_input_match_art_classifier(model, images):
    ref, _ = seeded(rart.clever_u, 6, classifier(model), images[0], NB, BS, 1.0, "2", verbose=False)
    tensor = torch.from_numpy(images[0])
    got, _ = seeded(rart.clever_u, 6, model, tensor, NB, BS, 1.0, 2, verbose=False, clip_values=(0, 1))
    assert got == ref
    unclipped, _ = seeded(rart.clever_u, 6, model, images[0], NB, BS, 1.0, 2, verbose=False)
    assert unclipped != got  # clip_values is honoured


def test_chunking_does_not_change_the_score(model, images):
    whole, _ = seeded(rart.clever_t, 4, model, images[1], 0, NB, BS, 1.0, np.inf)
    chunked, _ = seeded(rart.clever_t, 4, model, images[1], 0, NB, BS, 1.0, np.inf, max_chunk=7)
    np.testing.assert_allclose(chunked, whole, rtol=1e-6)


def test_model_state_restored_and_no_parameter_grads(images):
    model = digits_cnn().train()  # a fresh copy: ART's own calls accumulate .grad into parameters
    seeded(rart.clever_t, 0, model, images[0], 1, NB, BS, 1.0, 2)
    assert model.training
    assert all(p.requires_grad and p.grad is None for p in model.parameters())


def test_weibull_min_fit_equals_scipy():
    rng = np.random.RandomState(0)
    for n, c_init in ((10, 1.0), (50, 0.5), (200, 3.0)):
        pools = rng.gamma(rng.uniform(1, 20, (6, 1)), 1.0, (6, 1000)) * rng.uniform(0.1, 5, (6, 1))
        picks = rng.randint(0, 1000, (6, n, 100))
        data = -np.take_along_axis(pools, picks.reshape(6, -1), 1).reshape(6, n, 100).max(-1).astype(np.float32)
        got = rart.weibull_min_fit(np.asfortranarray(data), c_init)  # any memory layout
        ref = np.array([weibull_min.fit(row, c_init, optimizer=fmin) for row in data])
        np.testing.assert_allclose(got, ref, rtol=1e-12, atol=0)


def test_weibull_min_fit_equals_scipy_on_tied_data():
    data = -np.array([[1.0] * 9 + [1.5], [2.0, 2.1] * 5, [3.0] * 10], dtype=np.float32)
    ref = np.array([weibull_min.fit(row, 1.0, optimizer=fmin) for row in data])
    np.testing.assert_allclose(rart.weibull_min_fit(data), ref, rtol=1e-12, atol=0)


def test_exploded_fit_warns_where_art_collapses(model, images):
    """A case where ART's fit explodes: its score collapses to ~0; ours too, with a warning."""
    x = images[6]
    target = (predicted(model, x) + 1) % 10
    np.random.seed(1)
    ref = art_metrics.clever_t(classifier(model), x, target, NB, BS, 1.5, 2, c_init=2.0)
    np.random.seed(1)
    with pytest.warns(RuntimeWarning, match="exploded"):
        got = rart.clever_t(classifier(model), x, target, NB, BS, 1.5, 2, c_init=2.0)
    assert 0 < ref < 1e-5 and 0 < got < 1e-5


def test_bad_inputs(model, images):
    x = images[0]
    pred = predicted(model, x)
    args = (NB, BS, 1.0, 2)
    with pytest.raises(TypeError, match="classifier"):
        rart.clever_u(object(), x, *args)
    with pytest.raises(ValueError, match="input_shape"):
        rart.clever_u(classifier(model), x[None], *args)
    with pytest.raises(ValueError, match="NaN"):
        rart.clever_u(model, np.full_like(x, np.nan), *args)
    with pytest.raises(ValueError, match="clip_values"):
        rart.clever_u(classifier(model), x + 2.0, *args)
    with pytest.raises(ValueError, match="clip_values"):
        rart.clever_u(classifier(model), x, *args, clip_values=(0, 1))
    with pytest.raises(ValueError, match="clip_values"):
        rart.clever_u(model, x, *args, clip_values=(1, 0))
    with pytest.raises(TypeError, match="x must be a floating"):
        rart.clever_u(model, (x * 16).astype(np.int64), *args)
    for bad in ((1, BS, 1.0, 2), (NB, 0, 1.0, 2), (NB, BS, 0.0, 2), (NB, BS, float("nan"), 2), (NB, BS, 1.0, 3)):
        with pytest.raises(ValueError, match="nb_batches|batch_size|radius|norm"):
            rart.clever_u(model, x, *bad)
    for bad in ((2.5, BS, 1.0, 2), (NB, float(BS), 1.0, 2), (NB, BS, "1", 2)):
        with pytest.raises(TypeError, match="nb_batches|batch_size|radius"):
            rart.clever_u(model, x, *bad)
    with pytest.raises(ValueError, match="pool_factor"):
        rart.clever_u(model, x, *args, pool_factor=0)
    with pytest.raises(ValueError, match="c_init"):
        rart.clever_u(model, x, *args, c_init=0.0)
    with pytest.raises(ValueError, match="predicted class"):
        rart.clever_t(model, x, pred, *args)
    with pytest.raises(ValueError, match="target_class"):
        rart.clever_t(model, x, 10, *args)
    with pytest.raises(TypeError, match="target"):
        rart.clever(model, x, *args, target=[1.5])
    with pytest.raises(ValueError, match="preprocessing"):
        rart.clever_u(classifier(model, preprocessing_defences=FeatureSqueezing((0.0, 1.0))), x, *args)
    with pytest.raises(ValueError, match="postprocessing"):
        rart.clever_u(classifier(model, postprocessing_defences=ReverseSigmoid()), x, *args)
    with pytest.raises(ValueError, match="shape"):
        rart.clever_u(nn.Sequential(model, nn.Flatten(0)), x, *args)


def test_patch_makes_unchanged_art_code_run_robustx(model, images):
    import art.metrics

    art_fns = {(mod.__name__, name): getattr(mod, name) for mod in (art.metrics, art_metrics)
               for name in ("clever", "clever_u", "clever_t")}
    clf = classifier(model)
    x = images[3]
    target = (predicted(model, x) + 2) % 10
    ref_u, _ = seeded(art_metrics.clever_u, 5, clf, x, NB, BS, 1.0, 2, verbose=False)
    ref_t, _ = seeded(art_metrics.clever_t, 6, clf, x, target, NB, BS, 0.3, np.inf)
    ref, _ = seeded(art_metrics.clever, 7, clf, x, NB, BS, 2.0, 1, target=[target], verbose=False)
    defended = classifier(model, postprocessing_defences=ReverseSigmoid())
    ref_defended, _ = seeded(art_metrics.clever_u, 8, defended, x, NB, BS, 1.0, 2, verbose=False)
    try:
        rart.patch()
        rart.patch()  # twice: harmless
        for mod in (art.metrics, art_metrics):
            assert mod.clever_u.__wrapped__ is rart.clever_u and mod.clever.__wrapped__ is rart.clever
            assert mod.clever_t.__wrapped__ is rart.clever_t
        # ART's own call signatures, unchanged: same numbers
        got_u, _ = seeded(art.metrics.clever_u, 5, clf, x, NB, BS, 1.0, 2, verbose=False)
        got_t, _ = seeded(art_metrics.clever_t, 6, clf, x, target, NB, BS, 0.3, np.inf)
        got, _ = seeded(art.metrics.clever, 7, clf, x, NB, BS, 2.0, 1, target=[target], verbose=False)
        np.testing.assert_allclose([got_u, got_t, got[0]], [ref_u, ref_t, ref[0]], rtol=RTOL)
        # a classifier robustx does not handle (a postprocessing defence) still goes to ART
        got_defended, _ = seeded(art.metrics.clever_u, 8, defended, x, NB, BS, 1.0, 2, verbose=False)
        assert got_defended == ref_defended
    finally:
        rart.unpatch()
    rart.unpatch()  # twice: harmless
    assert all(getattr(sys.modules[mod], name) is fn for (mod, name), fn in art_fns.items())
