"""Models and data named on the command line (``robustx evaluate --model M --data D``).

Models: ``digits`` (the built-in digits CNN, shipped weights; ``digits-seed1`` and
``digits-pgd`` its independently trained and PGD-trained siblings), ``resnet20`` (the CIFAR
ResNet-20 architecture; weights from ``--weights``, default the AISafety natural model),
``module:factory`` (a callable returning an ``nn.Module``, called with the keyword
arguments of ``--model-args``, e.g. ``torchvision.models:resnet50`` or
``timm:create_model`` with ``{"model_name": "resnet18"}``; ``--weights`` then loads a
checkpoint into it, :func:`robustx.models.load_weights`), or the path of a TorchScript file
or a ``.pt2`` exported program (:class:`robustx.models.ModelFile`). A model's output may be
the logits, a tuple starting with them or a dict holding them under ``"logits"``. With
``mean``/``std`` (or ``--normalize imagenet``) it is wrapped in
:class:`~robustx.pipeline.imagefolder.Normalized`.
Data: ``digits`` (its test split), ``cifar100`` (the 100 AISafety CIFAR-10 test images),
an ImageNet-style folder (:mod:`robustx.pipeline.imagefolder`), a ``.npz`` file with
arrays ``x`` (N, C, H, W) and ``y`` (N,), or a ``.npy`` file of inputs ``x`` (labels: the
model's own predictions, only when asked for with ``labels="predicted"``). Weights and
arrays are read without unpickling (``weights_only=True``, ``allow_pickle=False``).
"""
from __future__ import annotations

import importlib
import json
import zipfile
import zlib
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from robustx import checks
from robustx.pipeline import imagefolder

__all__ = ["load_model", "load_data", "load_profile", "model_args", "NORMALIZATIONS", "default_data",
           "default_profile", "BUILT_IN_MODELS", "BUILT_IN_DATA", "MODEL_FILE_SUFFIXES", "UserCodeError"]

#: built-in model name -> the digits CNN variant it is (resnet20 aside)
_DIGITS = {"digits": "standard", "digits-seed1": "seed1", "digits-pgd": "pgd"}
BUILT_IN_MODELS = (*_DIGITS, "resnet20")
#: A --model ending in one of these is a model file: TorchScript, or .pt2 for an exported program.
MODEL_FILE_SUFFIXES = (".pt", ".pth", ".pt2", ".ts", ".jit", ".torchscript")
BUILT_IN_DATA = ("digits", "cifar100")
#: ``--normalize`` choices: name -> (mean, std) per channel.
NORMALIZATIONS = {"imagenet": (imagefolder.IMAGENET_MEAN, imagefolder.IMAGENET_STD)}


def load_model(spec: str, weights: Optional[str] = None, normalize: Optional[str] = None, *,
               args: Optional[Mapping[str, Any]] = None, mean: Optional[Sequence[float]] = None,
               std: Optional[Sequence[float]] = None, name: str = "--model") -> nn.Module:
    """The model named by ``spec`` (see the module docstring), in eval mode, returning
    logits. ``args``: keyword arguments of a ``module:factory``; ``weights``: a checkpoint
    to load into it; ``normalize`` (a key of :data:`NORMALIZATIONS`) or ``mean`` and ``std``
    (per channel): the model sees ``(x - mean) / std``. ``name`` names the option in errors."""
    model = _named_model(spec, weights, args, name)
    if normalize is not None:
        checks.choice(normalize, "--normalize", tuple(NORMALIZATIONS))
        if mean is not None or std is not None:
            raise ValueError("give either --normalize or --mean and --std, not both")
        mean, std = NORMALIZATIONS[normalize]
    if (mean is None) != (std is None):
        raise ValueError(f"--mean and --std go together, got only {'--mean' if std is None else '--std'}")
    if mean is None:
        return model
    return imagefolder.Normalized(model, mean, std).eval()


def _named_model(spec: str, weights: Optional[str], args: Optional[Mapping[str, Any]], name: str) -> nn.Module:
    from robustx import models

    weights_option = "--weights" if name == "--model" else f"{name}-weights"
    if args is not None and (":" not in spec or spec in BUILT_IN_MODELS):
        raise ValueError(f"{name}-args applies to a module:factory only, not to {name} {spec}")
    if spec in _DIGITS:
        model = models.digits_cnn(pretrained=weights is None, variant=_DIGITS[spec])
    elif spec == "resnet20":
        from robustx.data import aisafety_dir

        model, weights = models.ResNet20(), weights or aisafety_dir() / "resnet20_cifar.pt"
    elif Path(spec).suffix in MODEL_FILE_SUFFIXES or Path(spec).is_file():
        if weights is not None:
            raise ValueError(f"{weights_option} does not apply to a model file ({name} {spec} holds its weights)")
        return models.ModelFile(spec, name)
    elif ":" in spec:
        model = _factory_model(spec, args or {}, name)
    else:
        checks.choice(spec, name, BUILT_IN_MODELS, also="module:factory, or a TorchScript / .pt2 file")  # raises
    if weights is not None:
        models.load_weights(model, weights, weights_option)
    return models.returning_logits(model, f"{name} {spec}").eval()


def model_args(text: Optional[str], name: str = "--model-args") -> Optional[Dict[str, Any]]:
    """The keyword arguments of a factory, given as a JSON object (None stays None)."""
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{name} must be a JSON object of keyword arguments, e.g. '{{\"model_name\": "
                         f"\"resnet18\"}}', got {text!r} ({err})") from None
    if not isinstance(value, dict):
        raise ValueError(f"{name} must be a JSON object of keyword arguments, got {text!r}")
    return value


