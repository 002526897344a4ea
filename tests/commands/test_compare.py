"""``robustx compare`` (robustx/commands/compare.py): two saved reports side by side."""
import pytest

from robustx.commands import main
from robustx.pipeline.report import MetricResult, Report


def test_compares_saved_reports_and_writes_html(tmp_path, capsys):
    Report({"acc": MetricResult("acc", 0.9, True), "dist": MetricResult("dist", 0.3, False)}).save(tmp_path / "a")
    Report({"acc": MetricResult("acc", 0.8, True), "dist": MetricResult("dist", 0.2, False)}).save(tmp_path / "b")
    page = tmp_path / "cmp.html"
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b" / "report.json"), "--html", str(page)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["metric", "dir", str(tmp_path / "a"), str(tmp_path / "b")]
    rows = {line.split()[0]: line.split()[2:] for line in lines[2:4]}
    assert rows == {"acc": ["0.9*", "0.8"], "dist": ["0.3", "0.2*"]}  # the better value by direction
    assert page.read_text().startswith("<!DOCTYPE html>") and lines[-1] == f"wrote {page}"


def test_one_report_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as err:
        main(["compare", str(tmp_path / "a")])
    assert err.value.code == 2
    assert capsys.readouterr().err == "robustx compare: error: compare needs at least two reports\n"
