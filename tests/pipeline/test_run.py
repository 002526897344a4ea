"""The batch loop (robustx/pipeline/run.py): the streamed evaluate against the metric
functions called directly on the same inputs, batch splits that must not matter, AA_W and
"fooled_by" per input over several attacks, and the logits-only inference options."""
import math

import pytest
import torch

from robustx import attacks, metrics
from robustx.clever import clever
from robustx.coverage import NeuronCoverage
from robustx.data import digits
from robustx.divergence import divergence_bound
from robustx.metrics.boundary import ebd
from robustx.metrics.corruption import corruption_errors, corruption_score
from robustx.metrics.defense import defense_utility
from robustx.metrics.eni import eps_eni, eps_eni_noise
from robustx.metrics.families import clever_rows
from robustx.models import digits_cnn
from robustx.pipeline.evaluate import evaluate
from robustx.pipeline.run import Run
from robustx.pipeline.stream import InputStream
from robustx.sensitivity import neuron_sensitivity, neuron_uncertainty
from toy_models import wide_cnn

N, SEED, CLIP = 24, 5, (0.0, 1.0)
PGD = {"eps": 0.1, "norm": "inf", "steps": 3, "step_size": 0.04}
FGSM = {"eps": 0.15}
CONFIG = {"clever": {"n_batches": 5, "n_samples": 8, "n_images": 2}, "ebd": {"m": 2, "steps": 4, "bisection": 3},
          "div": {"eps": 0.1, "steps": 2}, "eps-eni_noise": {"eps": 0.1},
          "corruption": {"corruptions": ["impulse_noise", "contrast"], "severities": [4, 5]}}


def _perturbed(scale: float) -> torch.nn.Module:
    """The digits CNN with Gaussian noise of ``scale`` x each tensor's std on its weights: a
    different, still informative model (a defended model, a surrogate, a baseline)."""
    net = digits_cnn()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * scale * p.std())
    return net


def _models():
    torch.manual_seed(11)
    return digits_cnn(), _perturbed(0.2), _perturbed(0.5)


