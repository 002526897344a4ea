"""``robustx landscape`` (robustx/commands/landscape.py): the models and data of robustx
evaluate, three drawn PNGs per image. The landscape and its figures: tests/test_landscape.py;
``out_dir``, the deprecated alias of ``out``: tests/test_api.py."""
import io

import numpy as np
import pytest
import torch

from robustx.commands import main
from robustx.commands.landscape import DIGITS_SPAN, run_landscape
from toy_models import model_and_data_files


def _pixels(png: bytes) -> np.ndarray:
    import matplotlib.image

    return matplotlib.image.imread(io.BytesIO(png), format="png")[..., :3]


def test_writes_three_pngs_per_image_with_given_weights(tmp_path, capsys):
    from robustx.models import DigitsCNN

    weights = tmp_path / "w.pt"
    torch.manual_seed(0)
    torch.save(DigitsCNN().state_dict(), weights)
    status = main(["landscape", "--weights", str(weights), "--images", "0", "3", "--steps", "5",
                   "--surface", "margin", "--out", str(tmp_path / "out"), "--no-progress"])
    assert status == 0
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == sorted(f"digits_{i}_margin_{k}.png" for i in (0, 3) for k in ("contour", "surface", "slices"))
    assert sorted(capsys.readouterr().out.split()) == sorted(str(p) for p in (tmp_path / "out").iterdir())
    for path in (tmp_path / "out").iterdir():
        rgb = _pixels(path.read_bytes())
        assert rgb.shape[0] > 150 and rgb.shape[1] > 150 and rgb.std() > 0.05  # a drawn figure, not blank


def test_bad_image_index_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as err:
        main(["landscape", "--images", "400", "--out", str(tmp_path / "bad"), "--no-progress"])
    assert err.value.code == 2 and "images must be an int in [0, 358], got 400" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_a_model_file_on_npz_data(tmp_path):
    """A model named by its TorchScript file (the file name in the PNGs' names) on .npz data."""
    from torch import nn

    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 2)).eval()
    model_file, data_file = model_and_data_files(tmp_path, net, torch.rand(3, 1, 4, 4), [0, 1, 1], "lin")
    paths = run_landscape(tmp_path / "out", model=str(model_file), data=str(data_file),
                          images=[2], steps=5, surface="margin", progress=False)
    assert [p.name for p in paths] == [f"lin_pt_2_margin_{k}.png" for k in ("contour", "surface", "slices")]
    assert all(p.parent == tmp_path / "out" and _pixels(p.read_bytes()).std() > 0.05 for p in paths)


def test_span_defaults_to_half_on_digits(monkeypatch, tmp_path):
    """The grid half-width the command passes to input_landscape: DIGITS_SPAN on digits."""
    import robustx.landscape

    seen = {}
    real = robustx.landscape.input_landscape

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(robustx.landscape, "input_landscape", spy)
    run_landscape(tmp_path, images=[1], steps=3, progress=False)
    assert seen["span"] == DIGITS_SPAN == 0.5


def test_an_image_folder_is_read_by_index(tmp_path, monkeypatch):
    """--data an image folder (a Dataset, not tensors): image i of the folder's order is the one drawn."""
    import warnings

    from PIL import Image
    from torch import nn

    import robustx.landscape

    seen = {}
    real = robustx.landscape.input_landscape

    def spy(model, x, y, **kwargs):
        seen.update(x=x, y=y)
        return real(model, x, y, **kwargs)

    monkeypatch.setattr(robustx.landscape, "input_landscape", spy)

    for k, name in enumerate(("cat", "dog")):
        (tmp_path / "data" / name).mkdir(parents=True)
        Image.fromarray(np.full((8, 8, 3), 60 + 120 * k, dtype=np.uint8)).save(tmp_path / "data" / name / "a.png")
    torch.manual_seed(0)
    net = nn.Sequential(nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(12, 2)).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated, still read by robustx
        torch.jit.save(torch.jit.trace(net, torch.rand(1, 3, 8, 8)), tmp_path / "pool.pt")
    paths = run_landscape(tmp_path / "out", model=str(tmp_path / "pool.pt"), data=str(tmp_path / "data"), images=[1],
                          steps=3, progress=False)
    assert [p.name for p in paths] == [f"pool_pt_1_loss_{k}.png" for k in ("contour", "surface", "slices")]
    assert seen["y"].tolist() == [1] and seen["x"].shape == (1, 3, 224, 224)  # dog: class 1, resized and cropped
    torch.testing.assert_close(seen["x"], torch.full_like(seen["x"], 180 / 255))  # the uniform dog image
    with pytest.raises(ValueError, match=r"images must be an int in \[0, 1\], got 2"):
        run_landscape(tmp_path / "bad", model=str(tmp_path / "pool.pt"), data=str(tmp_path / "data"), images=[2])
