"""Bringing your own model to ``robustx evaluate``: the same small CNN given as a local
factory with arguments, a TorchScript file, a ``.pt2`` exported program, a DDP-style
checkpoint and a ``.safetensors`` file gives the same CA, computed here by a plain forward
pass; checkpoints as people save them; outputs that are tuples or dicts; the data options
(--clip-values, --mean/--std, --labels); the defended / surrogate / baseline models."""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from robustx import models
from robustx.commands import main
from robustx.data import digits
from robustx.pipeline import sources
from robustx.pipeline.imagefolder import IMAGENET_STD, Normalized
from toy_models import colour_cnn

REPO = Path(__file__).resolve().parents[2]

USER_MODULE = '''
import torch
from torch import nn


class SmallCNN(nn.Module):
    """(N, 1, 8, 8) -> 10 logits, returned as a tensor, a tuple (logits, features) or {"logits": ...}."""

    def __init__(self, width: int, output: str):
        super().__init__()
        self.conv = nn.Conv2d(1, width, 3, padding=1)
        self.fc = nn.Linear(width * 16, 10)
        self.output = output

    def forward(self, x):
        features = torch.relu(nn.functional.max_pool2d(self.conv(x), 2)).flatten(1)
        logits = self.fc(features)
        if self.output == "tuple":
            return logits, features
        return {"logits": logits} if self.output == "dict" else logits


def factory(width=4, seed=0, output="tensor"):
    torch.manual_seed(seed)
    return SmallCNN(width, output).eval()
'''


