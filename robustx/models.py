"""Built-in reference classifiers (all return logits).

* :class:`DigitsCNN` / :func:`digits_cnn` - a small CNN for scikit-learn's 8x8 digits
  (:func:`robustx.data.digits`), with trained weights shipped in ``robustx/weights``
  (reproduced by ``scripts/train_digits.py``).
* :class:`ResNet20` / :func:`resnet20_cifar` - the CIFAR ResNet-20 of He et al. (2016)
  whose state-dict keys match the AISafety platform's weight files.
"""
from __future__ import annotations

import os
import pickle
import warnings
import zipfile
from pathlib import Path
from typing import List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from robustx import checks

__all__ = ["DigitsCNN", "digits_cnn", "digits_weights", "DIGITS_VARIANTS", "BasicBlock", "ResNet20", "resnet20_cifar",
           "load_weights", "DIGITS_WEIGHTS", "CHECKPOINT_KEYS", "KEY_PREFIXES", "logits_of", "returning_logits",
           "ModelFile"]

DIGITS_WEIGHTS = Path(__file__).resolve().parent / "weights" / "digits_cnn.pt"
#: The shipped digits CNNs (``scripts/train_digits.py --variant NAME`` reproduces each file):
#: the standard model, an independently trained copy (seed 1) and a PGD-trained one.
DIGITS_VARIANTS = {"standard": "digits_cnn.pt", "seed1": "digits_cnn_seed1.pt", "pgd": "digits_cnn_pgd.pt"}


class DigitsCNN(nn.Module):
    """(N, 1, 8, 8) in [0, 1] -> 10 logits: conv3x3(16) ReLU conv3x3(32) ReLU maxpool2
    -> Linear(512, 64) ReLU -> Linear(64, 10)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(32 * 4 * 4, 64),
            nn.ReLU(),
            nn.Linear(64, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


#: Keys under which checkpoints nest the state dict (training scripts, Lightning, timm's EMA),
#: tried in this order after the file's top level.
CHECKPOINT_KEYS = ("state_dict", "model", "model_state_dict", "ema", "state_dict_ema")
#: Prefixes wrappers add to every key: DistributedDataParallel / DataParallel, torch.compile.
KEY_PREFIXES = ("module.", "_orig_mod.")


def load_weights(model: nn.Module, path: Union[str, os.PathLike], name: str = "weights") -> nn.Module:
    """Load the weights saved at ``path`` into ``model`` and return it.

    ``path``: a state dict saved by ``torch.save`` (read with ``weights_only=True``: never
    unpickled) or a ``.safetensors`` file (needs the ``safetensors`` package). The state dict
    may be the file itself or nested under one of :data:`CHECKPOINT_KEYS`, and its keys may
    carry the prefixes of :data:`KEY_PREFIXES`; the first of these readings whose keys are
    exactly the model's is loaded. A file that is not a state dict, or whose keys or shapes do
    not fit ``model``, raises ``ValueError`` naming ``name``, the file, the first offending
    keys of the closest reading and the readings tried."""
    state = _load_state(path, name)
    what = f"{name} {path}"
    own = set(model.state_dict())
    readings = _readings(state)
    fitting = [r for r in readings if set(r[1]) == own]
    _, chosen = fitting[0] if fitting else max(readings, key=lambda r: len(own & set(r[1])))
    _check_shapes(model, chosen, what)
    result = model.load_state_dict(chosen, strict=False)  # not strict: a one-line message, below
    if result.missing_keys or result.unexpected_keys:
        parts = [f"{kind} keys {_first_keys(keys)}" for kind, keys in
                 (("missing", result.missing_keys), ("unexpected", result.unexpected_keys)) if keys]
        tried = f" (closest of: {', '.join(r[0] for r in readings)})" if len(readings) > 1 else ""
        raise ValueError(f"{what} does not fit {type(model).__name__}: {'; '.join(parts)}{tried}")
    return model


def _readings(state: Mapping) -> List[Tuple[str, Mapping]]:
    """(description, state dict) for the top level and each nested key of :data:`CHECKPOINT_KEYS`,
    each followed by its keys without the :data:`KEY_PREFIXES` that every key shares."""
    nested = [("the top level", state)] + [(f"[{key!r}]", state[key]) for key in CHECKPOINT_KEYS
                                           if isinstance(state.get(key), Mapping)]
    readings = []
    for where, sub in nested:
        readings.append((where, sub))
        stripped, removed = _strip_prefixes(sub)
        if removed:
            readings.append((f"{where} without {''.join(removed)!r}", stripped))
    return readings


def _strip_prefixes(state: Mapping) -> Tuple[Mapping, List[str]]:
    """``state`` without the prefixes of :data:`KEY_PREFIXES` that every key starts with
    (repeatedly: ``module._orig_mod.``), and the prefixes removed."""
    removed: List[str] = []
    while state:
        prefix = next((p for p in KEY_PREFIXES if all(isinstance(k, str) and k.startswith(p) for k in state)), None)
        if prefix is None:
            break
        state = {k[len(prefix):]: v for k, v in state.items()}
        removed.append(prefix)
    return state, removed


def _load_state(path: Union[str, os.PathLike], name: str) -> Mapping:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{name} must be a path (str or os.PathLike), got {type(path).__name__}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{name}: no such file: {path}")
    if path.suffix == ".safetensors":
        return _load_safetensors(path, name)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(f"{name} {path}: not a state dict (a whole pickled model or an arbitrary pickle, "
                         "which robustx never unpickles); save the weights with torch.save(model.state_dict(), path)"
                         ) from err
    except (EOFError, KeyError, RuntimeError, ValueError) as err:  # empty, cut short or not a torch.save file
        reason = f"not a torch.save file, or cut short: {type(err).__name__}: {err}"
        raise ValueError(f"{name} {path}: cannot be read as a state dict "
                         f"({'the file is empty' if path.stat().st_size == 0 else reason})") from err
    if not isinstance(state, Mapping):
        raise ValueError(f"{name} {path}: not a state dict but a {type(state).__name__}; save the weights with "
                         "torch.save(model.state_dict(), path)")
    return state


def _load_safetensors(path: Path, name: str) -> Mapping:
    """The tensors of a ``.safetensors`` file (a format without code: nothing to unpickle)."""
    try:
        from safetensors import SafetensorError
        from safetensors.torch import load_file
    except ImportError as err:
        raise ImportError(f"{name} {path}: reading .safetensors needs the safetensors package "
                          "(pip install safetensors, or robustx[safetensors])") from err
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(f"{name} {path}: not a readable .safetensors file ({type(err).__name__}: {err})") from err


def _check_shapes(model: nn.Module, state: Mapping, what: str) -> None:
    """ValueError at the first tensor of ``state`` whose shape differs from the model's."""
    own = model.state_dict()
    for key, value in state.items():
        if isinstance(value, torch.Tensor) and key in own and value.shape != own[key].shape:
            raise ValueError(f"{what} does not fit {type(model).__name__}: {key} has shape {tuple(value.shape)} "
                             f"in the file, {tuple(own[key].shape)} in the model")


