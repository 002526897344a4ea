"""The argument checks every public function uses (one vocabulary, no private copies).

Each check returns the normalised value or raises with a message that names the
argument and the accepted values: ``TypeError`` for a value of the wrong type,
``ValueError`` for a value of the right type outside the accepted range.
"""
from __future__ import annotations

import functools
import math
import numbers
import warnings
from typing import Any, Callable, Optional, Sequence, Tuple

import torch
from torch import nn

from robustx.geometry import parse_norm

__all__ = [
    "choice",
    "renamed",
    "integer",
    "positive_float",
    "non_negative_float",
    "seed",
    "model",
    "norm",
    "clip_range",
    "device",
    "device_unavailable",
    "floating_tensor",
    "images",
    "labels",
    "data_labels",
]


def choice(value, name: str, allowed: Sequence[Any], also: str = "") -> Any:
    """``value`` if it is one of ``allowed`` (TypeError for a value of another type than
    every allowed one, ValueError otherwise); ``also`` names what else the caller accepts
    (e.g. "or a callable"), for the message only."""
    shown = ", ".join(repr(a) for a in allowed) + (f", {also}" if also else "")
    try:
        found = value in allowed
    except TypeError:  # unhashable or incomparable: not one of them
        found = False
    if found:
        return value
    if not any(isinstance(value, type(a)) for a in allowed):
        raise TypeError(f"{name} must be one of {shown}, got {type(value).__name__} {value!r}")
    raise ValueError(f"{name} must be one of {shown}, got {value!r}")


