"""One public vocabulary (issue 22): the parameter names of the public API, the result
objects' shape (value, per_sample, to_dict) and the deprecated aliases of old names."""
import dataclasses
import importlib
import inspect
import json
import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from robustx import checks
from robustx.attacks import pgd
from robustx.clever import clever
from robustx.commands.clever import run_clever_table
from robustx.commands.landscape import run_landscape
from robustx.coverage import NeuronCoverage
from robustx.data import digits
from robustx.defenses import SNSLoss
from robustx.divergence import divergence_bound
from robustx.metrics.boundary import ebd, orthonormal_directions
from robustx.metrics.corruption import corruption_errors, corruption_score
from robustx.metrics.eni import eps_eni, eps_eni_noise
from robustx.metrics.imperceptibility import ald
from robustx.models import digits_cnn
from robustx.pipeline.evaluate import evaluate
from robustx.pipeline.imagefolder import folder_dataset, load_folder
from robustx.pipeline.sources import load_data
from toy_images import write_folder
from robustx.sensitivity import neuron_sensitivity

# The public API: the package, its metrics and the method modules. Not walked: the
# building blocks (checks, geometry, neurons, modelutil, ops: their ``p``, ``n`` are the
# symbols of their formulas), the pipeline's internals, the CLI's parsers (flags, not
# Python names; the commands' Python functions are walked), and robustx.compat.art, which
# mirrors ART's API on purpose (ART's ``batch_size`` = samples per batch, ``clip_values``
# from the classifier).
WALKED = [
    "robustx", "robustx.metrics", "robustx.clever", "robustx.attacks", "robustx.autoattack", "robustx.coverage",
    "robustx.data", "robustx.defenses", "robustx.divergence", "robustx.landscape", "robustx.models",
    "robustx.sensitivity", "robustx.weibull", "robustx.commands.clever", "robustx.commands.landscape",
    "robustx.metrics.accuracy",
    "robustx.metrics.behaviour", "robustx.metrics.boundary", "robustx.metrics.corruption", "robustx.metrics.defense",
    "robustx.metrics.eni", "robustx.metrics.imperceptibility", "robustx.metrics.registry",
    "robustx.metrics.transforms", "robustx.pipeline", "robustx.pipeline.evaluate", "robustx.pipeline.report",
    "robustx.pipeline.sources", "robustx.pipeline.imagefolder",
]

#: old name -> the one name of the vocabulary
OLD_NAMES = {"epsilon": "eps", "out_dir": "out", "lam": "sns_lambda", "p": "norm", "n": "n_images",
             "max_chunk": "batch_size"}

# Renames in flight on other branches: the merge that renames each one deletes its line
# here (until then its strict xfail passes; afterwards a leftover line fails as XPASS).
PENDING = {}


def public_callables():
    """{"module.qualname": object} of every public function and class of :data:`WALKED`."""
    found = {}
    for module_name in WALKED:
        module = importlib.import_module(module_name)
        for name in module.__all__:
            obj = getattr(module, name)
            if inspect.isclass(obj) and issubclass(obj, BaseException):
                continue
            if (inspect.isfunction(obj) or inspect.isclass(obj)) and obj.__module__.startswith("robustx"):
                found.setdefault(f"{obj.__module__}.{obj.__qualname__}", obj)
    return found


CALLABLES = public_callables()


def aliases_of(obj) -> dict:
    """The deprecated keyword aliases {old: new} of a function or of a class's __init__."""
    return getattr(obj.__init__ if inspect.isclass(obj) else obj, "__deprecated_aliases__", {})


def vocabulary_errors(obj) -> list:
    """What in ``obj``'s signature breaks the vocabulary (empty when nothing does)."""
    params = inspect.signature(obj).parameters
    errors = [f"parameter {old!r} should be {OLD_NAMES[old]!r} (keep {old!r} with @checks.renamed)"
              for old in params if old in OLD_NAMES]
    errors += [f"alias {old!r} -> {new!r}: {new!r} is not a parameter" for old, new in aliases_of(obj).items()
               if new not in params]
    clip = params.get("clip_values")
    if clip is not None and clip.default not in (inspect.Parameter.empty, (0.0, 1.0)):
        errors.append(f"clip_values defaults to {clip.default!r}, not (0, 1)")
    return errors


