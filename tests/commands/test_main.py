"""The ``robustx`` parser and entry point (robustx/commands/main.py): every subcommand parses,
has help and runs; ``python -m robustx`` is the same command line; a bug keeps its traceback."""
import subprocess
import sys
from pathlib import Path

import pytest

from robustx.commands import build_parser, main

REPO = Path(__file__).resolve().parents[2]

# the arguments each subcommand needs to parse; the ones that write files take --out and --no-progress
REQUIRED = {"demo": [], "evaluate": ["--model", "digits"], "compare": ["a", "b"], "metrics": [], "clever": [],
            "landscape": []}
WRITERS = {"demo", "evaluate", "clever", "landscape"}


@pytest.mark.parametrize("name", sorted(REQUIRED))
def test_every_subcommand_parses_and_has_help(name, capsys):
    parser = build_parser()
    args = parser.parse_args([name, *REQUIRED[name]])
    assert args.command == name and callable(args.run)
    assert (hasattr(args, "out") and args.no_progress is False) == (name in WRITERS)
    with pytest.raises(SystemExit) as err:
        main([name, "--help"])
    assert err.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith(f"usage: robustx {name}") and len(text.splitlines()) > 3
    assert ("--no-progress" in text and "--out" in text) == (name in WRITERS)


def test_a_subcommand_is_required(capsys):
    with pytest.raises(SystemExit) as err:
        main([])
    assert err.value.code == 2 and "COMMAND" in capsys.readouterr().err


def test_defaults_of_the_writers():
    parser = build_parser()
    assert parser.parse_args(["clever"]).out == "out/clever"
    assert parser.parse_args(["demo"]).out == "out/demo"
    args = parser.parse_args(["landscape"])
    assert (args.out, args.model, args.images, args.steps) == ("landscapes", "digits", [0], 41)


def test_python_dash_m_entry_point():
    proc = subprocess.run([sys.executable, "-m", "robustx", "clever", "--help"], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "--n-batches" in proc.stdout and "500" in proc.stdout


def test_the_console_script_points_at_main():
    import tomllib

    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    module, attr = scripts["robustx"].split(":")
    assert getattr(__import__(module, fromlist=[attr]), attr) is main


def test_a_bug_in_robustx_keeps_its_traceback(tmp_path, monkeypatch):
    from robustx.pipeline import sources

    def buggy(*args, **kwargs):
        raise AttributeError("internal")

    monkeypatch.setattr(sources, "load_model", buggy)
    with pytest.raises(AttributeError, match="internal"):
        main(["evaluate", "--model", "digits", "--out", str(tmp_path / "out"), "--no-progress"])
    with pytest.raises(AttributeError, match="internal"):  # every command loads its model through sources
        main(["landscape", "--out", str(tmp_path / "out"), "--no-progress"])
