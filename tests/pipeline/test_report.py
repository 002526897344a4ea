"""The report: JSON round trip, the self-contained HTML page, plots and comparison
(robustx.pipeline.report)."""
import base64
import errno
import io
import json
import math
import os
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch

from robustx.plotting import bars_png, histogram_png, image_grid_png, layer_bars_png
from robustx.pipeline.report import MetricResult, Report, compare, compare_html
from toy_images import ink, png_pixels

STRUCTURAL = {"html", "head", "body", "main", "section", "table", "thead", "tbody", "tr", "th", "td",
              "figure", "figcaption", "div", "h1", "h2", "title", "style"}


class _Checker(HTMLParser):
    """Collects structural-tag balance errors, every <img> src and all tags seen."""

    def __init__(self):
        super().__init__()
        self.stack, self.errors, self.images, self.tags, self.cells = [], [], [], [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs.get("src", ""))
        if tag == "td":
            self.cells.append(attrs.get("class", ""))
        if tag in STRUCTURAL:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if tag not in STRUCTURAL:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
        else:
            self.stack.pop()


def _parse(page: str) -> _Checker:
    checker = _Checker()
    checker.feed(page)
    checker.close()
    assert page.startswith("<!DOCTYPE html>")
    assert checker.errors == [] and checker.stack == [], (checker.errors, checker.stack)
    return checker


def _png_size(png: bytes):
    """(width, height) of the decoded image."""
    height, width = png_pixels(png).shape[:2]
    return width, height


def _drawn(png: bytes) -> bool:
    """A decodable PNG at least 100 px a side with something drawn on it (> 5 % non-background)."""
    pixels = png_pixels(png)
    return min(pixels.shape[:2]) >= 100 and ink(pixels) > 0.05


def _report(**values):
    metrics = {
        "clean_accuracy": MetricResult("clean_accuracy", 0.92, True, [1.0, 0.0, 1.0], {"batch": 128}, 1.5,
                                       family="accuracy"),
        "clever_u": MetricResult("clever_u", 0.031, True, [0.02, float("inf")], {"norm": float("inf")}, 12.0,
                                 family="certified"),
        "ASS": MetricResult("ASS", None, False, settings={}, seconds=0.0, skipped="no attack given",
                            family="perceptual"),
    }
    for name, v in values.items():
        metrics[name].value = v
    return Report(metrics, {"run_id": "ab" * 32, "model": "toy", "seed": 0, "versions": {"torch": "2.13"}})


def test_json_round_trips_through_save_and_load(tmp_path):
    rep = _report()
    rep.figures["hist"] = histogram_png([0.1, 0.2, 0.2], "h", "x")
    rep.save(tmp_path / "out")
    raw = json.loads((tmp_path / "out" / "report.json").read_text(),
                     parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    assert raw["metrics"]["clean_accuracy"]["value"] == 0.92
    assert raw["metrics"]["clean_accuracy"]["higher_is_better"] is True
    assert raw["metrics"]["ASS"]["value"] is None and raw["metrics"]["ASS"]["skipped"] == "no attack given"
    assert raw["metrics"]["clever_u"]["per_sample"] == [0.02, "Infinity"]
    assert set(raw["metrics"]["ASS"]) == {"name", "value", "higher_is_better", "per_sample", "settings",
                                          "seconds", "skipped", "family", "failed", "budget"}
    for where in (tmp_path / "out", tmp_path / "out" / "report.json"):
        back = Report.load(where)
        assert back.to_dict() == rep.to_dict()
        assert back.metrics["clever_u"].settings["norm"] == math.inf and back.figures == {}


def test_nan_value_round_trips(tmp_path):
    rep = _report(clean_accuracy=float("nan"))
    back = Report.load(rep.save(tmp_path))
    assert math.isnan(back.metrics["clean_accuracy"].value)


def test_a_full_disk_leaves_no_temporary_file_and_the_old_report(tmp_path, monkeypatch):
    old = _report().save(tmp_path).joinpath("report.json").read_text()
    real = Path.write_text

    def full_disk(self, text, **kw):  # what a write that fills the disk leaves: the file, empty
        real(self, "")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Path, "write_text", full_disk)
    with pytest.raises(OSError, match=r"cannot write .*report\.json: No space left on device") as err:
        _report(clean_accuracy=0.5).save(tmp_path)
    monkeypatch.undo()
    assert err.value.errno == errno.ENOSPC and "\n" not in str(err.value)
    assert sorted(f.name for f in tmp_path.iterdir()) == ["report.csv", "report.html", "report.json"]
    assert (tmp_path / "report.json").read_text() == old


def test_load_rejects_other_json(tmp_path):
    (tmp_path / "x.json").write_text('{"values": 1}')
    with pytest.raises(ValueError, match="not a robustx report"):
        Report.load(tmp_path / "x.json")