def test_the_walk_sees_the_api():
    for name in ("robustx.clever.clever", "robustx.pipeline.evaluate.evaluate", "robustx.metrics.imperceptibility.ald",
                 "robustx.defenses.SNSLoss", "robustx.commands.clever.run_clever_table",
                 "robustx.commands.landscape.run_landscape", *PENDING):
        assert name in CALLABLES


def test_the_vocabulary_check_flags_old_names_but_not_aliases():
    def old(x, epsilon, out_dir="o", *, lam=0.1, clip_values=None):
        return x

    @checks.renamed(epsilon="eps", out_dir="out", lam="sns_lambda")
    def new(x, eps, out="o", *, sns_lambda=0.1, clip_values=(0.0, 1.0)):
        return x

    assert len(vocabulary_errors(old)) == 4  # three old names and the None clip_values default
    assert vocabulary_errors(new) == []


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.xfail(strict=True, reason=PENDING[n]))
                                  if n in PENDING else n for n in sorted(CALLABLES)])
def test_public_parameters_use_the_one_vocabulary(name):
    assert vocabulary_errors(CALLABLES[name]) == [], name


# ------------------------------------------------------------------ results
@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    x, y = digits("test")
    return digits_cnn(), x[:6], y[:6]


def finite_mean(t: torch.Tensor) -> float:
    values = t.double().numpy()
    return float(np.mean(values[np.isfinite(values)]))


def make_results(model, x, y):
    """{class name: (result, expected value, expected per_sample)} from small real calls."""
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # tiny budgets: fallbacks, censored inputs
        res = clever(model, x[:2], radius=0.5, n_batches=4, n_samples=8, on_fallback="max", progress=False)
        out["CleverResult"] = res, float(np.mean(res.target_scores.amin(1).numpy())), res.target_scores.amin(1)
        res = divergence_bound(model, x, eps=0.1, steps=2, progress=False)
        out["DivergenceResult"] = res, float(np.mean(res.per_restart.amax(0).numpy())), res.per_restart.amax(0)
        res = ebd(model, x, y, m=2, steps=4, bisection=2, progress=False)
        distances = res.per_sample
        out["EBDResult"] = res, finite_mean(distances[res.correct]), distances
        res = eps_eni_noise(model, x, y, eps=0.05, progress=False)
        out["NoiseENIResult"] = res, finite_mean(res.per_sample), res.per_sample
    x_adv = pgd(model, x, y, 0.1, steps=2, progress=False)
    res = eps_eni(model, x, y, x_adv, progress=False)
    with torch.no_grad():
        change = (F.cross_entropy(model(x_adv).double(), y, reduction="none")
                  - F.cross_entropy(model(x).double(), y, reduction="none")).numpy()
    largest = float((x_adv - x).abs().flatten(1).amax(1).max())
    out["ENIResult"] = res, abs(float(change.sum())) / (len(change) * largest), None
    res = neuron_sensitivity(model, x, x_adv, progress=False)
    out["LayerScores"] = res, float(np.mean(np.concatenate([res[n].numpy() for n in res]))), None
    res = NeuronCoverage(model, progress=False).profile(x).update(x).result()
    out["CoverageResult"] = res, res.NC, None
    out["LayerCoverage"] = next(iter(res.layers.values())), next(iter(res.layers.values())).NC, None
    errors = corruption_errors(model, x, y, ("brightness", "contrast"), (1, 2), progress=False)
    res = corruption_score(errors, x.shape[1:])
    out["CorruptionScore"] = res, float(np.mean([np.mean(e) for e in errors.values()])), None
    report = evaluate(model, (x, y), metrics=["CA"], progress=False)
    correct = (model(x).argmax(1) == y).double()
    out["MetricResult"] = report.metrics["CA"], float(correct.mean()), correct
    return out


