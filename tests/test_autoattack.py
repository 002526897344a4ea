"""AutoAttack through its authors' code (pyautoattack): on a linear model, whose exact L-inf
robust radius is known, its robust accuracy is the exact one; through evaluate and the
command line its examples are shared like any other attack's; attacks given as callables;
report.csv and the notebook view of a report."""
import csv
import io
import json

import pytest
import torch
from torch import nn

import robustx
from robustx.attacks import pgd
from robustx.autoattack import autoattack
from robustx.commands import main
from robustx.data import digits
from robustx.models import digits_cnn

pytest.importorskip("pyautoattack")


def _linear(seed: int = 0) -> nn.Module:
    """(N, 1, 4, 4) -> 10 logits, Wx + b with seeded Gaussian weights."""
    gen = torch.Generator().manual_seed(seed)
    lin = nn.Linear(16, 10)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(10, 16, generator=gen))
        lin.bias.copy_(torch.randn(10, generator=gen))
    return nn.Sequential(nn.Flatten(), lin).eval()


@torch.no_grad()
def _linf_radius(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Exact L-inf distance to the decision boundary of a linear model (no box constraint):
    min over j != c of (f_c - f_j)(x) / ||w_c - w_j||_1."""
    w, z = net[1].weight, net(x)
    c = z.argmax(1)
    gaps = (z.gather(1, c[:, None]) - z) / (w[c][:, None, :] - w[None]).abs().sum(-1).clamp_min(1e-12)
    gaps[torch.arange(x.shape[0]), c] = float("inf")
    return gaps.min(1).values.double()


def test_robust_accuracy_of_a_linear_model_is_the_exact_one():
    """Data in [-1, 1]^16 inside the domain [-20, 20] (so the box never binds and AutoAttack's
    map to [0, 1] is exercised): an input is robust at eps exactly when its radius exceeds eps.
    Inputs within 2 % of eps are left out (the attacks stop a hair short of the boundary)."""
    lin = _linear()
    x = torch.rand(400, 1, 4, 4, generator=torch.Generator().manual_seed(1)) * 2 - 1
    r = _linf_radius(lin, x)
    eps = float(r.median())
    keep = (r - eps).abs() > 0.02 * eps
    x, r = x[keep][:60], r[keep][:60]
    with torch.no_grad():
        y = lin(x).argmax(1)
    x_adv = autoattack(lin, x, y, eps=eps, clip_values=(-20.0, 20.0), seed=0)
    with torch.no_grad():
        robust = lin(x_adv).argmax(1) == y
    assert torch.equal(robust, r > eps)
    assert 10 < int(robust.sum()) < 50
    # within eps up to float32 rounding of the map to [0, 1] and back (a few ulp of hi - lo = 40)
    assert (x_adv - x).abs().max() <= eps + 8 * 40 * 2.0 ** -24
    assert torch.equal(x_adv[robust], x[robust])  # an input no attack fooled comes back unchanged
    x_pgd = pgd(lin, x, y, eps=eps, steps=10, step_size=eps / 4, clip_values=(-20.0, 20.0), seed=0, progress=False)
    with torch.no_grad():
        assert (lin(x_pgd).argmax(1) == y).sum() >= robust.sum()  # AutoAttack is at most PGD's accuracy


def test_seeded_and_leaves_the_global_generator_alone():
    net = digits_cnn()
    x, y = digits("test")
    x, y = x[:8], y[:8]
    settings = dict(eps=0.1, version="custom", attacks=["apgd-ce"], seed=5)
    state = torch.random.get_rng_state()
    first = autoattack(net, x, y, **settings)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(autoattack(net, x, y, **settings), first)
    for bad, message in (({"version": "fast"}, "version must be one of"),
                         ({"attacks": ["apgd-ce"]}, "goes with version='custom'"),
                         ({"norm": 3}, "norm must be one of"), ({"clip_values": None}, "bounded data domain")):
        with pytest.raises(ValueError, match=message):
            autoattack(net, x, y, **{"eps": 0.1, **bad})


def test_autoattack_from_the_command_line_and_in_evaluate(tmp_path):
    """AA_W under AutoAttack (its table's own seed) equals the accuracy on the examples
    autoattack() makes directly from the same batch and seed, and is at most PGD's."""
    net = digits_cnn()
    x, y = digits("test")
    x, y = x[:24], y[:24]
    table = {"eps": 0.1, "version": "custom", "attacks": ["apgd-ce", "apgd-t"], "seed": 3}
    with torch.no_grad():
        direct = (net(autoattack(net, x, y, **table)).argmax(1) == y).double().mean().item()
    (tmp_path / "aa.toml").write_text('[autoattack]\neps = 0.1\nversion = "custom"\nattacks = ["apgd-ce", "apgd-t"]\n'
                                      'seed = 3\n[pgd]\neps = 0.1\nstep_size = 0.025\n')
    out = tmp_path / "cli"
    assert main(["evaluate", "--model", "digits", "-n", "24", "--attacks", "autoattack,pgd", "--minimal-attack",
                 "autoattack", "--config",
                 str(tmp_path / "aa.toml"), "--metrics", "CA,AA_W,ALD_inf", "--out", str(out), "--no-progress"]) == 0
    report = json.loads((out / "report.json").read_text())
    per_attack = report["metrics"]["AA_W"]["settings"]["per_attack"]
    assert per_attack["autoattack"] == direct and report["metrics"]["AA_W"]["value"] == min(per_attack.values())
    assert per_attack["autoattack"] <= per_attack["pgd"]
    assert report["metrics"]["ALD_inf"]["settings"]["attack"] == "autoattack"  # --minimal-attack: the run's own
    assert 0 < report["metrics"]["ALD_inf"]["value"] <= 0.1 + 1e-6
    api = robustx.evaluate(net, (x, y), metrics=["AA_W"], attacks={"autoattack": table}, out=tmp_path / "api",
                           progress=False)
    assert api.metrics["AA_W"].value == direct


def invert(model, x, y):
    """An attack as a callable: the photographic negative of the input."""
    return 1 - x


def test_callable_attacks_their_csv_rows_and_the_notebook_view(tmp_path):
    net = digits_cnn()
    x, y = digits("test")
    x, y = x[:20], y[:20]
    with torch.no_grad():
        clean, negative = net(x).argmax(1), net(1 - x).argmax(1)
    config = {"div": {"steps": 2}}
    report = robustx.evaluate(net, (x, y), metrics=["CA", "AA_W", "DIV"], attacks=[invert], config=config,
                              out=tmp_path, progress=False)
    assert report.metrics["AA_W"].value == (negative == y).double().mean().item()
    assert report.run["attacks"] == {"invert": "callable test_autoattack.invert"}
    again = robustx.evaluate(net, (x, y), metrics=["CA", "AA_W", "DIV"], attacks={"invert": invert}, config=config,
                             out=tmp_path, resume=True, progress=False)  # same run: the callable's name is stable
    assert again.metrics["AA_W"].value == report.metrics["AA_W"].value
    rows = list(csv.DictReader(io.StringIO((tmp_path / "report.csv").read_text())))
    assert [int(r["index"]) for r in rows] == list(range(20))
    assert [int(r["label"]) for r in rows] == y.tolist() and [int(r["prediction"]) for r in rows] == clean.tolist()
    assert [r["fooled_by"] == "invert" for r in rows] == (negative != y).tolist()
    assert [float(r["DIV"]) for r in rows] == pytest.approx(report.metrics["DIV"].per_sample, rel=1e-12)
    page = report._repr_html_()
    assert "<table" in page and "AA_W" in page and "DIV" in page and "<html" not in page
