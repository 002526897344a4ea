"""ImageNet-style image folders for ``robustx evaluate --data DIR``.

A folder holds one subfolder per class; the sorted class names are the labels 0..K-1 and
every ``.jpg`` / ``.jpeg`` / ``.png`` file below a class folder (any case, any depth) is an
input. Each image is decoded by Pillow (RGB) and given the standard evaluation transform
in torch: shorter side resized to ``resize`` (bilinear, antialiased; the longer side
``int(resize * long / short)``), center crop ``crop`` x ``crop``, floats in [0, 1]. It
agrees with Pillow's own bilinear resize and crop to within about 1/255 per value (Pillow
rounds to 8 bits between its horizontal and vertical passes; torch does not).

Symbolic links are followed; a directory reached again below the same class folder (same
device and inode: a link loop, or a second link to it) is walked once. Unreadable
subfolders and files Pillow cannot decode are skipped (by evaluate's stream and by
:func:`load_folder`) with one warning naming them and their count (a single bad file should not stop a run over
50,000 images); :class:`ImageFolder` itself raises :class:`UnreadableImage` naming the file.

No normalisation is applied to the data: the metrics work in the data domain [0, 1].
A model trained on normalised inputs is wrapped in :class:`Normalized` instead.

Streaming: :func:`folder_dataset` is what ``robustx evaluate`` reads, batch by batch,
through a :class:`torch.utils.data.DataLoader` whose worker processes decode the next
batches while the current one is evaluated; memory does not grow with the folder's size.
:func:`load_folder` collects a (capped, ``n``) folder into one tensor pair instead, for
code that wants the tensors (``n * 3 * crop**2 * 4`` bytes, about 600 KB per 224 px image).
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset, Subset, default_collate

from robustx import checks

__all__ = ["ImageFolder", "Normalized", "UnreadableImage", "folder_dataset", "load_folder", "eval_transform", "IMAGENET_MEAN",
           "IMAGENET_STD", "IMAGE_SUFFIXES"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_LISTED = 20  # unreadable paths named in load_folder's warning (then a count of the others)


class UnreadableImage(ValueError):
    """An image file Pillow cannot decode; ``path`` names it."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"image folder: cannot decode {path}: {reason}")
        self.path = path


def eval_transform(image, resize: int = 256, crop: int = 224) -> torch.Tensor:
    """A Pillow image as a (3, crop, crop) float tensor in [0, 1]: RGB, shorter side resized
    to ``resize`` (bilinear, antialiased), center crop (top/left offsets rounded)."""
    rgb = torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1).float().div_(255)
    h, w = rgb.shape[1:]
    size = (resize, int(resize * w / h)) if h <= w else (int(resize * h / w), resize)
    resized = F.interpolate(rgb[None], size=size, mode="bilinear", antialias=True, align_corners=False)[0]
    top, left = round((size[0] - crop) / 2), round((size[1] - crop) / 2)
    return resized[:, top:top + crop, left:left + crop].clamp_(0, 1).contiguous()


class ImageFolder(Dataset):
    """The images of an ImageNet-style folder: item i is (image tensor, class index)."""

    def __init__(self, root, resize: int = 256, crop: int = 224) -> None:
        self.root = Path(root)
        self.resize = checks.integer(resize, "resize")
        self.crop = checks.integer(crop, "crop", 1, self.resize)
        if not self.root.is_dir():
            raise FileNotFoundError(f"image folder: no such directory: {self.root}")
        self.classes = sorted(p.name for p in self.root.iterdir() if p.is_dir())
        self.unreadable_dirs: List[str] = []  # subfolders that could not be listed (skipped)
        self.samples: List[Tuple[Path, int]] = [
            (path, label) for label, name in enumerate(self.classes)
            for path in _images_in(self.root / name, self.unreadable_dirs)]
        if not self.samples:
            raise ValueError(f"image folder {self.root}: no {'/'.join(IMAGE_SUFFIXES)} files in class subfolders "
                             f"(found {len(self.classes)} subfolders)")

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, int]:
        """(image, label); :class:`UnreadableImage` when Pillow cannot decode the file."""
        from PIL import Image

        path, label = self.samples[index]
        try:
            with Image.open(path) as image:
                return eval_transform(image, self.resize, self.crop), label
        except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as err:
            raise UnreadableImage(path, str(err) or type(err).__name__) from err


def _images_in(folder: Path, unreadable: List[str]) -> List[Path]:
    """Image files below ``folder``, links followed: folder by folder in sorted order, sorted
    names in each (torchvision's ImageFolder order, so the indices of both agree). A
    directory already walked (same st_dev, st_ino: a link loop) is not entered again; the
    directories that cannot be listed are appended to ``unreadable``."""
    seen = set()
    listed = []
    for top, dirs, names in os.walk(folder, followlinks=True, onerror=lambda err: unreadable.append(err.filename)):
        st = os.stat(top)
        if (st.st_dev, st.st_ino) in seen:
            dirs.clear()
            continue
        seen.add((st.st_dev, st.st_ino))
        dirs.sort()  # deterministic choice of the path that walks a directory reached twice
        listed.append((top, names))
    return [Path(top) / name for top, names in sorted(listed) for name in sorted(names)
            if Path(name).suffix.lower() in IMAGE_SUFFIXES]