# Public dataclasses that are not a measurement's result, and why.
NOT_RESULTS = {
    "Landscape": "a grid of surface values to plot; no headline number",
    "ReverseWeibullFit": "fitted parameters of B sets of maxima, an intermediate of CLEVER",
    "MetricInfo": "a catalogue entry of the registry",
    "Report": "the collection of MetricResult, each of which has the shape",
}


@pytest.fixture(scope="module")
def results(setup):
    return make_results(*setup)


def test_every_public_result_class_is_covered(results):
    classes = {obj.__name__ for obj in CALLABLES.values() if dataclasses.is_dataclass(obj)}
    assert classes - set(NOT_RESULTS) == set(results)


@pytest.mark.parametrize("name", ["CleverResult", "DivergenceResult", "EBDResult", "ENIResult", "NoiseENIResult", "LayerScores",
                                  "CoverageResult", "LayerCoverage", "CorruptionScore", "MetricResult"])
def test_result_has_value_per_sample_and_to_dict(results, name):
    res, value, per_sample = results[name]
    assert type(res).__name__ == name
    assert isinstance(res.value, float) and res.value == pytest.approx(value, rel=1e-9)
    if per_sample is None:
        assert res.per_sample is None
    else:
        np.testing.assert_allclose(np.asarray(res.per_sample, dtype=np.float64), per_sample.double().numpy(),
                                   rtol=1e-12)
    doc = json.loads(json.dumps(res.to_dict(), allow_nan=False))  # JSON-ready: no NaN or inf floats
    assert doc["value"] == pytest.approx(value, rel=1e-9)
    if per_sample is not None:
        got = [math.nan if v is None else float(v) for v in doc["per_sample"]]
        np.testing.assert_allclose(got, per_sample.double().numpy(), rtol=1e-12)


# ------------------------------------------------------------------ deprecated aliases
#: (callable, old keyword) of every deprecated alias: the walk must find exactly these
ALIASES = [("robustx.clever.clever", "max_chunk"), ("robustx.commands.clever.run_clever_table", "out_dir"),
           ("robustx.commands.landscape.run_landscape", "out_dir"),
           ("robustx.defenses.SNSLoss", "lam"), ("robustx.metrics.boundary.orthonormal_directions", "n"),
           ("robustx.metrics.imperceptibility.ald", "p"), ("robustx.metrics.eni.eps_eni", "epsilon"),
           ("robustx.metrics.eni.eps_eni_noise", "epsilon"), ("robustx.pipeline.sources.load_data", "n"),
           ("robustx.pipeline.imagefolder.folder_dataset", "n"), ("robustx.pipeline.imagefolder.load_folder", "n")]


