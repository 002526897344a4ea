"""The ``robustx`` command line: every subcommand has a parser, a runner and help; the demo
writes a sane JSON report and a histogram PNG (the landscape command: tests/test_landscape.py)."""
import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from robustx.cli import build_parser, main

REPO = Path(__file__).resolve().parents[1]


def test_clever_writes_json_and_png(tmp_path, capsys):
    out = tmp_path / "clever"
    status = main(["clever", "--n-images", "3", "--n-batches", "6", "--n-samples", "8", "--radius-l2", "1.5",
                   "--out", str(out), "--no-progress"])
    assert status == 0
    doc = json.loads((out / "clever.json").read_text())
    png = (out / "clever_hist.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000
    assert len(doc["labels"]) == 3
    for name, radius in (("L2", 1.5), ("Linf", 0.3)):
        entry = doc["clever"][name]
        res = entry["result"]
        assert res["settings"]["radius"] == radius and res["settings"]["n_batches"] == 6
        scores = res["scores"]
        assert len(scores) == 3 and all(0.0 < s <= radius for s in scores)
        assert entry["mean"] == pytest.approx(sum(scores) / 3)
        assert len(res["targets"][0]) == 9  # untargeted: every other class of the digits CNN
        # the score is g0 / Lipschitz estimate (capped at R), and the estimate is >= the largest sampled norm
        for i in range(3):
            for g0, lip, top, s in zip(res["g0"][i], res["lipschitz"][i], res["max_sampled"][i], res["target_scores"][i]):
                assert lip >= top > 0 and s == pytest.approx(min(g0 / lip, radius))
    table = capsys.readouterr().out
    assert "CLEVER L2" in table and "CLEVER Linf" in table and str(out / "clever.json") in table


def test_bad_option_exits_with_a_message(tmp_path, capsys):
    with pytest.raises(SystemExit) as err:
        main(["clever", "--n-images", "0", "--out", str(tmp_path), "--no-progress"])
    assert err.value.code == 2
    assert "n_images" in capsys.readouterr().err


def subcommands(parser) -> dict:
    """name -> subparser of every registered subcommand."""
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


# the arguments each subcommand needs to parse; the ones that run a job take --out and --no-progress
REQUIRED = {"demo": [], "evaluate": ["--model", "digits"], "compare": ["a", "b"], "metrics": [], "clever": [],
            "landscape": []}
JOBS = {"demo", "evaluate", "clever", "landscape"}


def test_every_subcommand_has_a_runner_and_help(capsys):
    parser = build_parser()
    commands = subcommands(parser)
    assert set(commands) == set(REQUIRED)
    for name, sub in commands.items():
        args = parser.parse_args([name, *REQUIRED[name]])
        assert args.command == name and callable(args.run) and args.run.__name__ == f"_run_{name}"
        with pytest.raises(SystemExit) as err:
            parser.parse_args([name, "--help"])
        assert err.value.code == 0
        text = capsys.readouterr().out
        assert text.startswith(f"usage: robustx {name}")
        assert sub.description and sub.description.split()[0] in text
        if name in JOBS:
            assert not args.no_progress and "--no-progress" in text and "--out" in text
    args = parser.parse_args(["clever"])
    assert args.n_images >= 1 and args.out == "out/clever"
    assert parser.parse_args(["demo"]).out == "out/demo"
    args = parser.parse_args(["landscape"])
    assert args.model == "digits" and args.images == [0] and args.steps == 41
    with pytest.raises(SystemExit):
        parser.parse_args([])  # a subcommand is required


def test_python_dash_m_entry_point():
    proc = subprocess.run([sys.executable, "-m", "robustx", "clever", "--help"], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "--n-batches" in proc.stdout and "500" in proc.stdout
