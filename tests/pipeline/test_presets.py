"""Presets quick | paper: the paper preset changes exactly the tables it names (to the
papers' numbers), the user's config overrides it, None picks quick on a CPU, a bad name is
refused before any work, report.json and the HTML state the preset and every budget, and
a resumed run under another preset recomputes only the units whose settings changed."""
import functools
import importlib
import json
import sqlite3

import pytest
import torch

from robustx.commands import main
from robustx.data import digits
from robustx.metrics.families import FAMILIES
from robustx.models import digits_cnn
from robustx.pipeline.config import attack_table, table_settings
from robustx.pipeline.evaluate import evaluate
from robustx.pipeline.presets import preset_name
from robustx.pipeline.report import Report

# the papers' numbers (robustx/pipeline/presets.py gives the sources)
PAPER = {"clever": {"n_batches": 500, "n_samples": 1024, "radius": 3.0, "n_images": 100, "norm": 2},
         "ebd": {"m": 10, "steps": 64}, "coverage": {"sections": 1000}}
PAPER_PGD_STEPS = 20  # Madry et al.: 20 steps of 2/255 at eps 8/255


@pytest.fixture(scope="module")
def data():
    x, y = digits("test")
    return x[:8], y[:8]


def test_paper_changes_exactly_the_tables_it_names():
    quick, paper = table_settings({}, "quick"), table_settings({}, "paper")
    assert quick == {f.table: dict(f.defaults) for f in FAMILIES.values() if f.table}  # quick = the families'
    changed = {t for t in quick if quick[t] != paper[t]}
    assert changed == set(PAPER)
    for table, keys in PAPER.items():
        assert {k: paper[table][k] for k in keys} == keys
        untouched = set(quick[table]) - set(keys)
        assert {k: paper[table][k] for k in untouched} == {k: quick[table][k] for k in untouched}
    pgd_quick, pgd_paper = attack_table(None, {}, "quick")["pgd"], attack_table(None, {}, "paper")["pgd"]
    assert pgd_quick == {"eps": 8 / 255, "norm": "inf", "steps": 10, "step_size": 2 / 255}
    assert pgd_paper == dict(pgd_quick, steps=PAPER_PGD_STEPS)


def test_the_users_config_overrides_the_preset():
    config = {"clever": {"n_batches": 7}, "pgd": {"steps": 3}, "ebd": {"m": 4}}
    paper = table_settings(config, "paper")
    assert paper["clever"] == dict(PAPER["clever"], n_batches=7)
    assert paper["ebd"]["m"] == 4 and paper["ebd"]["steps"] == 64
    assert attack_table("pgd", config, "paper")["pgd"]["steps"] == 3
    # the settings given with the attack override the preset too, the config overrides them
    assert attack_table({"pgd": {"steps": 5}}, {}, "paper")["pgd"]["steps"] == 5
    assert attack_table({"pgd": {"steps": 5}}, config, "paper")["pgd"]["steps"] == 3
    # a config's norm without a radius gets that norm's radius in the authors' code
    assert table_settings({"clever": {"norm": "inf"}}, "paper")["clever"]["radius"] == 0.1
    assert table_settings({"clever": {"norm": 1}}, "paper")["clever"]["radius"] == 30.0
    assert table_settings({"clever": {"norm": "inf", "radius": 0.3}}, "paper")["clever"]["radius"] == 0.3


def test_paper_clever_runs_and_reports_500_by_1024(data, tmp_path, monkeypatch):
    """The run calls CLEVER with the paper's N_b x N_s and report.json states it; the call
    itself is scaled down (2 x 8) so that the test takes a second, not an hour."""
    module = importlib.import_module("robustx.clever")
    real, calls = module.clever, []

    @functools.wraps(real)  # keeps the signature the config checks read
    def recorded(model, x, **kw):
        calls.append(kw)
        return real(model, x, **dict(kw, n_batches=2, n_samples=8))

    monkeypatch.setattr(module, "clever", recorded)
    evaluate(digits_cnn(), data, metrics=["CA", "CLEVER"], preset="paper", out=tmp_path, progress=False)
    assert len(calls) == 2  # the settings check (stopped at its first forward pass), then the batch
    run = calls[-1]
    assert (run["n_batches"], run["n_samples"], run["radius"], run["norm"]) == (500, 1024, 3.0, 2)
    doc = json.loads((tmp_path / "report.json").read_text())
    assert doc["run"]["preset"] == "paper"
    budget = doc["metrics"]["CLEVER"]["budget"]
    assert {k: budget[k] for k in PAPER["clever"]} == PAPER["clever"]
    assert budget["targets"] == "untargeted"  # the function's own default, resolved
    assert doc["metrics"]["CLEVER"]["settings"]["images"] == 8  # n_images 100 > 8 inputs: all of them
    assert doc["metrics"]["CA"]["budget"] == {}


