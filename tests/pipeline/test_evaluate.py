"""robustx.evaluate and the `robustx evaluate / compare / metrics` commands: values equal to
the metric functions called by hand, skipped metrics with their reason, a SIGKILLed run
that resumes to the same report, refusal to resume another run, and one-line CLI errors."""
import functools
import json
import math
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from robustx import attacks, metrics
from robustx.commands import main
from robustx.data import digits
from robustx.models import digits_cnn
from robustx.metrics import eni
from robustx.pipeline.evaluate import evaluate
from robustx.pipeline.report import Report
from toy_images import ink, png_pixels
from toy_models import wide_cnn

REPO = Path(__file__).resolve().parents[2]
PGD = {"pgd": {"eps": 0.1, "step_size": 0.025, "steps": 5}}
FAST = ["CA", "AA_W", "ALD_2", "ALD_inf", "ASS", "ACAC", "ACTC", "NTE", "CAV", "AA_B", "NC", "KMNC", "TKNC"]


@pytest.fixture(scope="module")
def digits_run():
    x, y = digits("test")
    model = digits_cnn()
    report = evaluate(model, (x[:40], y[:40]), metrics=FAST, attacks=PGD, batch_size=16, progress=False)
    return model, x[:40], y[:40], report


def test_values_equal_the_metric_functions(digits_run):
    """CA and AA_W from PGD; the means over S from DeepFool, the default minimal attack."""
    model, x, y, report = digits_run
    with torch.no_grad():
        clean = model(x)
    # the same examples: PGD per batch of 16, seeded with seed + the batch's first index; DeepFool per batch
    x_adv = torch.cat([attacks.pgd(model, x[s:s + 16], y[s:s + 16], 0.1, step_size=0.025, steps=5, seed=s,
                                   progress=False) for s in range(0, 40, 16)])
    x_min = torch.cat([attacks.deepfool(model, x[s:s + 16], clip_values=(0.0, 1.0), progress=False)
                       for s in range(0, 40, 16)])
    with torch.no_grad():
        adv, adv_min = model(x_adv), model(x_min)
    success = metrics.success_mask(clean, adv_min, y)
    want = {
        "CA": metrics.accuracy(clean, y), "AA_W": metrics.accuracy(adv, y),
        "ALD_2": metrics.ald(x, x_min, success, 2), "ALD_inf": metrics.ald(x, x_min, success, "inf"),
        "ASS": metrics.ass(x, x_min, success), "ACAC": metrics.acac(adv_min, success),
        "ACTC": metrics.actc(adv_min, y, success), "NTE": metrics.nte(adv_min, success),
    }
    # logits here in one batch of 40, in the run in batches of 16: float32 rounding differs in the
    # last bits (rel 1e-6); a changed prediction would need a logit tie within that
    for name, value in want.items():
        assert report.metrics[name].value == pytest.approx(value, rel=1e-6, abs=1e-9), name
    for name in ("ALD_2", "ALD_inf", "ASS", "ACAC", "ACTC", "NTE"):
        assert report.metrics[name].settings == {"attack": "deepfool", "successful": int(success.sum())}, name
    per_input = torch.tensor(report.metrics["ALD_2"].per_sample)
    assert torch.equal(~per_input.isnan(), success)  # a term exactly for the inputs of S
    assert per_input[success] == pytest.approx((x_min - x).flatten(1).norm(dim=1)[success].double(), rel=1e-6)
    # PGD fools some inputs only; DeepFool, unbounded, nearly every correct one, further than PGD's eps
    assert 0 < report.metrics["AA_W"].value < report.metrics["CA"].value and success.sum() >= 0.9 * clean.argmax(
        1).eq(y).sum()
    assert report.metrics["ALD_inf"].value > 0.1


def test_missing_inputs_are_skipped_with_their_reason(digits_run):
    _, _, _, report = digits_run
    assert "defended model" in report.metrics["CAV"].skipped and report.metrics["CAV"].value is None
    assert "surrogate" in report.metrics["AA_B"].skipped
    assert "profile" in report.metrics["KMNC"].skipped
    doc = report.to_dict()
    assert doc["metrics"]["CAV"]["value"] is None and doc["metrics"]["CA"]["higher_is_better"] is True
    assert doc["metrics"]["ASS"]["higher_is_better"] is False
    assert report.metrics["NC"].value is not None and report.metrics["TKNC"].value is not None


