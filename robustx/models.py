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
from pathlib import Path
from typing import Mapping, Optional, Sequence, Union

import torch
from torch import nn

from robustx import checks

__all__ = ["DigitsCNN", "digits_cnn", "BasicBlock", "ResNet20", "resnet20_cifar", "load_weights", "DIGITS_WEIGHTS"]

DIGITS_WEIGHTS = Path(__file__).resolve().parent / "weights" / "digits_cnn.pt"


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


def load_weights(model: nn.Module, path: Union[str, os.PathLike], name: str = "weights") -> nn.Module:
    """Load the state dict saved at ``path`` (``torch.save(model.state_dict(), path)``) into
    ``model`` and return it. The file is read with ``weights_only=True`` (never unpickled);
    a file that is not a state dict, or whose keys or shapes do not fit ``model``, raises
    ``ValueError`` naming ``name``, the file and the first offending keys."""
    state = _load_state(path, name)
    what = f"{name} {path}"
    _check_shapes(model, state, what)
    result = model.load_state_dict(state, strict=False)  # not strict: a one-line message, below
    if result.missing_keys or result.unexpected_keys:
        parts = [f"{kind} keys {_first_keys(keys)}" for kind, keys in
                 (("missing", result.missing_keys), ("unexpected", result.unexpected_keys)) if keys]
        raise ValueError(f"{what} does not fit {type(model).__name__}: {'; '.join(parts)}")
    return model


def _load_state(path: Union[str, os.PathLike], name: str) -> Mapping:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{name} must be a path (str or os.PathLike), got {type(path).__name__}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{name}: no such file: {path}")
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


def digits_cnn(pretrained: bool = True) -> DigitsCNN:
    """The digits CNN in eval mode; ``pretrained=True`` loads the shipped weights
    (>= 97 % test accuracy on ``robustx.data.digits("test")``)."""
    if not isinstance(pretrained, bool):
        raise TypeError(f"pretrained must be True or False, got {pretrained!r}")
    model = DigitsCNN()
    if pretrained:
        load_weights(model, DIGITS_WEIGHTS, "digits_cnn")
    return model.eval()


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