def _first_keys(keys: Sequence[str], shown: int = 3) -> str:
    """'a', 'b', 'c' and 5 more."""
    text = ", ".join(repr(k) for k in keys[:shown])
    return text + (f" and {len(keys) - shown} more" if len(keys) > shown else "")


def digits_weights(variant: str = "standard") -> Path:
    """The shipped weight file of a digits CNN variant (a key of :data:`DIGITS_VARIANTS`)."""
    checks.choice(variant, "variant", tuple(DIGITS_VARIANTS))
    return DIGITS_WEIGHTS.with_name(DIGITS_VARIANTS[variant])


def digits_cnn(pretrained: bool = True, variant: str = "standard") -> DigitsCNN:
    """The digits CNN in eval mode; ``pretrained=True`` loads the shipped weights of
    ``variant`` (:data:`DIGITS_VARIANTS`): "standard" (>= 97 % test accuracy on
    ``robustx.data.digits("test")``), "seed1" (the same recipe from another seed) or "pgd"
    (PGD adversarial training, L-inf eps 0.1)."""
    if not isinstance(pretrained, bool):
        raise TypeError(f"pretrained must be True or False, got {pretrained!r}")
    path = digits_weights(variant)
    model = DigitsCNN()
    if pretrained:
        load_weights(model, path, "digits_cnn")
    return model.eval()