def test_defended_and_surrogate_models_feed_their_metrics():
    x, y = digits("test")
    x, y = x[:24], y[:24]
    model, other = digits_cnn(), digits_cnn(pretrained=False)
    report = evaluate(model, (x, y), metrics=["CAV", "CRR", "CSR", "AA_B"], attacks=PGD, defended=other,
                      surrogate=other, progress=False)
    with torch.no_grad():
        utility = metrics.defense_utility(model(x), other(x), y)
    for name in ("CAV", "CRR", "CSR"):
        assert report.metrics[name].value == pytest.approx(utility[name])
    transferred = attacks.pgd(other, x, y, 0.1, step_size=0.025, steps=5, seed=0, progress=False)
    with torch.no_grad():
        assert report.metrics["AA_B"].value == pytest.approx(metrics.accuracy(model(transferred), y))


def test_bad_arguments_name_themselves(tmp_path):
    x, y = digits("test")
    model = digits_cnn()
    with pytest.raises(ValueError, match="metrics: unknown metric"):
        evaluate(model, (x[:4], y[:4]), metrics=["CA", "NOPE"], progress=False)
    with pytest.raises(TypeError, match=r"\[pgd\] has key\(s\) \['epsilon'\]"):
        evaluate(model, (x[:4], y[:4]), metrics=["CA"], config={"pgd": {"epsilon": 0.1}}, progress=False)
    with pytest.raises(ValueError, match="unknown table"):
        evaluate(model, (x[:4], y[:4]), metrics=["CA"], config={"nope": {}}, progress=False)
    with pytest.raises(ValueError, match="data x has values"):
        evaluate(model, (x[:4] * 3, y[:4]), metrics=["CA"], progress=False)
    with pytest.raises(TypeError, match="data must be"):
        evaluate(model, x[:4], metrics=["CA"], progress=False)


def _counting_attacks(monkeypatch) -> list:
    """Every attack the pipeline makes, by name, once per batch (a check of the settings,
    which stops at the first forward pass, is not counted); each attack takes at least
    0.1 s more, so its unit's compute time is clearly longer than reading it back."""
    made, real = [], attacks.get_attack

    def get_attack(name, defaults=None, **kw):
        attack = _slow(real(name, defaults, **kw))

        def counted(*args):
            x_adv = attack(*args)
            made.append(name)
            return x_adv
        return counted

    monkeypatch.setattr(attacks, "get_attack", get_attack)
    return made


def _slow(fn):
    @functools.wraps(fn)  # keeps the signature that config checks read
    def slow(*args, **kw):
        time.sleep(0.1)
        return fn(*args, **kw)
    return slow


def _stored_seconds(out: Path, label: str) -> float:
    with sqlite3.connect(out / "store.sqlite") as conn:
        return sum(s for (s,) in conn.execute("SELECT seconds FROM units WHERE unit LIKE ?", (label + "/%",)))


