"""ImageNet-style folders (--data DIR): classes, the eval transform against Pillow, workers,
unreadable files and folders; Normalized."""
import contextlib
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from robustx.pipeline.imagefolder import (IMAGENET_MEAN, IMAGENET_STD, ImageFolder, Normalized, UnreadableImage,
                                          eval_transform, load_folder)
from toy_images import picture
from toy_models import wide_cnn

# Pillow's bilinear resize rounds to 8 bits between its two passes; torch's does not.
PILLOW_TOLERANCE = 1.5 / 255


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
    image = picture(1, 7, size)
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
    x3, y3 = load_folder(folder, n_images=3, workers=0, resize=36, crop=32)
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
        load_folder(folder, n_images=7, workers=0)


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
