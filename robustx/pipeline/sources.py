"""Models and data named on the command line (``robustx evaluate --model M --data D``).

Models: ``digits`` (the built-in digits CNN, shipped weights), ``resnet20`` (the CIFAR
ResNet-20 architecture; weights from ``--weights``, default the AISafety natural model) or
``module:factory`` (a callable returning an ``nn.Module``, called with no arguments, e.g.
``torchvision.models:resnet50``; ``--weights`` then loads a state dict into it, and
``--normalize imagenet`` wraps it in :class:`~robustx.pipeline.imagefolder.Normalized`).
Data: ``digits`` (its test split), ``cifar100`` (the 100 AISafety CIFAR-10 test images),
an ImageNet-style folder (:mod:`robustx.pipeline.imagefolder`), a ``.npz`` file with
arrays ``x`` (N, C, H, W) and ``y`` (N,), or a ``.npy`` file of inputs ``x`` (labels: the
model's own predictions). Weights and arrays are read without unpickling
(``weights_only=True``, ``allow_pickle=False``).
"""
from __future__ import annotations

import importlib
import zipfile
import zlib
from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np
import torch
from torch import nn

from robustx import checks
from robustx.pipeline import imagefolder

__all__ = ["load_model", "load_data", "NORMALIZATIONS", "default_data", "default_profile", "BUILT_IN_MODELS",
           "BUILT_IN_DATA", "UserCodeError"]

BUILT_IN_MODELS = ("digits", "resnet20")
BUILT_IN_DATA = ("digits", "cifar100")
#: ``--normalize`` choices: name -> (mean, std) per channel.
NORMALIZATIONS = {"imagenet": (imagefolder.IMAGENET_MEAN, imagefolder.IMAGENET_STD)}


def load_model(spec: str, weights: Optional[str] = None, normalize: Optional[str] = None) -> nn.Module:
    """The model named by ``spec`` (see the module docstring), in eval mode; with
    ``normalize`` (a key of :data:`NORMALIZATIONS`) it sees normalised inputs."""
    model = _named_model(spec, weights)
    if normalize is None:
        return model
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"--normalize must be one of {', '.join(NORMALIZATIONS)}, got {normalize!r}")
    return imagefolder.Normalized(model, *NORMALIZATIONS[normalize]).eval()


def _named_model(spec: str, weights: Optional[str]) -> nn.Module:
    from robustx import models

    if spec == "digits":
        model = models.digits_cnn(pretrained=weights is None)
    elif spec == "resnet20":
        from robustx.data import aisafety_dir

        model, weights = models.ResNet20(), weights or aisafety_dir() / "resnet20_cifar.pt"
    elif ":" in spec:
        model = _factory_model(spec)
    else:
        raise ValueError(f"--model must be one of {', '.join(BUILT_IN_MODELS)} or module:factory, got {spec!r}")
    if weights is not None:
        models.load_weights(model, weights, "--weights")
    return model.eval()


class UserCodeError(RuntimeError):
    """An exception raised by the user's own code (the module and factory of ``--model
    module:factory``), as one line ``in <where>: <type>: <message>``. The original
    exception is chained (``__cause__``); ``type_name`` and ``message`` keep its type and text."""

    def __init__(self, where: str, err: Exception):
        self.type_name, self.message = type(err).__name__, str(err)
        super().__init__(f"in {where}: {self.type_name}: {err}")


def _factory_model(spec: str) -> nn.Module:
    """The ``nn.Module`` returned by ``module:factory``, called with no arguments."""
    module_name, attr = spec.split(":", 1)
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"--model {spec}: cannot import {attr!r} from {module_name!r} ({err})") from None
    except Exception as err:  # the module's own code failed while importing
        raise UserCodeError(f"module {module_name}", err) from err
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ValueError(f"--model {spec}: module {module_name!r} has no callable {attr!r}")
    try:
        model = factory()
    except Exception as err:
        raise UserCodeError(f"factory {spec}", err) from err
    if not isinstance(model, nn.Module):
        raise TypeError(f"--model {spec}: the factory returned a {type(model).__name__}, not a torch.nn.Module")
    return model


def default_data(model_spec: str) -> str:
    """The data a built-in model is evaluated on by default: its own test set."""
    return "cifar100" if model_spec == "resnet20" else "digits"


def default_profile(data_spec: str) -> Optional[torch.Tensor]:
    """Profile inputs for coverage (KMNC, NBC, SNAC): the digits training split, else none."""
    if data_spec == "digits":
        from robustx.data import digits

        return digits("train")[0]
    return None


def load_data(spec: str, model: nn.Module, n: Optional[int] = None, resize: int = 256, crop: int = 224):
    """The data named by ``spec``: (x, y) tensors, the first ``n`` inputs when given; an image
    folder as a Dataset that evaluate streams (``n`` spread over it, see
    :func:`imagefolder.folder_dataset`)."""
    from robustx import data

    if spec not in BUILT_IN_DATA and Path(spec).is_dir():
        return imagefolder.folder_dataset(spec, n, resize=resize, crop=crop)
    if spec == "digits":
        x, y = data.digits("test")
    elif spec == "cifar100":
        x, y = data.aisafety_cifar10()
    else:
        x, y = _array_file(Path(spec), model)
    if n is not None:
        n = checks.integer(n, "--n", 1, x.shape[0])
        x, y = x[:n], y[:n]
    return x, y


def _array_file(path: Path, model: nn.Module) -> Tuple[torch.Tensor, torch.Tensor]:
    if path.suffix not in (".npz", ".npy"):
        raise ValueError(f"--data must be one of {', '.join(BUILT_IN_DATA)}, an image folder or a .npz / .npy file, "
                         f"got {str(path)!r}")
    if not path.is_file():
        raise FileNotFoundError(f"--data: no such file: {path}")
    arrays = _read_arrays(path)
    missing = {"x", "y"} - set(arrays)
    if path.suffix == ".npz" and missing:
        raise ValueError(f"--data {path}: the .npz file needs arrays x and y, missing {sorted(missing)}")
    x = checks.images(_numeric(arrays["x"], f"--data {path} x").float(), f"--data {path} x", (0.0, 1.0))
    if "y" in arrays:
        return x, checks.data_labels(_numeric(arrays["y"], f"--data {path} y"), x.shape[0], f"--data {path} y")
    try:
        with torch.no_grad():
            return x, model.eval()(x).argmax(1)  # labels: the model's own predictions
    except Exception as err:
        raise UserCodeError(f"the model's forward pass on --data {path}", err) from err


def _read_arrays(path: Path) -> Dict[str, np.ndarray]:
    """Arrays x and y (those present) of a .npz file, or {"x": the array} of a .npy file,
    read without unpickling; a file numpy cannot read raises ValueError naming it."""
    try:
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.ndarray):
            return {"x": loaded}
        with loaded:
            return {k: loaded[k] for k in ("x", "y") if k in loaded.files}
    except (EOFError, ValueError, OSError, zipfile.BadZipFile, zlib.error) as err:  # empty, truncated, object arrays
        reason = "the file is empty" if path.stat().st_size == 0 else f"{type(err).__name__}: {err}"
        raise ValueError(f"--data {path}: not a readable .npz / .npy file ({reason})") from err


def _numeric(array: np.ndarray, name: str) -> torch.Tensor:
    """``array`` as a tensor; it must hold real numbers (bool, int or float: no complex, no strings)."""
    if array.dtype.kind not in "biuf":
        raise TypeError(f"{name} must hold real numbers, got dtype {array.dtype}")
    return torch.from_numpy(array)
