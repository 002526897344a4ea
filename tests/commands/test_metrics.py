"""``robustx metrics`` (robustx/commands/metrics.py) lists every registered metric once."""
from robustx.commands import main
from robustx.metrics import available, get


def test_lists_every_metric_with_family_and_direction(capsys):
    assert main(["metrics"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["metric", "family", "better", "needs"]
    rows = {line.split()[0]: line for line in lines[1:]}
    assert sorted(rows) == sorted(available()) and len(lines) == len(available()) + 1
    for name, line in rows.items():
        info = get(name)
        assert f" {info.family} " in line and f" {info.direction} " in line