def test_metric_result_value_is_none_exactly_when_skipped():
    with pytest.raises(ValueError, match="skipped"):
        MetricResult("a", None, True)
    with pytest.raises(ValueError, match="skipped"):
        MetricResult("a", 0.5, True, skipped="why")


def test_a_failed_metric_has_its_reason_and_no_value():
    with pytest.raises(ValueError, match="skipped or failed"):
        MetricResult("a", 0.5, True, failed="RuntimeError: boom")
    with pytest.raises(ValueError, match="both skipped and failed"):
        MetricResult("a", None, True, skipped="why", failed="RuntimeError: boom")
    rep = _report()
    rep.metrics["NC"] = MetricResult("NC", None, True, seconds=0.5, family="coverage",
                                     failed="ValueError: layers <x> selects no module")
    assert rep.failed == {"NC": "ValueError: layers <x> selects no module"}


def test_failed_metrics_round_trip_and_show_in_html_and_compare(tmp_path):
    rep = _report()
    rep.metrics["NC"] = MetricResult("NC", None, True, seconds=0.5, family="coverage",
                                     failed="ValueError: layers <x> selects no module")
    rep.save(tmp_path)
    raw = json.loads((tmp_path / "report.json").read_text())
    assert raw["metrics"]["NC"]["failed"] == "ValueError: layers <x> selects no module"
    assert raw["metrics"]["NC"]["value"] is None and raw["metrics"]["clean_accuracy"]["failed"] is None
    back = Report.load(tmp_path)
    assert back.failed == {"NC": "ValueError: layers <x> selects no module"}
    assert back.metrics["clean_accuracy"].value == 0.92  # the others keep their values
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    parsed = _parse(page)
    assert "x" not in parsed.tags  # the reason is escaped
    row = page[page.index('<tr class="failed"><td>NC</td>'):].split("</tr>", 1)[0]
    assert ">failed<" in row and "failed: ValueError: layers &lt;x&gt; selects no module" in row
    ok = _report()
    ok.metrics["NC"] = MetricResult("NC", 0.4, True)
    text = compare([back, ok], ["scripted", "plain"])
    rows = {line.split()[0]: line.split()[1:] for line in text.splitlines()[2:] if line.split()}
    assert rows["NC"] == ["↑", "failed", "0.4"] and rows["clean_accuracy"] == ["↑", "0.92", "0.92"]
    page = compare_html([back, ok], ["scripted", "plain"])
    _parse(page)
    assert '<td>NC</td><td>↑</td><td class="num">failed</td><td class="num">0.4</td>' in page


def test_html_is_one_well_formed_page_with_embedded_pngs(tmp_path):
    rep = _report()
    rep.metrics["<b>odd</b>"] = MetricResult("<b>odd</b>", 1.0, False)
    rep.figures = {
        "CLEVER scores": histogram_png([0.1, 0.3, float("nan")], "CLEVER", "score"),
        "per attack": bars_png(["pgd", "fgsm"], [0.1, 0.4], "success rate"),
        "coverage": layer_bars_png({"conv1": 0.5, "fc": 0.9}, "coverage"),
        "samples": image_grid_png(torch.rand(10, 3, 8, 8), torch.rand(10, 3, 8, 8)),
    }
    rep.save(tmp_path)
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    parsed = _parse(page)
    assert len(parsed.images) == 4
    for src in parsed.images:
        assert src.startswith("data:image/png;base64,")
        assert _drawn(base64.b64decode(src.split(",", 1)[1]))
    assert "b" not in parsed.tags  # the metric name was escaped
    assert not {"link", "script", "iframe"} & set(parsed.tags)  # nothing loaded from elsewhere
    for text in ["Robustness report — toy", "clean_accuracy", "0.92", "↑", "↓", "no attack given", "perceptual", "CLEVER scores", "ab" * 32]:
        assert text in page


def test_plots_are_pngs_of_sensible_size():
    w, h = _png_size(image_grid_png(torch.rand(8, 1, 6, 6), torch.rand(8, 1, 6, 6), n=8))
    assert w > 2 * h
    w3, _ = _png_size(image_grid_png(torch.rand(8, 6, 6), torch.rand(8, 6, 6), n=3))
    assert w3 < w
    _, h_many = _png_size(layer_bars_png({f"layer{i}": i for i in range(30)}, "t"))
    _, h_few = _png_size(layer_bars_png({"a": 1.0}, "t"))
    assert h_many > h_few
    with pytest.raises(ValueError, match="same shape"):
        image_grid_png(torch.rand(2, 3, 4, 4), torch.rand(3, 3, 4, 4))
    with pytest.raises(ValueError, match="C 1 or 3"):
        image_grid_png(torch.rand(2, 2, 4, 4), torch.rand(2, 2, 4, 4))
    with pytest.raises(ValueError, match="same length"):
        bars_png(["a"], [1.0, 2.0], "t")