def renamed(**aliases: str) -> Callable:
    """Decorator keeping old keyword names (``old="new"``) as deprecated aliases for one
    release: a call with ``old=`` warns ``DeprecationWarning`` and passes the value as
    ``new``; giving both is a TypeError. The signature shows the new names only; the
    aliases are listed in the function's ``__deprecated_aliases__``."""
    def wrap(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def call(*args, **kwargs):
            for old, new in aliases.items():
                if old in kwargs:
                    if new in kwargs:
                        raise TypeError(f"{fn.__qualname__}() got both {old!r} (deprecated) and {new!r}")
                    warnings.warn(f"{fn.__qualname__}(): argument {old!r} is deprecated, use {new!r}; the old "
                                  "name goes in the next release", DeprecationWarning, stacklevel=2)
                    kwargs[new] = kwargs.pop(old)
            return fn(*args, **kwargs)
        call.__deprecated_aliases__ = {**getattr(fn, "__deprecated_aliases__", {}), **aliases}
        return call
    return wrap


def integer(value, name: str, minimum: int = 1, maximum: Optional[int] = None) -> int:
    """``value`` as an int in [minimum, maximum] (bools are not ints here)."""
    bounds = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int {bounds}, got {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        raise ValueError(f"{name} must be an int {bounds}, got {value!r}")
    return int(value)


def positive_float(value, name: str) -> float:
    """``value`` as a float; it must be a finite real number > 0."""
    return _finite_real(value, name, "> 0", lambda v: v > 0)


def non_negative_float(value, name: str) -> float:
    """``value`` as a float; it must be a finite real number >= 0."""
    return _finite_real(value, name, ">= 0", lambda v: v >= 0)


def _finite_real(value, name: str, bound: str, within) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a finite number {bound}, got {value!r}")
    if not math.isfinite(value) or not within(value):
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")
    return float(value)


def seed(value, name: str = "seed") -> int:
    """A seed: an int in [0, 2^63)."""
    return integer(value, name, 0, 2 ** 63 - 1)


def model(value, name: str = "model") -> nn.Module:
    """A ``torch.nn.Module`` (a model returning logits)."""
    if not isinstance(value, nn.Module):
        raise TypeError(f"{name} must be a torch.nn.Module, got {type(value).__name__}")
    return value


def norm(value, name: str = "norm", allowed: Sequence[float] = (1.0, 2.0, math.inf)) -> float:
    """A norm exponent (see :func:`robustx.geometry.parse_norm`) restricted to ``allowed``."""
    p = parse_norm(value, name)
    if p not in allowed:
        names = ", ".join("inf" if math.isinf(a) else str(int(a)) for a in allowed)
        raise ValueError(f"{name} must be one of {names} here, got {value!r}")
    return p


def clip_range(clip_values, name: str = "clip_values") -> Optional[Tuple[float, float]]:
    """``None`` (no data domain) or a pair (lo, hi) of finite floats with lo < hi.

    Every public function defaults to ``clip_values=(0, 1)``: images as floats in [0, 1]
    with any normalisation inside the model. An input outside the box is then a
    ValueError naming ``clip_values`` (checked by :func:`images`) instead of adversarial or
    sampled points silently leaving the image domain; pass ``None`` for data without a
    box (features, normalised tensors), ``(lo, hi)`` for another range. The ART-compatible
    API (:mod:`robustx.compat.art`) keeps ART's ``None``, as ART takes the box from the
    classifier.
    """
    if clip_values is None:
        return None
    try:
        lo, hi = (float(v) for v in clip_values)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be None or a pair of numbers (lo, hi), got {clip_values!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"{name} must be finite with lo < hi, got {clip_values!r}")
    return lo, hi


def device(value, net: Optional[nn.Module] = None, name: str = "device") -> torch.device:
    """A ``torch.device``; ``None`` means the device of ``net`` (CPU for a stateless one).

    A device given must exist on this machine (see :func:`device_unavailable`), and with a
    model that has parameters or buffers, its type must be the model's.
    """
    home = torch.device("cpu")
    if net is not None:
        home = next(iter([*net.parameters(), *net.buffers()]), torch.empty(0)).device
    if value is None:
        return home
    try:
        dev = torch.device(value)
    except (TypeError, RuntimeError):
        raise ValueError(f"{name} must be None, a torch.device or a device string, got {value!r}") from None
    reason = device_unavailable(dev)
    if reason:
        raise ValueError(f"{name} {str(dev)!r} is not available: {reason}")
    stateful = net is not None and any(True for _ in [*net.parameters(), *net.buffers()])
    if stateful and dev.type != home.type:
        raise ValueError(f"{name}={value!r} but the model lives on {home}; move the model or pass {name}=None")
    return dev


def device_unavailable(dev: torch.device) -> Optional[str]:
    """Why ``dev`` cannot be used on this machine ("torch.cuda.is_available() is False",
    an index >= the backend's device count, ...), or None when it can."""
    if dev.type in ("cpu", "meta"):
        return None
    backend = getattr(torch, dev.type, None)
    if backend is None or not hasattr(backend, "is_available"):
        return f"this torch build has no {dev.type} backend"
    if not backend.is_available():
        return f"torch.{dev.type}.is_available() is False"
    count = backend.device_count() if hasattr(backend, "device_count") else 1
    if dev.index is not None and dev.index >= count:
        return f"torch.{dev.type}.device_count() is {count}"
    return None


def floating_tensor(value, name: str) -> torch.Tensor:
    """A floating tensor (float16, bfloat16, float32 or float64)."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if value.dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        raise TypeError(f"{name} must be a floating tensor (float16, bfloat16, float32, float64), got {value.dtype}")
    return value


def images(x, name: str = "x", clip_values: Optional[Tuple[float, float]] = None) -> torch.Tensor:
    """A batch of inputs (N, ...): floating, finite and inside ``clip_values`` when given."""
    floating_tensor(x, name)
    if x.dim() < 2:
        raise ValueError(f"{name} must have shape (N, ...) with a batch dimension, got {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    if clip_values is not None:
        lo, hi = clip_values
        if x.numel() and (x.min() < lo or x.max() > hi):
            raise ValueError(
                f"{name} has values in [{x.min().item():.4g}, {x.max().item():.4g}], outside "
                f"clip_values=({lo}, {hi})"
            )
    return x


def labels(y, n: int, name: str = "y", n_classes: Optional[int] = None) -> torch.Tensor:
    """Integer class indices of shape (n,) as int64, each in [0, n_classes) when given."""
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of class indices, got {type(y).__name__}")
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer class indices, got {y.dtype}")
    if y.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},) to match the inputs, got {tuple(y.shape)}")
    if n_classes is not None and y.numel() and (y.min() < 0 or y.max() >= n_classes):
        raise ValueError(f"{name} must hold class indices in [0, {n_classes}), got values in "
                         f"[{y.min().item()}, {y.max().item()}]")
    return y.long()


def data_labels(y, n: int, name: str = "y") -> torch.Tensor:
    """Class labels read from user data (a file, a Dataset) as int64 of shape (n,).

    Besides integer tensors, floating ones are accepted when every label is a whole number
    (files often store labels as floats); a fractional or non-finite label raises
    ValueError naming the first one, complex or bool labels TypeError (see :func:`labels`).
    """
    if isinstance(y, torch.Tensor) and y.is_floating_point():
        bad = (~torch.isfinite(y) | (y != y.trunc())).flatten().nonzero()
        if bad.numel():
            i = int(bad[0])
            raise ValueError(f"{name} must hold whole-number class indices, got {y.flatten()[i].item()!r} "
                             f"at position {i}")
        y = y.long()
    return labels(y, n, name)