def test_resume_reuses_every_unit_whose_content_is_unchanged(tmp_path, monkeypatch):
    """With save_adversarial the attack's examples are units too (2 batches of 8: per run
    2 attack units, then 2 units per metric); a unit is reused when its key is unchanged."""
    x, y = digits("test")
    data, model = (x[:16], y[:16]), digits_cnn()
    made = _counting_attacks(monkeypatch)
    monkeypatch.setattr(eni, "eps_eni_noise", _slow(eni.eps_eni_noise))

    def run(metrics, **kw):
        made.clear()
        return evaluate(model, data, metrics=metrics, attacks=PGD, batch_size=8, out=tmp_path, progress=False,
                        save_adversarial="float32", **kw)

    first = run(["AA_W", "eps-ENI_noise"])
    assert (made, first.run["units_reused"], first.run["units_computed"]) == (["pgd", "pgd"], 0, 6)
    # one more metric: its units and those of its minimal attack (DeepFool), no other attack
    more = run(["AA_W", "ALD_2", "eps-ENI_noise"], resume=True)
    assert (made, more.run["units_reused"], more.run["units_computed"]) == (["deepfool", "deepfool"], 6, 4)
    # another metric over the minimal attack's S: the stored DeepFool examples, no attack
    again = run(["AA_W", "ALD_2", "NTE", "eps-ENI_noise"], resume=True)
    assert (made, again.run["units_reused"], again.run["units_computed"]) == ([], 10, 2)
    assert np.array_equal(again.metrics["ALD_2"].per_sample, more.metrics["ALD_2"].per_sample, equal_nan=True)
    assert again.metrics["NTE"].settings["successful"] == more.metrics["ALD_2"].settings["successful"]
    assert again.run["attack_seconds"]["attack deepfool"] >= _stored_seconds(tmp_path, "attack/deepfool@model") > 0
    fresh = evaluate(model, data, metrics=["ALD_2"], attacks=PGD, batch_size=8, progress=False)
    assert more.metrics["ALD_2"].value == fresh.metrics["ALD_2"].value  # same batches: the same computation
    assert json.loads((tmp_path / "report.json").read_text())["run"]["units_reused"] == 10  # the last run's
    # a resumed metric reports the seconds its units took to compute, not to be read back
    assert more.metrics["eps-ENI_noise"].seconds >= _stored_seconds(tmp_path, "metric/eps-ENI_noise") >= 0.2
    assert more.run["attack_seconds"]["attack pgd"] >= _stored_seconds(tmp_path, "attack/pgd@model") >= 0.2
    changed = run(["AA_W", "eps-ENI_noise"], resume=True, config={"eps-eni_noise": {"eps": 0.05}})  # its units only
    assert (made, changed.run["units_reused"], changed.run["units_computed"]) == ([], 6, 2)  # + 2 DeepFool units
    fewer = run(["AA_W"], resume=True)
    assert (made, fewer.run["units_reused"], fewer.run["units_computed"]) == ([], 6, 0)
    assert fewer.metrics["AA_W"].value == first.metrics["AA_W"].value


def test_without_saved_examples_a_new_metric_attacks_again(tmp_path, monkeypatch):
    """The default store holds metric states only: a metric added later remakes the examples."""
    x, y = digits("test")
    made = _counting_attacks(monkeypatch)
    first = evaluate(digits_cnn(), (x[:8], y[:8]), metrics=["AA_W"], attacks=PGD, out=tmp_path, progress=False)
    more = evaluate(digits_cnn(), (x[:8], y[:8]), metrics=["AA_W", "RGB"], attacks=PGD, out=tmp_path,
                    progress=False, resume=True)
    assert made == ["pgd", "pgd"] and (more.run["units_reused"], more.run["units_computed"]) == (1, 1)
    assert more.metrics["AA_W"].value == first.metrics["AA_W"].value


def test_another_model_or_data_is_refused_naming_what_differs(tmp_path):
    x, y = digits("test")
    model, profile = digits_cnn(), x[100:108]
    one_step = {"pgd": dict(PGD["pgd"], steps=1)}

    def run(net, data, profile=profile, **kw):
        return evaluate(net, data, metrics=["AA_W", "NC"], attacks=kw.pop("attacks", one_step), profile=profile,
                        out=tmp_path, progress=False, **kw)

    run(model, (x[:8], y[:8]))
    # 2 metric units and the batch's per-input columns
    with pytest.raises(ValueError, match="already holds 3 finished units .*pass resume=True to reuse them"):
        run(model, (x[:8], y[:8]))
    cases = [((digits_cnn(pretrained=False), (x[:8], y[:8])), {}, "model weights differ"),
             ((model, (x[:8], (y[:8] + 1) % 10)), {}, r"data \(inputs or labels\) differ"),
             ((model, (x[:8], y[:8])), {"profile": x[200:208]}, "profile data differ")]
    for args, kw, message in cases:
        with pytest.raises(ValueError, match=f"holds the results of another run: {message}\\. Use another output"):
            run(*args, resume=True, **kw)
    other_eps = run(model, (x[:8], y[:8]), resume=True, attacks={"pgd": dict(one_step["pgd"], eps=0.2)})
    assert (other_eps.run["units_reused"], other_eps.run["units_computed"]) == (1, 1)  # NC kept, the attack redone


