"""``robustx evaluate`` (robustx/commands/evaluate.py): a user's mistakes give one line
naming the file or argument and exit 2; --debug keeps the traceback; files are never unpickled;
an image folder as --data with a module:factory model, --batch-size auto and the inference options."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from robustx.commands import main
from robustx.pipeline.imagefolder import eval_transform
from toy_images import FILES
from toy_models import colour_cnn


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


# ------------------------------------------------------------------ an image folder
def test_cli_evaluates_a_folder(folder, tmp_path):
    out = tmp_path / "run"
    status = main(["evaluate", "--model", "toy_models:colour_cnn", "--data", str(folder), "--metrics",
                   "CA,AA_W,NC", "--out", str(out), "--no-progress", "--batch-size", "4"])
    assert status == 0
    report = json.loads((out / "report.json").read_text())
    assert report["run"]["inputs"] == 6 and report["run"]["input_shape"] == [3, 224, 224]
    label = {"a_red": 0, "b_green": 1, "c_blue": 2}
    x = torch.stack([eval_transform(Image.open(folder / cls / name)) for cls, name, _ in FILES])
    y = torch.tensor([label[cls] for cls, _, _ in FILES])
    with torch.no_grad():
        by_hand = (colour_cnn()(x).argmax(1) == y).float().mean().item()
    assert by_hand == pytest.approx(5 / 6)
    metrics = report["metrics"]
    assert metrics["CA"]["value"] == pytest.approx(by_hand)
    assert metrics["AA_W"]["value"] is not None and metrics["NC"]["value"] is not None


def test_cli_folder_with_auto_batch_and_inference_options(folder, tmp_path):
    out = tmp_path / "run"
    main(["evaluate", "--model", "toy_models:colour_cnn", "--data", str(folder), "--metrics", "CA",
          "--out", str(out), "--no-progress", "--batch-size", "auto", "--channels-last", "--autocast", "bf16",
          "--workers", "0", "--resize", "36", "--crop", "32", "-n", "3"])
    report = json.loads((out / "report.json").read_text())
    assert report["run"]["inputs"] == 3 and report["run"]["input_shape"] == [3, 32, 32]
    assert report["run"]["inference"] == {"channels_last": True, "autocast": "torch.bfloat16"}
    assert report["metrics"]["CA"]["value"] == pytest.approx(1.0)  # images 0, 2, 4: no mislabeled one
    with pytest.raises(SystemExit):
        main(["evaluate", "--model", "digits", "--batch-size", "zero"])