def _direct(model, defended, other, x, y, profile) -> dict:
    """Every metric computed by its own function on the whole set (one batch, so the seeds
    are evaluate's: seed + 0)."""
    with torch.no_grad():
        logits = model(x)
    pgd = attacks.get_attack("pgd", **PGD, clip_values=CLIP, seed=SEED)(model, x, y)
    fgsm = attacks.get_attack("fgsm", **FGSM, clip_values=CLIP)(model, x, y)
    transferred = attacks.get_attack("pgd", **PGD, clip_values=CLIP, seed=SEED)(other, x, y)
    x_min = attacks.deepfool(model, x, clip_values=CLIP, progress=False)  # the means over S: the minimal attack
    with torch.no_grad():
        adv, adv_f, adv_t, adv_min = model(pgd), model(fgsm), model(transferred), model(x_min)
        blurred = model(metrics.gaussian_blur_8bit(pgd, 0.5, CLIP))
        jpeg = model(metrics.jpeg_8bit(pgd, 90, CLIP))
        logits_d, logits_b = defended(x), other(x)
    s, m = metrics.success_mask(logits, adv, y), metrics.success_mask(logits, adv_min, y)
    out = {"CA": metrics.accuracy(logits, y), "AA_B": metrics.accuracy(adv_t, y),
           "AA_W": float(((adv.argmax(1) == y) & (adv_f.argmax(1) == y)).double().mean()),
           "ALD_0": metrics.ald(x, x_min, m, 0, clip_values=CLIP),
           "ALD_2": metrics.ald(x, x_min, m, 2, clip_values=CLIP),
           "ALD_inf": metrics.ald(x, x_min, m, "inf", clip_values=CLIP),
           "ASS": metrics.ass(x, x_min, m, data_range=1.0), "PSD": metrics.psd(x, x_min, m, data_range=1.0),
           "ACAC": metrics.acac(adv_min, m), "ACTC": metrics.actc(adv_min, y, m), "NTE": metrics.nte(adv_min, m),
           "RGB": metrics.rgb(blurred, y, s),
           "RIC": metrics.ric(jpeg, y, s), **defense_utility(logits, logits_d, y)}
    kw = dict(batch_size=N, seed=SEED, clip_values=CLIP, progress=False)
    errors = corruption_errors(model, x, y, **CONFIG["corruption"], **kw)
    base = corruption_errors(other, x, y, **CONFIG["corruption"], **kw)
    clean, base_clean = 1 - out["CA"], 1 - metrics.accuracy(logits_b, y)
    out["mCE"] = corruption_score(errors, x.shape[1:], base_errors=base).value
    out["rmCE"] = corruption_score(errors, x.shape[1:], relative=True, clean_error=clean, base_errors=base,
                                   base_clean_error=base_clean).value
    out["EBD"] = ebd(model, x, y, clip_values=CLIP, seed=SEED, batch_size=4 * N, progress=False, **CONFIG["ebd"]).value
    out["eps-ENI"] = eps_eni(model, x, y, pgd, batch_size=N, progress=False).value
    out["eps-ENI_noise"] = _finite_mean(eps_eni_noise(model, x, y, **CONFIG["eps-eni_noise"], **kw).per_sample)
    out["DIV"] = _finite_mean(divergence_bound(model, x, **CONFIG["div"], **kw).per_sample)
    out["NS"] = _all_neurons(neuron_sensitivity(model, x, pgd, batch_size=N, progress=False))
    out["NU"] = _all_neurons(neuron_uncertainty(model, pgd, batch_size=N, progress=False))
    out["NU_clean"] = _all_neurons(neuron_uncertainty(model, x, batch_size=N, progress=False))
    cov = NeuronCoverage(model, batch_size=N, progress=False)
    cov.profile(profile)
    out.update({k: v for k, v in cov.update(x).result().to_dict().items() if k in metrics.available("coverage")})
    settings = dict(CONFIG["clever"])
    rows = clever_rows(N, settings.pop("n_images"))
    assert rows == [0, 12]  # spread over the set
    out["CLEVER"] = float(clever(model, x[rows], clip_values=CLIP, seed=SEED, progress=False,
                                 **{"norm": 2, "radius": 2.0, **settings}).value)
    return out


def _finite_mean(values: torch.Tensor) -> float:
    return float(values[~values.isnan()].double().mean())


def _all_neurons(scores) -> float:
    return float(torch.cat([s.flatten().double() for s in scores.values()]).mean())


def test_every_metric_equals_its_function_on_the_same_inputs(tmp_path):
    x, y = digits("test")
    x, y = x[:N], y[:N]
    profile = digits("train")[0][:64]
    model, defended, other = _models()
    report = evaluate(model, (x, y), metrics="all", attacks={"pgd": PGD, "fgsm": FGSM}, defended=defended,
                      surrogate=other, baseline=other, profile=profile, config=CONFIG, seed=SEED, batch_size=N,
                      out=tmp_path, progress=False)
    direct = _direct(model, defended, other, x, y, profile)
    assert set(report.metrics) == set(metrics.available()) == set(direct)
    for name, result in report.metrics.items():
        assert result.failed is None and result.skipped is None, (name, result.failed, result.skipped)
        want = direct[name]
        if math.isnan(want):
            assert math.isnan(result.value), name
        else:  # the same functions on the same inputs; evaluate sums a few float64 means
            assert result.value == pytest.approx(want, rel=1e-9, abs=1e-12), name