def test_a_changed_stored_byte_is_recomputed_to_the_same_report(tmp_path):
    x, y = digits("test")
    data, model = (x[:16], y[:16]), digits_cnn()
    first = evaluate(model, data, metrics=["eps-ENI_noise"], batch_size=8, out=tmp_path, progress=False)
    conn = sqlite3.connect(tmp_path / "store.sqlite")
    with conn:
        unit, blob = conn.execute("SELECT unit, data FROM tensors WHERE unit LIKE 'metric/eps-ENI_noise/batch-0001/%'"
                                  ).fetchone()
        values = np.frombuffer(blob, np.float64)
        i = int(np.flatnonzero(np.isfinite(values))[0])
        blob = bytearray(blob)
        blob[8 * i + 7] ^= 0x40  # an exponent bit of a defined value: it changes
        conn.execute("UPDATE tensors SET data = ? WHERE unit = ?", (bytes(blob), unit))
    conn.close()
    with pytest.warns(RuntimeWarning, match=f"unit '{unit}' does not match its checksum"):
        again = evaluate(model, data, metrics=["eps-ENI_noise"], batch_size=8, out=tmp_path, resume=True,
                         progress=False)
    assert (again.run["units_reused"], again.run["units_computed"]) == (1, 1)
    # the same unit recomputed on the same inputs in the same batch: the same numbers
    assert again.metrics["eps-ENI_noise"].per_sample == first.metrics["eps-ENI_noise"].per_sample


class _Counting(torch.nn.Module):
    """A model that counts the inputs it is run on."""

    def __init__(self, net):
        super().__init__()
        self.net, self.seen = net, 0

    def forward(self, x):
        self.seen += x.shape[0]
        return self.net(x)


BAD_SETTINGS = [
    ({"clever": {"n_images": 0}}, ValueError, r"^\[clever\] n_images must be an int >= 1, got 0$"),
    ({"clever": {"n_images": -3}}, ValueError, r"^\[clever\] n_images must be an int >= 1, got -3$"),
    ({"clever": {"n_images": "all"}}, TypeError, r"^\[clever\] n_images must be an int >= 1, got 'all'$"),
    ({"clever": {"n_images": "8"}}, TypeError, r"^\[clever\] n_images"),
    ({"clever": {"n_batches": "8"}}, TypeError, r"^\[clever\] n_batches must be an int >= 2, got '8'$"),
    ({"clever": {"n_samples": 0}}, ValueError, r"^\[clever\] n_samples"),
    ({"clever": {"radius": -1.0}}, ValueError, r"^\[clever\] radius"),
    ({"clever": {"norm": 3}}, ValueError, r"^\[clever\] norm"),
    ({"pgd": {"eps": -0.1}}, ValueError, r"^\[pgd\] eps must be a finite number > 0"),
    ({"pgd": {"steps": 0}}, ValueError, r"^\[pgd\] steps"),
    ({"coverage": {"sections": 0}}, ValueError, r"^\[coverage\] sections"),
    ({"coverage": {"layers": "nope"}}, ValueError, r"^\[coverage\] layers: no module named 'nope'"),
    ({"ns": {"axis": 0}}, ValueError, r"^\[ns\] axis must not be 0"),
    ({"div": {"divergence": "l1"}}, ValueError, r"^\[div\] divergence"),
    ({"ebd": {"bisection": -1}}, ValueError, r"^\[ebd\] bisection"),
    ({"eps-eni_noise": {"eps": 0.0}}, ValueError, r"^\[eps-eni_noise\] eps must"),
    ({"corruption": {"severities": [6]}}, ValueError, r"^\[corruption\] severities"),
    ({"landscape": {"steps": 1}}, ValueError, r"^\[landscape\] steps"),
    ({"clever": {"progress": True}}, TypeError, r"\[clever\] may not set \['progress'\]"),
]


@pytest.mark.parametrize("config, error, message", BAD_SETTINGS, ids=[str(c) for c, _, _ in BAD_SETTINGS])
def test_bad_settings_are_refused_before_any_work(tmp_path, config, error, message):
    x, y = digits("test")
    model = _Counting(digits_cnn())
    out = tmp_path / "run"
    with pytest.raises(error, match=message):
        evaluate(model, (x[:8], y[:8]), config=config, out=out, progress=False)
    assert not out.exists()  # no store.sqlite: the corrected run may use the same folder
    assert model.seen <= 1  # at most the check of the model's outputs on the first input