def _user_module(folder: Path):
    (folder / "rx_user_models.py").write_text(USER_MODULE)
    spec = importlib.util.spec_from_file_location("rx_user_models_local", folder / "rx_user_models.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _robustx(cwd: Path, *argv, launcher=None) -> subprocess.CompletedProcess:
    """``robustx ARGV`` in a fresh process started in ``cwd``: ``python -m robustx``, or a
    launcher script that calls robustx.commands:main as the installed console command does."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "ROBUSTX_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"}
    head = [sys.executable, str(launcher)] if launcher else [sys.executable, "-m", "robustx"]
    return subprocess.run([*head, *argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def _ca(cwd: Path, out: str, *argv, launcher=None) -> float:
    proc = _robustx(cwd, "evaluate", *argv, "--metrics", "CA", "--out", out, launcher=launcher)
    assert proc.returncode == 0, proc.stderr
    return json.loads((cwd / out / "report.json").read_text())["metrics"]["CA"]["value"]


@pytest.fixture(scope="module")
def user_folder(tmp_path_factory):
    """A folder holding rx_user_models.py, the CNN's files in every form and data.npz whose
    labels the CNN gets right on 11 of its 16 inputs."""
    folder = tmp_path_factory.mktemp("user")
    module = _user_module(folder)
    net = module.factory(width=4, seed=0)
    x = digits("test")[0][:16]
    with torch.no_grad():
        pred = net(x).argmax(1)
    y = pred.clone()
    y[11:] = (pred[11:] + 1) % 10
    np.savez(folder / "data.npz", x=x.numpy(), y=y.numpy())
    state = net.state_dict()
    torch.jit.save(torch.jit.trace(net, x[:2]), folder / "net_ts.pt")
    tupled = module.factory(width=4, seed=0, output="tuple")
    program = torch.export.export(tupled, (x[:2],), dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, folder / "net.pt2")
    torch.save({"epoch": 7, "state_dict": {f"module.{k}": v for k, v in state.items()}}, folder / "ddp.pth")
    from safetensors.torch import save_file

    save_file(dict(state), folder / "net.safetensors")
    return folder


def test_every_form_of_the_model_gives_the_same_ca(user_folder):
    expected = 11 / 16  # by construction of the labels, checked against a plain forward pass here
    module = _user_module(user_folder)
    x, y = (torch.from_numpy(a) for a in np.load(user_folder / "data.npz").values())
    with torch.no_grad():
        assert (module.factory(width=4, seed=0)(x).argmax(1) == y).double().mean().item() == expected
        other = module.factory(width=4, seed=1)(x).argmax(1)
    assert (other == y).double().mean().item() != expected  # so the checkpoint runs below prove their weights load
    data = ["--data", "data.npz"]
    forms = {
        "factory with arguments (dict output)": ["--model", "rx_user_models:factory", "--model-args",
                                                 '{"width": 4, "seed": 0, "output": "dict"}'],
        "TorchScript": ["--model", "net_ts.pt"],
        ".pt2 exported program (tuple output)": ["--model", "net.pt2"],
        "DDP checkpoint {'state_dict': {'module.…'}}": ["--model", "rx_user_models:factory", "--model-args",
                                                      '{"seed": 1}', "--weights", "ddp.pth"],
        ".safetensors": ["--model", "rx_user_models:factory", "--model-args", '{"seed": 1, "output": "tuple"}',
                         "--weights", "net.safetensors"],
    }
    for i, (form, argv) in enumerate(forms.items()):
        assert _ca(user_folder, f"run-{i}", *argv, *data) == expected, form


def test_the_console_command_imports_a_factory_from_the_working_directory(user_folder, tmp_path):
    """The installed ``robustx`` script starts with its own folder, not the working directory,
    on sys.path; main() adds the working directory as ``python -m`` does."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    launcher = bin_dir / "robustx"
    launcher.write_text("import os, sys\n"
                        "assert os.getcwd() not in [os.path.abspath(p or '.') for p in sys.path], sys.path\n"
                        "from robustx.commands import main\n"
                        "sys.exit(main())\n")
    argv = ["--model", "rx_user_models:factory", "--model-args", '{"width": 4}', "--data", "data.npz"]
    assert _ca(user_folder, "run-console", *argv, launcher=launcher) == 11 / 16


def test_model_files_run_without_eval_and_fail_only_the_layer_metrics(user_folder, capsys, tmp_path):
    program = models.ModelFile(user_folder / "net.pt2", "--model")
    with pytest.raises(NotImplementedError):
        program.net.eval()  # an exported module refuses eval() itself; the wrapper never calls it
    program.eval().train().eval()
    net = _user_module(user_folder).factory(width=4, seed=0)
    x = digits("test")[0][:5]
    assert torch.allclose(program(x), net(x), atol=1e-6)
    out = tmp_path / "run"
    assert main(["evaluate", "--model", str(user_folder / "net_ts.pt"), "--data", str(user_folder / "data.npz"),
                 "--metrics", "CA,NC,NU", "--out", str(out), "--no-progress"]) == 1  # 1: some metrics failed
    report = json.loads((out / "report.json").read_text())["metrics"]
    assert report["CA"]["value"] == 11 / 16
    for name in ("NC", "NU"):  # a TorchScript file shows no Conv/Linear module to observe
        assert report[name]["value"] is None and "selects no module" in report[name]["failed"]


def test_model_spec_errors_are_one_line(user_folder, tmp_path, capsys):
    cases = {
        ("--model", str(user_folder / "data.npz")): "not a TorchScript file",
        ("--model", str(user_folder / "ddp.pth")): "a state dict goes to --weights, with its architecture as --model",
        ("--model", "digits", "--model-args", '{"width": 4}'): "--model-args applies to a module:factory only",
        ("--model", "missing_net.pt"): "--model: no such file: missing_net.pt",
        ("--model", str(user_folder / "net_ts.pt"), "--weights", "x.pt"): "--weights does not apply to a model file",
        ("--model", "rx_user_models:factory", "--model-args", "[4]"): "--model-args must be a JSON object",
        ("--model", "rx_user_models:factory", "--model-args", "{width: 4}"): "--model-args must be a JSON object",
    }
    sys.path.insert(0, str(user_folder))
    try:
        for argv, message in cases.items():
            with pytest.raises(SystemExit) as err:
                main(["evaluate", *argv, "--data", "digits", "--out", str(tmp_path / "o"), "--no-progress"])
            text = capsys.readouterr().err
            assert err.value.code == 2 and text.count("\n") == 1 and message in text, (argv, text)
    finally:
        sys.path.remove(str(user_folder))
        sys.modules.pop("rx_user_models", None)


# --- checkpoints as people save them ---


def test_checkpoint_wrappers_and_prefixes_load_the_same_tensors(tmp_path):
    good = models.digits_cnn().state_dict()
    files = {
        "plain.pt": good,
        "ddp.pt": {"state_dict": {f"module.{k}": v for k, v in good.items()}, "epoch": 3},
        "model.pt": {"model": good, "optimizer": {"lr": 0.1}},
        "model_state_dict.pt": {"model_state_dict": good},
        "ema_compiled.pt": {"ema": {f"_orig_mod.{k}": v for k, v in good.items()}},
        "ddp_compiled.pt": {"state_dict": {f"module._orig_mod.{k}": v for k, v in good.items()}},
        "timm_ema.pth": {"state_dict_ema": good, "arch": "digits"},
    }
    for name, obj in files.items():
        torch.save(obj, tmp_path / name)
        loaded = models.load_weights(models.DigitsCNN(), tmp_path / name).state_dict()
        assert all(torch.equal(loaded[k], v) for k, v in good.items()), name
    from safetensors.torch import save_file

    save_file(dict(good), tmp_path / "w.safetensors")
    loaded = models.load_weights(models.DigitsCNN(), tmp_path / "w.safetensors").state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in good.items())


