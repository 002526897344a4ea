"""Model-zoo models through evaluate: torchvision's ResNet-50 by factory name with a local
state dict (the command line), and a timm model by name with local weights (the library).
Small random inputs; the checks are against the models' own predictions."""
import json

import numpy as np
import timm
import torch
import torchvision

import robustx
from robustx.commands import main

CHEAP_PGD = {"eps": 2 / 255, "norm": "inf", "steps": 2, "step_size": 1 / 255}


def _labels_half_right(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Labels that the model gets right on the first half of ``x`` and wrong on the rest."""
    with torch.no_grad():
        pred = model.eval()(x).argmax(1)
    y = pred.clone()
    y[x.shape[0] // 2:] = (pred[x.shape[0] // 2:] + 1) % 10
    return y


def test_torchvision_resnet50_through_the_command_line(tmp_path):
    torch.manual_seed(1)
    model = torchvision.models.resnet50(weights=None)
    torch.save(model.state_dict(), tmp_path / "resnet50.pt")
    x = torch.rand(2, 3, 64, 64)
    y = _labels_half_right(model, x)
    np.savez(tmp_path / "data.npz", x=x.numpy(), y=y.numpy())
    (tmp_path / "cfg.toml").write_text("[pgd]\nsteps = 2\nstep_size = 0.004\neps = 0.008\n")
    status = main(["evaluate", "--model", "torchvision.models:resnet50", "--weights", str(tmp_path / "resnet50.pt"),
                   "--data", str(tmp_path / "data.npz"), "--metrics", "CA,AA_W,ALD_inf", "--minimal-attack", "pgd",
                   "--batch-size", "2", "--config", str(tmp_path / "cfg.toml"), "--out", str(tmp_path / "run"),
                   "--no-progress"])
    assert status == 0
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    values = {name: m["value"] for name, m in report["metrics"].items()}
    assert values["CA"] == 0.5
    assert 0.0 <= values["AA_W"] <= 0.5
    assert report["run"]["input_shape"] == [3, 64, 64]


def test_timm_model_by_name_with_local_weights(tmp_path):
    torch.manual_seed(2)
    trained = timm.create_model("resnet18", pretrained=False, num_classes=10)
    torch.save(trained.state_dict(), tmp_path / "resnet18.pth")
    model = timm.create_model("resnet18", pretrained=True, num_classes=10,
                              pretrained_cfg_overlay={"file": str(tmp_path / "resnet18.pth"), "num_classes": 10})
    for name, value in trained.state_dict().items():
        assert torch.equal(model.state_dict()[name], value), name
    x = torch.rand(4, 3, 32, 32)
    y = _labels_half_right(model, x)
    report = robustx.evaluate(model, (x, y), metrics=["CA", "AA_W", "NC"], attacks={"pgd": CHEAP_PGD},
                              batch_size=4, out=tmp_path / "run", progress=False)
    assert report.metrics["CA"].value == 0.5
    assert report.metrics["AA_W"].value <= 0.5
    assert 0.0 < report.metrics["NC"].value <= 1.0
