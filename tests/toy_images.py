"""Images for the tests: a tiny ImageNet-style folder (one class folder per colour, each
picture's dominant channel its colour, one mislabeled picture) and a PNG decoder."""
import io
from pathlib import Path

import numpy as np
from PIL import Image


def picture(colour: int, seed: int, size=(40, 30)) -> Image.Image:
    """A noisy image whose channel ``colour`` is the brightest on average."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 120, (size[1], size[0], 3))
    pixels[..., colour] += 120
    return Image.fromarray(pixels.astype(np.uint8))


# (class folder, file name, dominant colour): the last "c_blue" image is red, so CA = 5/6.
FILES = [("a_red", "x1.png", 0), ("a_red", "x2.PNG", 0), ("b_green", "y1.jpg", 1), ("b_green", "sub/y2.Png", 1),
         ("c_blue", "z1.JPEG", 2), ("c_blue", "z2.png", 0)]


def write_folder(root: Path) -> Path:
    """The class folders of FILES under ``root``, plus a non-image file."""
    for i, (cls, name, colour) in enumerate(FILES):
        path = root / cls / name
        path.parent.mkdir(parents=True, exist_ok=True)
        picture(colour, i).save(path)  # the format from the suffix
    (root / "a_red" / "notes.txt").write_text("not an image")
    return root


def png_pixels(png: bytes) -> np.ndarray:
    """(H, W, channels) uint8 pixels of PNG bytes, decoded by Pillow (the figures are written
    by matplotlib, so this is an independent reader); fails on anything but a whole PNG."""
    with Image.open(io.BytesIO(png)) as image:
        assert image.format == "PNG", image.format
        return np.asarray(image.convert("RGB"))


def ink(pixels: np.ndarray) -> float:
    """The fraction of pixels unlike the top-left (background) one: 0 for a blank figure."""
    return float((pixels != pixels[0, 0]).any(-1).mean())