def test_none_is_quick_on_a_cpu_and_paper_on_cuda(data):
    assert preset_name(None, torch.device("cpu")) == "quick"
    assert preset_name(None, torch.device("cuda")) == "paper"
    report = evaluate(digits_cnn(), data, metrics=["AA_W", "EBD"], progress=False)
    assert report.run["preset"] == "quick"
    assert report.metrics["EBD"].budget["steps"] == FAMILIES["EBD"].defaults["steps"]
    assert report.metrics["AA_W"].budget["attacks"]["pgd"]["steps"] == 10


@pytest.mark.parametrize("preset, error", [("fast", ValueError), ("Paper", ValueError), (1, TypeError)])
def test_a_bad_preset_is_refused_before_any_work_and_before_the_store(data, tmp_path, preset, error):
    model, calls = digits_cnn(), []
    model.register_forward_hook(lambda *a: calls.append(1))
    out = tmp_path / "run"
    with pytest.raises(error, match=r"preset must be one of 'quick', 'paper'"):
        evaluate(model, data, metrics=["CA"], preset=preset, out=out, progress=False)
    assert calls == [] and not out.exists()


def test_the_command_line_passes_preset_and_the_html_states_the_budget(tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["evaluate", "--model", "digits", "--n", "4", "--metrics", "CA,EBD", "--preset", "paper",
                 "--out", str(out), "--no-progress"]) == 0
    report = Report.load(out)
    assert report.run["preset"] == "paper" and report.metrics["EBD"].budget["steps"] == 64
    page = (out / "report.html").read_text()
    assert "<th>preset</th><td>paper</td>" in page and "m=10, " in page and "steps=64" in page
    with pytest.raises(SystemExit):
        main(["evaluate", "--model", "digits", "--preset", "fast"])
    assert "--preset: invalid choice: 'fast'" in capsys.readouterr().err


def test_a_resumed_run_under_another_preset_recomputes_only_changed_units(data, tmp_path):
    """CA and DIV have the same settings in both presets: their units are reused; the paper
    preset changes PGD (AA_W) and EBD: theirs and the attacked inputs' are recomputed."""
    model = digits_cnn()

    def run(preset, **kw):
        return evaluate(model, data, metrics=["CA", "AA_W", "EBD", "DIV"], preset=preset, batch_size=8,
                        out=tmp_path, progress=False, **kw)

    def stored() -> int:
        with sqlite3.connect(tmp_path / "store.sqlite") as conn:
            return conn.execute("SELECT COUNT(*) FROM units").fetchone()[0]

    quick = run("quick")
    assert (quick.run["units_reused"], quick.run["units_computed"]) == (0, 4)  # one batch, 4 metric units
    assert stored() == 5  # and the batch's per-input columns
    paper = run("paper", resume=True)
    assert (paper.run["units_reused"], paper.run["units_computed"]) == (2, 2)
    assert stored() == 8  # AA_W, EBD and the per-input columns (fooled by another PGD) added
    assert paper.run["id"] != quick.run["id"]
    for name in ("CA", "DIV"):
        assert paper.metrics[name].value == quick.metrics[name].value
        assert paper.metrics[name].budget == quick.metrics[name].budget
    fresh = evaluate(model, data, metrics=["EBD"], preset="paper", batch_size=8, progress=False)
    assert paper.metrics["EBD"].value == fresh.metrics["EBD"].value  # the same computation, not the stored one
    assert paper.metrics["EBD"].budget["steps"] == 64 and quick.metrics["EBD"].budget["steps"] == 16
