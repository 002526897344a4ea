"""``robustx clever`` (robustx/commands/clever.py): the table, clever.json and clever_hist.png;
exact scores for a linear model named on the command line; reliability marks; the defaults
are robustx.clever.CLEVER_DEFAULTS. (``out_dir``, the deprecated alias of ``out``:
tests/test_api.py.)"""
import inspect
import io
import json
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from robustx.clever import CLEVER_DEFAULTS, CLEVER_RADII
from robustx.commands import build_parser, main
from robustx.commands.clever import run_clever_table
from toy_models import model_and_data_files

TINY = ["--n-batches", "6", "--n-samples", "8", "--no-progress"]


def _pixels(png: bytes) -> np.ndarray:
    """(H, W, 4) float RGBA of a PNG, decoded by matplotlib (an independent reader)."""
    import matplotlib.image

    return matplotlib.image.imread(io.BytesIO(png), format="png")


@pytest.mark.filterwarnings("ignore:.*Weibull fits were ill-conditioned:RuntimeWarning")  # 6 x 8 samples
def test_writes_a_table_json_and_two_histograms(tmp_path, capsys):
    out = tmp_path / "clever"
    assert main(["clever", "--n-images", "3", "--radius-l2", "1.5", "--out", str(out), *TINY]) == 0
    doc = json.loads((out / "clever.json").read_text())
    assert doc["model"] == "digits" and doc["data"] == "digits[:3]" and len(doc["labels"]) == 3
    for name, radius in (("L2", 1.5), ("Linf", CLEVER_RADII["inf"])):
        entry = doc["clever"][name]
        res = entry["result"]
        assert res["settings"]["radius"] == radius and res["settings"]["n_batches"] == 6
        scores = res["per_sample"]
        assert len(scores) == 3 and all(0.0 < s <= radius for s in scores)
        assert entry["mean"] == pytest.approx(sum(scores) / 3) and res["value"] == pytest.approx(entry["mean"])
        assert len(res["targets"][0]) == 9  # untargeted: every other class of the digits CNN
        # the score is g0 / Lipschitz estimate (capped at R), and the estimate is >= the largest sampled norm
        for i in range(3):
            for g0, lip, top, s in zip(res["g0"][i], res["lipschitz"][i], res["max_sampled"][i], res["target_scores"][i]):
                assert lip >= top > 0 and s == pytest.approx(min(g0 / lip, radius))
    table = capsys.readouterr().out
    assert "CLEVER L2" in table and "CLEVER Linf" in table and str(out / "clever.json") in table
    rgba = _pixels((out / "clever_hist.png").read_bytes())
    height, width = rgba.shape[:2]
    assert 1.8 < width / height < 3.5  # two panels side by side, each about 5 x 3.2 inches
    bars = (np.abs(rgba[..., :3] - np.array([0x4C, 0x72, 0xB0]) / 255).max(-1) < 0.02)  # the bars' colour
    left, right = bars[:, : width // 2].sum(), bars[:, width // 2:].sum()
    assert left > 100 and right > 100  # a histogram drawn in each panel


def test_a_linear_model_file_gets_its_exact_boundary_distance(tmp_path, capsys):
    """CLEVER of f(x) = Wx + b is min_j (f_c - f_j)(x0) / ||w_c - w_j||_q (Weng et al.; the
    gradient is constant): the model comes from a TorchScript file, the data from a .npz."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 4)).eval()
    x = torch.rand(5, 1, 4, 4)
    model_file, data_file = model_and_data_files(tmp_path, net, x, np.arange(5) % 4, "linear")
    out = tmp_path / "out"
    assert main(["clever", "--model", str(model_file), "--data", str(data_file),
                 "--n-images", "4", "--radius-l2", "100", "--radius-linf", "100", "--out", str(out), *TINY]) == 0
    doc = json.loads((out / "clever.json").read_text())
    w, b = net[1].weight.double(), net[1].bias.double()
    f = x[:4].flatten(1).double() @ w.T + b
    for name, q in (("L2", 2), ("Linf", 1)):
        exact = [min(((f[i, c] - f[i, j]) / torch.linalg.vector_norm(w[c] - w[j], ord=q)).item()
                     for j in range(4) if j != c) for i, c in enumerate(f.argmax(1).tolist())]
        assert doc["clever"][name]["result"]["per_sample"] == pytest.approx(exact, rel=1e-4)
        assert all(doc["clever"][name]["reliable"])  # constant maxima: exact, not a suspect fallback


def test_table_marks_unreliable_scores(tmp_path):
    lines = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the tiny settings leave fallbacks
        doc = run_clever_table(tmp_path, n_images=4, n_batches=4, n_samples=4, max_batches=4, progress=False,
                               echo=lines.append)
    assert json.loads((tmp_path / "clever.json").read_text()) == json.loads(json.dumps(doc))
    rows = lines[0].splitlines()[2:6]
    for col, name in enumerate(("L2", "Linf")):
        entry = doc["clever"][name]
        reasons = entry["result"]["reason"]
        expected = [all(r < 2 for r in image) for image in reasons]  # 0 = fit used, 1 = constant maxima
        assert entry["reliable"] == entry["result"]["reliable"] == expected
        assert entry["ill_conditioned_fallbacks"] == sum(r >= 2 for image in reasons for r in image)
        marks = [row.split()[3 + col].endswith("*") for row in rows]
        assert marks == [not ok for ok in expected]
    assert not all(doc["clever"]["Linf"]["reliable"])  # 4 x 4 samples: some fits are ill-conditioned


def test_the_command_and_the_suite_share_one_default_set():
    from robustx.metrics.families import FAMILIES

    args = build_parser().parse_args(["clever"])
    assert (args.n_images, args.n_batches, args.n_samples, args.radius_l2) == tuple(
        CLEVER_DEFAULTS[k] for k in ("n_images", "n_batches", "n_samples", "radius"))
    assert args.radius_linf == CLEVER_RADII["inf"]
    assert dict(FAMILIES["CLEVER"].defaults) == CLEVER_DEFAULTS
    signature = inspect.signature(run_clever_table).parameters
    assert {k: signature[k].default for k in ("n_images", "n_batches", "n_samples")} == {
        k: CLEVER_DEFAULTS[k] for k in ("n_images", "n_batches", "n_samples")}
    assert CLEVER_DEFAULTS["n_batches"] * CLEVER_DEFAULTS["n_samples"] < 500 * 1024  # a CPU budget, not the paper's


def test_bad_option_exits_with_a_message(tmp_path, capsys):
    with pytest.raises(SystemExit) as err:
        main(["clever", "--n-images", "0", "--out", str(tmp_path), "--no-progress"])
    assert err.value.code == 2
    assert "n_images must be an int in [1, 359], got 0" in capsys.readouterr().err