def test_attack_settings_given_as_attacks_are_checked_too(tmp_path):
    x, y = digits("test")
    with pytest.raises(ValueError, match=r"^\[fgsm\] eps must be a finite number > 0, got 0"):
        evaluate(digits_cnn(), (x[:8], y[:8]), metrics=["CA"], attacks={"pgd": {}, "fgsm": {"eps": 0}},
                 out=tmp_path, progress=False)
    with pytest.raises(TypeError, match=r"^\[deepfool\] attack 'deepfool' has no setting\(s\) \['eps'\]"):
        evaluate(digits_cnn(), (x[:8], y[:8]), metrics=["CA"], attacks={"deepfool": {"eps": 0.1}},
                 out=tmp_path, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_a_corrected_rerun_works_in_the_same_folder(tmp_path):
    x, y = digits("test")
    clever = {"n_batches": 4, "n_samples": 8, "n_images": 2}
    with pytest.raises(TypeError, match=r"\[clever\] n_batches"):
        evaluate(digits_cnn(), (x[:4], y[:4]), metrics=["CA", "CLEVER"], config={"clever": dict(clever, n_batches="4")},
                 out=tmp_path, progress=False)
    report = evaluate(digits_cnn(), (x[:4], y[:4]), metrics=["CA", "CLEVER"], config={"clever": clever},
                      out=tmp_path, progress=False)
    scored = [v for v in report.metrics["CLEVER"].per_sample if not math.isnan(v)]  # NaN: inputs not scored
    assert report.failed == {} and len(scored) == 2
    assert _values(tmp_path)["CLEVER"] == pytest.approx(sum(scored) / 2)


def test_model_outputs_and_labels_are_checked_before_any_work(tmp_path):
    x, y = digits("test")
    with pytest.raises(ValueError, match=r"data y must hold class indices in \[0, 10\)"):
        evaluate(digits_cnn(), (x[:8], y[:8] + 10), metrics=["CA"], out=tmp_path, progress=False)
    one = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 1))
    with pytest.raises(ValueError, match=r"K >= 2 classes; for one input it returned shape \(1, 1\)"):
        evaluate(one, (x[:8], y[:8] * 0), metrics=["CA"], out=tmp_path, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_complex_inputs_and_fractional_labels_are_refused():
    x, y = digits("test")
    x, y = x[:8], y[:8]
    with pytest.raises(TypeError, match="data x must be a floating tensor"):
        evaluate(digits_cnn(), (x.to(torch.complex64), y), metrics=["CA"], progress=False)
    fractional = y.double()
    fractional[3] = 2.5
    with pytest.raises(ValueError, match=r"data y must hold whole-number class indices, got 2.5 at position 3"):
        evaluate(digits_cnn(), (x, fractional), metrics=["CA"], progress=False)
    dataset = torch.utils.data.TensorDataset(x, fractional)
    with pytest.raises(ValueError, match="data y must hold whole-number"):
        evaluate(digits_cnn(), dataset, metrics=["CA"], progress=False)
    # whole-number float labels are the same labels
    as_float = evaluate(digits_cnn(), (x, y.float()), metrics=["CA"], progress=False).metrics["CA"].value
    with torch.no_grad():
        assert as_float == pytest.approx(metrics.accuracy(digits_cnn()(x), y))


def test_a_failing_metric_leaves_every_other_value(tmp_path):
    from toy_models import scripted_digits_cnn

    x, y = digits("test")
    x, y = x[:16], y[:16]
    scripted = scripted_digits_cnn()
    names = ["CA", "AA_W", "ALD_inf", "NC", "TKNC", "NTE"]
    with pytest.warns(RuntimeWarning, match="NC, TKNC failed"):
        report = evaluate(scripted, (x, y), metrics=names, attacks=PGD, batch_size=8, out=tmp_path, progress=False)
    assert set(report.failed) == {"NC", "TKNC"}
    for name in ("NC", "TKNC"):
        assert report.failed[name].startswith("metric/coverage failed: ValueError: ") and "selects no module" in \
            report.failed[name]
    eager = evaluate(digits_cnn(), (x, y), metrics=["CA", "AA_W", "ALD_inf", "NTE"], attacks=PGD, batch_size=8,
                     progress=False)
    doc = json.loads((tmp_path / "report.json").read_text())["metrics"]
    for name in ("CA", "AA_W", "ALD_inf", "NTE"):  # TorchScript runs the same float ops as the eager model
        assert doc[name]["failed"] is None
        assert doc[name]["value"] == pytest.approx(eager.metrics[name].value, rel=1e-5, abs=1e-7), name
    assert doc["NC"]["value"] is None and "selects no module" in doc["NC"]["failed"]
    assert '<tr class="failed"><td>NC</td>' in (tmp_path / "report.html").read_text()


class _NoGradients(torch.nn.Module):
    """The digits CNN, refusing to run where gradients are enabled (so every attack fails)."""

    def __init__(self):
        super().__init__()
        self.net = digits_cnn()

    def forward(self, x):
        if torch.is_grad_enabled():
            raise RuntimeError("no gradients here")
        return self.net(x)


def test_a_failing_attack_fails_only_the_metrics_that_need_it():
    x, y = digits("test")
    x, y = x[:8], y[:8]
    with pytest.warns(RuntimeWarning, match="AA_W, ALD_inf failed"):
        report = evaluate(_NoGradients(), (x, y), metrics=["CA", "AA_W", "ALD_inf", "NC"], attacks=PGD, progress=False)
    for name, attack in (("AA_W", "pgd"), ("ALD_inf", "deepfool")):
        assert report.failed[name] == f"attack {attack} on the model failed: RuntimeError: no gradients here"
    with torch.no_grad():
        assert report.metrics["CA"].value == pytest.approx(metrics.accuracy(digits_cnn()(x), y))
    assert 0 < report.metrics["NC"].value <= 1 and "adversarial examples" not in report.figures


@pytest.mark.parametrize("error", [KeyboardInterrupt, MemoryError])
def test_interrupts_and_memory_errors_are_not_swallowed(monkeypatch, error):
    import dataclasses

    from robustx.metrics.families import FAMILIES

    def update(batch, settings, name):
        raise error()

    monkeypatch.setitem(FAMILIES, "CLEVER", dataclasses.replace(FAMILIES["CLEVER"], update=update))
    x, y = digits("test")
    with pytest.raises(error):
        evaluate(digits_cnn(), (x[:4], y[:4]), metrics=["CA", "CLEVER"], progress=False)


# ------------------------------------------------------------------ command line
CLI_METRICS = "CA,AA_W,ALD_2,ASS,ACAC,NTE,NC,KMNC,NS,DIV"


def _evaluate_cmd(out: Path, *extra: str):
    return [sys.executable, "-m", "robustx", "evaluate", "--model", "digits", "--n", "64", "--metrics", CLI_METRICS,
            "--batch-size", "8", "--out", str(out), "--no-progress", *extra]


def _finished_units(out: Path) -> int:
    path = out / "store.sqlite"
    if not path.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1) as conn:
            return conn.execute("SELECT COUNT(*) FROM units").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def _values(out: Path) -> dict:
    doc = json.loads((out / "report.json").read_text())
    return {name: m["value"] for name, m in doc["metrics"].items()}