def alias_cases(model, x, y, tmp_path):
    """{(callable name, old keyword): (call with the old keyword, call with the new one)}."""
    small = dict(radius=0.5, n_batches=4, n_samples=8, on_fallback="max", progress=False)
    success = torch.ones(x.shape[0], dtype=torch.bool)
    x_adv = (x + 0.05).clamp(0, 1)
    table = dict(n_images=1, n_batches=2, n_samples=4, max_batches=2, progress=False, echo=lambda s: None)

    def sns(**kw):
        return SNSLoss(model, top_k=2, refresh_every=1, **kw)(x, x_adv, y).item()

    def landscape_pngs(**kw):
        paths = run_landscape(images=[0], steps=3, progress=False, **kw)
        return torch.frombuffer(bytearray(b"".join(p.read_bytes() for p in paths)), dtype=torch.uint8)

    def directions(**kw):
        return orthonormal_directions(d=8, m=3, generator=torch.Generator().manual_seed(1), **kw)

    images = write_folder(tmp_path / "images")

    def first_of_folder(**kw):
        return folder_dataset(images, resize=36, crop=32, **kw)[0][0]

    return {
        ("robustx.clever.clever", "max_chunk"): (lambda: clever(model, x[:2], max_chunk=5, **small).per_sample,
                                                 lambda: clever(model, x[:2], batch_size=5, **small).per_sample),
        ("robustx.metrics.imperceptibility.ald", "p"): (lambda: ald(x, x_adv, success, p=2),
                                                        lambda: ald(x, x_adv, success, norm=2)),
        ("robustx.metrics.boundary.orthonormal_directions", "n"): (lambda: directions(n=2),
                                                                   lambda: directions(n_images=2)),
        ("robustx.defenses.SNSLoss", "lam"): (lambda: sns(lam=0.5), lambda: sns(sns_lambda=0.5)),
        ("robustx.metrics.eni.eps_eni", "epsilon"): (
            lambda: eps_eni(model, x, y, x_adv, epsilon=0.05, progress=False).value,
            lambda: eps_eni(model, x, y, x_adv, eps=0.05, progress=False).value),
        ("robustx.metrics.eni.eps_eni_noise", "epsilon"): (
            lambda: eps_eni_noise(model, x, y, epsilon=0.05, progress=False).per_sample,
            lambda: eps_eni_noise(model, x, y, eps=0.05, progress=False).per_sample),
        ("robustx.commands.clever.run_clever_table", "out_dir"): (
            lambda: run_clever_table(out_dir=tmp_path / "old", **table)["clever"]["L2"]["result"]["per_sample"],
            lambda: run_clever_table(out=tmp_path / "new", **table)["clever"]["L2"]["result"]["per_sample"]),
        ("robustx.pipeline.sources.load_data", "n"): (lambda: load_data("digits", model, n=5)[0],
                                                      lambda: load_data("digits", model, n_images=5)[0]),
        ("robustx.pipeline.imagefolder.folder_dataset", "n"): (lambda: first_of_folder(n=3),
                                                               lambda: first_of_folder(n_images=3)),
        ("robustx.pipeline.imagefolder.load_folder", "n"): (
            lambda: load_folder(images, n=3, workers=0, resize=36, crop=32)[0],
            lambda: load_folder(images, n_images=3, workers=0, resize=36, crop=32)[0]),
        ("robustx.commands.landscape.run_landscape", "out_dir"): (
            lambda: landscape_pngs(out_dir=tmp_path / "old"), lambda: landscape_pngs(out=tmp_path / "new")),
    }


def test_every_alias_has_a_case(setup, tmp_path):
    found = {(name, old) for name, obj in CALLABLES.items() for old in aliases_of(obj)}
    assert found == set(ALIASES) == set(alias_cases(*setup, tmp_path))


@pytest.mark.parametrize("key", ALIASES)
@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # tiny CLEVER budgets fall back
def test_deprecated_alias_warns_and_gives_the_same_result(setup, tmp_path, key):
    with_old, with_new = alias_cases(*setup, tmp_path)[key]
    with pytest.warns(DeprecationWarning, match=f"{key[1]!r} is deprecated"):
        old = with_old()
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        new = with_new()
    torch.testing.assert_close(torch.as_tensor(old), torch.as_tensor(new), rtol=0, atol=0)  # same call


def test_renamed_keyword_given_twice_is_a_type_error(setup):
    model, x, y = setup
    with pytest.raises(TypeError, match="both 'lam'"):
        SNSLoss(model, lam=0.1, sns_lambda=0.2)


@pytest.mark.parametrize("name, old, new", [("CleverResult", "scores", "per_sample"),
                                            ("DivergenceResult", "mean", "value"),
                                            ("EBDResult", "distances", "per_sample")])
def test_deprecated_attribute_warns_and_is_the_new_one(results, name, old, new):
    res = results[name][0]
    with pytest.warns(DeprecationWarning, match=f"{name}.{old} is deprecated"):
        value = getattr(res, old)
    assert value is getattr(res, new) or value == getattr(res, new)


def test_deprecated_methods_and_attributes_of_layer_scores_and_sns_loss(results, setup):
    scores = results["LayerScores"][0]
    with pytest.warns(DeprecationWarning, match=r"mean\(\) is deprecated"):
        assert scores.mean() == scores.value
    loss = SNSLoss(setup[0], sns_lambda=0.25)
    with pytest.warns(DeprecationWarning, match="SNSLoss.lam is deprecated"):
        assert loss.lam == 0.25