# user text that matplotlib's mathtext cannot parse (the last four) or would typeset ($x$)
MATH_LIKE = ["$x$", "$", "_^\\", "conv$^$", "a$\\foo$", "$_$", "run $x^$ 2"]


def _mathtext_fails(text: str) -> bool:
    from matplotlib.figure import Figure

    fig = Figure()
    fig.subplots().set_title(text)
    try:
        fig.savefig(io.BytesIO(), format="png")
    except ValueError:
        return True
    return False


def test_plot_text_is_drawn_literally():
    import matplotlib

    assert sum(_mathtext_fails(t) for t in MATH_LIKE) == 4  # what would break the report without the fix
    a, b = _pair()
    pngs = [
        histogram_png([1.0, 2.0, 3.0], "CLEVER of conv$^$", "score $_$"),
        bars_png(MATH_LIKE, range(len(MATH_LIKE)), "a$\\foo$"),
        layer_bars_png({name: 1.0 for name in MATH_LIKE}, "NC $x^$"),
        *[base64.b64decode(s.split(",", 1)[1]) for s in _parse(compare_html([a, b], ["run$_$", "$x^$"])).images],
    ]
    assert len(pngs) == 7 and all(_drawn(p) for p in pngs)
    assert matplotlib.rcParams["text.parse_math"]  # the user's setting is back after each figure


def _pair():
    a = Report({
        "acc": MetricResult("acc", 0.9, True),
        "dist": MetricResult("dist", 0.3, False),
        "tie": MetricResult("tie", 0.5, True),
        "skip": MetricResult("skip", 0.7, True),
        "only_a": MetricResult("only_a", 1.0, True),
    })
    b = Report({
        "acc": MetricResult("acc", 0.8, True),
        "dist": MetricResult("dist", 0.2, False),
        "tie": MetricResult("tie", 0.5, True),
        "skip": MetricResult("skip", None, True, skipped="no surrogate"),
    })
    return a, b


def test_compare_marks_the_better_value():
    a, b = _pair()
    text = compare([a, b], ["base", "defended"])
    rows = {line.split()[0]: line.split()[1:] for line in text.splitlines()[2:] if line.split()}
    assert text.splitlines()[0].split() == ["metric", "dir", "base", "defended"]
    assert rows["acc"] == ["↑", "0.9*", "0.8"]
    assert rows["dist"] == ["↓", "0.3", "0.2*"]
    assert rows["tie"] == ["↑", "0.5", "0.5"]
    assert rows["skip"] == ["↑", "0.7", "skipped"]
    assert "only_a" not in rows and "not in every report: only_a" in text


def test_compare_html_highlights_and_charts():
    a, b = _pair()
    parsed = _parse(compare_html([a, b], ["base", "defended"]))
    assert sum("best" in c.split() for c in parsed.cells) == 2
    assert len(parsed.images) == 4  # one chart per shared metric
    assert all(_drawn(base64.b64decode(s.split(",", 1)[1])) for s in parsed.images)


def test_compare_stars_no_coverage_metric(tmp_path):
    """Coverage (test adequacy) carries no direction in the registry: compare shows it with
    "n/a" and never stars or highlights it, even where the values differ; CA still gets its star."""
    from robustx import metrics

    coverage = metrics.available("coverage")
    names = ["CA", *coverage]

    def report(offset):
        return Report({k: MetricResult(k, 0.4 + offset + 0.01 * i, metrics.get(k).higher_is_better,
                                       family=metrics.get(k).family) for i, k in enumerate(names)})

    a, b = report(0.0), report(0.2)
    b.save(tmp_path)
    b = Report.load(tmp_path)  # None survives the JSON round trip
    rows = {line.split()[0]: line.split()[1:] for line in compare([a, b], ["a", "b"]).splitlines()[2:]}
    assert rows["CA"] == ["↑", "0.4", "0.6*"]
    for k in coverage:
        assert rows[k][0] == "n/a" and not any("*" in cell for cell in rows[k]), k
    parsed = _parse(compare_html([a, b], ["a", "b"]))
    assert sum("best" in c.split() for c in parsed.cells) == 1
    page = _parse(b.to_html())
    assert not page.errors


def test_compare_checks_its_arguments():
    a, b = _pair()
    with pytest.raises(ValueError, match="one name per report"):
        compare([a, b], ["x"])
    with pytest.raises(ValueError, match="at least 2"):
        compare([a], ["x"])
    b.metrics["acc"] = MetricResult("acc", 0.1, False)
    with pytest.raises(ValueError, match="direction"):
        compare([a, b], ["x", "y"])