def logits_of(output, name: str = "the model") -> torch.Tensor:
    """The logits in a model's output: the output itself when it is a tensor, the first
    element of a tuple or list, or the ``"logits"`` entry of a mapping (e.g. a Hugging Face
    ``ModelOutput``). Anything else raises ``TypeError`` naming what ``name`` returned."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    if isinstance(output, Mapping) and isinstance(output.get("logits"), torch.Tensor):
        return output["logits"]
    if isinstance(output, Mapping):
        raise TypeError(f"{name} returned a {type(output).__name__} without a 'logits' tensor (keys "
                        f"{_first_keys([str(k) for k in output])}); robustx needs the logits")
    what = f"a {type(output).__name__}" + (f" whose first element is a {type(output[0]).__name__}"
                                           if isinstance(output, (tuple, list)) and output else "")
    raise TypeError(f"{name} returned {what}; robustx needs the logits: a tensor, a tuple whose first element "
                    "is the logits tensor, or a dict with a 'logits' tensor")


def returning_logits(model: nn.Module, name: str = "the model") -> nn.Module:
    """``model`` itself, its forward output passed through :func:`logits_of` (a forward hook:
    a tensor passes unchanged, a tuple gives its first element, a dict its ``"logits"``).
    A ScriptModule, which takes no Python hooks, is returned as it is."""
    checks.model(model, name)
    if isinstance(model, torch.jit.ScriptModule):
        return model
    if not getattr(model, "_robustx_logits_hook", False):
        model.register_forward_hook(lambda module, inputs, output: logits_of(output, name))
        model._robustx_logits_hook = True
    return model


class ModelFile(nn.Module):
    """A classifier saved as a file: TorchScript (``torch.jit.save``) or an exported program
    (``torch.export.save``, ``.pt2``). ``forward(x)`` = :func:`logits_of` of the saved
    program's output. The program keeps the mode it was saved in (TorchScript: put in eval
    mode once at loading; an exported program has its mode fixed at export and cannot
    change it), so ``train()`` / ``eval()`` set this wrapper's flag only."""

    def __init__(self, path: Union[str, os.PathLike], name: str = "model") -> None:
        super().__init__()
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{name}: no such file: {path}")
        self.net = _exported_program(path, name) if path.suffix == ".pt2" else _torchscript(path, name)
        self.label = f"{name} {path}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return logits_of(self.net(x), self.label)

    def train(self, mode: bool = True) -> "ModelFile":
        self.training = mode
        return self


def _torchscript(path: Path, name: str) -> nn.Module:
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "`torch.jit.load` is deprecated", FutureWarning)
            return torch.jit.load(str(path), map_location="cpu").eval()
    except (RuntimeError, ValueError) as err:
        raise ValueError(f"{name} {path}: not a TorchScript file (torch.jit.save) or a .pt2 exported program "
                         f"({_first_sentence(err)}); a state dict goes to --weights, with its architecture "
                         "as --model") from err


def _exported_program(path: Path, name: str) -> nn.Module:
    import logging

    logger = logging.getLogger("torch.export")
    level = logger.level
    logger.setLevel(logging.ERROR)  # torch.export.load logs a traceback before it raises
    try:
        return torch.export.load(str(path)).module()
    except (RuntimeError, ValueError, KeyError, zipfile.BadZipFile) as err:
        raise ValueError(f"{name} {path}: not a readable exported program (torch.export.save): "
                         f"{_first_sentence(err)}") from err
    finally:
        logger.setLevel(level)


def _first_sentence(err: Exception) -> str:
    return f"{type(err).__name__}: {' '.join(str(err).split()).split('. ')[0]}"


class BasicBlock(nn.Module):
    """relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)); shortcut = ``downsample``
    (1x1 conv with bias, BatchNorm) when the stride or the channel count changes."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU()
        self.downsample: Optional[nn.Module] = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=True), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(out + shortcut)


class ResNet20(nn.Module):
    """CIFAR ResNet-20 (He et al. 2016): conv3x3(16, bias) BN ReLU, three stages of 3
    BasicBlocks with 16/32/64 channels (stride 2 entering stages 2 and 3), global average
    pool, Linear(64, num_classes). Input (N, 3, 32, 32) in [0, 1], no normalisation."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        num_classes = checks.integer(num_classes, "num_classes", minimum=2)
        self.conv1 = nn.Conv2d(3, 16, 3, stride=1, padding=1, bias=True)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU()
        self.layer1 = self._stage(16, 16, stride=1)
        self.layer2 = self._stage(16, 32, stride=2)
        self.layer3 = self._stage(32, 64, stride=2)
        self.fc = nn.Linear(64, num_classes)

    @staticmethod
    def _stage(in_planes: int, planes: int, stride: int) -> nn.Sequential:
        return nn.Sequential(
            BasicBlock(in_planes, planes, stride), BasicBlock(planes, planes), BasicBlock(planes, planes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return self.fc(out.mean(dim=(2, 3)))


def resnet20_cifar(weights: Optional[Union[str, os.PathLike]] = None) -> ResNet20:
    """ResNet-20 in eval mode; ``weights`` = path of a state dict (e.g. the AISafety
    ``resnet20_cifar.pt``) or None for random initialisation."""
    model = ResNet20()
    if weights is not None:
        load_weights(model, weights)
    return model.eval()
