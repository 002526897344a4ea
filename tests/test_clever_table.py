"""robustx clever's table and JSON show which scores are reliable (no ill-conditioned fallback)."""
import json
import warnings

from robustx.clever_table import run_clever_table


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