def test_a_checkpoint_that_fits_no_reading_lists_what_was_tried(tmp_path):
    good = models.digits_cnn().state_dict()
    wrong = {f"module.{k}": v for k, v in good.items() if k != "classifier.3.bias"}
    torch.save({"state_dict": wrong}, tmp_path / "ddp.pt")
    with pytest.raises(ValueError) as err:
        models.load_weights(models.DigitsCNN(), tmp_path / "ddp.pt", "--weights")
    assert str(err.value) == (f"--weights {tmp_path / 'ddp.pt'} does not fit DigitsCNN: missing keys "
                              "'classifier.3.bias' (closest of: the top level, ['state_dict'], ['state_dict'] "
                              "without 'module.')")
    (tmp_path / "bad.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{broken}")
    with pytest.raises(ValueError, match="bad.safetensors: not a readable .safetensors file"):
        models.load_weights(models.DigitsCNN(), tmp_path / "bad.safetensors")


# --- outputs ---


def test_logits_of_takes_a_tensor_a_tuple_or_a_dict_and_names_anything_else():
    z = torch.randn(2, 10)
    for output in (z, (z, None), [z], {"logits": z, "aux": 1}):
        assert models.logits_of(output) is z
    cases = {
        "a dict without": ({"scores": z}, "the model returned a dict without a 'logits' tensor (keys 'scores')"),
        "a str": ("oops", "the model returned a str; robustx needs the logits"),
        "first element": ((None, z), "returned a tuple whose first element is a NoneType"),
    }
    for _, (output, message) in cases.items():
        with pytest.raises(TypeError, match=message.replace("(", r"\(").replace(")", r"\)")):
            models.logits_of(output)


# --- data and the other models of a run ---


