"""The means over S (ALD_p, ASS, PSD, ACAC, ACTC, NTE) come from a minimal-perturbation
attack (DeepFool by default), not from the run's robustness attacks: values that tell
models apart, AA_W untouched, the attack and |S| stated, and compare's common set."""
import math

import numpy as np
import pytest
import torch

from robustx import attacks, metrics
from robustx.commands.common import summary
from robustx.data import digits
from robustx.models import digits_cnn
from robustx.pipeline.evaluate import evaluate
from robustx.pipeline.report import Report, common_set, compare, compare_html

MEANS = ["ALD_0", "ALD_2", "ALD_inf", "ASS", "PSD", "ACAC", "ACTC", "NTE"]
N = 48


@pytest.fixture(scope="module")
def two_models(tmp_path_factory):
    """The natural and the PGD-trained digits CNN, default attacks (PGD L-inf 8/255), same inputs."""
    x, y = digits("test")
    out = {}
    for name, net in (("natural", digits_cnn()), ("pgd-trained", digits_cnn(variant="pgd"))):
        folder = tmp_path_factory.mktemp(name)
        out[name] = evaluate(net, (x[:N], y[:N]), metrics=["CA", "AA_W", *MEANS], batch_size=16, out=folder,
                             progress=False)
    return out


def test_ald_tells_the_models_apart_and_is_not_the_budget(two_models):
    """Under PGD 8/255 ALD_inf was 8/255 for every model; DeepFool's distance is each model's
    own, and the adversarially trained model needs a larger one (Madry et al.: PGD training
    moves the boundary away from the data)."""
    natural, trained = (two_models[k].metrics for k in ("natural", "pgd-trained"))
    for m in (natural, trained):
        assert m["ALD_inf"].settings["attack"] == "deepfool"
        assert abs(m["ALD_inf"].value - 8 / 255) > 0.05
    assert trained["ALD_inf"].value > 1.2 * natural["ALD_inf"].value
    assert trained["ALD_2"].value > 1.2 * natural["ALD_2"].value


def test_every_mean_over_s_equals_its_function_on_deepfool_examples(two_models):
    """Every mean equals the metric function on DeepFool examples made directly per batch of
    16 (logits in one batch of 48 here, of 16 in the run: float32 rounding in the last bits,
    rel 1e-6); the per-input terms are NaN exactly outside S."""
    x, y = digits("test")
    x, y, net = x[:N], y[:N], digits_cnn(variant="pgd")
    x_min = torch.cat([attacks.deepfool(net, x[s:s + 16], clip_values=(0.0, 1.0), progress=False)
                       for s in range(0, N, 16)])
    with torch.no_grad():
        clean, adv = net(x), net(x_min)
    s = metrics.success_mask(clean, adv, y)
    want = {"ALD_0": metrics.ald(x, x_min, s, 0), "ALD_2": metrics.ald(x, x_min, s, 2),
            "ALD_inf": metrics.ald(x, x_min, s, "inf"), "ASS": metrics.ass(x, x_min, s),
            "PSD": metrics.psd(x, x_min, s), "ACAC": metrics.acac(adv, s), "ACTC": metrics.actc(adv, y, s),
            "NTE": metrics.nte(adv, s)}
    report = two_models["pgd-trained"]
    for name, value in want.items():
        result = report.metrics[name]
        assert result.value == pytest.approx(value, rel=1e-6, abs=1e-9), name
        assert result.settings == {"attack": "deepfool", "successful": int(s.sum())}, name
        assert np.array_equal(~np.isnan(result.per_sample), s.numpy()), name


def test_the_minimal_attack_does_not_change_aa_w():
    """A weak PGD (eps 0.02) leaves most inputs robust; DeepFool (unbounded) fools nearly every
    one. AA_W, its per-input flags and "fooled_by" are PGD's alone with the means over S on."""
    x, y = digits("test")
    x, y, net = x[:32], y[:32], digits_cnn()
    weak = {"pgd": {"eps": 0.02, "step_size": 0.01, "steps": 3}}
    alone = evaluate(net, (x, y), metrics=["AA_W"], attacks=weak, progress=False)
    both = evaluate(net, (x, y), metrics=["AA_W", "ALD_2"], attacks=weak, progress=False)
    x_adv = attacks.pgd(net, x, y, 0.02, step_size=0.01, steps=3, seed=0, clip_values=(0.0, 1.0), progress=False)
    with torch.no_grad():
        robust = net(x_adv).argmax(1) == y
    assert both.metrics["AA_W"].value == alone.metrics["AA_W"].value == pytest.approx(float(robust.double().mean()))
    assert both.metrics["AA_W"].per_sample == robust.double().tolist()
    assert both.metrics["AA_W"].settings["per_attack"].keys() == {"pgd"}
    assert both.inputs["fooled_by"] == alone.inputs["fooled_by"] and "deepfool" not in ";".join(
        both.inputs["fooled_by"])
    assert both.metrics["ALD_2"].settings["successful"] > 2 * (~robust).sum()  # DeepFool fools many more


