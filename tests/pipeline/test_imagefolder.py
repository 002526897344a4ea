"""ImageNet-style folders (--data DIR), Normalized, --model module:factory with --weights,
the logits-only inference options (channels_last, autocast) and --batch-size auto."""
import contextlib
import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from robustx.commands import main
from robustx.pipeline import sources
from robustx.modelutil import activation_bytes
from robustx.pipeline.batchsize import auto_batch_size
from robustx.pipeline.evaluate import evaluate
from robustx.pipeline.run import Run
from robustx.pipeline.stream import InputStream
from robustx.pipeline.imagefolder import (IMAGENET_MEAN, IMAGENET_STD, ImageFolder, Normalized, UnreadableImage,
                                          eval_transform, load_folder)

# Pillow's bilinear resize rounds to 8 bits between its two passes; torch's does not.
PILLOW_TOLERANCE = 1.5 / 255


def colour_cnn() -> nn.Module:
    """A factory for --model: 1x1 conv (identity) + ReLU, global mean, identity Linear:
    the predicted class is the image's brightest mean channel (R -> 0, G -> 1, B -> 2)."""
    net = nn.Sequential(nn.Conv2d(3, 3, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 3))
    with torch.no_grad():
        for layer in (net[0], net[4]):
            layer.weight.copy_(torch.eye(3).view_as(layer.weight))
            layer.bias.zero_()
    return net


def wide_cnn(width: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, width, 3, padding=1),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 3))