class _Readable(Dataset):
    """Items of ``dataset`` (an :class:`ImageFolder` or a Subset of one); an unreadable
    image becomes its path (a str) instead of raising."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        try:
            return self.dataset[index]
        except UnreadableImage as err:
            return str(err.path)


def _collate_readable(items: list):
    """(collated readable items or None, paths of the unreadable ones)."""
    good = [item for item in items if not isinstance(item, str)]
    return (default_collate(good) if good else None), [item for item in items if isinstance(item, str)]


def _skip_warning(root: Path, files: List[str], dirs: List[str], total: int) -> str:
    """One message naming the skipped files (the first _LISTED, then a count) and folders."""
    names = [os.path.relpath(f, root) for f in files]
    listed = ", ".join(names[:_LISTED]) + (f" and {len(names) - _LISTED} more" if len(names) > _LISTED else "")
    parts = [f"skipped {len(files)} of {total} image files that cannot be decoded: {listed}"] if files else []
    if dirs:
        parts.append(f"skipped {len(dirs)} unreadable subfolders: {', '.join(os.path.relpath(d, root) for d in dirs)}")
    return f"image folder {root}: " + "; ".join(parts)


@checks.renamed(n="n_images")
def folder_dataset(root, n_images: Optional[int] = None, resize: int = 256, crop: int = 224) -> Dataset:
    """The :class:`ImageFolder` at ``root``, or with ``n_images`` a Subset of that many images
    spread evenly over the folder's order (image ``i * len // n_images``), so a capped run
    sees every class in proportion rather than the first classes only."""
    folder = ImageFolder(root, resize, crop)
    if n_images is None:
        return folder
    n = checks.integer(n_images, "n_images (--n)", 1, len(folder))
    return Subset(folder, [i * len(folder) // n for i in range(n)])


def readable_batches(dataset: Dataset, batch_sampler, workers: int) -> Iterator[Tuple[Optional[tuple], List[str]]]:
    """(collated (x, y) of the batch's readable images or None, paths of its unreadable
    ones) for each batch of ``batch_sampler``, decoded by ``workers`` processes ahead."""
    loader = DataLoader(_Readable(dataset), batch_sampler=batch_sampler, num_workers=workers,
                        collate_fn=_collate_readable, prefetch_factor=2 if workers else None)
    yield from loader


def skipped_warning(dataset: Dataset, files: List[str]) -> None:
    """One warning naming the unreadable ``files`` (and subfolders) of an image-folder dataset."""
    folder = dataset.dataset if isinstance(dataset, Subset) else dataset
    dirs = getattr(folder, "unreadable_dirs", [])
    if files or dirs:
        root = getattr(folder, "root", Path("."))
        warnings.warn(_skip_warning(root, files, dirs, len(dataset)), UserWarning, stacklevel=3)


@checks.renamed(n="n_images")
def load_folder(root, n_images: Optional[int] = None, workers: int = 2, batch_size: int = 32, resize: int = 256,
                crop: int = 224) -> Tuple[torch.Tensor, torch.Tensor]:
    """(x, y) of an image folder (:func:`folder_dataset`), decoded by ``workers`` DataLoader
    processes, in memory. Files that cannot be decoded are left out, with one warning naming
    them and the count. ``robustx.evaluate`` streams :func:`folder_dataset` instead."""
    dataset = folder_dataset(root, n_images, resize, crop)
    size = checks.integer(batch_size, "batch_size")
    batches = [list(range(i, min(i + size, len(dataset)))) for i in range(0, len(dataset), size)]
    xs, ys, bad = [], [], []
    for batch, unreadable in readable_batches(dataset, batches, checks.integer(workers, "workers", 0)):
        bad += unreadable
        if batch is not None:
            xs.append(batch[0])
            ys.append(batch[1])
    skipped_warning(dataset, bad)
    if not xs:
        raise ValueError(f"image folder {root}: none of the {len(dataset)} image files could be decoded")
    return torch.cat(xs), torch.cat(ys).long()


class Normalized(nn.Module):
    """``model((x - mean) / std)``: a model trained on normalised inputs, seen from the data
    domain [0, 1]. ``mean`` and ``std`` are per channel (buffers, so they move with it)."""

    def __init__(self, model: nn.Module, mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD) -> None:
        super().__init__()
        self.model = checks.model(model)
        if len(mean) != len(std):
            raise ValueError(f"mean and std must have one value per channel, got {len(mean)} and {len(std)}")
        std = [checks.positive_float(s, "std") for s in std]
        self.register_buffer("mean", torch.tensor([float(m) for m in mean]).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((x - self.mean.to(x.dtype)) / self.std.to(x.dtype))