class UserCodeError(RuntimeError):
    """An exception raised by the user's own code (the module and factory of ``--model
    module:factory``), as one line ``in <where>: <type>: <message>``. The original
    exception is chained (``__cause__``); ``type_name`` and ``message`` keep its type and text."""

    def __init__(self, where: str, err: Exception):
        self.type_name, self.message = type(err).__name__, str(err)
        super().__init__(f"in {where}: {self.type_name}: {err}")


def _factory_model(spec: str, args: Mapping[str, Any], name: str = "--model") -> nn.Module:
    """The ``nn.Module`` returned by ``module:factory``, called with the keyword arguments ``args``."""
    module_name, attr = spec.split(":", 1)
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"{name} {spec}: cannot import {attr!r} from {module_name!r} ({err})") from None
    except Exception as err:  # the module's own code failed while importing
        raise UserCodeError(f"module {module_name}", err) from err
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ValueError(f"{name} {spec}: module {module_name!r} has no callable {attr!r}")
    try:
        model = factory(**args)
    except Exception as err:
        raise UserCodeError(f"factory {spec}", err) from err
    if not isinstance(model, nn.Module):
        raise TypeError(f"{name} {spec}: the factory returned a {type(model).__name__}, not a torch.nn.Module")
    return model


def default_data(model_spec: str) -> str:
    """The data a built-in model is evaluated on by default: its own test set. Any other
    model has no default (ValueError naming the choices)."""
    if model_spec in _DIGITS or model_spec == "resnet20":
        return "cifar100" if model_spec == "resnet20" else "digits"
    raise ValueError(f"--data is needed for --model {model_spec}: {', '.join(BUILT_IN_DATA)}, an image folder, "
                     "a .npz file (arrays x, y) or a .npy file (x; with --labels predicted)")


def default_profile(data_spec: str) -> Optional[torch.Tensor]:
    """Profile inputs for coverage (KMNC, NBC, SNAC): the digits training split, else none."""
    return load_profile("digits") if data_spec == "digits" else None


def load_profile(spec: str, clip_values: Tuple[float, float] = (0.0, 1.0), workers: int = 2, resize: int = 256,
                 crop: int = 224) -> torch.Tensor:
    """Profile inputs (``--profile``) named like data: ``digits`` is its training split, a file
    or folder gives its inputs (labels, if any, unused)."""
    from robustx import data

    if spec == "digits":
        return data.digits("train")[0]
    if spec not in BUILT_IN_DATA and Path(spec).is_dir():
        return imagefolder.load_folder(spec, None, workers=workers, resize=resize, crop=crop)[0]
    if spec == "cifar100":
        return data.aisafety_cifar10()[0]
    path = _checked_file(Path(spec), "--profile")
    return _inputs(_read_arrays(path), path, "--profile", clip_values)


@checks.renamed(n="n_images")
def load_data(spec: str, model: nn.Module, n_images: Optional[int] = None, resize: int = 256, crop: int = 224,
              labels: Optional[str] = None, clip_values: Tuple[float, float] = (0.0, 1.0)):
    """The data named by ``spec``: (x, y) tensors, the first ``n_images`` inputs when given; an
    image folder as a Dataset that evaluate streams (``n_images`` spread over it, see
    :func:`imagefolder.folder_dataset`). A ``.npy`` file holds no labels: it needs
    ``labels="predicted"`` (the model's own predictions, so CA is 1 by construction). Inputs
    must lie in ``clip_values``."""
    from robustx import data

    if labels not in (None, "predicted"):
        raise ValueError(f"--labels must be predicted (or not given), got {labels!r}")
    if spec not in BUILT_IN_DATA and Path(spec).is_dir():
        return imagefolder.folder_dataset(spec, n_images, resize=resize, crop=crop)
    if spec == "digits":
        x, y = data.digits("test")
    elif spec == "cifar100":
        x, y = data.aisafety_cifar10()
    else:
        x, y = _array_file(Path(spec), model, labels, clip_values)
    if n_images is not None:
        n = checks.integer(n_images, "n_images (--n)", 1, x.shape[0])
        x, y = x[:n], y[:n]
    return x, y


def _checked_file(path: Path, name: str) -> Path:
    if path.suffix not in (".npz", ".npy"):
        checks.choice(str(path), name, BUILT_IN_DATA, also="an image folder or a .npz / .npy file")  # raises
    if not path.is_file():
        raise FileNotFoundError(f"{name}: no such file: {path}")
    return path


def _inputs(arrays: Dict[str, np.ndarray], path: Path, name: str, clip_values: Tuple[float, float]) -> torch.Tensor:
    """The inputs ``x`` of a file's arrays: real numbers inside ``clip_values``."""
    if "x" not in arrays:
        raise ValueError(f"{name} {path}: the .npz file needs an array x")
    return checks.images(_numeric(arrays["x"], f"{name} {path} x").float(), f"{name} {path} x", clip_values)


def _array_file(path: Path, model: nn.Module, labels: Optional[str],
                clip_values: Tuple[float, float]) -> Tuple[torch.Tensor, torch.Tensor]:
    arrays = _read_arrays(_checked_file(path, "--data"))
    missing = {"x", "y"} - set(arrays)
    if path.suffix == ".npz" and missing:
        raise ValueError(f"--data {path}: the .npz file needs arrays x and y, missing {sorted(missing)}")
    x = _inputs(arrays, path, "--data", clip_values)
    if "y" in arrays:
        return x, checks.data_labels(_numeric(arrays["y"], f"--data {path} y"), x.shape[0], f"--data {path} y")
    if labels != "predicted":
        raise ValueError(f"--data {path}: a .npy file holds no labels; save x and y in a .npz file, or pass "
                         "--labels predicted to take the model's own predictions as labels (CA is then 1)")
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
