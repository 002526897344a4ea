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


def test_bad_option_exits_with_a_message(tmp_path, capsys):
    with pytest.raises(SystemExit) as err:
        main(["clever", "--n-images", "0", "--out", str(tmp_path), "--no-progress"])
    assert err.value.code == 2
    assert "n_images" in capsys.readouterr().err


@pytest.mark.parametrize("n", ["0", "-5"])
def test_demo_refuses_fewer_than_one_image(tmp_path, capsys, n):
    with pytest.raises(SystemExit) as err:
        main(["demo", "--n", n, "--out", str(tmp_path / "demo"), "--no-progress"])
    assert err.value.code == 2
    assert capsys.readouterr().err == f"robustx demo: error: --n must be an int >= 1, got {n}\n"
    assert not (tmp_path / "demo").exists()


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


# --- a user's mistakes give one line naming the file or argument, exit 2; --debug keeps the traceback ---


def _one_line_error(capsys, argv, command="evaluate") -> str:
    """Run ``robustx ARGV``; assert exit 2 and exactly one stderr line ``robustx COMMAND: error: ...``."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as err:
        main(argv)
    assert err.value.code == 2
    text = capsys.readouterr().err
    assert text.count("\n") == 1 and text.endswith("\n") and "Traceback" not in text, text
    assert text.startswith(f"robustx {command}: error: "), text
    return text


def _evaluate_argv(tmp_path, *extra) -> list:
    return ["evaluate", "--model", "digits", "-n", "4", "--metrics", "CA", "--out", str(tmp_path / "out"),
            "--no-progress", *extra]


class _Payload:
    """Unpickling this object creates ``marker`` (what a malicious file would do)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def test_weights_that_are_not_a_state_dict_are_named_and_never_unpickled(tmp_path, capsys):
    import pickle

    import torch

    from robustx.models import DigitsCNN, digits_cnn, load_weights

    marker = tmp_path / "payload-ran"
    probe = tmp_path / "probe-ran"
    pickle.loads(pickle.dumps(_Payload(probe)))
    assert probe.exists()  # the payload is live: unpickling it does create its marker
    good = digits_cnn().state_dict()
    files = {"whole.pt": DigitsCNN(), "tensor.pt": torch.zeros(3), "keys.pt": {"foo": torch.zeros(3)},
             "shape.pt": {**good, "classifier.3.weight": torch.zeros(5, 64)}, "payload_zip.pt": {"w": _Payload(marker)}}
    for name, obj in files.items():
        torch.save(obj, tmp_path / name)
    (tmp_path / "payload.pt").write_bytes(pickle.dumps(_Payload(marker), protocol=2))
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "text.pt").write_bytes(b"hello, not a checkpoint")
    not_state_dict = "not a state dict (a whole pickled model or an arbitrary pickle"
    cases = {
        "whole.pt": not_state_dict, "payload.pt": not_state_dict, "payload_zip.pt": not_state_dict,
        "tensor.pt": "not a state dict but a Tensor",
        "empty.pt": "cannot be read as a state dict (the file is empty)",
        "text.pt": "cannot be read as a state dict (not a torch.save file, or cut short",
        "keys.pt": "does not fit DigitsCNN: missing keys 'features.0.weight', 'features.0.bias', "
                   "'features.2.weight' and 5 more; unexpected keys 'foo'",
        "shape.pt": "does not fit DigitsCNN: classifier.3.weight has shape (5, 64) in the file, (10, 64) in the model",
    }
    for name, message in cases.items():
        line = _one_line_error(capsys, _evaluate_argv(tmp_path, "--weights", str(tmp_path / name)))
        assert f"--weights {tmp_path / name}" in line and message in line, line
        assert "weights_only=False" not in line
    assert "torch.save(model.state_dict(), path)" in _one_line_error(
        capsys, _evaluate_argv(tmp_path, "--weights", str(tmp_path / "whole.pt")))
    assert not marker.exists() and not (tmp_path / "out").exists()
    torch.save(good, tmp_path / "good.pt")  # the control: a state dict loads, every tensor equal
    loaded = load_weights(DigitsCNN(), tmp_path / "good.pt").state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in good.items())
    with pytest.raises(ValueError) as err:  # --debug: the error itself, its cause chained
        main(["--debug", *_evaluate_argv(tmp_path, "--weights", str(tmp_path / "payload.pt"))])
    assert isinstance(err.value.__cause__, pickle.UnpicklingError)


