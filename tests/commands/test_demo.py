"""``robustx demo`` (robustx/commands/demo.py) gives a value for every metric of the suite:
the PGD-trained digits CNN is its defended model, the independently trained one its surrogate
and mCE baseline, the training split its coverage profile. Run here with a smaller CLEVER
budget and 12 images; fewer than one image is refused before any work."""
import json

import pytest

from robustx.commands import demo, main
from robustx.metrics import available


def test_the_demo_skips_no_metric(tmp_path, monkeypatch):
    monkeypatch.setitem(demo.DEMO_CONFIG, "clever", {"n_batches": 5, "n_samples": 8, "n_images": 2, "radius": 2.0})
    assert main(["demo", "--n", "12", "--out", str(tmp_path), "--no-progress"]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert set(report["metrics"]) == set(available())
    skipped = {name: m["skipped"] for name, m in report["metrics"].items() if m["skipped"] is not None}
    assert skipped == {}
    assert all(isinstance(m["value"], float) for m in report["metrics"].values())
    assert report["metrics"]["mCE"]["settings"]["baseline"] is True
    rows = (tmp_path / "report.csv").read_text().splitlines()
    assert len(rows) == 13 and rows[0].startswith("index,label,prediction,fooled_by,")


@pytest.mark.parametrize("n", ["0", "-5"])
def test_demo_refuses_fewer_than_one_image(tmp_path, capsys, n):
    with pytest.raises(SystemExit) as err:
        main(["demo", "--n", n, "--out", str(tmp_path / "demo"), "--no-progress"])
    assert err.value.code == 2
    assert capsys.readouterr().err == f"robustx demo: error: --n must be an int >= 1, got {n}\n"
    assert not (tmp_path / "demo").exists()
