"""robustx.jsonio, the one JSON convention for NaN and infinities, through every writer:
report.json, CleverResult.to_dict (clever.json), the store's metadata and content keys."""
import json
import math
import sqlite3

import pytest
import torch
from torch import nn

from robustx import jsonio
from robustx.clever import clever
from robustx.pipeline import store as store_mod
from robustx.pipeline.report import MetricResult, Report
from robustx.pipeline.store import ResultStore, canonical_json

FP = {"model weights": "m1", "data (inputs or labels)": "d1"}


def _strict(text: str):
    """json.loads that refuses the bare NaN / Infinity tokens strict JSON does not have."""
    def refuse(token):
        raise AssertionError(f"bare {token} in the JSON text")
    return json.loads(text, parse_constant=refuse)


def _same(a, b) -> bool:
    """Equal data, NaN equal to NaN."""
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(u, v) for u, v in zip(a, b))
    return type(a) is type(b) and a == b


def test_non_finite_floats_are_strings_and_come_back():
    value = {"a": [1.5, math.nan, math.inf, -math.inf], "t": torch.tensor([[0.5, math.nan]]), "s": "x", "n": None,
             "k": (1, True)}
    text = jsonio.dumps(value)
    assert _strict(text) == {"a": [1.5, "NaN", "Infinity", "-Infinity"], "t": [[0.5, "NaN"]], "s": "x", "n": None,
                             "k": [1, True]}
    assert _same(jsonio.loads(text), {"a": [1.5, math.nan, math.inf, -math.inf], "t": [[0.5, math.nan]], "s": "x",
                                      "n": None, "k": [1, True]})
    assert _same(jsonio.loads('{"old": NaN, "big": -Infinity}'), {"old": math.nan, "big": -math.inf})


def test_report_json_with_nan_round_trips(tmp_path):
    rep = Report({"CLEVER": MetricResult("CLEVER", math.nan, True, [0.1, math.nan, math.inf], {"norm": math.inf})},
                 run={"id": "r1", "seconds": {"CLEVER": 1.0}})
    folder = rep.save(tmp_path)
    on_disk = _strict((folder / "report.json").read_text())
    assert on_disk["metrics"]["CLEVER"]["value"] == "NaN"
    assert on_disk["metrics"]["CLEVER"]["per_sample"] == [0.1, "NaN", "Infinity"]
    assert on_disk["metrics"]["CLEVER"]["settings"] == {"norm": "Infinity"}
    back = Report.load(folder)
    assert _same(back.to_dict(), rep.to_dict())
    assert _same(jsonio.loads((folder / "report.json").read_text()), rep.to_dict())


def test_clever_result_to_dict_is_strict_json_of_its_tensors():
    """A linear model: constant gradient norms, so every fit falls back (reason 1) with a
    NaN KS p-value, and no Weibull shape: the NaN fields come back as NaN."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    res = clever(model, torch.rand(2, 1, 2, 2), radius=0.5, n_batches=4, n_samples=3, progress=False)
    assert torch.isnan(res.ks_pvalue).any()
    doc = _strict(json.dumps(res.to_dict()))
    back = jsonio.decode(doc)
    for name in ("per_sample", "g0", "lipschitz", "ks_pvalue", "shape", "fallback", "reason"):
        torch.testing.assert_close(torch.tensor(back[name], dtype=getattr(res, name).dtype), getattr(res, name),
                                   equal_nan=True, rtol=0, atol=0)
    assert back["reliable"] == res.reliable.tolist() and back["settings"]["norm"] == "2"
    assert back["value"] == pytest.approx(float(res.per_sample.mean()), rel=1e-12)


def test_store_meta_keeps_nan_and_reads_the_previous_format(tmp_path):
    meta = {"score": math.nan, "cap": math.inf, "n": [1, 2]}
    assert _strict(canonical_json(meta)) == {"cap": "Infinity", "n": [1, 2], "score": "NaN"}
    with ResultStore.open(tmp_path, FP) as st:
        st.put("u", {"a": torch.ones(2)}, meta, 0.5)
        assert _same(st.get("u")[1], meta)
    # a unit stored by the previous version: bare NaN / Infinity tokens in its meta text
    old_text = json.dumps(meta, sort_keys=True, separators=(",", ":"), allow_nan=True)
    conn = sqlite3.connect(tmp_path / store_mod.STORE_FILE)
    rows = conn.execute("SELECT name, dtype, shape, data FROM tensors WHERE unit = 'u' ORDER BY pos").fetchall()
    with conn:
        conn.execute("UPDATE units SET meta = ?, checksum = ? WHERE unit = 'u'",
                     (old_text, store_mod._checksum(old_text, 0.5, rows)))
    conn.close()
    with ResultStore.open(tmp_path, FP, resume=True) as st:
        assert _same(st.get("u")[1], meta)


@pytest.mark.parametrize("bad", [{1: 2}, {"x": object()}])
def test_canonical_json_still_names_non_json_parts(bad):
    with pytest.raises(TypeError, match="meta"):
        canonical_json(bad, "meta")