def test_unreadable_data_files_are_named(tmp_path, capsys):
    import numpy as np

    x, y = np.random.default_rng(0).random((4, 1, 8, 8), dtype=np.float32), np.arange(4)
    np.savez(tmp_path / "good.npz", x=x, y=y)
    whole = (tmp_path / "good.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(whole[: len(whole) // 2])
    (tmp_path / "empty.npy").write_bytes(b"")
    np.savez(tmp_path / "no_y.npz", x=x)
    np.savez(tmp_path / "objects.npz", x=np.array([{"a": 1}, None], dtype=object), y=y[:2])
    np.savez(tmp_path / "complex.npz", x=x.astype(np.complex64), y=y)
    np.savez(tmp_path / "fractional.npz", x=x, y=y + 0.5)
    cases = {
        "cut.npz": "cut.npz: not a readable .npz / .npy file (BadZipFile",
        "empty.npy": "empty.npy: not a readable .npz / .npy file (the file is empty)",
        "no_y.npz": "no_y.npz: the .npz file needs arrays x and y, missing ['y']",
        "objects.npz": "objects.npz: not a readable .npz / .npy file (ValueError: Object arrays cannot be loaded",
        "complex.npz": "complex.npz x must hold real numbers, got dtype complex64",
        "fractional.npz": "fractional.npz y must hold whole-number class indices, got 0.5 at position 0",
    }
    for name, message in cases.items():
        line = _one_line_error(capsys, _evaluate_argv(tmp_path, "--data", str(tmp_path / name)))
        assert f"--data {tmp_path}" in line and message in line, line
    assert not (tmp_path / "out").exists()
    assert main(_evaluate_argv(tmp_path, "--data", str(tmp_path / "good.npz"))) == 0  # the control
    np.savez(tmp_path / "float_labels.npz", x=x, y=y.astype(np.float64))  # whole numbers stored as floats: accepted
    assert main(_evaluate_argv(tmp_path / "floats", "--data", str(tmp_path / "float_labels.npz"))) == 0


def test_an_unavailable_device_is_refused_before_any_work(tmp_path, capsys, monkeypatch):
    import torch

    from robustx import checks

    line = _one_line_error(capsys, _evaluate_argv(tmp_path, "--device", "cuda:99"))
    assert "error: --device 'cuda:99' is not available: torch.cuda." in line  # is_available() or device_count()
    assert not (tmp_path / "out").exists()
    if not torch.backends.mps.is_available():
        assert "--device 'mps' is not available: torch.mps.is_available() is False" in _one_line_error(
            capsys, _evaluate_argv(tmp_path, "--device", "mps"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=r"^device 'cuda' is not available: torch.cuda.is_available\(\) is False$"):
        checks.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert checks.device_unavailable(torch.device("cuda:1")) is None
    assert checks.device_unavailable(torch.device("cuda:2")) == "torch.cuda.device_count() is 2"
    assert checks.device("cpu") == torch.device("cpu") and checks.device_unavailable(torch.device("meta")) is None


FACTORY_MODULE = '''
class MyError(Exception):
    pass


def factory():
    raise MyError("no checkpoint here\\nsecond line")
'''


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """A module ``rx_user_factory`` on sys.path whose factory raises its own exception type."""
    (tmp_path / "rx_user_factory.py").write_text(FACTORY_MODULE)
    (tmp_path / "rx_user_broken.py").write_text("raise LookupError('broken at import')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in ("rx_user_factory", "rx_user_broken"):
        sys.modules.pop(name, None)


def test_a_user_factory_exception_is_one_line_with_its_type(user_module, tmp_path, capsys):
    from robustx.pipeline.sources import UserCodeError

    argv = ["evaluate", "--model", "rx_user_factory:factory", "--out", str(tmp_path / "out"), "--no-progress"]
    assert _one_line_error(capsys, argv) == ("robustx evaluate: error: in factory rx_user_factory:factory: "
                                             "MyError: no checkpoint here second line\n")
    broken = ["evaluate", "--model", "rx_user_broken:factory", "--out", str(tmp_path / "out"), "--no-progress"]
    assert "error: in module rx_user_broken: LookupError: broken at import" in _one_line_error(capsys, broken)
    with pytest.raises(UserCodeError) as err:
        main(["--debug", *argv])
    assert type(err.value.__cause__).__name__ == "MyError" and err.value.type_name == "MyError"
    assert err.value.message == "no checkpoint here\nsecond line"
    proc = subprocess.run([sys.executable, "-m", "robustx", "--debug", *argv], cwd=user_module, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 1 and "Traceback" in proc.stderr and 'raise MyError("no checkpoint here' in proc.stderr
    assert "rx_user_factory.MyError: no checkpoint here" in proc.stderr


def test_a_bug_in_robustx_keeps_its_traceback(tmp_path, monkeypatch):
    from robustx.pipeline import sources

    def buggy(*args, **kwargs):
        raise AttributeError("internal")

    monkeypatch.setattr(sources, "load_model", buggy)
    with pytest.raises(AttributeError, match="internal"):
        main(_evaluate_argv(tmp_path))