def _picture(colour: int, seed: int, size=(40, 30)) -> Image.Image:
    """A noisy image whose channel ``colour`` is the brightest on average."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 120, (size[1], size[0], 3))
    pixels[..., colour] += 120
    return Image.fromarray(pixels.astype(np.uint8))


# (class folder, file name, dominant colour): the last "c_blue" image is red, so CA = 5/6.
FILES = [("a_red", "x1.png", 0), ("a_red", "x2.PNG", 0), ("b_green", "y1.jpg", 1), ("b_green", "sub/y2.Png", 1),
         ("c_blue", "z1.JPEG", 2), ("c_blue", "z2.png", 0)]


@pytest.fixture
def folder(tmp_path) -> Path:
    root = tmp_path / "images"
    for i, (cls, name, colour) in enumerate(FILES):
        path = root / cls / name
        path.parent.mkdir(parents=True, exist_ok=True)
        _picture(colour, i).save(path)  # the format from the suffix
    (root / "a_red" / "notes.txt").write_text("not an image")
    return root


# ------------------------------------------------------------------ the folder
def test_classes_labels_and_files(folder):
    data = ImageFolder(folder, resize=36, crop=32)
    assert data.classes == ["a_red", "b_green", "c_blue"]
    assert [label for _, label in data.samples] == [0, 0, 1, 1, 2, 2]
    assert [p.name for p, _ in data.samples] == ["x1.png", "x2.PNG", "y1.jpg", "y2.Png", "z1.JPEG", "z2.png"]
    x, y = data[3]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and y == 1


@pytest.mark.parametrize("size, resize, crop", [((40, 30), 256, 224), ((400, 300), 256, 224), ((30, 50), 36, 32)])
def test_transform_matches_pillow_resize_and_crop(size, resize, crop):
    image = _picture(1, 7, size)
    w, h = size
    new = (int(resize * w / h), resize) if h <= w else (resize, int(resize * h / w))
    left, top = round((new[0] - crop) / 2), round((new[1] - crop) / 2)
    ref = image.resize(new, Image.BILINEAR).crop((left, top, left + crop, top + crop))
    ref = torch.from_numpy(np.array(ref)).permute(2, 0, 1).float() / 255
    out = eval_transform(image, resize, crop)
    assert out.shape == (3, crop, crop) and 0 <= out.min() and out.max() <= 1
    assert (out - ref).abs().max() <= PILLOW_TOLERANCE


def test_grey_images_become_rgb():
    grey = Image.fromarray(np.full((30, 40), 200, np.uint8))
    out = eval_transform(grey, 36, 32)
    assert out.shape == (3, 32, 32) and torch.allclose(out, torch.full_like(out, 200 / 255))


def test_load_folder_spreads_n_and_workers_agree(folder):
    x, y = load_folder(folder, workers=0, batch_size=4, resize=36, crop=32)
    assert x.shape == (6, 3, 32, 32) and y.tolist() == [0, 0, 1, 1, 2, 2]
    x2, y2 = load_folder(folder, workers=2, batch_size=2, resize=36, crop=32)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    x3, y3 = load_folder(folder, n=3, workers=0, resize=36, crop=32)
    assert y3.tolist() == [0, 1, 2] and torch.equal(x3, x[[0, 2, 4]])


def test_bad_folders(tmp_path, folder):
    with pytest.raises(FileNotFoundError, match="no such directory"):
        ImageFolder(tmp_path / "missing")
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    with pytest.raises(ValueError, match="no .jpg/.jpeg/.png files"):
        ImageFolder(tmp_path / "empty")
    with pytest.raises(ValueError, match="crop"):
        ImageFolder(folder, resize=32, crop=36)
    with pytest.raises(ValueError, match="--n"):
        load_folder(folder, n=7, workers=0)


@contextlib.contextmanager
def _deadline(seconds: int):
    """Fail (instead of hanging) when the block runs longer than ``seconds``."""
    def stop(*_):
        raise TimeoutError(f"still running after {seconds} s")

    old = signal.signal(signal.SIGALRM, stop)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def test_symlink_loops_are_walked_once(folder):
    # two links back to their own class folder and one to the parent: 3^40 paths when followed blindly
    os.symlink(".", folder / "a_red" / "self")
    os.symlink(".", folder / "a_red" / "again")
    os.symlink("..", folder / "b_green" / "sub" / "up")
    with _deadline(60):
        data = ImageFolder(folder, resize=36, crop=32)
    assert [(p.relative_to(folder).as_posix(), label) for p, label in data.samples] == [
        ("a_red/x1.png", 0), ("a_red/x2.PNG", 0), ("b_green/y1.jpg", 1), ("b_green/sub/y2.Png", 1),
        ("c_blue/z1.JPEG", 2), ("c_blue/z2.png", 2)]


@pytest.mark.parametrize("workers", [0, 2])
def test_undecodable_files_are_skipped_with_one_warning_naming_them(folder, workers):
    (folder / "a_red" / "broken.png").write_bytes(b"\x89PNG not really an image")
    whole = (folder / "c_blue" / "z1.JPEG").read_bytes()
    (folder / "c_blue" / "z0.jpg").write_bytes(whole[: len(whole) // 2])  # truncated JPEG
    with pytest.warns(UserWarning) as record:
        x, y = load_folder(folder, workers=workers, batch_size=3, resize=36, crop=32)
    assert len(record) == 1
    message = str(record[0].message)
    assert "skipped 2 of 8 image files" in message
    assert os.path.join("a_red", "broken.png") in message and os.path.join("c_blue", "z0.jpg") in message
    data = ImageFolder(folder, resize=36, crop=32)
    names = [p.name for p, _ in data.samples]
    good = [i for i, name in enumerate(names) if name not in ("broken.png", "z0.jpg")]
    assert y.tolist() == [0, 0, 1, 1, 2, 2]
    assert torch.equal(x, torch.stack([data[i][0] for i in good]))  # each image decoded on its own: exact
    with pytest.raises(UnreadableImage, match="broken.png"):
        data[names.index("broken.png")]


def test_unlistable_subfolders_are_named(folder, monkeypatch):
    scandir = os.scandir

    def refuse(path="."):
        if Path(path).name == "sub":
            raise PermissionError(13, "Permission denied", str(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", refuse)
    with pytest.warns(UserWarning, match=r"skipped 1 unreadable subfolders: b_green.sub"):
        _, y = load_folder(folder, workers=0, resize=36, crop=32)
    assert y.tolist() == [0, 0, 1, 2, 2]


# ------------------------------------------------------------------ models
def test_normalized_matches_hand_normalisation():
    net = wide_cnn(4)
    x = torch.rand(2, 3, 8, 8)
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    wrapped = Normalized(net)
    assert torch.allclose(wrapped(x), net((x - mean) / std), atol=1e-6)
    assert {"mean", "std"} <= set(wrapped.state_dict())
    with pytest.raises(ValueError, match="one value per channel"):
        Normalized(net, (0.5, 0.5), (0.2,))
    with pytest.raises(ValueError, match="std"):
        Normalized(net, (0.5,), (0.0,))


def test_factory_model_with_weights_and_normalize(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    trained = colour_cnn()
    with torch.no_grad():
        trained[4].weight.mul_(3.0)
    torch.save(trained.state_dict(), tmp_path / "w.pt")
    model = sources.load_model("test_imagefolder:colour_cnn", str(tmp_path / "w.pt"))
    assert not model.training
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), trained.state_dict().values()))
    wrapped = sources.load_model("test_imagefolder:colour_cnn", normalize="imagenet")
    assert isinstance(wrapped, Normalized) and torch.allclose(wrapped.std.flatten(), torch.tensor(IMAGENET_STD))
    with pytest.raises(ValueError, match="--normalize"):
        sources.load_model("test_imagefolder:colour_cnn", normalize="cifar")


# ------------------------------------------------------------------ inference options
def _logits(net, x, **options):
    stream = InputStream((x, torch.zeros(x.shape[0], dtype=torch.long)), 4)
    run = Run({"model": net}, stream, None, {}, {}, 0, (0.0, 1.0), torch.device("cpu"), {}, progress=False, **options)
    return run.forward(net, x)


def test_channels_last_logits_equal_default_and_parameters_restored():
    net, x = wide_cnn(8), torch.rand(6, 3, 16, 16)
    seen = []
    net[2].register_forward_pre_hook(lambda m, args: seen.append(
        (args[0].is_contiguous(memory_format=torch.channels_last),
         m.weight.is_contiguous(memory_format=torch.channels_last))))
    reference = _logits(net, x)
    assert seen and not any(a or w for a, w in seen)
    seen.clear()
    fast = _logits(net, x, channels_last=True)
    assert seen and all(a and w for a, w in seen)
    assert torch.allclose(fast, reference, rtol=1e-5, atol=1e-6)
    assert all(p.is_contiguous() for p in net.parameters())


def test_bf16_autocast_logits_close_to_float32():
    net, x = wide_cnn(8), torch.rand(6, 3, 16, 16)
    reference, fast = _logits(net, x), _logits(net, x, autocast=torch.bfloat16)
    assert not torch.equal(fast, reference)  # autocast was on
    # bf16 keeps 8 significand bits (relative error 2^-8 per rounding), a few roundings deep.
    assert (fast - reference).abs().max() <= 0.02 * reference.abs().max()


def test_inference_options_leave_clever_unchanged_and_change_the_run_id():
    net, x = wide_cnn(4), torch.rand(2, 3, 8, 8)
    y = net(x).argmax(1)
    config = {"clever": {"n_batches": 10, "n_samples": 16, "n_images": 2}}
    plain = evaluate(net, (x, y), metrics="CLEVER", config=config, progress=False)
    fast = evaluate(net, (x, y), metrics="CLEVER", config=config, progress=False, channels_last=True,
                    autocast="bf16")
    assert fast.metrics["CLEVER"].per_sample == plain.metrics["CLEVER"].per_sample
    assert fast.run["id"] != plain.run["id"]
    assert fast.run["inference"] == {"channels_last": True, "autocast": "torch.bfloat16"}
    with pytest.raises(ValueError, match="autocast"):
        evaluate(net, (x, y), metrics="CA", autocast="int8", progress=False)


# ------------------------------------------------------------------ batch size
def test_auto_batch_size_fits_the_budget_and_shrinks_for_bigger_models():
    x = torch.rand(1, 3, 32, 32)
    sizes = {}
    for width in (4, 64):
        net = wide_cnn(width)
        size = auto_batch_size(net, x, budget=16 << 20)
        per_input = activation_bytes(net, torch.cat([x, x])) - activation_bytes(net, x)
        assert size & (size - 1) == 0 and size * per_input <= 16 << 20 < 2 * size * per_input
        sizes[width] = size
    assert sizes[64] < sizes[4]
    assert auto_batch_size(wide_cnn(4), x) == 1024  # 1 GiB on a CPU, capped


# ------------------------------------------------------------------ end to end
def test_cli_evaluates_a_folder(folder, tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    out = tmp_path / "run"
    status = main(["evaluate", "--model", "test_imagefolder:colour_cnn", "--data", str(folder), "--metrics",
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


def test_cli_folder_with_auto_batch_and_inference_options(folder, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    out = tmp_path / "run"
    main(["evaluate", "--model", "test_imagefolder:colour_cnn", "--data", str(folder), "--metrics", "CA",
          "--out", str(out), "--no-progress", "--batch-size", "auto", "--channels-last", "--autocast", "bf16",
          "--workers", "0", "--resize", "36", "--crop", "32", "-n", "3"])
    report = json.loads((out / "report.json").read_text())
    assert report["run"]["inputs"] == 3 and report["run"]["input_shape"] == [3, 32, 32]
    assert report["run"]["inference"] == {"channels_last": True, "autocast": "torch.bfloat16"}
    assert report["metrics"]["CA"]["value"] == pytest.approx(1.0)  # images 0, 2, 4: no mislabeled one
    with pytest.raises(SystemExit):
        main(["evaluate", "--model", "digits", "--batch-size", "zero"])