def test_data_without_a_source_or_labels_is_refused(user_folder, tmp_path, capsys):
    x = digits("test")[0][:8].numpy()
    np.save(tmp_path / "x.npy", x)
    sys.path.insert(0, str(user_folder))
    try:
        for argv, message in {
            ("--model", "rx_user_models:factory"): "--data is needed for --model rx_user_models:factory: digits, "
                                                   "cifar100, an image folder",
            ("--model", "digits", "--data", str(tmp_path / "x.npy")): "a .npy file holds no labels",
            ("--model", "digits", "--defended-weights", "w.pt"): "--defended-weights needs --defended",
            ("--model", "digits", "--mean", "0.5"): "--mean and --std go together",
        }.items():
            with pytest.raises(SystemExit):
                main(["evaluate", *argv, "--metrics", "CA", "--out", str(tmp_path / "o"), "--no-progress"])
            assert message in capsys.readouterr().err, argv
    finally:
        sys.path.remove(str(user_folder))
        sys.modules.pop("rx_user_models", None)
    out = tmp_path / "predicted"
    assert main(["evaluate", "--model", "digits", "--data", str(tmp_path / "x.npy"), "--labels", "predicted",
                 "--metrics", "CA", "--out", str(out), "--no-progress"]) == 0
    assert json.loads((out / "report.json").read_text())["metrics"]["CA"]["value"] == 1.0


def test_clip_values_and_mean_std_reach_the_model_and_the_attacks(tmp_path):
    """Data in [-1, 1] for a digits CNN that expects [0, 1]: --mean -1 --std 2 maps it back,
    so CA equals the shipped model's CA on the original inputs, and PGD stays in [-1, 1]."""
    x, y = digits("test")
    x, y = x[:32], y[:32]
    net = models.digits_cnn()
    with torch.no_grad():
        expected = (net(x).argmax(1) == y).double().mean().item()
    np.savez(tmp_path / "pm1.npz", x=(2 * x - 1).numpy(), y=y.numpy())
    out = tmp_path / "run"
    common = ["evaluate", "--model", "digits", "--data", str(tmp_path / "pm1.npz"), "--metrics", "CA,AA_W,ALD_inf",
              "--minimal-attack", "pgd", "--out", str(out), "--no-progress"]
    with pytest.raises(SystemExit):  # the data lies outside the default domain [0, 1]
        main(common)
    assert main([*common, "--clip-values=-1,1", "--mean=-1", "--std", "2"]) == 0
    report = json.loads((out / "report.json").read_text())["metrics"]
    assert report["CA"]["value"] == expected
    # PGD's default eps 8/255 in data units: at most that far, and never outside [-1, 1]
    assert 0 < report["ALD_inf"]["value"] <= 8 / 255 + 1e-6
    assert report["AA_W"]["value"] < expected


def test_defended_surrogate_baseline_and_profile_from_the_command_line(tmp_path):
    x, y = digits("test")
    x, y = x[:24], y[:24]
    nets = {v: models.digits_cnn(variant=v) for v in ("standard", "pgd", "seed1")}
    with torch.no_grad():
        correct = {v: net(x).argmax(1) == y for v, net in nets.items()}
    out = tmp_path / "run"
    assert main(["evaluate", "--model", "digits", "--defended", "digits-pgd", "--surrogate", "digits",
                 "--surrogate-weights", str(models.digits_weights("seed1")), "--baseline", "digits-seed1", "-n", "24",
                 "--profile", "digits", "--metrics", "CA,CAV,CRR,CSR,AA_B,KMNC,mCE", "--out", str(out),
                 "--no-progress"]) == 0
    report = json.loads((out / "report.json").read_text())["metrics"]
    assert all(m["skipped"] is None for m in report.values()), report
    ca = correct["standard"].double().mean().item()
    assert report["CA"]["value"] == ca
    assert report["CAV"]["value"] == pytest.approx(correct["pgd"].double().mean().item() - ca, abs=1e-12)
    assert report["CRR"]["value"] == pytest.approx((~correct["standard"] & correct["pgd"]).double().mean().item())
    assert report["CSR"]["value"] == pytest.approx((correct["standard"] & ~correct["pgd"]).double().mean().item())
    assert report["mCE"]["settings"]["baseline"] is True and report["mCE"]["value"] > 0
    assert 0 < report["KMNC"]["value"] <= 1 and 0 <= report["AA_B"]["value"] <= ca