def test_sigkilled_run_resumes_to_the_same_report(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", ROBUSTX_NO_PROGRESS="1")
    whole = tmp_path / "whole"
    subprocess.run(_evaluate_cmd(whole), check=True, env=env, capture_output=True, timeout=600)
    total = _finished_units(whole)
    killed = tmp_path / "killed"
    for stop_after in (total // 4, total // 2, 3 * total // 4):  # three kills at different points, then a finish
        proc = subprocess.Popen(_evaluate_cmd(killed, "--resume"), env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        deadline = time.time() + 300
        while _finished_units(killed) < stop_after and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert 0 < _finished_units(killed) < total
    subprocess.run(_evaluate_cmd(killed, "--resume"), check=True, env=env, capture_output=True, timeout=600)
    assert _finished_units(killed) == total
    # exact: one process, and every unit (stored or redone) is the same batch of 8 as in the whole run
    assert _values(killed) == _values(whole)
    compare = subprocess.run([sys.executable, "-m", "robustx", "compare", str(whole), str(killed)], env=env,
                             capture_output=True, text=True, timeout=120)
    assert compare.returncode == 0 and "AA_W" in compare.stdout


def test_cli_errors_are_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.npy"
    np.save(bad, np.full((2, 1, 8, 8), 2.0, dtype=np.float32))
    config = tmp_path / "run.toml"
    config.write_text("[clever]\nn_batchez = 3\n")
    cases = [
        (["--weights", str(tmp_path / "missing.pt")], "no such file"),
        (["--data", str(bad)], "outside clip_values"),
        (["--metrics", "CA,WHAT"], "unknown metric"),
        (["--config", str(config)], "n_batchez"),
        (["-n", "0"], "(--n) must be an int in [1, 359], got 0"),
        (["--n", "-5"], "(--n) must be an int in [1, 359], got -5"),
    ]
    for extra, message in cases:
        with pytest.raises(SystemExit) as err:
            main(["evaluate", "--model", "digits", "--out", str(tmp_path / "o"), "--no-progress", *extra])
        assert err.value.code == 2
        text = capsys.readouterr().err
        assert message in text and "Traceback" not in text and text.count("\n") == 1
    with pytest.raises(SystemExit):
        main(["evaluate", "--model", "robustx.data:digits", "--out", str(tmp_path / "o"), "--no-progress"])
    assert "not a torch.nn.Module" in capsys.readouterr().err


def test_a_damaged_store_is_one_line_on_the_command_line(tmp_path, capsys):
    for damage in ("random bytes", "truncated"):
        out = tmp_path / damage
        if damage == "random bytes":
            out.mkdir()
            (out / "store.sqlite").write_bytes(np.random.default_rng(0).integers(0, 256, 8192, np.uint8).tobytes())
        else:
            evaluate(digits_cnn(), digits("test"), metrics=["AA_W"], attacks=PGD, batch_size=64, out=out,
                     progress=False)  # 6 units of adversarial examples, then the file cut to a few pages
            with open(out / "store.sqlite", "r+b") as f:
                f.truncate(16384)
        with pytest.raises(SystemExit) as err:
            main(["evaluate", "--model", "digits", "--n", "8", "--metrics", "AA_W", "--out", str(out), "--resume",
                  "--no-progress"])
        text = capsys.readouterr().err
        assert err.value.code == 2 and text.count("\n") == 1 and "Traceback" not in text
        assert f"{out / 'store.sqlite'} is damaged or not a robustx store" in text and "delete it" in text


def test_cli_bad_config_stops_before_work_and_the_fixed_one_runs_in_the_same_folder(tmp_path, capsys):
    config, out = tmp_path / "run.toml", tmp_path / "out"
    command = ["evaluate", "--model", "digits", "-n", "4", "--metrics", "CA,AA_W,CLEVER", "--config", str(config),
               "--out", str(out), "--no-progress"]
    config.write_text('[clever]\nn_batches = "8"\nn_samples = 8\nn_images = 2\n')
    with pytest.raises(SystemExit) as err:
        main(command)
    assert err.value.code == 2 and not out.exists()
    assert capsys.readouterr().err == "robustx evaluate: error: [clever] n_batches must be an int >= 2, got '8'\n"
    config.write_text("[clever]\nn_batches = 8\nn_samples = 8\nn_images = 2\n")
    assert main(command) == 0
    assert _values(out)["CLEVER"] > 0
    with pytest.raises(SystemExit):  # the same run again: the advice is in the command line's words
        main(command)
    text = capsys.readouterr().err
    assert "pass --resume to reuse them" in text and "resume=True" not in text


def test_cli_exits_1_naming_the_failed_metrics(tmp_path, capsys, recwarn):
    out = tmp_path / "out"
    status = main(["evaluate", "--model", "toy_models:scripted_digits_cnn", "--data", "digits", "-n", "8",
                   "--metrics", "CA,NC,TKNC", "--out", str(out), "--no-progress"])
    assert status == 1
    captured = capsys.readouterr()
    assert captured.err.splitlines()[-1] == ("robustx evaluate: 2 failed: NC, TKNC (reasons above and in "
                                             "report.json)")
    rows = {line.split()[0]: line.split()[1:] for line in captured.out.splitlines()[1:4]}
    assert rows["NC"][0] == "failed" and "selects no module" in " ".join(rows["NC"])
    assert not [w for w in recwarn if "failed" in str(w.message)]  # said once, in the command's words
    with torch.no_grad():
        x, y = digits("test")
        assert _values(out)["CA"] == pytest.approx(metrics.accuracy(digits_cnn()(x[:8]), y[:8]))


def test_metrics_command_lists_every_metric(capsys):
    assert main(["metrics"]) == 0
    out = capsys.readouterr().out
    for name in metrics.available():
        assert f"\n{name} " in out
    assert "defended model" in out and "higher" in out and "lower" in out


def test_report_folder_round_trips(digits_run, tmp_path):
    *_, report = digits_run
    report.save(tmp_path)
    loaded = Report.load(tmp_path)
    assert {n: m.value for n, m in loaded.metrics.items()} == {n: m.value for n, m in report.metrics.items()}
    html = (tmp_path / "report.html").read_text()
    assert "data:image/png;base64," in html and "AA_W" in html


def test_real_cifar_models_small_run(tmp_path, capsys):
    """The real check, small: the natural and the PAT ResNet-20 on 8 AISafety images, one
    command each, then compare (skipped without ../shared/data/aisafety-cifar10)."""
    from robustx.data import aisafety_cifar10, aisafety_dir
    from robustx.models import resnet20_cifar

    folder = aisafety_dir()
    if not (folder / "resnet20_cifar.pt").is_file():
        pytest.skip(f"AISafety CIFAR-10 files not found in {folder}")
    x, y = aisafety_cifar10()
    outs, ald_inf = [], []
    for weights in ("resnet20_cifar.pt", "CIFAR10_PAT_enhanced.pt"):
        out = tmp_path / weights
        assert main(["evaluate", "--model", "resnet20", "--weights", str(folder / weights), "-n", "8",
                     "--metrics", "CA,AA_W,ALD_inf,NC", "--out", str(out), "--no-progress"]) == 0
        with torch.no_grad():
            ca = metrics.accuracy(resnet20_cifar(folder / weights)(x[:8]), y[:8])
        values = _values(out)
        assert values["CA"] == pytest.approx(ca)
        assert values["AA_W"] <= values["CA"]
        outs.append(str(out))
        ald_inf.append(values["ALD_inf"])
    # DeepFool's distance, not PGD's budget 8/255: larger for the adversarially trained model
    # (bench/RESULTS.md, 100 images: 0.0135 natural, 0.0711 PAT)
    assert ald_inf[1] > 2 * ald_inf[0] and abs(ald_inf[0] - 8 / 255) > 0.01
    capsys.readouterr()
    assert main(["compare", *outs]) == 0
    text = capsys.readouterr().out
    assert "AA_W" in text and "over the common set" in text


def test_landscape_table_adds_its_plots(tmp_path):
    x, y = digits("test")
    report = evaluate(digits_cnn(), (x[:4], y[:4]), metrics=["CA"], config={"landscape": {"steps": 5, "n_images": 2}},
                      out=tmp_path, progress=False)
    for kind in ("contour", "surface"):
        pixels = png_pixels(report.figures[f"loss landscape ({kind})"])
        assert min(pixels.shape[:2]) >= 100 and ink(pixels) > 0.05, (kind, pixels.shape, ink(pixels))
    assert (tmp_path / "report.html").read_text().count("data:image/png;base64,") == 2


def test_inference_options_leave_clever_unchanged_and_change_the_run_id():
    net, x = wide_cnn(4), torch.rand(2, 3, 8, 8)
    y = net(x).argmax(1)
    config = {"clever": {"n_batches": 10, "n_samples": 16, "n_images": 2}}
    plain = evaluate(net, (x, y), metrics="CLEVER", config=config, progress=False)
    fast = evaluate(net, (x, y), metrics="CLEVER", config=config, progress=False, channels_last=True,
                    autocast="bf16")
    assert fast.metrics["CLEVER"].per_sample == plain.metrics["CLEVER"].per_sample
    assert fast.run["id"] != plain.run["id"]
    assert fast.run["inference"] == {"channels_last": True, "autocast": "torch.bfloat16"}
    with pytest.raises(ValueError, match="autocast"):
        evaluate(net, (x, y), metrics="CA", autocast="int8", progress=False)