def test_batch_splits_agree_when_nothing_random_depends_on_them(tmp_path):
    """FGSM and DeepFool examples and the deterministic metrics do not depend on how the
    inputs are batched: 3 batches of 8 give the one batch's values (up to the last bits of
    BLAS, which depend on the batch shape on some processors: rel 1e-6; NTE rel 1e-5: on
    DeepFool's examples, just past the boundary, it is a difference of two nearly equal
    probabilities, which magnifies those last bits - measured 1.2e-6). eps-ENI's set-wide sum
    and largest distance come from per-input terms kept in input order, so they too."""
    x, y = digits("test")
    x, y = x[:N], y[:N]
    profile = digits("train")[0][:64]
    names = ["CA", "AA_W", "ALD_2", "ALD_inf", "ASS", "PSD", "ACAC", "ACTC", "NTE", "RGB", "RIC", "NS", "NU", "NU_clean",
             "eps-ENI", "NC", "KMNC", "NBC", "SNAC", "TKNC", "TKNP"]
    runs = [evaluate(digits_cnn(), (x, y), metrics=names, attacks={"fgsm": FGSM}, profile=profile, batch_size=b,
                     progress=False) for b in (N, 8)]
    for name in names:
        rel = 1e-5 if name == "NTE" else 1e-6
        assert runs[1].metrics[name].value == pytest.approx(runs[0].metrics[name].value, rel=rel), name


def test_aa_w_counts_an_input_robust_only_if_every_attack_failed_on_it():
    """Two attacks that each fool a different half of the inputs: each attack alone leaves
    accuracy 0.5, the worst case per input is 0 (the old minimum of the two said 0.5)."""
    model = torch.nn.Flatten()  # logits = the two input values: class 0 where x[0] > x[1]
    x = torch.tensor([[0.9, 0.1]] * 4 + [[0.8, 0.2]] * 4).view(8, 1, 1, 2)
    y = torch.zeros(8, dtype=torch.long)

    def flip(fooled):  # an attack that fools the inputs ``fooled`` selects (by content: any batch split)
        def attack(net, xb, yb):
            rows = fooled(xb[:, 0, 0, 0])
            out = xb.clone()
            out[rows] = xb[rows].flip(-1)
            return out
        return attack

    first, second = flip(lambda v: v > 0.85), flip(lambda v: v < 0.85)
    report = evaluate(model, (x, y), metrics=["CA", "AA_W"], attacks={"first": first, "second": second},
                      batch_size=3, progress=False)
    assert report.metrics["CA"].value == 1.0
    assert report.metrics["AA_W"].settings["per_attack"] == {"first": 0.5, "second": 0.5}
    assert report.metrics["AA_W"].value == 0.0 and report.metrics["AA_W"].per_sample == [0.0] * 8
    assert report.inputs["fooled_by"] == ["first"] * 4 + ["second"] * 4


# ------------------------------------------------------------------ inference options
def _logits(net, x, **options):
    stream = InputStream((x, torch.zeros(x.shape[0], dtype=torch.long)), 4)
    run = Run({"model": net}, stream, None, {}, {}, 0, (0.0, 1.0), torch.device("cpu"), {}, progress=False, **options)
    return run.forward(net, x)


def test_channels_last_logits_equal_default_and_parameters_restored():
    net, x = wide_cnn(8), torch.rand(6, 3, 16, 16)
    seen = []
    net[2].register_forward_pre_hook(lambda m, args: seen.append(
        (args[0].is_contiguous(memory_format=torch.channels_last),
         m.weight.is_contiguous(memory_format=torch.channels_last))))
    reference = _logits(net, x)
    assert seen and not any(a or w for a, w in seen)
    seen.clear()
    fast = _logits(net, x, channels_last=True)
    assert seen and all(a and w for a, w in seen)
    assert torch.allclose(fast, reference, rtol=1e-5, atol=1e-6)
    assert all(p.is_contiguous() for p in net.parameters())


def test_bf16_autocast_logits_close_to_float32():
    net, x = wide_cnn(8), torch.rand(6, 3, 16, 16)
    reference, fast = _logits(net, x), _logits(net, x, autocast=torch.bfloat16)
    assert not torch.equal(fast, reference)  # autocast was on
    # bf16 keeps 8 significand bits (relative error 2^-8 per rounding), a few roundings deep.
    assert (fast - reference).abs().max() <= 0.02 * reference.abs().max()