def test_shipped_digits_variants():
    """On the 359 test digits: the independent copy is about as accurate as the standard CNN and
    as fragile; the PGD-trained one (10 epochs) trades accuracy for PGD robustness (measured
    0.983 / 0.972 / 0.936 clean, 0.535 / 0.574 / 0.738 under PGD-20 at eps 0.1)."""
    from robustx.attacks import pgd

    x, y = digits("test")
    acc, robust = {}, {}
    for v in models.DIGITS_VARIANTS:
        net = models.digits_cnn(variant=v)
        x_adv = pgd(net, x, y, eps=0.1, steps=20, step_size=0.025, seed=0, progress=False)
        with torch.no_grad():
            acc[v] = (net(x).argmax(1) == y).double().mean().item()
            robust[v] = (net(x_adv).argmax(1) == y).double().mean().item()
    assert acc == pytest.approx({"standard": 0.9833, "seed1": 0.9721, "pgd": 0.9359}, abs=6e-4)
    assert robust["pgd"] > robust["standard"] + 0.15 and robust["pgd"] > robust["seed1"] + 0.15
    with pytest.raises(ValueError, match="variant must be one of 'standard', 'seed1', 'pgd'"):
        models.digits_cnn(variant="robust")


def test_the_readme_timm_and_torchvision_forms_with_local_weights(tmp_path):
    """timm:create_model and torchvision.models:resnet18 by factory name with --model-args, a
    .safetensors / DDP checkpoint and --mean/--std: CA equals a plain forward pass of the same
    weights on the normalised inputs (labels right on 3 of 4 inputs by construction)."""
    import timm
    import torchvision
    from safetensors.torch import save_file

    mean, std = (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    normalised = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    torch.manual_seed(3)
    nets = {"timm": timm.create_model("resnet18", pretrained=False, num_classes=10).eval(),
            "torchvision": torchvision.models.resnet18(weights=None, num_classes=10).eval()}
    save_file({k: v.contiguous() for k, v in nets["timm"].state_dict().items()}, tmp_path / "timm.safetensors")
    torch.save({"state_dict": {f"module.{k}": v for k, v in nets["torchvision"].state_dict().items()}},
               tmp_path / "tv_ddp.pth")
    specs = {"timm": ["timm:create_model", '{"model_name": "resnet18", "num_classes": 10}', "timm.safetensors"],
             "torchvision": ["torchvision.models:resnet18", '{"num_classes": 10}', "tv_ddp.pth"]}
    for name, (spec, args, weights) in specs.items():
        with torch.no_grad():
            pred = nets[name](normalised).argmax(1)
        y = pred.clone()
        y[3] = (pred[3] + 1) % 10
        np.savez(tmp_path / f"{name}.npz", x=x.numpy(), y=y.numpy())
        out = tmp_path / f"run-{name}"
        assert main(["evaluate", "--model", spec, "--model-args", args, "--weights", str(tmp_path / weights),
                     "--data", str(tmp_path / f"{name}.npz"), "--mean", ",".join(map(str, mean)),
                     "--std", ",".join(map(str, std)), "--metrics", "CA", "--out", str(out), "--no-progress"]) == 0
        assert json.loads((out / "report.json").read_text())["metrics"]["CA"]["value"] == 0.75, name


def test_factory_model_with_weights_and_normalize(tmp_path):
    trained = colour_cnn()
    with torch.no_grad():
        trained[4].weight.mul_(3.0)
    torch.save(trained.state_dict(), tmp_path / "w.pt")
    model = sources.load_model("toy_models:colour_cnn", str(tmp_path / "w.pt"))
    assert not model.training
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), trained.state_dict().values()))
    wrapped = sources.load_model("toy_models:colour_cnn", normalize="imagenet")
    assert isinstance(wrapped, Normalized) and torch.allclose(wrapped.std.flatten(), torch.tensor(IMAGENET_STD))
    with pytest.raises(ValueError, match="--normalize"):
        sources.load_model("toy_models:colour_cnn", normalize="cifar")