def test_the_minimal_attack_is_configurable():
    """A name of the run's attacks (PGD: ALD_inf is then its budget, the old behaviour), a
    config table for DeepFool, a callable; bad values are refused naming minimal_attack."""
    x, y = digits("test")
    data, net, pgd = (x[:16], y[:16]), digits_cnn(), {"pgd": {"eps": 0.1, "step_size": 0.025, "steps": 5}}
    old = evaluate(net, data, metrics=["ALD_inf"], attacks=pgd, minimal_attack="pgd", progress=False)
    assert old.metrics["ALD_inf"].settings["attack"] == "pgd"
    assert old.metrics["ALD_inf"].value == pytest.approx(0.1, rel=1e-6)
    one_step = evaluate(net, data, metrics=["ALD_2"], config={"deepfool": {"steps": 1}}, progress=False)
    full = evaluate(net, data, metrics=["ALD_2"], progress=False)
    assert one_step.metrics["ALD_2"].settings["successful"] < full.metrics["ALD_2"].settings["successful"]
    assert one_step.run["minimal_attack"] == {"deepfool": {"steps": 1}}

    def shift(model, x, y):  # every input moved by 0.5 in every element: fools some
        return (x + 0.5).clamp(0, 1)

    own = evaluate(net, data, metrics=["ALD_inf"], minimal_attack=shift, progress=False)
    assert own.metrics["ALD_inf"].settings["attack"] == "shift" and own.metrics["ALD_inf"].value <= 0.5 + 1e-6
    none = evaluate(net, data, metrics=["CA", "ALD_2"], minimal_attack=None, progress=False)
    assert none.metrics["ALD_2"].skipped == "no minimal-perturbation attack (minimal_attack=None)"
    with pytest.raises(ValueError, match="minimal_attack must be a built-in attack"):
        evaluate(net, data, metrics=["ALD_2"], minimal_attack="fab", progress=False)
    with pytest.raises(ValueError, match="minimal_attack: 'pgd' is also one of the run's attacks"):
        evaluate(net, data, metrics=["ALD_2"], attacks=pgd, minimal_attack={"pgd": {"eps": 0.3}}, progress=False)
    with pytest.raises(TypeError, match="minimal_attack must be"):
        evaluate(net, data, metrics=["ALD_2"], minimal_attack=3, progress=False)
    with pytest.raises(TypeError, match=r"\[deepfool\] has key\(s\) \['eps'\]"):
        evaluate(net, data, metrics=["ALD_2"], config={"deepfool": {"eps": 1}}, progress=False)


def test_the_report_states_attack_and_s(two_models, tmp_path):
    report = two_models["natural"]
    n = report.metrics["ALD_2"].settings["successful"]
    report.save(tmp_path)
    page = (tmp_path / "report.html").read_text()
    assert f"<td>deepfool, |S| = {n}</td>" in page
    assert f"(deepfool, |S| = {n})" in summary(report).splitlines()[3]  # the ALD_0 row
    back = Report.load(tmp_path)
    assert back.metrics["ASS"].settings == {"attack": "deepfool", "successful": n}
    assert back.run["minimal_attack"] == {"deepfool": {}} and "attack deepfool" in back.run["attack_seconds"]


def _by_hand(reports, name):
    """The means over the inputs where every report has a term (every model right and fooled)."""
    columns = np.array([r.metrics[name].per_sample for r in reports])
    common = ~np.isnan(columns).any(0)
    return int(common.sum()), columns[:, common].mean(1).tolist()


def test_compare_gives_the_means_over_the_common_set(two_models):
    reports = [two_models["natural"], two_models["pgd-trained"]]
    names = ["natural", "pgd-trained"]
    common = common_set(reports, names)
    assert set(common) == set(MEANS)
    for name in MEANS:
        n, values = common[name]
        want_n, want = _by_hand(reports, name)
        assert n == want_n and values == pytest.approx(want, rel=1e-12), name
    n = common["ALD_inf"][0]
    assert 0 < n <= min(r.metrics["ALD_inf"].settings["successful"] for r in reports)
    assert common["ALD_inf"][1][1] > common["ALD_inf"][1][0]  # the ranking holds on the same inputs
    text = compare(reports, names)
    head, tail = text.split("over the common set")
    assert f"(|S|={reports[0].metrics['ALD_2'].settings['successful']})" in head.split("ALD_2")[1].splitlines()[0]
    row = next(line for line in tail.splitlines() if line.startswith("ALD_inf "))
    assert row.split()[2:4] == ["deepfool", str(n)]
    page = compare_html(reports, names)
    assert '<section id="common">' in page and f'<td class="num">{n}</td>' in page
    assert "over the common set" not in compare(reports, names, common=False)


def test_compare_refuses_the_common_set_over_different_inputs(two_models):
    a = two_models["natural"]
    b = Report(dict(a.metrics), dict(a.run))
    b.run["data"] = "0" * 64
    with pytest.raises(ValueError, match="made on different inputs .*compare without it"):
        compare([a, b], ["a", "b"])
    with pytest.raises(ValueError, match="made on different inputs"):
        compare_html([a, b], ["a", "b"])
    assert "ALD_2" in compare([a, b], ["a", "b"], common=False)
    b.run.pop("data")
    with pytest.raises(ValueError, match="'b' does not record its inputs"):
        common_set([a, b], ["a", "b"])


def _report(per_sample):
    from robustx.pipeline.report import MetricResult

    s = [v for v in per_sample if not math.isnan(v)]
    m = MetricResult("ALD_2", sum(s) / len(s), True, per_sample, {"attack": "deepfool", "successful": len(s)})
    return Report({"ALD_2": m}, {"data": "d", "inputs": len(per_sample)})


def test_the_common_set_is_the_intersection():
    """S_a = {0, 2, 3}, S_b = {1, 2, 3}: the common set {2, 3}, means (0.2 + 0.4) / 2 and
    (0.3 + 0.6) / 2, where the means over S are 0.3667 and 0.5333; an empty set gives NaN."""
    a, b = _report([0.5, math.nan, 0.2, 0.4]), _report([math.nan, 0.7, 0.3, 0.6])
    (n, values), = common_set([a, b], ["a", "b"]).values()
    assert n == 2 and values == pytest.approx([0.3, 0.45], rel=1e-12)
    (n, values), = common_set([_report([0.5, math.nan]), _report([math.nan, 0.7])], ["a", "b"]).values()
    assert n == 0 and all(math.isnan(v) for v in values)
